package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kapfhir/kapfhir/test/ehrtest"
	"github.com/kapfhir/kapfhir/test/fhirvalidate"
)

const (
	mrnSystem  = "https://clinic.example/mrn"
	endpointID = "test-ehr"
	syncTypes  = "Goal,Appointment,CarePlan,Observation"
)

// syncEnv is a test EHR (Medplum's FHIR engine, SMART Backend Services on)
// and a kapfhir configuration that syncs to it.
type syncEnv struct {
	ehr     *ehrtest.EHR
	cfgPath string
	dataDir string
}

// newSyncEnv starts the test EHR; oneByOne makes it an EHR without
// transaction Bundles, to which kapfhir writes one resource at a time.
func newSyncEnv(t *testing.T, oneByOne bool) *syncEnv {
	t.Helper()
	ehrtest.Require(t)
	ehr := ehrtest.Start(t, ehrtest.Options{Auth: true, NoTransactions: oneByOne})
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "kapfhir-key.pem")
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	ehr.RegisterClient(t, "kapfhir", "k1", &key.PublicKey)
	cfg := fmt.Sprintf(`sync:
  leaseFor: 3s
  poll: 50ms
endpoints:
  - id: %s
    name: Test EHR
    fhirBaseUrl: %s
    auth:
      type: smart-backend
      clientId: kapfhir
      kid: k1
      alg: ES384
      privateKeyFile: %s
      scope: system/Patient.rs system/Appointment.cruds system/CarePlan.cruds system/Observation.cruds system/Goal.cruds
    patientIdentifierSystem: %s
    concurrency: 4
    rateLimit: {perSecond: 500, burst: 100}
    timeoutSeconds: 10
    retry: {maxAttempts: 6, minBackoff: 20ms, maxBackoff: 300ms, maxRetryAfter: 2s}
    pull: {enabled: true, intervalSeconds: 3600}
`, endpointID, ehr.BaseURL, keyPath, mrnSystem)
	cfgPath := filepath.Join(dir, "kapfhir.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return &syncEnv{ehr: ehr, cfgPath: cfgPath, dataDir: filepath.Join(dir, "data")}
}

func (s *syncEnv) start(t *testing.T) *instance {
	return start(t, "KAPFHIR_CONFIG="+s.cfgPath, "KAPFHIR_DATA_DIR="+s.dataDir)
}

// enrol creates a patient in the EHR and in kapfhir (same MRN), with an
// IV programme, a PHQ-9 and a booster plan; it returns kapfhir's ids.
func (s *syncEnv) enrol(t *testing.T, in *instance, mrn string) (patientID, programID string) {
	t.Helper()
	body := fmt.Sprintf(`{"resourceType":"Patient","identifier":[{"system":%q,"value":%q}],"gender":"unknown"}`, mrnSystem, mrn)
	if st, b := s.ehr.AdminFHIR(t, "POST", "Patient", []byte(body)); st != 201 {
		t.Fatalf("creating the EHR's patient: %d %s", st, b)
	}
	pat := in.json(t, "POST", "/api/v1/patients", map[string]any{
		"identifier": []any{map[string]any{"system": mrnSystem, "value": mrn}},
		"name":       map[string]any{"family": family}, "birthDate": birthDate, "gender": "female",
	}, 201)
	patientID = pat["id"].(string)
	prog := in.json(t, "POST", "/api/v1/programs", map[string]any{
		"patientId": patientID, "protocolId": "ketamine-iv-6x-3wk", "start": "2026-12-07T09:00", "timezone": "America/New_York",
	}, 201)
	programID = prog["id"].(string)
	in.json(t, "POST", "/api/v1/measurements", map[string]any{
		"programId": programID, "instrument": "phq9", "items": []int{3, 3, 2, 2, 2, 2, 2, 2, 1}, "effective": "2026-11-20T08:30:00-05:00",
	}, 201)
	in.json(t, "POST", "/api/v1/programs/"+programID+"/boosters", map[string]any{"protocolId": "booster-3to6mo"}, 201)
	return patientID, programID
}

