// Package postgres is kapfhir's PostgreSQL store: store.Store on pgx/v5 with a
// pgxpool connection pool, for deployments that outgrow the embedded SQLite.
//
// Transactions run at READ COMMITTED; writes that must not race lock or
// guard the rows they change (SELECT ... FOR UPDATE, UPDATE ... WHERE
// version = n, primary keys), so a lost race is a conflict error.
package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/kapfhir/kapfhir/store"
	"github.com/kapfhir/kapfhir/store/sqlstore"
	"github.com/kapfhir/kapfhir/treatment"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// DB is a PostgreSQL store. It is safe for concurrent use.
type DB struct {
	sqlstore.Reader   // on the pool
	sqlstore.Queue    // reads on the pool, writes each in a transaction
	sqlstore.Security // audit trail and auth storage: reads and writes as Queue

	pool *pgxpool.Pool
}

var _ store.Store = (*DB)(nil)

// Open connects to the database at url (postgres://...). Call Migrate before use.
func Open(ctx context.Context, url string) (*DB, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// The parse error may quote the URL, password included: do not wrap it.
		return nil, errors.New("open postgres: invalid connection URL")
	}
	return OpenConfig(ctx, cfg)
}

// OpenConfig connects with a prepared pool configuration (tests use it to
// set search_path to a schema of their own).
func OpenConfig(ctx context.Context, cfg *pgxpool.Config) (*DB, error) {
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	db := &DB{pool: pool}
	db.Reader = sqlstore.NewReader(dialect, querier{pool}, db.snapshot)
	db.Queue = sqlstore.NewQueue(dialect, querier{pool}, db.snapshot, db.tx)
	db.Security = sqlstore.NewSecurity(dialect, querier{pool}, db.snapshot, db.tx)
	return db, nil
}

// Close closes the pool.
func (db *DB) Close() error {
	db.pool.Close()
	return nil
}

// lockMigrations takes the transaction-scoped advisory lock that serializes
// migrations of this schema across processes.
const lockMigrations = `SELECT pg_advisory_xact_lock(hashtext('kapfhir.migrate.' || current_schema()))`

// Migrate applies the embedded migrations not yet recorded in
// schema_migrations, each in its own transaction holding an advisory lock,
// and reports how many it applied.
func (db *DB) Migrate(ctx context.Context) (applied int, err error) {
	setup := func(ctx context.Context) error {
		return pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, lockMigrations); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
			version    INTEGER PRIMARY KEY,
			name       TEXT NOT NULL,
			applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
		)`)
			return err
		})
	}
	apply := func(ctx context.Context, m sqlstore.Migration) (done bool, err error) {
		err = pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, lockMigrations); err != nil {
				return err
			}
			done, err = sqlstore.ApplyMigration(ctx, dialect, querier{tx}, m)
			return err
		})
		return done && err == nil, err
	}
	return sqlstore.Migrate(ctx, migrationFS, setup, apply)
}

// SchemaVersion returns the highest applied migration (0 for a new database).
func (db *DB) SchemaVersion(ctx context.Context) (int, error) {
	var exists bool
	if err := db.pool.QueryRow(ctx, `SELECT to_regclass('schema_migrations') IS NOT NULL`).Scan(&exists); err != nil {
		return 0, fmt.Errorf("schema version: %w", err)
	}
	if !exists {
		return 0, nil
	}
	var v *int
	if err := db.pool.QueryRow(ctx, `SELECT MAX(version) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("schema version: %w", err)
	}
	if v == nil {
		return 0, nil
	}
	return *v, nil
}

// InTx runs fn in one transaction. fn's error rolls back and is returned as
// is; a panic in fn rolls back and is returned as an internal error.
func (db *DB) InTx(ctx context.Context, fn func(tx store.Tx) error) error {
	return db.tx(ctx, func(q sqlstore.Querier) error { return fn(&Tx{sqlstore.NewWriter(dialect, q)}) })
}

// tx runs fn in one transaction (see InTx).
func (db *DB) tx(ctx context.Context, fn func(q sqlstore.Querier) error) error {
	pgTx, err := db.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	return sqlstore.RunTx(
		func() error { return fn(querier{pgTx}) },
		func() error {
			if err := pgTx.Commit(ctx); err != nil {
				if conflictCode(err) {
					return &treatment.Error{Kind: treatment.KindConflict, Msg: "concurrent change, retry", Err: err}
				}
				return fmt.Errorf("commit: %w", err)
			}
			return nil
		},
		func() error {
			if err := pgTx.Rollback(context.WithoutCancel(ctx)); !errors.Is(err, pgx.ErrTxClosed) {
				return err
			}
			return nil
		})
}

// snapshot begins a read-only REPEATABLE READ transaction.
func (db *DB) snapshot(ctx context.Context) (sqlstore.Querier, func(), error) {
	tx, err := db.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, nil, err
	}
	return querier{tx}, func() { tx.Rollback(context.WithoutCancel(ctx)) }, nil
}

// pgCode returns the SQLSTATE of err, or "".
func pgCode(err error) string {
	var e *pgconn.PgError
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// isUnique reports whether err is a unique (or primary key) violation.
func isUnique(err error) bool { return pgCode(err) == "23505" }

// conflictCode reports whether err is a serialization failure or deadlock:
// a concurrent transaction won.
func conflictCode(err error) bool {
	c := pgCode(err)
	return c == "40001" || c == "40P01"
}

// Tx is a store.Tx in one PostgreSQL transaction.
type Tx struct{ sqlstore.Writer }

var _ store.Tx = (*Tx)(nil)
