package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/kapfhir/kapfhir/treatment"
)

func getPatient(ctx context.Context, q queryer, id string) (treatment.Patient, error) {
	var b []byte
	err := q.QueryRow(ctx, `SELECT json FROM patients WHERE id = $1`, id).Scan(&b)
	if errors.Is(err, pgx.ErrNoRows) {
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

func getProgram(ctx context.Context, q queryer, id string) (treatment.Program, error) {
	var b []byte
	err := q.QueryRow(ctx, `SELECT json FROM programs WHERE id = $1`, id).Scan(&b)
	if errors.Is(err, pgx.ErrNoRows) {
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

func getProgramBySession(ctx context.Context, q queryer, sessionID string) (treatment.Program, error) {
	var id string
	var b []byte
	err := q.QueryRow(ctx, `SELECT p.id, p.json FROM sessions s JOIN programs p ON p.id = s.program_id WHERE s.id = $1`, sessionID).Scan(&id, &b)
	if errors.Is(err, pgx.ErrNoRows) {
		return treatment.Program{}, treatment.NotFound("session", sessionID)
	}
	if err != nil {
		return treatment.Program{}, fmt.Errorf("read programme of session %s: %w", sessionID, err)
	}
	return decodeProgram(id, b)
}

func getProgramsByPatient(ctx context.Context, q queryer, patientID string) ([]treatment.Program, error) {
	rows, err := q.Query(ctx, `SELECT id, json FROM programs WHERE patient_id = $1 ORDER BY created, id`, patientID)
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
func (tx *Tx) CreatePatient(ctx context.Context, p treatment.Patient) error {
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode patient %s: %w", p.ID, err)
	}
	for _, ident := range p.Identifiers {
		var other string
		err := tx.q.QueryRow(ctx, `SELECT patient_id FROM patient_identifiers WHERE system = $1 AND value = $2`, ident.System, ident.Value).Scan(&other)
		if err == nil {
			return treatment.Errorf(treatment.KindConflict, "patient %s already has identifier in system %s", other, ident.System)
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("create patient %s: %w", p.ID, err)
		}
	}
	if _, err := tx.q.Exec(ctx, `INSERT INTO patients (id, json) VALUES ($1, $2)`, p.ID, b); err != nil {
		if isUnique(err) {
			return treatment.Errorf(treatment.KindConflict, "patient %q already exists", p.ID)
		}
		return fmt.Errorf("create patient %s: %w", p.ID, err)
	}
	for _, ident := range p.Identifiers {
		if _, err := tx.q.Exec(ctx, `INSERT INTO patient_identifiers (system, value, patient_id) VALUES ($1, $2, $3)`, ident.System, ident.Value, p.ID); err != nil {
			if isUnique(err) {
				return treatment.Errorf(treatment.KindConflict, "patient %q repeats an identifier in system %s", p.ID, ident.System)
			}
			return fmt.Errorf("create patient %s: identifier: %w", p.ID, err)
		}
	}
	return nil
}

// CreateProgram implements store.Tx.
func (tx *Tx) CreateProgram(ctx context.Context, p treatment.Program) error {
	if p.Version != 1 {
		return treatment.Errorf(treatment.KindInvalid, "new programme %q must have version 1, not %d", p.ID, p.Version)
	}
	var n int
	if err := tx.q.QueryRow(ctx, `SELECT COUNT(*) FROM patients WHERE id = $1`, p.PatientID).Scan(&n); err != nil {
		return fmt.Errorf("create programme %s: %w", p.ID, err)
	}
	if n == 0 {
		return treatment.NotFound("patient", p.PatientID)
	}
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode programme %s: %w", p.ID, err)
	}
	_, err = tx.q.Exec(ctx, `INSERT INTO programs (id, patient_id, version, created, json) VALUES ($1, $2, $3, $4, $5)`,
		p.ID, p.PatientID, p.Version, p.Created.UnixMicro(), b)
	if err != nil {
		if isUnique(err) {
			return treatment.Errorf(treatment.KindConflict, "programme %q already exists", p.ID)
		}
		return fmt.Errorf("create programme %s: %w", p.ID, err)
	}
	return tx.writeSessions(ctx, p)
}

// UpdateProgram implements store.Tx.
func (tx *Tx) UpdateProgram(ctx context.Context, p treatment.Program) error {
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode programme %s: %w", p.ID, err)
	}
	res, err := tx.q.Exec(ctx, `UPDATE programs SET version = $1, json = $2 WHERE id = $3 AND version = $4`, p.Version, b, p.ID, p.Version-1)
	if err != nil {
		if conflictCode(err) {
			return treatment.Errorf(treatment.KindConflict, "programme %q changed concurrently", p.ID)
		}
		return fmt.Errorf("update programme %s: %w", p.ID, err)
	}
	if res.RowsAffected() == 0 {
		var cur int64
		err := tx.q.QueryRow(ctx, `SELECT version FROM programs WHERE id = $1`, p.ID).Scan(&cur)
		if errors.Is(err, pgx.ErrNoRows) {
			return treatment.NotFound("programme", p.ID)
		}
		if err != nil {
			return fmt.Errorf("update programme %s: %w", p.ID, err)
		}
		return treatment.Errorf(treatment.KindConflict, "programme %q is at version %d, not %d", p.ID, cur, p.Version-1)
	}
	if _, err := tx.q.Exec(ctx, `DELETE FROM sessions WHERE program_id = $1`, p.ID); err != nil {
		return fmt.Errorf("update programme %s: sessions: %w", p.ID, err)
	}
	return tx.writeSessions(ctx, p)
}

// writeSessions records which programme holds each session.
func (tx *Tx) writeSessions(ctx context.Context, p treatment.Program) error {
	for _, s := range p.Sessions {
		if _, err := tx.q.Exec(ctx, `INSERT INTO sessions (id, program_id) VALUES ($1, $2)`, s.ID, p.ID); err != nil {
			if isUnique(err) {
				return treatment.Errorf(treatment.KindConflict, "session %q already belongs to a programme", s.ID)
			}
			return fmt.Errorf("programme %s: session %s: %w", p.ID, s.ID, err)
		}
	}
	return nil
}

// Meta implements store.Tx.
func (tx *Tx) Meta(ctx context.Context, key string) (string, error) {
	var v string
	err := tx.q.QueryRow(ctx, `SELECT value FROM meta WHERE key = $1`, key).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read meta %s: %w", key, err)
	}
	return v, nil
}

// SetMeta implements store.Tx.
func (tx *Tx) SetMeta(ctx context.Context, key, value string) error {
	if _, err := tx.q.Exec(ctx, `INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, key, value); err != nil {
		return fmt.Errorf("write meta %s: %w", key, err)
	}
	return nil
}