// drain waits (long poll) until the endpoint's queue has drained and
// returns its status.
func drain(t *testing.T, in *instance) map[string]any {
	t.Helper()
	st := in.json(t, "GET", "/api/v1/endpoints/"+endpointID+"/status?wait=drained&timeout=5m", nil, 200)
	if st["drained"] != true {
		t.Fatalf("queue did not drain: %v\nstderr:\n%s", st, in.stderr)
	}
	return st
}

// ours lists every resource kapfhir holds that is synced, as "Type/id".
func ours(t *testing.T, in *instance) []string {
	t.Helper()
	var out []string
	for _, typ := range strings.Split(syncTypes, ",") {
		eachPage(t, in, "/fhir/"+typ+"?_count=1000", func(b bundle) {
			for _, e := range b.Entry {
				var r struct{ ID string }
				_ = json.Unmarshal(e.Resource, &r)
				out = append(out, typ+"/"+r.ID)
			}
		})
	}
	return out
}

// eachPage GETs path and every next page, passing each searchset to page.
func eachPage(t *testing.T, in *instance, path string, page func(bundle)) {
	t.Helper()
	for path != "" {
		res := in.do(t, "GET", path, nil)
		var b bundle
		if err := json.Unmarshal(res.body, &b); err != nil || res.status != 200 {
			t.Fatalf("GET %s: %d %v %s", path, res.status, err, res.body)
		}
		page(b)
		path = ""
		for _, l := range b.Link {
			if l.Relation == "next" {
				path = l.URL
			}
		}
	}
}

// identifierSystem returns kapfhir's identifier system.
func identifierSystem(t *testing.T, in *instance, key string) string {
	t.Helper()
	res := in.do(t, "GET", "/fhir/"+key, nil)
	var r struct {
		Identifier []struct{ System, Value string }
	}
	if err := json.Unmarshal(res.body, &r); err != nil || len(r.Identifier) == 0 {
		t.Fatalf("%s has no identifier: %s", key, res.body)
	}
	return r.Identifier[0].System
}

// checkEHR requires every synced kapfhir resource to exist in the EHR
// exactly once (by kapfhir's identifier), and every reference between the
// EHR's copies to resolve.
func checkEHR(t *testing.T, s *syncEnv, in *instance) int {
	t.Helper()
	keys := ours(t, in)
	if len(keys) == 0 {
		t.Fatal("kapfhir holds nothing to sync")
	}
	system := identifierSystem(t, in, keys[0])
	for _, k := range keys {
		typ, id, _ := strings.Cut(k, "/")
		if n := s.ehr.Count(t, typ, system, id); n != 1 {
			t.Errorf("%s is in the EHR %d times, want exactly once", k, n)
		}
	}
	// Every reference in the EHR's copies resolves inside the EHR.
	exists := map[string]bool{}
	var refs []string
	for _, typ := range append(strings.Split(syncTypes, ","), "Patient") {
		var b bundle
		if err := json.Unmarshal(s.ehr.Search(t, typ+"?_count=10000"), &b); err != nil {
			t.Fatal(err)
		}
		for _, e := range b.Entry {
			var r struct{ ID string }
			_ = json.Unmarshal(e.Resource, &r)
			exists[typ+"/"+r.ID] = true
			refs = append(refs, references(t, e.Resource)...)
		}
	}
	for _, r := range refs {
		if !exists[r] {
			t.Errorf("EHR reference %s does not resolve", r)
		}
	}
	return len(keys)
}

