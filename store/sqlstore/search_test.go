package sqlstore

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/kapfhir/kapfhir/resource"
)

var (
	positional = &Dialect{ZeroKey: "0"}
	numbered   = &Dialect{Numbered: true, Arrays: true, NativeBool: true, ZeroKey: "0::bigint"}
)

func TestBuildSearch(t *testing.T) {
	after := time.Date(2024, 5, 1, 8, 0, 0, 0, time.UTC)
	q := resource.Query{
		Type:   "Appointment",
		IDs:    []string{"a1", "a2"},
		Tokens: []resource.TokenFilter{{Param: "status", Values: []resource.TokenValue{{AnySystem: true, Code: "booked"}, {AnySystem: true}}}},
		Refs:   []resource.RefFilter{{Param: "patient", Targets: []string{"Patient/p1"}}},
		Sort:   resource.SortDate,
		Desc:   true,
		Count:  10,
		After:  &resource.Cursor{Time: after, ID: "a1"},
	}
	tests := []struct {
		d             *Dialect
		count, page   string
		countN, pageN int
	}{{
		d: positional,
		count: "SELECT COUNT(*) FROM resources r WHERE r.type = ? AND r.deleted = 0 AND r.id IN (?, ?)" +
			" AND EXISTS (SELECT 1 FROM search_tokens t WHERE t.type = r.type AND t.id = r.id AND t.param = ? AND (t.code = ? OR 1 = 1))" +
			" AND EXISTS (SELECT 1 FROM search_refs s WHERE s.type = r.type AND s.id = r.id AND s.param = ? AND s.target IN (?))",
		page: "SELECT r.type, r.id, r.version_id, r.last_updated, r.deleted, r.json, r.sort_date FROM resources r WHERE r.type = ? AND r.deleted = 0 AND r.id IN (?, ?)" +
			" AND EXISTS (SELECT 1 FROM search_tokens t WHERE t.type = r.type AND t.id = r.id AND t.param = ? AND (t.code = ? OR 1 = 1))" +
			" AND EXISTS (SELECT 1 FROM search_refs s WHERE s.type = r.type AND s.id = r.id AND s.param = ? AND s.target IN (?))" +
			" AND (r.sort_date < ? OR (r.sort_date = ? AND r.id < ?)) ORDER BY r.sort_date DESC, r.id DESC LIMIT ?",
		countN: 7, pageN: 11,
	}, {
		d: numbered,
		count: "SELECT COUNT(*) FROM resources r WHERE r.type = $1 AND NOT r.deleted AND r.id = ANY($2::text[])" +
			" AND EXISTS (SELECT 1 FROM search_tokens t WHERE t.type = r.type AND t.id = r.id AND t.param = $3 AND (t.code = $4 OR TRUE))" +
			" AND EXISTS (SELECT 1 FROM search_refs s WHERE s.type = r.type AND s.id = r.id AND s.param = $5 AND s.target = ANY($6::text[]))",
		page: "SELECT r.type, r.id, r.version_id, r.last_updated, r.deleted, r.json, r.sort_date FROM resources r WHERE r.type = $1 AND NOT r.deleted AND r.id = ANY($2::text[])" +
			" AND EXISTS (SELECT 1 FROM search_tokens t WHERE t.type = r.type AND t.id = r.id AND t.param = $3 AND (t.code = $4 OR TRUE))" +
			" AND EXISTS (SELECT 1 FROM search_refs s WHERE s.type = r.type AND s.id = r.id AND s.param = $5 AND s.target = ANY($6::text[]))" +
			" AND (r.sort_date < $7 OR (r.sort_date = $7 AND r.id < $8)) ORDER BY r.sort_date DESC, r.id DESC LIMIT $9",
		countN: 6, pageN: 9,
	}}
	for _, tt := range tests {
		s, err := BuildSearch(tt.d, q)
		if err != nil {
			t.Fatalf("BuildSearch(numbered=%v): %v", tt.d.Numbered, err)
		}
		if s.CountSQL != tt.count {
			t.Errorf("numbered=%v count SQL\n got %s\nwant %s", tt.d.Numbered, s.CountSQL, tt.count)
		}
		if s.PageSQL != tt.page {
			t.Errorf("numbered=%v page SQL\n got %s\nwant %s", tt.d.Numbered, s.PageSQL, tt.page)
		}
		if len(s.CountArgs) != tt.countN || len(s.PageArgs) != tt.pageN || !s.Keyed {
			t.Errorf("numbered=%v: %d count args, %d page args, keyed %v; want %d, %d, true", tt.d.Numbered, len(s.CountArgs), len(s.PageArgs), s.Keyed, tt.countN, tt.pageN)
		}
		if last := s.PageArgs[len(s.PageArgs)-1]; last != 11 {
			t.Errorf("numbered=%v: limit arg = %v, want 11", tt.d.Numbered, last)
		}
	}
	// The array dialect binds the id list as one argument.
	s, _ := BuildSearch(numbered, q)
	if got := s.CountArgs[1]; !reflect.DeepEqual(got, []string{"a1", "a2"}) {
		t.Errorf("numbered id list arg = %#v", got)
	}
}

