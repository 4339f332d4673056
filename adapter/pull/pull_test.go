package pull_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/adapter/ehrclient"
	"github.com/kapfhir/kapfhir/adapter/pull"
	"github.com/kapfhir/kapfhir/app"
	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/endpoint"
	"github.com/kapfhir/kapfhir/store"
	"github.com/kapfhir/kapfhir/test/kaptest"
	"github.com/kapfhir/kapfhir/treatment"
)

// appointmentsEHR answers appointment searches with one appointment (or
// with status, when it is set).
type appointmentsEHR struct {
	mu      sync.Mutex
	body    string
	status  int
	queries []string
}

func (e *appointmentsEHR) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.queries = append(e.queries, r.URL.RawQuery)
	w.Header().Set("Content-Type", "application/fhir+json")
	if e.status != 0 {
		w.WriteHeader(e.status)
		fmt.Fprint(w, `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception"}]}`)
		return
	}
	fmt.Fprint(w, e.body)
}

// Every poll is an inbound-poll audit record in the transaction that moves
// the high-water mark: what it found and applied, the mark, and for a
// failed poll the EHR's status (the mark does not move).
func TestPollsAreAudited(t *testing.T) {
	ctx := t.Context()
	db := kaptest.Store(t)
	svc, err := app.New(ctx, app.Options{Store: db, Catalogue: kaptest.Catalogue(t), Calendar: treatment.DefaultCalendar(time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	p, err := svc.CreatePatient(ctx, app.PatientInput{Identifiers: []treatment.Identifier{{System: "https://clinic.example/mrn", Value: "M1"}}, Family: "Test", BirthDate: "1980-01-01", Gender: "other"})
	if err != nil {
		t.Fatal(err)
	}
	prog, err := svc.CreateProgram(ctx, app.ProgramInput{PatientID: p.ID, ProtocolID: "ketamine-iv-6x-3wk", Start: "2027-01-04T09:00", Timezone: "UTC"})
	if err != nil {
		t.Fatal(err)
	}
	var dose string
	for _, s := range prog.Sessions {
		if s.Kind == treatment.SessionDosing {
			dose = s.ID
			break
		}
	}
	lastUpdated := "2027-01-03T10:00:00.5Z"
	ehr := &appointmentsEHR{body: `{"resourceType":"Bundle","type":"searchset","entry":[{"search":{"mode":"match"},"resource":` +
		`{"resourceType":"Appointment","id":"e1","meta":{"versionId":"2","lastUpdated":"` + lastUpdated + `"},"status":"cancelled",` +
		`"identifier":[{"system":"` + svc.IdentifierSystem() + `","value":"` + dose + `"}]}}]}`}
	srv := httptest.NewServer(ehr)
	t.Cleanup(srv.Close)
	ep := endpoint.Defaults()
	ep.ID, ep.Name, ep.FHIRBaseURL = "ehr", "EHR", srv.URL+"/fhir"
	ep.Auth = endpoint.Auth{Type: endpoint.AuthNone}
	ep.PatientIdentifierSystem = "https://clinic.example/mrn"
	ep.Pull = endpoint.Pull{Enabled: true, IntervalSeconds: 60}
	client, err := ehrclient.New(ep, ehrclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2027, 1, 3, 12, 0, 0, 0, time.UTC)
	poller := pull.New(pull.Options{Endpoint: ep, IdentifierSystem: svc.IdentifierSystem(), Source: svc.Installation(), Store: db, Sessions: svc, EHR: client, Now: func() time.Time { return now }})

	type poll struct {
		applied int
		failed  bool
		outcome audit.Outcome
		detail  map[string]string
	}
	hwm := "2027-01-03T10:00:00.5Z"
	tests := []struct {
		name   string
		status int // the EHR's answer (0: the appointment)
		want   poll
		query  string // in the record's query entity
	}{
		{"first poll applies the cancellation", 0, poll{applied: 1, outcome: audit.Success,
			detail: map[string]string{"found": "1", "applied": "1", "refused": "0", "high-water-mark": hwm}}, "identifier="},
		{"second poll finds it again, applies nothing", 0, poll{applied: 0, outcome: audit.Success,
			detail: map[string]string{"found": "1", "applied": "0", "refused": "0", "high-water-mark": hwm}}, "_lastUpdated=ge2027-01-03T09%3A55%3A00Z"},
		{"failed poll", http.StatusInternalServerError, poll{failed: true, outcome: audit.MinorFailure,
			detail: map[string]string{"found": "0", "applied": "0", "refused": "0", "high-water-mark": hwm, "status": "500"}}, "_lastUpdated="},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ehr.mu.Lock()
			ehr.status = tt.status
			ehr.mu.Unlock()
			n, err := poller.Once(ctx)
			if (err != nil) != tt.want.failed || n != tt.want.applied {
				t.Fatalf("Once = %d, %v; want %d applied, failed %v", n, err, tt.want.applied, tt.want.failed)
			}
			page, err := db.AuditEvents(ctx, audit.Filter{Subtypes: []audit.Subtype{audit.InboundPoll}, EndpointID: "ehr"})
			if err != nil {
				t.Fatal(err)
			}
			if len(page.Records) != i+1 {
				t.Fatalf("%d inbound-poll records after %d polls", len(page.Records), i+1)
			}
			r := page.Records[0] // newest
			got := poll{applied: n, failed: tt.want.failed, outcome: r.Outcome, detail: r.Detail}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(poll{})); diff != "" {
				t.Errorf("poll (-want +got):\n%s", diff)
			}
			if len(r.Entities) != 1 || !strings.Contains(r.Entities[0].Query, tt.query) {
				t.Errorf("query entity %+v, want one containing %q", r.Entities, tt.query)
			}
			if r.Agent != audit.System || r.Source != svc.Installation() || r.Time != now {
				t.Errorf("agent %+v, source %q, time %v", r.Agent, r.Source, r.Time)
			}
			var mark string
			if err := db.InTx(ctx, func(tx store.Tx) error {
				mark, err = tx.Meta(ctx, "pull.hwm.ehr")
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if mark != hwm {
				t.Errorf("stored high-water mark %q, want %q", mark, hwm)
			}
		})
	}
	if rep, err := db.VerifyAudit(ctx); err != nil || !rep.Intact {
		t.Errorf("audit chain: %v %+v", err, rep)
	}
}
