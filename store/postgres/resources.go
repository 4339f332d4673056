package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/treatment"
)

// micros converts a time to the stored form, Unix microseconds.
func micros(t time.Time) int64 { return t.UnixMicro() }

// fromMicros converts a stored time back, in UTC.
func fromMicros(us int64) time.Time { return time.UnixMicro(us).UTC() }

// versionCols are the columns scanVersion reads, from resources or resource_versions.
const versionCols = `type, id, version_id, last_updated, deleted, json`

func scanVersion(s interface{ Scan(...any) error }) (resource.Version, error) {
	var v resource.Version
	var lu int64
	if err := s.Scan(&v.Type, &v.ID, &v.VersionID, &lu, &v.Deleted, &v.JSON); err != nil {
		return resource.Version{}, err
	}
	v.LastUpdated = fromMicros(lu)
	return v, nil
}

func collectVersions(rows pgx.Rows) ([]resource.Version, error) {
	defer rows.Close()
	var out []resource.Version
	for rows.Next() {
		v, err := scanVersion(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// Read implements store.ResourceReader.
func (db *DB) Read(ctx context.Context, typ, id string) (resource.Version, error) {
	v, err := scanVersion(db.pool.QueryRow(ctx, `SELECT `+versionCols+` FROM resources WHERE type = $1 AND id = $2`, typ, id))
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && v.Deleted) {
		return resource.Version{}, treatment.NotFound(typ, id)
	}
	if err != nil {
		return resource.Version{}, fmt.Errorf("read %s/%s: %w", typ, id, err)
	}
	return v, nil
}

// VRead implements store.ResourceReader.
func (db *DB) VRead(ctx context.Context, typ, id string, versionID int64) (resource.Version, error) {
	v, err := scanVersion(db.pool.QueryRow(ctx, `SELECT `+versionCols+` FROM resource_versions WHERE type = $1 AND id = $2 AND version_id = $3`, typ, id, versionID))
	if errors.Is(err, pgx.ErrNoRows) {
		return resource.Version{}, treatment.NotFound(typ, id+"/_history/"+strconv.FormatInt(versionID, 10))
	}
	if err != nil {
		return resource.Version{}, fmt.Errorf("vread %s/%s/_history/%d: %w", typ, id, versionID, err)
	}
	return v, nil
}

// History implements store.ResourceReader.
func (db *DB) History(ctx context.Context, typ, id string) ([]resource.Version, error) {
	rows, err := db.pool.Query(ctx, `SELECT `+versionCols+` FROM resource_versions WHERE type = $1 AND id = $2 ORDER BY version_id DESC`, typ, id)
	if err != nil {
		return nil, fmt.Errorf("history %s/%s: %w", typ, id, err)
	}
	vs, err := collectVersions(rows)
	if err != nil {
		return nil, fmt.Errorf("history %s/%s: %w", typ, id, err)
	}
	if len(vs) == 0 {
		return nil, treatment.NotFound(typ, id)
	}
	return vs, nil
}

// CurrentVersion implements store.Tx.
func (tx *Tx) CurrentVersion(ctx context.Context, typ, id string) (int64, []byte, error) {
	var v int64
	var hash []byte
	err := tx.q.QueryRow(ctx, `SELECT version_id, hash FROM resources WHERE type = $1 AND id = $2`, typ, id).Scan(&v, &hash)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("current version of %s/%s: %w", typ, id, err)
	}
	return v, hash, nil
}

// PutVersion implements store.Tx. The current row is locked first, so of two
// transactions writing the same version, the second waits and then conflicts.
func (tx *Tx) PutVersion(ctx context.Context, w resource.Write) error {
	v := w.Version
	if v.Type == "" || v.ID == "" {
		return treatment.Errorf(treatment.KindInvalid, "resource version needs a type and an id")
	}
	conflict := func(err error) error {
		return &treatment.Error{Kind: treatment.KindConflict, Msg: fmt.Sprintf("%s/%s changed concurrently", v.Type, v.ID), Err: err}
	}
	var cur int64
	err := tx.q.QueryRow(ctx, `SELECT version_id FROM resources WHERE type = $1 AND id = $2 FOR UPDATE`, v.Type, v.ID).Scan(&cur)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		cur = 0
	case conflictCode(err):
		return conflict(err)
	case err != nil:
		return fmt.Errorf("put %s/%s: %w", v.Type, v.ID, err)
	}
	if v.VersionID != cur+1 {
		return treatment.Errorf(treatment.KindConflict, "%s/%s is at version %d: cannot store version %d", v.Type, v.ID, cur, v.VersionID)
	}
	lu, sd := micros(v.LastUpdated), micros(w.Index.SortDate)
	if cur == 0 {
		_, err = tx.q.Exec(ctx, `INSERT INTO resources (type, id, version_id, last_updated, deleted, hash, sort_date, json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			v.Type, v.ID, v.VersionID, lu, v.Deleted, w.Hash, sd, v.JSON)
	} else {
		_, err = tx.q.Exec(ctx, `UPDATE resources SET version_id = $1, last_updated = $2, deleted = $3, hash = $4, sort_date = $5, json = $6 WHERE type = $7 AND id = $8`,
			v.VersionID, lu, v.Deleted, w.Hash, sd, v.JSON, v.Type, v.ID)
	}
	if err != nil {
		if isUnique(err) || conflictCode(err) {
			return conflict(err)
		}
		return fmt.Errorf("put %s/%s: %w", v.Type, v.ID, err)
	}
	if _, err := tx.q.Exec(ctx, `INSERT INTO resource_versions (type, id, version_id, last_updated, deleted, json) VALUES ($1, $2, $3, $4, $5, $6)`,
		v.Type, v.ID, v.VersionID, lu, v.Deleted, v.JSON); err != nil {
		if isUnique(err) || conflictCode(err) {
			return conflict(err)
		}
		return fmt.Errorf("put %s/%s: version: %w", v.Type, v.ID, err)
	}
	if err := tx.writeIndex(ctx, v.Type, v.ID, w.Index); err != nil {
		return fmt.Errorf("put %s/%s: index: %w", v.Type, v.ID, err)
	}
	return nil
}

// writeIndex replaces the search index rows of one resource, one statement per table.
func (tx *Tx) writeIndex(ctx context.Context, typ, id string, ix resource.Index) error {
	for _, table := range []string{"search_tokens", "search_refs", "search_dates"} {
		if _, err := tx.q.Exec(ctx, `DELETE FROM `+table+` WHERE type = $1 AND id = $2`, typ, id); err != nil {
			return err
		}
	}
	if n := len(ix.Tokens); n > 0 {
		params, systems, codes := make([]string, n), make([]string, n), make([]string, n)
		for i, t := range ix.Tokens {
			params[i], systems[i], codes[i] = t.Param, t.System, t.Code
		}
		if _, err := tx.q.Exec(ctx, `INSERT INTO search_tokens (type, id, param, system, code)
			SELECT $1, $2, p, s, c FROM unnest($3::text[], $4::text[], $5::text[]) AS u(p, s, c)`, typ, id, params, systems, codes); err != nil {
			return err
		}
	}
	if n := len(ix.Refs); n > 0 {
		params, targets := make([]string, n), make([]string, n)
		for i, r := range ix.Refs {
			params[i], targets[i] = r.Param, r.Target
		}
		if _, err := tx.q.Exec(ctx, `INSERT INTO search_refs (type, id, param, target)
			SELECT $1, $2, p, t FROM unnest($3::text[], $4::text[]) AS u(p, t)`, typ, id, params, targets); err != nil {
			return err
		}
	}
	if n := len(ix.Dates); n > 0 {
		params, los, his := make([]string, n), make([]int64, n), make([]int64, n)
		for i, d := range ix.Dates {
			params[i], los[i], his[i] = d.Param, micros(d.Lo), micros(d.Hi)
		}
		if _, err := tx.q.Exec(ctx, `INSERT INTO search_dates (type, id, param, lo, hi)
			SELECT $1, $2, p, l, h FROM unnest($3::text[], $4::bigint[], $5::bigint[]) AS u(p, l, h)`, typ, id, params, los, his); err != nil {
			return err
		}
	}
	return nil
}

// builder accumulates SQL conditions and their arguments; values only ever
// travel as arguments.
type builder struct {
	conds []string
	args  []any
}

func (b *builder) arg(v any) string {
	b.args = append(b.args, v)
	return "$" + strconv.Itoa(len(b.args))
}

func (b *builder) where() string { return strings.Join(b.conds, " AND ") }

// dateCond is the condition for comparing the range [lo, hi) (SQL
// expressions) with the filter's range, as documented on resource.DateFilter.
func (b *builder) dateCond(lo, hi string, f resource.DateFilter) (string, error) {
	flo, fhi := micros(f.Lo), micros(f.Hi)
	switch f.Prefix {
	case resource.EQ, "":
		return fmt.Sprintf("(%s >= %s AND %s <= %s)", lo, b.arg(flo), hi, b.arg(fhi)), nil
	case resource.NE:
		return fmt.Sprintf("NOT (%s >= %s AND %s <= %s)", lo, b.arg(flo), hi, b.arg(fhi)), nil
	case resource.LT:
		return fmt.Sprintf("%s < %s", lo, b.arg(flo)), nil
	case resource.LE:
		return fmt.Sprintf("%s < %s", lo, b.arg(fhi)), nil
	case resource.GT:
		return fmt.Sprintf("%s > %s", hi, b.arg(fhi)), nil
	case resource.GE:
		return fmt.Sprintf("%s > %s", hi, b.arg(flo)), nil
	}
	return "", treatment.Errorf(treatment.KindInvalid, "unsupported date prefix %q", f.Prefix)
}

// filters adds the query's filters (everything but paging) to b.
func (b *builder) filters(q resource.Query) error {
	b.conds = append(b.conds, "r.type = "+b.arg(q.Type), "NOT r.deleted")
	if len(q.IDs) > 0 {
		b.conds = append(b.conds, "r.id = ANY("+b.arg(q.IDs)+"::text[])")
	}
	for _, f := range q.Tokens {
		param := b.arg(f.Param)
		var alts []string
		for _, v := range f.Values {
			switch {
			case v.AnySystem && v.Code == "":
				alts = append(alts, "TRUE")
			case v.AnySystem:
				alts = append(alts, "t.code = "+b.arg(v.Code))
			case v.Code == "":
				alts = append(alts, "t.system = "+b.arg(v.System))
			default:
				alts = append(alts, "(t.system = "+b.arg(v.System)+" AND t.code = "+b.arg(v.Code)+")")
			}
		}
		if len(alts) == 0 {
			alts = []string{"FALSE"}
		}
		b.conds = append(b.conds, "EXISTS (SELECT 1 FROM search_tokens t WHERE t.type = r.type AND t.id = r.id AND t.param = "+param+" AND ("+strings.Join(alts, " OR ")+"))")
	}
	for _, f := range q.Refs {
		if len(f.Targets) == 0 {
			b.conds = append(b.conds, "FALSE")
			continue
		}
		b.conds = append(b.conds, "EXISTS (SELECT 1 FROM search_refs s WHERE s.type = r.type AND s.id = r.id AND s.param = "+b.arg(f.Param)+" AND s.target = ANY("+b.arg(f.Targets)+"::text[]))")
	}
	for _, f := range q.Dates {
		if f.Param == "_lastUpdated" {
			// A version's lastUpdated is the point range [lu, lu+1µs).
			c, err := b.dateCond("r.last_updated", "(r.last_updated + 1)", f)
			if err != nil {
				return err
			}
			b.conds = append(b.conds, c)
			continue
		}
		param := b.arg(f.Param)
		c, err := b.dateCond("d.lo", "d.hi", f)
		if err != nil {
			return err
		}
		b.conds = append(b.conds, "EXISTS (SELECT 1 FROM search_dates d WHERE d.type = r.type AND d.id = r.id AND d.param = "+param+" AND "+c+")")
	}
	return nil
}

// sortColumn returns the column a sort orders by before the id ("" for _id).
func sortColumn(s resource.SortField) (string, error) {
	switch s {
	case resource.SortID, "":
		return "", nil
	case resource.SortDate:
		return "r.sort_date", nil
	case resource.SortLastUpdated:
		return "r.last_updated", nil
	}
	return "", treatment.Errorf(treatment.KindInvalid, "unsupported sort %q", s)
}

// Search implements store.ResourceReader. Pages are keyset pages: rows are
// ordered by (sort value, id), both ascending or both descending, and a page
// continues strictly after its cursor.
func (db *DB) Search(ctx context.Context, q resource.Query) (resource.Page, error) {
	if q.Count < 0 {
		return resource.Page{}, treatment.Errorf(treatment.KindInvalid, "count must not be negative")
	}
	col, err := sortColumn(q.Sort)
	if err != nil {
		return resource.Page{}, err
	}
	var b builder
	if err := b.filters(q); err != nil {
		return resource.Page{}, err
	}

	// One snapshot, so the total and the page agree.
	tx, err := db.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return resource.Page{}, fmt.Errorf("search %s: %w", q.Type, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))

	var page resource.Page
	if err := tx.QueryRow(ctx, `SELECT COUNT(*) FROM resources r WHERE `+b.where(), b.args...).Scan(&page.Total); err != nil {
		return resource.Page{}, fmt.Errorf("search %s: count: %w", q.Type, err)
	}
	if q.Count == 0 {
		return page, nil
	}

	dir, cmp := "ASC", ">"
	if q.Desc {
		dir, cmp = "DESC", "<"
	}
	order := "r.id " + dir
	if col != "" {
		order = col + " " + dir + ", " + order
	}
	if q.After != nil {
		if col == "" {
			b.conds = append(b.conds, "r.id "+cmp+" "+b.arg(q.After.ID))
		} else {
			t := b.arg(micros(q.After.Time))
			b.conds = append(b.conds, fmt.Sprintf("(%s %s %s OR (%s = %s AND r.id %s %s))", col, cmp, t, col, t, cmp, b.arg(q.After.ID)))
		}
	}
	sortCol := col
	if sortCol == "" {
		sortCol = "0::bigint"
	}
	rows, err := tx.Query(ctx, `SELECT r.type, r.id, r.version_id, r.last_updated, r.deleted, r.json, `+sortCol+
		` FROM resources r WHERE `+b.where()+` ORDER BY `+order+` LIMIT `+b.arg(q.Count+1), b.args...)
	if err != nil {
		return resource.Page{}, fmt.Errorf("search %s: %w", q.Type, err)
	}
	defer rows.Close()
	var keys []int64
	for rows.Next() {
		var v resource.Version
		var lu, key int64
		if err := rows.Scan(&v.Type, &v.ID, &v.VersionID, &lu, &v.Deleted, &v.JSON, &key); err != nil {
			return resource.Page{}, fmt.Errorf("search %s: %w", q.Type, err)
		}
		v.LastUpdated = fromMicros(lu)
		page.Versions = append(page.Versions, v)
		keys = append(keys, key)
	}
	if err := rows.Err(); err != nil {
		return resource.Page{}, fmt.Errorf("search %s: %w", q.Type, err)
	}
	if len(page.Versions) > q.Count {
		page.Versions = page.Versions[:q.Count]
		last := page.Versions[q.Count-1]
		page.Next = &resource.Cursor{ID: last.ID}
		if col != "" {
			page.Next.Time = fromMicros(keys[q.Count-1])
		}
	}
	return page, nil
}

// Include implements store.ResourceReader.
func (db *DB) Include(ctx context.Context, typ string, ids []string, param string) ([]resource.Version, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	rows, err := db.pool.Query(ctx, `SELECT DISTINCT target FROM search_refs WHERE type = $1 AND param = $2 AND id = ANY($3::text[])`, typ, param, ids)
	if err != nil {
		return nil, fmt.Errorf("include %s:%s: %w", typ, param, err)
	}
	targets, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("include %s:%s: %w", typ, param, err)
	}
	var types, keys []string
	for _, target := range targets {
		t, id, ok := strings.Cut(target, "/")
		if !ok || t == "" || id == "" {
			continue
		}
		types, keys = append(types, t), append(keys, id)
	}
	if len(types) == 0 {
		return nil, nil
	}
	rows, err = db.pool.Query(ctx, `SELECT r.type, r.id, r.version_id, r.last_updated, r.deleted, r.json
		FROM resources r JOIN unnest($1::text[], $2::text[]) AS k(type, id) ON r.type = k.type AND r.id = k.id
		WHERE NOT r.deleted ORDER BY r.type, r.id`, types, keys)
	if err != nil {
		return nil, fmt.Errorf("include %s:%s: %w", typ, param, err)
	}
	vs, err := collectVersions(rows)
	if err != nil {
		return nil, fmt.Errorf("include %s:%s: %w", typ, param, err)
	}
	return vs, nil
}
