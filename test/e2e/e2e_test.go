// Package e2e runs the real kapfhir binary on port :0 against a fresh
// embedded store and drives it over HTTP the way a clinic and an EHR would.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kapfhir/kapfhir/auth"
	"github.com/kapfhir/kapfhir/fhir/fhirjson"
	"github.com/kapfhir/kapfhir/test/fhirvalidate"
)

// binary is the kapfhir binary built once for the package's tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kapfhir-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "kapfhir")
	build := exec.Command("go", "build", "-o", binary, "github.com/kapfhir/kapfhir/cmd/kapfhir")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building kapfhir:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// instance is a running kapfhir.
type instance struct {
	base    string // http://127.0.0.1:port
	dataDir string
	tokens  map[auth.Role]string
	cmd     *exec.Cmd
	stderr  *logBuffer
	done    chan error
}

// logBuffer collects the process's stderr; tests read it while the process
// still writes.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

var listenRE = regexp.MustCompile(`kapfhir listening on (http://\S+) `)

// start runs `kapfhir serve` on 127.0.0.1:0 with a fresh data directory and
// waits for it to print its address.
func start(t *testing.T, extraEnv ...string) *instance {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cmd := exec.Command(binary, "serve")
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"KAPFHIR_LISTEN=127.0.0.1:0",
		"KAPFHIR_DATA_DIR=" + t.TempDir(),
		"KAPFHIR_SHUTDOWN_TIMEOUT=5s",
	}, extraEnv...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	inst := &instance{cmd: cmd, stderr: &logBuffer{}, done: make(chan error, 1)}
	for _, kv := range cmd.Env {
		if v, ok := strings.CutPrefix(kv, "KAPFHIR_DATA_DIR="); ok {
			inst.dataDir = v // the last one wins, as in the process
		}
	}
	cmd.Stderr = inst.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := listenRE.FindStringSubmatch(sc.Text()); m != nil {
				addr <- m[1]
			}
		}
		close(addr)
		inst.done <- cmd.Wait()
	}()
	select {
	case a, ok := <-addr:
		if !ok {
			t.Fatalf("kapfhir exited before listening; stderr:\n%s", inst.stderr)
		}
		inst.base = a
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		t.Fatalf("kapfhir did not start in time; stderr:\n%s", inst.stderr)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	})
	inst.login(t)
	return inst
}

// stop sends SIGTERM and requires a clean exit.
func (in *instance) stop(t *testing.T) {
	t.Helper()
	if err := in.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-in.done:
		if err != nil {
			t.Fatalf("kapfhir exited with %v after SIGTERM; stderr:\n%s", err, in.stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("kapfhir did not shut down within 30s of SIGTERM")
	}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (in *instance) do(t *testing.T, method, path string, body any) response {
	t.Helper()
	p := path
	if u, err := url.Parse(path); err == nil && u.IsAbs() {
		p = u.Path
	}
	return in.doAs(t, roleFor(p), method, path, body)
}

// doAs makes a request with role's token (none for role "").
func (in *instance) doAs(t *testing.T, role auth.Role, method, path string, body any) response {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		r = bytes.NewReader(b)
	}
	u := path
	if !strings.HasPrefix(path, "http") {
		u = in.base + path
	}
	req, err := http.NewRequestWithContext(t.Context(), method, u, r)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if tok := in.tokens[role]; tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: res.StatusCode, header: res.Header, body: b}
}

func (in *instance) json(t *testing.T, method, path string, body any, wantStatus int) map[string]any {
	t.Helper()
	res := in.do(t, method, path, body)
	if res.status != wantStatus {
		t.Fatalf("%s %s = %d, want %d: %s", method, path, res.status, wantStatus, res.body)
	}
	var out map[string]any
	if err := json.Unmarshal(res.body, &out); err != nil {
		t.Fatalf("%s %s: %v: %s", method, path, err, res.body)
	}
	return out
}

func sessionsOf(t *testing.T, prog map[string]any) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, s := range prog["sessions"].([]any) {
		out = append(out, s.(map[string]any))
	}
	return out
}

const (
	family    = "Zzyzxtestfamily"
	birthDate = "1979-03-14"
)

