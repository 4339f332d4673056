package postgres

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/store/sqlstore"
)

// dialect is PostgreSQL's SQL for the shared store code: $n placeholders,
// lists bound as text[] arrays, native booleans, the current resource row
// locked FOR UPDATE before it is replaced, index rows and include
// targets passed as arrays through unnest, leasers of an endpoint's queue
// serialised on its row, and sync seqs from a SEQUENCE.
var dialect = &sqlstore.Dialect{
	Numbered:      true,
	Arrays:        true,
	NativeBool:    true,
	ZeroKey:       "0::bigint",
	LockRow:       " FOR UPDATE",
	LockQueue:     " FOR NO KEY UPDATE",
	ShareKey:      " FOR KEY SHARE",
	Seq:           func(string) string { return "nextval('sync_seq')" },
	NoRows:        pgx.ErrNoRows,
	IsUnique:      isUnique,
	IsConflict:    conflictCode,
	SelectCurrent: selectCurrent,
	InsertIndex:   insertIndex,
}

// selectCurrent selects the current versions of the (types[i], ids[i]) keys.
func selectCurrent(types, ids []string) (string, []any) {
	return `SELECT r.type, r.id, r.version_id, r.last_updated, r.deleted, r.json
		FROM resources r JOIN unnest($1::text[], $2::text[]) AS k(type, id) ON r.type = k.type AND r.id = k.id
		WHERE NOT r.deleted ORDER BY r.type, r.id`, []any{types, ids}
}

// insertIndex inserts the search index rows of one resource, one statement per table.
func insertIndex(ctx context.Context, q sqlstore.Querier, typ, id string, ix resource.Index) error {
	if n := len(ix.Tokens); n > 0 {
		params, systems, codes := make([]string, n), make([]string, n), make([]string, n)
		for i, t := range ix.Tokens {
			params[i], systems[i], codes[i] = t.Param, t.System, t.Code
		}
		if _, err := q.Exec(ctx, `INSERT INTO search_tokens (type, id, param, system, code)
			SELECT $1, $2, p, s, c FROM unnest($3::text[], $4::text[], $5::text[]) AS u(p, s, c)`, typ, id, params, systems, codes); err != nil {
			return err
		}
	}
	if n := len(ix.Refs); n > 0 {
		params, targets := make([]string, n), make([]string, n)
		for i, r := range ix.Refs {
			params[i], targets[i] = r.Param, r.Target
		}
		if _, err := q.Exec(ctx, `INSERT INTO search_refs (type, id, param, target)
			SELECT $1, $2, p, t FROM unnest($3::text[], $4::text[]) AS u(p, t)`, typ, id, params, targets); err != nil {
			return err
		}
	}
	if n := len(ix.Dates); n > 0 {
		params, los, his := make([]string, n), make([]int64, n), make([]int64, n)
		for i, d := range ix.Dates {
			params[i], los[i], his[i] = d.Param, sqlstore.Micros(d.Lo), sqlstore.Micros(d.Hi)
		}
		if _, err := q.Exec(ctx, `INSERT INTO search_dates (type, id, param, lo, hi)
			SELECT $1, $2, p, l, h FROM unnest($3::text[], $4::bigint[], $5::bigint[]) AS u(p, l, h)`, typ, id, params, los, his); err != nil {
			return err
		}
	}
	return nil
}

// queryer is what *pgxpool.Pool and pgx.Tx share.
type queryer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// querier adapts a queryer to sqlstore.Querier.
type querier struct{ q queryer }

func (q querier) Exec(ctx context.Context, sql string, args ...any) (int64, error) {
	tag, err := q.q.Exec(ctx, sql, args...)
	return tag.RowsAffected(), err
}

func (q querier) QueryRow(ctx context.Context, sql string, args ...any) sqlstore.Row {
	return q.q.QueryRow(ctx, sql, args...)
}

func (q querier) Query(ctx context.Context, sql string, args ...any) (sqlstore.Rows, error) {
	rows, err := q.q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return rows, nil
}
