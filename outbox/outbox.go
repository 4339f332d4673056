// Package outbox is the data model of kapfhir's durable sync queue: the work
// a domain change leaves for each EHR endpoint, in the same store transaction
// as the change (so a commit guarantees the sync and a rollback sends
// nothing), and what the sync engine records when it has done it.
//
// There is one item per endpoint and resource. A newer version of the
// resource coalesces into the item (the latest version wins). Items are
// leased per patient: a patient's items go out in order, one batch at a
// time, while different patients proceed in parallel. A lease has an expiry,
// so the work of a process that died is taken over, never lost; every write
// to an EHR is idempotent (by kapfhir's identifier), so taking it over never
// duplicates. Plain data: the store implements it, the adapter drives it. A
// result carries its audit records and Provenance, so that the store writes
// them in the transaction that records the result.
package outbox

import (
	"time"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/resource"
)

// State is where an item is.
type State string

// Item states.
const (
	// Pending: waiting to be sent (or re-sent: a newer version arrived).
	Pending State = "pending"
	// InFlight: leased by a worker until LeaseUntil.
	InFlight State = "in_flight"
	// Succeeded: the EHR holds the wanted version.
	Succeeded State = "succeeded"
	// Retrying: the last attempt failed transiently; next attempt at NextAttempt.
	Retrying State = "retrying"
	// Dead: the EHR rejected the content, or attempts ran out; kept with the
	// EHR's OperationOutcome until replayed or discarded.
	Dead State = "dead"
	// Discarded: an operator gave up on a dead item.
	Discarded State = "discarded"
)

// States lists every state, in lifecycle order.
var States = []State{Pending, InFlight, Retrying, Succeeded, Dead, Discarded}

// Valid reports whether s is a known state.
func (s State) Valid() bool {
	for _, v := range States {
		if v == s {
			return true
		}
	}
	return false
}

// Work is one resource change to send to one endpoint, enqueued inside the
// transaction that made it.
type Work struct {
	EndpointID   string
	ResourceType string
	ResourceID   string
	// PatientID orders the work: a patient's items go out in order.
	PatientID string
	// Version is the resource's new versionId.
	Version int64
}

// Item is the sync state of one resource at one endpoint, and its crosswalk
// to the EHR's copy.
type Item struct {
	ID           int64
	EndpointID   string
	ResourceType string
	ResourceID   string
	PatientID    string
	// Seq orders items (it grows with every enqueue).
	Seq   int64
	State State
	// WantVersion is the latest version to send; SentVersion the last one
	// the EHR acknowledged (0: never).
	WantVersion int64
	SentVersion int64
	// SentHash is the hash of the last body the EHR acknowledged; a body
	// with the same hash is not sent again.
	SentHash []byte
	// EHRID and EHRVersion are the EHR's id and versionId of its copy.
	EHRID      string
	EHRVersion string
	Attempts   int
	// NextAttempt is when a pending or retrying item may run.
	NextAttempt time.Time
	LeaseOwner  string
	LeaseUntil  time.Time
	// LastStatus is the last HTTP status from the EHR (0: none or transport error).
	LastStatus int
	// LastError is a caller-safe description of the last failure (no PHI).
	LastError string
	// Outcome is the EHR's last OperationOutcome (FHIR JSON), if any.
	Outcome []byte
	Updated time.Time
}

// Batch is one patient's leased items at one endpoint.
type Batch struct {
	EndpointID string
	PatientID  string
	Items      []Item
}

// Lease asks for up to MaxPatients batches of runnable items at one endpoint.
// Runnable: pending or retrying with NextAttempt ≤ Now, or in flight under a
// lease that expired before Now. A patient with an item under an unexpired
// lease is skipped.
type Lease struct {
	EndpointID  string
	Owner       string
	MaxPatients int
	Now         time.Time
	For         time.Duration
}

// Outcome is what happened to one leased item.
type Outcome string

// Outcomes.
const (
	// Sent: the EHR holds SentVersion.
	Sent Outcome = "sent"
	// Unchanged: the body hashed as last sent; nothing was sent.
	Unchanged Outcome = "unchanged"
	// Retry: transient failure; run again at RetryAt.
	Retry Outcome = "retry"
	// Reject: the EHR refused the content (or attempts ran out): dead.
	Reject Outcome = "dead"
	// Release: not attempted (shutdown, paused endpoint); back to pending as it was.
	Release Outcome = "released"
)

// Result finishes one leased item. It applies only while Owner still holds
// the lease; otherwise the store answers a conflict (the lease was lost).
type Result struct {
	ItemID  int64
	Owner   string
	Outcome Outcome
	Now     time.Time
	// For Sent and Unchanged.
	SentVersion int64
	SentHash    []byte
	EHRID       string
	EHRVersion  string
	// For Retry.
	RetryAt time.Time
	// For every outcome but Release.
	Status  int
	Error   string
	OpOut   []byte
	Request string // method and path without query, for the log

	// Audit are the audit records of the writes this attempt made to the
	// EHR (none when nothing was sent), appended to the audit trail in the
	// transaction that records the result: a write's record exists exactly
	// when its result does.
	Audit []audit.Record
	// Provenance is, for a Sent result, the Provenance of the version sent
	// (a new resource, version 1), stored in the same transaction unless a
	// resource with its id exists already (the same version sent again to
	// the same endpoint: the first send is the one it records).
	Provenance *resource.Write
}

// Filter selects items for the operators' API. Zero fields match anything.
type Filter struct {
	EndpointID string
	State      State
	PatientID  string
	// AfterID pages: only items with ID > AfterID, by ID.
	AfterID int64
	Limit   int
}

// Stats summarises one endpoint's queue.
type Stats struct {
	ByState map[State]int
	// OldestPending is the NextAttempt of the oldest pending or retrying
	// item (zero when there is none).
	OldestPending time.Time
	// Sent, Failed and Dead count log events (Failed: transient failures).
	Sent, Failed, Dead int
	// LastError is the most recent failure, with its time.
	LastError   string
	LastErrorAt time.Time
}

// Backlog is what is left to send: pending, retrying and in-flight items
// (dead and discarded ones wait for an operator, not for the engine).
func (s Stats) Backlog() int {
	return s.ByState[Pending] + s.ByState[Retrying] + s.ByState[InFlight]
}

// Event is one line of the append-only sync log: what was sent where, and
// every operator action on the queue.
type Event struct {
	ID           int64
	At           time.Time
	EndpointID   string
	ItemID       int64
	ResourceType string
	ResourceID   string
	Version      int64
	// Action: sent, unchanged, retry, dead, released, replayed, discarded, pulled.
	Action     string
	Status     int
	EHRID      string
	EHRVersion string
	Request    string
	Detail     string
	// Actor is who did it: "sync" for the engine, else the operator's id.
	Actor string
}
