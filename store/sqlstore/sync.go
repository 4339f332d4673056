package sqlstore

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/endpoint"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/treatment"
)

// The sync queue (see package outbox) in three tables: sync_endpoints,
// sync_items (one row per endpoint and resource) and sync_log (append-only).
// Every state change of an item reads the item's row first with the
// dialect's LockRow and writes it back whole, so concurrent changes to one
// item queue behind each other; Lease serialises the leasers of one
// endpoint on the endpoint's row (LockQueue).

// TxFunc runs fn in one write transaction (see store.Store.InTx).
type TxFunc func(ctx context.Context, fn func(q Querier) error) error

// conn is how Queue and Security reach the database: reads through read
// (and snap, for reads of several statements), writes each in its own
// transaction through inTx.
type conn struct {
	d    *Dialect
	read Querier
	snap Snapshot
	inTx TxFunc
}

// Queue implements store.Sync.
type Queue struct{ conn }

// NewQueue returns a Queue on the given connections (see conn).
func NewQueue(d *Dialect, read Querier, snap Snapshot, inTx TxFunc) Queue {
	return Queue{conn{d: d, read: read, snap: snap, inTx: inTx}}
}

// Paging limits of Items and Log.
const (
	defaultListLimit = 100
	maxListLimit     = 1000
)

func listLimit(n int) int {
	if n <= 0 {
		return defaultListLimit
	}
	return min(n, maxListLimit)
}

// optMicros stores a time that may be zero (0: none).
func optMicros(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return Micros(t)
}

// optTime reads a time stored by optMicros.
func optTime(us int64) time.Time {
	if us == 0 {
		return time.Time{}
	}
	return FromMicros(us)
}

// sqlStates is a SQL list of state literals.
func sqlStates(ss ...outbox.State) string {
	s := "("
	for i, st := range ss {
		if i > 0 {
			s += ", "
		}
		s += "'" + string(st) + "'"
	}
	return s + ")"
}

// restartStates are the states an enqueue turns back into pending.
var restartStates = sqlStates(outbox.Succeeded, outbox.Dead, outbox.Discarded)

// upsertItem is the ON CONFLICT clause of every enqueue (see store.SyncTx.Enqueue).
var upsertItem = ` ON CONFLICT (endpoint_id, resource_type, resource_id) DO UPDATE SET
	patient_id = excluded.patient_id,
	seq = excluded.seq,
	want_version = CASE WHEN excluded.want_version > sync_items.want_version THEN excluded.want_version ELSE sync_items.want_version END,
	state = CASE WHEN sync_items.state IN ` + restartStates + ` THEN excluded.state ELSE sync_items.state END,
	attempts = CASE WHEN sync_items.state IN ` + restartStates + ` THEN 0 ELSE sync_items.attempts END,
	next_attempt = CASE WHEN sync_items.state IN ` + restartStates + ` THEN excluded.next_attempt ELSE sync_items.next_attempt END,
	updated = excluded.updated`

// itemCols are the columns scanItem reads.
const itemCols = `id, endpoint_id, resource_type, resource_id, patient_id, seq, state, want_version, sent_version, sent_hash,
	ehr_id, ehr_version, attempts, next_attempt, lease_owner, lease_until, last_status, last_error, outcome, updated`

func scanItem(r Row) (outbox.Item, error) {
	var it outbox.Item
	var state string
	var next, until, updated int64
	err := r.Scan(&it.ID, &it.EndpointID, &it.ResourceType, &it.ResourceID, &it.PatientID, &it.Seq, &state, &it.WantVersion, &it.SentVersion, &it.SentHash,
		&it.EHRID, &it.EHRVersion, &it.Attempts, &next, &it.LeaseOwner, &until, &it.LastStatus, &it.LastError, &it.Outcome, &updated)
	if err != nil {
		return outbox.Item{}, err
	}
	it.State = outbox.State(state)
	it.NextAttempt, it.LeaseUntil, it.Updated = optTime(next), optTime(until), optTime(updated)
	if len(it.SentHash) == 0 {
		it.SentHash = nil
	}
	if len(it.Outcome) == 0 {
		it.Outcome = nil
	}
	return it, nil
}

func collectItems(rows Rows) ([]outbox.Item, error) {
	defer rows.Close()
	var out []outbox.Item
	for rows.Next() {
		it, err := scanItem(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, it)
	}
	return out, rows.Err()
}

// endpointCols are the columns scanEndpoint reads.
const endpointCols = `id, json, source, auth_state, last_error, created, updated`

