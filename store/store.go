// Package store is kapfhir's persistence port: the interface every store
// implementation satisfies (store/sqlite, the embedded default, and
// store/postgres, for scale), checked by one conformance suite (store/storetest).
//
// The contract is dialect-neutral: no SQLite- or PostgreSQL-only behaviour may
// leak into it. Errors are *treatment.Error of kind not_found or conflict
// where the contract says so; anything else is a wrapped internal error.
package store

import (
	"context"
	"io"

	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/treatment"
)

// DomainReader reads domain aggregates.
type DomainReader interface {
	// Patient returns the patient, or a not_found error.
	Patient(ctx context.Context, id string) (treatment.Patient, error)
	// Program returns the programme with its plans, sessions and measurements, or not_found.
	Program(ctx context.Context, id string) (treatment.Program, error)
	// ProgramBySession returns the programme that holds the session, or not_found.
	ProgramBySession(ctx context.Context, sessionID string) (treatment.Program, error)
	// ProgramsByPatient returns the patient's programmes, oldest first (none is not an error).
	ProgramsByPatient(ctx context.Context, patientID string) ([]treatment.Program, error)
}

// ResourceReader reads stored FHIR resource versions.
type ResourceReader interface {
	// Read returns the current version, or not_found (also for a deleted resource).
	Read(ctx context.Context, typ, id string) (resource.Version, error)
	// VRead returns one version, or not_found.
	VRead(ctx context.Context, typ, id string, versionID int64) (resource.Version, error)
	// History returns every version, newest first, or not_found when there is none.
	History(ctx context.Context, typ, id string) ([]resource.Version, error)
	// Search runs a query (see resource.Query for the semantics).
	Search(ctx context.Context, q resource.Query) (resource.Page, error)
	// Include returns the current versions of the resources that the given
	// resources of type typ reference through the reference parameter param,
	// each once, ordered by type then id. Missing targets are skipped.
	Include(ctx context.Context, typ string, ids []string, param string) ([]resource.Version, error)
}

// Tx is one store transaction. Everything written through it commits or
// rolls back together.
type Tx interface {
	DomainReader
	SyncTx
	AuditTx

	// CreatePatient inserts a patient. A patient with the same identifier
	// (system and value) already present is a conflict error.
	CreatePatient(ctx context.Context, p treatment.Patient) error
	// CreateProgram inserts a programme (Version must be 1).
	CreateProgram(ctx context.Context, p treatment.Program) error
	// UpdateProgram replaces the programme if its stored version is
	// p.Version-1, and stores p (whose Version the caller has incremented);
	// otherwise it is a conflict error. An unknown programme is not_found.
	UpdateProgram(ctx context.Context, p treatment.Program) error

	// CurrentVersion returns the current version id and content hash of a
	// resource, or (0, nil, nil) when it has never been stored.
	CurrentVersion(ctx context.Context, typ, id string) (int64, []byte, error)
	// PutVersion stores a new version. w.Version.VersionID must be the current
	// version id + 1 (1 for a new resource), else it is a conflict error. The
	// new version becomes current, its index replaces the old one, and the
	// previous versions stay readable through VRead and History.
	PutVersion(ctx context.Context, w resource.Write) error

	// Meta reads a store-wide setting (installation id); "" when unset.
	Meta(ctx context.Context, key string) (string, error)
	// SetMeta writes a store-wide setting.
	SetMeta(ctx context.Context, key, value string) error
}

// Store is a persistence implementation.
type Store interface {
	DomainReader
	ResourceReader
	Sync
	Audit
	Security
	// InTx runs fn in one transaction: fn's error (or a panic) rolls back,
	// otherwise it commits. Transactions are serializable with respect to
	// each other for the rows they write.
	InTx(ctx context.Context, fn func(tx Tx) error) error
	io.Closer
}
