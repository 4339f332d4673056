package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	neturl "net/url"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/auth"
	"github.com/kapfhir/kapfhir/fhir/fhirjson"
	"github.com/kapfhir/kapfhir/test/pgtest"
)

// sqlPayloads are the values tried in every search parameter (issue 4 §5):
// SQL metacharacters, LIKE wildcards, placeholders of both dialects, bytes
// a database may refuse (NUL, invalid UTF-8), a very long value and
// non-ASCII text.
var sqlPayloads = []struct{ name, value string }{
	{"or-true", `' OR '1'='1`},
	{"drop", `1; DROP TABLE resources;--`},
	{"like-comment", `%' --`},
	{"dquote", `"`},
	{"backslash", `\`},
	{"like-wildcards", `%_`},
	{"union", `') UNION SELECT`},
	{"nul", "a\x00b"},
	{"control", "a\x01\x1bb"},
	{"invalid-utf8", "\xff\xfe'"},
	{"long", strings.Repeat("a'", 5000)},
	{"unicode", "Ωμέγα患者🧪\u202e'"},
	{"dollar", `$1`},
	{"question", `?`},
	{"comment", `*/ /*`},
	{"colon", `a:b`},
}

// echoed reports whether a problem body echoes the payload: only payloads
// no message would contain by chance are checked.
func echoed(body []byte, payload string) bool {
	return (len(payload) > 100 || strings.Contains(payload, "患者")) && bytes.Contains(body, []byte(payload))
}

// fhirResultParams are the search result parameters, which the
// CapabilityStatement does not list as searchParam.
var (
	fhirResultParams  = []string{"_count", "_sort", "_summary", "_include", "_format", "_pretty", "_cursor"}
	auditResultParams = []string{"_count", "_sort", "_summary", "_format", "_pretty", "_cursor"}
	// auditModifiers are the AuditEvent parameters taken with a modifier.
	auditModifiers = []string{"agent:identifier", "entity:identifier"}
)

// apiListings are the /api routes that take query parameters, the role
// that may call each, and the JSON member holding the items ("" when the
// answer is not a list). Their parameters are read at test time from the
// problem an unknown parameter gets ("supported: ..."), so a new one is
// covered without editing this test.
var apiListings = []struct {
	role       auth.Role
	path, list string
}{
	{auth.RoleClinic, "/api/v1/programs", "programs"},
	{auth.RoleAuditor, "/api/v1/audit/events", "events"},
	{auth.RoleAuditor, "/api/v1/audit/sync", "entries"},
	{auth.RoleAuditor, "/api/v1/audit/verify", ""},
	{auth.RoleAdmin, "/api/v1/sync/items", "items"},
	{auth.RoleAdmin, "/api/v1/sync/log", "events"},
	{auth.RoleAdmin, "/api/v1/endpoints/" + endpointID + "/status", ""},
}

// apiShaping are the /api parameters that shape an answer rather than
// narrow it. Every other parameter is a filter: an answer 200 to a payload
// in it must list nothing.
var apiShaping = map[string]bool{
	"order": true, "limit": true, "cursor": true, "format": true, "after": true, "before": true, "wait": true, "timeout": true,
}

var supportedRE = regexp.MustCompile(`\(supported: ([^)]*)\)`)

// apiParams returns the query parameters path supports, as the problem
// for an unknown one lists them.
func apiParams(t *testing.T, in *instance, role auth.Role, path string) []string {
	t.Helper()
	r := in.doAs(t, role, "GET", path+"?kapfhir-unknown=1", nil)
	m := supportedRE.FindSubmatch(r.body)
	if r.status != 400 || m == nil {
		t.Fatalf("GET %s with an unknown parameter = %d, want 400 naming the supported ones: %s", path, r.status, r.body)
	}
	if string(m[1]) == "none" {
		return nil
	}
	return strings.Split(string(m[1]), ", ")
}

// apiReads are the /api routes that read one thing by id.
var apiReads = []struct {
	role auth.Role
	path string
}{
	{auth.RoleClinic, "/api/v1/patients/"},
	{auth.RoleClinic, "/api/v1/programs/"},
	{auth.RoleClinic, "/api/v1/protocols/"},
	{auth.RoleAdmin, "/api/v1/sync/items/"},
	{auth.RoleAdmin, "/api/v1/endpoints/"},
	{auth.RoleAdmin, "/api/v1/clients/"},
}

// metaCase is one request carrying a payload.
type metaCase struct {
	name    string
	role    auth.Role
	target  string // path and query
	form    string // a POST _search body; "" for a GET
	payload string
	fhir    bool // the answer is FHIR (an OperationOutcome when refused)
	// filter: the payload is a filter's value, so a 200 must match nothing.
	filter bool
	list   string // for /api filters: the JSON member holding the items
}

// TestSQLMetacharacters sends SQL metacharacters and other hostile values in
// every search parameter kapfhir serves — the FHIR ones read from the
// CapabilityStatement at test time, so a new parameter is covered without
// editing this test, and the /api listings' — and in every id in a path,
// to the real binary on SQLite and on PostgreSQL. Every answer is 200 or a
// 4xx in the surface's error format; a filter answered 200 matches
// nothing; nothing changes; the audit chain still verifies; nothing panics.
func TestSQLMetacharacters(t *testing.T) {
	for _, st := range []struct {
		name string
		env  func(*testing.T) []string
	}{
		{"sqlite", func(*testing.T) []string { return nil }},
		{"postgres", postgresEnv},
	} {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			env := st.env(t)
			se := newSyncEnv(t, false)
			in := start(t, append([]string{"KAPFHIR_CONFIG=" + se.cfgPath, "KAPFHIR_DATA_DIR=" + se.dataDir}, env...)...)
			s := seedMeta(t, in, se)
			before := snapshotMeta(t, in, s)
			t.Run("requests", func(t *testing.T) {
				for _, c := range metaCases(t, in) {
					t.Run(c.name, func(t *testing.T) { c.check(t, in) })
				}
			})
			after := snapshotMeta(t, in, s)
			if diff := cmp.Diff(before, after); diff != "" {
				t.Errorf("data changed by the requests (-before +after):\n%s", diff)
			}
			var v struct {
				Intact  bool `json:"intact"`
				Records int  `json:"records"`
			}
			r := in.doAs(t, auth.RoleAuditor, "GET", "/api/v1/audit/verify", nil)
			if err := json.Unmarshal(r.body, &v); r.status != 200 || err != nil || !v.Intact || v.Records < s.auditRecords {
				t.Errorf("audit verify after the requests: %d %s (had %d records)", r.status, r.body, s.auditRecords)
			}
			if log := in.stderr.String(); strings.Contains(log, "panic") {
				t.Errorf("the server log mentions a panic:\n%s", log)
			}
		})
	}
}

