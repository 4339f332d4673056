package engine_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/adapter/ehrclient"
	"github.com/kapfhir/kapfhir/adapter/engine"
	"github.com/kapfhir/kapfhir/app"
	"github.com/kapfhir/kapfhir/endpoint"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/store/sqlite"
	"github.com/kapfhir/kapfhir/test/kaptest"
	"github.com/kapfhir/kapfhir/treatment"
)

// scriptedEHR is a small FHIR server for scripting what an EHR answers:
// which writes it supports, and which faults it injects. The real EHR
// behaviour is tested end to end against the test EHR (test/e2e).
type scriptedEHR struct {
	conditionalUpdate, conditionalCreate bool
	// transaction advertises transaction Bundles; txRefuse, when set, is
	// the status every transaction is answered with.
	transaction bool
	txRefuse    int
	// txMax, when set, refuses (400) a transaction of more entries, as
	// Medplum does past 8 conditional updates.
	txMax int
	// txBare answers a transaction with statuses only (no location, which
	// FHIR makes optional).
	txBare bool

	mu     sync.Mutex
	next   int
	stored map[string]map[string]string // type -> EHR id -> body (with id)
	reject map[string]bool              // identifier values answered 422
	// paged: a search for several identifiers answers with a next link.
	paged    bool
	requests []string // "METHOD path"
}

func newScriptedEHR() *scriptedEHR {
	return &scriptedEHR{stored: map[string]map[string]string{}, reject: map[string]bool{}}
}

var identRE = regexp.MustCompile(`"system":"([^"]+)","value":"([^"]+)"`)

// matches returns the EHR ids of typ resources carrying identifier sys|val.
func (e *scriptedEHR) matches(typ, ident string) []string {
	var out []string
	for id, body := range e.stored[typ] {
		for _, m := range identRE.FindAllStringSubmatch(body, -1) {
			if m[1]+"|"+m[2] == ident {
				out = append(out, id)
			}
		}
	}
	return out
}

func (e *scriptedEHR) put(typ, id, body string) {
	if e.stored[typ] == nil {
		e.stored[typ] = map[string]string{}
	}
	body = regexp.MustCompile(`^\{("id":"[^"]*",)?`).ReplaceAllString(body, `{"id":"`+id+`",`)
	e.stored[typ][id] = body
}

func (e *scriptedEHR) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	defer e.mu.Unlock()
	path := strings.TrimPrefix(strings.TrimPrefix(r.URL.Path, "/fhir"), "/")
	e.requests = append(e.requests, r.Method+" "+path)
	w.Header().Set("Content-Type", "application/fhir+json")
	body, _ := io.ReadAll(r.Body)
	typ, id, _ := strings.Cut(path, "/")
	ident := r.URL.Query().Get("identifier")
	for _, m := range identRE.FindAllStringSubmatch(string(body), -1) {
		if e.reject[m[2]] {
			w.WriteHeader(http.StatusUnprocessableEntity)
			io.WriteString(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"business-rule","diagnostics":"rejected"}]}`)
			return
		}
	}
	written := func(status int, id string) {
		w.Header().Set("Location", fmt.Sprintf("/fhir/%s/%s/_history/1", typ, id))
		w.Header().Set("ETag", `W/"1"`)
		w.WriteHeader(status)
	}
	switch {
	case path == "metadata":
		tx := ""
		if e.transaction {
			tx = `,"interaction":[{"code":"transaction"}]`
		}
		fmt.Fprintf(w, `{"resourceType":"CapabilityStatement","status":"active","date":"2026-01-01","kind":"instance","fhirVersion":"4.0.1","format":["json"],"rest":[{"mode":"server","resource":[%s]%s}]}`, e.resources(), tx)
	case r.Method == http.MethodPost && path == "":
		e.transact(w, body)
	case r.Method == http.MethodGet && id == "":
		// identifier=a,b,... is any of them (FHIR search OR).
		var entries []string
		for _, one := range strings.Split(ident, ",") {
			for _, id := range e.matches(typ, one) {
				entries = append(entries, `{"resource":`+e.stored[typ][id]+`,"search":{"mode":"match"}}`)
			}
		}
		link := ""
		if e.paged && strings.Contains(ident, ",") {
			link = `"link":[{"relation":"next","url":"http://ehr.test/fhir/Patient?page=2"}],`
		}
		fmt.Fprintf(w, `{"resourceType":"Bundle","type":"searchset",%s"entry":[%s]}`, link, strings.Join(entries, ","))
	case r.Method == http.MethodPut && id == "" && e.conditionalUpdate:
		ids := e.matches(typ, ident)
		switch len(ids) {
		case 0:
			e.next++
			nid := fmt.Sprintf("e%d", e.next)
			e.put(typ, nid, string(body))
			written(http.StatusCreated, nid)
		case 1:
			e.put(typ, ids[0], string(body))
			written(http.StatusOK, ids[0])
		default:
			w.WriteHeader(http.StatusPreconditionFailed)
			io.WriteString(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"duplicate"}]}`)
		}
	case r.Method == http.MethodPut && id != "":
		if _, ok := e.stored[typ][id]; !ok {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		e.put(typ, id, string(body))
		written(http.StatusOK, id)
	case r.Method == http.MethodPost && id == "":
		if ine := r.Header.Get("If-None-Exist"); ine != "" && e.conditionalCreate {
			if ids := e.matches(typ, strings.TrimPrefix(mustUnescape(ine), "identifier=")); len(ids) > 0 {
				written(http.StatusOK, ids[0])
				return
			}
		}
		e.next++
		nid := fmt.Sprintf("e%d", e.next)
		e.put(typ, nid, string(body))
		written(http.StatusCreated, nid)
	default:
		w.WriteHeader(http.StatusMethodNotAllowed)
	}
}

