package mapping

import (
	"strings"
	"time"

	"github.com/google/fhir/go/jsonformat"
	d4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/datatypes_go_proto"
	apb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/appointment_go_proto"
	cppb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/care_plan_go_proto"
	gpb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/goal_go_proto"
	opb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/observation_go_proto"
	ppb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/patient_go_proto"
	pdpb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/plan_definition_go_proto"
	provpb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/provenance_go_proto"
	"google.golang.org/protobuf/proto"

	"github.com/kapfhir/kapfhir/resource"
)

// Index extracts the search index of a mapped resource for the parameters of
// resource.Params: tokens (identifier, status, code, category, ...), references
// as "Type/id", and dates as half-open ranges. SortDate is the lower bound of
// the "date" parameter (zero when there is none).
//
//   - CarePlan date = its period; Appointment date = [start, end), or each
//     requested period of a proposal; Observation date = the effective instant
//     as a point [t, t+1µs).
//   - instantiates-canonical indexes the PlanDefinition the canonical URL names
//     ("PlanDefinition/<id>", version dropped).
//   - Provenance target = its relative targets (version dropped; the EHR's
//     copy, an absolute URL, is not indexed); patient = the targets that are
//     Patients (R4: target.where(resolve() is Patient)); recorded = a point.
func Index(r Resource) resource.Index {
	var ix indexer
	switch m := r.Msg.(type) {
	case *ppb.Patient:
		ix.identifiers(m.GetIdentifier())
	case *cppb.CarePlan:
		ix.identifiers(m.GetIdentifier())
		ix.token("status", sysRequestStatus, lowerEnum(m.GetStatus().GetValue().String()))
		ix.concepts("category", m.GetCategory()...)
		ix.subject(m.GetSubject())
		if p := m.GetPeriod(); p != nil {
			ix.period("date", p)
		}
		ix.refs("based-on", m.GetBasedOn()...)
		for _, c := range m.GetInstantiatesCanonical() {
			if t := canonicalTarget(c.GetValue(), TypePlanDefinition); t != "" {
				ix.Refs = append(ix.Refs, resource.Ref{Param: "instantiates-canonical", Target: t})
			}
		}
		for _, a := range m.GetActivity() {
			ix.refs("activity-reference", a.GetReference())
		}
		ix.refs("goal", m.GetGoal()...)
	case *apb.Appointment:
		ix.identifiers(m.GetIdentifier())
		ix.token("status", sysAppointmentStatus, lowerEnum(m.GetStatus().GetValue().String()))
		ix.concepts("service-type", m.GetServiceType()...)
		ix.concepts("appointment-type", m.GetAppointmentType())
		for _, p := range m.GetParticipant() {
			t := refTarget(p.GetActor())
			if t == "" {
				continue
			}
			if strings.HasPrefix(t, TypePatient+"/") {
				ix.Refs = append(ix.Refs, resource.Ref{Param: "patient", Target: t})
			}
			ix.Refs = append(ix.Refs, resource.Ref{Param: "actor", Target: t})
		}
		ix.refs("supporting-info", m.GetSupportingInformation()...)
		switch {
		case m.GetStart() != nil:
			lo := instantTime(m.GetStart())
			hi := lo.Add(time.Microsecond)
			if m.GetEnd() != nil {
				hi = instantTime(m.GetEnd())
			}
			ix.date("date", lo, hi)
		default:
			for _, p := range m.GetRequestedPeriod() {
				ix.period("date", p)
			}
		}
	case *opb.Observation:
		ix.identifiers(m.GetIdentifier())
		ix.token("status", sysObservationStatus, lowerEnum(m.GetStatus().GetValue().String()))
		ix.concepts("code", m.GetCode())
		ix.concepts("category", m.GetCategory()...)
		ix.subject(m.GetSubject())
		ix.refs("based-on", m.GetBasedOn()...)
		switch e := m.GetEffective().GetChoice().(type) {
		case *opb.Observation_EffectiveX_DateTime:
			lo := dateTimeTime(e.DateTime)
			ix.date("date", lo, lo.Add(time.Microsecond))
		case *opb.Observation_EffectiveX_Instant:
			lo := instantTime(e.Instant)
			ix.date("date", lo, lo.Add(time.Microsecond))
		case *opb.Observation_EffectiveX_Period:
			ix.period("date", e.Period)
		}
	case *gpb.Goal:
		ix.identifiers(m.GetIdentifier())
		ix.token("lifecycle-status", sysGoalStatus, lowerEnum(m.GetLifecycleStatus().GetValue().String()))
		ix.concepts("achievement-status", m.GetAchievementStatus())
		ix.concepts("category", m.GetCategory()...)
		ix.subject(m.GetSubject())
	case *pdpb.PlanDefinition:
		ix.identifiers(m.GetIdentifier())
		if u := m.GetUrl().GetValue(); u != "" {
			ix.token("url", "", u)
		}
		ix.token("status", sysPublication, lowerEnum(m.GetStatus().GetValue().String()))
		if v := m.GetVersion().GetValue(); v != "" {
			ix.token("version", "", v)
		}
	case *provpb.Provenance:
		for _, r := range m.GetTarget() {
			t := refTarget(r) // relative targets only, version dropped
			if t == "" {
				continue
			}
			ix.Refs = append(ix.Refs, resource.Ref{Param: "target", Target: t})
			if strings.HasPrefix(t, TypePatient+"/") {
				ix.Refs = append(ix.Refs, resource.Ref{Param: "patient", Target: t})
			}
		}
		if rec := m.GetRecorded(); rec != nil {
			lo := instantTime(rec)
			ix.date("recorded", lo, lo.Add(time.Microsecond))
		}
	}
	for _, d := range ix.Dates {
		if d.Param == "date" && (ix.SortDate.IsZero() || d.Lo.Before(ix.SortDate)) {
			ix.SortDate = d.Lo
		}
	}
	return ix.Index
}

