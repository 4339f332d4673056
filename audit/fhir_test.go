package audit_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/fhir/fhirjson"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

var t0 = time.Date(2026, 5, 4, 8, 0, 0, 123_000_000, time.UTC)

const source = "urn:uuid:6f1c1d7e-0000-4000-8000-000000000001"

// examples are one record of each kind, as a caller writes them.
func examples() []audit.Record {
	client := audit.Agent{ClientID: "app-1", Role: "clinician", Address: "192.0.2.10"}
	return []audit.Record{
		{Subtype: audit.Read, Agent: client, PatientID: "p1", Entities: []audit.Entity{{Ref: "CarePlan/cp1/_history/3"}}},
		{Subtype: audit.VRead, Agent: client, Entities: []audit.Entity{{Ref: "Goal/g1/_history/2"}}},
		{Subtype: audit.HistoryInstance, Agent: client, PatientID: "p1", Entities: []audit.Entity{{Ref: "Patient/p1"}}},
		{Subtype: audit.SearchType, Agent: client, PatientID: "p1", Entities: []audit.Entity{{Query: "CarePlan?patient=Patient/p1&_count=10"}}},
		{Subtype: audit.Create, Agent: client, Entities: []audit.Entity{{Ref: "Patient/p2/_history/1"}}},
		{Subtype: audit.Update, Agent: client, PatientID: "p1", Entities: []audit.Entity{{Ref: "CarePlan/cp1/_history/4"}}},
		{Subtype: audit.Delete, Agent: client, PatientID: "p1", Entities: []audit.Entity{{Ref: "CarePlan/cp1"}}},
		{Subtype: audit.TokenIssued, Agent: audit.Agent{ClientID: "app-1", Address: "ehr.example.org"}, Detail: map[string]string{"scope": "system/*.read", "jti": "j-1"}},
		{Subtype: audit.TokenRefused, Agent: audit.Agent{ClientID: "app-9"}, Outcome: audit.MinorFailure, OutcomeDesc: "client assertion expired"},
		{Subtype: audit.ConfigChange, Agent: audit.Agent{ClientID: "admin-1", Role: "admin"}, Entities: []audit.Entity{{Identifier: "endpoint:ehr-1"}}},
		{Subtype: audit.ClientChange, Action: audit.ActionDelete, Agent: audit.Agent{ClientID: "admin-1", Role: "admin"},
			Entities: []audit.Entity{{Identifier: "client:app-9", Role: audit.RoleSecurityResource}}},
		{Subtype: audit.KeyChange, Action: audit.ActionCreate, Agent: audit.Agent{ClientID: "kapfhir"},
			Entities: []audit.Entity{{Identifier: "kid:2026-05", Role: audit.RoleSecurityResource}}},
		{Subtype: audit.OutboundWrite, Agent: audit.Agent{ClientID: "sync"}, EndpointID: "ehr-1", PatientID: "p1",
			Entities: []audit.Entity{{Ref: "CarePlan/cp1/_history/4"}}, Detail: map[string]string{"ehr-id": "E-77", "status": "200"}},
		{Subtype: audit.InboundPoll, Agent: audit.Agent{ClientID: "sync"}, EndpointID: "ehr-1", Outcome: audit.SeriousFailure, OutcomeDesc: "EHR answered 503",
			Entities: []audit.Entity{{Query: "Appointment?_lastUpdated=gt2026-05-04T07:00:00Z"}}},
		{Subtype: audit.Replay, Agent: audit.Agent{ClientID: "admin-1", Role: "admin"}, EndpointID: "ehr-1", Detail: map[string]string{"item": "17"}},
		audit.PruneRecord(audit.Record{Agent: audit.Agent{ClientID: "admin-1", Role: "admin"}}, t0.Add(-24*time.Hour), 120, 121, make([]byte, 32)),
	}
}

// rendered prepares the examples with times, ids and the source, and renders them.
func rendered(t *testing.T) [][]byte {
	t.Helper()
	var out [][]byte
	for i, r := range examples() {
		r.Time, r.Source = t0.Add(time.Duration(i)*time.Second), source
		p, err := audit.Prepare(r)
		if err != nil {
			t.Fatalf("Prepare(%s): %v", r.Subtype, err)
		}
		p.Seq = int64(i + 1)
		p.ID = audit.IDFor(p.Seq)
		b, err := audit.Render(p)
		if err != nil {
			t.Fatalf("Render(%s): %v", r.Subtype, err)
		}
		out = append(out, b)
	}
	return out
}

func TestGolden(t *testing.T) {
	parts := rendered(t)
	var buf bytes.Buffer
	if err := json.Indent(&buf, append(append([]byte("["), bytes.Join(parts, []byte(","))...), ']'), "", "  "); err != nil {
		t.Fatal(err)
	}
	buf.WriteByte('\n')
	path := filepath.Join("testdata", "auditevents.json")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./audit -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), buf.String()); diff != "" {
		t.Errorf("%s mismatch (-want +got):\n%s", path, diff)
	}
}

