package mapping

import (
	"fmt"
	"html"
	"strconv"
	"strings"
	"time"

	c4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/codes_go_proto"
	d4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/datatypes_go_proto"
	cppb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/care_plan_go_proto"
	vs4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/valuesets_go_proto"

	"github.com/kapfhir/kapfhir/treatment"
)

var requestStatus = map[treatment.PlanStatus]c4pb.RequestStatusCode_Value{
	treatment.PlanActive:    c4pb.RequestStatusCode_ACTIVE,
	treatment.PlanCompleted: c4pb.RequestStatusCode_COMPLETED,
	treatment.PlanRevoked:   c4pb.RequestStatusCode_REVOKED,
}

// carePlan maps one plan to a US Core CarePlan: a generated narrative with
// the sessions, one activity per session referencing its Appointment, one
// activity per measurement rule with its planned times, the programme's
// Goals, and the protocol's PlanDefinition as instantiatesCanonical.
func (m programMapper) carePlan(pl treatment.Plan, p treatment.Protocol) Resource {
	st, ok := requestStatus[pl.Status]
	if !ok {
		st = c4pb.RequestStatusCode_UNKNOWN
	}
	sessions := m.prog.PlanSessions(pl.ID)
	respID, remID := GoalIDs(m.prog.ID)
	canon := m.o.PlanDefinitionURL(p.ID)
	if p.Version != "" {
		canon += "|" + p.Version
	}
	cp := &cppb.CarePlan{
		Id:                    fhirID(pl.ID),
		Meta:                  meta(profCarePlan),
		Text:                  narrative(pl, p, sessions),
		Identifier:            []*d4pb.Identifier{m.o.identifier(pl.ID)},
		InstantiatesCanonical: []*d4pb.Canonical{canonical(canon)},
		Status:                &cppb.CarePlan_StatusCode{Value: st},
		Intent:                &cppb.CarePlan_IntentCode{Value: vs4pb.CarePlanIntentValueSet_PLAN},
		Category: []*d4pb.CodeableConcept{
			concept("", coding(sysCarePlanCategory, assessPlan, assessPlanDisplay)),
			concept(planKindLabel(pl.Kind)+" plan", coding(m.o.codeSystem(csPlanKind), string(pl.Kind), planKindLabel(pl.Kind))),
		},
		Subject: patientRef(m.prog.PatientID),
		Goal:    []*d4pb.Reference{goalRef(respID), goalRef(remID)},
	}
	if p.Title != "" {
		cp.Title = str(p.Title)
	}
	if pl.BasedOn != "" {
		cp.BasedOn = []*d4pb.Reference{carePlanRef(pl.BasedOn)}
	}
	if lo, hi, ok := sessionSpan(sessions); ok {
		cp.Period = period(lo, hi)
	}
	if !pl.Created.IsZero() {
		cp.Created = dateTime(pl.Created)
	}
	for _, s := range sessions {
		cp.Activity = append(cp.Activity, &cppb.CarePlan_Activity{Reference: appointmentRef(s.ID)})
	}
	cp.Activity = append(cp.Activity, m.measurementActivities(pl, p, sessions)...)
	return Resource{Type: TypeCarePlan, ID: pl.ID, Msg: cp}
}

// measurementActivities returns one activity per distinct (instrument, moment)
// of the protocol's measurement rules, scheduled at the planned times.
func (m programMapper) measurementActivities(pl treatment.Plan, p treatment.Protocol, sessions []treatment.Session) []*cppb.CarePlan_Activity {
	planned := treatment.PlanMeasurements(p, sessions)
	status := make(map[string]treatment.SessionStatus, len(sessions))
	for _, s := range sessions {
		status[s.ID] = s.Status
	}
	type key struct {
		inst treatment.Instrument
		at   string
	}
	seen := map[key]bool{}
	var out []*cppb.CarePlan_Activity
	for _, r := range p.Measurements {
		k := key{r.Instrument, r.At}
		if seen[k] {
			continue
		}
		seen[k] = true
		var times []time.Time
		var items []treatment.PlannedMeasurement
		for _, pm := range planned {
			if pm.Instrument == r.Instrument && pm.At == r.At {
				times = append(times, pm.Time)
				items = append(items, pm)
			}
		}
		d := &cppb.CarePlan_Activity_Detail{
			Code:        m.o.instrumentCode(r.Instrument),
			Status:      &cppb.CarePlan_Activity_Detail_StatusCode{Value: activityStatus(pl.Status, items, status)},
			Description: str(instrumentName(r.Instrument) + ": " + lowerFirst(measurementWhen(r))),
		}
		if len(times) > 0 {
			t := &d4pb.Timing{}
			for _, tm := range times {
				t.Event = append(t.Event, dateTime(tm))
			}
			d.Scheduled = &cppb.CarePlan_Activity_Detail_ScheduledX{Choice: &cppb.CarePlan_Activity_Detail_ScheduledX_Timing{Timing: t}}
		}
		out = append(out, &cppb.CarePlan_Activity{Detail: d})
	}
	return out
}

