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
	"os"
	"path/filepath"
	"runtime"
	"strconv"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/kapfhir/kapfhir/store"
	"github.com/kapfhir/kapfhir/store/sqlstore"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// busyTimeoutMS is how long a connection waits for a lock held by another
// process before failing with SQLITE_BUSY.
const busyTimeoutMS = 10000

// DB is a SQLite store. It is safe for concurrent use.
type DB struct {
	sqlstore.Reader   // on the reader pool
	sqlstore.Queue    // reads on the reader pool, writes on the writer
	sqlstore.Security // audit trail and auth storage: reads and writes as Queue

	path  string
	write *sql.DB // exactly one connection: all writes and transactions
	read  *sql.DB // query-only pool
	stmts *stmtCache
	// txStmts are the writer's prepared statements: prepared between
	// transactions (a transaction holds the one connection) and run in
	// them, so a write repeated in every transaction is parsed once.
	txStmts *writerStmts
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
	// cache_size (negative: KiB) keeps hot pages per connection. No mmap:
	// every audited read is followed by a write, and a reader whose
	// snapshot follows a write unmaps and remaps the whole mapping (SQLite
	// resets a connection's pager when the WAL changed), which cost more
	// than the read syscalls it saves (measured in docs/PERFORMANCE.md).
	common := "_pragma=busy_timeout(" + strconv.Itoa(busyTimeoutMS) + ")&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)" +
		"&_pragma=mmap_size(0)&_pragma=cache_size(-16384)"
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
	db := &DB{path: path, write: write, read: read, stmts: newStmtCache(read), txStmts: &writerStmts{cache: newStmtCache(write)}}
	db.Reader = sqlstore.NewReader(dialect, db.stmts, db.snapshot)
	db.Queue = sqlstore.NewQueue(dialect, db.stmts, db.snapshot, db.tx)
	db.Security = sqlstore.NewSecurity(dialect, db.stmts, db.snapshot, db.tx)
	return db, nil
}

// Close closes the reader pool and the writer.
func (db *DB) Close() error {
	db.stmts.close()
	db.txStmts.cache.close()
	return errors.Join(db.read.Close(), db.write.Close())
}

// Migrate applies the embedded migrations not yet recorded in
// schema_migrations, each in its own transaction, and reports how many it applied.
func (db *DB) Migrate(ctx context.Context) (applied int, err error) {
	return sqlstore.Migrate(ctx, migrationFS, func(ctx context.Context) error {
		_, err := db.write.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    INTEGER PRIMARY KEY,
		name       TEXT NOT NULL,
		applied_at INTEGER NOT NULL DEFAULT (unixepoch())
	)`)
		return err
	}, db.migrateOne)
}

// migrateOne applies m unless it is already recorded; it reports whether it applied it.
func (db *DB) migrateOne(ctx context.Context, m sqlstore.Migration) (bool, error) {
	tx, err := db.write.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer tx.Rollback()
	if done, err := sqlstore.ApplyMigration(ctx, dialect, querier{tx}, m); !done || err != nil {
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
func (db *DB) InTx(ctx context.Context, fn func(tx store.Tx) error) error {
	return db.tx(ctx, func(q sqlstore.Querier) error { return fn(&Tx{sqlstore.NewWriter(dialect, q)}) })
}

// tx runs fn in one IMMEDIATE transaction on the writer connection (see InTx).
func (db *DB) tx(ctx context.Context, fn func(q sqlstore.Querier) error) error {
	db.txStmts.prepare(ctx)
	sqlTx, err := db.write.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	return sqlstore.RunTx(
		func() error { return fn(txQuerier{tx: sqlTx, stmts: db.txStmts}) },
		func() error {
			if err := sqlTx.Commit(); err != nil {
				return fmt.Errorf("commit: %w", err)
			}
			return nil
		},
		func() error {
			if err := sqlTx.Rollback(); !errors.Is(err, sql.ErrTxDone) {
				return err
			}
			return nil
		})
}

// snapshot begins a read-only transaction on the reader pool.
func (db *DB) snapshot(ctx context.Context) (sqlstore.Querier, func(), error) {
	tx, err := db.read.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, nil, err
	}
	return querier{tx}, func() { tx.Rollback() }, nil
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
type Tx struct{ sqlstore.Writer }

var _ store.Tx = (*Tx)(nil)