func TestBuildSearchCountOnly(t *testing.T) {
	s, err := BuildSearch(positional, resource.Query{Type: "Patient"})
	if err != nil {
		t.Fatal(err)
	}
	if s.PageSQL != "" || s.CountSQL != "SELECT COUNT(*) FROM resources r WHERE r.type = ? AND r.deleted = 0" {
		t.Errorf("got count %q, page %q", s.CountSQL, s.PageSQL)
	}
	if _, err := BuildSearch(positional, resource.Query{Type: "Patient", Count: -1}); err == nil {
		t.Error("negative count: no error")
	}
}

func TestRebind(t *testing.T) {
	const q = `INSERT INTO meta (key, value) VALUES (?, ?)`
	if got := positional.Rebind(q); got != q {
		t.Errorf("positional Rebind = %q", got)
	}
	if got, want := numbered.Rebind(q), `INSERT INTO meta (key, value) VALUES ($1, $2)`; got != want {
		t.Errorf("numbered Rebind = %q, want %q", got, want)
	}
}

// TestBuildSearchDriver pins which filter drives a search: the first
// reference filter, else an identifier token, else the first token.
func TestBuildSearchDriver(t *testing.T) {
	status := resource.TokenFilter{Param: "status", Values: []resource.TokenValue{{AnySystem: true, Code: "booked"}}}
	ident := resource.TokenFilter{Param: "identifier", Values: []resource.TokenValue{{System: "urn:x", Code: "1"}}}
	patient := resource.RefFilter{Param: "patient", Targets: []string{"Patient/p1"}}
	for _, tt := range []struct {
		name       string
		q          resource.Query
		in, exists []string
	}{
		{"reference drives", resource.Query{Type: "Appointment", Tokens: []resource.TokenFilter{status}, Refs: []resource.RefFilter{patient}},
			[]string{"r.id IN (SELECT s.id FROM search_refs s"}, []string{"EXISTS (SELECT 1 FROM search_tokens"}},
		{"identifier drives", resource.Query{Type: "Appointment", Tokens: []resource.TokenFilter{status, ident}},
			[]string{"r.id IN (SELECT t.id FROM search_tokens t WHERE t.type = ? AND t.param = ? AND ((t.system"}, []string{"EXISTS (SELECT 1 FROM search_tokens t WHERE t.type = r.type AND t.id = r.id AND t.param = ? AND (t.code"}},
		{"first token drives", resource.Query{Type: "Appointment", Tokens: []resource.TokenFilter{status}},
			[]string{"r.id IN (SELECT t.id FROM search_tokens t"}, nil},
	} {
		s, err := BuildSearch(positional, tt.q)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range tt.in {
			if !strings.Contains(s.CountSQL, w) {
				t.Errorf("%s: %q does not drive:\n%s", tt.name, w, s.CountSQL)
			}
		}
		for _, w := range tt.exists {
			if !strings.Contains(s.CountSQL, w) {
				t.Errorf("%s: %q is not a probe:\n%s", tt.name, w, s.CountSQL)
			}
		}
	}
}
