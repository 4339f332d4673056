package mapping

import (
	"fmt"
	"time"

	c4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/codes_go_proto"
	d4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/datatypes_go_proto"
	apb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/appointment_go_proto"
	gpb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/goal_go_proto"

	"github.com/kapfhir/kapfhir/treatment"
)

// Program maps a programme to all its resources except the Patient: two
// Goals (ids prog.ID+"-response" and prog.ID+"-remission"), one Appointment
// per session (id = session ID), one CarePlan per plan (id = plan ID) and one
// Observation per measurement (id = measurement ID), in that order. lookup
// finds each plan's protocol; a plan whose protocol is unknown is an error.
func Program(prog treatment.Program, lookup func(id string) (treatment.Protocol, bool), o Options) ([]Resource, error) {
	loc, err := programLocation(prog)
	if err != nil {
		return nil, fmt.Errorf("mapping: programme %s: time zone: %w", prog.ID, err)
	}
	protocols := make([]treatment.Protocol, len(prog.Plans))
	for i, pl := range prog.Plans {
		var p treatment.Protocol
		ok := false
		if lookup != nil {
			p, ok = lookup(pl.ProtocolID)
		}
		if !ok {
			return nil, fmt.Errorf("mapping: programme %s plan %s: %w", prog.ID, pl.ID,
				treatment.Errorf(treatment.KindInternal, "protocol %q is not in the catalogue", pl.ProtocolID))
		}
		protocols[i] = p
	}
	m := programMapper{o: o, prog: &prog, loc: loc, induction: inductionPlan(prog)}

	out := make([]Resource, 0, 2+len(prog.Sessions)+len(prog.Plans)+len(prog.Measurements))
	out = append(out, m.goals()...)
	for _, s := range prog.Sessions {
		out = append(out, m.appointment(s))
	}
	for i, pl := range prog.Plans {
		out = append(out, m.carePlan(pl, protocols[i]))
	}
	for _, ms := range prog.Measurements {
		out = append(out, m.observation(ms))
	}
	return out, nil
}

// programLocation returns the programme's time zone, preferring the location
// its start time already carries so that no zone file is read.
func programLocation(prog treatment.Program) (*time.Location, error) {
	if prog.Timezone == "" {
		return time.UTC, nil
	}
	if l := prog.Start.Location(); l.String() == prog.Timezone {
		return l, nil
	}
	return time.LoadLocation(prog.Timezone)
}

// GoalIDs returns the ids of a programme's response and remission Goals.
func GoalIDs(programID string) (response, remission string) {
	return programID + "-response", programID + "-remission"
}

type programMapper struct {
	o         Options
	prog      *treatment.Program
	loc       *time.Location
	induction string // the induction plan's id ("" when the programme has no plans)
}

// inductionPlan returns the id of the programme's induction plan (or its first plan).
func inductionPlan(prog treatment.Program) string {
	for _, pl := range prog.Plans {
		if pl.Kind == treatment.PlanInduction {
			return pl.ID
		}
	}
	if len(prog.Plans) > 0 {
		return prog.Plans[0].ID
	}
	return ""
}

// sessionSpan returns the earliest start and latest end of the sessions that
// still count (all but cancelled ones), using the window of window-only proposals.
func sessionSpan(sessions []treatment.Session) (lo, hi time.Time, ok bool) {
	for _, s := range sessions {
		if s.Status == treatment.StatusCancelled {
			continue
		}
		start, end, has := sessionTimes(s)
		if !has {
			continue
		}
		if !ok || start.Before(lo) {
			lo = start
		}
		if !ok || end.After(hi) {
			hi = end
		}
		ok = true
	}
	return lo, hi, ok
}

// sessionTimes returns a session's slot, or its window when it has none.
func sessionTimes(s treatment.Session) (start, end time.Time, ok bool) {
	switch {
	case s.HasSlot():
		return s.Start, s.End, true
	case s.Window != nil:
		return s.Window.Start, s.Window.End, true
	}
	return time.Time{}, time.Time{}, false
}

// ---- Goals ---------------------------------------------------------------

func (m programMapper) goals() []Resource {
	prog := m.prog
	respID, remID := GoalIDs(prog.ID)
	out := prog.Outcome

	response := m.goal(respID, "PHQ-9 response: total score reduced by at least 50% from baseline", out.Response)
	if b := out.Baseline; b != nil && *b > 0 {
		response.Target[0].Detail = &gpb.Goal_Target_DetailX{Choice: &gpb.Goal_Target_DetailX_Range{
			Range: &d4pb.Range{High: simpleQuantity(float64(*b/2), "score", scoreUnit)},
		}}
	}
	remission := m.goal(remID, "PHQ-9 remission: total score below 5", out.Remission)
	remission.Target[0].Detail = &gpb.Goal_Target_DetailX{Choice: &gpb.Goal_Target_DetailX_Range{
		Range: &d4pb.Range{High: simpleQuantity(4, "score", scoreUnit)},
	}}
	return []Resource{
		{Type: TypeGoal, ID: respID, Msg: response},
		{Type: TypeGoal, ID: remID, Msg: remission},
	}
}

