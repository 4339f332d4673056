package fhir_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/labstack/echo/v4"
	"google.golang.org/protobuf/testing/protocmp"

	bcrpb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/bundle_and_contained_resource_go_proto"
	cspb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/capability_statement_go_proto"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/fhir"
	"github.com/kapfhir/kapfhir/fhir/fhirjson"
	"github.com/kapfhir/kapfhir/treatment"
)

// fakeAudit is an in-memory AuditReader with the store's filter semantics
// (store.Audit); it records every filter so tests can check what the
// surface asked for. The real stores are tested by store/storetest.
type fakeAudit struct {
	recs    []audit.Record // by seq, ascending
	filters []audit.Filter
	err     error
}

func (f *fakeAudit) AuditEvents(_ context.Context, flt audit.Filter) (audit.Page, error) {
	f.filters = append(f.filters, flt)
	if f.err != nil {
		return audit.Page{}, f.err
	}
	limit := flt.Limit
	if limit <= 0 {
		limit = 100
	}
	recs := slices.Clone(f.recs)
	if !flt.Oldest {
		slices.Reverse(recs)
	}
	var page audit.Page
	for _, r := range recs {
		switch {
		case flt.Cursor > 0 && flt.Oldest && r.Seq <= flt.Cursor,
			flt.Cursor > 0 && !flt.Oldest && r.Seq >= flt.Cursor,
			!flt.From.IsZero() && r.Time.Before(flt.From),
			!flt.To.IsZero() && !r.Time.Before(flt.To),
			flt.ClientID != "" && r.Agent.ClientID != flt.ClientID,
			flt.EndpointID != "" && r.EndpointID != flt.EndpointID,
			flt.PatientID != "" && r.PatientID != flt.PatientID,
			len(flt.Types) > 0 && !slices.Contains(flt.Types, r.Type),
			len(flt.Subtypes) > 0 && !slices.Contains(flt.Subtypes, r.Subtype),
			len(flt.Outcomes) > 0 && !slices.Contains(flt.Outcomes, r.Outcome):
			continue
		}
		if flt.Entity != "" {
			key := audit.RefKey(flt.Entity)
			if key == "" {
				key = flt.Entity
			}
			if !slices.Contains(r.Keys(), key) {
				continue
			}
		}
		if len(page.Records) == limit {
			page.Next = page.Records[limit-1].Seq
			break
		}
		page.Records = append(page.Records, r)
	}
	return page, nil
}

func (f *fakeAudit) AuditEvent(_ context.Context, id string) (audit.Record, error) {
	if f.err != nil {
		return audit.Record{}, f.err
	}
	for _, r := range f.recs {
		if r.ID == id {
			return r, nil
		}
	}
	return audit.Record{}, treatment.NotFound("AuditEvent", id)
}

const auditSource = "urn:uuid:6f1c1d7e-0000-4000-8000-000000000001"

