package mapping

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/treatment"
)

const sysTest = "urn:uuid:6f1c2b9e-0d4a-4c1e-9a57-3f0f8e2d1c00"

func mapped(t *testing.T, prog treatment.Program) map[string]Resource {
	t.Helper()
	rs, err := Program(prog, testLookup, testOptions)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]Resource, len(rs))
	for _, r := range rs {
		out[r.Type+"/"+r.ID] = r
	}
	return out
}

func utcAt(month time.Month, day, hour, minute int) time.Time {
	return time.Date(2026, month, day, hour, minute, 0, 0, time.UTC)
}

func TestIndex(t *testing.T) {
	rs := mapped(t, testProgram(t))
	ident := func(id string) resource.Token {
		return resource.Token{Param: "identifier", System: sysTest, Code: id}
	}
	patientRefs := func(param string) []resource.Ref {
		return []resource.Ref{{Param: "patient", Target: "Patient/pat-1"}, {Param: param, Target: "Patient/pat-1"}}
	}
	sessionKind := func(param, kind string) resource.Token {
		return resource.Token{Param: param, System: "https://kapfhir.org/fhir/CodeSystem/session-kind", Code: kind}
	}
	reason := func(code string) resource.Token {
		return resource.Token{Param: "appointment-type", System: sysAppointmentReason, Code: code}
	}
	us := time.Microsecond

	tests := []struct {
		name string
		res  Resource
		want resource.Index
	}{
		{
			name: "patient",
			res:  Patient(testPatient(), testOptions),
			want: resource.Index{Tokens: []resource.Token{
				ident("pat-1"),
				{Param: "identifier", System: "urn:oid:2.16.840.1.113883.19.5", Code: "MRN-0042"},
			}},
		},
		{
			name: "plan definition",
			res:  PlanDefinition(ivProtocol(), testOptions),
			want: resource.Index{Tokens: []resource.Token{
				ident("ketamine-iv-6x-3wk"),
				{Param: "url", Code: "https://kapfhir.org/fhir/PlanDefinition/ketamine-iv-6x-3wk"},
				{Param: "status", System: sysPublication, Code: "active"},
				{Param: "version", Code: "1.0.0"},
			}},
		},
		{
			name: "booster care plan",
			res:  rs["CarePlan/plan-boost"],
			want: resource.Index{
				Tokens: []resource.Token{
					ident("plan-boost"),
					{Param: "status", System: sysRequestStatus, Code: "active"},
					{Param: "category", System: sysCarePlanCategory, Code: "assess-plan"},
					{Param: "category", System: "https://kapfhir.org/fhir/CodeSystem/plan-kind", Code: "booster"},
				},
				Refs: append(patientRefs("subject"),
					resource.Ref{Param: "based-on", Target: "CarePlan/plan-ind"},
					resource.Ref{Param: "instantiates-canonical", Target: "PlanDefinition/booster-3to6mo"},
					resource.Ref{Param: "activity-reference", Target: "Appointment/ses-15"},
					resource.Ref{Param: "activity-reference", Target: "Appointment/ses-16"},
					resource.Ref{Param: "goal", Target: "Goal/prog-1-response"},
					resource.Ref{Param: "goal", Target: "Goal/prog-1-remission"},
				),
				// The window of the cancelled second booster is not part of the period.
				Dates:    []resource.Date{{Param: "date", Lo: utcAt(time.June, 16, 4, 0), Hi: utcAt(time.August, 1, 4, 0)}},
				SortDate: utcAt(time.June, 16, 4, 0),
			},
		},
		{
			name: "booked appointment",
			res:  rs["Appointment/ses-11"],
			want: resource.Index{
				Tokens: []resource.Token{
					ident("ses-11"),
					{Param: "status", System: sysAppointmentStatus, Code: "booked"},
					sessionKind("service-type", "integration"),
					reason("FOLLOWUP"),
				},
				Refs: append(patientRefs("actor"), resource.Ref{Param: "supporting-info", Target: "CarePlan/plan-ind"}),
				// 09:00 in New York after the DST change is 13:00 UTC.
				Dates:    []resource.Date{{Param: "date", Lo: utcAt(time.March, 14, 13, 0), Hi: utcAt(time.March, 14, 13, 50)}},
				SortDate: utcAt(time.March, 14, 13, 0),
			},
		},
		{
			name: "cancelled appointment keeps its slot",
			res:  rs["Appointment/ses-07"],
			want: resource.Index{
				Tokens: []resource.Token{
					ident("ses-07"),
					{Param: "status", System: sysAppointmentStatus, Code: "cancelled"},
					sessionKind("service-type", "dosing"),
					reason("ROUTINE"),
				},
				Refs:     append(patientRefs("actor"), resource.Ref{Param: "supporting-info", Target: "CarePlan/plan-ind"}),
				Dates:    []resource.Date{{Param: "date", Lo: utcAt(time.March, 9, 13, 0), Hi: utcAt(time.March, 9, 15, 0)}},
				SortDate: utcAt(time.March, 9, 13, 0),
			},
		},
		{
			name: "proposal with a suggested slot is dated by its requested period",
			res:  rs["Appointment/ses-12"],
			want: resource.Index{
				Tokens: []resource.Token{
					ident("ses-12"),
					{Param: "status", System: sysAppointmentStatus, Code: "proposed"},
					sessionKind("service-type", "dosing"),
					reason("ROUTINE"),
				},
				Refs:     append(patientRefs("actor"), resource.Ref{Param: "supporting-info", Target: "CarePlan/plan-ind"}),
				Dates:    []resource.Date{{Param: "date", Lo: utcAt(time.March, 16, 13, 0), Hi: utcAt(time.March, 16, 15, 0)}},
				SortDate: utcAt(time.March, 16, 13, 0),
			},
		},
		{
			name: "window-only booster proposal",
			res:  rs["Appointment/ses-15"],
			want: resource.Index{
				Tokens: []resource.Token{
					ident("ses-15"),
					{Param: "status", System: sysAppointmentStatus, Code: "proposed"},
					sessionKind("service-type", "booster"),
					reason("FOLLOWUP"),
				},
				Refs:     append(patientRefs("actor"), resource.Ref{Param: "supporting-info", Target: "CarePlan/plan-boost"}),
				Dates:    []resource.Date{{Param: "date", Lo: utcAt(time.June, 16, 4, 0), Hi: utcAt(time.August, 1, 4, 0)}},
				SortDate: utcAt(time.June, 16, 4, 0),
			},
		},
		{
			name: "blood pressure observation",
			res:  rs["Observation/obs-03"],
			want: resource.Index{
				Tokens: []resource.Token{
					ident("obs-03"),
					{Param: "status", System: sysObservationStatus, Code: "final"},
					{Param: "code", System: sysLOINC, Code: "85354-9"},
					{Param: "category", System: sysObsCategory, Code: "vital-signs"},
				},
				Refs:     append(patientRefs("subject"), resource.Ref{Param: "based-on", Target: "CarePlan/plan-ind"}),
				Dates:    []resource.Date{{Param: "date", Lo: utcAt(time.March, 2, 13, 55), Hi: utcAt(time.March, 2, 13, 55).Add(us)}},
				SortDate: utcAt(time.March, 2, 13, 55),
			},
		},
		{
			name: "pulse oximetry has both codes",
			res:  rs["Observation/obs-05"],
			want: resource.Index{
				Tokens: []resource.Token{
					ident("obs-05"),
					{Param: "status", System: sysObservationStatus, Code: "final"},
					{Param: "code", System: sysLOINC, Code: "59408-5"},
					{Param: "code", System: sysLOINC, Code: "2708-6"},
					{Param: "category", System: sysObsCategory, Code: "vital-signs"},
				},
				Refs:     append(patientRefs("subject"), resource.Ref{Param: "based-on", Target: "CarePlan/plan-ind"}),
				Dates:    []resource.Date{{Param: "date", Lo: utcAt(time.March, 2, 14, 30), Hi: utcAt(time.March, 2, 14, 30).Add(us)}},
				SortDate: utcAt(time.March, 2, 14, 30),
			},
		},
		{
			name: "response goal",
			res:  rs["Goal/prog-1-response"],
			want: resource.Index{
				Tokens: []resource.Token{
					ident("prog-1-response"),
					{Param: "lifecycle-status", System: sysGoalStatus, Code: "active"},
					{Param: "achievement-status", System: sysGoalAchievement, Code: "achieved"},
				},
				Refs: patientRefs("subject"),
			},
		},
		{
			name: "remission goal",
			res:  rs["Goal/prog-1-remission"],
			want: resource.Index{
				Tokens: []resource.Token{
					ident("prog-1-remission"),
					{Param: "lifecycle-status", System: sysGoalStatus, Code: "active"},
					{Param: "achievement-status", System: sysGoalAchievement, Code: "improving"},
				},
				Refs: patientRefs("subject"),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.res.Msg == nil {
				t.Fatal("resource not mapped")
			}
			if diff := cmp.Diff(tt.want, Index(tt.res)); diff != "" {
				t.Errorf("Index (-want +got):\n%s", diff)
			}
		})
	}
}

