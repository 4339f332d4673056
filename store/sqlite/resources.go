package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

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

func collectVersions(rows *sql.Rows) ([]resource.Version, error) {
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
	v, err := scanVersion(db.read.QueryRowContext(ctx, `SELECT `+versionCols+` FROM resources WHERE type = ? AND id = ?`, typ, id))
	if errors.Is(err, sql.ErrNoRows) || (err == nil && v.Deleted) {
		return resource.Version{}, treatment.NotFound(typ, id)
	}
	if err != nil {
		return resource.Version{}, fmt.Errorf("read %s/%s: %w", typ, id, err)
	}
	return v, nil
}

// VRead implements store.ResourceReader.
func (db *DB) VRead(ctx context.Context, typ, id string, versionID int64) (resource.Version, error) {
	v, err := scanVersion(db.read.QueryRowContext(ctx, `SELECT `+versionCols+` FROM resource_versions WHERE type = ? AND id = ? AND version_id = ?`, typ, id, versionID))
	if errors.Is(err, sql.ErrNoRows) {
		return resource.Version{}, treatment.NotFound(typ, id+"/_history/"+strconv.FormatInt(versionID, 10))
	}
	if err != nil {
		return resource.Version{}, fmt.Errorf("vread %s/%s/_history/%d: %w", typ, id, versionID, err)
	}
	return v, nil
}

// History implements store.ResourceReader.
func (db *DB) History(ctx context.Context, typ, id string) ([]resource.Version, error) {
	rows, err := db.read.QueryContext(ctx, `SELECT `+versionCols+` FROM resource_versions WHERE type = ? AND id = ? ORDER BY version_id DESC`, typ, id)
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
	err := tx.q.QueryRowContext(ctx, `SELECT version_id, hash FROM resources WHERE type = ? AND id = ?`, typ, id).Scan(&v, &hash)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("current version of %s/%s: %w", typ, id, err)
	}
	return v, hash, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// PutVersion implements store.Tx.
