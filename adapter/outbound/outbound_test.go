package outbound

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/fhir/fhirjson"
	"github.com/kapfhir/kapfhir/resource"
)

const system = "urn:uuid:6f1c2b9e-0d4a-4c1e-9a57-3f0f8e2d1c00"

// golden returns the mapping package's golden programme: every resource of
// a 6-dose programme, by "Type/id".
func golden(t *testing.T) map[string][]byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "mapping", "testdata", "program.json"))
	if err != nil {
		t.Fatal(err)
	}
	var raw []json.RawMessage // splitting the array only; the resources stay bytes
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, r := range raw {
		cr, err := fhirjson.Unmarshal(r)
		if err != nil {
			t.Fatal(err)
		}
		root, err := resourceOf(cr.ProtoReflect())
		if err != nil {
			t.Fatal(err)
		}
		out[string(root.Descriptor().Name())+"/"+idOf(root)] = r
	}
	return out
}

func first(t *testing.T, all map[string][]byte, typ string) (string, []byte) {
	t.Helper()
	var keys []string
	for k := range all {
		if strings.HasPrefix(k, typ+"/") {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	if len(keys) == 0 {
		t.Fatalf("no %s in the golden programme", typ)
	}
	return keys[0], all[keys[0]]
}

var refPattern = regexp.MustCompile(`"reference":\s*"([A-Za-z]+)/([^"]+)"`)

func refs(body []byte) []string {
	var out []string
	for _, m := range refPattern.FindAllSubmatch(body, -1) {
		out = append(out, string(m[1])+"/"+string(m[2]))
	}
	return out
}

func all(key resource.Key) (string, Target) { return "ehr-" + key.ID, Resolved }

func TestEveryReferenceRewritten(t *testing.T) {
	for key, stored := range golden(t) {
		p, err := Prepare(stored, system, "", all)
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		if err := fhirjson.Validate(p.Body); err != nil {
			t.Errorf("%s: prepared body invalid: %v", key, err)
		}
		if p.Key.Ref() != key || p.Identifier != system+"|"+p.Key.ID {
			t.Errorf("%s: key %v identifier %q", key, p.Key, p.Identifier)
		}
		for _, r := range refs(p.Body) {
			if !strings.Contains(r, "/ehr-") {
				t.Errorf("%s: reference %s not rewritten", key, r)
			}
		}
		if len(refs(stored)) != len(refs(p.Body)) {
			t.Errorf("%s: %d references became %d", key, len(refs(stored)), len(refs(p.Body)))
		}
		for _, gone := range []string{`"versionId"`, `"lastUpdated"`, `"id":"` + p.Key.ID + `"`} {
			if bytes.Contains(p.Body, []byte(gone)) {
				t.Errorf("%s: body still has %s", key, gone)
			}
		}
		if p.Deferred != nil || p.MissingPatient != nil {
			t.Errorf("%s: deferred %v missing %v", key, p.Deferred, p.MissingPatient)
		}
		if !bytes.Contains(p.Body, []byte(`"profile"`)) && bytes.Contains(stored, []byte(`"profile"`)) {
			t.Errorf("%s: profiles dropped", key)
		}
	}
}

func TestUpdateByIDSetsTheEHRID(t *testing.T) {
	key, stored := first(t, golden(t), "Appointment")
	p, err := Prepare(stored, system, "E42", all)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(p.Body, []byte(`"id":"E42"`)) {
		t.Errorf("%s: body lacks the EHR id: %s", key, p.Body)
	}
}

func TestReferencesToWhatTheEHRLacks(t *testing.T) {
	g := golden(t)
	_, cp := first(t, g, "CarePlan")
	// Appointments come later, Goals are never sent; everything else is there.
	resolve := func(k resource.Key) (string, Target) {
		switch k.Type {
		case "Appointment":
			return "", Later
		case "Goal":
			return "", Never
		}
		return "ehr-" + k.ID, Resolved
	}
	p, err := Prepare(cp, system, "", resolve)
	if err != nil {
		t.Fatal(err)
	}
	if err := fhirjson.Validate(p.Body); err != nil {
		t.Fatalf("body invalid after dropping references: %v\n%s", err, p.Body)
	}
	for _, r := range refs(p.Body) {
		if strings.HasPrefix(r, "Appointment/") || strings.HasPrefix(r, "Goal/") {
			t.Errorf("reference %s kept", r)
		}
	}
	var wantDeferred []resource.Key
	for _, r := range refs(cp) {
		if typ, id, _ := strings.Cut(r, "/"); typ == "Appointment" {
			wantDeferred = append(wantDeferred, resource.Key{Type: typ, ID: id})
		}
	}
	if len(wantDeferred) == 0 {
		t.Fatal("golden CarePlan references no Appointment")
	}
	if diff := cmp.Diff(wantDeferred, p.Deferred); diff != "" {
		t.Errorf("deferred (-want +got):\n%s", diff)
	}
	if !bytes.Contains(p.Body, []byte(`"activity"`)) {
		t.Errorf("measurement activities (with detail) were dropped too")
	}
	// The hash tells the partial body from the complete one.
	full, err := Prepare(cp, system, "", all)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := Prepare(cp, system, "", all)
	if bytes.Equal(full.Hash, p.Hash) || !bytes.Equal(full.Hash, again.Hash) {
		t.Errorf("hash does not follow content")
	}
}

func TestUnresolvedPatient(t *testing.T) {
	_, obs := first(t, golden(t), "Observation")
	p, err := Prepare(obs, system, "", func(k resource.Key) (string, Target) {
		if k.Type == "Patient" {
			return "", Later
		}
		return "ehr-" + k.ID, Resolved
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.MissingPatient == nil || p.MissingPatient.Type != "Patient" {
		t.Errorf("MissingPatient = %v", p.MissingPatient)
	}
}

func TestBadInput(t *testing.T) {
	for name, body := range map[string]string{
		"not FHIR":      `{"resourceType":"Nope"}`,
		"no identifier": `{"resourceType":"Goal","id":"g1","lifecycleStatus":"active","description":{"text":"x"},"subject":{"reference":"Patient/p1"}}`,
		"no id":         `{"resourceType":"Goal","lifecycleStatus":"active","description":{"text":"x"},"subject":{"reference":"Patient/p1"}}`,
	} {
		if _, err := Prepare([]byte(body), system, "", all); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