// auditFixture holds five records, rendered as the store renders them:
//
//	ae-1 read CarePlan/cp1 by app-1 (patient p1)      t0+1h
//	ae-2 search-type by app-2, minor failure          t0+2h
//	ae-3 token-issued to app-1                        t0+3h
//	ae-4 outbound-write of Goal/g1 to ehr-1 (p1)      t0+25h
//	ae-5 update Patient/p2 by app-2, serious failure  t0+26h
func auditFixture(t testing.TB) *fakeAudit {
	t.Helper()
	in := []audit.Record{
		{Time: t0.Add(time.Hour), Subtype: audit.Read, Agent: audit.Agent{ClientID: "app-1", Role: "clinician"}, PatientID: "p1",
			Entities: []audit.Entity{{Ref: "CarePlan/cp1/_history/2"}}},
		{Time: t0.Add(2 * time.Hour), Subtype: audit.SearchType, Outcome: audit.MinorFailure, OutcomeDesc: "unknown parameter",
			Agent: audit.Agent{ClientID: "app-2"}, Entities: []audit.Entity{{Query: "Goal?foo=1"}}},
		{Time: t0.Add(3 * time.Hour), Subtype: audit.TokenIssued, Agent: audit.Agent{ClientID: "app-1"},
			Entities: []audit.Entity{{Identifier: "client:app-1"}}},
		{Time: t0.Add(25 * time.Hour), Subtype: audit.OutboundWrite, Agent: audit.Agent{ClientID: "sync"}, EndpointID: "ehr-1",
			PatientID: "p1", Entities: []audit.Entity{{Ref: "Goal/g1/_history/1"}}},
		{Time: t0.Add(26 * time.Hour), Subtype: audit.Update, Outcome: audit.SeriousFailure, OutcomeDesc: "conflict",
			Agent: audit.Agent{ClientID: "app-2"}, Entities: []audit.Entity{{Ref: "Patient/p2"}}},
	}
	f := &fakeAudit{}
	for i, r := range in {
		r.Source = auditSource
		r, err := audit.Prepare(r)
		if err != nil {
			t.Fatal(err)
		}
		r.Seq = int64(i + 1)
		r.ID = audit.IDFor(r.Seq)
		if r.JSON, err = audit.Render(r); err != nil {
			t.Fatal(err)
		}
		f.recs = append(f.recs, r)
	}
	return f
}

// newAuditEcho serves a with the audit trail switched on, as cmd wires it.
func newAuditEcho(t testing.TB, a *fakeAudit, o fhir.Options) *echo.Echo {
	t.Helper()
	if o.Now == nil {
		o.Now = func() time.Time { return t0.Add(48 * time.Hour) }
	}
	o.Audit = true
	s, err := fhir.New(fixture(t), o)
	if err != nil {
		t.Fatal(err)
	}
	e := echo.New()
	e.HTTPErrorHandler = func(err error, c echo.Context) { fhir.WriteError(c, err) }
	s.WithAudit(a).Register(e.Group("/fhir"))
	return e
}

// auditIDs lists the AuditEvent ids of a Bundle's entries, checking that
// each is a match whose fullUrl names it.
func auditIDs(t testing.TB, b *bcrpb.Bundle) []string {
	t.Helper()
	var out []string
	for _, en := range b.GetEntry() {
		id := en.GetResource().GetAuditEvent().GetId().GetValue()
		if got, want := en.GetFullUrl().GetValue(), base+"/AuditEvent/"+id; got != want {
			t.Errorf("fullUrl = %q, want %q", got, want)
		}
		if m := en.GetSearch().GetMode().GetValue().String(); m != "MATCH" {
			t.Errorf("entry %s has search mode %s", id, m)
		}
		out = append(out, id)
	}
	return out
}

func TestAuditRead(t *testing.T) {
	a := auditFixture(t)
	e := newAuditEcho(t, a, fhir.Options{BaseURL: base})

	rec := get(t, e, "/fhir/AuditEvent/ae-4")
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if got := rec.Body.String(); got != string(a.recs[3].JSON) {
		t.Errorf("body is not the stored AuditEvent:\n got %s\nwant %s", got, a.recs[3].JSON)
	}
	if ae := parse(t, rec).GetAuditEvent(); ae.GetId().GetValue() != "ae-4" {
		t.Errorf("read an AuditEvent with id %q", ae.GetId().GetValue())
	}
	wantHeader := map[string]string{"ETag": `W/"1"`, "Last-Modified": a.recs[3].Time.Format(http.TimeFormat)}
	gotHeader := map[string]string{"ETag": rec.Header().Get("ETag"), "Last-Modified": rec.Header().Get("Last-Modified")}
	if diff := cmp.Diff(wantHeader, gotHeader); diff != "" {
		t.Errorf("headers (-want +got):\n%s", diff)
	}

	tests := []struct {
		name string
		req  request
		want outcome
	}{
		{"unknown", request{target: "/fhir/AuditEvent/ae-9"}, one(404, "NOT_FOUND", "")},
		{"bad id", request{target: "/fhir/AuditEvent/a_b"}, one(400, "INVALID", "id")},
		{"vread", request{target: "/fhir/AuditEvent/ae-4/_history/1"}, one(405, "NOT_SUPPORTED", "")},
		{"history", request{target: "/fhir/AuditEvent/ae-4/_history"}, one(405, "NOT_SUPPORTED", "")},
		{"create", request{method: http.MethodPost, target: "/fhir/AuditEvent", body: "{}"}, one(405, "NOT_SUPPORTED", "")},
		{"update", request{method: http.MethodPut, target: "/fhir/AuditEvent/ae-4", body: "{}"}, one(405, "NOT_SUPPORTED", "")},
		{"delete", request{method: http.MethodDelete, target: "/fhir/AuditEvent/ae-4"}, one(405, "NOT_SUPPORTED", "")},
		{"406", request{target: "/fhir/AuditEvent/ae-4", header: map[string]string{"Accept": "application/fhir+xml"}}, one(406, "NOT_SUPPORTED", "")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := parseOutcome(t, do(t, e, tt.req))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("outcome (-want +got):\n%s", diff)
			}
		})
	}
}

