// Package mapping turns kapfhir's treatment domain into FHIR R4 resource
// protos (google/fhir/go), shaped to US Core 6.1 where a profile exists. It is
// pure and deterministic: no I/O, no clock, no logging. Ids and times come in
// as arguments, so the same input always gives the same protos, the same
// rendered JSON and the same content hash.
//
// Codes in standard systems (LOINC, SNOMED CT, UCUM, HL7 code systems) are
// only those verified against published sources; everything kapfhir-specific
// (session kinds, plan kinds, severity bands, sleep duration) uses kapfhir's
// own code systems under Options.CanonicalBase + "/CodeSystem/...".
package mapping

import (
	"strconv"
	"strings"
	"time"

	d4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/datatypes_go_proto"
	"google.golang.org/protobuf/proto"
)

// Options are the per-installation settings of the mapping.
type Options struct {
	// IdentifierSystem is the installation's identifier system URI (e.g.
	// "urn:uuid:6f1c..."); every resource carries identifier
	// {system: IdentifierSystem, value: <resource id>}.
	IdentifierSystem string
	// CanonicalBase is the base of kapfhir's canonical URLs, e.g.
	// "https://kapfhir.org/fhir": PlanDefinition.url is
	// CanonicalBase+"/PlanDefinition/"+protocol id and kapfhir's code systems
	// live at CanonicalBase+"/CodeSystem/...".
	CanonicalBase string
}

// DefaultCanonicalBase is the base of kapfhir's canonical URLs unless an
// installation sets its own.
const DefaultCanonicalBase = "https://kapfhir.org/fhir"

func (o Options) base() string { return strings.TrimRight(o.CanonicalBase, "/") }

// codeSystem returns the URL of one of kapfhir's own code systems.
func (o Options) codeSystem(name string) string { return o.base() + "/CodeSystem/" + name }

// PlanDefinitionURL is the canonical URL of a protocol's PlanDefinition.
func (o Options) PlanDefinitionURL(protocolID string) string {
	return o.base() + "/PlanDefinition/" + protocolID
}

// Resource is one mapped FHIR resource: its type, its logical id and the
// concrete resource proto (*ppb.Patient, *cppb.CarePlan, ...).
type Resource struct {
	Type string
	ID   string
	Msg  proto.Message
}

// Resource types.
const (
	TypePatient        = "Patient"
	TypeCarePlan       = "CarePlan"
	TypeAppointment    = "Appointment"
	TypeObservation    = "Observation"
	TypeGoal           = "Goal"
	TypePlanDefinition = "PlanDefinition"
)

// kapfhir's own code systems (under Options.CanonicalBase + "/CodeSystem/").
const (
	csSessionKind = "session-kind" // preparation, dosing, integration, ...
	csPlanKind    = "plan-kind"    // induction, booster, maintenance
	csSeverity    = "severity"     // PHQ-9 / GAD-7 severity bands
	csMeasurement = "measurement"  // measurements without a standard code (sleep-duration)
)

// Standard code systems.
const (
	sysLOINC             = "http://loinc.org"
	sysSNOMED            = "http://snomed.info/sct"
	sysUCUM              = "http://unitsofmeasure.org"
	sysObsCategory       = "http://terminology.hl7.org/CodeSystem/observation-category"
	sysCarePlanCategory  = "http://hl7.org/fhir/us/core/CodeSystem/careplan-category"
	sysGoalAchievement   = "http://terminology.hl7.org/CodeSystem/goal-achievement"
	sysAppointmentReason = "http://terminology.hl7.org/CodeSystem/v2-0276"
	sysPlanDefType       = "http://terminology.hl7.org/CodeSystem/plan-definition-type"
	sysUsageContextType  = "http://terminology.hl7.org/CodeSystem/usage-context-type"
	sysDataAbsentReason  = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
)

// FHIR code systems of the status elements, used as token systems in the index.
const (
	sysRequestStatus     = "http://hl7.org/fhir/request-status"
	sysAppointmentStatus = "http://hl7.org/fhir/appointmentstatus"
	sysObservationStatus = "http://hl7.org/fhir/observation-status"
	sysGoalStatus        = "http://hl7.org/fhir/goal-status"
	sysPublication       = "http://hl7.org/fhir/publication-status"
)

// US Core 6.1 profiles.
const (
	usCore                  = "http://hl7.org/fhir/us/core/StructureDefinition/"
	profPatient             = usCore + "us-core-patient"
	profCarePlan            = usCore + "us-core-careplan"
	profGoal                = usCore + "us-core-goal"
	profScreeningAssessment = usCore + "us-core-observation-screening-assessment"
	profBloodPressure       = usCore + "us-core-blood-pressure"
	profHeartRate           = usCore + "us-core-heart-rate"
	profPulseOximetry       = usCore + "us-core-pulse-oximetry"
)

// ---- datatype helpers --------------------------------------------------

func str(s string) *d4pb.String { return &d4pb.String{Value: s} }

func uri(s string) *d4pb.Uri { return &d4pb.Uri{Value: s} }

