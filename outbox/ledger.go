package outbox

import "time"

// The sync ledger is the sync log as auditors read it: what was sent where,
// and when, with the patient each line concerns.

// LedgerFilter selects sync log lines for auditors. Empty fields do not filter.
type LedgerFilter struct {
	EndpointID   string
	PatientID    string // the resource is the patient, or its patient/subject
	ResourceType string
	// From and To bound the time: From <= At < To (zero: unbounded).
	From, To time.Time
	// Cursor continues a listing: lines with ID < Cursor (newest first); 0 starts.
	Cursor int64
	// Limit is the page size (default 100, at most 1000).
	Limit int
}

// LedgerEntry is one sync log line with the patient of its resource.
type LedgerEntry struct {
	Event
	// PatientID is the resource itself for a Patient, else its current
	// patient or subject reference ("" when it has none or is gone).
	PatientID string
}

// LedgerPage is one page of the ledger, newest first.
type LedgerPage struct {
	Entries []LedgerEntry
	// Next is the Cursor of the next page; 0 when this is the last.
	Next int64
}