type indexer struct{ resource.Index }

func (ix *indexer) token(param, system, code string) {
	if code == "" || code == "invalid-uninitialized" {
		return
	}
	ix.Tokens = append(ix.Tokens, resource.Token{Param: param, System: system, Code: code})
}

func (ix *indexer) identifiers(ids []*d4pb.Identifier) {
	for _, id := range ids {
		ix.token("identifier", id.GetSystem().GetValue(), id.GetValue().GetValue())
	}
}

func (ix *indexer) concepts(param string, ccs ...*d4pb.CodeableConcept) {
	for _, cc := range ccs {
		for _, c := range cc.GetCoding() {
			ix.token(param, c.GetSystem().GetValue(), c.GetCode().GetValue())
		}
	}
}

func (ix *indexer) refs(param string, refs ...*d4pb.Reference) {
	for _, r := range refs {
		if t := refTarget(r); t != "" {
			ix.Refs = append(ix.Refs, resource.Ref{Param: param, Target: t})
		}
	}
}

// subject indexes a subject reference as "subject" and, when it is a
// Patient, as "patient".
func (ix *indexer) subject(r *d4pb.Reference) {
	t := refTarget(r)
	if t == "" {
		return
	}
	if strings.HasPrefix(t, TypePatient+"/") {
		ix.Refs = append(ix.Refs, resource.Ref{Param: "patient", Target: t})
	}
	ix.Refs = append(ix.Refs, resource.Ref{Param: "subject", Target: t})
}

// openEnd is the upper bound of a period without an end.
var openEnd = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)

func (ix *indexer) period(param string, p *d4pb.Period) {
	if p.GetStart() == nil && p.GetEnd() == nil {
		return
	}
	lo, hi := time.Time{}, openEnd
	if p.GetStart() != nil {
		lo = dateTimeTime(p.GetStart())
	}
	if p.GetEnd() != nil {
		hi = dateTimeTime(p.GetEnd())
	}
	if !hi.After(lo) {
		hi = lo.Add(time.Microsecond)
	}
	ix.date(param, lo, hi)
}

func (ix *indexer) date(param string, lo, hi time.Time) {
	ix.Dates = append(ix.Dates, resource.Date{Param: param, Lo: lo, Hi: hi})
}

func dateTimeTime(dt *d4pb.DateTime) time.Time { return time.UnixMicro(dt.GetValueUs()).UTC() }

func instantTime(in *d4pb.Instant) time.Time { return time.UnixMicro(in.GetValueUs()).UTC() }

// lowerEnum turns a FHIR code enum name (ENTERED_IN_ERROR) into its code (entered-in-error).
func lowerEnum(name string) string {
	return strings.ReplaceAll(strings.ToLower(name), "_", "-")
}

// refTarget renders a reference as "Type/id" ("" for anything else).
func refTarget(r *d4pb.Reference) string {
	if r == nil || r.GetReference() == nil {
		return ""
	}
	var typ string
	var id *d4pb.ReferenceId
	switch v := r.GetReference().(type) {
	case *d4pb.Reference_PatientId:
		typ, id = TypePatient, v.PatientId
	case *d4pb.Reference_CarePlanId:
		typ, id = TypeCarePlan, v.CarePlanId
	case *d4pb.Reference_AppointmentId:
		typ, id = TypeAppointment, v.AppointmentId
	case *d4pb.Reference_GoalId:
		typ, id = TypeGoal, v.GoalId
	case *d4pb.Reference_ObservationId:
		typ, id = TypeObservation, v.ObservationId
	case *d4pb.Reference_PlanDefinitionId:
		typ, id = TypePlanDefinition, v.PlanDefinitionId
	case *d4pb.Reference_Uri:
		return relativeRef(v.Uri.GetValue())
	default:
		c, ok := proto.Clone(r).(*d4pb.Reference)
		if !ok || jsonformat.DenormalizeReference(c) != nil {
			return ""
		}
		return relativeRef(c.GetUri().GetValue())
	}
	if id.GetValue() == "" {
		return ""
	}
	return typ + "/" + id.GetValue()
}

// relativeRef keeps "Type/id" references (dropping any /_history/n suffix).
func relativeRef(s string) string {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || strings.Contains(s, ":") || parts[0] == "" || parts[1] == "" {
		return ""
	}
	return parts[0] + "/" + parts[1]
}

// canonicalTarget turns a canonical URL ".../PlanDefinition/<id>|<version>"
// into "PlanDefinition/<id>".
func canonicalTarget(canon, typ string) string {
	canon, _, _ = strings.Cut(canon, "|")
	canon, _, _ = strings.Cut(canon, "#")
	i := strings.LastIndex(canon, "/"+typ+"/")
	if i < 0 {
		return ""
	}
	id := canon[i+len(typ)+2:]
	if id == "" || strings.Contains(id, "/") {
		return ""
	}
	return typ + "/" + id
}