func (tx *Tx) PutVersion(ctx context.Context, w resource.Write) error {
	v := w.Version
	if v.Type == "" || v.ID == "" {
		return treatment.Errorf(treatment.KindInvalid, "resource version needs a type and an id")
	}
	cur, _, err := tx.CurrentVersion(ctx, v.Type, v.ID)
	if err != nil {
		return err
	}
	if v.VersionID != cur+1 {
		return treatment.Errorf(treatment.KindConflict, "%s/%s is at version %d: cannot store version %d", v.Type, v.ID, cur, v.VersionID)
	}
	lu, sd := micros(v.LastUpdated), micros(w.Index.SortDate)
	if cur == 0 {
		_, err = tx.q.ExecContext(ctx, `INSERT INTO resources (type, id, version_id, last_updated, deleted, hash, sort_date, json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			v.Type, v.ID, v.VersionID, lu, boolInt(v.Deleted), w.Hash, sd, v.JSON)
	} else {
		_, err = tx.q.ExecContext(ctx, `UPDATE resources SET version_id = ?, last_updated = ?, deleted = ?, hash = ?, sort_date = ?, json = ? WHERE type = ? AND id = ?`,
			v.VersionID, lu, boolInt(v.Deleted), w.Hash, sd, v.JSON, v.Type, v.ID)
	}
	if err != nil {
		if isUnique(err) {
			return treatment.Errorf(treatment.KindConflict, "%s/%s changed concurrently", v.Type, v.ID)
		}
		return fmt.Errorf("put %s/%s: %w", v.Type, v.ID, err)
	}
	if _, err := tx.q.ExecContext(ctx, `INSERT INTO resource_versions (type, id, version_id, last_updated, deleted, json) VALUES (?, ?, ?, ?, ?, ?)`,
		v.Type, v.ID, v.VersionID, lu, boolInt(v.Deleted), v.JSON); err != nil {
		if isUnique(err) {
			return treatment.Errorf(treatment.KindConflict, "%s/%s version %d already exists", v.Type, v.ID, v.VersionID)
		}
		return fmt.Errorf("put %s/%s: version: %w", v.Type, v.ID, err)
	}
	if err := tx.writeIndex(ctx, v.Type, v.ID, w.Index); err != nil {
		return fmt.Errorf("put %s/%s: index: %w", v.Type, v.ID, err)
	}
	return nil
}

// writeIndex replaces the search index rows of one resource.
func (tx *Tx) writeIndex(ctx context.Context, typ, id string, ix resource.Index) error {
	for _, table := range []string{"search_tokens", "search_refs", "search_dates"} {
		if _, err := tx.q.ExecContext(ctx, `DELETE FROM `+table+` WHERE type = ? AND id = ?`, typ, id); err != nil {
			return err
		}
	}
	for _, t := range ix.Tokens {
		if _, err := tx.q.ExecContext(ctx, `INSERT INTO search_tokens (type, id, param, system, code) VALUES (?, ?, ?, ?, ?)`, typ, id, t.Param, t.System, t.Code); err != nil {
			return err
		}
	}
	for _, r := range ix.Refs {
		if _, err := tx.q.ExecContext(ctx, `INSERT INTO search_refs (type, id, param, target) VALUES (?, ?, ?, ?)`, typ, id, r.Param, r.Target); err != nil {
			return err
		}
	}
	for _, d := range ix.Dates {
		if _, err := tx.q.ExecContext(ctx, `INSERT INTO search_dates (type, id, param, lo, hi) VALUES (?, ?, ?, ?, ?)`, typ, id, d.Param, micros(d.Lo), micros(d.Hi)); err != nil {
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
	return "?"
}

func (b *builder) list(vs []string) string {
	ps := make([]string, len(vs))
	for i, v := range vs {
		ps[i] = b.arg(v)
	}
	return "(" + strings.Join(ps, ", ") + ")"
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
	b.conds = append(b.conds, "r.type = "+b.arg(q.Type), "r.deleted = 0")
	if len(q.IDs) > 0 {
		b.conds = append(b.conds, "r.id IN "+b.list(q.IDs))
	}
	for _, f := range q.Tokens {
		param := b.arg(f.Param)
		var alts []string
		for _, v := range f.Values {
			switch {
			case v.AnySystem && v.Code == "":
				alts = append(alts, "1 = 1")
			case v.AnySystem:
				alts = append(alts, "t.code = "+b.arg(v.Code))
			case v.Code == "":
				alts = append(alts, "t.system = "+b.arg(v.System))
			default:
				alts = append(alts, "(t.system = "+b.arg(v.System)+" AND t.code = "+b.arg(v.Code)+")")
			}
		}
		if len(alts) == 0 {
			alts = []string{"1 = 0"}
		}
		b.conds = append(b.conds, "EXISTS (SELECT 1 FROM search_tokens t WHERE t.type = r.type AND t.id = r.id AND t.param = "+param+" AND ("+strings.Join(alts, " OR ")+"))")
	}
	for _, f := range q.Refs {
		if len(f.Targets) == 0 {
			b.conds = append(b.conds, "1 = 0")
			continue
		}
		b.conds = append(b.conds, "EXISTS (SELECT 1 FROM search_refs s WHERE s.type = r.type AND s.id = r.id AND s.param = "+b.arg(f.Param)+" AND s.target IN "+b.list(f.Targets)+")")
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

	// One read transaction, so the total and the page see the same snapshot.
	tx, err := db.read.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return resource.Page{}, fmt.Errorf("search %s: %w", q.Type, err)
	}
	defer tx.Rollback()

	var page resource.Page
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM resources r WHERE `+b.where(), b.args...).Scan(&page.Total); err != nil {
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
			t := micros(q.After.Time)
			b.conds = append(b.conds, fmt.Sprintf("(%s %s %s OR (%s = %s AND r.id %s %s))", col, cmp, b.arg(t), col, b.arg(t), cmp, b.arg(q.After.ID)))
		}
	}
	sortCol := col
	if sortCol == "" {
		sortCol = "0"
	}
	rows, err := tx.QueryContext(ctx, `SELECT r.type, r.id, r.version_id, r.last_updated, r.deleted, r.json, `+sortCol+
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
	var b builder
	b.conds = append(b.conds, "type = "+b.arg(typ), "param = "+b.arg(param), "id IN "+b.list(ids))
	rows, err := db.read.QueryContext(ctx, `SELECT DISTINCT target FROM search_refs WHERE `+b.where(), b.args...)
	if err != nil {
		return nil, fmt.Errorf("include %s:%s: %w", typ, param, err)
	}
	var pairs []string
	var args []any
	for rows.Next() {
		var target string
		if err := rows.Scan(&target); err != nil {
			rows.Close()
			return nil, fmt.Errorf("include %s:%s: %w", typ, param, err)
		}
		t, id, ok := strings.Cut(target, "/")
		if !ok || t == "" || id == "" {
			continue
		}
		pairs = append(pairs, "(?, ?)")
		args = append(args, t, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("include %s:%s: %w", typ, param, err)
	}
	if len(pairs) == 0 {
		return nil, nil
	}
	rows, err = db.read.QueryContext(ctx, `SELECT `+versionCols+` FROM resources WHERE deleted = 0 AND (type, id) IN (VALUES `+strings.Join(pairs, ", ")+`) ORDER BY type, id`, args...)
	if err != nil {
		return nil, fmt.Errorf("include %s:%s: %w", typ, param, err)
	}
	vs, err := collectVersions(rows)
	if err != nil {
		return nil, fmt.Errorf("include %s:%s: %w", typ, param, err)
	}
	return vs, nil
}