func code(s string) *d4pb.Code { return &d4pb.Code{Value: s} }

func fhirID(s string) *d4pb.Id { return &d4pb.Id{Value: s} }

func canonical(s string) *d4pb.Canonical { return &d4pb.Canonical{Value: s} }

func markdown(s string) *d4pb.Markdown { return &d4pb.Markdown{Value: s} }

func posInt(n int) *d4pb.PositiveInt { return &d4pb.PositiveInt{Value: uint32(max(n, 1))} }

func decimal(v float64) *d4pb.Decimal {
	return &d4pb.Decimal{Value: strconv.FormatFloat(v, 'f', -1, 64)}
}

func coding(system, c, display string) *d4pb.Coding {
	cd := &d4pb.Coding{System: uri(system), Code: code(c)}
	if display != "" {
		cd.Display = str(display)
	}
	return cd
}

func concept(text string, codings ...*d4pb.Coding) *d4pb.CodeableConcept {
	cc := &d4pb.CodeableConcept{Coding: codings}
	if text != "" {
		cc.Text = str(text)
	}
	return cc
}

// quantity is a UCUM quantity.
func quantity(v float64, unit, ucum string) *d4pb.Quantity {
	return &d4pb.Quantity{Value: decimal(v), Unit: str(unit), System: uri(sysUCUM), Code: code(ucum)}
}

func simpleQuantity(v float64, unit, ucum string) *d4pb.SimpleQuantity {
	return &d4pb.SimpleQuantity{Value: decimal(v), Unit: str(unit), System: uri(sysUCUM), Code: code(ucum)}
}

func duration(v float64, unit, ucum string) *d4pb.Duration {
	return &d4pb.Duration{Value: decimal(v), Unit: str(unit), System: uri(sysUCUM), Code: code(ucum)}
}

func days(n int) *d4pb.Duration { return duration(float64(n), "days", "d") }

// utc is the timezone string jsonformat renders as "Z".
const utc = "Z"

func dateTimePrecision(t time.Time) d4pb.DateTime_Precision {
	switch ns := t.Nanosecond(); {
	case ns == 0:
		return d4pb.DateTime_SECOND
	case ns%int(time.Millisecond) == 0:
		return d4pb.DateTime_MILLISECOND
	}
	return d4pb.DateTime_MICROSECOND
}

// dateTime is t as a UTC FHIR dateTime with second (or finer, when t has a
// fraction) precision.
func dateTime(t time.Time) *d4pb.DateTime {
	return &d4pb.DateTime{ValueUs: t.UnixMicro(), Timezone: utc, Precision: dateTimePrecision(t)}
}

func instant(t time.Time) *d4pb.Instant {
	p := d4pb.Instant_MICROSECOND
	switch dateTimePrecision(t) {
	case d4pb.DateTime_SECOND:
		p = d4pb.Instant_SECOND
	case d4pb.DateTime_MILLISECOND:
		p = d4pb.Instant_MILLISECOND
	}
	return &d4pb.Instant{ValueUs: t.UnixMicro(), Timezone: utc, Precision: p}
}

// date is the calendar date of t in loc, as a FHIR date.
func date(t time.Time, loc *time.Location) *d4pb.Date {
	y, m, d := t.In(loc).Date()
	return &d4pb.Date{ValueUs: time.Date(y, m, d, 0, 0, 0, 0, time.UTC).UnixMicro(), Timezone: utc, Precision: d4pb.Date_DAY}
}

func period(start, end time.Time) *d4pb.Period {
	return &d4pb.Period{Start: dateTime(start), End: dateTime(end)}
}

func meta(profiles ...string) *d4pb.Meta {
	if len(profiles) == 0 {
		return nil
	}
	m := &d4pb.Meta{}
	for _, p := range profiles {
		m.Profile = append(m.Profile, canonical(p))
	}
	return m
}

// identifier returns kapfhir's own identifier for a resource.
func (o Options) identifier(id string) *d4pb.Identifier {
	ident := &d4pb.Identifier{Value: str(id)}
	if o.IdentifierSystem != "" {
		ident.System = uri(o.IdentifierSystem)
	}
	return ident
}

func refID(id string) *d4pb.ReferenceId { return &d4pb.ReferenceId{Value: id} }

func patientRef(id string) *d4pb.Reference {
	return &d4pb.Reference{Reference: &d4pb.Reference_PatientId{PatientId: refID(id)}}
}

func carePlanRef(id string) *d4pb.Reference {
	return &d4pb.Reference{Reference: &d4pb.Reference_CarePlanId{CarePlanId: refID(id)}}
}

func appointmentRef(id string) *d4pb.Reference {
	return &d4pb.Reference{Reference: &d4pb.Reference_AppointmentId{AppointmentId: refID(id)}}
}

func goalRef(id string) *d4pb.Reference {
	return &d4pb.Reference{Reference: &d4pb.Reference_GoalId{GoalId: refID(id)}}
}

func observationRef(id string) *d4pb.Reference {
	return &d4pb.Reference{Reference: &d4pb.Reference_ObservationId{ObservationId: refID(id)}}
}