// syncClean enrols patients (MRNs prefix00, prefix01, ...) and drains:
// nothing dead, everything in the EHR exactly once; it returns how many
// resources kapfhir holds to sync.
func syncClean(t *testing.T, s *syncEnv, in *instance, prefix string, patients int) int {
	t.Helper()
	for i := range patients {
		s.enrol(t, in, fmt.Sprintf("%s%02d", prefix, i))
	}
	st := drain(t, in)
	if st["dead"].(float64) != 0 {
		t.Fatalf("dead items after a clean sync: %v", st)
	}
	n := checkEHR(t, s, in)
	t.Logf("%d resources synced", n)
	return n
}

// secondSyncSendsNothing queues everything again: every body hashes as
// last sent, so nothing is written and no write recorded (sent records so far).
func secondSyncSendsNothing(t *testing.T, s *syncEnv, in *instance, sent int) {
	t.Helper()
	before := writes(s.ehr.Counters(t))
	in.json(t, "POST", "/api/v1/endpoints/"+endpointID+"/backfill", nil, 202)
	drain(t, in)
	if after := writes(s.ehr.Counters(t)); after != before {
		t.Errorf("a second full sync wrote %d times", after-before)
	}
	if got := count(t, in, "/fhir/AuditEvent?subtype=outbound-write&_count=1000"); got != sent {
		t.Errorf("a second full sync recorded %d outbound writes", got-sent)
	}
}

// warnings returns kapfhir's log lines at WARN or ERROR (ids only: the
// logs carry no PHI), for a failure message.
func warnings(log string) string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// transactions counts the transaction Bundles the EHR received.
func transactions(c ehrtest.Counters) int { return c.ByRoute["POST /"] }

// writes counts the FHIR write requests the EHR received (not token requests).
func writes(c ehrtest.Counters) int {
	n := 0
	for route, v := range c.ByRoute {
		if route == "POST /auth/token" {
			continue
		}
		if strings.HasPrefix(route, "PUT") || strings.HasPrefix(route, "POST") || strings.HasPrefix(route, "PATCH") || strings.HasPrefix(route, "DELETE") {
			n += v
		}
	}
	return n
}

