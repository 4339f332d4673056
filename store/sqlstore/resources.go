package sqlstore

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/treatment"
)

// VersionCols are the columns ScanVersion reads, from resources or resource_versions.
const VersionCols = `type, id, version_id, last_updated, deleted, json`

// ScanVersion scans one row of VersionCols.
func ScanVersion(s Row) (resource.Version, error) {
	var v resource.Version
	var lu int64
	if err := s.Scan(&v.Type, &v.ID, &v.VersionID, &lu, &v.Deleted, &v.JSON); err != nil {
		return resource.Version{}, err
	}
	v.LastUpdated = FromMicros(lu)
	return v, nil
}

// CollectVersions scans every row of VersionCols and closes rows.
func CollectVersions(rows Rows) ([]resource.Version, error) {
	defer rows.Close()
	var out []resource.Version
	for rows.Next() {
		v, err := ScanVersion(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// Snapshot begins a read-only view in which several queries see the same
// data, and returns a Querier in it and the function that ends it.
type Snapshot func(ctx context.Context) (q Querier, end func(), err error)

// Reader implements store.DomainReader and store.ResourceReader on Q.
type Reader struct {
	Domain
	// Snapshot begins the view in which Search counts and pages.
	Snapshot Snapshot
}

// NewReader returns a Reader on q in dialect d.
func NewReader(d *Dialect, q Querier, snap Snapshot) Reader {
	return Reader{Domain: Domain{D: d, Q: q}, Snapshot: snap}
}

// Read implements store.ResourceReader.
func (r Reader) Read(ctx context.Context, typ, id string) (resource.Version, error) {
	v, err := ScanVersion(r.Q.QueryRow(ctx, r.D.Rebind(`SELECT `+VersionCols+` FROM resources WHERE type = ? AND id = ?`), typ, id))
	if r.D.noRows(err) || (err == nil && v.Deleted) {
		return resource.Version{}, treatment.NotFound(typ, id)
	}
	if err != nil {
		return resource.Version{}, fmt.Errorf("read %s/%s: %w", typ, id, err)
	}
	return v, nil
}

// VRead implements store.ResourceReader.
func (r Reader) VRead(ctx context.Context, typ, id string, versionID int64) (resource.Version, error) {
	v, err := ScanVersion(r.Q.QueryRow(ctx, r.D.Rebind(`SELECT `+VersionCols+` FROM resource_versions WHERE type = ? AND id = ? AND version_id = ?`), typ, id, versionID))
	if r.D.noRows(err) {
		return resource.Version{}, treatment.NotFound(typ, id+"/_history/"+strconv.FormatInt(versionID, 10))
	}
	if err != nil {
		return resource.Version{}, fmt.Errorf("vread %s/%s/_history/%d: %w", typ, id, versionID, err)
	}
	return v, nil
}

// History implements store.ResourceReader.
func (r Reader) History(ctx context.Context, typ, id string) ([]resource.Version, error) {
	rows, err := r.Q.Query(ctx, r.D.Rebind(`SELECT `+VersionCols+` FROM resource_versions WHERE type = ? AND id = ? ORDER BY version_id DESC`), typ, id)
	if err != nil {
		return nil, fmt.Errorf("history %s/%s: %w", typ, id, err)
	}
	vs, err := CollectVersions(rows)
	if err != nil {
		return nil, fmt.Errorf("history %s/%s: %w", typ, id, err)
	}
	if len(vs) == 0 {
		return nil, treatment.NotFound(typ, id)
	}
	return vs, nil
}

// Search implements store.ResourceReader (see BuildSearch). The total and
// the page are read in one Snapshot, so they agree.
func (r Reader) Search(ctx context.Context, q resource.Query) (resource.Page, error) {
	s, err := BuildSearch(r.D, q)
	if err != nil {
		return resource.Page{}, err
	}
	sq, end, err := r.Snapshot(ctx)
	if err != nil {
		return resource.Page{}, fmt.Errorf("search %s: %w", q.Type, err)
	}
	defer end()

	var page resource.Page
	if err := sq.QueryRow(ctx, s.CountSQL, s.CountArgs...).Scan(&page.Total); err != nil {
		return resource.Page{}, fmt.Errorf("search %s: count: %w", q.Type, err)
	}
	if s.PageSQL == "" {
		return page, nil
	}
	rows, err := sq.Query(ctx, s.PageSQL, s.PageArgs...)
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
		v.LastUpdated = FromMicros(lu)
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
		if s.Keyed {
			page.Next.Time = FromMicros(keys[q.Count-1])
		}
	}
	return page, nil
}

// Include implements store.ResourceReader; the targets are read through the
// dialect's SelectCurrent.
func (r Reader) Include(ctx context.Context, typ string, ids []string, param string) ([]resource.Version, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	query, args := includeTargetsSQL(r.D, typ, ids, param)
	rows, err := r.Q.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("include %s:%s: %w", typ, param, err)
	}
	var types, keys []string
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
		types, keys = append(types, t), append(keys, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("include %s:%s: %w", typ, param, err)
	}
	if len(types) == 0 {
		return nil, nil
	}
	query, args = r.D.SelectCurrent(types, keys)
	rows, err = r.Q.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("include %s:%s: %w", typ, param, err)
	}
	vs, err := CollectVersions(rows)
	if err != nil {
		return nil, fmt.Errorf("include %s:%s: %w", typ, param, err)
	}
	return vs, nil
}

