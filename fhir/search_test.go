package fhir

import (
	"net/url"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/resource"
)

func utc(y int, m time.Month, d, h, min, s, ns int) time.Time {
	return time.Date(y, m, d, h, min, s, ns, time.UTC)
}

func TestParseSearch(t *testing.T) {
	q := func(typ string, mod func(*resource.Query)) resource.Query {
		r := resource.Query{Type: typ, Sort: resource.SortID, Count: defaultCount}
		if mod != nil {
			mod(&r)
		}
		return r
	}
	patient123 := []resource.RefFilter{{Param: "patient", Targets: []string{"Patient/123"}}}
	tests := []struct {
		name     string
		typ      string
		query    string
		want     resource.Query
		includes []string
	}{
		{"nothing", "CarePlan", "", q("CarePlan", nil), nil},
		{"empty values are ignored", "CarePlan", "status=&_count=", q("CarePlan", nil), nil},
		{"patient id", "Observation", "patient=123", q("Observation", func(r *resource.Query) { r.Refs = patient123 }), nil},
		{"patient Type/id", "Observation", "patient=Patient/123", q("Observation", func(r *resource.Query) { r.Refs = patient123 }), nil},
		{"patient URL", "Observation", "patient=https://ehr.example/fhir/Patient/123", q("Observation", func(r *resource.Query) { r.Refs = patient123 }), nil},
		{"patient URL trailing slash", "Observation", "patient=http://x/Patient/123/", q("Observation", func(r *resource.Query) { r.Refs = patient123 }), nil},
		{"canonical with version", "CarePlan", "instantiates-canonical=https://kapfhir.org/fhir/PlanDefinition/iv-6x%7C1.0", q("CarePlan", func(r *resource.Query) {
			r.Refs = []resource.RefFilter{{Param: "instantiates-canonical", Targets: []string{"PlanDefinition/iv-6x"}}}
		}), nil},
		{"ref OR and AND", "CarePlan", "subject=p1,Patient/p2&based-on=cp9", q("CarePlan", func(r *resource.Query) {
			r.Refs = []resource.RefFilter{
				{Param: "based-on", Targets: []string{"CarePlan/cp9"}},
				{Param: "subject", Targets: []string{"Patient/p1", "Patient/p2"}},
			}
		}), nil},
		{"tokens", "Observation", "code=http://loinc.org%7C1234-5,abc&category=%7Cnosys&identifier=urn:sys%7C&status=final&status=amended", q("Observation", func(r *resource.Query) {
			r.Tokens = []resource.TokenFilter{
				{Param: "category", Values: []resource.TokenValue{{Code: "nosys"}}},
				{Param: "code", Values: []resource.TokenValue{{System: "http://loinc.org", Code: "1234-5"}, {AnySystem: true, Code: "abc"}}},
				{Param: "identifier", Values: []resource.TokenValue{{System: "urn:sys"}}},
				{Param: "status", Values: []resource.TokenValue{{AnySystem: true, Code: "final"}}},
				{Param: "status", Values: []resource.TokenValue{{AnySystem: true, Code: "amended"}}},
			}
		}), nil},
		{"escaped comma and bar", "Patient", `identifier=a\,b%7Cc\%7Cd`, q("Patient", func(r *resource.Query) {
			r.Tokens = []resource.TokenFilter{{Param: "identifier", Values: []resource.TokenValue{{System: "a,b", Code: "c|d"}}}}
		}), nil},
		{"date year", "CarePlan", "date=2026", q("CarePlan", func(r *resource.Query) {
			r.Dates = []resource.DateFilter{{Param: "date", Prefix: resource.EQ, Lo: utc(2026, 1, 1, 0, 0, 0, 0), Hi: utc(2027, 1, 1, 0, 0, 0, 0)}}
		}), nil},
		{"date month", "CarePlan", "date=ge2026-02", q("CarePlan", func(r *resource.Query) {
			r.Dates = []resource.DateFilter{{Param: "date", Prefix: resource.GE, Lo: utc(2026, 2, 1, 0, 0, 0, 0), Hi: utc(2026, 3, 1, 0, 0, 0, 0)}}
		}), nil},
		{"date day", "Appointment", "date=lt2026-02-28", q("Appointment", func(r *resource.Query) {
			r.Dates = []resource.DateFilter{{Param: "date", Prefix: resource.LT, Lo: utc(2026, 2, 28, 0, 0, 0, 0), Hi: utc(2026, 3, 1, 0, 0, 0, 0)}}
		}), nil},
		{"dateTime with offset", "Observation", "date=gt2026-03-01T10:30:00%2B02:00", q("Observation", func(r *resource.Query) {
			r.Dates = []resource.DateFilter{{Param: "date", Prefix: resource.GT, Lo: utc(2026, 3, 1, 8, 30, 0, 0), Hi: utc(2026, 3, 1, 8, 30, 1, 0)}}
		}), nil},
		{"dateTime with fraction", "Observation", "date=le2026-03-01T10:30:00.25Z", q("Observation", func(r *resource.Query) {
			r.Dates = []resource.DateFilter{{Param: "date", Prefix: resource.LE, Lo: utc(2026, 3, 1, 10, 30, 0, 250e6), Hi: utc(2026, 3, 1, 10, 30, 0, 260e6)}}
		}), nil},
		{"date range AND, ne", "CarePlan", "date=ge2026-01&date=lt2026-06&date=ne2026-03-03", q("CarePlan", func(r *resource.Query) {
			r.Dates = []resource.DateFilter{
				{Param: "date", Prefix: resource.GE, Lo: utc(2026, 1, 1, 0, 0, 0, 0), Hi: utc(2026, 2, 1, 0, 0, 0, 0)},
				{Param: "date", Prefix: resource.LT, Lo: utc(2026, 6, 1, 0, 0, 0, 0), Hi: utc(2026, 7, 1, 0, 0, 0, 0)},
				{Param: "date", Prefix: resource.NE, Lo: utc(2026, 3, 3, 0, 0, 0, 0), Hi: utc(2026, 3, 4, 0, 0, 0, 0)},
			}
		}), nil},
		{"_lastUpdated", "Goal", "_lastUpdated=gt2026-03-01T00:00:00Z", q("Goal", func(r *resource.Query) {
			r.Dates = []resource.DateFilter{{Param: "_lastUpdated", Prefix: resource.GT, Lo: utc(2026, 3, 1, 0, 0, 0, 0), Hi: utc(2026, 3, 1, 0, 0, 1, 0)}}
		}), nil},
		{"_id OR", "Goal", "_id=g2,g1", q("Goal", func(r *resource.Query) { r.IDs = []string{"g1", "g2"} }), nil},
		{"_id AND", "Goal", "_id=g1,g2,g3&_id=g3,g2", q("Goal", func(r *resource.Query) { r.IDs = []string{"g2", "g3"} }), nil},
		{"sort and count", "CarePlan", "_sort=-date&_count=7", q("CarePlan", func(r *resource.Query) { r.Sort, r.Desc, r.Count = resource.SortDate, true, 7 }), nil},
		{"sort lastUpdated", "Patient", "_sort=_lastUpdated", q("Patient", func(r *resource.Query) { r.Sort = resource.SortLastUpdated }), nil},
		{"count clamped", "Patient", "_count=5000", q("Patient", func(r *resource.Query) { r.Count = maxCount }), nil},
		{"count zero", "Patient", "_count=0", q("Patient", func(r *resource.Query) { r.Count = 0 }), nil},
		{"summary count", "Patient", "_summary=count&_count=5", q("Patient", func(r *resource.Query) { r.Count = 0 }), nil},
		{"summary false", "Patient", "_summary=false", q("Patient", nil), nil},
		{"includes", "CarePlan", "_include=CarePlan:activity-reference&_include=CarePlan:goal&_include=CarePlan:goal:Goal", q("CarePlan", nil), []string{"activity-reference", "goal"}},
		{"format and pretty", "CarePlan", "_format=json&_pretty=false", q("CarePlan", nil), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vals, err := url.ParseQuery(tt.query)
			if err != nil {
				t.Fatal(err)
			}
			got, err := parseSearch(tt.typ, vals, false)
			if err != nil {
				t.Fatalf("parseSearch(%q): %v", tt.query, err)
			}
			if diff := cmp.Diff(tt.want, got.q); diff != "" {
				t.Errorf("query (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.includes, got.includes); diff != "" {
				t.Errorf("includes (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCursorRoundTrip(t *testing.T) {
	tests := []struct {
		q resource.Query
		c resource.Cursor
	}{
		{resource.Query{Sort: resource.SortID}, resource.Cursor{ID: "cp1"}},
		{resource.Query{Sort: resource.SortDate, Desc: true}, resource.Cursor{Time: utc(2026, 3, 1, 10, 0, 0, 123456000), ID: "a.b-c"}},
		{resource.Query{Sort: resource.SortLastUpdated}, resource.Cursor{Time: time.Date(2026, 3, 1, 10, 0, 0, 1, time.FixedZone("x", 3600)), ID: "x"}},
	}
	for _, tt := range tests {
		s := encodeCursor(tt.q, tt.c)
		got, err := decodeCursor(s, tt.q)
		if err != nil {
			t.Fatalf("decodeCursor(%q): %v", s, err)
		}
		if !got.Time.Equal(tt.c.Time) || got.ID != tt.c.ID {
			t.Errorf("round trip = %+v, want %+v", got, tt.c)
		}
		other := tt.q
		other.Desc = !other.Desc
		if _, err := decodeCursor(s, other); err == nil {
			t.Errorf("a cursor for %+v decoded for %+v", tt.q, other)
		}
	}
}

func TestSplitEscaped(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"a", []string{"a"}},
		{"a,b", []string{"a", "b"}},
		{`a\,b,c`, []string{`a\,b`, "c"}},
		{`a\\,b`, []string{`a\\`, "b"}},
		{",", []string{"", ""}},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, splitEscaped(tt.in, ',')); diff != "" {
			t.Errorf("splitEscaped(%q) (-want +got):\n%s", tt.in, diff)
		}
	}
	if got := unescape(`a\,b\|c\\d\$`); got != `a,b|c\d$` {
		t.Errorf("unescape = %q", got)
	}
}

func TestValidID(t *testing.T) {
	for id, want := range map[string]bool{
		"a": true, "A-b.9": true, "": false, "a_b": false, "a/b": false, "é": false,
		"0123456789012345678901234567890123456789012345678901234567890123":  true,
		"01234567890123456789012345678901234567890123456789012345678901234": false,
	} {
		if got := resource.ValidID(id); got != want {
			t.Errorf("resource.ValidID(%q) = %v, want %v", id, got, want)
		}
	}
}
