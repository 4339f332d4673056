package fhir_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/labstack/echo/v4"
	"google.golang.org/protobuf/testing/protocmp"

	bcrpb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/bundle_and_contained_resource_go_proto"
	oopb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/resources/operation_outcome_go_proto"

	"github.com/kapfhir/kapfhir/fhir"
	"github.com/kapfhir/kapfhir/fhir/fhirjson"
	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/treatment"
)

const base = "http://kapfhir.test/fhir"

// newEcho serves f the way server does: the FHIR group at /fhir and one
// error handler that calls WriteError.
func newEcho(t testing.TB, f fhir.Reader, o fhir.Options) *echo.Echo {
	t.Helper()
	if o.Now == nil {
		o.Now = func() time.Time { return t0.Add(24 * time.Hour) }
	}
	s, err := fhir.New(f, o)
	if err != nil {
		t.Fatal(err)
	}
	e := echo.New()
	e.HTTPErrorHandler = func(err error, c echo.Context) { fhir.WriteError(c, err) }
	s.Register(e.Group("/fhir"))
	return e
}

func newTestEcho(t testing.TB, f fhir.Reader) *echo.Echo {
	t.Helper()
	return newEcho(t, f, fhir.Options{BaseURL: base, Software: "kapfhir test-1"})
}

type request struct {
	method, target string
	header         map[string]string
	body           string
}

func do(t testing.TB, e *echo.Echo, r request) *httptest.ResponseRecorder {
	t.Helper()
	if r.method == "" {
		r.method = http.MethodGet
	}
	var body io.Reader
	if r.body != "" {
		body = strings.NewReader(r.body)
	}
	req := httptest.NewRequestWithContext(t.Context(), r.method, r.target, body)
	for k, v := range r.header {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, req)
	return rec
}

func get(t testing.TB, e *echo.Echo, target string) *httptest.ResponseRecorder {
	t.Helper()
	return do(t, e, request{target: target})
}

// parse validates a FHIR response body and returns the resource.
func parse(t testing.TB, rec *httptest.ResponseRecorder) *bcrpb.ContainedResource {
	t.Helper()
	if got, want := rec.Header().Get("Content-Type"), "application/fhir+json; charset=utf-8"; got != want {
		t.Errorf("Content-Type = %q, want %q", got, want)
	}
	cr, err := fhirjson.Unmarshal(rec.Body.Bytes())
	if err != nil {
		t.Fatalf("the body is not valid FHIR: %v\n%s", err, rec.Body)
	}
	return cr
}

func bundle(t testing.TB, rec *httptest.ResponseRecorder) *bcrpb.Bundle {
	t.Helper()
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d, want 200: %s", rec.Code, rec.Body)
	}
	b := parse(t, rec).GetBundle()
	if b == nil {
		t.Fatalf("not a Bundle: %s", rec.Body)
	}
	return b
}

// entryIDs lists "mode Type/id" per entry.
func entryIDs(b *bcrpb.Bundle) []string {
	var out []string
	for _, e := range b.GetEntry() {
		r := e.GetResource()
		id := ""
		switch {
		case r.GetCarePlan() != nil:
			id = "CarePlan/" + r.GetCarePlan().GetId().GetValue()
		case r.GetPatient() != nil:
			id = "Patient/" + r.GetPatient().GetId().GetValue()
		case r.GetAppointment() != nil:
			id = "Appointment/" + r.GetAppointment().GetId().GetValue()
		}
		mode := strings.ToLower(e.GetSearch().GetMode().GetValue().String())
		out = append(out, mode+" "+id)
	}
	return out
}

func links(b *bcrpb.Bundle) map[string]string {
	m := map[string]string{}
	for _, l := range b.GetLink() {
		m[l.GetRelation().GetValue()] = l.GetUrl().GetValue()
	}
	return m
}

func TestRead(t *testing.T) {
	f := fixture(t)
	e := newTestEcho(t, f)
	cp1 := f.versions[resource.Key{Type: "CarePlan", ID: "cp1"}]
	tests := []struct {
		name   string
		target string
		want   resource.Version
	}{
		{"read", "/fhir/CarePlan/cp1", cp1[2]},
		{"read with _format", "/fhir/CarePlan/cp1?_format=json", cp1[2]},
		{"vread 1", "/fhir/CarePlan/cp1/_history/1", cp1[0]},
		{"vread 2", "/fhir/CarePlan/cp1/_history/2", cp1[1]},
		{"patient", "/fhir/Patient/p1", f.versions[resource.Key{Type: "Patient", ID: "p1"}][0]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := get(t, e, tt.target)
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			parse(t, rec)
			if got := rec.Body.String(); got != string(tt.want.JSON) {
				t.Errorf("body is not the stored bytes:\n got %s\nwant %s", got, tt.want.JSON)
			}
			want := map[string]string{
				"ETag":          `W/"` + strconv.FormatInt(tt.want.VersionID, 10) + `"`,
				"Last-Modified": tt.want.LastUpdated.UTC().Format(http.TimeFormat),
			}
			got := map[string]string{"ETag": rec.Header().Get("ETag"), "Last-Modified": rec.Header().Get("Last-Modified")}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("headers (-want +got):\n%s", diff)
			}
		})
	}
}