// TestClinicScenario enrols a patient, schedules a 6-infusion programme,
// books, fulfils and cancels sessions, records measurements, adds a booster
// plan, then pulls everything as FHIR and checks it: both validators, every
// reference resolves, versions and history, and no PHI in the logs.
func TestClinicScenario(t *testing.T) {
	in := start(t)

	meta := in.do(t, "GET", "/fhir/metadata", nil)
	if meta.status != 200 || !strings.HasPrefix(meta.header.Get("Content-Type"), "application/fhir+json") {
		t.Fatalf("metadata = %d %q", meta.status, meta.header.Get("Content-Type"))
	}

	protos := in.json(t, "GET", "/api/v1/protocols", nil, 200)
	var ids []string
	for _, p := range protos["protocols"].([]any) {
		ids = append(ids, p.(map[string]any)["id"].(string))
	}
	for _, want := range []string{
		"ketamine-iv-6x-3wk", "ketamine-iv-6x-2wk-study", "kap-spaced-3to6", "sublingual-foundation-8",
		"sublingual-extended-24", "booster-3to6mo", "maintenance-weekly", "maintenance-biweekly",
		"maintenance-monthly", "booster-on-relapse",
	} {
		if !contains(ids, want) {
			t.Errorf("protocol %s missing from %v", want, ids)
		}
	}

	pat := in.json(t, "POST", "/api/v1/patients", map[string]any{
		"identifier": []any{map[string]any{"system": "https://clinic.example/mrn", "value": "E2E-1"}},
		"name":       map[string]any{"family": family, "given": []string{"Testgiven"}},
		"birthDate":  birthDate, "gender": "female",
	}, 201)
	patientID := pat["id"].(string)

	// The programme starts on the first Monday at least a week from now, 09:00 New York time.
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().In(ny)
	first := time.Date(now.Year(), now.Month(), now.Day()+7, 9, 0, 0, 0, ny)
	for first.Weekday() != time.Monday {
		first = first.AddDate(0, 0, 1)
	}
	prog := in.json(t, "POST", "/api/v1/programs", map[string]any{
		"patientId": patientID, "protocolId": "ketamine-iv-6x-3wk",
		"start": first.Format("2006-01-02T15:04"), "timezone": "America/New_York",
	}, 201)
	programID := prog["id"].(string)
	var doses []map[string]any
	for _, s := range sessionsOf(t, prog) {
		if s["kind"] == "dosing" {
			doses = append(doses, s)
		}
	}
	if len(doses) != 6 {
		t.Fatalf("got %d dosing sessions, want 6: %v", len(doses), prog["sessions"])
	}
	if want := first.Format(time.RFC3339); doses[0]["start"] != want {
		t.Errorf("first dose starts %v, want %s", doses[0]["start"], want)
	}

	d1 := doses[0]["id"].(string)
	in.json(t, "PATCH", "/api/v1/sessions/"+d1, map[string]any{"status": "booked"}, 200)
	in.json(t, "PATCH", "/api/v1/sessions/"+d1, map[string]any{"status": "fulfilled"}, 200)
	after := in.json(t, "PATCH", "/api/v1/sessions/"+doses[1]["id"].(string), map[string]any{"status": "cancelled"}, 200)
	replaced := false
	for _, s := range sessionsOf(t, after["program"].(map[string]any)) {
		if s["replaces"] == doses[1]["id"] {
			replaced = true
		}
	}
	if !replaced {
		t.Error("the cancelled dose was not replaced")
	}

	eff := now.Add(-2 * time.Hour).Format(time.RFC3339)
	for _, m := range []map[string]any{
		{"instrument": "phq9", "items": []int{3, 3, 2, 2, 2, 2, 2, 2, 1}, "sessionId": d1},
		{"instrument": "gad7", "items": []int{2, 2, 2, 2, 1, 1, 1}, "sessionId": d1},
		{"instrument": "bp", "systolic": 128, "diastolic": 82, "sessionId": d1},
		{"instrument": "hr", "value": 72, "sessionId": d1},
		{"instrument": "spo2", "value": 98, "sessionId": d1},
		{"instrument": "sleep", "value": 6.5},
	} {
		m["programId"] = programID
		m["effective"] = eff
		in.json(t, "POST", "/api/v1/measurements", m, 201)
	}
	res := in.json(t, "POST", "/api/v1/measurements", map[string]any{
		"programId": programID, "instrument": "phq9", "total": 8, "effective": now.Add(-time.Hour).Format(time.RFC3339),
	}, 201)
	if out := res["outcome"].(map[string]any); out["response"] != true {
		t.Errorf("PHQ-9 19 -> 8 is a response; outcome = %v", out)
	}
	in.json(t, "POST", "/api/v1/programs/"+programID+"/boosters", map[string]any{"protocolId": "booster-3to6mo"}, 201)

	// Pull everything as FHIR, the way an EHR would.
	all := map[string][]byte{} // "Type/id" -> stored JSON
	for _, typ := range []string{"Patient", "CarePlan", "Appointment", "Observation", "Goal", "PlanDefinition"} {
		for next := "/fhir/" + typ + "?_count=7"; next != ""; {
			r := in.do(t, "GET", next, nil)
			if r.status != 200 {
				t.Fatalf("GET %s = %d: %s", next, r.status, r.body)
			}
			if err := fhirjson.Validate(r.body); err != nil {
				t.Fatalf("searchset Bundle from %s fails jsonformat validation: %v", next, err)
			}
			var b bundle
			if err := json.Unmarshal(r.body, &b); err != nil {
				t.Fatal(err)
			}
			next = ""
			for _, l := range b.Link {
				if l.Relation == "next" {
					next = l.URL
				}
			}
			for _, e := range b.Entry {
				var h struct{ ResourceType, ID string }
				if err := json.Unmarshal(e.Resource, &h); err != nil {
					t.Fatal(err)
				}
				all[h.ResourceType+"/"+h.ID] = e.Resource
				if e.FullURL != in.base+"/fhir/"+h.ResourceType+"/"+h.ID {
					t.Errorf("fullUrl %s, want %s", e.FullURL, in.base+"/fhir/"+h.ResourceType+"/"+h.ID)
				}
			}
		}
	}
	counts := map[string]int{}
	for k := range all {
		counts[strings.Split(k, "/")[0]]++
	}
	if counts["Patient"] != 1 || counts["CarePlan"] != 2 || counts["Goal"] != 2 || counts["Observation"] != 7 || counts["PlanDefinition"] < 10 || counts["Appointment"] < 14 {
		t.Errorf("resource counts = %v", counts)
	}

	// Every resource passes jsonformat's validating unmarshal and a second,
	// independent validator; every reference between them resolves.
	var batch [][]byte
	keys := make([]string, 0, len(all))
	for k := range all {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := fhirjson.Validate(all[k]); err != nil {
			t.Errorf("%s fails jsonformat validation: %v", k, err)
		}
		batch = append(batch, all[k])
		for _, ref := range references(t, all[k]) {
			if _, ok := all[ref]; !ok {
				t.Errorf("%s references %s, which the server does not have", k, ref)
			}
		}
		for _, canon := range canonicals(t, all[k]) {
			u, _, _ := strings.Cut(canon, "|")
			r := in.do(t, "GET", "/fhir/PlanDefinition?url="+url.QueryEscape(u), nil)
			var b bundle
			_ = json.Unmarshal(r.body, &b)
			if r.status != 200 || b.Total != 1 {
				t.Errorf("%s instantiates %s, which resolves to %d PlanDefinitions (status %d)", k, canon, b.Total, r.status)
			}
		}
	}
	fhirvalidate.Require(t)
	if err := fhirvalidate.Validate(t.Context(), batch); err != nil {
		t.Errorf("independent FHIR validator: %v", err)
	}

	// Read, vread and history of the induction CarePlan.
	planID := prog["plans"].([]any)[0].(map[string]any)["id"].(string)
	cur := in.do(t, "GET", "/fhir/CarePlan/"+planID, nil)
	if cur.status != 200 || cur.header.Get("ETag") == "" || cur.header.Get("Last-Modified") == "" {
		t.Fatalf("read CarePlan = %d, ETag %q, Last-Modified %q", cur.status, cur.header.Get("ETag"), cur.header.Get("Last-Modified"))
	}
	if !bytes.Equal(cur.body, all["CarePlan/"+planID]) {
		t.Error("read and search serve different bytes for the same version")
	}
	hist := in.json(t, "GET", "/fhir/CarePlan/"+planID+"/_history", nil, 200)
	if n := len(hist["entry"].([]any)); n < 2 {
		t.Errorf("CarePlan history has %d versions, want several after the session changes", n)
	}
	if r := in.do(t, "GET", "/fhir/CarePlan/"+planID+"/_history/1", nil); r.status != 200 || r.header.Get("ETag") != `W/"1"` {
		t.Errorf("vread v1 = %d, ETag %q", r.status, r.header.Get("ETag"))
	}
	inc := in.json(t, "GET", "/fhir/CarePlan?patient="+patientID+"&_include=CarePlan:activity-reference", nil, 200)
	if n := len(inc["entry"].([]any)); n != counts["CarePlan"]+counts["Appointment"] {
		t.Errorf("_include=CarePlan:activity-reference returned %d entries, want %d", n, counts["CarePlan"]+counts["Appointment"])
	}
	if r := in.do(t, "GET", "/fhir/CarePlan/does-not-exist", nil); r.status != 404 || !bytes.Contains(r.body, []byte(`"OperationOutcome"`)) {
		t.Errorf("unknown CarePlan = %d %s, want 404 OperationOutcome", r.status, r.body)
	}
	if r := in.do(t, "GET", "/api/v1/programs/does-not-exist", nil); r.status != 404 || r.header.Get("Content-Type") != "application/problem+json" {
		t.Errorf("unknown programme = %d %q, want 404 problem+json", r.status, r.header.Get("Content-Type"))
	}

	in.stop(t)
	logs := in.stderr.String()
	for _, phi := range []string{family, "Testgiven", birthDate} {
		if strings.Contains(logs, phi) {
			t.Errorf("the log contains PHI %q", phi)
		}
	}
}

