package sqlstore

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/kapfhir/kapfhir/treatment"
)

// Domain implements store.DomainReader on Q. Aggregates are stored as JSON
// rows, one a patient or programme, with side tables for the lookups.
type Domain struct {
	D *Dialect
	Q Querier
}

// Writer implements the writes of store.Tx on Q, a transaction; it reads
// through the same transaction.
type Writer struct {
	Domain
}

// NewWriter returns a Writer on the transaction q in dialect d.
func NewWriter(d *Dialect, q Querier) Writer { return Writer{Domain{D: d, Q: q}} }

// Patient implements store.DomainReader.
func (r Domain) Patient(ctx context.Context, id string) (treatment.Patient, error) {
	var b []byte
	err := r.Q.QueryRow(ctx, r.D.Rebind(`SELECT json FROM patients WHERE id = ?`), id).Scan(&b)
	if r.D.noRows(err) {
		return treatment.Patient{}, treatment.NotFound("patient", id)
	}
	if err != nil {
		return treatment.Patient{}, fmt.Errorf("read patient %s: %w", id, err)
	}
	var p treatment.Patient
	if err := json.Unmarshal(b, &p); err != nil {
		return treatment.Patient{}, fmt.Errorf("decode patient %s: %w", id, err)
	}
	return p, nil
}

// Program implements store.DomainReader.
func (r Domain) Program(ctx context.Context, id string) (treatment.Program, error) {
	var b []byte
	err := r.Q.QueryRow(ctx, r.D.Rebind(`SELECT json FROM programs WHERE id = ?`), id).Scan(&b)
	if r.D.noRows(err) {
		return treatment.Program{}, treatment.NotFound("programme", id)
	}
	if err != nil {
		return treatment.Program{}, fmt.Errorf("read programme %s: %w", id, err)
	}
	return decodeProgram(id, b)
}

func decodeProgram(id string, b []byte) (treatment.Program, error) {
	var p treatment.Program
	if err := json.Unmarshal(b, &p); err != nil {
		return treatment.Program{}, fmt.Errorf("decode programme %s: %w", id, err)
	}
	return p, nil
}

// ProgramBySession implements store.DomainReader.
func (r Domain) ProgramBySession(ctx context.Context, sessionID string) (treatment.Program, error) {
	var id string
	var b []byte
	err := r.Q.QueryRow(ctx, r.D.Rebind(`SELECT p.id, p.json FROM sessions s JOIN programs p ON p.id = s.program_id WHERE s.id = ?`), sessionID).Scan(&id, &b)
	if r.D.noRows(err) {
		return treatment.Program{}, treatment.NotFound("session", sessionID)
	}
	if err != nil {
		return treatment.Program{}, fmt.Errorf("read programme of session %s: %w", sessionID, err)
	}
	return decodeProgram(id, b)
}

// ProgramsByPatient implements store.DomainReader.
func (r Domain) ProgramsByPatient(ctx context.Context, patientID string) ([]treatment.Program, error) {
	rows, err := r.Q.Query(ctx, r.D.Rebind(`SELECT id, json FROM programs WHERE patient_id = ? ORDER BY created, id`), patientID)
	if err != nil {
		return nil, fmt.Errorf("read programmes of patient %s: %w", patientID, err)
	}
	defer rows.Close()
	var out []treatment.Program
	for rows.Next() {
		var id string
		var b []byte
		if err := rows.Scan(&id, &b); err != nil {
			return nil, fmt.Errorf("read programmes of patient %s: %w", patientID, err)
		}
		p, err := decodeProgram(id, b)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read programmes of patient %s: %w", patientID, err)
	}
	return out, nil
}

// CreatePatient implements store.Tx.
func (w Writer) CreatePatient(ctx context.Context, p treatment.Patient) error {
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode patient %s: %w", p.ID, err)
	}
	for _, ident := range p.Identifiers {
		var other string
		err := w.Q.QueryRow(ctx, w.D.Rebind(`SELECT patient_id FROM patient_identifiers WHERE system = ? AND value = ?`), ident.System, ident.Value).Scan(&other)
		if err == nil {
			return treatment.Errorf(treatment.KindConflict, "patient %s already has identifier in system %s", other, ident.System)
		}
		if !w.D.noRows(err) {
			return fmt.Errorf("create patient %s: %w", p.ID, err)
		}
	}
	if _, err := w.Q.Exec(ctx, w.D.Rebind(`INSERT INTO patients (id, json) VALUES (?, ?)`), p.ID, b); err != nil {
		if w.D.unique(err) {
			return treatment.Errorf(treatment.KindConflict, "patient %q already exists", p.ID)
		}
		return fmt.Errorf("create patient %s: %w", p.ID, err)
	}
	for _, ident := range p.Identifiers {
		if _, err := w.Q.Exec(ctx, w.D.Rebind(`INSERT INTO patient_identifiers (system, value, patient_id) VALUES (?, ?, ?)`), ident.System, ident.Value, p.ID); err != nil {
			if w.D.unique(err) {
				return treatment.Errorf(treatment.KindConflict, "patient %q repeats an identifier in system %s", p.ID, ident.System)
			}
			return fmt.Errorf("create patient %s: identifier: %w", p.ID, err)
		}
	}
	return nil
}