func scanEndpoint(r Row) (endpoint.Stored, error) {
	var e endpoint.Stored
	var id, source, auth string
	var b []byte
	var created, updated int64
	if err := r.Scan(&id, &b, &source, &auth, &e.LastError, &created, &updated); err != nil {
		return endpoint.Stored{}, err
	}
	if err := json.Unmarshal(b, &e.Endpoint); err != nil {
		return endpoint.Stored{}, fmt.Errorf("decode endpoint %s: %w", id, err)
	}
	e.ID, e.Source, e.AuthState = id, endpoint.Source(source), endpoint.AuthState(auth)
	e.Created, e.Updated = optTime(created), optTime(updated)
	return e, nil
}

// readEndpoints returns every endpoint, by id.
func readEndpoints(ctx context.Context, d *Dialect, q Querier) ([]endpoint.Stored, error) {
	rows, err := q.Query(ctx, `SELECT `+endpointCols+` FROM sync_endpoints ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("read endpoints: %w", err)
	}
	defer rows.Close()
	var out []endpoint.Stored
	for rows.Next() {
		e, err := scanEndpoint(rows)
		if err != nil {
			return nil, fmt.Errorf("read endpoints: %w", err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read endpoints: %w", err)
	}
	return out, nil
}

// endpointExists reports whether the endpoint exists, selecting its row with lock.
func endpointExists(ctx context.Context, d *Dialect, q Querier, id, lock string) (bool, error) {
	var got string
	err := q.QueryRow(ctx, d.Rebind(`SELECT id FROM sync_endpoints WHERE id = ?`+lock), id).Scan(&got)
	if d.noRows(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("endpoint %s: %w", id, err)
	}
	return true, nil
}

// Endpoints implements store.SyncTx.
func (w Writer) Endpoints(ctx context.Context) ([]endpoint.Stored, error) {
	return readEndpoints(ctx, w.D, w.Q)
}

// Enqueue implements store.SyncTx. Work for an endpoint that does not exist
// (any more) is dropped; the endpoint rows of the others are share-locked
// (the dialect's ShareKey), so they cannot be deleted before the commit.
func (w Writer) Enqueue(ctx context.Context, work []outbox.Work, now time.Time) error {
	return enqueue(ctx, w.D, w.Q, work, now)
}

func enqueue(ctx context.Context, d *Dialect, q Querier, work []outbox.Work, now time.Time) error {
	exists := map[string]bool{}
	ins := d.Rebind(`INSERT INTO sync_items (endpoint_id, resource_type, resource_id, patient_id, seq, state, want_version, next_attempt, updated)
		VALUES (?, ?, ?, ?, ` + d.Seq("1") + `, '` + string(outbox.Pending) + `', ?, ?, ?)` + upsertItem)
	us := Micros(now)
	for _, wk := range work {
		ok, seen := exists[wk.EndpointID]
		if !seen {
			var err error
			if ok, err = endpointExists(ctx, d, q, wk.EndpointID, d.ShareKey); err != nil {
				return fmt.Errorf("enqueue: %w", err)
			}
			exists[wk.EndpointID] = ok
		}
		if !ok {
			continue
		}
		if _, err := q.Exec(ctx, ins, wk.EndpointID, wk.ResourceType, wk.ResourceID, wk.PatientID, wk.Version, us, us); err != nil {
			return fmt.Errorf("enqueue %s/%s for %s: %w", wk.ResourceType, wk.ResourceID, wk.EndpointID, err)
		}
		if err := advanceSeq(ctx, d, q, 1); err != nil {
			return fmt.Errorf("enqueue: %w", err)
		}
	}
	return nil
}

// advanceSeq moves the dialect's seq counter past n rows just written.
func advanceSeq(ctx context.Context, d *Dialect, q Querier, n int64) error {
	if d.SeqAdvance == "" || n == 0 {
		return nil
	}
	if _, err := q.Exec(ctx, d.Rebind(d.SeqAdvance), n); err != nil {
		return fmt.Errorf("advance seq: %w", err)
	}
	return nil
}

// Endpoints implements store.Sync.
func (s Queue) Endpoints(ctx context.Context) ([]endpoint.Stored, error) {
	return readEndpoints(ctx, s.d, s.read)
}

// Endpoint implements store.Sync.
func (s Queue) Endpoint(ctx context.Context, id string) (endpoint.Stored, error) {
	e, err := scanEndpoint(s.read.QueryRow(ctx, s.d.Rebind(`SELECT `+endpointCols+` FROM sync_endpoints WHERE id = ?`), id))
	if s.d.noRows(err) {
		return endpoint.Stored{}, treatment.NotFound("endpoint", id)
	}
	if err != nil {
		return endpoint.Stored{}, fmt.Errorf("read endpoint %s: %w", id, err)
	}
	return e, nil
}

// PutEndpoint implements store.Sync.
func (s Queue) PutEndpoint(ctx context.Context, e endpoint.Stored) error {
	if e.ID == "" {
		return treatment.Errorf(treatment.KindInvalid, "endpoint needs an id")
	}
	b, err := json.Marshal(e.Endpoint)
	if err != nil {
		return fmt.Errorf("encode endpoint %s: %w", e.ID, err)
	}
	err = s.inTx(ctx, func(q Querier) error {
		_, err := q.Exec(ctx, s.d.Rebind(`INSERT INTO sync_endpoints (id, json, source, auth_state, last_error, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (id) DO UPDATE SET json = excluded.json, source = excluded.source, auth_state = excluded.auth_state,
				last_error = excluded.last_error, updated = excluded.updated`),
			e.ID, string(b), string(e.Source), string(e.AuthState), e.LastError, optMicros(e.Created), optMicros(e.Updated))
		return err
	})
	if err != nil {
		return fmt.Errorf("put endpoint %s: %w", e.ID, err)
	}
	return nil
}

// DeleteEndpoint implements store.Sync; the items go with it (ON DELETE CASCADE).
func (s Queue) DeleteEndpoint(ctx context.Context, id string) error {
	return s.inTx(ctx, func(q Querier) error {
		n, err := q.Exec(ctx, s.d.Rebind(`DELETE FROM sync_endpoints WHERE id = ?`), id)
		if err != nil {
			return fmt.Errorf("delete endpoint %s: %w", id, err)
		}
		if n == 0 {
			return treatment.NotFound("endpoint", id)
		}
		return nil
	})
}

// SetEndpointState implements store.Sync.
func (s Queue) SetEndpointState(ctx context.Context, id string, state endpoint.AuthState, lastError string, now time.Time) error {
	return s.inTx(ctx, func(q Querier) error {
		n, err := q.Exec(ctx, s.d.Rebind(`UPDATE sync_endpoints SET auth_state = ?, last_error = ?, updated = ? WHERE id = ?`),
			string(state), lastError, Micros(now), id)
		if err != nil {
			return fmt.Errorf("set endpoint %s state: %w", id, err)
		}
		if n == 0 {
			return treatment.NotFound("endpoint", id)
		}
		return nil
	})
}

// patientOf is the patient of the resource r (resources row): itself for a
// Patient, else the first Patient/ target of its "patient", then "subject",
// search reference, else "". (MIN, not ORDER BY target LIMIT 1: that
// steers SQLite to the (type, param, target) index, a scan per row.)
const patientOf = `CASE WHEN r.type = 'Patient' THEN r.id ELSE COALESCE(
	(SELECT MIN(substr(s.target, 9)) FROM search_refs s WHERE s.type = r.type AND s.id = r.id AND s.param = 'patient' AND substr(s.target, 1, 8) = 'Patient/'),
	(SELECT MIN(substr(s.target, 9)) FROM search_refs s WHERE s.type = r.type AND s.id = r.id AND s.param = 'subject' AND substr(s.target, 1, 8) = 'Patient/'),
	'') END`

// Backfill implements store.Sync in one INSERT ... SELECT over resources.
func (s Queue) Backfill(ctx context.Context, endpointID string, types []string, now time.Time) (int, error) {
	var n int64
	err := s.inTx(ctx, func(q Querier) error {
		ok, err := endpointExists(ctx, s.d, q, endpointID, s.d.ShareKey)
		if err != nil {
			return err
		}
		if !ok {
			return treatment.NotFound("endpoint", endpointID)
		}
		if len(types) == 0 {
			return nil
		}
		b := &builder{d: s.d}
		ep, nowArg, upd := b.arg(endpointID), b.arg(Micros(now)), b.arg(Micros(now))
		query := `INSERT INTO sync_items (endpoint_id, resource_type, resource_id, patient_id, seq, state, want_version, next_attempt, updated)
			SELECT ` + ep + `, r.type, r.id, ` + patientOf + `, ` + s.d.Seq("ROW_NUMBER() OVER (ORDER BY r.type, r.id)") + `, '` + string(outbox.Pending) + `', r.version_id, ` + nowArg + `, ` + upd + `
			FROM resources r WHERE ` + b.in("r.type", types) + ` AND ` + s.d.Not("r.deleted") + upsertItem
		if n, err = q.Exec(ctx, query, b.args...); err != nil {
			return err
		}
		return advanceSeq(ctx, s.d, q, n)
	})
	if err != nil {
		return 0, fmt.Errorf("backfill %s: %w", endpointID, err)
	}
	return int(n), nil
}

// runnable is the condition that an item (of table alias a, "" for none)
// may be leased at now (Unix microseconds).
func runnable(b *builder, a string, now int64) string {
	n1, n2 := b.arg2(now)
	return `((` + a + `state IN ` + sqlStates(outbox.Pending, outbox.Retrying) + ` AND ` + a + `next_attempt <= ` + n1 + `) OR (` +
		a + `state = '` + string(outbox.InFlight) + `' AND ` + a + `lease_until < ` + n2 + `))`
}

// Lease implements store.Sync in one UPDATE ... RETURNING, after locking the
// endpoint's row (the dialect's LockQueue), which serialises the leasers of
// one endpoint: each sees the leases of those before it. An unknown endpoint
// has nothing to lease.
func (s Queue) Lease(ctx context.Context, l outbox.Lease) ([]outbox.Batch, error) {
	var items []outbox.Item
	err := s.inTx(ctx, func(q Querier) error {
		ok, err := endpointExists(ctx, s.d, q, l.EndpointID, s.d.LockQueue)
		if err != nil || !ok {
			return err
		}
		b := &builder{d: s.d}
		owner, until, upd := b.arg(l.Owner), b.arg(Micros(l.Now.Add(l.For))), b.arg(Micros(l.Now))
		now := Micros(l.Now)
		query := `UPDATE sync_items SET state = '` + string(outbox.InFlight) + `', lease_owner = ` + owner + `, lease_until = ` + until + `, updated = ` + upd + `
			WHERE endpoint_id = ` + b.arg(l.EndpointID) + ` AND ` + runnable(b, "", now) + ` AND patient_id IN (
				SELECT i.patient_id FROM sync_items i
				WHERE i.endpoint_id = ` + b.arg(l.EndpointID) + ` AND ` + runnable(b, "i.", now) + `
				AND NOT EXISTS (SELECT 1 FROM sync_items f WHERE f.endpoint_id = i.endpoint_id AND f.patient_id = i.patient_id
					AND f.state = '` + string(outbox.InFlight) + `' AND f.lease_until >= ` + b.arg(now) + `)
				GROUP BY i.patient_id ORDER BY MIN(i.seq), i.patient_id LIMIT ` + b.arg(max(l.MaxPatients, 1)) + `)
			RETURNING ` + itemCols
		rows, err := q.Query(ctx, query, b.args...)
		if err != nil {
			return err
		}
		items, err = collectItems(rows)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("lease %s: %w", l.EndpointID, err)
	}
	return batches(items), nil
}

// Upcoming implements store.Sync: Lease's choice of patients, read only.
func (s Queue) Upcoming(ctx context.Context, endpointID string, now time.Time, limit int) ([]string, error) {
	if limit <= 0 {
		limit = 32
	}
	b := &builder{d: s.d}
	us := Micros(now)
	query := `SELECT i.patient_id FROM sync_items i
		WHERE i.endpoint_id = ` + b.arg(endpointID) + ` AND i.patient_id <> '' AND ` + runnable(b, "i.", us) + `
		AND NOT EXISTS (SELECT 1 FROM sync_items f WHERE f.endpoint_id = i.endpoint_id AND f.patient_id = i.patient_id
			AND f.state = '` + string(outbox.InFlight) + `' AND f.lease_until >= ` + b.arg(us) + `)
		GROUP BY i.patient_id ORDER BY MIN(i.seq), i.patient_id LIMIT ` + b.arg(min(limit, 1000))
	rows, err := s.read.Query(ctx, query, b.args...)
	if err != nil {
		return nil, fmt.Errorf("upcoming %s: %w", endpointID, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("upcoming %s: %w", endpointID, err)
		}
		out = append(out, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("upcoming %s: %w", endpointID, err)
	}
	return out, nil
}

// batches groups leased items by patient, each batch by seq, the batches by
// their first seq.
func batches(items []outbox.Item) []outbox.Batch {
	slices.SortFunc(items, func(a, b outbox.Item) int { return cmp.Compare(a.Seq, b.Seq) })
	var out []outbox.Batch
	at := map[string]int{}
	for _, it := range items {
		i, ok := at[it.PatientID]
		if !ok {
			i = len(out)
			at[it.PatientID] = i
			out = append(out, outbox.Batch{EndpointID: it.EndpointID, PatientID: it.PatientID})
		}
		out[i].Items = append(out[i].Items, it)
	}
	return out
}

// lockItem reads an item for a change, with the dialect's LockRow.
func lockItem(ctx context.Context, d *Dialect, q Querier, id int64) (outbox.Item, error) {
	it, err := scanItem(q.QueryRow(ctx, d.Rebind(`SELECT `+itemCols+` FROM sync_items WHERE id = ?`+d.LockRow), id))
	if d.noRows(err) {
		return outbox.Item{}, treatment.NotFound("sync item", strconv.FormatInt(id, 10))
	}
	if err != nil {
		return outbox.Item{}, fmt.Errorf("read sync item %d: %w", id, err)
	}
	return it, nil
}

// writeItem writes back the mutable columns of an item read by lockItem.
func writeItem(ctx context.Context, d *Dialect, q Querier, it outbox.Item) error {
	_, err := q.Exec(ctx, d.Rebind(`UPDATE sync_items SET state = ?, sent_version = ?, sent_hash = ?, ehr_id = ?, ehr_version = ?, attempts = ?,
		next_attempt = ?, lease_owner = ?, lease_until = ?, last_status = ?, last_error = ?, outcome = ?, updated = ? WHERE id = ?`),
		string(it.State), it.SentVersion, it.SentHash, it.EHRID, it.EHRVersion, it.Attempts,
		optMicros(it.NextAttempt), it.LeaseOwner, optMicros(it.LeaseUntil), it.LastStatus, it.LastError, it.Outcome, Micros(it.Updated), it.ID)
	if err != nil {
		return fmt.Errorf("write sync item %d: %w", it.ID, err)
	}
	return nil
}

// appendLog appends an event to the sync log.
func appendLog(ctx context.Context, d *Dialect, q Querier, e outbox.Event) error {
	_, err := q.Exec(ctx, d.Rebind(`INSERT INTO sync_log (at, endpoint_id, item_id, resource_type, resource_id, version, action, status, ehr_id, ehr_version, request, detail, actor)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
		Micros(e.At), e.EndpointID, e.ItemID, e.ResourceType, e.ResourceID, e.Version, e.Action, e.Status, e.EHRID, e.EHRVersion, e.Request, e.Detail, e.Actor)
	if err != nil {
		return fmt.Errorf("append sync log: %w", err)
	}
	return nil
}

// event is the log line of an action on an item.
func event(it outbox.Item, action string, now time.Time, actor string) outbox.Event {
	return outbox.Event{At: now, EndpointID: it.EndpointID, ItemID: it.ID, ResourceType: it.ResourceType, ResourceID: it.ResourceID,
		Version: it.WantVersion, Action: action, Actor: actor}
}

// Finish implements store.Sync: the result, its Provenance and its audit
// records in one transaction.
func (s Queue) Finish(ctx context.Context, r outbox.Result) error {
	return s.inTx(ctx, func(q Querier) error {
		if err := finish(ctx, s.d, q, r); err != nil {
			return err
		}
		return recordSent(ctx, s.d, q, []outbox.Result{r})
	})
}

// FinishBatch implements store.Sync: every result, with the Provenance and
// audit records of those applied, in one transaction.
func (s Queue) FinishBatch(ctx context.Context, rs []outbox.Result) ([]error, error) {
	errs := make([]error, len(rs))
	err := s.inTx(ctx, func(q Querier) error {
		applied := make([]outbox.Result, 0, len(rs))
		for i, r := range rs {
			err := finish(ctx, s.d, q, r)
			if treatment.ErrorKind(err) == treatment.KindConflict {
				errs[i] = err // checked before anything was written
				continue
			}
			if err != nil {
				return err
			}
			applied = append(applied, r)
		}
		return recordSent(ctx, s.d, q, applied)
	})
	if err != nil {
		return nil, err
	}
	return errs, nil
}

// recordSent stores the Provenance of each applied result (see
// outbox.Result) and appends all their audit records in one append, last
// in the transaction: the chain's head stays locked until the commit.
func recordSent(ctx context.Context, d *Dialect, q Querier, rs []outbox.Result) error {
	w := NewWriter(d, q)
	var recs []audit.Record
	for _, r := range rs {
		recs = append(recs, r.Audit...)
		p := r.Provenance
		if p == nil {
			continue
		}
		if r.Outcome != outbox.Sent {
			return treatment.Errorf(treatment.KindInvalid, "sync item %d: a Provenance comes only with a sent result, not %s", r.ItemID, r.Outcome)
		}
		cur, _, err := w.CurrentVersion(ctx, p.Version.Type, p.Version.ID)
		if err != nil {
			return fmt.Errorf("sync item %d: %w", r.ItemID, err)
		}
		if cur > 0 {
			continue // this version was sent to this endpoint before
		}
		if err := w.PutVersion(ctx, *p); err != nil {
			return fmt.Errorf("sync item %d: store its Provenance: %w", r.ItemID, err)
		}
	}
	if _, err := appendAudit(ctx, d, q, recs, false); err != nil {
		return fmt.Errorf("audit the sync results: %w", err)
	}
	return nil
}

// finish applies one result inside a transaction. A conflict is reported
// before anything is written.
func finish(ctx context.Context, d *Dialect, q Querier, r outbox.Result) error {
	it, err := lockItem(ctx, d, q, r.ItemID)
	if err != nil && treatment.ErrorKind(err) == treatment.KindNotFound {
		return treatment.Errorf(treatment.KindConflict, "sync item %d is gone: its lease was lost", r.ItemID)
	}
	if err != nil {
		return err
	}
	if it.State != outbox.InFlight || it.LeaseOwner != r.Owner {
		return treatment.Errorf(treatment.KindConflict, "sync item %d is no longer leased by %s", r.ItemID, r.Owner)
	}
	ev := event(it, string(r.Outcome), r.Now, "sync")
	ev.Status, ev.EHRID, ev.EHRVersion, ev.Request, ev.Detail = r.Status, r.EHRID, r.EHRVersion, r.Request, r.Error
	it.LeaseOwner, it.LeaseUntil, it.Updated = "", time.Time{}, r.Now
	if r.EHRID != "" {
		it.EHRID = r.EHRID
	}
	if r.EHRVersion != "" {
		it.EHRVersion = r.EHRVersion
	}
	switch r.Outcome {
	case outbox.Sent, outbox.Unchanged:
		it.SentVersion = max(it.SentVersion, r.SentVersion)
		if r.SentHash != nil {
			it.SentHash = r.SentHash
		}
		it.Attempts, it.LastStatus, it.LastError, it.Outcome = 0, r.Status, "", nil
		it.State = outbox.Succeeded
		if it.WantVersion > it.SentVersion {
			it.State, it.NextAttempt = outbox.Pending, r.Now
		}
		ev.Version = r.SentVersion
	case outbox.Retry:
		it.State, it.NextAttempt = outbox.Retrying, r.RetryAt
		it.Attempts, it.LastStatus, it.LastError, it.Outcome = it.Attempts+1, r.Status, r.Error, r.OpOut
	case outbox.Reject:
		it.State = outbox.Dead
		it.Attempts, it.LastStatus, it.LastError, it.Outcome = it.Attempts+1, r.Status, r.Error, r.OpOut
	case outbox.Release:
		it.State = outbox.Pending
	default:
		return treatment.Errorf(treatment.KindInvalid, "unknown sync outcome %q", r.Outcome)
	}
	if err := writeItem(ctx, d, q, it); err != nil {
		return err
	}
	if r.Outcome == outbox.Release {
		return nil
	}
	return appendLog(ctx, d, q, ev)
}

// Item implements store.Sync.
func (s Queue) Item(ctx context.Context, id int64) (outbox.Item, error) {
	it, err := scanItem(s.read.QueryRow(ctx, s.d.Rebind(`SELECT `+itemCols+` FROM sync_items WHERE id = ?`), id))
	if s.d.noRows(err) {
		return outbox.Item{}, treatment.NotFound("sync item", strconv.FormatInt(id, 10))
	}
	if err != nil {
		return outbox.Item{}, fmt.Errorf("read sync item %d: %w", id, err)
	}
	return it, nil
}

// Items implements store.Sync.
func (s Queue) Items(ctx context.Context, f outbox.Filter) ([]outbox.Item, error) {
	b := &builder{d: s.d}
	b.conds = append(b.conds, "id > "+b.arg(f.AfterID))
	if f.EndpointID != "" {
		b.conds = append(b.conds, "endpoint_id = "+b.arg(f.EndpointID))
	}
	if f.State != "" {
		b.conds = append(b.conds, "state = "+b.arg(string(f.State)))
	}
	if f.PatientID != "" {
		b.conds = append(b.conds, "patient_id = "+b.arg(f.PatientID))
	}
	rows, err := s.read.Query(ctx, `SELECT `+itemCols+` FROM sync_items WHERE `+b.where()+` ORDER BY id LIMIT `+b.arg(listLimit(f.Limit)), b.args...)
	if err != nil {
		return nil, fmt.Errorf("list sync items: %w", err)
	}
	items, err := collectItems(rows)
	if err != nil {
		return nil, fmt.Errorf("list sync items: %w", err)
	}
	return items, nil
}

// Links implements store.Sync.
func (s Queue) Links(ctx context.Context, endpointID string, keys []resource.Key) (map[resource.Key]outbox.Item, error) {
	out := map[resource.Key]outbox.Item{}
	if len(keys) == 0 {
		return out, nil
	}
	want := map[resource.Key]bool{}
	var types, ids []string
	for _, k := range keys {
		want[k] = true
		if !slices.Contains(types, k.Type) {
			types = append(types, k.Type)
		}
		ids = append(ids, k.ID)
	}
	b := &builder{d: s.d}
	query := `SELECT ` + itemCols + ` FROM sync_items WHERE endpoint_id = ` + b.arg(endpointID) + ` AND ` + b.in("resource_type", types) + ` AND ` + b.in("resource_id", ids)
	rows, err := s.read.Query(ctx, query, b.args...)
	if err != nil {
		return nil, fmt.Errorf("links at %s: %w", endpointID, err)
	}
	items, err := collectItems(rows)
	if err != nil {
		return nil, fmt.Errorf("links at %s: %w", endpointID, err)
	}
	for _, it := range items {
		if k := (resource.Key{Type: it.ResourceType, ID: it.ResourceID}); want[k] {
			out[k] = it
		}
	}
	return out, nil
}

// Stats implements store.Sync, in one snapshot. ByState has every state.
func (s Queue) Stats(ctx context.Context, endpointID string) (outbox.Stats, error) {
	q, end, err := s.snap(ctx)
	if err != nil {
		return outbox.Stats{}, fmt.Errorf("sync stats %s: %w", endpointID, err)
	}
	defer end()
	st := outbox.Stats{ByState: map[outbox.State]int{}}
	for _, state := range outbox.States {
		st.ByState[state] = 0
	}
	counts := func(query string, add func(key string, n int)) error {
		rows, err := q.Query(ctx, s.d.Rebind(query), endpointID)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var k string
			var n int
			if err := rows.Scan(&k, &n); err != nil {
				return err
			}
			add(k, n)
		}
		return rows.Err()
	}
	err = counts(`SELECT state, COUNT(*) FROM sync_items WHERE endpoint_id = ? GROUP BY state`, func(k string, n int) { st.ByState[outbox.State(k)] = n })
	if err == nil {
		err = counts(`SELECT action, COUNT(*) FROM sync_log WHERE endpoint_id = ? AND action IN ('sent', 'retry', 'dead') GROUP BY action`, func(k string, n int) {
			switch k {
			case string(outbox.Sent):
				st.Sent = n
			case string(outbox.Retry):
				st.Failed = n
			case string(outbox.Reject):
				st.Dead = n
			}
		})
	}
	if err != nil {
		return outbox.Stats{}, fmt.Errorf("sync stats %s: %w", endpointID, err)
	}
	var oldest int64
	if err := q.QueryRow(ctx, s.d.Rebind(`SELECT COALESCE(MIN(next_attempt), 0) FROM sync_items WHERE endpoint_id = ? AND state IN `+sqlStates(outbox.Pending, outbox.Retrying)), endpointID).Scan(&oldest); err != nil {
		return outbox.Stats{}, fmt.Errorf("sync stats %s: %w", endpointID, err)
	}
	st.OldestPending = optTime(oldest)
	var at int64
	err = q.QueryRow(ctx, s.d.Rebind(`SELECT detail, at FROM sync_log WHERE endpoint_id = ? AND action IN ('retry', 'dead') ORDER BY id DESC LIMIT 1`), endpointID).Scan(&st.LastError, &at)
	switch {
	case s.d.noRows(err):
	case err != nil:
		return outbox.Stats{}, fmt.Errorf("sync stats %s: %w", endpointID, err)
	default:
		st.LastErrorAt = FromMicros(at)
	}
	return st, nil
}

