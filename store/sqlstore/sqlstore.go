// Package sqlstore is the dialect-neutral core shared by kapfhir's SQL store
// implementations (store/sqlite and store/postgres): the search query
// builder, resource-version scanning, domain-row reads and writes, the
// migration-file listing and runner loop, and the transaction wrapper.
//
// It knows SQL but no driver. A driver adapts its connections to Querier and
// describes its SQL flavour in a Dialect (placeholder style, boolean
// literals, array parameters, error classification, and the few statements
// it writes its own way); everything else is written once here.
package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/treatment"
)

// Row is one result row (*sql.Row, pgx.Row).
type Row interface {
	Scan(dest ...any) error
}

// Rows is a result set. Next returning false ends it; Close may be called
// more than once.
type Rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close()
}

// Querier runs statements on a connection pool or in a transaction. Queries
// use the dialect's placeholders; arguments are passed to the driver as is.
type Querier interface {
	// Exec runs a statement and returns the number of rows it affected.
	Exec(ctx context.Context, query string, args ...any) (int64, error)
	QueryRow(ctx context.Context, query string, args ...any) Row
	Query(ctx context.Context, query string, args ...any) (Rows, error)
}

// Dialect describes what differs between the SQL of two databases, as far as
// the shared code is concerned. The zero value of each flag is SQLite's.
type Dialect struct {
	// Numbered placeholders are $1, $2, ...; otherwise every one is ?.
	Numbered bool
	// Arrays binds a list of strings as one text[] parameter
	// (col = ANY($n::text[])); otherwise it expands to col IN (?, ?, ...).
	Arrays bool
	// NativeBool columns and literals are BOOLEAN (NOT col, TRUE, FALSE);
	// otherwise they are integers 0 and 1.
	NativeBool bool
	// ZeroKey is the literal selected as the sort key when a search orders
	// by id alone: it must scan into an int64.
	ZeroKey string
	// LockRow is appended to the select of a resource's current version
	// before it is replaced (" FOR UPDATE"), or "" when the transaction
	// already excludes other writers.
	LockRow string
	// LockQueue is appended to the select of an endpoint's row that
	// serialises the leasers of its queue (" FOR NO KEY UPDATE", which
	// enqueuers' ShareKey does not wait for), or "" when the transaction
	// already excludes other writers.
	LockQueue string
	// ShareKey is appended to the select of an endpoint's row that work is
	// enqueued for, so that it is not deleted before the commit
	// (" FOR KEY SHARE"), or "".
	ShareKey string
	// Seq returns the expression that gives a row written to sync_items its
	// seq, greater than every seq before; rank is the row's 1-based number
	// among the rows of the statement (a SQL expression).
	Seq func(rank string) string
	// SeqAdvance, unless "", runs after a statement that wrote sync_items
	// rows with their number (one ? argument), to move Seq past them.
	SeqAdvance string

	// NoRows is the error QueryRow's Scan returns for an empty result.
	NoRows error
	// IsUnique reports a unique or primary key violation.
	IsUnique func(error) bool
	// IsConflict reports that a concurrent transaction won (serialization
	// failure, deadlock); nil when that cannot happen.
	IsConflict func(error) bool

	// SelectCurrent returns the statement and arguments that select
	// VersionCols of the current, not deleted resources with the given
	// (types[i], ids[i]) keys, ordered by type then id.
	SelectCurrent func(types, ids []string) (query string, args []any)
	// InsertIndex inserts the search index rows of one resource (whose old
	// rows are gone); nil inserts them one statement a row.
	InsertIndex func(ctx context.Context, q Querier, typ, id string, ix resource.Index) error
}

// Rebind rewrites a statement written with ? placeholders into the
// dialect's. Statements passed to it must have no ? in their literals.
func (d *Dialect) Rebind(query string) string {
	if !d.Numbered || !strings.Contains(query, "?") {
		return query
	}
	var b strings.Builder
	b.Grow(len(query) + 8)
	n := 0
	for i := 0; i < len(query); i++ {
		if query[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(query[i])
	}
	return b.String()
}

// Bool returns the argument that stores v in a boolean column.
func (d *Dialect) Bool(v bool) any {
	if d.NativeBool {
		return v
	}
	if v {
		return 1
	}
	return 0
}

// True is an always-true condition.
func (d *Dialect) True() string {
	if d.NativeBool {
		return "TRUE"
	}
	return "1 = 1"
}

// False is an always-false condition.
func (d *Dialect) False() string {
	if d.NativeBool {
		return "FALSE"
	}
	return "1 = 0"
}

// Not is the condition that the boolean column col is false.
func (d *Dialect) Not(col string) string {
	if d.NativeBool {
		return "NOT " + col
	}
	return col + " = 0"
}

func (d *Dialect) noRows(err error) bool { return errors.Is(err, d.NoRows) }
func (d *Dialect) unique(err error) bool { return err != nil && d.IsUnique != nil && d.IsUnique(err) }
func (d *Dialect) conflict(err error) bool {
	return err != nil && d.IsConflict != nil && d.IsConflict(err)
}

// Micros converts a time to the stored form, Unix microseconds.
func Micros(t time.Time) int64 { return t.UnixMicro() }

// FromMicros converts a stored time back, in UTC.
func FromMicros(us int64) time.Time { return time.UnixMicro(us).UTC() }

// RunTx finishes a transaction the caller has begun around fn: fn's error
// rolls back and is returned as is; a panic in fn rolls back and is
// returned as an internal error; otherwise commit ends it and its error is
// returned. rollback must return nil for a transaction that has already
// ended; its other errors are joined to the result.
func RunTx(fn func() error, commit, rollback func() error) (err error) {
	ended := false
	defer func() {
		if r := recover(); r != nil {
			err = &treatment.Error{Kind: treatment.KindInternal, Msg: "internal error", Err: fmt.Errorf("panic in transaction: %v", r)}
		}
		if !ended {
			if rbErr := rollback(); rbErr != nil {
				err = errors.Join(err, fmt.Errorf("rollback: %w", rbErr))
			}
		}
	}()
	if err := fn(); err != nil {
		return err
	}
	err = commit()
	ended = true // a failed commit has ended the transaction too
	return err
}
