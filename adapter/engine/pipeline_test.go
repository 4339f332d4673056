package engine_test

import (
	"context"
	"testing"
	"time"

	"github.com/kapfhir/kapfhir/adapter/ehrclient"
	"github.com/kapfhir/kapfhir/adapter/engine"
	"github.com/kapfhir/kapfhir/app"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/treatment"
)

// A lease a lane took ahead and did not push (it stopped or paused) is
// given back: its items are due again at once, not held until it expires.
func TestLeaseTakenAheadIsReleased(t *testing.T) {
	f := newFixture(t, newScriptedEHR())
	engine.LeaseAheadAndRelease(t.Context(), f.w)
	st := f.states(t)
	if st[outbox.InFlight] != 0 || st[outbox.Pending] == 0 {
		t.Fatalf("after the release: %v; want every item pending again", st)
	}
	f.run(t)
	if st := f.states(t); st[outbox.Succeeded] == 0 || st[outbox.InFlight] != 0 || st[outbox.Pending] != 0 {
		t.Errorf("after a run: %v; want everything sent", st)
	}
}

// Lanes lease ahead and finish in the background: two patients' programmes
// synced by running lanes end with every resource in the EHR once, every
// item succeeded, none left leased once the worker stops.
func TestLanesSyncEverythingOnce(t *testing.T) {
	t.Run("one by one", func(t *testing.T) { testLanes(t, newScriptedEHR()) })
	t.Run("transactions of at most 8", func(t *testing.T) {
		// Lanes learn the bound concurrently.
		ehr := newScriptedEHR()
		ehr.conditionalUpdate, ehr.transaction, ehr.txMax = true, true, 8
		testLanes(t, ehr)
	})
}

func testLanes(t *testing.T, ehr *scriptedEHR) {
	f := newFixture(t, ehr)
	ctx := t.Context()
	ehr.put("Patient", "ehr-pat-2", `{"resourceType":"Patient","identifier":[{"system":"https://clinic.example/mrn","value":"M2"}]}`)
	p, err := f.svc.CreatePatient(ctx, app.PatientInput{Identifiers: []treatment.Identifier{{System: f.ep.PatientIdentifierSystem, Value: "M2"}}, Family: "Test", BirthDate: "1981-01-01", Gender: "other"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.CreateProgram(ctx, app.ProgramInput{PatientID: p.ID, ProtocolID: "kap-spaced-3to6", Start: "2027-01-04T09:00", Timezone: "UTC"}); err != nil {
		t.Fatal(err)
	}
	client, err := ehrclient.New(f.ep, ehrclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	settled := make(chan struct{}, 1)
	var w *engine.Worker
	w = engine.New(engine.Options{Endpoint: f.ep, IdentifierSystem: f.svc.IdentifierSystem(), Source: f.svc.Installation(), Store: f.db, EHR: client, Owner: "lanes",
		Poll: time.Hour, OnBatch: func() {
			if st, err := f.db.Stats(ctx, "ehr"); err == nil && st.Backlog() == 0 {
				select {
				case settled <- struct{}{}:
				default:
				}
			}
		}})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	select {
	case <-settled:
	case <-ctx.Done():
		t.Fatal("the lanes did not settle")
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	st := f.states(t)
	if st[outbox.InFlight] != 0 || st[outbox.Pending] != 0 || st[outbox.Succeeded] == 0 {
		t.Errorf("after the lanes stopped: %v; want every item succeeded, none leased", st)
	}
	f.once(t)
}