// TestSyncToEHR syncs programmes to a real third-party FHIR server (the
// test EHR, which takes transaction Bundles) through the real binary:
// everything arrives exactly once, in transactions, a second full sync
// writes nothing, and a second round under 429/503/reset faults and token
// expiry still delivers everything exactly once.
func TestSyncToEHR(t *testing.T) {
	s := newSyncEnv(t, false)
	in := s.start(t)
	n := syncClean(t, s, in, "MRN-A", 3)
	// Batches went as transactions (a batch left with one resource to
	// send goes on its own); the CarePlan ↔ Appointment cycle never needed
	// a CarePlan written on its own.
	if c := s.ehr.Counters(t); transactions(c) == 0 || c.ByRoute["PUT CarePlan?identifier"] != 0 {
		t.Errorf("%d writes, of which %d transactions (%v %v)", writes(c), transactions(c), c.ByRoute, c.ByStatus)
	}
	// Operators see how it writes: Medplum takes at most 8 entries per
	// transaction once any is a conditional update, and kapfhir learned a
	// bound within that (the largest Bundle that went through where a
	// larger one did not: 8, or less when halving undershot).
	st := in.json(t, "GET", "/api/v1/endpoints/"+endpointID+"/status", nil, 200)
	if w, _ := st["writes"].(map[string]any); w["strategy"] != "transaction" || w["maxTransactionEntries"] == nil || w["maxTransactionEntries"].(float64) > 8 || w["maxTransactionEntries"].(float64) < 2 {
		t.Errorf("status writes: %v", st["writes"])
	}
	secondSyncSendsNothing(t, s, in, checkSentRecords(t, in, n))

	t.Run("faults", func(t *testing.T) {
		// Tokens live 4 s (kapfhir renews at half-life), so they expire and
		// are renewed again and again during this sync.
		s.ehr.SetTokenLifetime(t, 4*time.Second)
		defer s.ehr.SetTokenLifetime(t, time.Hour)
		s.ehr.SetFaults(t, ehrtest.Faults{Rate429: 0.2, RetryAfterSeconds: 1, Rate503: 0.1, RateReset: 0.01, Seed: 42})
		for i := range 3 {
			_, prog := s.enrol(t, in, fmt.Sprintf("MRN-F%02d", i))
			p := in.json(t, "GET", "/api/v1/programs/"+prog, nil, 200)
			ss := sessionsOf(t, p)
			in.json(t, "PATCH", "/api/v1/sessions/"+ss[0]["id"].(string), map[string]any{"status": "booked"}, 200)
		}
		s.ehr.ExpireTokens(t) // every cached token is now refused once
		st := drain(t, in)
		s.ehr.ClearFaults(t)
		if st["dead"].(float64) != 0 {
			t.Errorf("dead items under transient faults: %v", st)
		}
		checkEHR(t, s, in)
	})

	t.Run("EHR down, then back", func(t *testing.T) {
		s.ehr.SetFaults(t, ehrtest.Faults{Down: true})
		s.enrol(t, in, "MRN-D01")
		st := in.json(t, "GET", "/api/v1/endpoints/"+endpointID+"/status", nil, 200)
		if st["backlog"].(float64) == 0 {
			t.Errorf("nothing queued while the EHR is down: %v", st)
		}
		s.ehr.ClearFaults(t)
		drain(t, in)
		checkEHR(t, s, in)
	})

	t.Run("rejected resource is dead, then replayed", func(t *testing.T) {
		_, prog := s.enrol(t, in, "MRN-R01")
		drain(t, in)
		p := in.json(t, "GET", "/api/v1/programs/"+prog, nil, 200)
		victim := sessionsOf(t, p)[0]["id"].(string)
		s.ehr.SetFaults(t, ehrtest.Faults{RejectIdentifiers: []string{victim}})
		in.json(t, "PATCH", "/api/v1/sessions/"+victim, map[string]any{"status": "booked"}, 200)
		st := drain(t, in)
		if st["dead"].(float64) < 1 {
			t.Fatalf("no dead item: %v", st)
		}
		items := in.json(t, "GET", "/api/v1/sync/items?"+url.Values{"endpoint": {endpointID}, "state": {"dead"}}.Encode(), nil, 200)["items"].([]any)
		if len(items) != 1 {
			t.Fatalf("dead items: %v", items)
		}
		item := items[0].(map[string]any)
		if item["resourceId"] != victim || item["operationOutcome"] == nil {
			t.Errorf("dead item lacks the EHR's OperationOutcome or is the wrong one: %v", item)
		}
		s.ehr.ClearFaults(t)
		id := fmt.Sprint(int64(item["id"].(float64)))
		in.json(t, "POST", "/api/v1/sync/items/"+id+"/replay", nil, 200)
		drain(t, in)
		if got := in.json(t, "GET", "/api/v1/sync/items/"+id, nil, 200); got["state"] != "succeeded" {
			t.Errorf("replayed item: %v", got)
		}
		log := in.json(t, "GET", "/api/v1/sync/log?endpoint="+endpointID, nil, 200)["events"].([]any)
		replayed := false
		for _, e := range log {
			if e.(map[string]any)["action"] == "replayed" {
				replayed = true
			}
		}
		if !replayed {
			t.Error("the replay is not in the sync log")
		}
		checkEHR(t, s, in)
	})

	t.Run("appointment cancelled in the EHR", func(t *testing.T) {
		_, prog := s.enrol(t, in, "MRN-P01")
		drain(t, in)
		p := in.json(t, "GET", "/api/v1/programs/"+prog, nil, 200)
		var dose string
		for _, ss := range sessionsOf(t, p) {
			if ss["kind"] == "dosing" {
				dose = ss["id"].(string)
				break
			}
		}
		system := identifierSystem(t, in, "Appointment/"+dose)
		var b bundle
		if err := json.Unmarshal(s.ehr.Search(t, "Appointment?identifier="+url.QueryEscape(system+"|"+dose)), &b); err != nil || len(b.Entry) != 1 {
			t.Fatalf("the EHR's appointment: %v", err)
		}
		var appt map[string]any
		_ = json.Unmarshal(b.Entry[0].Resource, &appt)
		appt["status"] = "cancelled"
		delete(appt, "participant")
		appt["participant"] = []any{map[string]any{"actor": map[string]any{"reference": "Patient/" + patientRef(t, b.Entry[0].Resource)}, "status": "declined"}}
		body, _ := json.Marshal(appt)
		if st, rb := s.ehr.AdminFHIR(t, "PUT", "Appointment/"+appt["id"].(string), body); st != 200 {
			t.Fatalf("cancelling in the EHR: %d %s", st, rb)
		}
		if got := in.json(t, "POST", "/api/v1/endpoints/"+endpointID+"/pull", nil, 200); got["applied"].(float64) != 1 {
			t.Fatalf("pull applied %v changes, want 1; sync log: %s\nstderr:\n%s", got, in.do(t, "GET", "/api/v1/sync/log?limit=5", nil).body, in.stderr)
		}
		p = in.json(t, "GET", "/api/v1/programs/"+prog, nil, 200)
		for _, ss := range sessionsOf(t, p) {
			if ss["id"] == dose && ss["status"] != "cancelled" {
				t.Errorf("session after the EHR cancelled it: %v", ss)
			}
		}
		drain(t, in)
		checkEHR(t, s, in)
		// The updated CarePlan reached the EHR: it lists the replacement dose
		// under the EHR's id for it.
		var replacement string
		for _, ss := range sessionsOf(t, p) {
			if ss["replaces"] == dose {
				replacement = ss["id"].(string)
			}
		}
		if replacement == "" {
			t.Fatalf("no session replaces the cancelled dose: %v", p["sessions"])
		}
		var rb bundle
		if err := json.Unmarshal(s.ehr.Search(t, "Appointment?identifier="+url.QueryEscape(system+"|"+replacement)), &rb); err != nil || len(rb.Entry) != 1 {
			t.Fatalf("the replacement dose is not in the EHR exactly once: %v, %d", err, len(rb.Entry))
		}
		var ra struct{ ID string }
		_ = json.Unmarshal(rb.Entry[0].Resource, &ra)
		var plans bundle
		if err := json.Unmarshal(s.ehr.Search(t, "CarePlan?identifier="+url.QueryEscape(system+"|")+"&_count=1000"), &plans); err != nil {
			t.Fatal(err)
		}
		listed := false
		for _, e := range plans.Entry {
			if contains(references(t, e.Resource), "Appointment/"+ra.ID) {
				listed = true
			}
		}
		if !listed {
			t.Errorf("no CarePlan in the EHR references the replacement dose Appointment/%s", ra.ID)
		}
		// Pulling again applies nothing: the EHR and kapfhir agree.
		if got := in.json(t, "POST", "/api/v1/endpoints/"+endpointID+"/pull", nil, 200); got["applied"].(float64) != 0 {
			t.Errorf("second pull applied %v changes", got)
		}
		// Each poll is in the audit trail, the one that applied the
		// cancellation among them.
		polls := in.do(t, "GET", "/fhir/AuditEvent?subtype=inbound-poll&agent="+url.QueryEscape("https://kapfhir.org/fhir/sid/endpoint|"+endpointID)+"&_count=100", nil)
		var pb bundle
		if err := json.Unmarshal(polls.body, &pb); err != nil || polls.status != 200 || len(pb.Entry) < 2 {
			t.Fatalf("inbound-poll AuditEvents: %d %v, %d entries", polls.status, err, len(pb.Entry))
		}
		if !strings.Contains(string(polls.body), `{"type":"applied","valueString":"1"}`) {
			t.Errorf("no inbound-poll record shows the change applied: %s", polls.body)
		}
	})
	t.Run("endpoint administration", func(t *testing.T) {
		bad := in.do(t, "POST", "/api/v1/endpoints", map[string]any{
			"id": "Bad ID", "fhirBaseUrl": "http://169.254.169.254/latest", "auth": map[string]any{"type": "bearer"}, "concurrency": 0,
		})
		if bad.status != 422 || !strings.Contains(bad.header.Get("Content-Type"), "problem+json") {
			t.Fatalf("invalid endpoint: %d %s", bad.status, bad.body)
		}
		for _, field := range []string{`"id"`, `"name"`, `"fhirBaseUrl"`, `"auth.token"`, `"patientIdentifierSystem"`, `"concurrency"`} {
			if !strings.Contains(string(bad.body), field) {
				t.Errorf("problem does not name %s: %s", field, bad.body)
			}
		}
		created := in.do(t, "POST", "/api/v1/endpoints", map[string]any{
			"id": "second-ehr", "name": "Second EHR", "fhirBaseUrl": "https://ehr2.example.org/fhir",
			"auth":                    map[string]any{"type": "client-secret", "clientId": "kapfhir", "clientSecret": "s3cret-value"},
			"patientIdentifierSystem": mrnSystem, "enabled": false,
		})
		if created.status != 201 || strings.Contains(string(created.body), "s3cret-value") || !strings.Contains(string(created.body), "[redacted]") {
			t.Fatalf("create: %d %s", created.status, created.body)
		}
		if res := in.do(t, "POST", "/api/v1/endpoints", map[string]any{"id": "second-ehr", "name": "x", "fhirBaseUrl": "https://ehr2.example.org/fhir",
			"auth": map[string]any{"type": "none"}, "patientIdentifierSystem": mrnSystem}); res.status != 409 {
			t.Errorf("duplicate id: %d %s", res.status, res.body)
		}
		upd := in.do(t, "PUT", "/api/v1/endpoints/second-ehr", map[string]any{
			"name": "Second EHR, renamed", "fhirBaseUrl": "https://ehr2.example.org/fhir",
			"auth": map[string]any{"type": "client-secret", "clientId": "kapfhir"}, "patientIdentifierSystem": mrnSystem, "enabled": false,
		})
		if upd.status != 200 || !strings.Contains(string(upd.body), "renamed") || !strings.Contains(string(upd.body), "[redacted]") {
			t.Errorf("update keeping the secret: %d %s", upd.status, upd.body)
		}
		if res := in.do(t, "PUT", "/api/v1/endpoints/"+endpointID, map[string]any{"name": "x"}); res.status != 409 {
			t.Errorf("changing a configured endpoint: %d %s", res.status, res.body)
		}
		list := in.do(t, "GET", "/api/v1/endpoints", nil)
		if strings.Contains(string(list.body), "s3cret-value") || !strings.Contains(string(list.body), "second-ehr") {
			t.Errorf("list: %s", list.body)
		}
		if res := in.do(t, "DELETE", "/api/v1/endpoints/second-ehr", nil); res.status != 204 {
			t.Errorf("delete: %d %s", res.status, res.body)
		}
		report := in.json(t, "POST", "/api/v1/endpoints/"+endpointID+"/test", nil, 200)
		if report["ok"] != true {
			t.Errorf("endpoint test: %v", report)
		}
		if !strings.Contains(in.stderr.String(), "endpoint created") || strings.Contains(in.stderr.String(), "s3cret-value") {
			t.Errorf("logs: endpoint changes must be logged, secrets never")
		}
	})
	in.stop(t)

	// The command line, on the same data, with the server stopped.
	cli := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(binary, args...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "KAPFHIR_CONFIG=" + s.cfgPath, "KAPFHIR_DATA_DIR=" + s.dataDir}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("kapfhir %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := cli("endpoints", "test", endpointID); !strings.Contains(out, "Result: the endpoint works.") || !strings.Contains(out, "transaction Bundles of conditional updates") {
		t.Errorf("endpoints test:\n%s", out)
	}
	if out := cli("endpoints", "list"); !strings.Contains(out, endpointID) {
		t.Errorf("endpoints list:\n%s", out)
	}
	if out := cli("sync", "reconcile", "-endpoint", endpointID); !strings.Contains(out, " 0 missing, 0 drifted, 0 duplicated, 0 unknown") {
		t.Errorf("reconcile of a synced EHR:\n%s\nkapfhir's warnings:\n%s", out, warnings(in.stderr.String()))
	}
	// Someone deletes a CarePlan in the EHR: reconcile finds it, -repair and
	// a backfill put it back.
	var plans bundle
	if err := json.Unmarshal(s.ehr.Search(t, "CarePlan?_count=1"), &plans); err != nil || len(plans.Entry) == 0 {
		t.Fatalf("no CarePlan in the EHR: %v", err)
	}
	var victim struct{ ID string }
	_ = json.Unmarshal(plans.Entry[0].Resource, &victim)
	if st, b := s.ehr.AdminFHIR(t, "DELETE", "CarePlan/"+victim.ID, nil); st != 200 && st != 204 {
		t.Fatalf("deleting in the EHR: %d %s", st, b)
	}
	if out := cli("sync", "reconcile", "-endpoint", endpointID, "-repair"); !strings.Contains(out, " 1 missing,") || !strings.Contains(out, "1 queued again") {
		t.Errorf("reconcile after a deletion in the EHR:\n%s", out)
	}
	if out := cli("sync", "backfill", "-endpoint", endpointID); !strings.Contains(out, "done in") || !strings.Contains(out, "ETA") {
		t.Errorf("backfill:\n%s", out)
	}
	if out := cli("sync", "reconcile", "-endpoint", endpointID); !strings.Contains(out, " 0 missing, 0 drifted, 0 duplicated, 0 unknown") {
		t.Errorf("reconcile after the repair:\n%s", out)
	}
}

