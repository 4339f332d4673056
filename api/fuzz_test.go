package api

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/endpoint"
)

// decodeTargets are the types the API decodes request bodies into, each
// with the value it decodes over (endpoints keep their defaults for absent
// fields).
var decodeTargets = []struct {
	name string
	new  func() any
}{
	{"patient", func() any { return &patientIn{} }},
	{"program", func() any { return &programIn{} }},
	{"session change", func() any { return &sessionPatch{} }},
	{"plan", func() any { return &planIn{} }},
	{"measurement", func() any { return &measurementIn{} }},
	{"endpoint", func() any { e := endpoint.Defaults(); return &e }},
}

// FuzzDecode feeds arbitrary bodies to the strict decoder for every request
// type of the API. Each either decodes, and then re-encoding the value and
// decoding it again gives the same value, or fails with a 400 problem whose
// field reasons never echo a value. Nothing panics.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		goodBody,
		`{"patientId":"p1","protocolId":"ketamine-iv-6x-3wk","start":"2026-12-01T09:00","timezone":"America/New_York","doses":6,"route":"iv","indication":"trd"}`,
		`{"status":"booked","start":"2026-12-01T09:00","end":"2026-12-01T11:00"}`,
		`{"protocolId":"maintenance-weekly","count":4,"start":"2027-01-04"}`,
		`{"programId":"p","sessionId":"s","instrument":"phq9","items":[1,2,3,0,0,0,0,0,1],"total":7,"effective":"2026-12-01T09:00:00Z"}`,
		`{"instrument":"bp","systolic":120,"diastolic":80,"value":1.5}`,
		`{"id":"ehr1","name":"EHR","fhirBaseUrl":"https://ehr.example/fhir","auth":{"type":"client-secret"},"retry":{"minBackoff":"1s"},"rateLimit":{"perSecond":2.5,"burst":3}}`,
		`{"retry":{"minBackoff":"soon"}}`,
		`{"identifier":[{"system":"x","value":"y","extra":1}],"name":{"given":[1]}}`,
		`[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]`,
		`{"a":` + strings.Repeat("[", 100),
		"",
		"null",
		`{"doses":1e400}`,
		`{"doses":1.5}`,
		`{"doses":"6"}`,
		`{"status":"booked"}{"status":"booked"}`,
		`{"status":"\ud800"}`,
		"{\"status\":\"\xff\"}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		for _, target := range decodeTargets {
			v := target.new()
			err := decodeString(body, v)
			if err != nil {
				checkProblem(t, target.name, body, err)
				continue
			}
			if nestsDeeper([]byte(body), maxDepth) {
				t.Fatalf("%s: decode accepted %q, which nests deeper than %d", target.name, body, maxDepth)
			}
			again, err := json.Marshal(v)
			if err != nil {
				t.Fatalf("%s: decode(%q) gave a value that does not encode: %v", target.name, body, err)
			}
			w := target.new()
			if err := decodeString(string(again), w); err != nil {
				t.Fatalf("%s: decode(%q) ok, but its re-encoding %s fails: %v", target.name, body, again, err)
			}
			if diff := cmp.Diff(v, w); diff != "" {
				t.Fatalf("%s: decode(%q) then re-encode and decode differ (-first +second):\n%s", target.name, body, diff)
			}
			if m, ok := v.(*measurementIn); ok {
				_, _ = m.toDomain()
			}
		}
	})
}

// checkProblem checks that a decode error is a malformed-request problem.
func checkProblem(t *testing.T, target, body string, err error) {
	t.Helper()
	p := ProblemFor(err)
	if p.Status != 400 || p.Type != problemBase+"bad-request" || p.Detail == "" {
		t.Fatalf("%s: decode(%q) = %v, problem %+v; want a 400 bad-request problem with a detail", target, body, err, p)
	}
	for _, fe := range p.Errors {
		if fe.Field == "" || (fe.Reason != "unknown field" && !strings.HasPrefix(fe.Reason, "must be ")) {
			t.Fatalf("%s: decode(%q) field error %+v; want a field path and a fixed reason", target, body, fe)
		}
	}
}