// TestRestartKeepsData stops the server and starts it again on the same data:
// the programme and its FHIR resources are still there, unchanged.
func TestRestartKeepsData(t *testing.T) {
	dir := t.TempDir()
	in := start(t, "KAPFHIR_DATA_DIR="+dir)
	pat := in.json(t, "POST", "/api/v1/patients", map[string]any{
		"identifier": []any{map[string]any{"system": "https://clinic.example/mrn", "value": "E2E-2"}},
		"name":       map[string]any{"family": family}, "birthDate": birthDate, "gender": "male",
	}, 201)
	before := in.do(t, "GET", "/fhir/Patient/"+pat["id"].(string), nil)
	in.stop(t)

	again := start(t, "KAPFHIR_DATA_DIR="+dir)
	after := again.do(t, "GET", "/fhir/Patient/"+pat["id"].(string), nil)
	if after.status != 200 || !bytes.Equal(before.body, after.body) {
		t.Errorf("after restart: %d, same bytes %v", after.status, bytes.Equal(before.body, after.body))
	}
	again.stop(t)
}

type bundle struct {
	Total int `json:"total"`
	Link  []struct {
		Relation string `json:"relation"`
		URL      string `json:"url"`
	} `json:"link"`
	Entry []struct {
		FullURL  string          `json:"fullUrl"`
		Resource json.RawMessage `json:"resource"`
	} `json:"entry"`
}

// references returns every relative "reference" in a resource.
func references(t *testing.T, b []byte) []string {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	var out []string
	walk(v, func(k string, s string) {
		if k == "reference" && !strings.HasPrefix(s, "#") {
			out = append(out, s)
		}
	})
	return out
}

func canonicals(t *testing.T, b []byte) []string {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	var out []string
	if cs, ok := v["instantiatesCanonical"].([]any); ok {
		for _, c := range cs {
			out = append(out, c.(string))
		}
	}
	return out
}

func walk(v any, f func(key, s string)) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if s, ok := e.(string); ok {
				f(k, s)
			}
			walk(e, f)
		}
	case []any:
		for _, e := range x {
			walk(e, f)
		}
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