// postgresEnv points the binary at a new schema of the test database,
// dropped at cleanup (after the process is killed: cleanups run last
// first, and start registers its own after this one).
func postgresEnv(t *testing.T) []string {
	t.Helper()
	dbURL := pgtest.Schema(t, pgtest.URL(t, "the SQL metacharacter tests on PostgreSQL"), "kapfhir_e2e_")
	return []string{"KAPFHIR_STORE_DRIVER=postgres", "KAPFHIR_POSTGRES_URL=" + dbURL}
}

// metaSeed is what seedMeta made.
type metaSeed struct {
	patientID, programID string
	auditRecords         int
}

// seedMeta enrols a patient (programme, measurement, booster) with the
// sync to the test EHR on, waits for the sync to finish, and checks that
// every listing a filter could widen has rows to widen to.
func seedMeta(t *testing.T, in *instance, se *syncEnv) metaSeed {
	t.Helper()
	var s metaSeed
	s.patientID, s.programID = se.enrol(t, in, "META-1")
	drain(t, in)

	// A filter that matches nothing proves something only where there is
	// something to match; the role each request is sent with may make it.
	for typ := range capabilityParams(t, in) {
		if n := countItems(t, in.doAs(t, roleForFHIR(typ), "GET", "/fhir/"+typ, nil), ""); n == 0 {
			t.Fatalf("seed: no %s; seed one so that its searches are meaningful", typ)
		}
	}
	for _, l := range apiListings {
		path := l.path
		if path == "/api/v1/programs" {
			path += "?patientId=" + s.patientID
		}
		r := in.doAs(t, l.role, "GET", path, nil)
		if l.list == "" {
			if r.status != 200 {
				t.Fatalf("seed: GET %s = %d: %s", path, r.status, r.body)
			}
		} else if countItems(t, r, l.list) == 0 {
			t.Fatalf("seed: GET %s lists nothing", path)
		}
	}
	var v struct{ Records int }
	if err := json.Unmarshal(in.doAs(t, auth.RoleAuditor, "GET", "/api/v1/audit/verify", nil).body, &v); err != nil || v.Records == 0 {
		t.Fatalf("seed: audit verify: %v, %d records", err, v.Records)
	}
	s.auditRecords = v.Records
	return s
}

