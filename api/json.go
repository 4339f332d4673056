package api

import (
	"time"

	"github.com/kapfhir/kapfhir/treatment"
)

type patientIn struct {
	Identifier []treatment.Identifier `json:"identifier"`
	Name       struct {
		Family string   `json:"family"`
		Given  []string `json:"given"`
	} `json:"name"`
	BirthDate string `json:"birthDate"`
	Gender    string `json:"gender"`
}

type programIn struct {
	PatientID  string `json:"patientId"`
	ProtocolID string `json:"protocolId"`
	Start      string `json:"start"`
	Timezone   string `json:"timezone"`
	Doses      int    `json:"doses"`
	Route      string `json:"route"`
	Indication string `json:"indication"`
}

type sessionPatch struct {
	Status string `json:"status"`
	Start  string `json:"start"`
	End    string `json:"end"`
}

type planIn struct {
	ProtocolID string `json:"protocolId"`
	Count      int    `json:"count"`
	Start      string `json:"start"`
}

type measurementIn struct {
	ProgramID  string   `json:"programId"`
	SessionID  string   `json:"sessionId"`
	Instrument string   `json:"instrument"`
	Items      []int    `json:"items"`
	Total      *int     `json:"total"`
	Systolic   *int     `json:"systolic"`
	Diastolic  *int     `json:"diastolic"`
	Value      *float64 `json:"value"`
	Effective  string   `json:"effective"`
}

func (in measurementIn) toDomain() (treatment.Measurement, error) {
	m := treatment.Measurement{
		SessionID: in.SessionID, Instrument: treatment.Instrument(in.Instrument), Items: in.Items,
		Total: in.Total, Systolic: in.Systolic, Diastolic: in.Diastolic, Value: in.Value,
	}
	if in.Effective != "" {
		t, err := time.Parse(time.RFC3339, in.Effective)
		if err != nil {
			return m, treatment.Invalid("invalid measurement", treatment.FieldError{Field: "effective", Reason: "must be an RFC 3339 date-time with a zone, e.g. 2026-12-01T09:00:00-05:00"})
		}
		m.Effective = t
	}
	return m, nil
}

type protocolJSON struct {
	treatment.Protocol
	PlanDefinition string `json:"planDefinition"`
}

func toProtocolJSON(p treatment.Protocol, base string) protocolJSON {
	return protocolJSON{Protocol: p, PlanDefinition: base + "/PlanDefinition/" + p.ID}
}

type patientJSON struct {
	ID         string                 `json:"id"`
	Identifier []treatment.Identifier `json:"identifier"`
	Name       struct {
		Family string   `json:"family,omitempty"`
		Given  []string `json:"given,omitempty"`
	} `json:"name"`
	BirthDate string    `json:"birthDate"`
	Gender    string    `json:"gender"`
	Created   time.Time `json:"created"`
	FHIR      string    `json:"fhir"`
}

func toPatientJSON(p treatment.Patient, base string) patientJSON {
	out := patientJSON{ID: p.ID, Identifier: p.Identifiers, BirthDate: p.BirthDate, Gender: p.Gender, Created: p.Created, FHIR: base + "/Patient/" + p.ID}
	out.Name.Family, out.Name.Given = p.Family, p.Given
	return out
}

type periodJSON struct {
	Start string `json:"start"`
	End   string `json:"end"`
}

type sessionJSON struct {
	ID       string      `json:"id"`
	PlanID   string      `json:"planId"`
	Kind     string      `json:"kind"`
	Dose     int         `json:"dose,omitempty"`
	Start    string      `json:"start,omitempty"`
	End      string      `json:"end,omitempty"`
	Window   *periodJSON `json:"window,omitempty"`
	Status   string      `json:"status"`
	Replaces string      `json:"replaces,omitempty"`
	FHIR     string      `json:"fhir"`
}

type planJSON struct {
	ID         string `json:"id"`
	ProtocolID string `json:"protocolId"`
	Kind       string `json:"kind"`
	Status     string `json:"status"`
	BasedOn    string `json:"basedOn,omitempty"`
	FHIR       string `json:"fhir"`
}