// TestIndexParams checks that every indexed parameter is registered for its
// resource type in resource.Params, with the matching type.
func TestIndexParams(t *testing.T) {
	rs, err := Program(testProgram(t), testLookup, testOptions)
	if err != nil {
		t.Fatal(err)
	}
	rs = append(rs, Patient(testPatient(), testOptions), PlanDefinition(ivProtocol(), testOptions))
	for _, r := range rs {
		ix := Index(r)
		check := func(param string, typ resource.ParamType) {
			p, ok := resource.LookupParam(r.Type, param)
			if !ok || p.Type != typ {
				t.Errorf("%s/%s indexes %s %q, not a registered %s parameter", r.Type, r.ID, typ, param, r.Type)
			}
		}
		for _, tok := range ix.Tokens {
			check(tok.Param, resource.TypeToken)
		}
		for _, ref := range ix.Refs {
			check(ref.Param, resource.TypeReference)
			p, _ := resource.LookupParam(r.Type, ref.Param)
			ok := false
			for _, tg := range p.Targets {
				ok = ok || len(ref.Target) > len(tg) && ref.Target[:len(tg)+1] == tg+"/"
			}
			if !ok {
				t.Errorf("%s/%s: %s -> %s is not one of the targets %v", r.Type, r.ID, ref.Param, ref.Target, p.Targets)
			}
		}
		for _, d := range ix.Dates {
			check(d.Param, resource.TypeDate)
			if !d.Hi.After(d.Lo) {
				t.Errorf("%s/%s: empty date range %v", r.Type, r.ID, d)
			}
		}
	}
}