func (m programMapper) goal(id, description string, achieved bool) *gpb.Goal {
	prog := m.prog
	g := &gpb.Goal{
		Id:              fhirID(id),
		Meta:            meta(profGoal),
		Identifier:      []*d4pb.Identifier{m.o.identifier(id)},
		LifecycleStatus: &gpb.Goal_LifecycleStatusCode{Value: c4pb.GoalLifecycleStatusCode_ACTIVE},
		Description:     concept(description),
		Subject:         patientRef(prog.PatientID),
		Target:          []*gpb.Goal_Target{{Measure: concept("PHQ-9 total score", coding(sysLOINC, loincPHQ9Total, phq9TotalDisplay))}},
	}
	switch prog.Status {
	case treatment.ProgramRevoked:
		g.LifecycleStatus.Value = c4pb.GoalLifecycleStatusCode_CANCELLED
	case treatment.ProgramCompleted:
		g.LifecycleStatus.Value = c4pb.GoalLifecycleStatusCode_COMPLETED
	}
	c, d := m.achievement(achieved)
	g.AchievementStatus = concept(d, coding(sysGoalAchievement, c, d))
	if !prog.Start.IsZero() {
		g.Start = &gpb.Goal_StartX{Choice: &gpb.Goal_StartX_Date{Date: date(prog.Start, m.loc)}}
	}
	if _, end, ok := sessionSpan(prog.PlanSessions(m.induction)); ok {
		g.Target[0].Due = &gpb.Goal_Target_DueX{Choice: &gpb.Goal_Target_DueX_Date{Date: date(end, m.loc)}}
	}
	if id := latestPHQ9(prog.Measurements); id != "" {
		g.OutcomeReference = []*d4pb.Reference{observationRef(id)}
	}
	return g
}

// achievement is the goal-achievement code and display of a programme goal:
// achieved when the outcome says so; not-achieved once the programme is over;
// otherwise the direction of the latest PHQ-9 relative to the baseline.
func (m programMapper) achievement(achieved bool) (string, string) {
	out := m.prog.Outcome
	switch {
	case achieved:
		return "achieved", "Achieved"
	case m.prog.Status == treatment.ProgramCompleted || m.prog.Status == treatment.ProgramRevoked:
		return "not-achieved", "Not Achieved"
	case out.Baseline == nil || out.Latest == nil || countPHQ9(m.prog.Measurements) < 2:
		return "in-progress", "In Progress"
	case *out.Latest < *out.Baseline:
		return "improving", "Improving"
	case *out.Latest > *out.Baseline:
		return "worsening", "Worsening"
	}
	return "no-change", "No Change"
}

func countPHQ9(ms []treatment.Measurement) int {
	n := 0
	for _, m := range ms {
		if m.Instrument == treatment.InstrumentPHQ9 && m.Total != nil {
			n++
		}
	}
	return n
}

// latestPHQ9 returns the id of the most recent PHQ-9 with a total (ties: the
// later recorded, then the greater id, as treatment.Assess orders them).
func latestPHQ9(ms []treatment.Measurement) string {
	var best *treatment.Measurement
	for i := range ms {
		m := &ms[i]
		if m.Instrument != treatment.InstrumentPHQ9 || m.Total == nil {
			continue
		}
		if best == nil || later(m, best) {
			best = m
		}
	}
	if best == nil {
		return ""
	}
	return best.ID
}

func later(a, b *treatment.Measurement) bool {
	if c := a.Effective.Compare(b.Effective); c != 0 {
		return c > 0
	}
	if c := a.Recorded.Compare(b.Recorded); c != 0 {
		return c > 0
	}
	return a.ID > b.ID
}

// ---- Appointments --------------------------------------------------------

var appointmentStatus = map[treatment.SessionStatus]c4pb.AppointmentStatusCode_Value{
	treatment.StatusProposed:  c4pb.AppointmentStatusCode_PROPOSED,
	treatment.StatusBooked:    c4pb.AppointmentStatusCode_BOOKED,
	treatment.StatusArrived:   c4pb.AppointmentStatusCode_ARRIVED,
	treatment.StatusFulfilled: c4pb.AppointmentStatusCode_FULFILLED,
	treatment.StatusCancelled: c4pb.AppointmentStatusCode_CANCELLED,
	treatment.StatusNoShow:    c4pb.AppointmentStatusCode_NOSHOW,
}

