package fhir

import (
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	c4pb "github.com/google/fhir/go/proto/google/fhir/proto/r4/core/codes_go_proto"

	"github.com/kapfhir/kapfhir/resource"
)

// FuzzParseSearch feeds arbitrary query strings to the search parameter
// parser for every searchable type. It either builds a query whose every
// part is well-formed (ids are resource ids, references Type/id, date ranges
// non-empty, the page size bounded), and which its own self link parses back
// to; or it fails with a 400 that names invalid or unsupported parameters.
// Nothing panics. The seeds (testdata/fuzz/FuzzParseSearch) carry SQL
// metacharacters: the parser passes values on as data, and the stores bind
// them as parameters.
func FuzzParseSearch(f *testing.F) {
	for _, s := range []struct {
		typ     uint8
		query   string
		lenient bool
	}{
		{0, "identifier=urn:sys%7C123&_count=5", false},
		{1, "subject=Patient/p1,p2&date=ge2026-01-01&_sort=-date&_include=CarePlan:subject", false},
		{2, "status=booked&date=lt2026-12-01T09:00:00Z&_summary=count", false},
		{3, "code=http://loinc.org%7C44261-6&patient=https://ehr.example/fhir/Patient/1&_lastUpdated=gt2026", false},
		{4, "_id=a,b&_id=b,c&_cursor=MXxfaWR8YXwwMDAxLTAxLTAxVDAwOjAwOjAwWnxi", false},
		{5, "url=x&unknown=1&status:not=draft", true},
		{0, "_count=-1&_sort=name&_summary=true&_pretty=yes", false},
		{1, `identifier=a\,b%7Cc\%7Cd&subject=Patient/1/2`, false},
	} {
		f.Add(s.typ, s.query, s.lenient)
	}
	f.Fuzz(func(t *testing.T, typIndex uint8, query string, lenient bool) {
		typ := resource.Types[int(typIndex)%len(resource.Types)]
		vals, err := url.ParseQuery(query)
		if err != nil {
			return // the handler answers 400 before parsing
		}
		sr, err := parseSearch(typ, vals, lenient)
		if err != nil {
			checkSearchError(t, query, err)
			return
		}
		checkQuery(t, typ, query, sr)

		// The self link (without _cursor) plus the cursor is the search again.
		link := url.Values{}
		for k, vs := range sr.link {
			link[k] = slices.Clone(vs)
		}
		if sr.cursor != "" {
			link.Set("_cursor", sr.cursor)
		}
		again, err := parseSearch(typ, link, false)
		if err != nil {
			t.Fatalf("%s?%s parses, but its link %s does not: %v", typ, query, link.Encode(), err)
		}
		if diff := cmp.Diff(sr, again, cmp.AllowUnexported(searchRequest{})); diff != "" {
			t.Fatalf("%s?%s and its link %s parse differently (-first +second):\n%s", typ, query, link.Encode(), diff)
		}
	})
}

// checkSearchError checks that a parse error is a 400 listing invalid or
// unsupported parameters.
func checkSearchError(t *testing.T, query string, err error) {
	t.Helper()
	var fe *Error
	if !errors.As(err, &fe) {
		t.Fatalf("parseSearch(%q) error %T %v; want *fhir.Error", query, err, err)
	}
	if fe.Status() != http.StatusBadRequest || len(fe.issues) == 0 {
		t.Fatalf("parseSearch(%q) = %d with %d issues; want 400 with issues", query, fe.Status(), len(fe.issues))
	}
	for _, is := range fe.issues {
		if is.code != c4pb.IssueTypeCode_INVALID && is.code != c4pb.IssueTypeCode_NOT_SUPPORTED {
			t.Fatalf("parseSearch(%q) issue code %v; want invalid or not-supported", query, is.code)
		}
		if is.diagnostics == "" {
			t.Fatalf("parseSearch(%q) issue without diagnostics", query)
		}
	}
}

// checkQuery checks that every part of a parsed search is well-formed.
func checkQuery(t *testing.T, typ, query string, sr searchRequest) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("%s?%s: "+format, append([]any{typ, query}, args...)...)
	}
	q := sr.q
	if q.Type != typ {
		fail("query type %q", q.Type)
	}
	if q.Count < 0 || q.Count > maxCount {
		fail("page size %d outside [0, %d]", q.Count, maxCount)
	}
	switch q.Sort {
	case resource.SortID, resource.SortLastUpdated, resource.SortDate:
	default:
		fail("sort %q", q.Sort)
	}
	if !slices.IsSorted(q.IDs) || len(slices.Compact(slices.Clone(q.IDs))) != len(q.IDs) {
		fail("ids %q not sorted and unique", q.IDs)
	}
	for _, id := range q.IDs {
		if !resource.ValidID(id) {
			fail("id %q is not a resource id", id)
		}
	}
	if sr.empty && len(q.IDs) != 0 {
		fail("empty = %v with ids %q", sr.empty, q.IDs)
	}
	for _, tf := range q.Tokens {
		if _, ok := resource.LookupParam(typ, tf.Param); !ok || len(tf.Values) == 0 {
			fail("token filter %+v", tf)
		}
		for _, v := range tf.Values {
			if v.AnySystem && (v.System != "" || v.Code == "") || v.System == "" && v.Code == "" {
				fail("token value %+v matches nothing or everything", v)
			}
		}
	}
	for _, rf := range q.Refs {
		p, ok := resource.LookupParam(typ, rf.Param)
		if !ok || len(rf.Targets) == 0 {
			fail("reference filter %+v", rf)
		}
		for _, target := range rf.Targets {
			rt, id, ok := strings.Cut(target, "/")
			if !ok || !slices.Contains(p.Targets, rt) || !resource.ValidID(id) {
				fail("reference %q is not Type/id of %v", target, p.Targets)
			}
		}
	}
	for _, df := range q.Dates {
		if !df.Lo.Before(df.Hi) || df.Lo.Location() != df.Hi.Location() || df.Lo.Location().String() != "UTC" {
			fail("date range [%v, %v) is empty or not UTC", df.Lo, df.Hi)
		}
		switch df.Prefix {
		case resource.EQ, resource.NE, resource.LT, resource.LE, resource.GT, resource.GE:
		default:
			fail("date prefix %q", df.Prefix)
		}
	}
	if q.After != nil && !resource.ValidID(q.After.ID) {
		fail("cursor id %q", q.After.ID)
	}
	for _, inc := range sr.includes {
		if !slices.Contains(resource.Includes[typ], typ+":"+inc) {
			fail("include %q", inc)
		}
	}
}
