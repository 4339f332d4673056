package sqlite

import (
	"context"
	"database/sql"
	"strings"
	"sync"

	"github.com/kapfhir/kapfhir/store/sqlstore"
)

// dialect is SQLite's SQL for the shared store code: ? placeholders, lists
// expanded into IN (...), booleans as integers, no row locks (the one
// writer connection already excludes other writers), and sync seqs from a
// one-row counter that the one writer serialises.
var dialect = &sqlstore.Dialect{
	ZeroKey:       "0",
	NoRows:        sql.ErrNoRows,
	IsUnique:      isUnique,
	SelectCurrent: selectCurrent,
	Seq:           func(rank string) string { return "(SELECT value FROM sync_seq) + " + rank },
	SeqAdvance:    "UPDATE sync_seq SET value = value + ?",
}

// selectCurrent selects the current versions of the (types[i], ids[i]) keys.
func selectCurrent(types, ids []string) (string, []any) {
	pairs := make([]string, len(types))
	args := make([]any, 0, 2*len(types))
	for i := range types {
		pairs[i] = "(?, ?)"
		args = append(args, types[i], ids[i])
	}
	return `SELECT ` + sqlstore.VersionCols + ` FROM resources WHERE deleted = 0 AND (type, id) IN (VALUES ` + strings.Join(pairs, ", ") + `) ORDER BY type, id`, args
}

// queryer is what *sql.DB and *sql.Tx share.
type queryer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// querier adapts a queryer to sqlstore.Querier.
type querier struct{ q queryer }

func (q querier) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	res, err := q.q.ExecContext(ctx, query, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func (q querier) QueryRow(ctx context.Context, query string, args ...any) sqlstore.Row {
	return q.q.QueryRowContext(ctx, query, args...)
}

func (q querier) Query(ctx context.Context, query string, args ...any) (sqlstore.Rows, error) {
	rows, err := q.q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return sqlRows{rows}, nil
}

// sqlRows is *sql.Rows with a Close that ignores its error, as the
// deferred closes of a read always have.
type sqlRows struct{ *sql.Rows }

func (r sqlRows) Close() { r.Rows.Close() }

// maxCachedStmts bounds the read pool's statement cache (searches with
// different numbers of values are different statements).
const maxCachedStmts = 256

// stmtCache keeps prepared statements: the read pool's querier prepares
// each statement once and reuses it on every connection (parsing SQL is
// most of a point read's cost); the writer keeps its own (writerStmts).
type stmtCache struct {
	db    *sql.DB
	mu    sync.Mutex
	stmts map[string]*sql.Stmt
}

func newStmtCache(db *sql.DB) *stmtCache { return &stmtCache{db: db, stmts: map[string]*sql.Stmt{}} }

// lookup returns the prepared statement for query, if any, and whether
// the cache has room for another.
func (c *stmtCache) lookup(query string) (s *sql.Stmt, room bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stmts[query], len(c.stmts) < maxCachedStmts
}

// stmt returns the prepared statement for query, preparing it (with no
// lock held) when the cache has room, or nil when it is full.
func (c *stmtCache) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	if s, room := c.lookup(query); s != nil || !room {
		return s, nil
	}
	s, err := c.db.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if kept, ok := c.stmts[query]; ok { // prepared meanwhile by another caller
		s.Close()
		return kept, nil
	}
	c.stmts[query] = s
	return s, nil
}

func (c *stmtCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.stmts {
		s.Close()
	}
	c.stmts = map[string]*sql.Stmt{}
}

func (c *stmtCache) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	return querier{c.db}.Exec(ctx, query, args...)
}

func (c *stmtCache) QueryRow(ctx context.Context, query string, args ...any) sqlstore.Row {
	s, err := c.stmt(ctx, query)
	if err != nil || s == nil {
		return c.db.QueryRowContext(ctx, query, args...)
	}
	return s.QueryRowContext(ctx, args...)
}

func (c *stmtCache) Query(ctx context.Context, query string, args ...any) (sqlstore.Rows, error) {
	s, err := c.stmt(ctx, query)
	if err != nil || s == nil {
		return querier{c.db}.Query(ctx, query, args...)
	}
	rows, err := s.QueryContext(ctx, args...)
	if err != nil {
		return nil, err
	}
	return sqlRows{rows}, nil
}

// writerStmts are the writer's prepared statements. A statement cannot be
// prepared inside a transaction on the writer pool (the transaction holds
// its one connection), so a statement run unprepared in one transaction is
// prepared before the next begins.
type writerStmts struct {
	cache *stmtCache

	mu      sync.Mutex
	pending map[string]bool
}

// prepared returns the statement for query, or nil (noting query, so
// that it is prepared before the next transaction).
func (w *writerStmts) prepared(query string) *sql.Stmt {
	s, room := w.cache.lookup(query)
	if s == nil && room {
		w.mu.Lock()
		if w.pending == nil {
			w.pending = map[string]bool{}
		}
		w.pending[query] = true
		w.mu.Unlock()
	}
	return s
}

// prepare prepares the pending statements. Call it outside a transaction.
// A statement that fails to prepare is run unprepared, as before.
func (w *writerStmts) prepare(ctx context.Context) {
	w.mu.Lock()
	pending := w.pending
	w.pending = nil
	w.mu.Unlock()
	for q := range pending {
		_, _ = w.cache.stmt(ctx, q)
	}
}

// txQuerier is a transaction's querier: prepared statements where the
// writer has them.
type txQuerier struct {
	tx    *sql.Tx
	stmts *writerStmts
}

func (q txQuerier) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	s := q.stmts.prepared(query)
	if s == nil {
		return querier{q.tx}.Exec(ctx, query, args...)
	}
	res, err := q.tx.StmtContext(ctx, s).ExecContext(ctx, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func (q txQuerier) QueryRow(ctx context.Context, query string, args ...any) sqlstore.Row {
	s := q.stmts.prepared(query)
	if s == nil {
		return q.tx.QueryRowContext(ctx, query, args...)
	}
	return q.tx.StmtContext(ctx, s).QueryRowContext(ctx, args...)
}

func (q txQuerier) Query(ctx context.Context, query string, args ...any) (sqlstore.Rows, error) {
	s := q.stmts.prepared(query)
	if s == nil {
		return querier{q.tx}.Query(ctx, query, args...)
	}
	rows, err := q.tx.StmtContext(ctx, s).QueryContext(ctx, args...)
	if err != nil {
		return nil, err
	}
	return sqlRows{rows}, nil
}
