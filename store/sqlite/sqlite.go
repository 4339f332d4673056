// Package sqlite is kapfhir's embedded store: store.Store on SQLite through
// modernc.org/sqlite (pure Go, no cgo).
//
// The database runs in WAL mode with one writer connection (every transaction
// begins IMMEDIATE, so writers queue instead of failing to upgrade a lock) and
// a pool of query-only reader connections that never wait for the writer.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/kapfhir/kapfhir/store"
	"github.com/kapfhir/kapfhir/treatment"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// busyTimeoutMS is how long a connection waits for a lock held by another
// process before failing with SQLITE_BUSY.
const busyTimeoutMS = 10000

// DB is a SQLite store. It is safe for concurrent use.
type DB struct {
	path  string
	write *sql.DB // exactly one connection: all writes and transactions
	read  *sql.DB // query-only pool
}

var _ store.Store = (*DB)(nil)

// Open opens (creating if needed) the SQLite database at path, creating its
// parent directory. Call Migrate before use.
func Open(ctx context.Context, path string) (*DB, error) {
	if path == "" {
		return nil, errors.New("open sqlite: empty path")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open sqlite: create directory: %w", err)
	}
	common := "_pragma=busy_timeout(" + strconv.Itoa(busyTimeoutMS) + ")&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)"
	write, err := sql.Open("sqlite", "file:"+path+"?"+common+"&_pragma=journal_mode(WAL)&_txlock=immediate")
	if err != nil {
		return nil, fmt.Errorf("open sqlite writer: %w", err)
	}
	write.SetMaxOpenConns(1)
	write.SetMaxIdleConns(1)
	write.SetConnMaxLifetime(0)
	write.SetConnMaxIdleTime(0)
	// Connect the writer first: it switches the file to WAL before any reader opens it.
	if err := write.PingContext(ctx); err != nil {
		write.Close()
		return nil, fmt.Errorf("open sqlite writer: %w", err)
	}
	read, err := sql.Open("sqlite", "file:"+path+"?"+common+"&_pragma=query_only(1)")
	if err != nil {
		write.Close()
		return nil, fmt.Errorf("open sqlite readers: %w", err)
	}
	n := max(4, runtime.GOMAXPROCS(0))
	read.SetMaxOpenConns(n)
	read.SetMaxIdleConns(n)
	if err := read.PingContext(ctx); err != nil {
		write.Close()
		read.Close()
		return nil, fmt.Errorf("open sqlite readers: %w", err)
	}
	return &DB{path: path, write: write, read: read}, nil
}

// Close closes the reader pool and the writer.
func (db *DB) Close() error {
	return errors.Join(db.read.Close(), db.write.Close())
}

// migration is one embedded schema change.
type migration struct {
	version int
	name    string
	sql     string
}

