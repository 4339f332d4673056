package outbound

import (
	"bytes"
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	"github.com/kapfhir/kapfhir/fhir/fhirjson"
	"github.com/kapfhir/kapfhir/resource"
)

// allReferences returns every "reference" value in a FHIR JSON body, in order.
func allReferences(t *testing.T, body []byte) []string {
	t.Helper()
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("body is not JSON: %v", err)
	}
	var out []string
	var visit func(any)
	visit = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			keys := make([]string, 0, len(v))
			for k := range v {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			for _, k := range keys {
				if s, ok := v[k].(string); ok && k == "reference" {
					out = append(out, s)
					continue
				}
				visit(v[k])
			}
		case []any:
			for _, e := range v {
				visit(e)
			}
		}
	}
	visit(v)
	return out
}

// bundledResolver resolves the keys in bundled to their placeholders (Bundled)
// and every other Appointment to Later; everything else is at the EHR.
func bundledResolver(bundled map[resource.Key]string) Resolver {
	return func(k resource.Key) (string, Target) {
		if ph, ok := bundled[k]; ok {
			return ph, Bundled
		}
		if k.Type == "Appointment" {
			return "", Later
		}
		return "ehr-" + k.ID, Resolved
	}
}

func TestPrepareBundledReference(t *testing.T) {
	g := golden(t)
	cp, ok := g["CarePlan/plan-ind"]
	if !ok {
		t.Fatal("no CarePlan/plan-ind in the golden programme")
	}
	ses := resource.Key{Type: "Appointment", ID: "ses-01"}
	if !slices.Contains(refs(cp), ses.Ref()) {
		t.Fatalf("golden CarePlan does not reference %s", ses.Ref())
	}
	ph := NewPlaceholder()
	p, err := Prepare(cp, system, "", bundledResolver(map[resource.Key]string{ses: ph}))
	if err != nil {
		t.Fatal(err)
	}
	if err := fhirjson.Validate(p.Body); err != nil {
		t.Fatalf("body invalid: %v\n%s", err, p.Body)
	}
	got := allReferences(t, p.Body)
	if n := strings.Count(strings.Join(got, "\n"), ph); n != 1 || !slices.Contains(got, ph) {
		t.Errorf("references %q: want the placeholder %q exactly once, as the whole reference", got, ph)
	}
	for _, r := range got {
		if strings.Contains(r, "ses-01") {
			t.Errorf("reference %q still names kapfhir's id", r)
		}
	}
	if diff := cmp.Diff([]resource.Key{ses}, p.Bundled); diff != "" {
		t.Errorf("Bundled (-want +got):\n%s", diff)
	}
	if slices.Contains(p.Deferred, ses) {
		t.Errorf("Deferred %v lists the bundled %s", p.Deferred, ses.Ref())
	}
	if len(p.Deferred) == 0 {
		t.Errorf("the other Appointments were not deferred")
	}
	if p.MissingPatient != nil {
		t.Errorf("MissingPatient = %v", p.MissingPatient)
	}
	// Resource is the body as a proto: it renders to the same bytes.
	if p.Resource == nil {
		t.Fatal("Resource is nil")
	}
	if p.Resource.GetCarePlan() == nil {
		t.Fatalf("Resource is not the CarePlan: %v", p.Resource)
	}
	b, err := fhirjson.Marshal(p.Resource.GetCarePlan())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, p.Body) {
		t.Errorf("Resource renders as\n%s\nbut Body is\n%s", b, p.Body)
	}
}

func TestPrepareWithoutBundledReportsNone(t *testing.T) {
	_, cp := first(t, golden(t), "CarePlan")
	p, err := Prepare(cp, system, "", all)
	if err != nil {
		t.Fatal(err)
	}
	if p.Bundled != nil {
		t.Errorf("Bundled = %v, want none", p.Bundled)
	}
}

