package e2e

import (
	"database/sql"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	_ "modernc.org/sqlite" // to tamper with the audit table directly

	"github.com/kapfhir/kapfhir/auth"
)

// TestAuditTrail drives the real binary with real tokens: roles cannot
// cross, an auditor finds who read and wrote a patient's data, the chain
// verifies through the API and the CLI, and an edit made directly in the
// database file is detected.
func TestAuditTrail(t *testing.T) {
	in := start(t)
	pat := in.json(t, "POST", "/api/v1/patients", map[string]any{
		"identifier": []any{map[string]any{"system": "https://clinic.example/mrn", "value": "AUD-1"}},
		"name":       map[string]any{"family": family}, "birthDate": birthDate, "gender": "female",
	}, 201)
	id := pat["id"].(string)
	if r := in.do(t, "GET", "/fhir/Patient/"+id, nil); r.status != 200 {
		t.Fatalf("clinic reads the patient: %d", r.status)
	}

	// Role crossing and missing tokens, with tokens from the real endpoint.
	for _, tt := range []struct {
		role         auth.Role
		method, path string
		want         int
	}{
		{"", "GET", "/fhir/Patient/" + id, 401},
		{auth.RoleEHR, "GET", "/api/v1/endpoints", 403},
		{auth.RoleEHR, "POST", "/api/v1/clients", 403},
		{auth.RoleAuditor, "POST", "/api/v1/patients", 403},
		{auth.RoleAuditor, "GET", "/fhir/Patient/" + id, 403},
		{auth.RoleAdmin, "GET", "/fhir/Patient/" + id, 403},
		{auth.RoleClinic, "GET", "/fhir/AuditEvent", 403},
		{auth.RoleEHR, "GET", "/fhir/Patient/" + id, 200},
	} {
		r := in.doAs(t, tt.role, tt.method, tt.path, map[string]any{})
		if r.status != tt.want {
			t.Errorf("%s %s as %q: %d, want %d: %s", tt.method, tt.path, tt.role, r.status, tt.want, r.body)
		}
		if tt.want == 401 && !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("401 without a Bearer challenge")
		}
	}

	// The auditor's question: who saw or changed this patient's data?
	var b auditEvents
	r := in.do(t, "GET", "/fhir/AuditEvent?patient="+id+"&_count=100", nil)
	if r.status != 200 {
		t.Fatalf("AuditEvent search: %d %s", r.status, r.body)
	}
	if err := json.Unmarshal(r.body, &b); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range b.Entry {
		for _, a := range e.Resource.Agent {
			if a.Requestor && len(e.Resource.Subtype) > 0 {
				seen[e.Resource.Subtype[0].Code+" by "+a.Who.Identifier.Value] = true
			}
		}
	}
	for _, want := range []string{"create by e2e-clinic", "read by e2e-clinic", "read by e2e-ehr", "read by e2e-auditor"} {
		if !seen[want] {
			t.Errorf("the audit trail of the patient lacks %q: %v", want, seen)
		}
	}
	if v := in.json(t, "GET", "/api/v1/audit/verify", nil, 200); v["intact"] != true {
		t.Errorf("audit verify: %v", v)
	}
	in.stop(t)

	verify := func() (string, error) {
		cmd := exec.Command(binary, "audit", "verify")
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "KAPFHIR_DATA_DIR=" + in.dataDir}
		out, err := cmd.Output()
		return string(out), err
	}
	if out, err := verify(); err != nil || !strings.HasPrefix(out, "intact, ") {
		t.Fatalf("kapfhir audit verify: %q, %v", out, err)
	}
	db, err := sql.Open("sqlite", filepath.Join(in.dataDir, "kapfhir.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`UPDATE audit_events SET client_id = 'someone-else' WHERE seq = 3`); err != nil {
		t.Fatal(err)
	}
	out, err := verify()
	if err == nil || !strings.Contains(out, "NOT INTACT: record 3") {
		t.Errorf("after editing record 3 in the database: %q, %v", out, err)
	}
}

// TestRetentionPrunesOnStart: with a retention configured, the real binary
// prunes before it serves (and every audit.pruneEvery after): the prune is
// in the trail, by kapfhir itself, and the chain verifies.
func TestRetentionPrunesOnStart(t *testing.T) {
	in := start(t, "KAPFHIR_AUDIT_RETENTION=24h")
	var b auditEvents
	r := in.do(t, "GET", "/fhir/AuditEvent?subtype=prune", nil)
	if err := json.Unmarshal(r.body, &b); err != nil || r.status != 200 {
		t.Fatalf("AuditEvent?subtype=prune: %d %s", r.status, r.body)
	}
	var by []string
	for _, e := range b.Entry {
		for _, a := range e.Resource.Agent {
			if a.Requestor {
				by = append(by, a.Who.Identifier.Value)
			}
		}
	}
	if len(b.Entry) != 1 || len(by) != 1 || by[0] != "kapfhir" {
		t.Errorf("prune records: %d, by %v; want one, by kapfhir", len(b.Entry), by)
	}
	if v := in.json(t, "GET", "/api/v1/audit/verify", nil, 200); v["intact"] != true {
		t.Errorf("audit verify after the prune: %v", v)
	}
}

// auditEvents is what these tests read of an AuditEvent search: each
// event's subtypes and agents.
type auditEvents struct {
	Entry []struct {
		Resource struct {
			Subtype []struct{ Code string } `json:"subtype"`
			Agent   []struct {
				Requestor bool `json:"requestor"`
				Who       struct {
					Identifier struct{ Value string } `json:"identifier"`
				} `json:"who"`
			} `json:"agent"`
		} `json:"resource"`
	} `json:"entry"`
}
