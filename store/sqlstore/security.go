package sqlstore

import (
	"context"
	"fmt"
	"time"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/store"
	"github.com/kapfhir/kapfhir/treatment"
)

// What the auth server keeps (auth_clients, auth_jti, auth_signing_keys)
// and the auditors' read of sync_log.

// clientCols are the columns scanClient reads.
const clientCols = `id, role, json, created, updated`

func scanClient(r Row) (store.ClientRecord, error) {
	var c store.ClientRecord
	var js string
	var created, updated int64
	if err := r.Scan(&c.ID, &c.Role, &js, &created, &updated); err != nil {
		return store.ClientRecord{}, err
	}
	c.JSON, c.Created, c.Updated = []byte(js), optTime(created), optTime(updated)
	return c, nil
}

// PutClient implements store.Security.
func (s Security) PutClient(ctx context.Context, c store.ClientRecord) error {
	if c.ID == "" {
		return treatment.Errorf(treatment.KindInvalid, "client needs an id")
	}
	err := s.inTx(ctx, func(q Querier) error {
		_, err := q.Exec(ctx, s.d.Rebind(`INSERT INTO auth_clients (`+clientCols+`) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (id) DO UPDATE SET role = excluded.role, json = excluded.json, updated = excluded.updated`),
			c.ID, c.Role, string(c.JSON), optMicros(c.Created), optMicros(c.Updated))
		return err
	})
	if err != nil {
		return fmt.Errorf("put client %s: %w", c.ID, err)
	}
	return nil
}

// Client implements store.Security.
func (s Security) Client(ctx context.Context, id string) (store.ClientRecord, error) {
	c, err := scanClient(s.read.QueryRow(ctx, s.d.Rebind(`SELECT `+clientCols+` FROM auth_clients WHERE id = ?`), id))
	if s.d.noRows(err) {
		return store.ClientRecord{}, treatment.NotFound("client", id)
	}
	if err != nil {
		return store.ClientRecord{}, fmt.Errorf("read client %s: %w", id, err)
	}
	return c, nil
}

