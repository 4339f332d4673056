package api_test

import (
	"bytes"
	"encoding/json"
	"github.com/kapfhir/kapfhir/auth"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/test/kaptest"
)

type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	Errors []struct {
		Field  string `json:"field"`
		Reason string `json:"reason"`
	} `json:"errors"`
}

func call(t *testing.T, env *kaptest.Env, method, path, contentType, body string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, env.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	res, err := env.Client(t, auth.RoleClinic).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, b
}

func mustJSON(t *testing.T, env *kaptest.Env, method, path string, body any, want int) map[string]any {
	t.Helper()
	b, _ := json.Marshal(body)
	st, _, out := call(t, env, method, path, "application/json", string(b))
	if st != want {
		t.Fatalf("%s %s = %d, want %d: %s", method, path, st, want, out)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

const goodPatient = `{"identifier":[{"system":"https://clinic.example/mrn","value":"A1"}],"name":{"family":"Doe","given":["Jo"]},"birthDate":"1980-02-03","gender":"female"}`

// fixture creates a patient and a programme and returns their ids and the first dose's id.
func fixture(t *testing.T, env *kaptest.Env) (patientID, programID, doseID string) {
	t.Helper()
	var pat map[string]any
	st, _, b := call(t, env, "POST", "/api/v1/patients", "application/json", goodPatient)
	if st != 201 {
		t.Fatalf("create patient = %d: %s", st, b)
	}
	_ = json.Unmarshal(b, &pat)
	prog := mustJSON(t, env, "POST", "/api/v1/programs", map[string]any{
		"patientId": pat["id"], "protocolId": "ketamine-iv-6x-3wk", "start": "2026-12-01T09:00", "timezone": "America/New_York",
	}, 201)
	for _, s := range prog["sessions"].([]any) {
		if sm := s.(map[string]any); sm["kind"] == "dosing" {
			return pat["id"].(string), prog["id"].(string), sm["id"].(string)
		}
	}
	t.Fatal("no dosing session")
	return
}

// TestErrorPaths checks every error the domain API gives: status, media
// type, and the fields named.
func TestErrorPaths(t *testing.T) {
	env := kaptest.New(t, 4096)
	patientID, programID, doseID := fixture(t, env)
	huge := `{"programId":"` + strings.Repeat("x", 5000) + `"}`
	deep := strings.Repeat(`{"a":`, 40) + "1" + strings.Repeat("}", 40)

	tests := []struct {
		name        string
		method      string
		path        string
		contentType string
		body        string
		wantStatus  int
		wantFields  []string
	}{
		{"wrong content type", "POST", "/api/v1/patients", "text/plain", goodPatient, 415, nil},
		{"no content type", "POST", "/api/v1/patients", "", goodPatient, 415, nil},
		{"empty body", "POST", "/api/v1/patients", "application/json", "", 400, nil},
		{"invalid JSON", "POST", "/api/v1/patients", "application/json", `{"gender":`, 400, nil},
		{"not an object", "POST", "/api/v1/patients", "application/json", `[1,2]`, 400, nil},
		{"two values", "POST", "/api/v1/patients", "application/json", `{} {}`, 400, nil},
		{"too deep", "POST", "/api/v1/patients", "application/json", deep, 400, nil},
		{"oversized body", "POST", "/api/v1/measurements", "application/json", huge, 413, nil},
		{"unknown fields, all named", "POST", "/api/v1/patients", "application/json",
			`{"identifier":[{"system":"https://x","value":"1","use":"official"}],"name":{"family":"D","prefix":"Dr"},"birthDate":"1980-01-01","gender":"male","ssn":"1"}`,
			400, []string{"identifier[0].use", "name.prefix", "ssn"}},
		{"wrong type", "POST", "/api/v1/programs", "application/json", `{"patientId":"p","protocolId":"x","start":"2026-12-01T09:00","doses":"six"}`, 400, []string{"doses"}},
		{"patient: every bad field", "POST", "/api/v1/patients", "application/json",
			`{"identifier":[{"system":"no-scheme","value":""}],"name":{},"birthDate":"03/02/1980","gender":"f"}`,
			422, []string{"identifier[0].system", "identifier[0].value", "name", "birthDate", "gender"}},
		{"patient: future birth date", "POST", "/api/v1/patients", "application/json",
			`{"identifier":[{"system":"https://x","value":"2"}],"name":{"family":"D"},"birthDate":"2099-01-01","gender":"male"}`, 422, []string{"birthDate"}},
		{"patient: duplicate identifier", "POST", "/api/v1/patients", "application/json", goodPatient, 409, nil},
		{"patient: unknown id", "GET", "/api/v1/patients/nope", "", "", 404, nil},
		{"program: every bad field", "POST", "/api/v1/programs", "application/json",
			`{"protocolId":"no-such-protocol","start":"Dec 1","timezone":"Mars/Base"}`,
			422, []string{"patientId", "protocolId", "timezone", "start"}},
		{"program: booster protocol as induction", "POST", "/api/v1/programs", "application/json",
			`{"patientId":"` + patientID + `","protocolId":"booster-3to6mo","start":"2026-12-01T09:00"}`, 422, []string{"protocolId"}},
		{"program: unknown patient", "POST", "/api/v1/programs", "application/json",
			`{"patientId":"nobody","protocolId":"ketamine-iv-6x-3wk","start":"2026-12-01T09:00"}`, 422, []string{"patientId"}},
		{"program: doses outside range", "POST", "/api/v1/programs", "application/json",
			`{"patientId":"` + patientID + `","protocolId":"ketamine-iv-6x-3wk","start":"2026-12-01T09:00","doses":40}`, 422, []string{"doses"}},
		{"program: unknown id", "GET", "/api/v1/programs/nope", "", "", 404, nil},
		{"programs: missing patientId", "GET", "/api/v1/programs", "", "", 400, []string{"patientId"}},
		{"programs: unknown query parameter", "GET", "/api/v1/programs?patient=x", "", "", 400, []string{"patient"}},
		{"programs: unknown patient", "GET", "/api/v1/programs?patientId=nobody", "", "", 404, nil},
		{"session: bad status", "PATCH", "/api/v1/sessions/" + doseID, "application/json", `{"status":"done"}`, 422, []string{"status"}},
		{"session: nothing to change", "PATCH", "/api/v1/sessions/" + doseID, "application/json", `{}`, 422, []string{"status"}},
		{"session: bad start", "PATCH", "/api/v1/sessions/" + doseID, "application/json", `{"start":"tomorrow"}`, 422, []string{"start"}},
		{"session: unknown id", "PATCH", "/api/v1/sessions/nope", "application/json", `{"status":"booked"}`, 404, nil},
		{"booster: induction protocol", "POST", "/api/v1/programs/" + programID + "/boosters", "application/json", `{"protocolId":"ketamine-iv-6x-3wk"}`, 422, []string{"protocolId"}},
		{"booster: unknown programme", "POST", "/api/v1/programs/nope/boosters", "application/json", `{"protocolId":"booster-3to6mo"}`, 404, nil},
		{"measurement: PHQ-9 items", "POST", "/api/v1/measurements", "application/json",
			`{"programId":"` + programID + `","instrument":"phq9","items":[1,2,3,4],"total":5,"effective":"2026-11-20T09:00:00Z"}`, 422, []string{"items"}},
		{"measurement: total does not match items", "POST", "/api/v1/measurements", "application/json",
			`{"programId":"` + programID + `","instrument":"gad7","items":[1,1,1,1,1,1,1],"total":9,"effective":"2026-11-20T09:00:00Z"}`, 422, []string{"total"}},
		{"measurement: blood pressure out of range", "POST", "/api/v1/measurements", "application/json",
			`{"programId":"` + programID + `","instrument":"bp","systolic":400,"diastolic":10,"effective":"2026-11-20T09:00:00Z"}`, 422, []string{"systolic", "diastolic"}},
		{"measurement: unknown instrument", "POST", "/api/v1/measurements", "application/json",
			`{"programId":"` + programID + `","instrument":"mood","effective":"2026-11-20T09:00:00Z"}`, 422, []string{"instrument"}},
		{"measurement: bad effective", "POST", "/api/v1/measurements", "application/json",
			`{"programId":"` + programID + `","instrument":"hr","value":70,"effective":"yesterday"}`, 422, []string{"effective"}},
		{"measurement: unknown programme", "POST", "/api/v1/measurements", "application/json",
			`{"programId":"nope","instrument":"hr","value":70,"effective":"2026-11-20T09:00:00Z"}`, 422, []string{"programId"}},
		{"measurement: session of another programme", "POST", "/api/v1/measurements", "application/json",
			`{"programId":"` + programID + `","sessionId":"nope","instrument":"hr","value":70,"effective":"2026-11-20T09:00:00Z"}`, 422, []string{"sessionId"}},
		{"unknown route", "GET", "/api/v1/nothing-here", "", "", 404, nil},
		{"method not allowed", "DELETE", "/api/v1/protocols", "", "", 405, nil},
		{"protocol: unknown id", "GET", "/api/v1/protocols/nope", "", "", 404, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, h, b := call(t, env, tt.method, tt.path, tt.contentType, tt.body)
			if st != tt.wantStatus {
				t.Fatalf("status = %d, want %d: %s", st, tt.wantStatus, b)
			}
			if ct := h.Get("Content-Type"); ct != "application/problem+json" {
				t.Errorf("Content-Type = %q, want application/problem+json", ct)
			}
			var p problem
			if err := json.Unmarshal(b, &p); err != nil {
				t.Fatalf("body is not a problem: %v: %s", err, b)
			}
			if p.Status != tt.wantStatus || p.Title == "" || p.Type == "" {
				t.Errorf("problem = %+v", p)
			}
			if tt.wantFields != nil {
				var got []string
				for _, f := range p.Errors {
					got = append(got, f.Field)
					if f.Reason == "" {
						t.Errorf("field %s has no reason", f.Field)
					}
				}
				if diff := cmp.Diff(tt.wantFields, got); diff != "" {
					t.Errorf("fields (-want +got):\n%s\nproblem: %s", diff, b)
				}
			}
			if bytes.Contains(b, []byte("Doe")) || bytes.Contains(b, []byte("1980-02-03")) {
				t.Errorf("problem echoes PHI: %s", b)
			}
		})
	}
}

// TestNothingHalfWritten checks that a failed request leaves no trace: no
// programme and no FHIR resource.
func TestNothingHalfWritten(t *testing.T) {
	env := kaptest.New(t, 0)
	st, _, b := call(t, env, "POST", "/api/v1/programs", "application/json",
		`{"patientId":"nobody","protocolId":"ketamine-iv-6x-3wk","start":"2026-12-01T09:00"}`)
	if st != 422 {
		t.Fatalf("status = %d: %s", st, b)
	}
	st, _, b = call(t, env, "GET", "/fhir/CarePlan?_summary=count", "", "")
	var bundle struct{ Total int }
	_ = json.Unmarshal(b, &bundle)
	if st != 200 || bundle.Total != 0 {
		t.Errorf("after a refused programme: %d CarePlans stored (status %d)", bundle.Total, st)
	}
}

// TestWorkflow walks the happy path: booking, cancellation with replacement,
// measurements driving response, and a booster plan.
func TestWorkflow(t *testing.T) {
	env := kaptest.New(t, 0)
	patientID, programID, doseID := fixture(t, env)

	got := mustJSON(t, env, "GET", "/api/v1/programs?patientId="+patientID, nil, 200)
	if n := len(got["programs"].([]any)); n != 1 {
		t.Fatalf("programs for patient = %d, want 1", n)
	}
	res := mustJSON(t, env, "PATCH", "/api/v1/sessions/"+doseID, map[string]any{"status": "booked"}, 200)
	if s := res["session"].(map[string]any); s["status"] != "booked" {
		t.Errorf("session after booking = %v", s)
	}
	mustJSON(t, env, "PATCH", "/api/v1/sessions/"+doseID, map[string]any{"status": "fulfilled"}, 200)
	st, _, b := call(t, env, "PATCH", "/api/v1/sessions/"+doseID, "application/json", `{"status":"booked"}`)
	if st != 409 {
		t.Errorf("fulfilled -> booked = %d, want 409: %s", st, b)
	}
	mustJSON(t, env, "POST", "/api/v1/measurements", map[string]any{
		"programId": programID, "instrument": "phq9", "items": []int{3, 3, 3, 2, 2, 2, 2, 1, 0}, "effective": "2026-11-20T05:00:00-05:00",
	}, 201)
	m := mustJSON(t, env, "POST", "/api/v1/measurements", map[string]any{
		"programId": programID, "instrument": "phq9", "total": 4, "effective": "2026-11-20T06:00:00-05:00",
	}, 201)
	out := m["outcome"].(map[string]any)
	if out["response"] != true || out["remission"] != true {
		t.Errorf("PHQ-9 18 -> 4: outcome = %v, want response and remission", out)
	}
	prog := mustJSON(t, env, "POST", "/api/v1/programs/"+programID+"/boosters", map[string]any{"protocolId": "booster-3to6mo"}, 201)
	if n := len(prog["plans"].([]any)); n != 2 {
		t.Errorf("plans after booster = %d, want 2", n)
	}
}
