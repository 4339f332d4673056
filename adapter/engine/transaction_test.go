package engine_test

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kapfhir/kapfhir/adapter/ehrclient"
	"github.com/kapfhir/kapfhir/adapter/engine"
	"github.com/kapfhir/kapfhir/app"
	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/endpoint"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/test/kaptest"
	"github.com/kapfhir/kapfhir/treatment"
)

// requestsSince returns the EHR's requests from index i on.
func requestsSince(ehr *scriptedEHR, i int) []string {
	ehr.mu.Lock()
	defer ehr.mu.Unlock()
	return append([]string(nil), ehr.requests[i:]...)
}

func writesIn(reqs []string) []string {
	var out []string
	for _, r := range reqs {
		if strings.HasPrefix(r, "PUT ") || strings.HasPrefix(r, "POST ") {
			out = append(out, r)
		}
	}
	return out
}

// restart replaces the fixture's worker with a new one (a restarted
// process: nothing cached).
func (f *fixture) restart(t *testing.T) {
	t.Helper()
	client, err := ehrclient.New(f.ep, ehrclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f.w = engine.New(engine.Options{Endpoint: f.ep, IdentifierSystem: f.svc.IdentifierSystem(), Source: f.svc.Installation(), Store: f.db, EHR: client, Owner: "test"})
}

// An EHR that advertises transactions gets a patient's batch as one
// transaction Bundle: each resource written once (the CarePlan ↔
// Appointment cycle through urn:uuid placeholders), every reference
// resolved to the EHR's ids, one audit record and one Provenance per
// resource; a second full sync sends nothing, by either strategy.
func TestTransactionWritesEachResourceOnce(t *testing.T) {
	ehr := newScriptedEHR()
	ehr.conditionalUpdate, ehr.transaction = true, true
	f := newFixture(t, ehr)
	ctx := t.Context()
	if got := f.w.Writes(); got.Known {
		t.Errorf("Writes() = %+v before the EHR's CapabilityStatement was read", got)
	}
	f.run(t)
	f.allSucceeded(t, 16)
	if got, want := f.w.Writes(), (engine.Writes{Known: true, Transactions: true}); got != want {
		t.Errorf("Writes() = %+v, want %+v", got, want)
	}
	n := f.once(t)
	if w := writesIn(requestsSince(ehr, 0)); len(w) != 1 || w[0] != "POST " {
		t.Errorf("writes: %v, want one transaction", w)
	}

	// The EHR's copies refer to each other by the EHR's ids.
	ehr.mu.Lock()
	refRE := regexp.MustCompile(`"reference":"([^"]+)"`)
	refs := 0
	for typ, byID := range ehr.stored {
		for id, body := range byID {
			if strings.Contains(body, `"reference":"urn:uuid:`) {
				t.Errorf("%s/%s holds a placeholder: %s", typ, id, body)
			}
			for _, m := range refRE.FindAllStringSubmatch(body, -1) {
				rt, rid, _ := strings.Cut(m[1], "/")
				if _, ok := ehr.stored[rt][rid]; !ok {
					t.Errorf("%s/%s refers to %s, which the EHR does not hold", typ, id, m[1])
				}
				refs++
			}
		}
	}
	plans := len(ehr.stored["CarePlan"])
	var plan string
	for _, b := range ehr.stored["CarePlan"] {
		plan = b
	}
	ehr.mu.Unlock()
	if plans != 1 || !strings.Contains(plan, `"Appointment/`) || !strings.Contains(plan, `"Goal/`) {
		t.Errorf("the EHR's CarePlan lacks its activities or goals: %s", plan)
	}
	if refs < n {
		t.Errorf("%d references in the EHR for %d resources", refs, n)
	}

	// One record per resource, naming the entry; one Provenance each.
	recs := outboundWrites(t, f)
	if len(recs) != n {
		t.Errorf("%d outbound-write records for %d resources", len(recs), n)
	}
	for _, r := range recs {
		typ, _, _ := strings.Cut(r.Entities[0].Ref, "/")
		if r.Outcome != audit.Success || r.Detail[engine.DetailRequest] != "PUT "+typ+" (transaction entry)" || r.Detail[engine.DetailStatus] != "201" || r.Detail[engine.DetailEHRID] == "" {
			t.Errorf("record %d: %v %v", r.Seq, r.Outcome, r.Detail)
		}
	}
	if got := provenances(t, f); got != n {
		t.Errorf("%d Provenances for %d resources", got, n)
	}

	// Nothing changed: nothing sent, by transaction or one by one.
	for _, tx := range []bool{true, false} {
		ehr.mu.Lock()
		ehr.transaction = tx
		ehr.mu.Unlock()
		f.restart(t)
		before := len(requestsSince(ehr, 0))
		if _, err := f.db.Backfill(ctx, "ehr", f.ep.ResourceTypes, time.Now()); err != nil {
			t.Fatal(err)
		}
		f.run(t)
		if w := writesIn(requestsSince(ehr, before)); len(w) != 0 {
			t.Errorf("transaction %v: a second full sync wrote %v", tx, w)
		}
	}

	// A change is an update of the same EHR resources, in one transaction.
	ehr.mu.Lock()
	ehr.transaction = true
	ehr.mu.Unlock()
	f.restart(t)
	before := len(requestsSince(ehr, 0))
	prog, _ := f.svc.Program(ctx, f.progID)
	if _, err := f.svc.UpdateSession(ctx, prog.Sessions[0].ID, app.SessionChange{Status: "booked"}); err != nil {
		t.Fatal(err)
	}
	f.run(t)
	if w := writesIn(requestsSince(ehr, before)); len(w) > 1 {
		t.Errorf("a change wrote %v", w)
	}
	if got := f.once(t); got != n {
		t.Errorf("%d items after the change, %d before", got, n)
	}
}

// An EHR that lists transactions but refuses them as unsupported: the
// batch is written one resource at a time, the refused attempt is in the
// audit trail, and later batches go one by one without trying again.
func TestTransactionRefusedAsUnsupported(t *testing.T) {
	ehr := newScriptedEHR()
	ehr.conditionalUpdate, ehr.transaction, ehr.txRefuse = true, true, 405
	f := newFixture(t, ehr)
	f.run(t)
	f.allSucceeded(t, 16)
	f.once(t)
	refused := 0
	for _, r := range outboundWrites(t, f) {
		if strings.HasSuffix(r.Detail[engine.DetailRequest], "(transaction entry)") {
			refused++
			if r.Outcome != audit.MinorFailure || r.Detail[engine.DetailStatus] != "405" {
				t.Errorf("refused transaction's record: %v %v", r.Outcome, r.Detail)
			}
		}
	}
	if refused != 16 {
		t.Errorf("%d records of the refused transaction, want one per resource (16)", refused)
	}
	if got, want := f.w.Writes(), (engine.Writes{Known: true}); got != want {
		t.Errorf("Writes() = %+v, want %+v (one resource at a time)", got, want)
	}

	ehr.put("Patient", "ehr-m2", `{"resourceType":"Patient","identifier":[{"system":"https://clinic.example/mrn","value":"M2"}]}`)
	f.enrol(t, "M2")
	before := len(requestsSince(ehr, 0))
	f.run(t)
	for _, r := range requestsSince(ehr, before) {
		if r == "POST " {
			t.Errorf("a transaction was tried again after the EHR refused it as unsupported")
		}
	}
	f.once(t)
}

// An EHR that takes at most 8 entries per transaction (as Medplum does for
// conditional updates): the refused Bundle is split until the halves go
// through, the CarePlan travels again with the later halves until all its
// Appointments resolve, everything is written once and completely, and
// the next batch keeps under the bound it learned.
func TestTransactionBoundIsLearned(t *testing.T) {
	ehr := newScriptedEHR()
	ehr.conditionalUpdate, ehr.transaction, ehr.txMax = true, true, 8
	f := newFixture(t, ehr)
	ctx := t.Context()
	f.run(t)
	f.allSucceeded(t, 16)
	f.once(t)
	ehr.mu.Lock()
	var plan string
	for _, b := range ehr.stored["CarePlan"] {
		plan = b
	}
	appts := len(ehr.stored["Appointment"])
	ehr.mu.Unlock()
	if got := strings.Count(plan, `"Appointment/`); got != appts || appts != 13 {
		t.Errorf("the EHR's CarePlan refers to %d of %d Appointments: %s", got, appts, plan)
	}
	refused := func() int {
		n := 0
		for _, r := range outboundWrites(t, f) {
			if r.Detail[engine.DetailStatus] == "400" {
				n++
			}
		}
		return n
	}
	first := refused()
	if first == 0 {
		t.Fatal("no transaction was refused; the test tests nothing")
	}
	if got, want := f.w.Writes(), (engine.Writes{Known: true, Transactions: true, MaxEntries: 8}); got != want {
		t.Errorf("Writes() = %+v, want %+v", got, want)
	}

	ehr.put("Patient", "ehr-m2", `{"resourceType":"Patient","identifier":[{"system":"https://clinic.example/mrn","value":"M2"}]}`)
	f.enrol(t, "M2")
	before := len(requestsSince(ehr, 0))
	f.run(t)
	if got := refused(); got != first {
		t.Errorf("%d more refused transaction entries after the bound was learned", got-first)
	}
	if w := writesIn(requestsSince(ehr, before)); len(w) > 3 {
		t.Errorf("the second patient took %d writes: %v", len(w), w)
	}
	f.once(t)

	// Nothing changed: nothing sent.
	before = len(requestsSince(ehr, 0))
	if _, err := f.db.Backfill(ctx, "ehr", f.ep.ResourceTypes, time.Now()); err != nil {
		t.Fatal(err)
	}
	f.run(t)
	if w := writesIn(requestsSince(ehr, before)); len(w) != 0 {
		t.Errorf("a second full sync wrote %v", w)
	}
}

// An endpoint that creates patients (createPatients) and an EHR that does
// not know the patient: the Patient is written first, then everything
// that refers to it, by either strategy, in one run.
func TestCreatesThePatientFirst(t *testing.T) {
	for _, tx := range []bool{false, true} {
		t.Run(fmt.Sprintf("transaction %v", tx), func(t *testing.T) {
			ehr := newScriptedEHR()
			ehr.conditionalUpdate, ehr.transaction = true, tx
			db := kaptest.Store(t)
			svc, err := app.New(t.Context(), app.Options{Store: db, Catalogue: kaptest.Catalogue(t), Calendar: treatment.DefaultCalendar(time.UTC)})
			if err != nil {
				t.Fatal(err)
			}
			f := newFixtureOn(t, ehr, db, svc, func(ep *endpoint.Endpoint) {
				ep.CreatePatients = true
				ep.ResourceTypes = append(ep.ResourceTypes, "Patient")
			})
			ehr.mu.Lock()
			delete(ehr.stored["Patient"], "ehr-pat")
			ehr.mu.Unlock()
			f.run(t)
			f.allSucceeded(t, 17) // the Patient and its programme
			f.once(t)
			ehr.mu.Lock()
			defer ehr.mu.Unlock()
			if len(ehr.stored["Patient"]) != 1 {
				t.Fatalf("patients in the EHR: %d", len(ehr.stored["Patient"]))
			}
			for id := range ehr.stored["Patient"] {
				for _, b := range ehr.stored["Appointment"] {
					if !strings.Contains(b, `"Patient/`+id+`"`) {
						t.Errorf("an Appointment does not refer to the created patient %s: %s", id, b)
					}
				}
			}
		})
	}
}

// An EHR whose transaction answers name no locations: what it wrote is
// found by identifier (one search per type), the crosswalk holds the EHR's
// ids, and a second full sync sends nothing.
func TestTransactionAnswerWithoutLocations(t *testing.T) {
	ehr := newScriptedEHR()
	ehr.conditionalUpdate, ehr.transaction, ehr.txBare = true, true, true
	f := newFixture(t, ehr)
	ctx := t.Context()
	f.run(t)
	f.allSucceeded(t, 16)
	f.once(t)
	items, err := f.db.Items(ctx, outbox.Filter{EndpointID: "ehr", Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		if ids := ehr.matches(it.ResourceType, f.svc.IdentifierSystem()+"|"+it.ResourceID); len(ids) != 1 || ids[0] != it.EHRID {
			t.Errorf("%s/%s: crosswalk says EHR id %q, the EHR holds %v", it.ResourceType, it.ResourceID, it.EHRID, ids)
		}
	}
	searches := 0
	for _, r := range requestsSince(ehr, 0) {
		if strings.HasPrefix(r, "GET ") && r != "GET Patient" && r != "GET metadata" {
			searches++
		}
	}
	if searches != 3 { // CarePlan, Goal, Appointment
		t.Errorf("%d searches to find what the transaction wrote, want one per type (3)", searches)
	}
	before := len(requestsSince(ehr, 0))
	if _, err := f.db.Backfill(ctx, "ehr", f.ep.ResourceTypes, time.Now()); err != nil {
		t.Fatal(err)
	}
	f.run(t)
	if w := writesIn(requestsSince(ehr, before)); len(w) != 0 {
		t.Errorf("a second full sync wrote %v", w)
	}
}

// corrupting is a store whose stored version of one resource no longer
// parses (for the path where an entry cannot be prepared).
type corrupting struct {
	engine.Store
	id string
}

func (c corrupting) Read(ctx context.Context, typ, id string) (resource.Version, error) {
	v, err := c.Store.Read(ctx, typ, id)
	if id == c.id {
		v.JSON = []byte(`{"resourceType":`)
	}
	return v, err
}

// An entry that cannot be prepared is dead on its own, and the entries
// that refer to it drop the reference instead of sending a placeholder no
// entry has (which the EHR would refuse, Bundle after Bundle).
func TestTransactionWithoutAnUnpreparableEntry(t *testing.T) {
	ehr := newScriptedEHR()
	ehr.conditionalUpdate, ehr.transaction = true, true
	f := newFixture(t, ehr)
	ctx := t.Context()
	prog, _ := f.svc.Program(ctx, f.progID)
	bad := prog.Sessions[0].ID
	client, err := ehrclient.New(f.ep, ehrclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	f.w = engine.New(engine.Options{Endpoint: f.ep, IdentifierSystem: f.svc.IdentifierSystem(), Source: f.svc.Installation(), Store: corrupting{f.db, bad}, EHR: client, Owner: "test"})
	f.run(t)
	dead, err := f.db.Items(ctx, outbox.Filter{EndpointID: "ehr", State: outbox.Dead})
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != 1 || dead[0].ResourceID != bad || !strings.Contains(dead[0].LastError, "could not prepare") {
		t.Fatalf("dead items: %+v", dead)
	}
	for _, r := range outboundWrites(t, f) {
		if r.Outcome != audit.Success {
			t.Errorf("a write failed (%v): %v", r.Outcome, r.Detail)
		}
	}
	if st := f.states(t); st[outbox.Succeeded] < 14 {
		t.Errorf("states: %v, want the 14 resources that do not refer to the bad one succeeded", st)
	}
	if w := writesIn(requestsSince(ehr, 0)); len(w) != 1 {
		t.Errorf("writes: %v, want one transaction", w)
	}
}
