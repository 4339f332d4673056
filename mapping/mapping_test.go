package mapping

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/kapfhir/kapfhir/fhir/fhirjson"
	"github.com/kapfhir/kapfhir/treatment"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// lastUpdated is the fixed meta.lastUpdated of the golden files.
var lastUpdated = time.Date(2026, 3, 13, 16, 0, 0, 123_000_000, time.UTC)

// render renders resources with fhirjson, checks that each passes the
// validating unmarshal and names the same type and id, and returns them as an
// indented JSON array (indentation only for readable golden files).
func render(t *testing.T, rs ...Resource) []byte {
	t.Helper()
	parts := make([][]byte, len(rs))
	for i, r := range rs {
		b, err := fhirjson.Marshal(r.Msg)
		if err != nil {
			t.Fatalf("Marshal %s/%s: %v", r.Type, r.ID, err)
		}
		cr, err := fhirjson.Unmarshal(b)
		if err != nil {
			t.Errorf("%s/%s does not validate: %v\n%s", r.Type, r.ID, err, b)
			continue
		}
		var head struct {
			ResourceType string `json:"resourceType"`
			ID           string `json:"id"`
		}
		if err := json.Unmarshal(b, &head); err != nil {
			t.Fatal(err)
		}
		if head.ResourceType != r.Type || head.ID != r.ID {
			t.Errorf("rendered %s/%s, want %s/%s", head.ResourceType, head.ID, r.Type, r.ID)
		}
		if cr == nil {
			t.Errorf("%s/%s: no resource after unmarshal", r.Type, r.ID)
		}
		parts[i] = b
	}
	var out bytes.Buffer
	arr := append(append([]byte("["), bytes.Join(parts, []byte(","))...), ']')
	if len(rs) == 1 {
		arr = parts[0]
	}
	if err := json.Indent(&out, arr, "", "  "); err != nil {
		t.Fatalf("indent: %v", err)
	}
	out.WriteByte('\n')
	return out.Bytes()
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./mapping -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("%s mismatch (-want +got):\n%s", path, diff)
	}
}

func TestPatientGolden(t *testing.T) {
	r := Patient(testPatient(), testOptions)
	SetMeta(r, 1, lastUpdated)
	golden(t, "patient.json", render(t, r))
}

func TestPlanDefinitionGolden(t *testing.T) {
	for _, p := range []treatment.Protocol{ivProtocol(), kapProtocol(), boosterProtocol(), relapseProtocol(), maintenanceProtocol()} {
		t.Run(p.ID, func(t *testing.T) {
			r := PlanDefinition(p, testOptions)
			SetMeta(r, 3, lastUpdated)
			golden(t, "plandefinition-"+p.ID+".json", render(t, r))
		})
	}
}

func TestProgramGolden(t *testing.T) {
	prog := testProgram(t)
	rs, err := Program(prog, testLookup, testOptions)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		SetMeta(r, 2, lastUpdated)
	}
	golden(t, "program.json", render(t, rs...))
}

func TestProgramShape(t *testing.T) {
	prog := testProgram(t)
	rs, err := Program(prog, testLookup, testOptions)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rs {
		got = append(got, r.Type+"/"+r.ID)
	}
	want := []string{"Goal/prog-1-response", "Goal/prog-1-remission"}
	for _, s := range prog.Sessions {
		want = append(want, "Appointment/"+s.ID)
	}
	want = append(want, "CarePlan/plan-ind", "CarePlan/plan-boost")
	for _, m := range prog.Measurements {
		want = append(want, "Observation/"+m.ID)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Program resources (-want +got):\n%s", diff)
	}

	// Mapping is deterministic.
	again, err := Program(testProgram(t), testLookup, testOptions)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(rs, again, protocmp.Transform()); diff != "" {
		t.Errorf("second mapping differs (-first +second):\n%s", diff)
	}
}

func TestProgramErrors(t *testing.T) {
	tests := []struct {
		name   string
		change func(*treatment.Program)
		lookup func(string) (treatment.Protocol, bool)
		kind   treatment.Kind
	}{
		{
			name:   "unknown protocol",
			change: func(p *treatment.Program) {},
			lookup: func(string) (treatment.Protocol, bool) { return treatment.Protocol{}, false },
			kind:   treatment.KindInternal,
		},
		{
			name:   "nil lookup",
			change: func(p *treatment.Program) {},
			kind:   treatment.KindInternal,
		},
		{
			name:   "bad time zone",
			change: func(p *treatment.Program) { p.Timezone = "Mars/Olympus_Mons" },
			lookup: testLookup,
			kind:   treatment.KindInternal,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prog := testProgram(t)
			tt.change(&prog)
			_, err := Program(prog, tt.lookup, testOptions)
			if err == nil {
				t.Fatal("Program succeeded, want an error")
			}
			if got := treatment.ErrorKind(err); got != tt.kind {
				t.Errorf("error kind = %q, want %q (%v)", got, tt.kind, err)
			}
		})
	}
	// A programme without plans still maps (goals, sessions, measurements).
	prog := testProgram(t)
	prog.Plans = nil
	if _, err := Program(prog, nil, testOptions); err != nil {
		t.Errorf("programme without plans: %v", err)
	}
	var te *treatment.Error
	_, err := Program(testProgram(t), nil, testOptions)
	if !errors.As(err, &te) {
		t.Errorf("error %v is not a *treatment.Error", err)
	}
}

func TestNarrativeEscapes(t *testing.T) {
	p := kapProtocol() // its title has <KAP> & an ampersand
	pl := treatment.Plan{ID: "pl", ProtocolID: p.ID, Kind: treatment.PlanInduction, Status: treatment.PlanActive}
	n := narrative(pl, p, []treatment.Session{{ID: "s<1>", Kind: "dosing\"<x>", Status: "booked&", Start: time.Unix(0, 0), End: time.Unix(60, 0)}})
	div := n.GetDiv().GetValue()
	for _, bad := range []string{"<KAP>", "<x>", "booked&<", " & "} {
		if strings.Contains(div, bad) {
			t.Errorf("narrative contains unescaped %q: %s", bad, div)
		}
	}
	for _, want := range []string{`<div xmlns="http://www.w3.org/1999/xhtml">`, "&lt;KAP&gt; &amp; integration", "1970-01-01 00:00 to 1970-01-01 00:01"} {
		if !strings.Contains(div, want) {
			t.Errorf("narrative lacks %q: %s", want, div)
		}
	}
}

func BenchmarkProgram(b *testing.B) {
	prog := testProgram(b)
	b.ReportAllocs()
	for b.Loop() {
		rs, err := Program(prog, testLookup, testOptions)
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range rs {
			if _, err := fhirjson.Marshal(r.Msg); err != nil {
				b.Fatal(err)
			}
		}
	}
}