// TestAuditSearchFilter: each parameter becomes the store filter it means;
// searches that cannot match anything do not reach the store.
func TestAuditSearchFilter(t *testing.T) {
	day := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	at10 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		query string
		want  *audit.Filter // nil: the store is not asked
		ids   []string
	}{
		{"", &audit.Filter{Limit: 50}, []string{"ae-5", "ae-4", "ae-3", "ae-2", "ae-1"}},
		{"date=2026-03-01", &audit.Filter{From: day, To: day.AddDate(0, 0, 1), Limit: 50}, []string{"ae-3", "ae-2", "ae-1"}},
		{"date=ge2026-03-01&date=lt2026-03-01T11:00:00Z", &audit.Filter{From: day, To: at10.Add(time.Hour), Limit: 50}, []string{"ae-1"}},
		{"date=gt2026-03-01T10:00:00Z", &audit.Filter{From: at10.Add(time.Second), Limit: 50}, []string{"ae-5", "ae-4", "ae-3", "ae-2"}},
		{"date=le2026-03-01", &audit.Filter{To: day.AddDate(0, 0, 1), Limit: 50}, []string{"ae-3", "ae-2", "ae-1"}},
		{"date=gt2026-03-01&date=le2026", &audit.Filter{From: day.AddDate(0, 0, 1), To: day.AddDate(0, 10, 0), Limit: 50}, []string{"ae-5", "ae-4"}},
		{"date=ge2026-03-02&date=lt2026-03-01", nil, nil},
		{"agent=app-1", &audit.Filter{ClientID: "app-1", Limit: 50}, []string{"ae-3", "ae-1"}},
		{"agent=" + url.QueryEscape(audit.ClientSystem+"|app-2"), &audit.Filter{ClientID: "app-2", Limit: 50}, []string{"ae-5", "ae-2"}},
		{"agent:identifier=" + url.QueryEscape(audit.EndpointSystem+"|ehr-1"), &audit.Filter{EndpointID: "ehr-1", Limit: 50}, []string{"ae-4"}},
		{"entity=CarePlan/cp1", &audit.Filter{Entity: "CarePlan/cp1", Limit: 50}, []string{"ae-1"}},
		{"entity=" + url.QueryEscape("https://elsewhere.example/fhir/Goal/g1"), &audit.Filter{Entity: "Goal/g1", Limit: 50}, []string{"ae-4"}},
		{"entity=Patient/p1", &audit.Filter{Entity: "Patient/p1", Limit: 50}, []string{"ae-4", "ae-1"}},
		{"entity:identifier=client:app-1", &audit.Filter{Entity: "client:app-1", Limit: 50}, []string{"ae-3"}},
		{"entity:identifier=" + url.QueryEscape("urn:x|client:app-1"), nil, nil},
		{"patient=p1", &audit.Filter{PatientID: "p1", Limit: 50}, []string{"ae-4", "ae-1"}},
		{"patient=Patient/p1", &audit.Filter{PatientID: "p1", Limit: 50}, []string{"ae-4", "ae-1"}},
		{"type=110114,rest", &audit.Filter{Types: []audit.Type{audit.TypeUserAuthentication, audit.TypeRest}, Limit: 50}, []string{"ae-5", "ae-4", "ae-3", "ae-2", "ae-1"}},
		{"type=" + url.QueryEscape("http://dicom.nema.org/resources/ontology/DCM|110114"), &audit.Filter{Types: []audit.Type{audit.TypeUserAuthentication}, Limit: 50}, []string{"ae-3"}},
		{"type=" + url.QueryEscape("http://dicom.nema.org/resources/ontology/DCM|rest"), nil, nil},
		{"type=nonsense", nil, nil},
		{"subtype=read,token-issued&subtype=read", &audit.Filter{Subtypes: []audit.Subtype{audit.Read}, Limit: 50}, []string{"ae-1"}},
		{"subtype=" + url.QueryEscape("http://hl7.org/fhir/restful-interaction|update"), &audit.Filter{Subtypes: []audit.Subtype{audit.Update}, Limit: 50}, []string{"ae-5"}},
		{"subtype=" + url.QueryEscape(audit.SubtypeSystem+"|outbound-write"), &audit.Filter{Subtypes: []audit.Subtype{audit.OutboundWrite}, Limit: 50}, []string{"ae-4"}},
		{"subtype=" + url.QueryEscape(audit.SubtypeSystem+"|read"), nil, nil},
		{"subtype=read&subtype=update", nil, nil},
		{"outcome=8,4", &audit.Filter{Outcomes: []audit.Outcome{audit.MinorFailure, audit.SeriousFailure}, Limit: 50}, []string{"ae-5", "ae-2"}},
		{"outcome=" + url.QueryEscape("http://hl7.org/fhir/audit-event-outcome|0"), &audit.Filter{Outcomes: []audit.Outcome{audit.Success}, Limit: 50}, []string{"ae-4", "ae-3", "ae-1"}},
		{"outcome=" + url.QueryEscape("urn:other|0"), nil, nil},
		{"_count=5000", &audit.Filter{Limit: 1000}, []string{"ae-5", "ae-4", "ae-3", "ae-2", "ae-1"}},
		{"_sort=date&_count=2", &audit.Filter{Oldest: true, Limit: 2}, []string{"ae-1", "ae-2"}},
		{"_sort=-date&_summary=false&_format=json&_pretty=true", &audit.Filter{Limit: 50}, []string{"ae-5", "ae-4", "ae-3", "ae-2", "ae-1"}},
		{"patient=p1&subtype=outbound-write&agent=sync&date=ge2026-03-02", &audit.Filter{From: day.AddDate(0, 0, 1), ClientID: "sync", PatientID: "p1",
			Subtypes: []audit.Subtype{audit.OutboundWrite}, Limit: 50}, []string{"ae-4"}},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			a := auditFixture(t)
			e := newAuditEcho(t, a, fhir.Options{BaseURL: base})
			b := bundle(t, get(t, e, "/fhir/AuditEvent?"+tt.query))
			var want []audit.Filter
			if tt.want != nil {
				want = []audit.Filter{*tt.want}
			}
			if diff := cmp.Diff(want, a.filters); diff != "" {
				t.Errorf("store filter (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.ids, auditIDs(t, b)); diff != "" {
				t.Errorf("matches (-want +got):\n%s", diff)
			}
		})
	}
}