// loadMigrations returns the embedded migrations in version order. Files are
// named NNNN_description.sql.
func loadMigrations(fsys fs.FS) ([]migration, error) {
	names, err := fs.Glob(fsys, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var ms []migration
	seen := map[int]string{}
	for _, name := range names {
		base := filepath.Base(name)
		num, _, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must start with a positive number and _", base)
		}
		if prev, dup := seen[v]; dup {
			return nil, fmt.Errorf("migrations %s and %s share version %d", prev, base, v)
		}
		seen[v] = base
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: base, sql: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	return ms, nil
}

// Migrate applies the embedded migrations not yet recorded in
// schema_migrations, each in its own transaction, and reports how many it applied.
func (db *DB) Migrate(ctx context.Context) (applied int, err error) {
	ms, err := loadMigrations(migrationFS)
	if err != nil {
		return 0, fmt.Errorf("migrate: %w", err)
	}
	if _, err := db.write.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		name       TEXT NOT NULL,
		applied_at INTEGER NOT NULL DEFAULT (unixepoch())
	)`); err != nil {
		return 0, fmt.Errorf("migrate: create schema_migrations: %w", err)
	}
	for _, m := range ms {
		done, err := db.migrateOne(ctx, m)
		if err != nil {
			return applied, fmt.Errorf("migrate %s: %w", m.name, err)
		}
		if done {
			applied++
		}
	}
	return applied, nil
}

// migrateOne applies m unless it is already recorded; it reports whether it applied it.
func (db *DB) migrateOne(ctx context.Context, m migration) (bool, error) {
	tx, err := db.write.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = ?`, m.version).Scan(&n); err != nil {
		return false, err
	}
	if n > 0 {
		return false, nil
	}
	if _, err := tx.ExecContext(ctx, m.sql); err != nil {
		return false, err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, name) VALUES (?, ?)`, m.version, m.name); err != nil {
		return false, err
	}
	return true, tx.Commit()
}

// SchemaVersion returns the highest applied migration (0 for a new database).
func (db *DB) SchemaVersion(ctx context.Context) (int, error) {
	var exists int
	if err := db.read.QueryRowContext(ctx, `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'`).Scan(&exists); err != nil {
		return 0, fmt.Errorf("schema version: %w", err)
	}
	if exists == 0 {
		return 0, nil
	}
	var v sql.NullInt64
	if err := db.read.QueryRowContext(ctx, `SELECT MAX(version) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("schema version: %w", err)
	}
	return int(v.Int64), nil
}

// InTx runs fn in one IMMEDIATE transaction on the writer connection. fn's
// error rolls back and is returned as is; a panic in fn rolls back and is
// returned as an internal error.
func (db *DB) InTx(ctx context.Context, fn func(tx store.Tx) error) (err error) {
	sqlTx, err := db.write.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	committed := false
	defer func() {
		if r := recover(); r != nil {
			err = &treatment.Error{Kind: treatment.KindInternal, Msg: "internal error", Err: fmt.Errorf("panic in transaction: %v", r)}
		}
		if !committed {
			if rbErr := sqlTx.Rollback(); rbErr != nil && !errors.Is(rbErr, sql.ErrTxDone) {
				err = errors.Join(err, fmt.Errorf("rollback: %w", rbErr))
			}
		}
	}()
	if err := fn(&Tx{q: sqlTx}); err != nil {
		return err
	}
	if err := sqlTx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	committed = true
	return nil
}

// queryer is what *sql.DB and *sql.Tx share.
type queryer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// isUnique reports whether err is a UNIQUE or PRIMARY KEY constraint violation.
func isUnique(err error) bool {
	var e interface{ Code() int }
	if errors.As(err, &e) {
		return e.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || e.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	return false
}

// Tx is a store.Tx on the writer connection.
type Tx struct{ q queryer }

var _ store.Tx = (*Tx)(nil)

// Patient implements store.DomainReader.
func (db *DB) Patient(ctx context.Context, id string) (treatment.Patient, error) {
	return getPatient(ctx, db.read, id)
}

// Program implements store.DomainReader.
func (db *DB) Program(ctx context.Context, id string) (treatment.Program, error) {
	return getProgram(ctx, db.read, id)
}

// ProgramBySession implements store.DomainReader.
func (db *DB) ProgramBySession(ctx context.Context, sessionID string) (treatment.Program, error) {
	return getProgramBySession(ctx, db.read, sessionID)
}

// ProgramsByPatient implements store.DomainReader.
func (db *DB) ProgramsByPatient(ctx context.Context, patientID string) ([]treatment.Program, error) {
	return getProgramsByPatient(ctx, db.read, patientID)
}

// Patient implements store.DomainReader.
func (tx *Tx) Patient(ctx context.Context, id string) (treatment.Patient, error) {
	return getPatient(ctx, tx.q, id)
}

// Program implements store.DomainReader.
func (tx *Tx) Program(ctx context.Context, id string) (treatment.Program, error) {
	return getProgram(ctx, tx.q, id)
}

// ProgramBySession implements store.DomainReader.
func (tx *Tx) ProgramBySession(ctx context.Context, sessionID string) (treatment.Program, error) {
	return getProgramBySession(ctx, tx.q, sessionID)
}

// ProgramsByPatient implements store.DomainReader.
func (tx *Tx) ProgramsByPatient(ctx context.Context, patientID string) ([]treatment.Program, error) {
	return getProgramsByPatient(ctx, tx.q, patientID)
}
