package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/labstack/echo/v4"

	"github.com/kapfhir/kapfhir/api"
	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/treatment"
)

var t0 = time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)

// fakeAudit is an in-memory api.Audit with the store's filter semantics for
// the fields the tests use; it records every filter and query it is given.
// The real stores are tested by store/storetest.
type fakeAudit struct {
	report  audit.Report
	recs    []audit.Record // by seq, ascending
	ledger  []outbox.LedgerEntry
	filters []audit.Filter
	queries []outbox.LedgerFilter
	// pageMax caps every page (0: the caller's limit), so exports span pages.
	pageMax int
	// failAt makes the n-th list call (from 1) fail with err; 0 never.
	failAt int
	calls  int
	err    error
}

func (f *fakeAudit) fail() error {
	f.calls++
	if f.err != nil && (f.failAt == 0 || f.calls == f.failAt) {
		return f.err
	}
	return nil
}

func (f *fakeAudit) limit(n int) int {
	if n <= 0 {
		n = 100
	}
	if f.pageMax > 0 {
		n = min(n, f.pageMax)
	}
	return n
}

func (f *fakeAudit) VerifyAudit(context.Context) (audit.Report, error) {
	return f.report, f.fail()
}

func (f *fakeAudit) AuditEvents(_ context.Context, flt audit.Filter) (audit.Page, error) {
	f.filters = append(f.filters, flt)
	if err := f.fail(); err != nil {
		return audit.Page{}, err
	}
	recs := slices.Clone(f.recs)
	if !flt.Oldest {
		slices.Reverse(recs)
	}
	limit := f.limit(flt.Limit)
	var page audit.Page
	for _, r := range recs {
		switch {
		case flt.Cursor > 0 && flt.Oldest && r.Seq <= flt.Cursor,
			flt.Cursor > 0 && !flt.Oldest && r.Seq >= flt.Cursor,
			!flt.From.IsZero() && r.Time.Before(flt.From),
			!flt.To.IsZero() && !r.Time.Before(flt.To),
			flt.ClientID != "" && r.Agent.ClientID != flt.ClientID,
			len(flt.Subtypes) > 0 && !slices.Contains(flt.Subtypes, r.Subtype):
			continue
		}
		if len(page.Records) == limit {
			page.Next = page.Records[limit-1].Seq
			break
		}
		page.Records = append(page.Records, r)
	}
	return page, nil
}

func (f *fakeAudit) SyncLedger(_ context.Context, q outbox.LedgerFilter) (outbox.LedgerPage, error) {
	f.queries = append(f.queries, q)
	if err := f.fail(); err != nil {
		return outbox.LedgerPage{}, err
	}
	limit := f.limit(q.Limit)
	var page outbox.LedgerPage
	for _, e := range slices.Backward(f.ledger) {
		if (q.Cursor > 0 && e.ID >= q.Cursor) || (q.EndpointID != "" && e.EndpointID != q.EndpointID) ||
			(q.PatientID != "" && e.PatientID != q.PatientID) || (!q.From.IsZero() && e.At.Before(q.From)) {
			continue
		}
		if len(page.Entries) == limit {
			page.Next = page.Entries[limit-1].ID
			break
		}
		page.Entries = append(page.Entries, e)
	}
	return page, nil
}

const source = "urn:uuid:6f1c1d7e-0000-4000-8000-000000000001"