func TestTransaction(t *testing.T) {
	g := golden(t)
	apptKey := resource.Key{Type: "Appointment", ID: "ses-01"}
	apptPH := NewPlaceholder()
	// The Appointment refers back to the CarePlan, which the EHR holds.
	appt, err := Prepare(g[apptKey.Ref()], system, "", bundledResolver(nil))
	if err != nil {
		t.Fatal(err)
	}
	cp, err := Prepare(g["CarePlan/plan-ind"], system, "", bundledResolver(map[resource.Key]string{apptKey: apptPH}))
	if err != nil {
		t.Fatal(err)
	}
	cpBefore := proto.Clone(cp.Resource)

	out, err := Transaction([]TxEntry{
		{FullURL: "", Prepared: cp},
		{FullURL: apptPH, Prepared: appt},
	})
	if err != nil {
		t.Fatalf("Transaction: %v", err)
	}
	cr, err := fhirjson.Unmarshal(out)
	if err != nil {
		t.Fatalf("not a valid R4 resource: %v\n%s", err, out)
	}
	b := cr.GetBundle()
	if b == nil {
		t.Fatalf("not a Bundle: %s", out)
	}
	if got := b.GetType().GetValue().String(); got != "TRANSACTION" {
		t.Errorf("type %s, want TRANSACTION", got)
	}

	type entry struct {
		FullURL, Method, URL, Type, ID string
		HasFullURL                     bool
	}
	var got []entry
	for _, e := range b.GetEntry() {
		k, err := Identify(e.GetResource())
		if err != nil {
			t.Fatalf("entry resource: %v", err)
		}
		got = append(got, entry{
			FullURL:    e.GetFullUrl().GetValue(),
			HasFullURL: e.GetFullUrl() != nil,
			Method:     e.GetRequest().GetMethod().GetValue().String(),
			URL:        e.GetRequest().GetUrl().GetValue(),
			Type:       k.Type,
			ID:         k.ID,
		})
	}
	// url.Values escaping of system|value: ':' is %3A, '|' is %7C.
	const esc = "urn%3Auuid%3A6f1c2b9e-0d4a-4c1e-9a57-3f0f8e2d1c00%7C"
	want := []entry{
		{Method: "PUT", URL: "CarePlan?identifier=" + esc + "plan-ind", Type: "CarePlan"},
		{FullURL: apptPH, HasFullURL: true, Method: "PUT", URL: "Appointment?identifier=" + esc + "ses-01", Type: "Appointment"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("entries (-want +got):\n%s", diff)
	}
	if got := ConditionalURL(cp); got != want[0].URL {
		t.Errorf("ConditionalURL = %q, want %q", got, want[0].URL)
	}

	// The CarePlan's entry refers to the Appointment's entry by its fullUrl.
	var raw struct {
		Entry []struct {
			FullURL  *string         `json:"fullUrl"`
			Resource json.RawMessage `json:"resource"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(out, &raw); err != nil {
		t.Fatal(err)
	}
	if len(raw.Entry) != 2 {
		t.Fatalf("%d entries, want 2", len(raw.Entry))
	}
	if raw.Entry[0].FullURL != nil {
		t.Errorf("first entry has fullUrl %q, want none", *raw.Entry[0].FullURL)
	}
	if refs := allReferences(t, raw.Entry[0].Resource); !slices.Contains(refs, apptPH) {
		t.Errorf("CarePlan entry's references %q lack the Appointment's fullUrl %s", refs, apptPH)
	}
	// The entries' resources are the prepared bodies.
	for i, p := range []Prepared{cp, appt} {
		if !jsonEqual(t, raw.Entry[i].Resource, p.Body) {
			t.Errorf("entry %d resource\n%s\nis not the prepared body\n%s", i, raw.Entry[i].Resource, p.Body)
		}
	}
	if !proto.Equal(cpBefore, cp.Resource) {
		t.Error("Transaction changed the prepared resource")
	}
}

// jsonEqual compares two JSON documents by value.
func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatal(err)
	}
	return cmp.Equal(va, vb)
}

func TestTransactionRefuses(t *testing.T) {
	_, stored := first(t, golden(t), "Goal")
	p, err := Prepare(stored, system, "", all)
	if err != nil {
		t.Fatal(err)
	}
	noIdentifier := p
	noIdentifier.Identifier = ""
	for _, tc := range []struct {
		name    string
		entries []TxEntry
	}{
		{"nil", nil},
		{"no entries", []TxEntry{}},
		{"absolute fullUrl", []TxEntry{{FullURL: "https://ehr.example/fhir/Goal/g1", Prepared: p}}},
		{"bare uuid fullUrl", []TxEntry{{FullURL: strings.TrimPrefix(NewPlaceholder(), "urn:uuid:"), Prepared: p}}},
		{"urn:oid fullUrl", []TxEntry{{FullURL: "urn:oid:1.2.3.4", Prepared: p}}},
		{"bad fullUrl after a good entry", []TxEntry{{Prepared: p}, {FullURL: "Goal/g1", Prepared: p}}},
		{"unprepared", []TxEntry{{Prepared: Prepared{Key: p.Key, Identifier: p.Identifier, Body: p.Body}}}},
		{"zero", []TxEntry{{FullURL: NewPlaceholder()}}},
		{"unprepared after a good entry", []TxEntry{{FullURL: NewPlaceholder(), Prepared: p}, {Prepared: Prepared{Key: p.Key}}}},
		{"no identifier", []TxEntry{{Prepared: noIdentifier}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if b, err := Transaction(tc.entries); err == nil {
				t.Errorf("accepted:\n%s", b)
			}
		})
	}
}

var placeholderPattern = regexp.MustCompile(`^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestNewPlaceholder(t *testing.T) {
	a, b := NewPlaceholder(), NewPlaceholder()
	for _, ph := range []string{a, b} {
		if !placeholderPattern.MatchString(ph) {
			t.Errorf("%q is not a urn:uuid with a version 4 (RFC 4122 variant) UUID", ph)
		}
	}
	if a == b {
		t.Errorf("two placeholders are the same: %s", a)
	}
}

func TestConditionalURL(t *testing.T) {
	for _, tc := range []struct {
		typ, identifier, want string
	}{
		{"Goal", system + "|prog-1-response", "Goal?identifier=urn%3Auuid%3A6f1c2b9e-0d4a-4c1e-9a57-3f0f8e2d1c00%7Cprog-1-response"},
		{"Appointment", "https://kapfhir.example/id|a b&c=d", "Appointment?identifier=https%3A%2F%2Fkapfhir.example%2Fid%7Ca+b%26c%3Dd"},
	} {
		p := Prepared{Key: resource.Key{Type: tc.typ, ID: "x"}, Identifier: tc.identifier}
		if got := ConditionalURL(p); got != tc.want {
			t.Errorf("ConditionalURL(%s, %q) = %q, want %q", tc.typ, tc.identifier, got, tc.want)
		}
	}
}
