package sqlstore

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/treatment"
)

// The audit trail (see package audit) in audit_events, one row per record,
// its entity keys in audit_entities (a search index outside the chain), and
// the end of the chain in audit_head. Every append reads the head with the
// dialect's LockRow first and writes it back, so appenders in any number of
// transactions and processes queue behind each other and the chain stays
// one line.

// Security implements store.Audit and store.Security.
type Security struct{ conn }

// NewSecurity returns a Security on the given connections (see conn).
func NewSecurity(d *Dialect, read Querier, snap Snapshot, inTx TxFunc) Security {
	return Security{conn{d: d, read: read, snap: snap, inTx: inTx}}
}

// auditCols are the columns scanAudit reads.
const auditCols = `seq, at, type, subtype, action, outcome, outcome_desc, client_id, agent_role, address, patient_id, endpoint_id,
	entities, detail, source, json, prev_hash, hash`

// scanAudit reads one row of auditCols. A stored entities or detail column
// that does not decode is bad, an error apart from err (a failed read), so
// a verification can report the row instead of failing.
func scanAudit(r Row) (rec audit.Record, bad error, err error) {
	var at, outcome int64
	var typ, subtype, action, entities, detail string
	err = r.Scan(&rec.Seq, &at, &typ, &subtype, &action, &outcome, &rec.OutcomeDesc, &rec.Agent.ClientID, &rec.Agent.Role, &rec.Agent.Address,
		&rec.PatientID, &rec.EndpointID, &entities, &detail, &rec.Source, &rec.JSON, &rec.PrevHash, &rec.Hash)
	if err != nil {
		return audit.Record{}, nil, err
	}
	rec.ID = audit.IDFor(rec.Seq)
	rec.Time = FromMicros(at)
	rec.Type, rec.Subtype, rec.Action, rec.Outcome = audit.Type(typ), audit.Subtype(subtype), audit.Action(action), audit.Outcome(outcome)
	if entities != "" {
		if err := json.Unmarshal([]byte(entities), &rec.Entities); err != nil {
			bad = fmt.Errorf("audit record %d: entities do not decode", rec.Seq)
		}
	}
	if detail != "" {
		if err := json.Unmarshal([]byte(detail), &rec.Detail); err != nil {
			bad = fmt.Errorf("audit record %d: detail does not decode", rec.Seq)
		}
	}
	return rec, bad, nil
}

// lockHead reads the end of the chain with the dialect's LockRow.
func lockHead(ctx context.Context, d *Dialect, q Querier) (audit.Head, error) {
	return readHead(ctx, q, d.LockRow)
}

// readHead reads the end of the chain, with lock appended to the select.
func readHead(ctx context.Context, q Querier, lock string) (audit.Head, error) {
	var h audit.Head
	if err := q.QueryRow(ctx, `SELECT seq, hash FROM audit_head WHERE id = 1`+lock).Scan(&h.Seq, &h.Hash); err != nil {
		return audit.Head{}, fmt.Errorf("read audit head: %w", err)
	}
	return h, nil
}

// AppendAudit implements store.AuditTx.
func (w Writer) AppendAudit(ctx context.Context, recs ...audit.Record) ([]audit.Record, error) {
	return appendAudit(ctx, w.D, w.Q, recs, false)
}