// TestAuditSearchPaging follows next links to the end; the stored bytes are
// spliced into the Bundle as they are.
func TestAuditSearchPaging(t *testing.T) {
	a := auditFixture(t)
	e := newAuditEcho(t, a, fhir.Options{BaseURL: base})
	stored := map[string][]byte{}
	for _, r := range a.recs {
		stored[r.ID] = r.JSON
	}
	type page struct {
		IDs   []string
		Total int // -1: no total
		Next  bool
	}
	run := func(t *testing.T, first request) []page {
		t.Helper()
		var out []page
		rec := do(t, e, first)
		for range 10 {
			b := bundle(t, rec)
			p := page{IDs: auditIDs(t, b), Total: -1, Next: links(b)["next"] != ""}
			if b.GetTotal() != nil {
				p.Total = int(b.GetTotal().GetValue())
			}
			out = append(out, p)
			// Each entry's resource is the stored AuditEvent, unchanged.
			for _, en := range b.GetEntry() {
				id := en.GetResource().GetAuditEvent().GetId().GetValue()
				want, err := fhirjson.Unmarshal(stored[id])
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(want, en.GetResource(), protocmp.Transform()); diff != "" {
					t.Errorf("entry %s (-stored +served):\n%s", id, diff)
				}
			}
			next := links(b)["next"]
			if next == "" {
				return out
			}
			if !strings.HasPrefix(next, base+"/AuditEvent?") || !strings.Contains(next, "_count=2") {
				t.Errorf("next = %q", next)
			}
			rec = get(t, e, strings.TrimPrefix(next, "http://kapfhir.test"))
		}
		t.Fatal("too many pages")
		return nil
	}
	want := []page{
		{IDs: []string{"ae-5", "ae-4"}, Total: -1, Next: true},
		{IDs: []string{"ae-3", "ae-2"}, Total: -1, Next: true},
		{IDs: []string{"ae-1"}, Total: -1},
	}
	if diff := cmp.Diff(want, run(t, request{target: "/fhir/AuditEvent?_count=2"})); diff != "" {
		t.Errorf("newest first (-want +got):\n%s", diff)
	}
	want = []page{
		{IDs: []string{"ae-1", "ae-2"}, Total: -1, Next: true},
		{IDs: []string{"ae-3", "ae-4"}, Total: -1, Next: true},
		{IDs: []string{"ae-5"}, Total: -1},
	}
	if diff := cmp.Diff(want, run(t, request{target: "/fhir/AuditEvent?_count=2&_sort=date"})); diff != "" {
		t.Errorf("oldest first (-want +got):\n%s", diff)
	}
	// One page is the whole result: its total is known.
	want = []page{{IDs: []string{"ae-5", "ae-2"}, Total: 2}}
	form := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	if diff := cmp.Diff(want, run(t, request{method: http.MethodPost, target: "/fhir/AuditEvent/_search", header: form, body: "agent=app-2"})); diff != "" {
		t.Errorf("POST _search (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, run(t, request{target: "/fhir/AuditEvent/_search?agent=app-2"})); diff != "" {
		t.Errorf("GET _search (-want +got):\n%s", diff)
	}

	// Self links carry the normalized query and the cursor of the page.
	b := bundle(t, get(t, e, "/fhir/AuditEvent?patient=p1&_format=json&type=rest"))
	if got, want := links(b)["self"], base+"/AuditEvent?_count=50&patient=p1&type=rest"; got != want {
		t.Errorf("self = %q, want %q", got, want)
	}
}

func TestAuditSearchErrors(t *testing.T) {
	form := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	tests := []struct {
		name string
		req  request
		want outcome
	}{
		{"unknown param", request{target: "/fhir/AuditEvent?foo=1"}, one(400, "NOT_SUPPORTED", "foo")},
		{"param of other types", request{target: "/fhir/AuditEvent?_id=ae-1"}, one(400, "NOT_SUPPORTED", "_id")},
		{"include", request{target: "/fhir/AuditEvent?_include=AuditEvent:patient"}, one(400, "NOT_SUPPORTED", "_include")},
		{"modifier", request{target: "/fhir/AuditEvent?subtype:not=read"}, one(400, "NOT_SUPPORTED", "subtype:not")},
		{"agent reference", request{target: "/fhir/AuditEvent?agent=Device/d1"}, one(400, "INVALID", "agent")},
		{"agent other system", request{target: "/fhir/AuditEvent?agent=" + url.QueryEscape("urn:x|app-1")}, one(400, "INVALID", "agent")},
		{"agent no value", request{target: "/fhir/AuditEvent?agent=" + url.QueryEscape(audit.ClientSystem+"|")}, one(400, "INVALID", "agent")},
		{"agent twice", request{target: "/fhir/AuditEvent?agent=a&agent=b"}, one(400, "INVALID", "agent")},
		{"agent OR", request{target: "/fhir/AuditEvent?agent=a,b"}, one(400, "NOT_SUPPORTED", "agent")},
		{"agent and agent:identifier", request{target: "/fhir/AuditEvent?agent=a&agent:identifier=b"}, one(400, "NOT_SUPPORTED", "agent:identifier")},
		{"entity without type", request{target: "/fhir/AuditEvent?entity=cp1"}, one(400, "INVALID", "entity")},
		{"entity not served", request{target: "/fhir/AuditEvent?entity=Medication/m1"}, one(400, "INVALID", "entity")},
		{"entity versioned", request{target: "/fhir/AuditEvent?entity=CarePlan/cp1/_history/2"}, one(400, "INVALID", "entity")},
		{"patient wrong type", request{target: "/fhir/AuditEvent?patient=Goal/g1"}, one(400, "INVALID", "patient")},
		{"patient bad id", request{target: "/fhir/AuditEvent?patient=a_b"}, one(400, "INVALID", "patient")},
		{"patient OR", request{target: "/fhir/AuditEvent?patient=p1,p2"}, one(400, "NOT_SUPPORTED", "patient")},
		{"outcome unknown", request{target: "/fhir/AuditEvent?outcome=3"}, one(400, "INVALID", "outcome")},
		{"outcome padded", request{target: "/fhir/AuditEvent?outcome=04"}, one(400, "INVALID", "outcome")},
		{"type without code", request{target: "/fhir/AuditEvent?type=" + url.QueryEscape("http://x|")}, one(400, "INVALID", "type")},
		{"date ne", request{target: "/fhir/AuditEvent?date=ne2026"}, one(400, "NOT_SUPPORTED", "date")},
		{"bad date", request{target: "/fhir/AuditEvent?date=2026-13"}, one(400, "INVALID", "date")},
		{"date OR", request{target: "/fhir/AuditEvent?date=2026,2027"}, one(400, "NOT_SUPPORTED", "date")},
		{"_count zero", request{target: "/fhir/AuditEvent?_count=0"}, one(400, "INVALID", "_count")},
		{"_summary count", request{target: "/fhir/AuditEvent?_summary=count"}, one(400, "NOT_SUPPORTED", "_summary")},
		{"_sort other", request{target: "/fhir/AuditEvent?_sort=_id"}, one(400, "NOT_SUPPORTED", "_sort")},
		{"bad cursor", request{target: "/fhir/AuditEvent?_cursor=!!!"}, one(400, "INVALID", "_cursor")},
		{"cursor of the other direction", request{target: "/fhir/AuditEvent?_sort=date&_cursor=" + auditCursor(t, "/fhir/AuditEvent?_count=1")}, one(400, "INVALID", "_cursor")},
		{"undecodable query", request{target: "/fhir/AuditEvent?agent=%zz"}, one(400, "INVALID", "")},
		{"POST JSON", request{method: http.MethodPost, target: "/fhir/AuditEvent/_search", header: map[string]string{"Content-Type": "application/json"}, body: "{}"}, one(415, "NOT_SUPPORTED", "")},
		{"POST bad param", request{method: http.MethodPost, target: "/fhir/AuditEvent/_search", header: form, body: "foo=1"}, one(400, "NOT_SUPPORTED", "foo")},
		{"406", request{target: "/fhir/AuditEvent", header: map[string]string{"Accept": "application/fhir+xml"}}, one(406, "NOT_SUPPORTED", "")},
		{
			"every problem at once",
			request{target: "/fhir/AuditEvent?foo=1&_count=x&outcome=3"},
			outcome{Status: 400, Issues: []outcomeIssue{{"INVALID", "_count"}, {"NOT_SUPPORTED", "foo"}, {"INVALID", "outcome"}}},
		},
	}
	a := auditFixture(t)
	e := newAuditEcho(t, a, fhir.Options{BaseURL: base})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, oo := parseOutcome(t, do(t, e, tt.req))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("outcome (-want +got):\n%s", diff)
			}
			// Messages name parameters, never echo values.
			for _, is := range oo.GetIssue() {
				if d := is.GetDiagnostics().GetValue(); strings.Contains(d, "Device/d1") || strings.Contains(d, "urn:x") {
					t.Errorf("diagnostics %q echo the value", d)
				}
			}
		})
	}
	if len(a.filters) != 0 {
		t.Errorf("bad searches reached the store: %v", a.filters)
	}

	// Prefer: handling=lenient ignores unknown parameters.
	rec := do(t, e, request{target: "/fhir/AuditEvent?foo=1&agent=app-1", header: map[string]string{"Prefer": "handling=lenient"}})
	if diff := cmp.Diff([]string{"ae-3", "ae-1"}, auditIDs(t, bundle(t, rec))); diff != "" {
		t.Errorf("lenient (-want +got):\n%s", diff)
	}
}