// roleForFHIR is the role that searches typ: an auditor the audit trail,
// an EHR the rest.
func roleForFHIR(typ string) auth.Role {
	if typ == "AuditEvent" {
		return auth.RoleAuditor
	}
	return auth.RoleEHR
}

// countItems returns the number of entries of a 200 answer: a Bundle's
// entries, or the items of the /api member list.
func countItems(t *testing.T, r response, list string) int {
	t.Helper()
	if r.status != 200 {
		t.Fatalf("status %d: %.300s", r.status, r.body)
	}
	if list == "" {
		var b struct{ Entry []json.RawMessage }
		if err := json.Unmarshal(r.body, &b); err != nil {
			t.Fatalf("not a Bundle: %v: %.300s", err, r.body)
		}
		return len(b.Entry)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("not JSON: %v: %.300s", err, r.body)
	}
	var items []json.RawMessage
	if err := json.Unmarshal(m[list], &items); err != nil {
		t.Fatalf("no list %q: %v: %.300s", list, err, r.body)
	}
	return len(items)
}

// capabilityParams reads the search parameters of every resource type from
// the CapabilityStatement.
func capabilityParams(t *testing.T, in *instance) map[string][]struct{ Name, Type string } {
	t.Helper()
	r := in.do(t, "GET", "/fhir/metadata", nil)
	var cs struct {
		Rest []struct {
			Resource []struct {
				Type        string
				SearchParam []struct{ Name, Type string } `json:"searchParam"`
			}
		}
	}
	if err := json.Unmarshal(r.body, &cs); r.status != 200 || err != nil || len(cs.Rest) != 1 {
		t.Fatalf("metadata: %d %v", r.status, err)
	}
	out := map[string][]struct{ Name, Type string }{}
	for _, res := range cs.Rest[0].Resource {
		out[res.Type] = res.SearchParam
	}
	if len(out["Patient"]) == 0 || len(out["AuditEvent"]) == 0 {
		t.Fatalf("metadata lists no search parameters for Patient or AuditEvent: %v", out)
	}
	return out
}

// forms are the shapes a payload p is sent in for a parameter of type typ:
// as is, and where the type has structure, inside it.
func forms(typ, p string) []struct{ name, value string } {
	switch typ {
	case "token":
		return []struct{ name, value string }{{"code", p}, {"system|code", p + "|" + p}}
	case "reference":
		return []struct{ name, value string }{{"id", p}, {"Type/id", "Patient/" + p}}
	case "date":
		return []struct{ name, value string }{{"date", p}, {"ge-date", "ge" + p}}
	}
	return []struct{ name, value string }{{"value", p}}
}