// transact applies a transaction Bundle of conditional updates, all or
// nothing: placeholders (urn:uuid fullUrls) are replaced with the ids
// assigned, a reference to a placeholder no entry has is refused (400), an
// identifier matching several resources refuses the Bundle (412).
func (e *scriptedEHR) transact(w http.ResponseWriter, body []byte) {
	fail := func(status int, code string) {
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":%q}]}`, code)
	}
	if e.txRefuse != 0 {
		fail(e.txRefuse, "not-supported")
		return
	}
	var b struct {
		ResourceType, Type string
		Entry              []struct {
			FullURL  string          `json:"fullUrl"`
			Resource json.RawMessage `json:"resource"`
			Request  struct{ Method, URL string }
		}
	}
	if err := json.Unmarshal(body, &b); err != nil || b.ResourceType != "Bundle" || b.Type != "transaction" {
		fail(http.StatusBadRequest, "structure")
		return
	}
	if e.txMax > 0 && len(b.Entry) > e.txMax {
		fail(http.StatusBadRequest, "too-costly")
		return
	}
	type planned struct{ typ, id, status, body string }
	var plan []planned
	ids := map[string]string{} // fullUrl -> Type/id
	next := e.next
	for _, en := range b.Entry {
		typ, q, _ := strings.Cut(en.Request.URL, "?")
		v, err := url.ParseQuery(q)
		if en.Request.Method != http.MethodPut || err != nil || v.Get("identifier") == "" {
			fail(http.StatusBadRequest, "not-supported")
			return
		}
		p := planned{typ: typ, status: "200 OK"}
		switch m := e.matches(typ, v.Get("identifier")); len(m) {
		case 0:
			next++
			p.id, p.status = fmt.Sprintf("e%d", next), "201 Created"
		case 1:
			p.id = m[0]
		default:
			fail(http.StatusPreconditionFailed, "duplicate")
			return
		}
		if en.FullURL != "" {
			ids[en.FullURL] = typ + "/" + p.id
		}
		p.body = string(en.Resource)
		plan = append(plan, p)
	}
	placeholder := regexp.MustCompile(`"reference":"(urn:uuid:[0-9a-f-]+)"`)
	for i := range plan {
		bad := false
		plan[i].body = placeholder.ReplaceAllStringFunc(plan[i].body, func(m string) string {
			ref, ok := ids[placeholder.FindStringSubmatch(m)[1]]
			bad = bad || !ok
			return `"reference":"` + ref + `"`
		})
		if bad {
			fail(http.StatusBadRequest, "not-found")
			return
		}
	}
	e.next = next
	var out []string
	for _, p := range plan {
		e.put(p.typ, p.id, p.body)
		if e.txBare {
			out = append(out, fmt.Sprintf(`{"response":{"status":%q}}`, p.status))
			continue
		}
		out = append(out, fmt.Sprintf(`{"response":{"status":%q,"location":"%s/%s/_history/1","etag":"W/\"1\""}}`, p.status, p.typ, p.id))
	}
	fmt.Fprintf(w, `{"resourceType":"Bundle","type":"transaction-response","entry":[%s]}`, strings.Join(out, ","))
}

