package mapping

import (
	"testing"
	"time"

	"github.com/kapfhir/kapfhir/treatment"
)

// Test fixtures: synthetic data only. The protocols are built here (the real
// ones live in the catalogue package) and mirror catalogue/protocols.

var testOptions = Options{
	IdentifierSystem: "urn:uuid:6f1c2b9e-0d4a-4c1e-9a57-3f0f8e2d1c00",
	CanonicalBase:    "https://kapfhir.org/fhir",
}

func ivProtocol() treatment.Protocol {
	return treatment.Protocol{
		ID:          "ketamine-iv-6x-3wk",
		Version:     "1.0.0",
		Title:       "IV ketamine induction, 6 infusions over 2-3 weeks",
		Description: "An induction series of six intravenous ketamine infusions given two to three times a week.",
		Indications: []treatment.Indication{treatment.IndicationTRD, treatment.IndicationMDD, treatment.IndicationPTSD, treatment.IndicationAnxiety},
		Source:      "Models the repeated-infusion induction of Murrough et al. (2013) and Phillips et al. (2019). The 21-day window is a kapfhir default.",
		Kind:        treatment.PlanInduction,
		Route:       treatment.RouteIV,
		Routes:      []treatment.Route{treatment.RouteIM},
		Doses:       treatment.IntRange{Min: 6, Max: 6, Default: 6},
		Spacing:     treatment.Spacing{MinDays: 2, MaxDays: 7, PerWeekMax: 3, MaxSpanDays: 21},
		DoseMinutes: 120,
		Integration: &treatment.Integration{AfterEvery: 1, OffsetDays: []int{1}, Minutes: 50},
		Reassessment: &treatment.Reassessment{
			MinDays: 5, MaxDays: 10, Minutes: 60,
		},
		Measurements: []treatment.MeasurementRule{
			{Instrument: treatment.InstrumentPHQ9, At: treatment.AtBaseline},
			{Instrument: treatment.InstrumentGAD7, At: treatment.AtBaseline},
			{Instrument: treatment.InstrumentPHQ9, At: treatment.AtPreDose},
			{Instrument: treatment.InstrumentGAD7, At: treatment.AtPreDose},
			{Instrument: treatment.InstrumentBP, At: treatment.AtPreDose},
			{Instrument: treatment.InstrumentHR, At: treatment.AtPreDose},
			{Instrument: treatment.InstrumentBP, At: treatment.AtPostDose, OffsetMinutes: 40},
			{Instrument: treatment.InstrumentHR, At: treatment.AtPostDose, OffsetMinutes: 40},
			{Instrument: treatment.InstrumentPHQ9, At: treatment.AtReassessment},
			{Instrument: treatment.InstrumentGAD7, At: treatment.AtReassessment},
		},
		FollowOn: []string{"booster-3to6mo", "maintenance-monthly"},
	}
}

func boosterProtocol() treatment.Protocol {
	return treatment.Protocol{
		ID:          "booster-3to6mo",
		Version:     "1.0.0",
		Title:       "Booster sessions 3 to 6 months after induction",
		Description: "One or two booster sessions proposed as windows between three and six months after the induction's last dose.",
		Indications: []treatment.Indication{treatment.IndicationTRD, treatment.IndicationMDD},
		Source:      "The 3-6 month window and the count of 1-2 are kapfhir defaults.",
		Kind:        treatment.PlanBooster,
		Route:       treatment.RouteIV,
		Routes:      []treatment.Route{treatment.RouteIM, treatment.RouteSublingual, treatment.RouteIntranasal},
		DoseMinutes: 120,
		Booster:     &treatment.BoosterRule{Count: treatment.IntRange{Min: 1, Max: 2, Default: 1}, WindowStartMonths: 3, WindowEndMonths: 6},
		Measurements: []treatment.MeasurementRule{
			{Instrument: treatment.InstrumentPHQ9, At: treatment.AtPreDose},
			{Instrument: treatment.InstrumentBP, At: treatment.AtPreDose},
			{Instrument: treatment.InstrumentBP, At: treatment.AtPostDose, OffsetMinutes: 40},
		},
	}
}

func relapseProtocol() treatment.Protocol {
	return treatment.Protocol{
		ID:          "booster-on-relapse",
		Version:     "1.0.0",
		Title:       "Booster session on relapse",
		Indications: []treatment.Indication{treatment.IndicationMDD},
		Kind:        treatment.PlanBooster,
		Route:       treatment.RouteIV,
		DoseMinutes: 120,
		Relapse:     &treatment.RelapseRule{RiseBy: 5, Threshold: 15},
		Measurements: []treatment.MeasurementRule{
			{Instrument: treatment.InstrumentPHQ9, At: treatment.AtPreDose},
		},
	}
}