// appointment maps a session. A proposal has no start and end, only a
// requested period (its suggested slot, or its window), as invariant app-3
// requires; every other status carries start, end and minutesDuration (a
// cancelled window-only proposal keeps its window as the requested period).
func (m programMapper) appointment(s treatment.Session) Resource {
	st, ok := appointmentStatus[s.Status]
	if !ok {
		st = c4pb.AppointmentStatusCode_PROPOSED
	}
	kind := concept(sessionKindLabel(s.Kind), m.o.sessionKindCoding(s.Kind))
	reason, reasonDisplay := appointmentReason(s.Kind)
	// The patient has accepted a session once it was booked; a proposal (or a
	// proposal cancelled before it was ever booked) still needs their action.
	partStatus := c4pb.ParticipationStatusCode_ACCEPTED
	if st == c4pb.AppointmentStatusCode_PROPOSED || !s.HasSlot() {
		partStatus = c4pb.ParticipationStatusCode_NEEDS_ACTION
	}
	a := &apb.Appointment{
		Id:              fhirID(s.ID),
		Identifier:      []*d4pb.Identifier{m.o.identifier(s.ID)},
		Status:          &apb.Appointment_StatusCode{Value: st},
		ServiceType:     []*d4pb.CodeableConcept{kind},
		AppointmentType: concept(sessionKindLabel(s.Kind), coding(sysAppointmentReason, reason, reasonDisplay)),
		Description:     str(m.sessionDescription(s)),
		Participant: []*apb.Appointment_Participant{{
			Actor:    patientRef(m.prog.PatientID),
			Required: &apb.Appointment_Participant_RequiredCode{Value: c4pb.ParticipantRequiredCode_REQUIRED},
			Status:   &apb.Appointment_Participant_StatusCode{Value: partStatus},
		}},
	}
	if s.PlanID != "" {
		a.SupportingInformation = []*d4pb.Reference{carePlanRef(s.PlanID)}
	}
	switch {
	case st != c4pb.AppointmentStatusCode_PROPOSED && s.HasSlot():
		a.Start, a.End = instant(s.Start), instant(s.End)
		if mins := int(s.End.Sub(s.Start) / time.Minute); mins > 0 {
			a.MinutesDuration = posInt(mins)
		}
	case s.HasSlot():
		a.RequestedPeriod = []*d4pb.Period{period(s.Start, s.End)}
	case s.Window != nil:
		a.RequestedPeriod = []*d4pb.Period{period(s.Window.Start, s.Window.End)}
	}
	return Resource{Type: TypeAppointment, ID: s.ID, Msg: a}
}

// sessionDescription is a short description without PHI, e.g.
// "Ketamine dosing session 3 of 6 (IV)".
func (m programMapper) sessionDescription(s treatment.Session) string {
	route := routeLabel(m.prog.Route)
	series := func(what string) string {
		if s.Dose <= 0 {
			return fmt.Sprintf("Ketamine %s session (%s)", what, route)
		}
		total := m.doseTotal(s)
		if total < s.Dose {
			return fmt.Sprintf("Ketamine %s session %d (%s)", what, s.Dose, route)
		}
		return fmt.Sprintf("Ketamine %s session %d of %d (%s)", what, s.Dose, total, route)
	}
	var d string
	switch s.Kind {
	case treatment.SessionDosing:
		d = series("dosing")
	case treatment.SessionBooster:
		d = series("booster")
	case treatment.SessionMaintenance:
		d = series("maintenance")
	case treatment.SessionIntegration:
		d = "Integration psychotherapy session"
		if s.Dose > 0 {
			d += fmt.Sprintf(" after dose %d", s.Dose)
		}
	case treatment.SessionPreparation:
		d = "Preparation session before the first ketamine dose"
	case treatment.SessionReassessment:
		d = "Reassessment session after the ketamine dosing series"
	default:
		d = sessionKindLabel(s.Kind) + " session"
	}
	if s.Replaces != "" {
		d += "; replaces a cancelled or missed session"
	}
	return d
}

// doseTotal is the number of doses of the session's series: the programme's
// dose count for the induction, else the highest dose number of the plan's
// sessions of the same kind.
func (m programMapper) doseTotal(s treatment.Session) int {
	if s.Kind == treatment.SessionDosing && m.prog.Doses > 0 {
		return m.prog.Doses
	}
	n := 0
	for _, o := range m.prog.Sessions {
		if o.PlanID == s.PlanID && o.Kind == s.Kind {
			n = max(n, o.Dose)
		}
	}
	return n
}