// Clients implements store.Security.
func (s Security) Clients(ctx context.Context) ([]store.ClientRecord, error) {
	rows, err := s.read.Query(ctx, `SELECT `+clientCols+` FROM auth_clients ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list clients: %w", err)
	}
	defer rows.Close()
	var out []store.ClientRecord
	for rows.Next() {
		c, err := scanClient(rows)
		if err != nil {
			return nil, fmt.Errorf("list clients: %w", err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list clients: %w", err)
	}
	return out, nil
}

// DeleteClient implements store.Security.
func (s Security) DeleteClient(ctx context.Context, id string) error {
	return s.inTx(ctx, func(q Querier) error {
		n, err := q.Exec(ctx, s.d.Rebind(`DELETE FROM auth_clients WHERE id = ?`), id)
		if err != nil {
			return fmt.Errorf("delete client %s: %w", id, err)
		}
		if n == 0 {
			return treatment.NotFound("client", id)
		}
		return nil
	})
}

// UseJTI implements store.Security: expired uses are purged, then the use
// is inserted unless one is there (ON CONFLICT DO NOTHING, which waits for
// a concurrent insert of the same key to end).
func (s Security) UseJTI(ctx context.Context, clientID, jti string, expires, now time.Time) error {
	if clientID == "" || jti == "" {
		return treatment.Errorf(treatment.KindInvalid, "a token id use needs a client id and a jti")
	}
	return s.inTx(ctx, func(q Querier) error {
		if _, err := q.Exec(ctx, s.d.Rebind(`DELETE FROM auth_jti WHERE expires <= ?`), Micros(now)); err != nil {
			return fmt.Errorf("purge token ids: %w", err)
		}
		n, err := q.Exec(ctx, s.d.Rebind(`INSERT INTO auth_jti (client_id, jti, expires) VALUES (?, ?, ?) ON CONFLICT (client_id, jti) DO NOTHING`),
			clientID, jti, Micros(expires))
		if err != nil {
			return fmt.Errorf("use token id of client %s: %w", clientID, err)
		}
		if n == 0 {
			return treatment.Errorf(treatment.KindConflict, "token id already used by client %s", clientID)
		}
		return nil
	})
}

// keyCols are the columns scanKey reads.
const keyCols = `kid, alg, private, public, created, retired`

func scanKey(r Row) (store.SigningKey, error) {
	var k store.SigningKey
	var created, retired int64
	if err := r.Scan(&k.KID, &k.Alg, &k.Private, &k.Public, &created, &retired); err != nil {
		return store.SigningKey{}, err
	}
	k.Created, k.Retired = optTime(created), optTime(retired)
	if len(k.Public) == 0 {
		k.Public = nil
	}
	return k, nil
}

// PutSigningKey implements store.Security.
func (s Security) PutSigningKey(ctx context.Context, k store.SigningKey, recs ...audit.Record) error {
	if k.KID == "" || k.Alg == "" || len(k.Private) == 0 {
		return treatment.Errorf(treatment.KindInvalid, "a signing key needs a kid, an algorithm and its private key")
	}
	var public any
	if len(k.Public) > 0 {
		public = k.Public
	}
	_, err := s.auditedChange(ctx, "put signing key "+k.KID, recs, func(q Querier) (bool, error) {
		_, err := q.Exec(ctx, s.d.Rebind(`INSERT INTO auth_signing_keys (`+keyCols+`) VALUES (?, ?, ?, ?, ?, ?)`),
			k.KID, k.Alg, k.Private, public, optMicros(k.Created), optMicros(k.Retired))
		if s.d.unique(err) {
			return false, treatment.Errorf(treatment.KindConflict, "signing key %q already exists", k.KID)
		}
		return err == nil, err
	})
	return err
}

// auditedChange runs change in one transaction and, when it changed
// something, appends recs in the same transaction; it reports whether
// change changed something.
func (s Security) auditedChange(ctx context.Context, op string, recs []audit.Record, change func(q Querier) (bool, error)) (bool, error) {
	done := false
	err := s.inTx(ctx, func(q Querier) error {
		var err error
		if done, err = change(q); err != nil || !done {
			return err
		}
		_, err = appendAudit(ctx, s.d, q, recs, false)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("%s: %w", op, err)
	}
	return done, nil
}

// SigningKeys implements store.Security.
func (s Security) SigningKeys(ctx context.Context) ([]store.SigningKey, error) {
	rows, err := s.read.Query(ctx, `SELECT `+keyCols+` FROM auth_signing_keys ORDER BY created DESC, kid`)
	if err != nil {
		return nil, fmt.Errorf("list signing keys: %w", err)
	}
	defer rows.Close()
	var out []store.SigningKey
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, fmt.Errorf("list signing keys: %w", err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list signing keys: %w", err)
	}
	return out, nil
}

// RetireSigningKey implements store.Security.
func (s Security) RetireSigningKey(ctx context.Context, kid string, at time.Time, recs ...audit.Record) (bool, error) {
	return s.auditedChange(ctx, "retire signing key "+kid, recs, func(q Querier) (bool, error) {
		var retired int64
		err := q.QueryRow(ctx, s.d.Rebind(`SELECT retired FROM auth_signing_keys WHERE kid = ?`+s.d.LockRow), kid).Scan(&retired)
		if s.d.noRows(err) {
			return false, treatment.NotFound("signing key", kid)
		}
		if err != nil || retired != 0 {
			return false, err
		}
		_, err = q.Exec(ctx, s.d.Rebind(`UPDATE auth_signing_keys SET retired = ? WHERE kid = ?`), Micros(at), kid)
		return err == nil, err
	})
}

// ResealSigningKey implements store.Security: the update applies only
// while the stored bytes are still old.
func (s Security) ResealSigningKey(ctx context.Context, kid string, old, private []byte, recs ...audit.Record) (bool, error) {
	if len(private) == 0 {
		return false, treatment.Errorf(treatment.KindInvalid, "a signing key needs its private key")
	}
	return s.auditedChange(ctx, "reseal signing key "+kid, recs, func(q Querier) (bool, error) {
		n, err := q.Exec(ctx, s.d.Rebind(`UPDATE auth_signing_keys SET private = ? WHERE kid = ? AND private = ?`), private, kid, old)
		if err != nil || n > 0 {
			return n > 0, err
		}
		var one int
		err = q.QueryRow(ctx, s.d.Rebind(`SELECT 1 FROM auth_signing_keys WHERE kid = ?`), kid).Scan(&one)
		if s.d.noRows(err) {
			return false, treatment.NotFound("signing key", kid)
		}
		return false, err
	})
}

// ledgerPatient is the patient of a sync log line's resource (alias l):
// itself for a Patient, else its current "patient", then "subject",
// reference, else "" (see patientOf).
const ledgerPatient = `CASE WHEN l.resource_type = 'Patient' THEN l.resource_id ELSE COALESCE(
	(SELECT MIN(substr(s.target, 9)) FROM search_refs s WHERE s.type = l.resource_type AND s.id = l.resource_id AND s.param = 'patient' AND substr(s.target, 1, 8) = 'Patient/'),
	(SELECT MIN(substr(s.target, 9)) FROM search_refs s WHERE s.type = l.resource_type AND s.id = l.resource_id AND s.param = 'subject' AND substr(s.target, 1, 8) = 'Patient/'),
	'') END`

// SyncLedger implements store.Security.
func (s Security) SyncLedger(ctx context.Context, f outbox.LedgerFilter) (outbox.LedgerPage, error) {
	b := &builder{d: s.d}
	b.conds = append(b.conds, s.d.True())
	if f.EndpointID != "" {
		b.conds = append(b.conds, "l.endpoint_id = "+b.arg(f.EndpointID))
	}
	if f.ResourceType != "" {
		b.conds = append(b.conds, "l.resource_type = "+b.arg(f.ResourceType))
	}
	if f.PatientID != "" {
		b.conds = append(b.conds, "((l.resource_type = 'Patient' AND l.resource_id = "+b.arg(f.PatientID)+") OR EXISTS (SELECT 1 FROM search_refs s"+
			" WHERE s.type = l.resource_type AND s.id = l.resource_id AND s.param IN ('patient', 'subject') AND s.target = "+b.arg("Patient/"+f.PatientID)+"))")
	}
	if !f.From.IsZero() {
		b.conds = append(b.conds, "l.at >= "+b.arg(Micros(f.From)))
	}
	if !f.To.IsZero() {
		b.conds = append(b.conds, "l.at < "+b.arg(Micros(f.To)))
	}
	if f.Cursor > 0 {
		b.conds = append(b.conds, "l.id < "+b.arg(f.Cursor))
	}
	limit := listLimit(f.Limit)
	rows, err := s.read.Query(ctx, `SELECT l.id, l.at, l.endpoint_id, l.item_id, l.resource_type, l.resource_id, l.version, l.action, l.status,
		l.ehr_id, l.ehr_version, l.request, l.detail, l.actor, `+ledgerPatient+`
		FROM sync_log l WHERE `+b.where()+` ORDER BY l.id DESC LIMIT `+b.arg(limit+1), b.args...)
	if err != nil {
		return outbox.LedgerPage{}, fmt.Errorf("read sync ledger: %w", err)
	}
	defer rows.Close()
	var page outbox.LedgerPage
	for rows.Next() {
		var e outbox.LedgerEntry
		var at int64
		if err := rows.Scan(&e.ID, &at, &e.EndpointID, &e.ItemID, &e.ResourceType, &e.ResourceID, &e.Version, &e.Action, &e.Status,
			&e.EHRID, &e.EHRVersion, &e.Request, &e.Detail, &e.Actor, &e.PatientID); err != nil {
			return outbox.LedgerPage{}, fmt.Errorf("read sync ledger: %w", err)
		}
		e.At = FromMicros(at)
		page.Entries = append(page.Entries, e)
	}
	if err := rows.Err(); err != nil {
		return outbox.LedgerPage{}, fmt.Errorf("read sync ledger: %w", err)
	}
	if len(page.Entries) > limit {
		page.Entries = page.Entries[:limit]
		page.Next = page.Entries[limit-1].ID
	}
	return page, nil
}