// shape is what every AuditEvent must have (R4 cardinalities, BALP).
type shape struct {
	ResourceType string `json:"resourceType"`
	ID           string `json:"id"`
	Type         struct{ System, Code string }
	Subtype      []struct{ System, Code string }
	Action       string
	Recorded     string
	Outcome      string
	Agent        []struct {
		Type struct {
			Coding []struct{ System, Code string }
		}
		Requestor *bool
		Who       *struct {
			Identifier struct{ System, Value string }
		}
	}
	Source struct {
		Observer *struct {
			Type       string
			Identifier struct{ System, Value string }
		}
	}
	Entity []struct {
		What  *struct{ Reference string }
		Type  struct{ System, Code string }
		Role  *struct{ System, Code string }
		Query string
	}
}

func TestShape(t *testing.T) {
	for i, b := range rendered(t) {
		sub := examples()[i].Subtype
		if err := fhirjson.Validate(b); err != nil {
			t.Errorf("%s: does not validate: %v", sub, err)
		}
		var s shape
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatalf("%s: %v", sub, err)
		}
		if s.ResourceType != "AuditEvent" || s.ID != audit.IDFor(int64(i+1)) {
			t.Errorf("%s: %s/%s, want AuditEvent/%s", sub, s.ResourceType, s.ID, audit.IDFor(int64(i+1)))
		}
		if s.Type.System == "" || s.Type.Code == "" || len(s.Subtype) != 1 || s.Subtype[0].Code != string(sub) {
			t.Errorf("%s: type %+v subtype %+v", sub, s.Type, s.Subtype)
		}
		if s.Recorded != t0.Add(time.Duration(i)*time.Second).Format("2006-01-02T15:04:05.000Z07:00") {
			t.Errorf("%s: recorded %q", sub, s.Recorded)
		}
		if s.Action == "" || s.Outcome == "" {
			t.Errorf("%s: action %q outcome %q", sub, s.Action, s.Outcome)
		}
		requestors := 0
		for _, a := range s.Agent {
			if a.Requestor == nil {
				t.Errorf("%s: an agent without requestor", sub)
				continue
			}
			if *a.Requestor {
				requestors++
				if a.Who == nil || a.Who.Identifier.System != audit.ClientSystem || a.Who.Identifier.Value == "" {
					t.Errorf("%s: requestor without the client id: %+v", sub, a.Who)
				}
			}
			if len(a.Type.Coding) != 1 {
				t.Errorf("%s: agent type %+v", sub, a.Type)
			}
		}
		if requestors != 1 {
			t.Errorf("%s: %d requestors, want 1", sub, requestors)
		}
		if o := s.Source.Observer; o == nil || o.Type != "Device" || o.Identifier.System != audit.InstallationSystem || o.Identifier.Value != source {
			t.Errorf("%s: source.observer %+v", sub, o)
		}
	}
}

func TestBALPPatterns(t *testing.T) {
	type agent struct{ Code, Requestor string }
	// What BALP fixes for the client (requestor) and server agents, the
	// patient entity and the data or query entity.
	tests := []struct {
		sub        audit.Subtype
		typ        string
		action     string
		agents     []string // agent type codes, requestor first
		entityRole []string
	}{
		{audit.Read, "rest", "R", []string{"110152", "110153"}, []string{"1", "4"}},
		{audit.VRead, "rest", "R", []string{"110152", "110153"}, []string{"4"}},
		{audit.SearchType, "rest", "E", []string{"110153", "110152"}, []string{"1", "24"}},
		{audit.Create, "rest", "C", []string{"110153", "110152"}, []string{"4"}},
		{audit.Update, "rest", "U", []string{"110153", "110152"}, []string{"1", "4"}},
		{audit.Delete, "rest", "D", []string{"110150", "custodian"}, []string{"1", "4"}},
		{audit.TokenIssued, "110114", "E", []string{"110150", "authserver"}, []string{""}},
		{audit.ClientChange, "110113", "D", []string{"110150"}, []string{"13"}},
		{audit.OutboundWrite, "rest", "U", []string{"110153", "110152"}, []string{"1", "4", ""}},
		{audit.Prune, "110101", "D", []string{"110150"}, []string{""}},
	}
	all := rendered(t)
	for _, tt := range tests {
		t.Run(string(tt.sub), func(t *testing.T) {
			var b []byte
			for i, r := range examples() {
				if r.Subtype == tt.sub {
					b = all[i]
				}
			}
			var s shape
			if err := json.Unmarshal(b, &s); err != nil {
				t.Fatal(err)
			}
			var agents, roles []string
			for _, a := range s.Agent {
				agents = append(agents, a.Type.Coding[0].Code)
			}
			for _, e := range s.Entity {
				role := ""
				if e.Role != nil {
					role = e.Role.Code
				}
				roles = append(roles, role)
			}
			got := []any{s.Type.Code, s.Action, agents, roles}
			want := []any{tt.typ, tt.action, tt.agents, tt.entityRole}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("type, action, agents, entity roles (-want +got):\n%s", diff)
			}
		})
	}
}
