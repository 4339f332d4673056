package mapping

import (
	c4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/codes_go_proto"
	d4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/datatypes_go_proto"
	opb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/observation_go_proto"

	"github.com/kapfhir/kapfhir/treatment"
)

// observation maps one measurement:
//
//   - PHQ-9 / GAD-7: US Core Observation Screening Assessment, category
//     survey, LOINC total score as valueInteger, severity band as interpretation;
//   - blood pressure: US Core Blood Pressure (85354-9 with 8480-6 / 8462-4 in mm[Hg]);
//   - heart rate: US Core Heart Rate (8867-4, /min);
//   - SpO2: US Core Pulse Oximetry (59408-5 and 2708-6, %);
//   - sleep: kapfhir's measurement#sleep-duration in hours (no standard code or profile).
//
// basedOn is the CarePlan of the session it was taken at, or the induction's.
func (m programMapper) observation(ms treatment.Measurement) Resource {
	obs := &opb.Observation{
		Id:         fhirID(ms.ID),
		Identifier: []*d4pb.Identifier{m.o.identifier(ms.ID)},
		Status:     &opb.Observation_StatusCode{Value: c4pb.ObservationStatusCode_FINAL},
		Code:       m.o.instrumentCode(ms.Instrument),
		Subject:    patientRef(m.prog.PatientID),
	}
	planID := m.induction
	if s, ok := m.prog.Session(ms.SessionID); ok && s.PlanID != "" {
		planID = s.PlanID
	}
	if planID != "" {
		obs.BasedOn = []*d4pb.Reference{carePlanRef(planID)}
	}
	if !ms.Effective.IsZero() {
		obs.Effective = &opb.Observation_EffectiveX{Choice: &opb.Observation_EffectiveX_DateTime{DateTime: dateTime(ms.Effective)}}
	}
	if !ms.Recorded.IsZero() {
		obs.Issued = instant(ms.Recorded)
	}
	survey := concept("", coding(sysObsCategory, observationSurvey, surveyDisplay))
	vitals := concept("", coding(sysObsCategory, observationVitals, vitalSignsDisplay))

	switch ms.Instrument {
	case treatment.InstrumentPHQ9, treatment.InstrumentGAD7:
		obs.Meta = meta(profScreeningAssessment)
		obs.Category = []*d4pb.CodeableConcept{survey}
		total, ok := questionnaireTotal(ms)
		if !ok {
			obs.DataAbsentReason = absent()
			break
		}
		obs.Value = &opb.Observation_ValueX{Choice: &opb.Observation_ValueX_Integer{Integer: &d4pb.Integer{Value: int32(total)}}}
		if sev := m.o.severity(ms.Instrument, total); sev != nil {
			obs.Interpretation = []*d4pb.CodeableConcept{sev}
		}
	case treatment.InstrumentBP:
		obs.Meta = meta(profBloodPressure)
		obs.Category = []*d4pb.CodeableConcept{vitals}
		obs.Component = []*opb.Observation_Component{
			bpComponent(loincSystolic, systolicDisplay, ms.Systolic),
			bpComponent(loincDiastolic, diastolicDisplay, ms.Diastolic),
		}
	case treatment.InstrumentHR:
		obs.Meta = meta(profHeartRate)
		obs.Category = []*d4pb.CodeableConcept{vitals}
		setQuantity(obs, ms.Value, "beats/minute", "/min")
	case treatment.InstrumentSpO2:
		obs.Meta = meta(profPulseOximetry)
		obs.Category = []*d4pb.CodeableConcept{vitals}
		setQuantity(obs, ms.Value, "%", "%")
	case treatment.InstrumentSleep:
		setQuantity(obs, ms.Value, "h", "h")
	default:
		obs.DataAbsentReason = absent()
	}
	return Resource{Type: TypeObservation, ID: ms.ID, Msg: obs}
}

// questionnaireTotal is the measurement's total, or the sum of its items.
func questionnaireTotal(ms treatment.Measurement) (int, bool) {
	if ms.Total != nil {
		return *ms.Total, true
	}
	if len(ms.Items) == 0 {
		return 0, false
	}
	sum := 0
	for _, v := range ms.Items {
		sum += v
	}
	return sum, true
}

func absent() *d4pb.CodeableConcept {
	return concept("", coding(sysDataAbsentReason, "unknown", "Unknown"))
}

func setQuantity(obs *opb.Observation, v *float64, unit, ucum string) {
	if v == nil {
		obs.DataAbsentReason = absent()
		return
	}
	obs.Value = &opb.Observation_ValueX{Choice: &opb.Observation_ValueX_Quantity{Quantity: quantity(*v, unit, ucum)}}
}

func bpComponent(loinc, display string, v *int) *opb.Observation_Component {
	c := &opb.Observation_Component{Code: concept(display, coding(sysLOINC, loinc, display))}
	if v == nil {
		c.DataAbsentReason = absent()
		return c
	}
	c.Value = &opb.Observation_Component_ValueX{Choice: &opb.Observation_Component_ValueX_Quantity{
		Quantity: quantity(float64(*v), "mmHg", "mm[Hg]"),
	}}
	return c
}