// auditCursor returns the _cursor of the next link of an AuditEvent search.
func auditCursor(t testing.TB, target string) string {
	t.Helper()
	b := bundle(t, get(t, newAuditEcho(t, auditFixture(t), fhir.Options{BaseURL: base}), target))
	u, err := url.Parse(links(b)["next"])
	if err != nil {
		t.Fatal(err)
	}
	return url.QueryEscape(u.Query().Get("_cursor"))
}

func TestAuditReaderErrors(t *testing.T) {
	tests := []struct {
		err  error
		want outcome
	}{
		{errors.New("db: secret"), one(500, "EXCEPTION", "")},
		{treatment.Errorf(treatment.KindUnavailable, "the store is unavailable"), one(503, "TRANSIENT", "")},
	}
	for _, tt := range tests {
		a := auditFixture(t)
		a.err = tt.err
		e := newAuditEcho(t, a, fhir.Options{BaseURL: base})
		for _, target := range []string{"/fhir/AuditEvent/ae-1", "/fhir/AuditEvent?agent=app-1"} {
			got, oo := parseOutcome(t, get(t, e, target))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("GET %s with %v (-want +got):\n%s", target, tt.err, diff)
			}
			if strings.Contains(oo.GetIssue()[0].GetDiagnostics().GetValue(), "secret") {
				t.Errorf("GET %s leaks the error", target)
			}
		}
	}

	// A record without its rendered JSON is an internal error, not an empty entry.
	a := auditFixture(t)
	a.recs[0].JSON = nil
	e := newAuditEcho(t, a, fhir.Options{BaseURL: base})
	for _, target := range []string{"/fhir/AuditEvent/ae-1", "/fhir/AuditEvent?_sort=date"} {
		if got, _ := parseOutcome(t, get(t, e, target)); got.Status != http.StatusInternalServerError {
			t.Errorf("GET %s: status %d, want 500", target, got.Status)
		}
	}
}