// total is the total of a search answered with a Bundle.
func total(t *testing.T, in *instance, path string) int {
	t.Helper()
	res := in.do(t, "GET", path, nil)
	var b bundle
	if err := json.Unmarshal(res.body, &b); err != nil || res.status != 200 {
		t.Fatalf("GET %s: %d %v %s", path, res.status, err, res.body)
	}
	return b.Total
}

// count counts the entries of a search, page by page (AuditEvent searches
// have no total).
func count(t *testing.T, in *instance, path string) int {
	t.Helper()
	n := 0
	eachPage(t, in, path, func(b bundle) { n += len(b.Entry) })
	return n
}

// checkSentRecords checks, as an auditor, what kapfhir recorded of a sync
// that sent n resources: at least one outbound-write AuditEvent and one
// Provenance per resource, found by target, valid FHIR. It returns the
// number of outbound-write AuditEvents.
func checkSentRecords(t *testing.T, in *instance, n int) int {
	t.Helper()
	writes := count(t, in, "/fhir/AuditEvent?subtype=outbound-write&_count=1000")
	if writes < n {
		t.Errorf("%d outbound-write AuditEvents for %d resources sent", writes, n)
	}
	if provs := total(t, in, "/fhir/Provenance?_summary=count"); provs < n {
		t.Errorf("%d Provenances for %d resources sent", provs, n)
	}
	var plan string
	for _, k := range ours(t, in) {
		if strings.HasPrefix(k, "CarePlan/") {
			plan = k
			break
		}
	}
	res := in.do(t, "GET", "/fhir/Provenance?target="+plan, nil)
	var b bundle
	if err := json.Unmarshal(res.body, &b); err != nil || res.status != 200 || len(b.Entry) == 0 {
		t.Fatalf("Provenance?target=%s: %d %v %s", plan, res.status, err, res.body)
	}
	var docs [][]byte
	for _, e := range b.Entry {
		var p struct {
			Target []struct{ Reference string } `json:"target"`
		}
		if err := json.Unmarshal(e.Resource, &p); err != nil || len(p.Target) == 0 || !strings.HasPrefix(p.Target[0].Reference, plan+"/_history/") {
			t.Errorf("Provenance of %s targets %v", plan, p.Target)
		}
		docs = append(docs, e.Resource)
	}
	entity := in.do(t, "GET", "/fhir/AuditEvent?subtype=outbound-write&entity="+plan, nil)
	var eb bundle
	if err := json.Unmarshal(entity.body, &eb); err != nil || entity.status != 200 || len(eb.Entry) == 0 {
		t.Errorf("AuditEvent?subtype=outbound-write&entity=%s: %d %v, %d entries", plan, entity.status, err, len(eb.Entry))
	}
	t.Run("Provenance is valid FHIR", func(t *testing.T) {
		fhirvalidate.Require(t)
		if err := fhirvalidate.Validate(t.Context(), docs); err != nil {
			t.Errorf("independent FHIR validator: %v", err)
		}
	})
	return writes
}

