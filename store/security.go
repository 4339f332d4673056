package store

import (
	"context"
	"time"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/outbox"
)

// AuditTx is the audit part of a transaction: an audited change writes its
// audit record in the change's transaction, so a rollback leaves neither.
type AuditTx interface {
	// AppendAudit checks the records (audit.Prepare; a prune record is
	// invalid: only PruneAudit writes one), appends them to the chain in
	// order and returns them as stored: Seq, ID, JSON (audit.Render),
	// PrevHash and Hash assigned. The chain's head is locked until the
	// transaction ends, so appenders queue: append last in a transaction.
	AppendAudit(ctx context.Context, recs ...audit.Record) ([]audit.Record, error)
}

// Audit is the audit trail: a hash chain of audit records (see package audit).
type Audit interface {
	// AppendAudit appends records in a transaction of its own (see
	// AuditTx), for events that change nothing else (reads, searches,
	// refused requests).
	AppendAudit(ctx context.Context, recs ...audit.Record) ([]audit.Record, error)
	// AuditEvents lists the records matching f (see audit.Filter), newest
	// first unless f.Oldest, at most f.Limit (default 100, at most 1000).
	AuditEvents(ctx context.Context, f audit.Filter) (audit.Page, error)
	// AuditEvent returns the record whose AuditEvent id is id, or not_found.
	AuditEvent(ctx context.Context, id string) (audit.Record, error)
	// VerifyAudit reads the whole chain in seq order, in one snapshot,
	// and checks it against itself and the recorded head (audit.Verify).
	// A broken chain is a report that is not Intact, not an error.
	VerifyAudit(ctx context.Context) (audit.Report, error)
	// PruneAudit deletes the oldest records, those before the first one
	// recorded at or after before (so the chain stays contiguous), and
	// appends the prune record (audit.PruneRecord) of by (who, when,
	// source) in the same transaction; it returns how many it deleted.
	// The chain verifies from the prune point on.
	PruneAudit(ctx context.Context, before time.Time, by audit.Record) (int, error)
}

// ClientRecord is an API client as the store keeps it: the auth package's
// client, encoded by it, with the columns the store lists by.
type ClientRecord struct {
	ID   string
	Role string
	// JSON is the client as its owner encodes it; the store keeps the bytes as they are.
	JSON             []byte
	Created, Updated time.Time
}

// SigningKey is a key kapfhir signs its tokens with.
type SigningKey struct {
	KID string
	Alg string
	// Private is the private key, encrypted by the caller: the store only keeps the bytes.
	Private []byte
	// Public is the public key (e.g. a JWK), optional.
	Public  []byte
	Created time.Time
	// Retired is when the key stopped signing (zero while it signs).
	Retired time.Time
}

// Security holds what the auth server keeps, and the auditors' read of the
// sync log. Each method is its own transaction.
type Security interface {
	// PutClient creates or replaces a client (Created is kept on replace).
	PutClient(ctx context.Context, c ClientRecord) error
	// Client returns one client, or not_found.
	Client(ctx context.Context, id string) (ClientRecord, error)
	// Clients returns every client, by id.
	Clients(ctx context.Context) ([]ClientRecord, error)
	// DeleteClient removes a client, or not_found.
	DeleteClient(ctx context.Context, id string) error

	// UseJTI records that the client used the token id jti, valid until
	// expires. It is a conflict error when the same client used it before
	// and that use has not expired at now; expired uses are purged. The
	// record is shared by every store handle on the database.
	UseJTI(ctx context.Context, clientID, jti string, expires, now time.Time) error

	// PutSigningKey stores a new key and appends recs, its audit records,
	// in the same transaction; a kid already stored is a conflict (nothing
	// is written).
	PutSigningKey(ctx context.Context, k SigningKey, recs ...audit.Record) error
	// SigningKeys returns every key, newest first.
	SigningKeys(ctx context.Context) ([]SigningKey, error)
	// RetireSigningKey marks a key retired at at and appends recs in the
	// same transaction, and reports whether it did: a key already retired
	// keeps its first retirement time and nothing is written. Unknown kid:
	// not_found.
	RetireSigningKey(ctx context.Context, kid string, at time.Time, recs ...audit.Record) (bool, error)
	// ResealSigningKey replaces a key's private bytes old by private (the
	// caller encrypted them anew) and appends recs in the same
	// transaction, and reports whether it did: when the stored bytes are
	// no longer old (another process replaced them first) nothing is
	// written. Unknown kid: not_found.
	ResealSigningKey(ctx context.Context, kid string, old, private []byte, recs ...audit.Record) (bool, error)

	// SyncLedger lists sync log lines matching f, newest first.
	SyncLedger(ctx context.Context, f outbox.LedgerFilter) (outbox.LedgerPage, error)
}