func TestAppointmentStatuses(t *testing.T) {
	slot := treatment.Session{ID: "s", PlanID: "p", Kind: treatment.SessionDosing, Dose: 1,
		Start: utcAt(time.April, 1, 14, 0), End: utcAt(time.April, 1, 16, 0)}
	tests := []struct {
		status      treatment.SessionStatus
		window      bool
		want        string
		startEnd    bool
		requested   bool
		needsAction bool
	}{
		{status: treatment.StatusProposed, want: "proposed", requested: true, needsAction: true},
		{status: treatment.StatusProposed, window: true, want: "proposed", requested: true, needsAction: true},
		{status: treatment.StatusBooked, want: "booked", startEnd: true},
		{status: treatment.StatusArrived, want: "arrived", startEnd: true},
		{status: treatment.StatusFulfilled, want: "fulfilled", startEnd: true},
		{status: treatment.StatusCancelled, want: "cancelled", startEnd: true},
		{status: treatment.StatusCancelled, window: true, want: "cancelled", requested: true, needsAction: true},
		{status: treatment.StatusNoShow, want: "noshow", startEnd: true},
	}
	for _, tt := range tests {
		name := string(tt.status)
		if tt.window {
			name += " window"
		}
		t.Run(name, func(t *testing.T) {
			s := slot
			s.Status = tt.status
			if tt.window {
				s.Start, s.End = time.Time{}, time.Time{}
				s.Window = &treatment.Period{Start: utcAt(time.June, 1, 4, 0), End: utcAt(time.July, 1, 4, 0)}
			}
			prog := treatment.Program{ID: "prog", PatientID: "pat", Route: treatment.RouteIV, Doses: 1, Sessions: []treatment.Session{s}}
			r := programMapper{o: testOptions, prog: &prog, loc: time.UTC}.appointment(s)
			if g := Index(r).Tokens[1].Code; g != tt.want {
				t.Errorf("status = %q, want %q", g, tt.want)
			}
			var got map[string]any
			if err := json.Unmarshal(render(t, r), &got); err != nil {
				t.Fatal(err)
			}
			_, start := got["start"]
			_, end := got["end"]
			_, mins := got["minutesDuration"]
			_, requested := got["requestedPeriod"]
			if start != tt.startEnd || end != tt.startEnd || mins != tt.startEnd {
				t.Errorf("start, end, minutesDuration present = %v, %v, %v; want %v", start, end, mins, tt.startEnd)
			}
			if requested != tt.requested {
				t.Errorf("requestedPeriod present = %v, want %v", requested, tt.requested)
			}
			part := got["participant"].([]any)[0].(map[string]any)["status"]
			if needs := part == "needs-action"; needs != tt.needsAction {
				t.Errorf("participant status = %v, want needs-action %v", part, tt.needsAction)
			}
		})
	}
}