// patientRef returns the id in the first participant's Patient reference.
func patientRef(t *testing.T, appt []byte) string {
	for _, r := range references(t, appt) {
		if strings.HasPrefix(r, "Patient/") {
			return strings.TrimPrefix(r, "Patient/")
		}
	}
	t.Fatal("appointment without a patient")
	return ""
}

// TestSyncOneByOne syncs to an EHR that takes no transaction Bundles:
// kapfhir writes one resource at a time by conditional update, resolving
// the CarePlan ↔ Appointment cycle itself; everything arrives exactly
// once, valid, and a second full sync writes nothing.
func TestSyncOneByOne(t *testing.T) {
	s := newSyncEnv(t, true)
	in := s.start(t)
	n := syncClean(t, s, in, "MRN-O", 2)
	if c := s.ehr.Counters(t); transactions(c) != 0 || c.ByRoute["PUT CarePlan?identifier"] == 0 {
		t.Errorf("writes to an EHR without transactions: %v", c.ByRoute)
	}
	st := in.json(t, "GET", "/api/v1/endpoints/"+endpointID+"/status", nil, 200)
	if w, _ := st["writes"].(map[string]any); w["strategy"] != "per-resource" || w["maxTransactionEntries"] != nil {
		t.Errorf("status writes: %v", st["writes"])
	}
	secondSyncSendsNothing(t, s, in, checkSentRecords(t, in, n))
}

