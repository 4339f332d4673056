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

// A batch leased ahead whose lease ran out while the lane was busy, and
// which another worker took over, is left to that worker: pushed by both,
// the EHR would hold a version the crosswalk does not name. One whose
// lease merely grew old is renewed and pushed.
func TestLeaseAheadTakenOverIsLeft(t *testing.T) {
	for _, tt := range []struct {
		name    string
		elapsed time.Duration
		thief   bool
	}{
		{"taken over", 2 * time.Minute, true},
		{"grown old, renewed", 50 * time.Second, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ehr := newScriptedEHR()
			ehr.conditionalUpdate, ehr.transaction = true, true
			f := newFixture(t, ehr)
			ctx := t.Context()
			client, err := ehrclient.New(f.ep, ehrclient.Options{})
			if err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			w := engine.New(engine.Options{Endpoint: f.ep, IdentifierSystem: f.svc.IdentifierSystem(), Source: f.svc.Installation(), Store: f.db, EHR: client, Owner: "lane",
				LeaseFor: time.Minute, Now: func() time.Time { return now }})
			n := engine.PushLeasedAhead(ctx, w, func() {
				now = now.Add(tt.elapsed) // the lane's previous push
				if !tt.thief {
					return
				}
				bs, err := f.db.Lease(ctx, outbox.Lease{EndpointID: "ehr", Owner: "thief", MaxPatients: 1, Now: now, For: time.Hour})
				if err != nil || len(bs) != 1 {
					t.Fatalf("taking the expired lease over: %v, %d batches", err, len(bs))
				}
			})
			writes := writesIn(requestsSince(ehr, 0))
			if tt.thief {
				items, err := f.db.Items(ctx, outbox.Filter{EndpointID: "ehr", Limit: 1000})
				if err != nil {
					t.Fatal(err)
				}
				for _, it := range items {
					if it.State != outbox.InFlight || it.LeaseOwner != "thief" {
						t.Errorf("item %d: %s by %q; want in flight, held by the thief", it.ID, it.State, it.LeaseOwner)
					}
				}
				if n != 0 || len(writes) != 0 {
					t.Errorf("pushed %d items, writes %v; want the batch left alone", n, writes)
				}
				return
			}
			if n != 16 || len(writes) != 1 {
				t.Errorf("pushed %d items, writes %v; want the renewed batch pushed in one transaction", n, writes)
			}
			f.allSucceeded(t, 16)
		})
	}
}