type measurementJSON struct {
	ID         string   `json:"id"`
	SessionID  string   `json:"sessionId,omitempty"`
	Instrument string   `json:"instrument"`
	Items      []int    `json:"items,omitempty"`
	Total      *int     `json:"total,omitempty"`
	Systolic   *int     `json:"systolic,omitempty"`
	Diastolic  *int     `json:"diastolic,omitempty"`
	Value      *float64 `json:"value,omitempty"`
	Effective  string   `json:"effective"`
	FHIR       string   `json:"fhir"`
}

type programJSON struct {
	ID           string                    `json:"id"`
	PatientID    string                    `json:"patientId"`
	ProtocolID   string                    `json:"protocolId"`
	Indication   string                    `json:"indication,omitempty"`
	Route        string                    `json:"route"`
	Doses        int                       `json:"doses"`
	Timezone     string                    `json:"timezone"`
	Status       string                    `json:"status"`
	Plans        []planJSON                `json:"plans"`
	Sessions     []sessionJSON             `json:"sessions"`
	Measurements []measurementJSON         `json:"measurements"`
	Outcome      treatment.Outcome         `json:"outcome"`
	Issues       []treatment.ScheduleIssue `json:"issues"`
	Version      int64                     `json:"version"`
	Created      time.Time                 `json:"created"`
	Updated      time.Time                 `json:"updated"`
	FHIR         map[string]string         `json:"fhir"`
}

// local formats t in loc as RFC 3339 with the offset (the clinic-local wall time is visible).
func local(t time.Time, loc *time.Location) string {
	if t.IsZero() {
		return ""
	}
	return t.In(loc).Format(time.RFC3339)
}

func toMeasurementJSON(m treatment.Measurement, base string) measurementJSON {
	return measurementJSON{
		ID: m.ID, SessionID: m.SessionID, Instrument: string(m.Instrument), Items: m.Items, Total: m.Total,
		Systolic: m.Systolic, Diastolic: m.Diastolic, Value: m.Value, Effective: m.Effective.UTC().Format(time.RFC3339),
		FHIR: base + "/Observation/" + m.ID,
	}
}

func toProgramJSON(p treatment.Program, base string) programJSON {
	loc, err := time.LoadLocation(p.Timezone)
	if err != nil {
		loc = time.UTC
	}
	out := programJSON{
		ID: p.ID, PatientID: p.PatientID, ProtocolID: p.ProtocolID, Indication: string(p.Indication),
		Route: string(p.Route), Doses: p.Doses, Timezone: p.Timezone, Status: string(p.Status),
		Plans: []planJSON{}, Sessions: []sessionJSON{}, Measurements: []measurementJSON{},
		Outcome: p.Outcome, Issues: p.Issues, Version: p.Version, Created: p.Created, Updated: p.Updated,
		FHIR: map[string]string{
			"carePlans":    base + "/CarePlan?patient=Patient/" + p.PatientID + "&_include=CarePlan:activity-reference",
			"appointments": base + "/Appointment?patient=Patient/" + p.PatientID + "&_sort=date",
			"observations": base + "/Observation?patient=Patient/" + p.PatientID + "&_sort=date",
			"goals":        base + "/Goal?patient=Patient/" + p.PatientID,
		},
	}
	if out.Issues == nil {
		out.Issues = []treatment.ScheduleIssue{}
	}
	for _, pl := range p.Plans {
		out.Plans = append(out.Plans, planJSON{ID: pl.ID, ProtocolID: pl.ProtocolID, Kind: string(pl.Kind), Status: string(pl.Status), BasedOn: pl.BasedOn, FHIR: base + "/CarePlan/" + pl.ID})
	}
	for _, s := range p.Sessions {
		sj := sessionJSON{
			ID: s.ID, PlanID: s.PlanID, Kind: string(s.Kind), Dose: s.Dose, Status: string(s.Status),
			Start: local(s.Start, loc), End: local(s.End, loc), Replaces: s.Replaces, FHIR: base + "/Appointment/" + s.ID,
		}
		if s.Window != nil {
			sj.Window = &periodJSON{Start: local(s.Window.Start, loc), End: local(s.Window.End, loc)}
		}
		out.Sessions = append(out.Sessions, sj)
	}
	for _, m := range p.Measurements {
		out.Measurements = append(out.Measurements, toMeasurementJSON(m, base))
	}
	return out
}