// activityStatus derives a measurement activity's status from the sessions
// it is planned at: completed when all are fulfilled (or the plan is
// completed), stopped when the plan was revoked, in progress once one is
// fulfilled, scheduled once one is booked, otherwise not started.
func activityStatus(plan treatment.PlanStatus, items []treatment.PlannedMeasurement, status map[string]treatment.SessionStatus) c4pb.CarePlanActivityStatusCode_Value {
	done, booked := 0, 0
	for _, it := range items {
		switch status[it.SessionID] {
		case treatment.StatusFulfilled:
			done++
		case treatment.StatusBooked, treatment.StatusArrived:
			booked++
		}
	}
	switch {
	case len(items) > 0 && done == len(items), plan == treatment.PlanCompleted:
		return c4pb.CarePlanActivityStatusCode_COMPLETED
	case plan == treatment.PlanRevoked:
		return c4pb.CarePlanActivityStatusCode_STOPPED
	case done > 0:
		return c4pb.CarePlanActivityStatusCode_IN_PROGRESS
	case booked > 0:
		return c4pb.CarePlanActivityStatusCode_SCHEDULED
	}
	return c4pb.CarePlanActivityStatusCode_NOT_STARTED
}

func lowerFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToLower(s[:1]) + s[1:]
}

// narrative is the CarePlan's generated XHTML: the protocol, the plan status
// and a table of its sessions (number, kind, status, when in UTC). It holds
// no patient data; every value is escaped.
func narrative(pl treatment.Plan, p treatment.Protocol, sessions []treatment.Session) *d4pb.Narrative {
	var b strings.Builder
	e := html.EscapeString
	b.WriteString(`<div xmlns="http://www.w3.org/1999/xhtml">`)
	title := p.Title
	if title == "" {
		title = p.ID
	}
	fmt.Fprintf(&b, "<p><b>%s</b> (%s plan, protocol %s", e(title), e(strings.ToLower(planKindLabel(pl.Kind))), e(p.ID))
	if p.Version != "" {
		fmt.Fprintf(&b, " version %s", e(p.Version))
	}
	fmt.Fprintf(&b, ")</p><p>Status: %s</p>", e(string(pl.Status)))
	if len(sessions) == 0 {
		b.WriteString("<p>No sessions planned yet.</p>")
	} else {
		b.WriteString("<table><thead><tr><th>#</th><th>Kind</th><th>Status</th><th>When (UTC)</th></tr></thead><tbody>")
		for i, s := range sessions {
			fmt.Fprintf(&b, "<tr><td>%d</td><td>%s</td><td>%s</td><td>%s</td></tr>",
				i+1, e(sessionKindText(s)), e(string(s.Status)), e(sessionWhen(s)))
		}
		b.WriteString("</tbody></table>")
	}
	b.WriteString("</div>")
	return &d4pb.Narrative{
		Status: &d4pb.Narrative_StatusCode{Value: c4pb.NarrativeStatusCode_GENERATED},
		Div:    &d4pb.Xhtml{Value: b.String()},
	}
}

func sessionKindText(s treatment.Session) string {
	label := sessionKindLabel(s.Kind)
	if s.Dose <= 0 {
		return label
	}
	switch s.Kind {
	case treatment.SessionIntegration:
		return label + " after dose " + strconv.Itoa(s.Dose)
	default:
		return label + " " + strconv.Itoa(s.Dose)
	}
}

const narrativeTime = "2006-01-02 15:04"

func sessionWhen(s treatment.Session) string {
	switch {
	case s.HasSlot():
		return s.Start.UTC().Format(narrativeTime) + " to " + s.End.UTC().Format(narrativeTime)
	case s.Window != nil:
		return "window " + s.Window.Start.UTC().Format(narrativeTime) + " to " + s.Window.End.UTC().Format(narrativeTime)
	}
	return "not scheduled"
}