func TestHistory(t *testing.T) {
	f := fixture(t)
	e := newTestEcho(t, f)
	b := bundle(t, get(t, e, "/fhir/CarePlan/cp1/_history"))
	if got := b.GetType().GetValue().String(); got != "HISTORY" {
		t.Errorf("type = %s, want HISTORY", got)
	}
	if got := b.GetTotal().GetValue(); got != 3 {
		t.Errorf("total = %d, want 3", got)
	}
	if got, want := links(b)["self"], base+"/CarePlan/cp1/_history"; got != want {
		t.Errorf("self = %q, want %q", got, want)
	}
	type row struct {
		FullURL, Method, URL, Status, ETag string
		LastModified                       int64
		VersionID                          string
	}
	var got []row
	for _, en := range b.GetEntry() {
		got = append(got, row{
			FullURL: en.GetFullUrl().GetValue(), Method: en.GetRequest().GetMethod().GetValue().String(),
			URL: en.GetRequest().GetUrl().GetValue(), Status: en.GetResponse().GetStatus().GetValue(),
			ETag: en.GetResponse().GetEtag().GetValue(), LastModified: en.GetResponse().GetLastModified().GetValueUs(),
			VersionID: en.GetResource().GetCarePlan().GetMeta().GetVersionId().GetValue(),
		})
	}
	at := func(h int) int64 { return t0.Add(time.Duration(h) * time.Hour).UnixMicro() }
	want := []row{
		{base + "/CarePlan/cp1", "PUT", "CarePlan/cp1", "200 OK", `W/"3"`, at(3), "3"},
		{base + "/CarePlan/cp1", "PUT", "CarePlan/cp1", "200 OK", `W/"2"`, at(2), "2"},
		{base + "/CarePlan/cp1", "POST", "CarePlan", "201 Created", `W/"1"`, at(1), "1"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("history entries (-want +got):\n%s", diff)
	}
}

// TestSpliceValid proves that the spliced Bundle is valid FHIR and carries the
// stored resources unchanged.
func TestSpliceValid(t *testing.T) {
	f := fixture(t)
	e := newTestEcho(t, f)
	b := bundle(t, get(t, e, "/fhir/CarePlan?_id=cp1&_include=CarePlan:activity-reference&_include=CarePlan:subject"))
	var gotRes []*bcrpb.ContainedResource
	for _, en := range b.GetEntry() {
		gotRes = append(gotRes, en.GetResource())
	}
	var wantRes []*bcrpb.ContainedResource
	for _, k := range []resource.Key{{Type: "CarePlan", ID: "cp1"}, {Type: "Appointment", ID: "a1"}, {Type: "Patient", ID: "p1"}} {
		vs := f.versions[k]
		cr, err := fhirjson.Unmarshal(vs[len(vs)-1].JSON)
		if err != nil {
			t.Fatal(err)
		}
		wantRes = append(wantRes, cr)
	}
	if diff := cmp.Diff(wantRes, gotRes, protocmp.Transform()); diff != "" {
		t.Errorf("entry resources (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"match CarePlan/cp1", "include Appointment/a1", "include Patient/p1"}, entryIDs(b)); diff != "" {
		t.Errorf("entries (-want +got):\n%s", diff)
	}
	if got, want := b.GetEntry()[1].GetFullUrl().GetValue(), base+"/Appointment/a1"; got != want {
		t.Errorf("include fullUrl = %q, want %q", got, want)
	}
}

func TestIncludeDeduplicates(t *testing.T) {
	f := fixture(t)
	e := newTestEcho(t, f)
	// cp1 and cp2 both have subject p1: it is included once.
	b := bundle(t, get(t, e, "/fhir/CarePlan?_id=cp1,cp2&_include=CarePlan:subject&_include=CarePlan:subject:Patient"))
	want := []string{"match CarePlan/cp1", "match CarePlan/cp2", "include Patient/p1"}
	if diff := cmp.Diff(want, entryIDs(b)); diff != "" {
		t.Errorf("entries (-want +got):\n%s", diff)
	}
}

func TestSearchPaging(t *testing.T) {
	tests := []struct {
		name  string
		first request
		want  [][]string
	}{
		{
			name:  "GET by id",
			first: request{target: "/fhir/CarePlan?_count=2"},
			want:  [][]string{{"cp1", "cp2"}, {"cp3", "cp4"}, {"cp5"}},
		},
		{
			name:  "GET by id descending",
			first: request{target: "/fhir/CarePlan?_count=2&_sort=-_id"},
			want:  [][]string{{"cp5", "cp4"}, {"cp3", "cp2"}, {"cp1"}},
		},
		{
			name:  "GET by lastUpdated",
			first: request{target: "/fhir/CarePlan?_count=3&_sort=_lastUpdated"},
			// cp5..cp2 are at t0+5..8min, cp1 at t0+3h.
			want: [][]string{{"cp5", "cp4", "cp3"}, {"cp2", "cp1"}},
		},
		{
			name:  "GET _search",
			first: request{target: "/fhir/CarePlan/_search?_count=4"},
			want:  [][]string{{"cp1", "cp2", "cp3", "cp4"}, {"cp5"}},
		},
		{
			name: "POST _search",
			first: request{
				method: http.MethodPost, target: "/fhir/CarePlan/_search",
				header: map[string]string{"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
				body:   "_count=2&status=active",
			},
			want: [][]string{{"cp1", "cp2"}, {"cp3", "cp4"}, {"cp5"}},
		},
		{
			name:  "default count",
			first: request{target: "/fhir/CarePlan"},
			want:  [][]string{{"cp1", "cp2", "cp3", "cp4", "cp5"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEcho(t, fixture(t))
			var got [][]string
			r := tt.first
			for range 10 {
				b := bundle(t, do(t, e, r))
				if b.GetType().GetValue().String() != "SEARCHSET" || b.GetTotal().GetValue() != 5 {
					t.Fatalf("type %s total %d, want SEARCHSET 5", b.GetType().GetValue(), b.GetTotal().GetValue())
				}
				var ids []string
				for _, en := range b.GetEntry() {
					ids = append(ids, en.GetResource().GetCarePlan().GetId().GetValue())
					if got, want := en.GetFullUrl().GetValue(), base+"/CarePlan/"+ids[len(ids)-1]; got != want {
						t.Errorf("fullUrl = %q, want %q", got, want)
					}
					if got := en.GetSearch().GetMode().GetValue().String(); got != "MATCH" {
						t.Errorf("search.mode = %s, want MATCH", got)
					}
				}
				got = append(got, ids)
				l := links(b)
				if !strings.HasPrefix(l["self"], base+"/CarePlan?") {
					t.Errorf("self = %q", l["self"])
				}
				next, ok := l["next"]
				if !ok {
					break
				}
				if !strings.HasPrefix(next, base+"/CarePlan?") || !strings.Contains(next, "_cursor=") {
					t.Fatalf("next = %q", next)
				}
				r = request{target: strings.TrimPrefix(next, "http://kapfhir.test")}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("pages (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSelfLink(t *testing.T) {
	e := newTestEcho(t, fixture(t))
	b := bundle(t, get(t, e, "/fhir/CarePlan?status=active&_format=json&_pretty=true&subject=p1&_count=5000"))
	want := base + "/CarePlan?" + url.Values{
		"status": {"active"}, "subject": {"p1"}, "_count": {"1000"},
	}.Encode()
	if got := links(b)["self"]; got != want {
		t.Errorf("self = %q, want %q", got, want)
	}
}

func TestSummaryCount(t *testing.T) {
	for _, target := range []string{"/fhir/CarePlan?_summary=count", "/fhir/CarePlan?_count=0", "/fhir/CarePlan?_summary=count&_include=CarePlan:subject"} {
		t.Run(target, func(t *testing.T) {
			f := fixture(t)
			e := newTestEcho(t, f)
			b := bundle(t, get(t, e, target))
			if got := b.GetTotal().GetValue(); got != 5 {
				t.Errorf("total = %d, want 5", got)
			}
			if len(b.GetEntry()) != 0 {
				t.Errorf("entries = %v, want none", entryIDs(b))
			}
			if _, ok := links(b)["next"]; ok {
				t.Error("a count-only Bundle has a next link")
			}
			if got := f.queries[len(f.queries)-1].Count; got != 0 {
				t.Errorf("query Count = %d, want 0", got)
			}
		})
	}
}

func TestDisjointIDs(t *testing.T) {
	f := fixture(t)
	e := newTestEcho(t, f)
	b := bundle(t, get(t, e, "/fhir/CarePlan?_id=cp1&_id=cp2"))
	if b.GetTotal().GetValue() != 0 || len(b.GetEntry()) != 0 {
		t.Errorf("total %d entries %v, want none", b.GetTotal().GetValue(), entryIDs(b))
	}
	if len(f.queries) != 0 {
		t.Errorf("the store was asked %v for a query that cannot match", f.queries)
	}
}

func TestLenient(t *testing.T) {
	e := newTestEcho(t, fixture(t))
	for _, prefer := range []string{"handling=lenient", "return=minimal; handling=lenient", `handling="lenient"`} {
		rec := do(t, e, request{target: "/fhir/CarePlan?_elements=id&foo=bar&_count=2", header: map[string]string{"Prefer": prefer}})
		b := bundle(t, rec)
		if got, want := links(b)["self"], base+"/CarePlan?_count=2"; got != want {
			t.Errorf("Prefer %q: self = %q, want %q", prefer, got, want)
		}
	}
	// Lenient ignores unknown parameters, not bad values of known ones.
	rec := do(t, e, request{target: "/fhir/CarePlan?_count=x", header: map[string]string{"Prefer": "handling=lenient"}})
	if rec.Code != http.StatusBadRequest {
		t.Errorf("lenient _count=x: status %d, want 400", rec.Code)
	}
}

func TestAccept(t *testing.T) {
	e := newTestEcho(t, fixture(t))
	tests := []struct {
		target, accept string
		want           int
	}{
		{"/fhir/CarePlan/cp1", "", 200},
		{"/fhir/CarePlan/cp1", "application/fhir+json", 200},
		{"/fhir/CarePlan/cp1", "application/fhir+json; fhirVersion=4.0", 200},
		{"/fhir/CarePlan/cp1", "application/json", 200},
		{"/fhir/CarePlan/cp1", "*/*", 200},
		{"/fhir/CarePlan/cp1", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", 200},
		{"/fhir/CarePlan/cp1", "application/fhir+xml", 406},
		{"/fhir/CarePlan/cp1", "application/xml, text/html", 406},
		{"/fhir/CarePlan/cp1", "application/fhir+json;q=0", 406},
		{"/fhir/CarePlan/cp1?_format=json", "application/fhir+xml", 200},
		{"/fhir/CarePlan/cp1?_format=application/fhir+json", "", 200}, // "+" arrives as a space
		{"/fhir/CarePlan/cp1?_format=application%2Ffhir%2Bjson", "", 200},
		{"/fhir/CarePlan/cp1?_format=application/json", "", 200},
		{"/fhir/CarePlan/cp1?_format=xml", "", 406},
		{"/fhir/CarePlan/cp1?_format=application/fhir%2Bxml", "application/fhir+json", 406},
		{"/fhir/CarePlan?_format=xml", "", 406},
		{"/fhir/CarePlan/cp1/_history?_format=xml", "", 406},
		{"/fhir/metadata", "application/fhir+xml", 406},
		{"/fhir/metadata?_format=json", "", 200},
	}
	for _, tt := range tests {
		rec := do(t, e, request{target: tt.target, header: map[string]string{"Accept": tt.accept}})
		if rec.Code != tt.want {
			t.Errorf("GET %s Accept %q: status %d, want %d: %s", tt.target, tt.accept, rec.Code, tt.want, rec.Body)
		}
		parse(t, rec)
	}
}

// outcome is the part of an OperationOutcome the tests compare.
type outcome struct {
	Status int
	Issues []outcomeIssue
}

type outcomeIssue struct {
	Code, Expression string
}

func parseOutcome(t testing.TB, rec *httptest.ResponseRecorder) (outcome, *oopb.OperationOutcome) {
	t.Helper()
	oo := parse(t, rec).GetOperationOutcome()
	if oo == nil {
		t.Fatalf("not an OperationOutcome: %s", rec.Body)
	}
	got := outcome{Status: rec.Code}
	for _, is := range oo.GetIssue() {
		if s := is.GetSeverity().GetValue().String(); s != "ERROR" {
			t.Errorf("severity = %s, want ERROR", s)
		}
		if is.GetDiagnostics().GetValue() == "" {
			t.Error("an issue has no diagnostics")
		}
		oi := outcomeIssue{Code: is.GetCode().GetValue().String()}
		if len(is.GetExpression()) > 0 {
			oi.Expression = is.GetExpression()[0].GetValue()
		}
		got.Issues = append(got.Issues, oi)
	}
	return got, oo
}

func one(status int, code, expr string) outcome {
	return outcome{Status: status, Issues: []outcomeIssue{{Code: code, Expression: expr}}}
}

func TestErrors(t *testing.T) {
	form := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	tests := []struct {
		name string
		req  request
		want outcome
	}{
		{"unknown id", request{target: "/fhir/CarePlan/nope"}, one(404, "NOT_FOUND", "")},
		{"unknown version", request{target: "/fhir/CarePlan/cp1/_history/9"}, one(404, "NOT_FOUND", "")},
		{"unknown history", request{target: "/fhir/CarePlan/nope/_history"}, one(404, "NOT_FOUND", "")},
		{"unknown type read", request{target: "/fhir/Medication/1"}, one(404, "NOT_FOUND", "")},
		{"unknown type search", request{target: "/fhir/Medication?code=1"}, one(404, "NOT_FOUND", "")},
		{"unknown type history", request{target: "/fhir/Medication/1/_history"}, one(404, "NOT_FOUND", "")},
		{"unknown type POST search", request{method: "POST", target: "/fhir/Medication/_search", header: form}, one(404, "NOT_FOUND", "")},
		{"bad id", request{target: "/fhir/CarePlan/a_b"}, one(400, "INVALID", "id")},
		{"long id", request{target: "/fhir/CarePlan/" + strings.Repeat("a", 65)}, one(400, "INVALID", "id")},
		{"bad vid", request{target: "/fhir/CarePlan/cp1/_history/x"}, one(400, "INVALID", "vid")},
		{"zero vid", request{target: "/fhir/CarePlan/cp1/_history/0"}, one(400, "INVALID", "vid")},
		{"no route", request{target: "/fhir/CarePlan/cp1/x/y/z"}, one(404, "NOT_FOUND", "")},
		{"method not allowed", request{method: "POST", target: "/fhir/CarePlan"}, one(405, "NOT_SUPPORTED", "")},
		{"delete not allowed", request{method: "DELETE", target: "/fhir/CarePlan/cp1"}, one(405, "NOT_SUPPORTED", "")},
		{"unknown param", request{target: "/fhir/CarePlan?foo=1"}, one(400, "NOT_SUPPORTED", "foo")},
		{"param of another type", request{target: "/fhir/Patient?status=active"}, one(400, "NOT_SUPPORTED", "status")},
		{"modifier", request{target: "/fhir/CarePlan?status:not=active"}, one(400, "NOT_SUPPORTED", "status:not")},
		{"missing modifier", request{target: "/fhir/CarePlan?date:missing=true"}, one(400, "NOT_SUPPORTED", "date:missing")},
		{"include iterate", request{target: "/fhir/CarePlan?_include:iterate=CarePlan:goal"}, one(400, "NOT_SUPPORTED", "_include:iterate")},
		{"bad date", request{target: "/fhir/CarePlan?date=2026-13"}, one(400, "INVALID", "date")},
		{"date without zone", request{target: "/fhir/CarePlan?date=2026-03-01T10:00:00"}, one(400, "INVALID", "date")},
		{"date prefix", request{target: "/fhir/CarePlan?date=xx2026"}, one(400, "INVALID", "date")},
		{"unsupported date prefix", request{target: "/fhir/CarePlan?date=sa2026"}, one(400, "NOT_SUPPORTED", "date")},
		{"date OR", request{target: "/fhir/CarePlan?date=2026,2027"}, one(400, "NOT_SUPPORTED", "date")},
		{"bad _lastUpdated", request{target: "/fhir/CarePlan?_lastUpdated=yesterday"}, one(400, "INVALID", "_lastUpdated")},
		{"bad _count", request{target: "/fhir/CarePlan?_count=abc"}, one(400, "INVALID", "_count")},
		{"negative _count", request{target: "/fhir/CarePlan?_count=-1"}, one(400, "INVALID", "_count")},
		{"repeated _count", request{target: "/fhir/CarePlan?_count=1&_count=2"}, one(400, "INVALID", "_count")},
		{"bad _sort", request{target: "/fhir/CarePlan?_sort=status"}, one(400, "NOT_SUPPORTED", "_sort")},
		{"two sort fields", request{target: "/fhir/CarePlan?_sort=date,_id"}, one(400, "NOT_SUPPORTED", "_sort")},
		{"date sort without date", request{target: "/fhir/Patient?_sort=date"}, one(400, "NOT_SUPPORTED", "_sort")},
		{"bad _summary", request{target: "/fhir/CarePlan?_summary=true"}, one(400, "NOT_SUPPORTED", "_summary")},
		{"bad _pretty", request{target: "/fhir/CarePlan?_pretty=yes"}, one(400, "INVALID", "_pretty")},
		{"bad _include", request{target: "/fhir/CarePlan?_include=CarePlan:status"}, one(400, "NOT_SUPPORTED", "_include")},
		{"include of another type", request{target: "/fhir/CarePlan?_include=Goal:patient"}, one(400, "NOT_SUPPORTED", "_include")},
		{"include wrong target", request{target: "/fhir/CarePlan?_include=CarePlan:subject:Goal"}, one(400, "NOT_SUPPORTED", "_include")},
		{"wildcard include", request{target: "/fhir/CarePlan?_include=*"}, one(400, "NOT_SUPPORTED", "_include")},
		{"bad cursor", request{target: "/fhir/CarePlan?_cursor=!!!"}, one(400, "INVALID", "_cursor")},
		{"garbage cursor", request{target: "/fhir/CarePlan?_cursor=aGVsbG8"}, one(400, "INVALID", "_cursor")},
		{"cursor of another sort", request{target: "/fhir/CarePlan?_sort=-_id&_cursor=" + cursorFor(t, "/fhir/CarePlan?_count=1")}, one(400, "INVALID", "_cursor")},
		{"ref wrong type", request{target: "/fhir/CarePlan?subject=Goal/1"}, one(400, "INVALID", "subject")},
		{"ref versioned", request{target: "/fhir/CarePlan?subject=http://x/fhir/Patient/1/_history/2"}, one(400, "INVALID", "subject")},
		{"ref bad id", request{target: "/fhir/CarePlan?subject=Patient/a_b"}, one(400, "INVALID", "subject")},
		{"bad _id", request{target: "/fhir/CarePlan?_id=a_b"}, one(400, "INVALID", "_id")},
		{"empty token", request{target: "/fhir/CarePlan?status=%7C"}, one(400, "INVALID", "status")},
		{"POST JSON search", request{method: "POST", target: "/fhir/CarePlan/_search", header: map[string]string{"Content-Type": "application/json"}, body: "{}"}, one(415, "NOT_SUPPORTED", "")},
		{"POST search without type", request{method: "POST", target: "/fhir/CarePlan/_search", body: "_count=1"}, one(415, "NOT_SUPPORTED", "")},
		{"POST search bad param", request{method: "POST", target: "/fhir/CarePlan/_search", header: form, body: "foo=1"}, one(400, "NOT_SUPPORTED", "foo")},
		{"undecodable query", request{target: "/fhir/CarePlan?status=%zz"}, one(400, "INVALID", "")},
		{"semicolon query", request{target: "/fhir/CarePlan?status=a;b"}, one(400, "INVALID", "")},
		{"undecodable form", request{method: "POST", target: "/fhir/CarePlan/_search", header: form, body: "status=%zz"}, one(400, "INVALID", "")},
		{"406", request{target: "/fhir/CarePlan/cp1", header: map[string]string{"Accept": "application/fhir+xml"}}, one(406, "NOT_SUPPORTED", "")},
		{
			"every problem at once",
			request{target: "/fhir/CarePlan?foo=1&_count=x&date=2026-99"},
			outcome{Status: 400, Issues: []outcomeIssue{{"INVALID", "_count"}, {"INVALID", "date"}, {"NOT_SUPPORTED", "foo"}}},
		},
	}
	e := newTestEcho(t, fixture(t))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := parseOutcome(t, do(t, e, tt.req))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("outcome (-want +got):\n%s", diff)
			}
		})
	}
}

// cursorFor returns the _cursor of the next link of a search.
func cursorFor(t testing.TB, target string) string {
	t.Helper()
	b := bundle(t, get(t, newTestEcho(t, fixture(t)), target))
	u, err := url.Parse(links(b)["next"])
	if err != nil {
		t.Fatal(err)
	}
	return url.QueryEscape(u.Query().Get("_cursor"))
}

func TestMethodNotAllowedHeader(t *testing.T) {
	e := newTestEcho(t, fixture(t))
	rec := do(t, e, request{method: http.MethodPut, target: "/fhir/CarePlan/cp1"})
	if rec.Code != http.StatusMethodNotAllowed || !strings.Contains(rec.Header().Get("Allow"), "GET") {
		t.Errorf("status %d Allow %q, want 405 with GET", rec.Code, rec.Header().Get("Allow"))
	}
}

func TestReaderErrors(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want outcome
		msg  string
	}{
		{"internal", errors.New("db: secret connection string"), one(500, "EXCEPTION", ""), "an internal error occurred; it has been logged"},
		{"internal kind", &treatment.Error{Kind: treatment.KindInternal, Msg: "secret detail"}, one(500, "EXCEPTION", ""), "an internal error occurred; it has been logged"},
		{"unavailable", treatment.Errorf(treatment.KindUnavailable, "the store is unavailable"), one(503, "TRANSIENT", ""), "the store is unavailable"},
		{"conflict", treatment.Errorf(treatment.KindConflict, "busy"), one(409, "CONFLICT", ""), "busy"},
		{"unauthorized", treatment.Errorf(treatment.KindUnauthorized, "no token"), one(401, "LOGIN", ""), "no token"},
		{"forbidden", treatment.Errorf(treatment.KindForbidden, "no right"), one(403, "FORBIDDEN", ""), "no right"},
		{"invalid with fields", treatment.Invalid("bad", treatment.FieldError{Field: "a", Reason: "why"}), one(400, "INVALID", "a"), "bad: why"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := fixture(t)
			f.err = tt.err
			e := newTestEcho(t, f)
			for _, target := range []string{"/fhir/CarePlan/cp1", "/fhir/CarePlan/cp1/_history/1", "/fhir/CarePlan/cp1/_history", "/fhir/CarePlan", "/fhir/CarePlan?_id=cp1&_include=CarePlan:subject"} {
				got, oo := parseOutcome(t, get(t, e, target))
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("GET %s outcome (-want +got):\n%s", target, diff)
				}
				if d := oo.GetIssue()[0].GetDiagnostics().GetValue(); d != tt.msg {
					t.Errorf("GET %s diagnostics = %q, want %q", target, d, tt.msg)
				}
			}
		})
	}
}

func TestWriteErrorEchoErrors(t *testing.T) {
	tests := []struct {
		err  error
		want outcome
		msg  string
	}{
		{echo.NewHTTPError(http.StatusRequestEntityTooLarge, "the body exceeds 10 bytes"), one(413, "TOO_LONG", ""), "the body exceeds 10 bytes"},
		{echo.ErrNotFound, one(404, "NOT_FOUND", ""), "Not Found"},
		{echo.NewHTTPError(http.StatusInternalServerError, "secret"), one(500, "EXCEPTION", ""), "Internal Server Error"},
		{fhir.InvalidParam("x", "bad x"), one(400, "INVALID", "x"), "bad x"},
		{fhir.UnsupportedParam("y", "no y"), one(400, "NOT_SUPPORTED", "y"), "no y"},
		{fhir.NotAcceptable("json only"), one(406, "NOT_SUPPORTED", ""), "json only"},
		{fhir.UnsupportedMediaType("form only"), one(415, "NOT_SUPPORTED", ""), "form only"},
	}
	for _, tt := range tests {
		rec := httptest.NewRecorder()
		c := echo.New().NewContext(httptest.NewRequestWithContext(t.Context(), http.MethodGet, "/fhir/x", nil), rec)
		fhir.WriteError(c, tt.err)
		got, oo := parseOutcome(t, rec)
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("WriteError(%v) (-want +got):\n%s", tt.err, diff)
		}
		if d := oo.GetIssue()[0].GetDiagnostics().GetValue(); d != tt.msg {
			t.Errorf("WriteError(%v) diagnostics = %q, want %q", tt.err, d, tt.msg)
		}
	}
}

func TestMetadata(t *testing.T) {
	e := newTestEcho(t, fixture(t))
	rec := get(t, e, "/fhir/metadata")
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	cs := parse(t, rec).GetCapabilityStatement()
	if cs == nil {
		t.Fatalf("not a CapabilityStatement: %s", rec.Body)
	}
	type head struct {
		Status, Kind, FhirVersion, Software, Version, ImplURL, Mode string
		Formats                                                     []string
		Date                                                        int64
	}
	gotHead := head{
		Status: cs.GetStatus().GetValue().String(), Kind: cs.GetKind().GetValue().String(),
		FhirVersion: cs.GetFhirVersion().GetValue().String(), Software: cs.GetSoftware().GetName().GetValue(),
		Version: cs.GetSoftware().GetVersion().GetValue(), ImplURL: cs.GetImplementation().GetUrl().GetValue(),
		Mode: cs.GetRest()[0].GetMode().GetValue().String(), Date: cs.GetDate().GetValueUs(),
	}
	for _, f := range cs.GetFormat() {
		gotHead.Formats = append(gotHead.Formats, f.GetValue())
	}
	wantHead := head{
		Status: "ACTIVE", Kind: "INSTANCE", FhirVersion: "V_4_0_1", Software: "kapfhir", Version: "test-1",
		ImplURL: base, Mode: "SERVER", Formats: []string{"json"}, Date: t0.Add(24 * time.Hour).UnixMicro(),
	}
	if diff := cmp.Diff(wantHead, gotHead); diff != "" {
		t.Errorf("CapabilityStatement (-want +got):\n%s", diff)
	}

	type res struct {
		Type         string
		Interactions []string
		Params       []string
		Includes     []string
		Versioning   string
		ReadHistory  bool
	}
	var got []res
	for _, r := range cs.GetRest()[0].GetResource() {
		g := res{Type: r.GetType().GetValue().String(), Versioning: r.GetVersioning().GetValue().String(), ReadHistory: r.GetReadHistory().GetValue()}
		for _, i := range r.GetInteraction() {
			g.Interactions = append(g.Interactions, i.GetCode().GetValue().String())
		}
		for _, p := range r.GetSearchParam() {
			g.Params = append(g.Params, p.GetName().GetValue()+":"+strings.ToLower(p.GetType().GetValue().String()))
			if p.GetDocumentation().GetValue() == "" {
				t.Errorf("%s search param %s has no documentation", g.Type, p.GetName().GetValue())
			}
		}
		for _, i := range r.GetSearchInclude() {
			g.Includes = append(g.Includes, i.GetValue())
		}
		got = append(got, g)
	}
	var want []res
	enum := map[string]string{
		"Patient": "PATIENT", "CarePlan": "CARE_PLAN", "Appointment": "APPOINTMENT",
		"Observation": "OBSERVATION", "Goal": "GOAL", "PlanDefinition": "PLAN_DEFINITION", "Provenance": "PROVENANCE",
	}
	for _, typ := range resource.Types {
		w := res{
			Type: enum[typ], Interactions: []string{"READ", "VREAD", "HISTORY_INSTANCE", "SEARCH_TYPE"},
			Params: []string{"_id:token", "_lastUpdated:date"}, Includes: resource.Includes[typ],
			Versioning: "VERSIONED", ReadHistory: true,
		}
		for _, p := range resource.Params[typ] {
			w.Params = append(w.Params, p.Name+":"+string(p.Type))
		}
		want = append(want, w)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("rest.resource (-want +got):\n%s", diff)
	}

	// Served from memory: a second request returns the same bytes.
	if again := get(t, e, "/fhir/metadata").Body.String(); again != rec.Body.String() {
		t.Error("the CapabilityStatement changed between requests")
	}
}

// TestDerivedBase: without Options.BaseURL, fullUrl and links use the
// request's scheme and host.
func TestDerivedBase(t *testing.T) {
	e := newEcho(t, fixture(t), fhir.Options{})
	b := bundle(t, get(t, e, "/fhir/CarePlan?_id=cp1"))
	if got, want := b.GetEntry()[0].GetFullUrl().GetValue(), "http://example.com/fhir/CarePlan/cp1"; got != want {
		t.Errorf("fullUrl = %q, want %q", got, want)
	}
	if got := links(b)["self"]; !strings.HasPrefix(got, "http://example.com/fhir/CarePlan?") {
		t.Errorf("self = %q", got)
	}
	cs := parse(t, get(t, e, "/fhir/metadata")).GetCapabilityStatement()
	if cs.GetImplementation().GetUrl() != nil || cs.GetSoftware() != nil {
		t.Errorf("implementation.url %v software %v, want none", cs.GetImplementation().GetUrl(), cs.GetSoftware())
	}
}

func TestDeletedVersion(t *testing.T) {
	f := fixture(t)
	at := t0.Add(48 * time.Hour)
	f.put(resource.Version{Type: "CarePlan", ID: "cp1", VersionID: 4, LastUpdated: at, Deleted: true})
	e := newTestEcho(t, f)
	if got, _ := parseOutcome(t, get(t, e, "/fhir/CarePlan/cp1/_history/4")); got.Status != http.StatusGone {
		t.Errorf("vread of a deletion: status %d, want 410", got.Status)
	}
	if got, _ := parseOutcome(t, get(t, e, "/fhir/CarePlan/cp1")); got.Status != http.StatusNotFound {
		t.Errorf("read of a deleted resource: status %d, want 404", got.Status)
	}
	b := bundle(t, get(t, e, "/fhir/CarePlan/cp1/_history"))
	first := b.GetEntry()[0]
	if first.GetResource() != nil || first.GetRequest().GetMethod().GetValue().String() != "DELETE" {
		t.Errorf("history of a deletion: %v", first)
	}
	if n := len(b.GetEntry()); n != 4 {
		t.Errorf("history has %d entries, want 4", n)
	}
}

func TestNewNilReader(t *testing.T) {
	if _, err := fhir.New(nil, fhir.Options{}); err == nil {
		t.Error("New(nil) succeeded")
	}
}