// replay makes a locked item pending again and logs it.
func replay(ctx context.Context, d *Dialect, q Querier, it outbox.Item, actor string, now time.Time) error {
	if it.State == outbox.InFlight {
		return treatment.Errorf(treatment.KindConflict, "sync item %d is in flight", it.ID)
	}
	// A replay always sends: the hash of the last body sent is forgotten.
	it.State, it.Attempts, it.NextAttempt, it.Updated, it.SentHash = outbox.Pending, 0, now, now, nil
	if err := writeItem(ctx, d, q, it); err != nil {
		return err
	}
	return appendLog(ctx, d, q, event(it, "replayed", now, actor))
}

// Renew implements store.Sync.
func (s Queue) Renew(ctx context.Context, endpointID, patientID, owner string, until time.Time) error {
	return s.inTx(ctx, func(q Querier) error {
		n, err := q.Exec(ctx, s.d.Rebind(`UPDATE sync_items SET lease_until = ? WHERE endpoint_id = ? AND patient_id = ? AND lease_owner = ? AND state = '`+string(outbox.InFlight)+`'`),
			Micros(until), endpointID, patientID, owner)
		if err != nil {
			return fmt.Errorf("renew lease: %w", err)
		}
		if n == 0 {
			return treatment.Errorf(treatment.KindConflict, "the lease of patient %q at %s is no longer held by %s", patientID, endpointID, owner)
		}
		return nil
	})
}