// metaCases builds every request: each payload in each form in each
// parameter, as a parameter name and modifier, and as a path id.
func metaCases(t *testing.T, in *instance) []metaCase {
	t.Helper()
	var cs []metaCase
	query := func(k, v string) string { return neturl.Values{k: {v}}.Encode() }
	caps := capabilityParams(t, in)
	for _, typ := range slices.Sorted(maps.Keys(caps)) {
		params := caps[typ]
		role, results := roleForFHIR(typ), fhirResultParams
		var modifiers []string
		if typ == "AuditEvent" {
			results, modifiers = auditResultParams, auditModifiers
		}
		base := "/fhir/" + typ
		for _, pl := range sqlPayloads {
			add := func(name, q string, filter bool) {
				cs = append(cs, metaCase{name: typ + "/" + name + "/" + pl.name, role: role, target: base + "?" + q,
					payload: pl.value, fhir: true, filter: filter})
			}
			for _, p := range params {
				for _, f := range forms(p.Type, pl.value) {
					add(p.Name+"="+f.name, query(p.Name, f.value), true)
				}
				cs = append(cs, metaCase{name: typ + "/_search/" + p.Name + "/" + pl.name, role: role, target: base + "/_search",
					form: query(p.Name, pl.value), payload: pl.value, fhir: true, filter: true})
			}
			for _, m := range modifiers {
				for _, f := range forms("token", pl.value) {
					add(m+"="+f.name, query(m, f.value), true)
				}
			}
			for _, name := range results {
				add(name, query(name, pl.value), false)
			}
			add("as-name", query(pl.value, "x"), false)
			add("as-modifier", query(params[0].Name+":"+pl.value, "x"), false)
			id := neturl.PathEscape(pl.value)
			cs = append(cs,
				metaCase{name: typ + "/read/" + pl.name, role: role, target: base + "/" + id, payload: pl.value, fhir: true},
				metaCase{name: typ + "/history/" + pl.name, role: role, target: base + "/" + id + "/_history", payload: pl.value, fhir: true})
		}
	}
	for _, l := range apiListings {
		params := apiParams(t, in, l.role, l.path)
		for _, pl := range sqlPayloads {
			add := func(name, q string, filter bool) {
				cs = append(cs, metaCase{name: strings.TrimPrefix(l.path, "/api/v1/") + "/" + name + "/" + pl.name, role: l.role,
					target: l.path + "?" + q, payload: pl.value, filter: filter, list: l.list})
			}
			for _, p := range params {
				add(p, query(p, pl.value), !apiShaping[p] && l.list != "")
			}
			add("as-name", query(pl.value, "x"), false)
		}
	}
	// A bad escape elsewhere in the query must not let a value through unchecked.
	cs = append(cs,
		metaCase{name: "Patient/bad-escape-and-nul", role: auth.RoleEHR, target: "/fhir/Patient?identifier=a%00b&x=%zz", fhir: true, filter: true},
		metaCase{name: "audit/events/bad-escape-and-nul", role: auth.RoleAuditor, target: "/api/v1/audit/events?endpoint=a%00b&%zz", filter: true, list: "events"})
	for _, rd := range apiReads {
		for _, pl := range sqlPayloads {
			cs = append(cs, metaCase{name: strings.TrimPrefix(rd.path, "/api/v1/") + "read/" + pl.name, role: rd.role,
				target: rd.path + neturl.PathEscape(pl.value), payload: pl.value})
		}
	}
	return cs
}