// newFake holds five audit records (ae-1 .. ae-5, an hour apart from t0,
// every other one by app-1) and four ledger lines (1 .. 4).
func newFake(t *testing.T) *fakeAudit {
	t.Helper()
	f := &fakeAudit{}
	subs := []audit.Subtype{audit.Read, audit.SearchType, audit.Read, audit.TokenIssued, audit.Update}
	for i, sub := range subs {
		client := "app-1"
		if i%2 == 1 {
			client = "app-2"
		}
		r, err := audit.Prepare(audit.Record{
			Time: t0.Add(time.Duration(i+1) * time.Hour), Subtype: sub, Agent: audit.Agent{ClientID: client, Role: "auditor"},
			PatientID: "p1", Entities: []audit.Entity{{Ref: "CarePlan/cp1/_history/1"}}, Source: source,
		})
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
	for i := range 4 {
		f.ledger = append(f.ledger, outbox.LedgerEntry{Event: outbox.Event{
			ID: int64(i + 1), At: t0.Add(time.Duration(i+1) * time.Minute), EndpointID: "ehr-1", ItemID: 7, ResourceType: "CarePlan",
			ResourceID: "cp1", Version: int64(i + 1), Action: "sent", Status: 200, EHRID: "e-cp1", EHRVersion: "3",
			Request: "PUT CarePlan?identifier=urn:x|cp1", Actor: "sync",
		}, PatientID: "p1"})
	}
	return f
}

const fhirBase = "http://kapfhir.test/fhir"

func newAuditEcho(f *fakeAudit) *echo.Echo {
	e := echo.New()
	e.HTTPErrorHandler = func(err error, c echo.Context) { api.WriteProblem(c, err) }
	api.New(nil, fhirBase).WithAudit(f).Register(e.Group("/api/v1"))
	return e
}

func serve(t *testing.T, e *echo.Echo, target string, header map[string]string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequestWithContext(t.Context(), http.MethodGet, target, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, req)
	return rec
}

func decodeJSON[T any](t *testing.T, rec *httptest.ResponseRecorder, status int) T {
	t.Helper()
	if rec.Code != status {
		t.Fatalf("status %d, want %d: %s", rec.Code, status, rec.Body)
	}
	var v T
	if err := json.Unmarshal(rec.Body.Bytes(), &v); err != nil {
		t.Fatalf("%v: %s", err, rec.Body)
	}
	return v
}

// fields lists the fields a problem names.
func fields(t *testing.T, rec *httptest.ResponseRecorder) []string {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Errorf("Content-Type = %q", ct)
	}
	p := decodeJSON[problem](t, rec, http.StatusBadRequest)
	var out []string
	for _, e := range p.Errors {
		out = append(out, e.Field)
	}
	return out
}