// CurrentVersion implements store.Tx.
func (w Writer) CurrentVersion(ctx context.Context, typ, id string) (int64, []byte, error) {
	var v int64
	var hash []byte
	err := w.Q.QueryRow(ctx, w.D.Rebind(`SELECT version_id, hash FROM resources WHERE type = ? AND id = ?`), typ, id).Scan(&v, &hash)
	if w.D.noRows(err) {
		return 0, nil, nil
	}
	if err != nil {
		return 0, nil, fmt.Errorf("current version of %s/%s: %w", typ, id, err)
	}
	return v, hash, nil
}

// PutVersion implements store.Tx. The current row is selected first (with
// the dialect's LockRow), so of two transactions writing the same version,
// the second waits and then conflicts.
func (w Writer) PutVersion(ctx context.Context, wr resource.Write) error {
	v := wr.Version
	if v.Type == "" || v.ID == "" {
		return treatment.Errorf(treatment.KindInvalid, "resource version needs a type and an id")
	}
	conflict := func(err error) error {
		return &treatment.Error{Kind: treatment.KindConflict, Msg: fmt.Sprintf("%s/%s changed concurrently", v.Type, v.ID), Err: err}
	}
	d := w.D
	var cur int64
	err := w.Q.QueryRow(ctx, d.Rebind(`SELECT version_id FROM resources WHERE type = ? AND id = ?`+d.LockRow), v.Type, v.ID).Scan(&cur)
	switch {
	case d.noRows(err):
		cur = 0
	case d.conflict(err):
		return conflict(err)
	case err != nil:
		return fmt.Errorf("put %s/%s: %w", v.Type, v.ID, err)
	}
	if v.VersionID != cur+1 {
		return treatment.Errorf(treatment.KindConflict, "%s/%s is at version %d: cannot store version %d", v.Type, v.ID, cur, v.VersionID)
	}
	lu, sd, del := Micros(v.LastUpdated), Micros(wr.Index.SortDate), d.Bool(v.Deleted)
	if cur == 0 {
		_, err = w.Q.Exec(ctx, d.Rebind(`INSERT INTO resources (type, id, version_id, last_updated, deleted, hash, sort_date, json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`),
			v.Type, v.ID, v.VersionID, lu, del, wr.Hash, sd, v.JSON)
	} else {
		_, err = w.Q.Exec(ctx, d.Rebind(`UPDATE resources SET version_id = ?, last_updated = ?, deleted = ?, hash = ?, sort_date = ?, json = ? WHERE type = ? AND id = ?`),
			v.VersionID, lu, del, wr.Hash, sd, v.JSON, v.Type, v.ID)
	}
	if err != nil {
		if d.unique(err) || d.conflict(err) {
			return conflict(err)
		}
		return fmt.Errorf("put %s/%s: %w", v.Type, v.ID, err)
	}
	if _, err := w.Q.Exec(ctx, d.Rebind(`INSERT INTO resource_versions (type, id, version_id, last_updated, deleted, json) VALUES (?, ?, ?, ?, ?, ?)`),
		v.Type, v.ID, v.VersionID, lu, del, v.JSON); err != nil {
		if d.unique(err) || d.conflict(err) {
			return conflict(err)
		}
		return fmt.Errorf("put %s/%s: version: %w", v.Type, v.ID, err)
	}
	if err := w.writeIndex(ctx, v.Type, v.ID, wr.Index); err != nil {
		return fmt.Errorf("put %s/%s: index: %w", v.Type, v.ID, err)
	}
	return nil
}

// writeIndex replaces the search index rows of one resource.
func (w Writer) writeIndex(ctx context.Context, typ, id string, ix resource.Index) error {
	for _, table := range []string{"search_tokens", "search_refs", "search_dates"} {
		if _, err := w.Q.Exec(ctx, w.D.Rebind(`DELETE FROM `+table+` WHERE type = ? AND id = ?`), typ, id); err != nil {
			return err
		}
	}
	if w.D.InsertIndex != nil {
		return w.D.InsertIndex(ctx, w.Q, typ, id, ix)
	}
	for _, t := range ix.Tokens {
		if _, err := w.Q.Exec(ctx, w.D.Rebind(`INSERT INTO search_tokens (type, id, param, system, code) VALUES (?, ?, ?, ?, ?)`), typ, id, t.Param, t.System, t.Code); err != nil {
			return err
		}
	}
	for _, r := range ix.Refs {
		if _, err := w.Q.Exec(ctx, w.D.Rebind(`INSERT INTO search_refs (type, id, param, target) VALUES (?, ?, ?, ?)`), typ, id, r.Param, r.Target); err != nil {
			return err
		}
	}
	for _, dt := range ix.Dates {
		if _, err := w.Q.Exec(ctx, w.D.Rebind(`INSERT INTO search_dates (type, id, param, lo, hi) VALUES (?, ?, ?, ?, ?)`), typ, id, dt.Param, Micros(dt.Lo), Micros(dt.Hi)); err != nil {
			return err
		}
	}
	return nil
}