// CreateProgram implements store.Tx.
func (w Writer) CreateProgram(ctx context.Context, p treatment.Program) error {
	if p.Version != 1 {
		return treatment.Errorf(treatment.KindInvalid, "new programme %q must have version 1, not %d", p.ID, p.Version)
	}
	var n int
	if err := w.Q.QueryRow(ctx, w.D.Rebind(`SELECT COUNT(*) FROM patients WHERE id = ?`), p.PatientID).Scan(&n); err != nil {
		return fmt.Errorf("create programme %s: %w", p.ID, err)
	}
	if n == 0 {
		return treatment.NotFound("patient", p.PatientID)
	}
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode programme %s: %w", p.ID, err)
	}
	_, err = w.Q.Exec(ctx, w.D.Rebind(`INSERT INTO programs (id, patient_id, version, created, json) VALUES (?, ?, ?, ?, ?)`),
		p.ID, p.PatientID, p.Version, p.Created.UnixMicro(), b)
	if err != nil {
		if w.D.unique(err) {
			return treatment.Errorf(treatment.KindConflict, "programme %q already exists", p.ID)
		}
		return fmt.Errorf("create programme %s: %w", p.ID, err)
	}
	return w.writeSessions(ctx, p)
}

// UpdateProgram implements store.Tx.
func (w Writer) UpdateProgram(ctx context.Context, p treatment.Program) error {
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode programme %s: %w", p.ID, err)
	}
	n, err := w.Q.Exec(ctx, w.D.Rebind(`UPDATE programs SET version = ?, json = ? WHERE id = ? AND version = ?`), p.Version, b, p.ID, p.Version-1)
	if err != nil {
		if w.D.conflict(err) {
			return treatment.Errorf(treatment.KindConflict, "programme %q changed concurrently", p.ID)
		}
		return fmt.Errorf("update programme %s: %w", p.ID, err)
	}
	if n == 0 {
		var cur int64
		err := w.Q.QueryRow(ctx, w.D.Rebind(`SELECT version FROM programs WHERE id = ?`), p.ID).Scan(&cur)
		if w.D.noRows(err) {
			return treatment.NotFound("programme", p.ID)
		}
		if err != nil {
			return fmt.Errorf("update programme %s: %w", p.ID, err)
		}
		return treatment.Errorf(treatment.KindConflict, "programme %q is at version %d, not %d", p.ID, cur, p.Version-1)
	}
	if _, err := w.Q.Exec(ctx, w.D.Rebind(`DELETE FROM sessions WHERE program_id = ?`), p.ID); err != nil {
		return fmt.Errorf("update programme %s: sessions: %w", p.ID, err)
	}
	return w.writeSessions(ctx, p)
}

// writeSessions records which programme holds each session.
func (w Writer) writeSessions(ctx context.Context, p treatment.Program) error {
	for _, s := range p.Sessions {
		if _, err := w.Q.Exec(ctx, w.D.Rebind(`INSERT INTO sessions (id, program_id) VALUES (?, ?)`), s.ID, p.ID); err != nil {
			if w.D.unique(err) {
				return treatment.Errorf(treatment.KindConflict, "session %q already belongs to a programme", s.ID)
			}
			return fmt.Errorf("programme %s: session %s: %w", p.ID, s.ID, err)
		}
	}
	return nil
}

// Meta implements store.Tx.
func (w Writer) Meta(ctx context.Context, key string) (string, error) {
	var v string
	err := w.Q.QueryRow(ctx, w.D.Rebind(`SELECT value FROM meta WHERE key = ?`), key).Scan(&v)
	if w.D.noRows(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read meta %s: %w", key, err)
	}
	return v, nil
}

// SetMeta implements store.Tx.
func (w Writer) SetMeta(ctx context.Context, key, value string) error {
	if _, err := w.Q.Exec(ctx, w.D.Rebind(`INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`), key, value); err != nil {
		return fmt.Errorf("write meta %s: %w", key, err)
	}
	return nil
}