// Replay implements store.Sync.
func (s Queue) Replay(ctx context.Context, itemID int64, actor string, now time.Time) error {
	return s.inTx(ctx, func(q Querier) error {
		it, err := lockItem(ctx, s.d, q, itemID)
		if err != nil {
			return err
		}
		return replay(ctx, s.d, q, it, actor, now)
	})
}

// ReplayDead implements store.Sync.
func (s Queue) ReplayDead(ctx context.Context, endpointID, actor string, now time.Time) (int, error) {
	var n int
	err := s.inTx(ctx, func(q Querier) error {
		rows, err := q.Query(ctx, s.d.Rebind(`SELECT `+itemCols+` FROM sync_items WHERE endpoint_id = ? AND state = '`+string(outbox.Dead)+`' ORDER BY id`+s.d.LockRow), endpointID)
		if err != nil {
			return err
		}
		items, err := collectItems(rows)
		if err != nil {
			return err
		}
		for _, it := range items {
			if err := replay(ctx, s.d, q, it, actor, now); err != nil {
				return err
			}
		}
		n = len(items)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("replay dead items of %s: %w", endpointID, err)
	}
	return n, nil
}

// Discard implements store.Sync.
func (s Queue) Discard(ctx context.Context, itemID int64, actor string, now time.Time) error {
	return s.inTx(ctx, func(q Querier) error {
		it, err := lockItem(ctx, s.d, q, itemID)
		if err != nil {
			return err
		}
		if it.State != outbox.Dead && it.State != outbox.Retrying {
			return treatment.Errorf(treatment.KindConflict, "sync item %d is %s: only a dead or retrying item can be discarded", it.ID, it.State)
		}
		it.State, it.Updated = outbox.Discarded, now
		if err := writeItem(ctx, s.d, q, it); err != nil {
			return err
		}
		return appendLog(ctx, s.d, q, event(it, "discarded", now, actor))
	})
}

// AppendLog implements store.Sync.
func (s Queue) AppendLog(ctx context.Context, e outbox.Event) error {
	return s.inTx(ctx, func(q Querier) error { return appendLog(ctx, s.d, q, e) })
}

// Log implements store.Sync.
func (s Queue) Log(ctx context.Context, endpointID string, beforeID int64, limit int) ([]outbox.Event, error) {
	b := &builder{d: s.d}
	b.conds = append(b.conds, s.d.True())
	if endpointID != "" {
		b.conds = append(b.conds, "endpoint_id = "+b.arg(endpointID))
	}
	if beforeID > 0 {
		b.conds = append(b.conds, "id < "+b.arg(beforeID))
	}
	rows, err := s.read.Query(ctx, `SELECT id, at, endpoint_id, item_id, resource_type, resource_id, version, action, status, ehr_id, ehr_version, request, detail, actor
		FROM sync_log WHERE `+b.where()+` ORDER BY id DESC LIMIT `+b.arg(listLimit(limit)), b.args...)
	if err != nil {
		return nil, fmt.Errorf("read sync log: %w", err)
	}
	defer rows.Close()
	var out []outbox.Event
	for rows.Next() {
		var e outbox.Event
		var at int64
		if err := rows.Scan(&e.ID, &at, &e.EndpointID, &e.ItemID, &e.ResourceType, &e.ResourceID, &e.Version, &e.Action, &e.Status,
			&e.EHRID, &e.EHRVersion, &e.Request, &e.Detail, &e.Actor); err != nil {
			return nil, fmt.Errorf("read sync log: %w", err)
		}
		e.At = FromMicros(at)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read sync log: %w", err)
	}
	return out, nil
}