// TestAuditNotServed: without WithAudit, AuditEvent is a type kapfhir does not serve.
func TestAuditNotServed(t *testing.T) {
	e := newTestEcho(t, fixture(t))
	for _, target := range []string{"/fhir/AuditEvent", "/fhir/AuditEvent/ae-1"} {
		if got, _ := parseOutcome(t, get(t, e, target)); got.Status != http.StatusNotFound {
			t.Errorf("GET %s: status %d, want 404", target, got.Status)
		}
	}
	cs := parse(t, get(t, e, "/fhir/metadata")).GetCapabilityStatement()
	for _, r := range cs.GetRest()[0].GetResource() {
		if r.GetType().GetValue().String() == "AUDIT_EVENT" {
			t.Error("the CapabilityStatement lists AuditEvent without Options.Audit")
		}
	}
}

func TestAuditCapability(t *testing.T) {
	e := newAuditEcho(t, auditFixture(t), fhir.Options{BaseURL: base})
	cs := parse(t, get(t, e, "/fhir/metadata")).GetCapabilityStatement()
	var ae *cspb.CapabilityStatement_Rest_Resource
	for _, r := range cs.GetRest()[0].GetResource() {
		if r.GetType().GetValue().String() == "AUDIT_EVENT" {
			ae = r
		}
	}
	if ae == nil {
		t.Fatal("no AuditEvent in the CapabilityStatement")
	}
	type res struct {
		Interactions, Params []string
		Versioning           string
		ReadHistory          bool
	}
	got := res{Versioning: ae.GetVersioning().GetValue().String(), ReadHistory: ae.GetReadHistory().GetValue()}
	for _, i := range ae.GetInteraction() {
		got.Interactions = append(got.Interactions, i.GetCode().GetValue().String())
	}
	for _, p := range ae.GetSearchParam() {
		got.Params = append(got.Params, p.GetName().GetValue()+":"+strings.ToLower(p.GetType().GetValue().String()))
		if p.GetDocumentation().GetValue() == "" {
			t.Errorf("search param %s has no documentation", p.GetName().GetValue())
		}
	}
	want := res{
		Interactions: []string{"READ", "SEARCH_TYPE"},
		// The types of the R4 AuditEvent search parameters.
		Params:     []string{"date:date", "agent:reference", "entity:reference", "patient:reference", "type:token", "subtype:token", "outcome:token"},
		Versioning: "NO_VERSION",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("AuditEvent (-want +got):\n%s", diff)
	}
}