// check sends the request and checks the answer: 200, or a 4xx in the
// surface's error format that does not echo the value; a filter answered
// 200 matches nothing.
func (c metaCase) check(t *testing.T, in *instance) {
	t.Helper()
	r := c.send(t, in)
	req := "GET " + c.target
	if c.form != "" {
		req = "POST " + c.target + " " + c.form
	}
	switch {
	case r.status == 200:
		if c.filter {
			if n := countItems(t, r, c.list); n != 0 {
				t.Errorf("%.200s matched %d items, want none", req, n)
			}
		}
	case r.status == 401 || r.status == 403:
		t.Errorf("%.200s = %d: the role %s may make this request, so a refusal proves nothing: %.300s", req, r.status, c.role, r.body)
	case r.status >= 400 && r.status < 500:
		ct := r.header.Get("Content-Type")
		if c.fhir {
			res, err := fhirjson.Unmarshal(r.body)
			if !strings.HasPrefix(ct, "application/fhir+json") || err != nil || res.GetOperationOutcome() == nil {
				t.Errorf("%.200s = %d %q, want an OperationOutcome: %v: %.300s", req, r.status, ct, err, r.body)
			}
		} else {
			var p struct{ Status int }
			if err := json.Unmarshal(r.body, &p); !strings.HasPrefix(ct, "application/problem+json") || err != nil || p.Status != r.status {
				t.Errorf("%.200s = %d %q, want problem+json with its status: %.300s", req, r.status, ct, r.body)
			}
		}
		// A filter's value may be an identifier (an MRN): problems name the
		// parameter, never its value.
		if c.filter && echoed(r.body, c.payload) {
			t.Errorf("%.200s = %d echoes the value: %.300s", req, r.status, r.body)
		}
	default:
		t.Errorf("%.200s = %d, want 200 or 4xx: %.300s", req, r.status, r.body)
	}
}

// send makes the request with the role's token.
func (c metaCase) send(t *testing.T, in *instance) response {
	t.Helper()
	if c.form == "" {
		return in.doAs(t, c.role, "GET", c.target, nil)
	}
	req, err := http.NewRequestWithContext(t.Context(), "POST", in.base+c.target, strings.NewReader(c.form))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer "+in.tokens[c.role])
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", c.target, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{status: res.StatusCode, header: res.Header, body: b}
}

// snapshotMeta reads everything the requests must not change: every
// resource of every type, the patient and programme through /api, clients,
// endpoints, the sync queue and ledgers, and the audit records that
// existed before (in order).
func snapshotMeta(t *testing.T, in *instance, s metaSeed) map[string]string {
	t.Helper()
	out := map[string]string{}
	get := func(role auth.Role, path string) {
		r := in.doAs(t, role, "GET", path, nil)
		if r.status != 200 {
			t.Fatalf("snapshot: GET %s = %d: %.300s", path, r.status, r.body)
		}
		out[path] = string(r.body)
	}
	for _, typ := range slices.Sorted(maps.Keys(capabilityParams(t, in))) {
		if typ == "AuditEvent" {
			continue
		}
		path := "/fhir/" + typ + "?_count=1000&_sort=_id"
		r := in.doAs(t, auth.RoleEHR, "GET", path, nil)
		var b struct {
			Total int
			Entry []struct{ Resource json.RawMessage }
		}
		if err := json.Unmarshal(r.body, &b); r.status != 200 || err != nil {
			t.Fatalf("snapshot: GET %s = %d %v", path, r.status, err)
		}
		var res []string
		for _, e := range b.Entry {
			res = append(res, string(e.Resource)) // the stored bytes, as written
		}
		out[path] = fmt.Sprintf("total %d\n%s", b.Total, strings.Join(res, "\n"))
	}
	get(auth.RoleClinic, "/api/v1/patients/"+s.patientID)
	get(auth.RoleClinic, "/api/v1/programs?patientId="+s.patientID)
	get(auth.RoleAdmin, "/api/v1/clients")
	get(auth.RoleAdmin, "/api/v1/endpoints")
	get(auth.RoleAdmin, "/api/v1/sync/items?limit=1000")
	get(auth.RoleAdmin, "/api/v1/sync/log?limit=1000")
	get(auth.RoleAuditor, "/api/v1/audit/sync?limit=1000")
	get(auth.RoleAuditor, fmt.Sprintf("/api/v1/audit/events?order=oldest&limit=%d", s.auditRecords))
	return out
}
