package app

import (
	"context"
	"fmt"
	"time"

	"github.com/kapfhir/kapfhir/store"
	"github.com/kapfhir/kapfhir/treatment"
)

// ProgramInput is what enrolling a patient in a protocol takes.
type ProgramInput struct {
	PatientID  string
	ProtocolID string
	// Start is the first session's clinic-local start, "2026-12-01T09:00" (seconds optional).
	Start string
	// Timezone is an IANA zone; "" = the clinic's.
	Timezone   string
	Doses      int
	Route      string
	Indication string
}

// localLayouts are the accepted forms of a local start date-time.
var localLayouts = []string{"2006-01-02T15:04", "2006-01-02T15:04:05"}

// ParseLocal parses a clinic-local date-time such as "2026-12-01T09:00" in loc.
func ParseLocal(s string, loc *time.Location) (time.Time, bool) {
	for _, l := range localLayouts {
		if t, err := time.ParseInLocation(l, s, loc); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

// location resolves a programme's time zone (the clinic's by default).
func (s *Service) location(tz string) (*time.Location, error) {
	if tz == "" {
		return s.cal.Location, nil
	}
	return time.LoadLocation(tz)
}

// CreateProgram schedules a programme from a protocol and stores it with its
// CarePlan, Appointments and Goals.
func (s *Service) CreateProgram(ctx context.Context, in ProgramInput) (treatment.Program, error) {
	var p treatment.Problems
	if in.PatientID == "" {
		p.Add("patientId", "is required")
	}
	proto, ok := s.cat.Get(in.ProtocolID)
	switch {
	case in.ProtocolID == "":
		p.Add("protocolId", "is required")
	case !ok:
		p.Add("protocolId", "is not in the protocol catalogue (GET /api/v1/protocols lists it)")
	case proto.Kind != treatment.PlanInduction:
		p.Addf("protocolId", "is a %s protocol: add it to a programme with POST /api/v1/programs/{id}/boosters", proto.Kind)
	}
	loc, err := s.location(in.Timezone)
	if err != nil {
		p.Add("timezone", "must be an IANA time zone such as America/New_York")
		loc = s.cal.Location
	}
	start, ok := ParseLocal(in.Start, loc)
	if !ok {
		p.Add("start", `must be a local date-time "YYYY-MM-DDTHH:MM"`)
	}
	if in.Doses < 0 {
		p.Add("doses", "must be positive")
	}
	if len(p) > 0 {
		return treatment.Program{}, p.Err("invalid programme")
	}
	if proto, err = proto.ForIndication(treatment.Indication(in.Indication)); err != nil {
		return treatment.Program{}, err
	}
	cal := s.cal.In(loc)
	planID := s.newID()
	sessions, issues, err := treatment.Schedule(proto, treatment.ScheduleRequest{
		PlanID:     planID,
		Start:      start,
		Doses:      in.Doses,
		Route:      treatment.Route(in.Route),
		Indication: treatment.Indication(in.Indication),
	}, cal, s.newID)
	if err != nil {
		return treatment.Program{}, err
	}
	route := treatment.Route(in.Route)
	if route == "" {
		route = proto.Route
	}
	doses := 0
	for _, ss := range sessions {
		if ss.Kind == treatment.SessionDosing {
			doses++
		}
	}
	now := s.timestamp()
	prog := treatment.Program{
		ID:         s.newID(),
		PatientID:  in.PatientID,
		ProtocolID: proto.ID,
		Indication: treatment.Indication(in.Indication),
		Route:      route,
		Doses:      doses,
		Timezone:   loc.String(),
		Start:      start,
		Status:     treatment.ProgramActive,
		Plans: []treatment.Plan{{
			ID: planID, ProtocolID: proto.ID, Kind: treatment.PlanInduction,
			Status: treatment.PlanActive, Created: now,
		}},
		Sessions: sessions,
		Issues:   issues,
		Version:  1,
		Created:  now,
		Updated:  now,
	}
	err = s.inTx(ctx, func(tx store.Tx) error {
		if _, err := tx.Patient(ctx, in.PatientID); err != nil {
			if treatment.ErrorKind(err) == treatment.KindNotFound {
				return treatment.Invalid("invalid programme", treatment.FieldError{Field: "patientId", Reason: "no patient has this id"})
			}
			return err
		}
		if err := tx.CreateProgram(ctx, prog); err != nil {
			return err
		}
		return s.putProgram(ctx, tx, prog)
	})
	if err != nil {
		return treatment.Program{}, err
	}
	s.log.InfoContext(ctx, "programme created", "program", prog.ID, "patient", prog.PatientID, "protocol", prog.ProtocolID, "sessions", len(prog.Sessions))
	return prog, nil
}

// Program returns a programme, or not_found.
func (s *Service) Program(ctx context.Context, id string) (treatment.Program, error) {
	return s.store.Program(ctx, id)
}

// Programs lists a patient's programmes (not_found when the patient is unknown).
func (s *Service) Programs(ctx context.Context, patientID string) ([]treatment.Program, error) {
	if _, err := s.store.Patient(ctx, patientID); err != nil {
		return nil, err
	}
	return s.store.ProgramsByPatient(ctx, patientID)
}

// update runs change on the programme inside a transaction, then bumps its
// version, reassesses it and stores it with its changed FHIR resources.
func (s *Service) update(ctx context.Context, load func(tx store.Tx) (treatment.Program, error), change func(prog *treatment.Program, cal treatment.Calendar) error) (treatment.Program, error) {
	var out treatment.Program
	err := s.inTx(ctx, func(tx store.Tx) error {
		prog, err := load(tx)
		if err != nil {
			return err
		}
		loc, err := time.LoadLocation(prog.Timezone)
		if err != nil {
			return fmt.Errorf("programme %s time zone: %w", prog.ID, err)
		}
		cal := s.cal.In(loc)
		if err := change(&prog, cal); err != nil {
			return err
		}
		treatment.Assess(&prog, s.cat.Get)
		if prog.Outcome.RelapseSuspected {
			for _, pl := range prog.Plans {
				if p, ok := s.cat.Get(pl.ProtocolID); ok && p.Relapse != nil && pl.Status == treatment.PlanActive {
					treatment.ProposeRelapseBooster(&prog, pl.ID, s.now().In(loc), cal, s.newID)
				}
			}
		}
		prog.Version++
		prog.Updated = s.timestamp()
		if err := tx.UpdateProgram(ctx, prog); err != nil {
			return err
		}
		if err := s.putProgram(ctx, tx, prog); err != nil {
			return err
		}
		out = prog
		return nil
	})
	return out, err
}

// SessionChange is a PATCH of one session.
type SessionChange struct {
	Status string
	Start  string // local "YYYY-MM-DDTHH:MM" in the programme's zone, or RFC 3339; "" = unchanged
	End    string
}

var sessionStatuses = map[string]treatment.SessionStatus{
	"booked": treatment.StatusBooked, "arrived": treatment.StatusArrived, "fulfilled": treatment.StatusFulfilled,
	"cancelled": treatment.StatusCancelled, "noshow": treatment.StatusNoShow,
}

func parseWhen(s string, loc *time.Location) (time.Time, bool) {
	if t, ok := ParseLocal(s, loc); ok {
		return t, true
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t.In(loc), true
	}
	return time.Time{}, false
}

// UpdateSession changes a session's status and/or time and reschedules the
// rest of its programme per the protocol.
func (s *Service) UpdateSession(ctx context.Context, sessionID string, in SessionChange) (treatment.Program, error) {
	var p treatment.Problems
	status, ok := sessionStatuses[in.Status]
	if in.Status != "" && !ok {
		p.Add("status", "must be booked, arrived, fulfilled, cancelled or noshow")
	}
	if in.Status == "" && in.Start == "" && in.End == "" {
		p.Add("status", "give a status, a start/end, or both")
	}
	if len(p) > 0 {
		return treatment.Program{}, p.Err("invalid session change")
	}
	prog, err := s.update(ctx,
		func(tx store.Tx) (treatment.Program, error) { return tx.ProgramBySession(ctx, sessionID) },
		func(prog *treatment.Program, cal treatment.Calendar) error {
			ch := treatment.SessionChange{Status: status}
			var p treatment.Problems
			if in.Start != "" {
				t, ok := parseWhen(in.Start, cal.Location)
				if !ok {
					p.Add("start", `must be "YYYY-MM-DDTHH:MM" (programme-local) or RFC 3339`)
				}
				ch.Start = t
			}
			if in.End != "" {
				t, ok := parseWhen(in.End, cal.Location)
				if !ok {
					p.Add("end", `must be "YYYY-MM-DDTHH:MM" (programme-local) or RFC 3339`)
				}
				ch.End = t
			}
			if len(p) > 0 {
				return p.Err("invalid session change")
			}
			return treatment.ApplySessionChange(prog, sessionID, ch, s.cat.Get, cal, s.newID)
		})
	if err != nil {
		return treatment.Program{}, err
	}
	s.log.InfoContext(ctx, "session changed", "program", prog.ID, "session", sessionID, "status", in.Status)
	return prog, nil
}

// PlanInput adds a booster or maintenance plan to a programme.
type PlanInput struct {
	ProtocolID string
	Count      int
	Start      string // maintenance: first session, programme-local; "" = one interval after the last dose
}

// AddPlan adds a booster or maintenance plan, based on the programme's induction.
func (s *Service) AddPlan(ctx context.Context, programID string, in PlanInput) (treatment.Program, error) {
	var p treatment.Problems
	proto, ok := s.cat.Get(in.ProtocolID)
	switch {
	case in.ProtocolID == "":
		p.Add("protocolId", "is required")
	case !ok:
		p.Add("protocolId", "is not in the protocol catalogue")
	case proto.Kind == treatment.PlanInduction:
		p.Add("protocolId", "is an induction protocol: start a new programme instead")
	}
	if in.Count < 0 {
		p.Add("count", "must be positive")
	}
	if len(p) > 0 {
		return treatment.Program{}, p.Err("invalid plan")
	}
	return s.update(ctx,
		func(tx store.Tx) (treatment.Program, error) { return tx.Program(ctx, programID) },
		func(prog *treatment.Program, cal treatment.Calendar) error {
			if prog.Status == treatment.ProgramRevoked {
				return treatment.Errorf(treatment.KindConflict, "programme %s is revoked", prog.ID)
			}
			induction := prog.Plans[0]
			var last time.Time
			for _, ss := range prog.PlanSessions(induction.ID) {
				if ss.Kind == treatment.SessionDosing && ss.HasSlot() && ss.Status != treatment.StatusCancelled && ss.Status != treatment.StatusNoShow {
					last = ss.Start.In(cal.Location)
				}
			}
			if last.IsZero() {
				return treatment.Errorf(treatment.KindConflict, "programme %s has no dose to base a %s plan on", prog.ID, proto.Kind)
			}
			req := treatment.FollowOnRequest{PlanID: s.newID(), After: last, Count: in.Count}
			if in.Start != "" {
				t, ok := parseWhen(in.Start, cal.Location)
				if !ok {
					return treatment.Invalid("invalid plan", treatment.FieldError{Field: "start", Reason: `must be "YYYY-MM-DDTHH:MM" (programme-local) or RFC 3339`})
				}
				req.Start = t
			}
			sessions, issues, err := treatment.ScheduleFollowOn(proto, req, cal, s.newID)
			if err != nil {
				return err
			}
			prog.Plans = append(prog.Plans, treatment.Plan{
				ID: req.PlanID, ProtocolID: proto.ID, Kind: proto.Kind, Status: treatment.PlanActive,
				BasedOn: induction.ID, Created: s.timestamp(),
			})
			if prog.Status == treatment.ProgramCompleted {
				prog.Status = treatment.ProgramActive
			}
			prog.Sessions = append(prog.Sessions, sessions...)
			prog.Issues = append(prog.Issues, issues...)
			return nil
		})
}

// MeasurementInput records a measurement against a programme.
type MeasurementInput struct {
	ProgramID   string
	Measurement treatment.Measurement
}

// AddMeasurement validates and records a measurement; the programme's
// response / remission status and its Goals follow from it.
func (s *Service) AddMeasurement(ctx context.Context, in MeasurementInput) (treatment.Program, treatment.Measurement, error) {
	m := in.Measurement
	if in.ProgramID == "" {
		return treatment.Program{}, m, treatment.Invalid("invalid measurement", treatment.FieldError{Field: "programId", Reason: "is required"})
	}
	if err := treatment.NormalizeMeasurement(&m, s.now()); err != nil {
		return treatment.Program{}, m, err
	}
	m.ID = s.newID()
	m.Recorded = s.timestamp()
	prog, err := s.update(ctx,
		func(tx store.Tx) (treatment.Program, error) {
			prog, err := tx.Program(ctx, in.ProgramID)
			if treatment.ErrorKind(err) == treatment.KindNotFound {
				return prog, treatment.Invalid("invalid measurement", treatment.FieldError{Field: "programId", Reason: "no programme has this id"})
			}
			return prog, err
		},
		func(prog *treatment.Program, _ treatment.Calendar) error {
			if m.SessionID != "" {
				if _, ok := prog.Session(m.SessionID); !ok {
					return treatment.Invalid("invalid measurement", treatment.FieldError{Field: "sessionId", Reason: "is not a session of this programme"})
				}
			}
			prog.Measurements = append(prog.Measurements, m)
			return nil
		})
	if err != nil {
		return treatment.Program{}, m, err
	}
	s.log.InfoContext(ctx, "measurement recorded", "program", prog.ID, "measurement", m.ID, "instrument", string(m.Instrument))
	return prog, m, nil
}