func maintenanceProtocol() treatment.Protocol {
	return treatment.Protocol{
		ID:          "maintenance-monthly",
		Version:     "1.0.0",
		Title:       "Monthly maintenance sessions",
		Indications: []treatment.Indication{treatment.IndicationTRD},
		Kind:        treatment.PlanMaintenance,
		Route:       treatment.RouteIV,
		DoseMinutes: 120,
		Maintenance: &treatment.MaintenanceRule{IntervalMonths: 1, Count: treatment.IntRange{Min: 1, Max: 12, Default: 4}},
		Measurements: []treatment.MeasurementRule{
			{Instrument: treatment.InstrumentPHQ9, At: treatment.AtPreDose},
			{Instrument: treatment.InstrumentBP, At: treatment.AtPostDose, OffsetMinutes: 40},
		},
	}
}

// kapProtocol has a preparation visit, two integration visits per dose, a
// weekday restriction and an after-last-dose measurement.
func kapProtocol() treatment.Protocol {
	return treatment.Protocol{
		ID:           "kap-spaced-3to6",
		Version:      "2.1.0",
		Title:        "Ketamine-assisted psychotherapy <KAP> & integration",
		Indications:  []treatment.Indication{treatment.IndicationPTSD, treatment.IndicationAnxiety},
		Kind:         treatment.PlanInduction,
		Route:        treatment.RouteIM,
		Routes:       []treatment.Route{treatment.RouteSublingual},
		Doses:        treatment.IntRange{Min: 3, Max: 6, Default: 3},
		Spacing:      treatment.Spacing{MinDays: 7, MaxDays: 14, Weekdays: []string{"tue", "thu"}},
		DoseMinutes:  180,
		Preparation:  &treatment.Step{DaysBefore: 7, Minutes: 90},
		Integration:  &treatment.Integration{AfterEvery: 2, OffsetDays: []int{2, 5}, Minutes: 60},
		Reassessment: &treatment.Reassessment{MinDays: 7, MaxDays: 14, Minutes: 60},
		Measurements: []treatment.MeasurementRule{
			{Instrument: treatment.InstrumentPHQ9, At: treatment.AtBaseline},
			{Instrument: treatment.InstrumentBP, At: treatment.AtPostDose, OffsetMinutes: 60},
			{Instrument: treatment.InstrumentPHQ9, At: treatment.AtAfterLastDose, OffsetDays: 1},
			{Instrument: treatment.InstrumentSleep, At: treatment.AtPreDose},
			{Instrument: treatment.InstrumentSpO2, At: treatment.AtPostDose, OffsetMinutes: 60},
		},
	}
}

func testLookup(id string) (treatment.Protocol, bool) {
	for _, p := range []treatment.Protocol{ivProtocol(), boosterProtocol(), relapseProtocol(), maintenanceProtocol(), kapProtocol()} {
		if p.ID == id {
			return p, true
		}
	}
	return treatment.Protocol{}, false
}

func testPatient() treatment.Patient {
	return treatment.Patient{
		ID:          "pat-1",
		Identifiers: []treatment.Identifier{{System: "urn:oid:2.16.840.1.113883.19.5", Value: "MRN-0042"}},
		Family:      "Testperson",
		Given:       []string{"Alex", "Q"},
		BirthDate:   "1980-07-14",
		Gender:      "female",
		Created:     time.Date(2026, 2, 20, 15, 0, 0, 0, time.UTC),
		Updated:     time.Date(2026, 2, 20, 15, 0, 0, 0, time.UTC),
	}
}

func ptr[T any](v T) *T { return &v }