// appendAudit checks recs, chains them after the head and writes them;
// prune says whether a prune record may be among them.
func appendAudit(ctx context.Context, d *Dialect, q Querier, recs []audit.Record, prune bool) ([]audit.Record, error) {
	if len(recs) == 0 {
		return nil, nil
	}
	out := make([]audit.Record, len(recs))
	for i, r := range recs {
		if r.Subtype == audit.Prune && !prune {
			return nil, treatment.Invalid("invalid audit record", treatment.FieldError{Field: "subtype", Reason: "only a prune writes a prune record"})
		}
		p, err := audit.Prepare(r)
		if err != nil {
			return nil, err
		}
		out[i] = p
	}
	head, err := lockHead(ctx, d, q)
	if err != nil {
		return nil, fmt.Errorf("append audit: %w", err)
	}
	// Multi-row INSERTs, in chunks of a power of two rows: few statements
	// per batch, and few distinct ones (a store may keep them prepared).
	const cols = 18
	rows := make([]any, 0, cols*len(out))
	var keys []any
	for i := range out {
		r := out[i]
		r.Seq = head.Seq + 1
		r.ID = audit.IDFor(r.Seq)
		r = audit.Seal(r, head.Hash)
		entities, detail, err := encodeAudit(r)
		if err != nil {
			return nil, fmt.Errorf("append audit record %d: %w", r.Seq, err)
		}
		// The AuditEvent JSON is rendered when the record is first served
		// (rendered), not here: every audited request waits for this.
		rows = append(rows, r.Seq, Micros(r.Time), string(r.Type), string(r.Subtype), string(r.Action), int64(r.Outcome), r.OutcomeDesc,
			r.Agent.ClientID, r.Agent.Role, r.Agent.Address, r.PatientID, r.EndpointID, entities, detail, r.Source, []byte{}, r.PrevHash, r.Hash)
		for _, k := range r.Keys() {
			keys = append(keys, k, r.Seq)
		}
		out[i] = r
		head = audit.Head{Seq: r.Seq, Hash: r.Hash}
	}
	if err := insertRows(ctx, d, q, `INSERT INTO audit_events (`+auditCols+`) VALUES `, cols, rows); err != nil {
		return nil, fmt.Errorf("append audit records %d-%d: %w", out[0].Seq, head.Seq, err)
	}
	if err := insertRows(ctx, d, q, `INSERT INTO audit_entities (ref, seq) VALUES `, 2, keys); err != nil {
		return nil, fmt.Errorf("append audit records %d-%d: index: %w", out[0].Seq, head.Seq, err)
	}
	if _, err := q.Exec(ctx, d.Rebind(`UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1`), head.Seq, head.Hash); err != nil {
		return nil, fmt.Errorf("append audit: move head: %w", err)
	}
	return out, nil
}

// encodeAudit is a record's entities and detail columns (JSON; "" when empty).
func encodeAudit(r audit.Record) (entities, detail string, err error) {
	if len(r.Entities) > 0 {
		b, err := json.Marshal(r.Entities)
		if err != nil {
			return "", "", fmt.Errorf("encode entities: %w", err)
		}
		entities = string(b)
	}
	if len(r.Detail) > 0 {
		b, err := json.Marshal(r.Detail)
		if err != nil {
			return "", "", fmt.Errorf("encode detail: %w", err)
		}
		detail = string(b)
	}
	return entities, detail, nil
}

// insertRows runs insert (ending in "VALUES ") for args, cols values a
// row, in chunks of a power of two rows, at most 64.
func insertRows(ctx context.Context, d *Dialect, q Querier, insert string, cols int, args []any) error {
	for rows := len(args) / cols; rows > 0; {
		n := 64
		for n > rows {
			n /= 2
		}
		if _, err := q.Exec(ctx, d.Rebind(insert+placeholders(n, cols)), args[:n*cols]...); err != nil {
			return err
		}
		args, rows = args[n*cols:], rows-n
	}
	return nil
}

// placeholders is n rows of cols "?" placeholders: "(?, ?), (?, ?)".
func placeholders(n, cols int) string {
	row := "(" + strings.Repeat("?, ", cols-1) + "?)"
	var b strings.Builder
	b.Grow(n * (len(row) + 2))
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(row)
	}
	return b.String()
}