// TestSyncSurvivesKill kills kapfhir (SIGKILL) in the middle of a sync and
// restarts it on the same data: nothing is lost and nothing duplicated,
// whether it was writing transactions or one resource at a time.
func TestSyncSurvivesKill(t *testing.T) {
	for _, tt := range []struct {
		name      string
		oneByOne  bool
		latencyMS int
	}{
		// Latencies long enough that the sync is still running when the
		// last enrolment is queued (a transaction carries a whole batch).
		{"transactions", false, 300},
		{"one by one", true, 40},
	} {
		t.Run(tt.name, func(t *testing.T) { testSyncSurvivesKill(t, tt.oneByOne, tt.latencyMS) })
	}
}

func testSyncSurvivesKill(t *testing.T, oneByOne bool, latencyMS int) {
	s := newSyncEnv(t, oneByOne)
	s.ehr.SetFaults(t, ehrtest.Faults{LatencyMS: latencyMS})
	in := s.start(t)
	for i := range 6 {
		s.enrol(t, in, fmt.Sprintf("MRN-K%02d", i))
	}
	st := in.json(t, "GET", "/api/v1/endpoints/"+endpointID+"/status", nil, 200)
	if st["backlog"].(float64) == 0 {
		t.Fatalf("the sync finished before the kill; nothing was tested: %v", st)
	}
	if err := in.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-in.done
	s.ehr.ClearFaults(t)
	again := s.start(t)
	drain(t, again)
	checkEHR(t, s, again)
	again.stop(t)
}