// TestSecurity: rest.security says SMART on FHIR and names the token
// endpoint: explicit, from the base, or host-relative when the base is derived.
func TestSecurity(t *testing.T) {
	tests := []struct {
		name string
		o    fhir.Options
		want string
	}{
		{"from the base", fhir.Options{BaseURL: base}, "http://kapfhir.test/auth/token"},
		{"from a base with a slash", fhir.Options{BaseURL: base + "/"}, "http://kapfhir.test/auth/token"},
		{"explicit", fhir.Options{BaseURL: base, TokenURL: "https://auth.example/token"}, "https://auth.example/token"},
		{"derived base", fhir.Options{}, "/auth/token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := parse(t, get(t, newEcho(t, fixture(t), tt.o), "/fhir/metadata")).GetCapabilityStatement()
			sec := cs.GetRest()[0].GetSecurity()
			type coding struct{ System, Code string }
			var services []coding
			for _, s := range sec.GetService() {
				for _, c := range s.GetCoding() {
					services = append(services, coding{c.GetSystem().GetValue(), c.GetCode().GetValue()})
				}
			}
			wantServices := []coding{{"http://terminology.hl7.org/CodeSystem/restful-security-service", "SMART-on-FHIR"}}
			if diff := cmp.Diff(wantServices, services); diff != "" {
				t.Errorf("service (-want +got):\n%s", diff)
			}
			uris := map[string]string{}
			for _, ext := range sec.GetExtension() {
				if ext.GetUrl().GetValue() != "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris" {
					t.Errorf("unexpected extension %s", ext.GetUrl().GetValue())
					continue
				}
				for _, sub := range ext.GetExtension() {
					uris[sub.GetUrl().GetValue()] = sub.GetValue().GetUri().GetValue()
				}
			}
			if diff := cmp.Diff(map[string]string{"token": tt.want}, uris); diff != "" {
				t.Errorf("oauth-uris (-want +got):\n%s", diff)
			}
			if d := sec.GetDescription().GetValue(); !strings.Contains(d, "Bearer") || !strings.Contains(d, "ES384") {
				t.Errorf("description %q does not say how to authenticate", d)
			}
		})
	}
}