func mustUnescape(s string) string {
	s = strings.ReplaceAll(s, "%7C", "|")
	return strings.ReplaceAll(s, "%3A", ":")
}

func (e *scriptedEHR) resources() string {
	var out []string
	for _, typ := range []string{"Patient", "Goal", "Appointment", "CarePlan", "Observation"} {
		out = append(out, fmt.Sprintf(`{"type":%q,"interaction":[{"code":"read"},{"code":"create"},{"code":"update"},{"code":"search-type"}],"conditionalUpdate":%v,"conditionalCreate":%v}`,
			typ, e.conditionalUpdate, e.conditionalCreate))
	}
	return strings.Join(out, ",")
}

// fixture is a store with one endpoint pointing at ehr and one enrolled
// patient (also in the EHR, by MRN).
type fixture struct {
	db     *sqlite.DB
	svc    *app.Service
	w      *engine.Worker
	ehr    *scriptedEHR
	ep     endpoint.Endpoint
	progID string
	patID  string
}

func newFixture(t *testing.T, ehr *scriptedEHR) *fixture {
	t.Helper()
	db := kaptest.Store(t)
	svc, err := app.New(t.Context(), app.Options{Store: db, Catalogue: kaptest.Catalogue(t), Calendar: treatment.DefaultCalendar(time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	return newFixtureOn(t, ehr, db, svc)
}

// newFixtureOn is newFixture on a given store and service.
func newFixtureOn(t *testing.T, ehr *scriptedEHR, db *sqlite.DB, svc *app.Service, opts ...func(*endpoint.Endpoint)) *fixture {
	t.Helper()
	ctx := t.Context()
	srv := httptest.NewServer(ehr)
	t.Cleanup(srv.Close)
	ep := endpoint.Defaults()
	ep.ID, ep.Name, ep.FHIRBaseURL = "ehr", "EHR", srv.URL+"/fhir"
	ep.Auth = endpoint.Auth{Type: endpoint.AuthNone}
	ep.PatientIdentifierSystem = "https://clinic.example/mrn"
	ep.RateLimit = endpoint.RateLimit{PerSecond: 1000, Burst: 1000}
	// Retries never come due during a test: each one runs until nothing is due.
	ep.Retry.MinBackoff, ep.Retry.MaxBackoff = endpoint.Duration(time.Hour), endpoint.Duration(time.Hour)
	for _, o := range opts {
		o(&ep)
	}
	now := time.Now().UTC()
	if err := db.PutEndpoint(ctx, endpoint.Stored{Endpoint: ep, Source: endpoint.SourceAPI, AuthState: endpoint.AuthOK, Created: now, Updated: now}); err != nil {
		t.Fatal(err)
	}
	ehr.put("Patient", "ehr-pat", `{"resourceType":"Patient","identifier":[{"system":"https://clinic.example/mrn","value":"M1"}]}`)
	p, err := svc.CreatePatient(ctx, app.PatientInput{Identifiers: []treatment.Identifier{{System: ep.PatientIdentifierSystem, Value: "M1"}}, Family: "Test", BirthDate: "1980-01-01", Gender: "other"})
	if err != nil {
		t.Fatal(err)
	}
	prog, err := svc.CreateProgram(ctx, app.ProgramInput{PatientID: p.ID, ProtocolID: "ketamine-iv-6x-3wk", Start: "2027-01-04T09:00", Timezone: "UTC"})
	if err != nil {
		t.Fatal(err)
	}
	client, err := ehrclient.New(ep, ehrclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	w := engine.New(engine.Options{Endpoint: ep, IdentifierSystem: svc.IdentifierSystem(), Source: svc.Installation(), Store: db, EHR: client, Owner: "test"})
	return &fixture{db: db, svc: svc, w: w, ehr: ehr, ep: ep, progID: prog.ID, patID: p.ID}
}

// enrol creates a patient with MRN mrn and a 6-infusion programme in
// kapfhir (not in the EHR).
func (f *fixture) enrol(t *testing.T, mrn string) {
	t.Helper()
	ctx := t.Context()
	p, err := f.svc.CreatePatient(ctx, app.PatientInput{Identifiers: []treatment.Identifier{{System: f.ep.PatientIdentifierSystem, Value: mrn}}, Family: "Test", BirthDate: "1980-01-01", Gender: "other"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.CreateProgram(ctx, app.ProgramInput{PatientID: p.ID, ProtocolID: "ketamine-iv-6x-3wk", Start: "2027-01-04T09:00", Timezone: "UTC"}); err != nil {
		t.Fatal(err)
	}
}

// allSucceeded requires every item to have succeeded, n of them.
func (f *fixture) allSucceeded(t *testing.T, n int) {
	t.Helper()
	if st := f.states(t); st[outbox.Succeeded] != n || st[outbox.Retrying]+st[outbox.Dead]+st[outbox.Pending]+st[outbox.InFlight] != 0 {
		t.Fatalf("states: %v, want %d succeeded", st, n)
	}
}

// run pushes until nothing is due now.
func (f *fixture) run(t *testing.T) {
	t.Helper()
	for range 100 {
		n, err := f.w.Once(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
	}
	t.Fatal("the queue did not settle")
}

func (f *fixture) states(t *testing.T) map[outbox.State]int {
	t.Helper()
	st, err := f.db.Stats(t.Context(), "ehr")
	if err != nil {
		t.Fatal(err)
	}
	return st.ByState
}

// each resource is in the EHR exactly once.
func (f *fixture) once(t *testing.T) int {
	t.Helper()
	items, err := f.db.Items(t.Context(), outbox.Filter{EndpointID: "ehr", Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		if n := len(f.ehr.matches(it.ResourceType, f.svc.IdentifierSystem()+"|"+it.ResourceID)); n != 1 {
			t.Errorf("%s/%s is in the EHR %d times", it.ResourceType, it.ResourceID, n)
		}
	}
	return len(items)
}

func TestWriteStrategies(t *testing.T) {
	for _, tt := range []struct {
		name                   string
		condUpdate, create, tx bool
		wantWrite              string
	}{
		{"transaction of conditional updates", true, true, true, "POST "},
		{"conditional update", true, true, false, "PUT CarePlan"},
		{"search, then create with If-None-Exist", false, true, false, "POST CarePlan"},
		{"search, then plain create", false, false, false, "POST CarePlan"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ehr := newScriptedEHR()
			ehr.conditionalUpdate, ehr.conditionalCreate, ehr.transaction = tt.condUpdate, tt.create, tt.tx
			f := newFixture(t, ehr)
			f.run(t)
			if st := f.states(t); st[outbox.Succeeded] == 0 || st[outbox.Dead]+st[outbox.Pending]+st[outbox.Retrying] != 0 {
				t.Fatalf("states after a sync: %v", st)
			}
			n := f.once(t)
			found := false
			for _, r := range ehr.requests {
				found = found || r == tt.wantWrite
			}
			if !found {
				t.Errorf("no %q among %v", tt.wantWrite, ehr.requests)
			}
			// A change goes out as an update of the same EHR resource.
			prog, _ := f.svc.Program(t.Context(), f.progID)
			if _, err := f.svc.UpdateSession(t.Context(), prog.Sessions[0].ID, app.SessionChange{Status: "booked"}); err != nil {
				t.Fatal(err)
			}
			f.run(t)
			if got := f.once(t); got != n {
				t.Errorf("%d items after the change, %d before", got, n)
			}
			// Replaying a succeeded item sends it again, still once in the EHR.
			if err := f.db.Replay(t.Context(), 1, "test", time.Now()); err != nil {
				t.Fatal(err)
			}
			f.run(t)
			f.once(t)
		})
	}
}

func TestRejectedContentIsDeadWithTheOutcome(t *testing.T) {
	for _, tx := range []bool{false, true} {
		t.Run(fmt.Sprintf("transaction %v", tx), func(t *testing.T) { testRejectedContent(t, tx) })
	}
}

// testRejectedContent: in a transaction, the refused Bundle is written
// again one resource at a time, so that only the rejected one is dead.
func testRejectedContent(t *testing.T, tx bool) {
	ehr := newScriptedEHR()
	ehr.conditionalUpdate, ehr.transaction = true, tx
	f := newFixture(t, ehr)
	prog, _ := f.svc.Program(t.Context(), f.progID)
	victim := prog.Sessions[0].ID
	ehr.reject[victim] = true
	f.run(t)
	items, err := f.db.Items(t.Context(), outbox.Filter{EndpointID: "ehr", State: outbox.Dead})
	if err != nil {
		t.Fatal(err)
	}
	if len(items) != 1 || items[0].ResourceID != victim || items[0].LastStatus != 422 || !strings.Contains(string(items[0].Outcome), "business-rule") {
		t.Fatalf("dead items: %+v", items)
	}
	if st := f.states(t); st[outbox.Succeeded] == 0 {
		t.Errorf("the other items were not sent: %v", st)
	}
	delete(ehr.reject, victim)
	if err := f.db.Replay(t.Context(), items[0].ID, "test", time.Now()); err != nil {
		t.Fatal(err)
	}
	f.run(t)
	if st := f.states(t); st[outbox.Dead] != 0 {
		t.Errorf("still dead after the fix and a replay: %v", st)
	}
}

func TestDuplicateInTheEHRIsReportedNotFixed(t *testing.T) {
	for _, tt := range []struct{ condUpdate, tx bool }{{true, true}, {true, false}, {false, false}} {
		t.Run(fmt.Sprintf("conditional update %v, transaction %v", tt.condUpdate, tt.tx), func(t *testing.T) {
			ehr := newScriptedEHR()
			ehr.conditionalUpdate, ehr.conditionalCreate, ehr.transaction = tt.condUpdate, true, tt.tx
			f := newFixture(t, ehr)
			prog, _ := f.svc.Program(t.Context(), f.progID)
			dup := prog.Sessions[1].ID
			body := `{"resourceType":"Appointment","status":"booked","identifier":[{"system":"` + f.svc.IdentifierSystem() + `","value":"` + dup + `"}]}`
			ehr.put("Appointment", "x1", body)
			ehr.put("Appointment", "x2", body)
			f.run(t)
			items, _ := f.db.Items(t.Context(), outbox.Filter{EndpointID: "ehr", State: outbox.Dead})
			if len(items) != 1 || items[0].ResourceID != dup || !strings.Contains(items[0].LastError, "duplicate") {
				all, _ := f.db.Items(t.Context(), outbox.Filter{EndpointID: "ehr"})
				for _, it := range all {
					if it.ResourceID == dup {
						t.Logf("item %+v", it)
					}
				}
				t.Fatalf("dead items: %+v", items)
			}
			if n := len(ehr.matches("Appointment", f.svc.IdentifierSystem()+"|"+dup)); n != 2 {
				t.Errorf("the engine wrote to the duplicates: %d copies", n)
			}
		})
	}
}

func TestUnknownPatientRetriesWithoutWriting(t *testing.T) {
	ehr := newScriptedEHR()
	ehr.conditionalUpdate = true
	f := newFixture(t, ehr)
	delete(ehr.stored["Patient"], "ehr-pat")
	if _, err := f.w.Once(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, r := range ehr.requests {
		if strings.HasPrefix(r, "PUT") || strings.HasPrefix(r, "POST") {
			t.Errorf("wrote %s for a patient the EHR does not know", r)
		}
	}
	items, _ := f.db.Items(t.Context(), outbox.Filter{EndpointID: "ehr", State: outbox.Retrying})
	if len(items) == 0 || !strings.Contains(items[0].LastError, "no patient") {
		t.Errorf("retrying items: %+v", items)
	}
}

// Patients are looked up in the EHR together: one search for the batches
// about to be leased, each answer used by its own batch (found, missing or
// duplicated).
func TestPatientsLookedUpTogether(t *testing.T) {
	ehr := newScriptedEHR()
	ehr.conditionalUpdate = true
	f := newFixture(t, ehr)
	ctx := t.Context()
	mrns := []string{"M2", "M3", "M4", "M5", "M6"}
	for _, mrn := range mrns {
		switch mrn {
		case "M4": // not in the EHR
		case "M5": // twice in the EHR
			ehr.put("Patient", "ehr-"+mrn+"a", `{"resourceType":"Patient","identifier":[{"system":"https://clinic.example/mrn","value":"`+mrn+`"}]}`)
			ehr.put("Patient", "ehr-"+mrn+"b", `{"resourceType":"Patient","identifier":[{"system":"https://clinic.example/mrn","value":"`+mrn+`"}]}`)
		default:
			ehr.put("Patient", "ehr-"+mrn, `{"resourceType":"Patient","identifier":[{"system":"https://clinic.example/mrn","value":"`+mrn+`"}]}`)
		}
		f.enrol(t, mrn)
	}
	f.run(t)
	searches := 0
	for _, r := range ehr.requests {
		if r == "GET Patient" {
			searches++
		}
	}
	if searches != 1 {
		t.Errorf("%d patient searches for 6 patients, want 1: %v", searches, ehr.requests)
	}
	items, err := f.db.Items(ctx, outbox.Filter{EndpointID: "ehr", State: outbox.Retrying, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	problems := map[string]bool{}
	for _, it := range items {
		problems[it.LastError] = true
	}
	want := map[string]bool{
		"the EHR has no patient with this patient's identifier in https://clinic.example/mrn":                                   true,
		"the EHR has 2 patients with this patient's identifier in https://clinic.example/mrn (duplicate: reconcile in the EHR)": true,
	}
	if diff := cmp.Diff(want, problems); diff != "" {
		t.Errorf("retrying items' errors (-want +got):\n%s", diff)
	}
	// The four patients the EHR knows once are fully synced.
	if st := f.states(t); st[outbox.Succeeded] != 4*16 {
		t.Errorf("states: %v, want %d succeeded", st, 4*16)
	}
}

// A resource whose only change is a reference to something the EHR does not
// hold yet prepares to the body last sent: it is unchanged now, but must be
// written again once the target exists (found by a second full sync that
// wrote a Goal: its baseline Observation reference had been lost).
func TestUnchangedBodyWithDeferredReferenceIsCompleted(t *testing.T) {
	ehr := newScriptedEHR()
	ehr.conditionalUpdate = true
	f := newFixture(t, ehr)
	ctx := t.Context()
	f.run(t)
	if _, _, err := f.svc.AddMeasurement(ctx, app.MeasurementInput{ProgramID: f.progID, Measurement: treatment.Measurement{
		Instrument: "phq9", Items: []int{3, 3, 2, 2, 2, 2, 2, 2, 1}, Effective: time.Now().Add(-time.Hour),
	}}); err != nil {
		t.Fatal(err)
	}
	f.run(t)
	if st := f.states(t); st[outbox.Retrying]+st[outbox.Pending]+st[outbox.Dead] != 0 {
		t.Fatalf("states: %v", st)
	}
	// Every Goal that references an Observation in kapfhir does so in the EHR.
	items, err := f.db.Items(ctx, outbox.Filter{EndpointID: "ehr", Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	obs := 0
	for _, it := range items {
		if it.ResourceType != "Goal" {
			continue
		}
		v, err := f.db.Read(ctx, "Goal", it.ResourceID)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(v.JSON), `"Observation/`) {
			continue
		}
		obs++
		ehr.mu.Lock()
		body := ehr.stored["Goal"][it.EHRID]
		ehr.mu.Unlock()
		if !strings.Contains(body, `"Observation/`) {
			t.Errorf("Goal %s references an Observation in kapfhir but not in the EHR: %s", it.ResourceID, body)
		}
	}
	if obs == 0 {
		t.Fatal("no Goal references the measurement; the test no longer tests anything")
	}
	// A second full sync sends nothing.
	before := len(ehr.requests)
	if _, err := f.db.Backfill(ctx, "ehr", f.ep.ResourceTypes, time.Now()); err != nil {
		t.Fatal(err)
	}
	f.run(t)
	for _, r := range ehr.requests[before:] {
		if strings.HasPrefix(r, "PUT") || strings.HasPrefix(r, "POST") {
			t.Errorf("a second full sync wrote: %s", r)
		}
	}
}

// An EHR that pages the OR-ed look-up: each patient is then looked up on
// its own, and every batch still resolves its patient.
func TestPagedPatientLookUpFallsBackToOneByOne(t *testing.T) {
	ehr := newScriptedEHR()
	ehr.conditionalUpdate, ehr.paged = true, true
	f := newFixture(t, ehr)
	for _, mrn := range []string{"M2", "M3"} {
		ehr.put("Patient", "ehr-"+mrn, `{"resourceType":"Patient","identifier":[{"system":"https://clinic.example/mrn","value":"`+mrn+`"}]}`)
		f.enrol(t, mrn)
	}
	f.run(t)
	if st := f.states(t); st[outbox.Succeeded] != 3*16 || st[outbox.Retrying] != 0 {
		t.Errorf("states: %v, want %d succeeded", st, 3*16)
	}
	f.once(t)
}
