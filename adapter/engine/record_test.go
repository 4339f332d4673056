package engine_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/adapter/engine"
	"github.com/kapfhir/kapfhir/app"
	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/auth"
	"github.com/kapfhir/kapfhir/fhir/fhirjson"
	"github.com/kapfhir/kapfhir/mapping"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/test/kaptest"
	"github.com/kapfhir/kapfhir/treatment"
)

// outboundWrites returns every outbound-write audit record, oldest first.
func outboundWrites(t *testing.T, f *fixture) []audit.Record {
	t.Helper()
	page, err := f.db.AuditEvents(t.Context(), audit.Filter{Subtypes: []audit.Subtype{audit.OutboundWrite}, Oldest: true, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return page.Records
}

// writesSent counts the write requests the EHR received.
func writesSent(ehr *scriptedEHR) int {
	ehr.mu.Lock()
	defer ehr.mu.Unlock()
	n := 0
	for _, r := range ehr.requests {
		if strings.HasPrefix(r, "PUT ") || strings.HasPrefix(r, "POST ") {
			n++
		}
	}
	return n
}

// provenances counts the stored Provenance resources.
func provenances(t *testing.T, f *fixture) int {
	t.Helper()
	page, err := f.db.Search(t.Context(), resource.Query{Type: "Provenance", Count: 0})
	if err != nil {
		t.Fatal(err)
	}
	return page.Total
}

// get GETs path as role and returns the status and body.
func get(t *testing.T, env *kaptest.Env, role auth.Role, path string) (int, []byte) {
	t.Helper()
	res, err := env.Client(t, role).Get(env.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, b
}

// Every write sent is one outbound-write record in the audit chain, naming
// the endpoint, the patient and the version; every version the EHR holds
// has a Provenance, which auditors (and EHRs) read at /fhir/Provenance.
// A second full sync sends nothing and records nothing.
func TestSentWritesAreAuditedWithProvenance(t *testing.T) {
	env := kaptest.New(t, 0)
	ehr := newScriptedEHR()
	ehr.conditionalUpdate = true
	f := newFixtureOn(t, ehr, env.Store, env.App)
	ctx := t.Context()
	f.run(t)

	items, err := f.db.Items(ctx, outbox.Filter{EndpointID: "ehr", Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	byRef := map[string]outbox.Item{}
	for _, it := range items {
		if it.State != outbox.Succeeded {
			t.Fatalf("item %s/%s is %s", it.ResourceType, it.ResourceID, it.State)
		}
		if it.ResourceType == "Provenance" {
			t.Errorf("a Provenance was queued for the EHR: %+v", it)
		}
		byRef[it.ResourceType+"/"+it.ResourceID] = it
	}

	recs := outboundWrites(t, f)
	if n := writesSent(ehr); len(recs) != n {
		t.Errorf("%d outbound-write records for %d writes sent", len(recs), n)
	}
	for _, r := range recs {
		it, ok := byRef[audit.RefKey(r.Entities[0].Ref)]
		got := []any{r.EndpointID, r.PatientID, r.Outcome, r.Agent, r.Source, r.Entities[0].Ref, r.Detail[engine.DetailEHRID]}
		want := []any{"ehr", f.patID, audit.Success, audit.System, env.App.Installation(),
			fmt.Sprintf("%s/%s/_history/%d", it.ResourceType, it.ResourceID, it.SentVersion), it.EHRID}
		if !ok || !cmp.Equal(want, got) {
			t.Errorf("record %d (endpoint, patient, outcome, agent, source, entity, EHR id):\n want %v\n got  %v", r.Seq, want, got)
		}
		if s := r.Detail[engine.DetailStatus]; s != "200" && s != "201" {
			t.Errorf("record %d: status %q", r.Seq, s)
		}
	}
	if rep, err := f.db.VerifyAudit(ctx); err != nil || !rep.Intact {
		t.Fatalf("audit chain: %v %+v", err, rep)
	}

	// One Provenance per version sent, with the sent version as its target.
	if n := provenances(t, f); n != len(items) {
		t.Errorf("%d Provenances for %d resources sent", n, len(items))
	}
	for _, it := range items {
		v, err := f.db.Read(ctx, "Provenance", mapping.ProvenanceID("ehr", it.ResourceType, it.ResourceID, it.SentVersion))
		if err != nil {
			t.Errorf("Provenance of %s/%s: %v", it.ResourceType, it.ResourceID, err)
			continue
		}
		if _, err := fhirjson.Unmarshal(v.JSON); err != nil {
			t.Errorf("Provenance of %s/%s is not valid FHIR: %v", it.ResourceType, it.ResourceID, err)
		}
	}

	// Auditors read it over HTTP, searching by target.
	var plan outbox.Item
	for _, it := range items {
		if it.ResourceType == "CarePlan" {
			plan = it
		}
	}
	status, body := get(t, env, auth.RoleAuditor, "/fhir/Provenance?"+url.Values{"target": {"CarePlan/" + plan.ResourceID}}.Encode())
	if status != http.StatusOK {
		t.Fatalf("auditor search: %d %s", status, body)
	}
	var b struct {
		Total int
		Entry []struct{ Resource provenanceJSON }
	}
	if err := json.Unmarshal(body, &b); err != nil {
		t.Fatal(err)
	}
	if b.Total != 1 || len(b.Entry) != 1 {
		t.Fatalf("Provenance?target=CarePlan/%s: %d entries, want 1: %s", plan.ResourceID, b.Total, body)
	}
	p := b.Entry[0].Resource
	wantTargets := []string{
		fmt.Sprintf("CarePlan/%s/_history/%d", plan.ResourceID, plan.SentVersion),
		fmt.Sprintf("%s/CarePlan/%s/_history/%s", f.ep.FHIRBaseURL, plan.EHRID, plan.EHRVersion),
	}
	gotTargets := []string{}
	for _, tg := range p.Target {
		gotTargets = append(gotTargets, tg.Reference)
	}
	if diff := cmp.Diff(wantTargets, gotTargets); diff != "" {
		t.Errorf("targets (-want +got):\n%s", diff)
	}
	if len(p.Agent) != 1 || p.Agent[0].Who.Type != "Device" || p.Agent[0].Who.Identifier.Value != env.App.Installation() ||
		p.Agent[0].OnBehalfOf.Type != "Organization" {
		t.Errorf("agent: %+v", p.Agent)
	}
	if status, body := get(t, env, auth.RoleAuditor, "/fhir/Provenance/"+p.ID); status != http.StatusOK {
		t.Errorf("auditor read: %d %s", status, body)
	}
	if status, _ := get(t, env, auth.RoleEHR, "/fhir/Provenance?_count=1"); status != http.StatusOK {
		t.Errorf("ehr search: %d", status)
	}
	if status, _ := get(t, env, auth.RoleAdmin, "/fhir/Provenance?_count=1"); status != http.StatusForbidden {
		t.Errorf("admin search: %d, want 403", status)
	}
	if status, body := get(t, env, auth.RoleAuditor, "/fhir/metadata"); status != http.StatusOK || !strings.Contains(string(body), `"type":"Provenance"`) {
		t.Errorf("the CapabilityStatement does not list Provenance: %d", status)
	}

	// A second full sync sends nothing: no record, no Provenance.
	nrecs, nprov := len(recs), provenances(t, f)
	if _, err := f.db.Backfill(ctx, "ehr", f.ep.ResourceTypes, time.Now()); err != nil {
		t.Fatal(err)
	}
	f.run(t)
	if got := len(outboundWrites(t, f)); got != nrecs {
		t.Errorf("a second full sync recorded %d writes", got-nrecs)
	}
	if got := provenances(t, f); got != nprov {
		t.Errorf("a second full sync stored %d Provenances", got-nprov)
	}

	// A change is a new version: a new Provenance, the old one stays.
	prog, err := f.svc.Program(ctx, f.progID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.UpdateSession(ctx, prog.Sessions[0].ID, app.SessionChange{Status: "booked"}); err != nil {
		t.Fatal(err)
	}
	f.run(t)
	if got := provenances(t, f); got <= nprov {
		t.Errorf("%d Provenances after a change, %d before", got, nprov)
	}
}

// A write the EHR rejects is a failure record with the EHR's status (and
// no body); its version has no Provenance.
func TestRejectedWriteIsAuditedWithoutProvenance(t *testing.T) {
	ehr := newScriptedEHR()
	ehr.conditionalUpdate = true
	f := newFixture(t, ehr)
	ctx := t.Context()
	prog, _ := f.svc.Program(ctx, f.progID)
	victim := prog.Sessions[0].ID
	ehr.reject[victim] = true
	f.run(t)

	dead, err := f.db.Items(ctx, outbox.Filter{EndpointID: "ehr", State: outbox.Dead})
	if err != nil || len(dead) != 1 {
		t.Fatalf("dead items: %v %+v", err, dead)
	}
	var failed []audit.Record
	for _, r := range outboundWrites(t, f) {
		if r.Outcome != audit.Success {
			failed = append(failed, r)
		}
	}
	if len(failed) != 1 {
		t.Fatalf("%d failure records, want 1: %+v", len(failed), failed)
	}
	r := failed[0]
	got := []any{r.Outcome, r.EndpointID, r.PatientID, r.Entities[0].Ref, r.Detail[engine.DetailStatus], r.OutcomeDesc}
	want := []any{audit.SeriousFailure, "ehr", f.patID, fmt.Sprintf("Appointment/%s/_history/%d", victim, dead[0].WantVersion), "422", "the EHR rejected the Appointment (422)"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("failure record (-want +got):\n%s", diff)
	}
	for k, v := range r.Detail {
		if strings.Contains(v, "OperationOutcome") || strings.Contains(v, "business-rule") {
			t.Errorf("detail %s holds the EHR's body: %q", k, v)
		}
	}
	_, err = f.db.Read(ctx, "Provenance", mapping.ProvenanceID("ehr", "Appointment", victim, dead[0].WantVersion))
	if treatment.ErrorKind(err) != treatment.KindNotFound {
		t.Errorf("Provenance of the rejected version: %v, want not_found", err)
	}
	succeeded, err := f.db.Items(ctx, outbox.Filter{EndpointID: "ehr", State: outbox.Succeeded, Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if n := provenances(t, f); n != len(succeeded) {
		t.Errorf("%d Provenances for %d items sent", n, len(succeeded))
	}
}

// provenanceJSON is what the tests read of a served Provenance.
type provenanceJSON struct {
	ID     string
	Target []struct{ Reference string }
	Agent  []struct {
		Who, OnBehalfOf struct {
			Type       string
			Identifier struct{ System, Value string }
		}
	}
}
