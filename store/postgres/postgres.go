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
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/kapfhir/kapfhir/store"
	"github.com/kapfhir/kapfhir/treatment"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// DB is a PostgreSQL store. It is safe for concurrent use.
type DB struct {
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
	return &DB{pool: pool}, nil
}

// Close closes the pool.
func (db *DB) Close() error {
	db.pool.Close()
	return nil
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
		base := path.Base(name)
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

// lockMigrations takes the transaction-scoped advisory lock that serializes
// migrations of this schema across processes.
const lockMigrations = `SELECT pg_advisory_xact_lock(hashtext('kapfhir.migrate.' || current_schema()))`

// Migrate applies the embedded migrations not yet recorded in
// schema_migrations, each in its own transaction holding an advisory lock,
// and reports how many it applied.
func (db *DB) Migrate(ctx context.Context) (applied int, err error) {
	ms, err := loadMigrations(migrationFS)
	if err != nil {
		return 0, fmt.Errorf("migrate: %w", err)
	}
	err = pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
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
	if err != nil {
		return 0, fmt.Errorf("migrate: create schema_migrations: %w", err)
	}
	for _, m := range ms {
		done := false
		err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, lockMigrations); err != nil {
				return err
			}
			var n int
			if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = $1`, m.version).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				return nil
			}
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, m.version, m.name); err != nil {
				return err
			}
			done = true
			return nil
		})
		if err != nil {
			return applied, fmt.Errorf("migrate %s: %w", m.name, err)
		}
		if done {
			applied++
		}
	}
	return applied, nil
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
func (db *DB) InTx(ctx context.Context, fn func(tx store.Tx) error) (err error) {
	pgTx, err := db.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	committed := false
	defer func() {
		if r := recover(); r != nil {
			err = &treatment.Error{Kind: treatment.KindInternal, Msg: "internal error", Err: fmt.Errorf("panic in transaction: %v", r)}
		}
		if !committed {
			if rbErr := pgTx.Rollback(context.WithoutCancel(ctx)); rbErr != nil && !errors.Is(rbErr, pgx.ErrTxClosed) {
				err = errors.Join(err, fmt.Errorf("rollback: %w", rbErr))
			}
		}
	}()
	if err := fn(&Tx{q: pgTx}); err != nil {
		return err
	}
	if err := pgTx.Commit(ctx); err != nil {
		committed = true // a failed commit has already ended the transaction
		if conflictCode(err) {
			return &treatment.Error{Kind: treatment.KindConflict, Msg: "concurrent change, retry", Err: err}
		}
		return fmt.Errorf("commit: %w", err)
	}
	committed = true
	return nil
}

// queryer is what *pgxpool.Pool and pgx.Tx share.
type queryer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
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
type Tx struct{ q queryer }

var _ store.Tx = (*Tx)(nil)

// Patient implements store.DomainReader.
func (db *DB) Patient(ctx context.Context, id string) (treatment.Patient, error) {
	return getPatient(ctx, db.pool, id)
}

// Program implements store.DomainReader.
func (db *DB) Program(ctx context.Context, id string) (treatment.Program, error) {
	return getProgram(ctx, db.pool, id)
}

// ProgramBySession implements store.DomainReader.
func (db *DB) ProgramBySession(ctx context.Context, sessionID string) (treatment.Program, error) {
	return getProgramBySession(ctx, db.pool, sessionID)
}

// ProgramsByPatient implements store.DomainReader.
func (db *DB) ProgramsByPatient(ctx context.Context, patientID string) ([]treatment.Program, error) {
	return getProgramsByPatient(ctx, db.pool, patientID)
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
