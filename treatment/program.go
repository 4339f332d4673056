package treatment

import "time"

// Identifier is a business identifier (e.g. an MRN) with its namespace.
type Identifier struct {
	System string `json:"system"`
	Value  string `json:"value"`
}

// Patient is a person enrolled in programmes. Names and birth dates are PHI:
// they never appear in logs or errors.
type Patient struct {
	ID          string       `json:"id"`
	Identifiers []Identifier `json:"identifier"`
	Family      string       `json:"family"`
	Given       []string     `json:"given"`
	BirthDate   string       `json:"birthDate"` // YYYY-MM-DD
	Gender      string       `json:"gender"`    // male | female | other | unknown
	Created     time.Time    `json:"created"`
	Updated     time.Time    `json:"updated"`
}

// SessionKind is what happens in a session.
type SessionKind string

// Session kinds.
const (
	SessionPreparation  SessionKind = "preparation"
	SessionDosing       SessionKind = "dosing"
	SessionIntegration  SessionKind = "integration"
	SessionReassessment SessionKind = "reassessment"
	SessionBooster      SessionKind = "booster"
	SessionMaintenance  SessionKind = "maintenance"
)

// SessionStatus is where a session is in its life.
type SessionStatus string

// Session statuses. Proposed sessions are planned but not booked: they carry
// either a suggested slot (Start/End) or only a window (booster windows).
const (
	StatusProposed  SessionStatus = "proposed"
	StatusBooked    SessionStatus = "booked"
	StatusArrived   SessionStatus = "arrived"
	StatusFulfilled SessionStatus = "fulfilled"
	StatusCancelled SessionStatus = "cancelled"
	StatusNoShow    SessionStatus = "noshow"
)

// Period is a half-open time range [Start, End).
type Period struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
}

// Session is one visit of a programme.
type Session struct {
	ID     string        `json:"id"`
	PlanID string        `json:"planId"`
	Kind   SessionKind   `json:"kind"`
	Status SessionStatus `json:"status"`
	// Dose is the 1-based dose number for dosing, booster and maintenance
	// sessions, and the dose an integration visit follows; 0 otherwise.
	Dose int `json:"dose,omitempty"`
	// Start and End are the slot in clinic-local time; zero for window-only proposals.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// Window is the requested period of a proposal without a slot (booster windows).
	Window *Period `json:"window,omitempty"`
	// Replaces names the cancelled or missed session this one replaces.
	Replaces string `json:"replaces,omitempty"`
}

// HasSlot reports whether the session has a concrete start and end.
func (s Session) HasSlot() bool { return !s.Start.IsZero() }

// Final reports whether the session can no longer change status.
func (s Session) Final() bool {
	switch s.Status {
	case StatusFulfilled, StatusCancelled, StatusNoShow:
		return true
	}
	return false
}

// PlanStatus is the state of an induction, booster or maintenance plan.
type PlanStatus string

// Plan statuses (they map one to one onto FHIR RequestStatus).
const (
	PlanActive    PlanStatus = "active"
	PlanCompleted PlanStatus = "completed"
	PlanRevoked   PlanStatus = "revoked"
)

// Plan is the induction, or one booster/maintenance plan added later. Each
// plan becomes one FHIR CarePlan with the plan's ID.
type Plan struct {
	ID         string     `json:"id"`
	ProtocolID string     `json:"protocolId"`
	Kind       PlanKind   `json:"kind"`
	Status     PlanStatus `json:"status"`
	// BasedOn is the induction plan's ID for booster and maintenance plans.
	BasedOn string    `json:"basedOn,omitempty"`
	Created time.Time `json:"created"`
}

// Instrument is what a measurement measures.
type Instrument string

// Instruments.
const (
	InstrumentPHQ9  Instrument = "phq9"
	InstrumentGAD7  Instrument = "gad7"
	InstrumentBP    Instrument = "bp"
	InstrumentHR    Instrument = "hr"
	InstrumentSpO2  Instrument = "spo2"
	InstrumentSleep Instrument = "sleep"
)

// Measurement is one recorded result.
type Measurement struct {
	ID         string     `json:"id"`
	SessionID  string     `json:"sessionId,omitempty"`
	Instrument Instrument `json:"instrument"`
	Items      []int      `json:"items,omitempty"` // PHQ-9 / GAD-7 answers
	Total      *int       `json:"total,omitempty"` // PHQ-9 / GAD-7 total
	Systolic   *int       `json:"systolic,omitempty"`
	Diastolic  *int       `json:"diastolic,omitempty"`
	Value      *float64   `json:"value,omitempty"` // hr (/min), spo2 (%), sleep (h)
	Effective  time.Time  `json:"effective"`
	Recorded   time.Time  `json:"recorded"`
}

// ProgramStatus is the state of a whole programme.
type ProgramStatus string

// Programme statuses.
const (
	ProgramActive    ProgramStatus = "active"
	ProgramCompleted ProgramStatus = "completed"
	ProgramRevoked   ProgramStatus = "revoked"
)

// Outcome is the programme's PHQ-9 response and remission state, derived from
// its measurements (see Assess).
type Outcome struct {
	Baseline      *int `json:"baseline,omitempty"`      // first PHQ-9 total
	Latest        *int `json:"latest,omitempty"`        // most recent PHQ-9 total
	PostInduction *int `json:"postInduction,omitempty"` // PHQ-9 at/after the last induction dose
	Response      bool `json:"response"`                // latest <= 50% of baseline
	Remission     bool `json:"remission"`               // latest < 5
	// RelapseSuspected is set when booster-on-relapse's rule fires.
	RelapseSuspected bool `json:"relapseSuspected"`
}

// ScheduleIssue is a protocol rule the schedule can no longer meet; the
// programme reports it rather than silently violating the protocol.
type ScheduleIssue struct {
	Code    string `json:"code"` // e.g. "window-exceeded", "spacing-violated"
	Message string `json:"message"`
	Session string `json:"sessionId,omitempty"`
}

// Program is a patient's enrolment in a protocol: the aggregate root that
// holds its plans, sessions and measurements. Version increments on every
// change and guards concurrent updates.
type Program struct {
	ID           string          `json:"id"`
	PatientID    string          `json:"patientId"`
	ProtocolID   string          `json:"protocolId"`
	Indication   Indication      `json:"indication,omitempty"`
	Route        Route           `json:"route"`
	Doses        int             `json:"doses"`
	Timezone     string          `json:"timezone"`
	Start        time.Time       `json:"start"`
	Status       ProgramStatus   `json:"status"`
	Plans        []Plan          `json:"plans"`
	Sessions     []Session       `json:"sessions"`
	Measurements []Measurement   `json:"measurements"`
	Outcome      Outcome         `json:"outcome"`
	Issues       []ScheduleIssue `json:"issues"`
	Version      int64           `json:"version"`
	Created      time.Time       `json:"created"`
	Updated      time.Time       `json:"updated"`
}

// Plan returns the plan with the given ID.
func (p *Program) Plan(id string) (*Plan, bool) {
	for i := range p.Plans {
		if p.Plans[i].ID == id {
			return &p.Plans[i], true
		}
	}
	return nil, false
}

// Session returns the session with the given ID.
func (p *Program) Session(id string) (*Session, bool) {
	for i := range p.Sessions {
		if p.Sessions[i].ID == id {
			return &p.Sessions[i], true
		}
	}
	return nil, false
}

// PlanSessions returns the sessions of one plan, in programme order.
func (p *Program) PlanSessions(planID string) []Session {
	var out []Session
	for _, s := range p.Sessions {
		if s.PlanID == planID {
			out = append(out, s)
		}
	}
	return out
}
