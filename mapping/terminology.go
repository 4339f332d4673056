package mapping

import (
	d4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/datatypes_go_proto"

	"github.com/kapfhir/kapfhir/treatment"
)

// LOINC codes (all part of the FHIR R4 vital signs / US Core 6.1 profiles or
// the LOINC PHQ-9 and GAD-7 panels).
const (
	loincPHQ9Total     = "44261-6" // Patient Health Questionnaire 9 item (PHQ-9) total score [Reported]
	loincGAD7Total     = "70274-6" // Generalized anxiety disorder 7 item (GAD-7) total score [Reported.PHQ]
	loincBPPanel       = "85354-9" // Blood pressure panel with all children optional
	loincSystolic      = "8480-6"  // Systolic blood pressure
	loincDiastolic     = "8462-4"  // Diastolic blood pressure
	loincHeartRate     = "8867-4"  // Heart rate
	loincSpO2Pulse     = "59408-5" // Oxygen saturation in Arterial blood by Pulse oximetry
	loincSpO2          = "2708-6"  // Oxygen saturation in Arterial blood (required by US Core Pulse Oximetry)
	kapfhirSleepCode   = "sleep-duration"
	kapfhirSleepText   = "Sleep duration"
	phq9TotalDisplay   = "Patient Health Questionnaire 9 item (PHQ-9) total score [Reported]"
	gad7TotalDisplay   = "Generalized anxiety disorder 7 item (GAD-7) total score [Reported.PHQ]"
	bpPanelDisplay     = "Blood pressure panel with all children optional"
	systolicDisplay    = "Systolic blood pressure"
	diastolicDisplay   = "Diastolic blood pressure"
	heartRateDisplay   = "Heart rate"
	spo2PulseDisplay   = "Oxygen saturation in Arterial blood by Pulse oximetry"
	spo2Display        = "Oxygen saturation in Arterial blood"
	scoreUnit          = "{score}"
	observationSurvey  = "survey"
	observationVitals  = "vital-signs"
	surveyDisplay      = "Survey"
	vitalSignsDisplay  = "Vital Signs"
	assessPlan         = "assess-plan"
	assessPlanDisplay  = "Assessment and Plan of Treatment"
	clinicalProtocol   = "clinical-protocol"
	clinicalProtDisp   = "Clinical Protocol"
	usageContextFocus  = "focus"
	usageContextFocusD = "Clinical Focus"
)

// instrumentName is the human name of an instrument, for descriptions.
func instrumentName(i treatment.Instrument) string {
	switch i {
	case treatment.InstrumentPHQ9:
		return "PHQ-9"
	case treatment.InstrumentGAD7:
		return "GAD-7"
	case treatment.InstrumentBP:
		return "Blood pressure"
	case treatment.InstrumentHR:
		return "Heart rate"
	case treatment.InstrumentSpO2:
		return "Oxygen saturation (pulse oximetry)"
	case treatment.InstrumentSleep:
		return "Sleep duration"
	}
	return string(i)
}

// instrumentCode is the observation code of an instrument.
func (o Options) instrumentCode(i treatment.Instrument) *d4pb.CodeableConcept {
	switch i {
	case treatment.InstrumentPHQ9:
		return concept("PHQ-9 total score", coding(sysLOINC, loincPHQ9Total, phq9TotalDisplay))
	case treatment.InstrumentGAD7:
		return concept("GAD-7 total score", coding(sysLOINC, loincGAD7Total, gad7TotalDisplay))
	case treatment.InstrumentBP:
		return concept("Blood pressure", coding(sysLOINC, loincBPPanel, bpPanelDisplay))
	case treatment.InstrumentHR:
		return concept("Heart rate", coding(sysLOINC, loincHeartRate, heartRateDisplay))
	case treatment.InstrumentSpO2:
		return concept("Oxygen saturation (pulse oximetry)",
			coding(sysLOINC, loincSpO2Pulse, spo2PulseDisplay),
			coding(sysLOINC, loincSpO2, spo2Display))
	case treatment.InstrumentSleep:
		return concept(kapfhirSleepText, coding(o.codeSystem(csMeasurement), kapfhirSleepCode, kapfhirSleepText))
	}
	return concept(string(i))
}