// rendered gives each record without its AuditEvent JSON its rendering and
// keeps it (each record is rendered once, the first time it is served; a
// concurrent reader rendering the same record writes the same bytes).
func (s Security) rendered(ctx context.Context, recs []audit.Record) error {
	var todo []int
	for i := range recs {
		if len(recs[i].JSON) == 0 {
			js, err := audit.Render(recs[i])
			if err != nil {
				return fmt.Errorf("render audit record %d: %w", recs[i].Seq, err)
			}
			recs[i].JSON = js
			todo = append(todo, i)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	upd := s.d.Rebind(`UPDATE audit_events SET json = ? WHERE seq = ? AND json = ?`)
	return s.inTx(ctx, func(q Querier) error {
		for _, i := range todo {
			if _, err := q.Exec(ctx, upd, recs[i].JSON, recs[i].Seq, []byte{}); err != nil {
				return fmt.Errorf("keep audit record %d's rendering: %w", recs[i].Seq, err)
			}
		}
		return nil
	})
}

// AppendAudit implements store.Audit.
func (s Security) AppendAudit(ctx context.Context, recs ...audit.Record) ([]audit.Record, error) {
	var out []audit.Record
	err := s.inTx(ctx, func(q Querier) error {
		var err error
		out, err = appendAudit(ctx, s.d, q, recs, false)
		return err
	})
	return out, err
}

// AuditEvents implements store.Audit.
func (s Security) AuditEvents(ctx context.Context, f audit.Filter) (audit.Page, error) {
	b := &builder{d: s.d}
	b.conds = append(b.conds, s.d.True())
	if !f.From.IsZero() {
		b.conds = append(b.conds, "at >= "+b.arg(Micros(f.From)))
	}
	if !f.To.IsZero() {
		b.conds = append(b.conds, "at < "+b.arg(Micros(f.To)))
	}
	for _, c := range []struct{ col, v string }{{"client_id", f.ClientID}, {"patient_id", f.PatientID}, {"endpoint_id", f.EndpointID}} {
		if c.v != "" {
			b.conds = append(b.conds, c.col+" = "+b.arg(c.v))
		}
	}
	if len(f.Types) > 0 {
		vs := make([]string, len(f.Types))
		for i, t := range f.Types {
			vs[i] = string(t)
		}
		b.conds = append(b.conds, b.in("type", vs))
	}
	if len(f.Subtypes) > 0 {
		vs := make([]string, len(f.Subtypes))
		for i, t := range f.Subtypes {
			vs[i] = string(t)
		}
		b.conds = append(b.conds, b.in("subtype", vs))
	}
	if len(f.Outcomes) > 0 {
		vs := make([]string, len(f.Outcomes))
		for i, o := range f.Outcomes {
			if o != audit.Success && o != audit.MinorFailure && o != audit.SeriousFailure && o != audit.MajorFailure {
				return audit.Page{}, treatment.Invalid("invalid audit filter", treatment.FieldError{Field: "outcome", Reason: "must be 0, 4, 8 or 12"})
			}
			vs[i] = strconv.Itoa(int(o))
		}
		b.conds = append(b.conds, "outcome IN ("+strings.Join(vs, ", ")+")")
	}
	if f.Entity != "" {
		key := audit.RefKey(f.Entity)
		if key == "" {
			key = f.Entity
		}
		b.conds = append(b.conds, "seq IN (SELECT seq FROM audit_entities WHERE ref = "+b.arg(key)+")")
	}
	order := "DESC"
	if f.Oldest {
		order = "ASC"
		if f.Cursor > 0 {
			b.conds = append(b.conds, "seq > "+b.arg(f.Cursor))
		}
	} else if f.Cursor > 0 {
		b.conds = append(b.conds, "seq < "+b.arg(f.Cursor))
	}
	limit := listLimit(f.Limit)
	rows, err := s.read.Query(ctx, `SELECT `+auditCols+` FROM audit_events WHERE `+b.where()+` ORDER BY seq `+order+` LIMIT `+b.arg(limit+1), b.args...)
	if err != nil {
		return audit.Page{}, fmt.Errorf("list audit events: %w", err)
	}
	defer rows.Close()
	var page audit.Page
	for rows.Next() {
		r, bad, err := scanAudit(rows)
		if err == nil {
			err = bad
		}
		if err != nil {
			return audit.Page{}, fmt.Errorf("list audit events: %w", err)
		}
		page.Records = append(page.Records, r)
	}
	if err := rows.Err(); err != nil {
		return audit.Page{}, fmt.Errorf("list audit events: %w", err)
	}
	if len(page.Records) > limit {
		page.Records = page.Records[:limit]
		page.Next = page.Records[limit-1].Seq
	}
	if err := s.rendered(ctx, page.Records); err != nil {
		return audit.Page{}, fmt.Errorf("list audit events: %w", err)
	}
	return page, nil
}

// AuditEvent implements store.Audit.
func (s Security) AuditEvent(ctx context.Context, id string) (audit.Record, error) {
	seq, ok := audit.SeqOf(id)
	if !ok {
		return audit.Record{}, treatment.NotFound("AuditEvent", id)
	}
	r, bad, err := scanAudit(s.read.QueryRow(ctx, s.d.Rebind(`SELECT `+auditCols+` FROM audit_events WHERE seq = ?`), seq))
	if s.d.noRows(err) {
		return audit.Record{}, treatment.NotFound("AuditEvent", id)
	}
	if err == nil {
		err = bad
	}
	if err != nil {
		return audit.Record{}, fmt.Errorf("read audit event %s: %w", id, err)
	}
	recs := []audit.Record{r}
	if err := s.rendered(ctx, recs); err != nil {
		return audit.Record{}, fmt.Errorf("read audit event %s: %w", id, err)
	}
	return recs[0], nil
}

// VerifyAudit implements store.Audit: the head and the rows in one snapshot.
func (s Security) VerifyAudit(ctx context.Context) (audit.Report, error) {
	q, end, err := s.snap(ctx)
	if err != nil {
		return audit.Report{}, fmt.Errorf("verify audit: %w", err)
	}
	defer end()
	head, err := readHead(ctx, q, "") // a read-only snapshot locks nothing
	if err != nil {
		return audit.Report{}, fmt.Errorf("verify audit: %w", err)
	}
	rows, err := q.Query(ctx, `SELECT `+auditCols+` FROM audit_events ORDER BY seq`)
	if err != nil {
		return audit.Report{}, fmt.Errorf("verify audit: %w", err)
	}
	defer rows.Close()
	var v audit.Verifier
	for rows.Next() {
		r, bad, err := scanAudit(rows)
		if err != nil {
			return audit.Report{}, fmt.Errorf("verify audit: %w", err)
		}
		if bad != nil {
			v.Fail(r.Seq, bad.Error())
		}
		v.Add(r)
	}
	if err := rows.Err(); err != nil {
		return audit.Report{}, fmt.Errorf("verify audit: %w", err)
	}
	return v.Report(&head), nil
}

// PruneAudit implements store.Audit.
func (s Security) PruneAudit(ctx context.Context, before time.Time, by audit.Record) (int, error) {
	var n int64
	err := s.inTx(ctx, func(q Querier) error {
		head, err := lockHead(ctx, s.d, q)
		if err != nil {
			return err
		}
		// The chain keeps its records from the first one at or after before.
		var first int64
		if err := q.QueryRow(ctx, s.d.Rebind(`SELECT COALESCE(MIN(seq), 0) FROM audit_events WHERE at >= ?`), Micros(before)).Scan(&first); err != nil {
			return err
		}
		if first == 0 {
			first = head.Seq + 1 // everything goes: the prune record starts the chain
		}
		if n, err = q.Exec(ctx, s.d.Rebind(`DELETE FROM audit_events WHERE seq < ?`), first); err != nil {
			return err
		}
		if _, err := q.Exec(ctx, s.d.Rebind(`DELETE FROM audit_entities WHERE seq < ?`), first); err != nil {
			return err
		}
		anchor := head.Hash
		if first <= head.Seq {
			if err := q.QueryRow(ctx, s.d.Rebind(`SELECT prev_hash FROM audit_events WHERE seq = ?`), first).Scan(&anchor); err != nil {
				return fmt.Errorf("read record %d: %w", first, err)
			}
		}
		_, err = appendAudit(ctx, s.d, q, []audit.Record{audit.PruneRecord(by, before, int(n), first, anchor)}, true)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("prune audit: %w", err)
	}
	return int(n), nil
}