// testProgram is a 6-dose IV programme in America/New_York: doses 1-3
// fulfilled, dose 4 cancelled (across the DST change) and replaced, dose 5
// arrived, the rest proposed; a booster plan with two window-only proposals
// (one cancelled); measurements of every instrument.
func testProgram(tb testing.TB) treatment.Program {
	tb.Helper()
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		tb.Fatal(err)
	}
	at := func(month time.Month, day, hour, minute int) time.Time {
		return time.Date(2026, month, day, hour, minute, 0, 0, ny)
	}
	const ind, boost = "plan-ind", "plan-boost"
	ses := func(id string, k treatment.SessionKind, dose int, st treatment.SessionStatus, start time.Time, minutes int) treatment.Session {
		return treatment.Session{ID: id, PlanID: ind, Kind: k, Status: st, Dose: dose, Start: start, End: start.Add(time.Duration(minutes) * time.Minute)}
	}
	dosing, integ := treatment.SessionDosing, treatment.SessionIntegration
	sessions := []treatment.Session{
		ses("ses-01", dosing, 1, treatment.StatusFulfilled, at(time.March, 2, 9, 0), 120),
		ses("ses-02", integ, 1, treatment.StatusFulfilled, at(time.March, 3, 9, 0), 50),
		ses("ses-03", dosing, 2, treatment.StatusFulfilled, at(time.March, 4, 9, 0), 120),
		ses("ses-04", integ, 2, treatment.StatusNoShow, at(time.March, 5, 9, 0), 50),
		ses("ses-05", dosing, 3, treatment.StatusFulfilled, at(time.March, 6, 9, 0), 120),
		ses("ses-06", integ, 3, treatment.StatusFulfilled, at(time.March, 7, 9, 0), 50),
		ses("ses-07", dosing, 4, treatment.StatusCancelled, at(time.March, 9, 9, 0), 120),
		ses("ses-08", dosing, 4, treatment.StatusFulfilled, at(time.March, 10, 9, 0), 120),
		ses("ses-09", integ, 4, treatment.StatusFulfilled, at(time.March, 11, 9, 0), 50),
		ses("ses-10", dosing, 5, treatment.StatusArrived, at(time.March, 13, 9, 0), 120),
		ses("ses-11", integ, 5, treatment.StatusBooked, at(time.March, 14, 9, 0), 50),
		ses("ses-12", dosing, 6, treatment.StatusProposed, at(time.March, 16, 9, 0), 120),
		ses("ses-13", integ, 6, treatment.StatusProposed, at(time.March, 17, 9, 0), 50),
		ses("ses-14", treatment.SessionReassessment, 0, treatment.StatusProposed, at(time.March, 23, 9, 0), 60),
		{ID: "ses-15", PlanID: boost, Kind: treatment.SessionBooster, Status: treatment.StatusProposed, Dose: 1,
			Window: &treatment.Period{Start: at(time.June, 16, 0, 0), End: at(time.August, 1, 0, 0)}},
		{ID: "ses-16", PlanID: boost, Kind: treatment.SessionBooster, Status: treatment.StatusCancelled, Dose: 2,
			Window: &treatment.Period{Start: at(time.August, 1, 0, 0), End: at(time.September, 16, 0, 0)}},
	}
	sessions[7].Replaces = "ses-07"

	meas := func(id, session string, inst treatment.Instrument, eff time.Time) treatment.Measurement {
		return treatment.Measurement{ID: id, SessionID: session, Instrument: inst, Effective: eff, Recorded: eff.Add(5 * time.Minute)}
	}
	m01 := meas("obs-01", "ses-01", treatment.InstrumentPHQ9, at(time.March, 2, 8, 45))
	m01.Items, m01.Total = []int{3, 2, 2, 2, 2, 2, 2, 2, 1}, ptr(18)
	m01.Recorded = m01.Recorded.Add(250 * time.Millisecond)
	m02 := meas("obs-02", "ses-01", treatment.InstrumentGAD7, at(time.March, 2, 8, 46))
	m02.Items, m02.Total = []int{2, 2, 2, 2, 2, 1, 1}, ptr(12)
	m03 := meas("obs-03", "ses-01", treatment.InstrumentBP, at(time.March, 2, 8, 55))
	m03.Systolic, m03.Diastolic = ptr(128), ptr(82)
	m04 := meas("obs-04", "ses-01", treatment.InstrumentHR, at(time.March, 2, 8, 55))
	m04.Value = ptr(72.0)
	m05 := meas("obs-05", "ses-01", treatment.InstrumentSpO2, at(time.March, 2, 9, 30))
	m05.Value = ptr(97.5)
	m06 := meas("obs-06", "ses-01", treatment.InstrumentBP, at(time.March, 2, 9, 40))
	m06.Systolic, m06.Diastolic = ptr(134), ptr(86)
	m07 := meas("obs-07", "ses-01", treatment.InstrumentHR, at(time.March, 2, 9, 40))
	m07.Value = ptr(84.0)
	m08 := meas("obs-08", "ses-03", treatment.InstrumentPHQ9, at(time.March, 4, 8, 50))
	m08.Total = ptr(14)
	m09 := meas("obs-09", "ses-05", treatment.InstrumentPHQ9, at(time.March, 6, 8, 50))
	m09.Total = ptr(8)
	m10 := meas("obs-10", "ses-05", treatment.InstrumentGAD7, at(time.March, 6, 8, 51))
	m10.Total = ptr(5)
	m11 := meas("obs-11", "", treatment.InstrumentSleep, at(time.March, 8, 7, 0))
	m11.Value = ptr(7.25)

	prog := treatment.Program{
		ID:         "prog-1",
		PatientID:  "pat-1",
		ProtocolID: "ketamine-iv-6x-3wk",
		Indication: treatment.IndicationMDD,
		Route:      treatment.RouteIV,
		Doses:      6,
		Timezone:   "America/New_York",
		Start:      at(time.March, 2, 9, 0),
		Status:     treatment.ProgramActive,
		Plans: []treatment.Plan{
			{ID: ind, ProtocolID: "ketamine-iv-6x-3wk", Kind: treatment.PlanInduction, Status: treatment.PlanActive,
				Created: time.Date(2026, 2, 20, 15, 4, 5, 0, time.UTC)},
			{ID: boost, ProtocolID: "booster-3to6mo", Kind: treatment.PlanBooster, Status: treatment.PlanActive, BasedOn: ind,
				Created: time.Date(2026, 3, 13, 16, 0, 0, 0, time.UTC)},
		},
		Sessions:     sessions,
		Measurements: []treatment.Measurement{m01, m02, m03, m04, m05, m06, m07, m08, m09, m10, m11},
		Version:      7,
		Created:      time.Date(2026, 2, 20, 15, 4, 5, 0, time.UTC),
		Updated:      time.Date(2026, 3, 13, 16, 0, 0, 0, time.UTC),
	}
	treatment.Assess(&prog, testLookup)
	return prog
}