// sessionKindLabel is the display of a session kind.
func sessionKindLabel(k treatment.SessionKind) string {
	switch k {
	case treatment.SessionPreparation:
		return "Preparation"
	case treatment.SessionDosing:
		return "Dosing"
	case treatment.SessionIntegration:
		return "Integration psychotherapy"
	case treatment.SessionReassessment:
		return "Reassessment"
	case treatment.SessionBooster:
		return "Booster"
	case treatment.SessionMaintenance:
		return "Maintenance"
	}
	return string(k)
}

func (o Options) sessionKindCoding(k treatment.SessionKind) *d4pb.Coding {
	return coding(o.codeSystem(csSessionKind), string(k), sessionKindLabel(k))
}

// appointmentReason maps a session kind onto HL7 v2 table 0276 (appointment
// reason codes: CHECKUP, EMERGENCY, FOLLOWUP, ROUTINE, WALKIN).
func appointmentReason(k treatment.SessionKind) (string, string) {
	switch k {
	case treatment.SessionIntegration, treatment.SessionReassessment, treatment.SessionBooster:
		return "FOLLOWUP", "A follow up visit from a previous appointment"
	}
	return "ROUTINE", "Routine appointment - default if not valued"
}

func planKindLabel(k treatment.PlanKind) string {
	switch k {
	case treatment.PlanInduction:
		return "Induction"
	case treatment.PlanBooster:
		return "Booster"
	case treatment.PlanMaintenance:
		return "Maintenance"
	}
	return string(k)
}

func routeLabel(r treatment.Route) string {
	switch r {
	case treatment.RouteIV:
		return "IV"
	case treatment.RouteIM:
		return "IM"
	case treatment.RouteSublingual:
		return "sublingual"
	case treatment.RouteIntranasal:
		return "intranasal"
	}
	return string(r)
}

// indicationConcept is the condition an indication names. SNOMED CT codes are
// given only where verified; treatment-resistant depression has text only.
func indicationConcept(ind treatment.Indication) *d4pb.CodeableConcept {
	switch ind {
	case treatment.IndicationMDD:
		return concept("Major depressive disorder", coding(sysSNOMED, "370143000", "Major depressive disorder"))
	case treatment.IndicationPTSD:
		return concept("Post-traumatic stress disorder", coding(sysSNOMED, "47505003", "Posttraumatic stress disorder"))
	case treatment.IndicationAnxiety:
		return concept("Anxiety disorder", coding(sysSNOMED, "197480006", "Anxiety disorder"))
	case treatment.IndicationTRD:
		return concept("Treatment-resistant depression")
	}
	return concept(string(ind))
}

// severity bands of the questionnaires' totals: code and display.
type band struct {
	max           int
	code, display string
}

var (
	phq9Bands = []band{
		{4, "minimal", "Minimal"}, {9, "mild", "Mild"}, {14, "moderate", "Moderate"},
		{19, "moderately-severe", "Moderately severe"}, {27, "severe", "Severe"},
	}
	gad7Bands = []band{
		{4, "minimal", "Minimal"}, {9, "mild", "Mild"}, {14, "moderate", "Moderate"}, {21, "severe", "Severe"},
	}
)

// severity returns the interpretation of a questionnaire total, or nil.
func (o Options) severity(i treatment.Instrument, total int) *d4pb.CodeableConcept {
	var bands []band
	var what string
	switch i {
	case treatment.InstrumentPHQ9:
		bands, what = phq9Bands, "depression"
	case treatment.InstrumentGAD7:
		bands, what = gad7Bands, "anxiety"
	default:
		return nil
	}
	if total < 0 {
		return nil
	}
	for _, b := range bands {
		if total <= b.max {
			return concept(b.display+" "+what, coding(o.codeSystem(csSeverity), b.code, b.display))
		}
	}
	return nil
}