func TestVerifyAudit(t *testing.T) {
	tests := []struct {
		name   string
		report audit.Report
		want   string
	}{
		{"intact", audit.Report{Intact: true, Records: 5, From: 1, To: 5, Head: "ab12"},
			`{"intact":true,"records":5,"from":1,"to":5,"head":"ab12","firstBad":null,"reason":""}`},
		{"broken", audit.Report{Records: 5, From: 1, To: 5, Head: "ab12", FirstBad: 3, Reason: "record 3 does not match its hash: it was altered"},
			`{"intact":false,"records":5,"from":1,"to":5,"head":"ab12","firstBad":3,"reason":"record 3 does not match its hash: it was altered"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			f.report = tt.report
			rec := serve(t, newAuditEcho(f), "/api/v1/audit/verify", nil)
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			if got := strings.TrimSpace(rec.Body.String()); got != tt.want {
				t.Errorf("body\n got %s\nwant %s", got, tt.want)
			}
		})
	}

	f := newFake(t)
	if diff := cmp.Diff([]string{"full"}, fields(t, serve(t, newAuditEcho(f), "/api/v1/audit/verify?full=1", nil))); diff != "" {
		t.Errorf("unknown parameter (-want +got):\n%s", diff)
	}
	f.err = errors.New("db: secret")
	rec := serve(t, newAuditEcho(f), "/api/v1/audit/verify", nil)
	if p := decodeJSON[problem](t, rec, http.StatusInternalServerError); strings.Contains(p.Detail, "secret") {
		t.Errorf("the problem leaks the error: %+v", p)
	}
}

type eventsPage struct {
	Events []struct {
		ID       string    `json:"id"`
		Seq      int64     `json:"seq"`
		Time     time.Time `json:"time"`
		Subtype  string    `json:"subtype"`
		ClientID string    `json:"clientId"`
		FHIR     string    `json:"fhir"`
	} `json:"events"`
	NextCursor int64  `json:"nextCursor"`
	Next       string `json:"next"`
}

func TestAuditEvents(t *testing.T) {
	f := newFake(t)
	e := newAuditEcho(f)
	got := decodeJSON[eventsPage](t, serve(t, e, "/api/v1/audit/events?from=2026-03-01&to=2026-03-01T14:00:00%2B01:00&clientId=app-1&limit=2&subtype=read,update&outcome=0,4", nil), 200)
	wantFilter := audit.Filter{
		From: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), To: time.Date(2026, 3, 1, 13, 0, 0, 0, time.UTC), ClientID: "app-1",
		Subtypes: []audit.Subtype{audit.Read, audit.Update}, Outcomes: []audit.Outcome{audit.Success, audit.MinorFailure}, Limit: 2,
	}
	if diff := cmp.Diff([]audit.Filter{wantFilter}, f.filters); diff != "" {
		t.Errorf("filter (-want +got):\n%s", diff)
	}
	var ids []string
	for _, ev := range got.Events {
		ids = append(ids, ev.ID)
		if ev.FHIR != fhirBase+"/AuditEvent/"+ev.ID || ev.ClientID != "app-1" || ev.Subtype != "read" {
			t.Errorf("event %+v", ev)
		}
	}
	if diff := cmp.Diff([]string{"ae-3", "ae-1"}, ids); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if got.NextCursor != 0 || got.Next != "" {
		t.Errorf("a last page has next %d %q", got.NextCursor, got.Next)
	}

	// Paging: follow next to the end, oldest first.
	f = newFake(t)
	e = newAuditEcho(f)
	target := "/api/v1/audit/events?order=oldest&limit=2"
	var pages [][]string
	for range 5 {
		p := decodeJSON[eventsPage](t, serve(t, e, target, nil), 200)
		var page []string
		for _, ev := range p.Events {
			page = append(page, ev.ID)
		}
		pages = append(pages, page)
		if p.Next == "" {
			break
		}
		target = p.Next
	}
	if diff := cmp.Diff([][]string{{"ae-1", "ae-2"}, {"ae-3", "ae-4"}, {"ae-5"}}, pages); diff != "" {
		t.Errorf("pages (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]int64{0, 2, 4}, cursors(f.filters)); diff != "" {
		t.Errorf("cursors (-want +got):\n%s", diff)
	}
}

func cursors(fs []audit.Filter) []int64 {
	var out []int64
	for _, f := range fs {
		out = append(out, f.Cursor)
	}
	return out
}

func TestAuditBadQuery(t *testing.T) {
	tests := []struct {
		target string
		fields []string
	}{
		{"/api/v1/audit/events?from=yesterday", []string{"from"}},
		{"/api/v1/audit/events?to=2026-03-01T10:00:00", []string{"to"}},
		{"/api/v1/audit/events?limit=0", []string{"limit"}},
		{"/api/v1/audit/events?limit=1001", []string{"limit"}},
		{"/api/v1/audit/events?cursor=-1", []string{"cursor"}},
		{"/api/v1/audit/events?type=login", []string{"type"}},
		{"/api/v1/audit/events?subtype=peek", []string{"subtype"}},
		{"/api/v1/audit/events?outcome=3", []string{"outcome"}},
		{"/api/v1/audit/events?order=random", []string{"order"}},
		{"/api/v1/audit/events?format=csv", []string{"format"}},
		{"/api/v1/audit/events?patientId=a_b", []string{"patientId"}},
		{"/api/v1/audit/events?format=ndjson&limit=5", []string{"limit"}},
		{"/api/v1/audit/events?zz=1&foo=1&limit=x&from=x", []string{"foo", "zz", "from", "limit"}},
		{"/api/v1/audit/sync?resourceType=care-plan", []string{"resourceType"}},
		{"/api/v1/audit/sync?patientId=a/b&to=x&state=dead", []string{"state", "patientId", "to"}},
		{"/api/v1/audit/sync?limit=abc&cursor=0", []string{"limit", "cursor"}},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			f := newFake(t)
			if diff := cmp.Diff(tt.fields, fields(t, serve(t, newAuditEcho(f), tt.target, nil))); diff != "" {
				t.Errorf("fields (-want +got):\n%s", diff)
			}
			if len(f.filters)+len(f.queries) > 0 {
				t.Error("a bad query reached the store")
			}
		})
	}
}

// TestAuditEventsExport: every page, one stored AuditEvent per line, as it is.
func TestAuditEventsExport(t *testing.T) {
	for _, tt := range []struct {
		name   string
		target string
		header map[string]string
	}{
		{"format", "/api/v1/audit/events?format=ndjson&from=2026-03-01", nil},
		{"accept", "/api/v1/audit/events?from=2026-03-01", map[string]string{"Accept": "application/x-ndjson"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t)
			f.pageMax = 2
			rec := serve(t, newAuditEcho(f), tt.target, tt.header)
			if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/x-ndjson" {
				t.Fatalf("status %d, Content-Type %q: %s", rec.Code, rec.Header().Get("Content-Type"), rec.Body)
			}
			var want bytes.Buffer
			for _, r := range slices.Backward(f.recs) {
				want.Write(r.JSON)
				want.WriteByte('\n')
			}
			if diff := cmp.Diff(want.String(), rec.Body.String()); diff != "" {
				t.Errorf("body (-want +got):\n%s", diff)
			}
			if got := rec.Result().Trailer.Get("Kapfhir-Export-Status"); got != "complete" {
				t.Errorf("trailer = %q, want complete", got)
			}
			if diff := cmp.Diff([]int64{0, 4, 2}, cursors(f.filters)); diff != "" {
				t.Errorf("cursors (-want +got):\n%s", diff)
			}
			for _, flt := range f.filters {
				if flt.Limit != 1000 || !flt.From.Equal(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)) {
					t.Errorf("filter %+v", flt)
				}
			}
		})
	}
}

// TestExportFailure: a store failing before anything is written is a
// problem; after, the body ends early and the trailer says so.
func TestExportFailure(t *testing.T) {
	f := newFake(t)
	f.pageMax, f.err, f.failAt = 2, treatment.Errorf(treatment.KindUnavailable, "the store is unavailable"), 1
	rec := serve(t, newAuditEcho(f), "/api/v1/audit/sync?format=ndjson", nil)
	if p := decodeJSON[problem](t, rec, http.StatusServiceUnavailable); p.Detail != "the store is unavailable" {
		t.Errorf("problem %+v", p)
	}

	f = newFake(t)
	f.pageMax, f.err, f.failAt = 2, errors.New("db: gone"), 2
	rec = serve(t, newAuditEcho(f), "/api/v1/audit/sync?format=ndjson", nil)
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d", rec.Code)
	}
	if n := strings.Count(rec.Body.String(), "\n"); n != 2 {
		t.Errorf("%d lines, want the first page's 2: %s", n, rec.Body)
	}
	if got := rec.Result().Trailer.Get("Kapfhir-Export-Status"); got != "failed" {
		t.Errorf("trailer = %q, want failed", got)
	}
}

type ledgerLine struct {
	ID           int64     `json:"id"`
	At           time.Time `json:"at"`
	Endpoint     string    `json:"endpoint"`
	ItemID       int64     `json:"itemId"`
	ResourceType string    `json:"resourceType"`
	ResourceID   string    `json:"resourceId"`
	Version      int64     `json:"version"`
	Action       string    `json:"action"`
	Status       int       `json:"status"`
	EHRID        string    `json:"ehrId"`
	EHRVersion   string    `json:"ehrVersion"`
	Request      string    `json:"request"`
	Actor        string    `json:"actor"`
	PatientID    string    `json:"patientId"`
}

func TestSyncLedger(t *testing.T) {
	f := newFake(t)
	e := newAuditEcho(f)
	type page struct {
		Entries    []ledgerLine `json:"entries"`
		NextCursor int64        `json:"nextCursor"`
		Next       string       `json:"next"`
	}
	got := decodeJSON[page](t, serve(t, e, "/api/v1/audit/sync?endpoint=ehr-1&patientId=p1&resourceType=CarePlan&from=2026-03-01T09:02:00Z&to=2026-03-02&limit=2", nil), 200)
	wantQuery := outbox.LedgerFilter{
		EndpointID: "ehr-1", PatientID: "p1", ResourceType: "CarePlan",
		From: t0.Add(2 * time.Minute), To: time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC), Limit: 2,
	}
	if diff := cmp.Diff([]outbox.LedgerFilter{wantQuery}, f.queries); diff != "" {
		t.Errorf("query (-want +got):\n%s", diff)
	}
	line := func(id int64) ledgerLine {
		return ledgerLine{ID: id, At: t0.Add(time.Duration(id) * time.Minute), Endpoint: "ehr-1", ItemID: 7, ResourceType: "CarePlan",
			ResourceID: "cp1", Version: id, Action: "sent", Status: 200, EHRID: "e-cp1", EHRVersion: "3",
			Request: "PUT CarePlan?identifier=urn:x|cp1", Actor: "sync", PatientID: "p1"}
	}
	want := page{Entries: []ledgerLine{line(4), line(3)}, NextCursor: 3,
		Next: "/api/v1/audit/sync?cursor=3&endpoint=ehr-1&from=2026-03-01T09%3A02%3A00Z&limit=2&patientId=p1&resourceType=CarePlan&to=2026-03-02"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("page (-want +got):\n%s", diff)
	}
	got = decodeJSON[page](t, serve(t, e, got.Next, nil), 200)
	if diff := cmp.Diff(page{Entries: []ledgerLine{line(2)}}, got); diff != "" {
		t.Errorf("last page (-want +got):\n%s", diff)
	}

	// The export streams every line, each a JSON object of its own.
	f = newFake(t)
	f.pageMax = 3
	rec := serve(t, newAuditEcho(f), "/api/v1/audit/sync", map[string]string{"Accept": "application/x-ndjson, application/json;q=0.5"})
	var lines []ledgerLine
	for l := range strings.Lines(rec.Body.String()) {
		var ll ledgerLine
		if err := json.Unmarshal([]byte(l), &ll); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		lines = append(lines, ll)
	}
	if diff := cmp.Diff([]ledgerLine{line(4), line(3), line(2), line(1)}, lines); diff != "" {
		t.Errorf("export (-want +got):\n%s", diff)
	}
}

// TestAuditNotMounted: without WithAudit there are no /audit routes.
func TestAuditNotMounted(t *testing.T) {
	e := echo.New()
	e.HTTPErrorHandler = func(err error, c echo.Context) { api.WriteProblem(c, err) }
	api.New(nil, fhirBase).Register(e.Group("/api/v1"))
	if rec := serve(t, e, "/api/v1/audit/verify", nil); rec.Code != http.StatusNotFound {
		t.Errorf("status %d, want 404", rec.Code)
	}
}

// TestExportOverHTTP: over a real connection the export is chunked and ends
// with its trailer.
func TestExportOverHTTP(t *testing.T) {
	f := newFake(t)
	f.pageMax = 2
	srv := httptest.NewServer(newAuditEcho(f))
	t.Cleanup(srv.Close)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+"/api/v1/audit/events?format=ndjson", nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(body, []byte("\n")); n != len(f.recs) {
		t.Errorf("%d lines, want %d", n, len(f.recs))
	}
	if got := res.Trailer.Get("Kapfhir-Export-Status"); got != "complete" {
		t.Errorf("trailer = %q, want complete (headers %v)", got, res.Header)
	}
	if res.Header.Get("Kapfhir-Export-Status") != "" {
		t.Error("the export status is sent as a header")
	}
}