func TestContentHash(t *testing.T) {
	prog := testProgram(t)
	base := mapped(t, prog)
	hash := func(rs map[string]Resource, key string) []byte {
		t.Helper()
		r, ok := rs[key]
		if !ok {
			t.Fatalf("%s not mapped", key)
		}
		return ContentHash(r)
	}

	// Same content, mapped again: same hash.
	again := mapped(t, testProgram(t))
	for key := range base {
		if !bytes.Equal(hash(base, key), hash(again, key)) {
			t.Errorf("%s: hash differs between two mappings of the same programme", key)
		}
	}

	// Setting meta (version, lastUpdated) does not change the hash.
	for key, r := range again {
		before := ContentHash(r)
		SetMeta(r, 9, time.Date(2027, 1, 2, 3, 4, 5, 6000, time.UTC))
		if !bytes.Equal(before, ContentHash(r)) {
			t.Errorf("%s: SetMeta changed the content hash", key)
		}
	}

	// A content change changes the hash of exactly the affected resources.
	changed := testProgram(t)
	changed.Sessions[11].Status = treatment.StatusBooked // ses-12
	after := mapped(t, changed)
	for key := range base {
		same := bytes.Equal(hash(base, key), hash(after, key))
		affected := key == "Appointment/ses-12" || key == "CarePlan/plan-ind"
		if same == affected {
			t.Errorf("%s: hash unchanged = %v, want %v", key, same, !affected)
		}
	}

	// Different resources have different hashes; a hash is a SHA-256.
	seen := map[string]string{}
	for key := range base {
		h := hash(base, key)
		if len(h) != 32 {
			t.Errorf("%s: hash length %d", key, len(h))
		}
		if other, dup := seen[string(h)]; dup {
			t.Errorf("%s and %s have the same hash", key, other)
		}
		seen[string(h)] = key
	}
}

func TestSetMeta(t *testing.T) {
	r := Patient(testPatient(), testOptions)
	SetMeta(r, 12, time.Date(2026, 3, 13, 11, 0, 0, 0, time.FixedZone("EST", -5*3600)))
	b := render(t, r)
	for _, want := range []string{`"versionId": "12"`, `"lastUpdated": "2026-03-13T16:00:00Z"`, `us-core-patient`} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("rendered patient lacks %s:\n%s", want, b)
		}
	}
	// Resources without profiles get a meta too.
	a := mapped(t, testProgram(t))["Appointment/ses-01"]
	SetMeta(a, 1, time.Date(2026, 3, 13, 16, 0, 0, 0, time.UTC))
	if b := render(t, a); !bytes.Contains(b, []byte(`"versionId": "1"`)) {
		t.Errorf("appointment meta not set:\n%s", b)
	}
}
