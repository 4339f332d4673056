package storetest

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/endpoint"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/store"
	"github.com/kapfhir/kapfhir/treatment"
)

// syncTests are the sync queue's part of the suite (see Run).
var syncTests = []suiteTest{
	{"SyncEndpoints", testSyncEndpoints},
	{"SyncEnqueueCoalesces", testSyncEnqueueCoalesces},
	{"SyncEnqueueStates", testSyncEnqueueStates},
	{"SyncEnqueueRollback", testSyncEnqueueRollback},
	{"SyncLeaseOrder", testSyncLeaseOrder},
	{"SyncLeaseExpiry", testSyncLeaseExpiry},
	{"SyncLeaseRenew", testSyncLeaseRenew},
	{"SyncFinishBatch", testSyncFinishBatch},
	{"SyncFinish", testSyncFinish},
	{"SyncFinishRecords", testSyncFinishRecords},
	{"SyncNewVersionInFlight", testSyncNewVersionInFlight},
	{"SyncRetryTiming", testSyncRetryTiming},
	{"SyncConcurrentLease", testSyncConcurrentLease},
	{"SyncReplayDiscard", testSyncReplayDiscard},
	{"SyncBackfill", testSyncBackfill},
	{"SyncStats", testSyncStats},
	{"SyncItemsLinksLog", testSyncItemsLinksLog},
	{"SyncDeleteEndpoint", testSyncDeleteEndpoint},
}

// syncT0 is the suite's clock origin; every time is an offset from it.
var syncT0 = time.Date(2026, 4, 1, 9, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return syncT0.Add(d) }

// ignoreItem ignores what a test cannot predict: ids, seqs and update times.
var ignoreItem = cmpopts.IgnoreFields(outbox.Item{}, "ID", "Seq", "Updated")

// ignoreEventID ignores log event ids.
var ignoreEventID = cmpopts.IgnoreFields(outbox.Event{}, "ID")

// addEndpoint stores a minimal endpoint.
func addEndpoint(t *testing.T, s store.Store, id string) {
	t.Helper()
	e := endpoint.Stored{Endpoint: endpoint.Defaults(), Source: endpoint.SourceAPI, AuthState: endpoint.AuthOK, Created: syncT0, Updated: syncT0}
	e.ID, e.Name, e.FHIRBaseURL = id, "EHR "+id, "https://ehr.example/"+id+"/fhir"
	if err := s.PutEndpoint(t.Context(), e); err != nil {
		t.Fatalf("PutEndpoint(%s): %v", id, err)
	}
}

// work is one enqueue of Goal/<res> of patient pat at endpoint ep.
func work(ep, typ, res, pat string, v int64) outbox.Work {
	return outbox.Work{EndpointID: ep, ResourceType: typ, ResourceID: res, PatientID: pat, Version: v}
}

// enqueue enqueues work in one transaction.
func enqueue(t *testing.T, s store.Store, now time.Time, ws ...outbox.Work) {
	t.Helper()
	inTx(t, s, func(tx store.Tx) error { return tx.Enqueue(t.Context(), ws, now) })
}

// lease leases and fails the test on error.
func lease(t *testing.T, s store.Store, l outbox.Lease) []outbox.Batch {
	t.Helper()
	bs, err := s.Lease(t.Context(), l)
	if err != nil {
		t.Fatalf("Lease(%s, %s): %v", l.EndpointID, l.Owner, err)
	}
	return bs
}

// finish finishes and fails the test on error.
func finish(t *testing.T, s store.Store, r outbox.Result) {
	t.Helper()
	if err := s.Finish(t.Context(), r); err != nil {
		t.Fatalf("Finish(%d, %s): %v", r.ItemID, r.Outcome, err)
	}
}

// items lists the items matching f and fails the test on error.
func items(t *testing.T, s store.Store, f outbox.Filter) []outbox.Item {
	t.Helper()
	got, err := s.Items(t.Context(), f)
	if err != nil {
		t.Fatalf("Items(%+v): %v", f, err)
	}
	return got
}

// only returns the one item of an endpoint.
func only(t *testing.T, s store.Store, ep string) outbox.Item {
	t.Helper()
	got := items(t, s, outbox.Filter{EndpointID: ep})
	if len(got) != 1 {
		t.Fatalf("endpoint %s has %d items, want 1", ep, len(got))
	}
	return got[0]
}

// batchKeys summarises batches as patient: resource ids in order.
func batchKeys(bs []outbox.Batch) []string {
	var out []string
	for _, b := range bs {
		s := b.PatientID + ":"
		for _, it := range b.Items {
			s += " " + it.ResourceID
		}
		out = append(out, s)
	}
	return out
}

// logOf returns an endpoint's whole log, newest first.
func logOf(t *testing.T, s store.Store, ep string) []outbox.Event {
	t.Helper()
	evs, err := s.Log(t.Context(), ep, 0, 1000)
	if err != nil {
		t.Fatalf("Log(%s): %v", ep, err)
	}
	return evs
}

func testSyncEndpoints(t *testing.T, s store.Store) {
	ctx := t.Context()
	if got, err := s.Endpoints(ctx); err != nil || len(got) != 0 {
		t.Fatalf("Endpoints(empty) = %v, %v; want none", got, err)
	}
	b := endpoint.Stored{Endpoint: endpoint.Defaults(), Source: endpoint.SourceConfig, AuthState: endpoint.AuthOK, Created: at(0), Updated: at(0)}
	b.ID, b.Name, b.FHIRBaseURL = "b-ehr", "B", "https://b.example/fhir"
	b.Auth.ClientID, b.Auth.PrivateKeyPEM, b.Auth.Kid = "kapfhir", "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n", "k1"
	a := endpoint.Stored{Endpoint: endpoint.Defaults(), Source: endpoint.SourceAPI, Created: at(time.Minute), Updated: at(time.Minute)}
	a.ID, a.Name, a.FHIRBaseURL = "a-ehr", "A", "https://a.example/fhir"
	a.Auth = endpoint.Auth{Type: endpoint.AuthClientSecret, ClientID: "c", ClientSecret: "s3cret", TokenURL: "https://a.example/token"}
	a.ResourceTypes = []string{"Patient", "Goal"}
	for _, e := range []endpoint.Stored{b, a} {
		if err := s.PutEndpoint(ctx, e); err != nil {
			t.Fatalf("PutEndpoint(%s): %v", e.ID, err)
		}
	}
	got, err := s.Endpoints(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]endpoint.Stored{a, b}, got); diff != "" {
		t.Errorf("Endpoints, secrets included (-want +got):\n%s", diff)
	}
	inTx(t, s, func(tx store.Tx) error {
		got, err := tx.Endpoints(ctx)
		if diff := cmp.Diff([]endpoint.Stored{a, b}, got); diff != "" {
			t.Errorf("tx.Endpoints (-want +got):\n%s", diff)
		}
		return err
	})

	// Replacing keeps Created.
	a2 := a
	a2.Name, a2.Auth.ClientSecret, a2.Created, a2.Updated = "A2", "n3w", at(time.Hour), at(time.Hour)
	if err := s.PutEndpoint(ctx, a2); err != nil {
		t.Fatal(err)
	}
	want := a2
	want.Created = a.Created
	if got, err := s.Endpoint(ctx, a.ID); err != nil || !cmp.Equal(want, got) {
		t.Errorf("Endpoint after replace = %+v, %v; want %+v", got, err, want)
	}

	if err := s.SetEndpointState(ctx, b.ID, endpoint.AuthFailed, "token endpoint answered 401", at(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	wantB := b
	wantB.AuthState, wantB.LastError, wantB.Updated = endpoint.AuthFailed, "token endpoint answered 401", at(2*time.Hour)
	if got, err := s.Endpoint(ctx, b.ID); err != nil || !cmp.Equal(wantB, got) {
		t.Errorf("Endpoint after SetEndpointState = %+v, %v; want %+v", got, err, wantB)
	}

	_, err = s.Endpoint(ctx, "nothing")
	wantKind(t, "Endpoint(nothing)", err, treatment.KindNotFound)
	wantKind(t, "SetEndpointState(nothing)", s.SetEndpointState(ctx, "nothing", endpoint.AuthOK, "", at(0)), treatment.KindNotFound)
	wantKind(t, "DeleteEndpoint(nothing)", s.DeleteEndpoint(ctx, "nothing"), treatment.KindNotFound)
	if err := s.DeleteEndpoint(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	_, err = s.Endpoint(ctx, a.ID)
	wantKind(t, "Endpoint after delete", err, treatment.KindNotFound)
}

func testSyncEnqueueCoalesces(t *testing.T, s store.Store) {
	addEndpoint(t, s, "ehr")
	addEndpoint(t, s, "other")
	// Three enqueues of one resource, out of version order, one of them in
	// the same transaction as another resource; the other endpoint gets its own item.
	enqueue(t, s, at(0), work("ehr", "Goal", "g1", "p1", 1), work("ehr", "Goal", "g2", "p1", 1))
	enqueue(t, s, at(time.Second), work("ehr", "Goal", "g1", "p1", 3), work("other", "Goal", "g1", "p1", 3))
	enqueue(t, s, at(2*time.Second), work("ehr", "Goal", "g1", "p1", 2))
	// Work for an endpoint that does not exist is dropped.
	enqueue(t, s, at(0), work("gone", "Goal", "g1", "p1", 1))

	got := items(t, s, outbox.Filter{EndpointID: "ehr"})
	want := []outbox.Item{
		{EndpointID: "ehr", ResourceType: "Goal", ResourceID: "g1", PatientID: "p1", State: outbox.Pending, WantVersion: 3, NextAttempt: at(0)},
		{EndpointID: "ehr", ResourceType: "Goal", ResourceID: "g2", PatientID: "p1", State: outbox.Pending, WantVersion: 1, NextAttempt: at(0)},
	}
	if diff := cmp.Diff(want, got, ignoreItem); diff != "" {
		t.Errorf("items (-want +got):\n%s", diff)
	}
	if len(got) == 2 && got[0].Seq <= got[1].Seq {
		t.Errorf("g1 seq %d, g2 seq %d: the later enqueue of g1 must move it after g2", got[0].Seq, got[1].Seq)
	}
	if n := len(items(t, s, outbox.Filter{})); n != 3 {
		t.Errorf("%d items in all, want 3", n)
	}
	// The coalesced item goes out after g2.
	bs := lease(t, s, outbox.Lease{EndpointID: "ehr", Owner: "w", MaxPatients: 1, Now: at(time.Minute), For: time.Minute})
	if diff := cmp.Diff([]string{"p1: g2 g1"}, batchKeys(bs)); diff != "" {
		t.Errorf("lease (-want +got):\n%s", diff)
	}
}

// driveTo makes the one item of endpoint ep reach state, enqueued at syncT0.
func driveTo(t *testing.T, s store.Store, ep string, state outbox.State) outbox.Item {
	t.Helper()
	addEndpoint(t, s, ep)
	enqueue(t, s, at(0), work(ep, "Goal", "g-"+ep, "p-"+ep, 1))
	if state == outbox.Pending {
		return only(t, s, ep)
	}
	bs := lease(t, s, outbox.Lease{EndpointID: ep, Owner: "w", MaxPatients: 1, Now: at(time.Second), For: time.Minute})
	if len(bs) != 1 || len(bs[0].Items) != 1 {
		t.Fatalf("lease %s: %v, want one item", ep, batchKeys(bs))
	}
	id := bs[0].Items[0].ID
	r := outbox.Result{ItemID: id, Owner: "w", Now: at(2 * time.Second)}
	switch state {
	case outbox.InFlight:
		return only(t, s, ep)
	case outbox.Succeeded:
		r.Outcome, r.SentVersion, r.SentHash, r.EHRID = outbox.Sent, 1, []byte("h1"), "E-"+ep
	case outbox.Retrying:
		r.Outcome, r.RetryAt, r.Status, r.Error = outbox.Retry, at(time.Hour), 503, "unavailable"
	case outbox.Dead, outbox.Discarded:
		r.Outcome, r.Status, r.Error = outbox.Reject, 422, "rejected"
	}
	finish(t, s, r)
	if state == outbox.Discarded {
		if err := s.Discard(t.Context(), id, "op", at(3*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	it := only(t, s, ep)
	if it.State != state {
		t.Fatalf("item of %s is %s, want %s", ep, it.State, state)
	}
	return it
}

func testSyncEnqueueStates(t *testing.T, s store.Store) {
	now := at(time.Minute)
	for _, tt := range []struct {
		from        outbox.State
		to          outbox.State
		attempts    int
		nextAttempt time.Time
	}{
		{outbox.Pending, outbox.Pending, 0, at(0)},
		{outbox.InFlight, outbox.InFlight, 0, at(0)},
		{outbox.Retrying, outbox.Retrying, 1, at(time.Hour)},
		{outbox.Succeeded, outbox.Pending, 0, now},
		{outbox.Dead, outbox.Pending, 0, now},
		{outbox.Discarded, outbox.Pending, 0, now},
	} {
		t.Run(string(tt.from), func(t *testing.T) {
			ep := "ehr-" + string(tt.from)
			before := driveTo(t, s, ep, tt.from)
			enqueue(t, s, now, work(ep, "Goal", "g-"+ep, "p-"+ep, 2))
			got := only(t, s, ep)
			if diff := cmp.Diff([]any{tt.to, int64(2), tt.attempts, tt.nextAttempt}, []any{got.State, got.WantVersion, got.Attempts, got.NextAttempt}); diff != "" {
				t.Errorf("state, want version, attempts, next attempt (-want +got):\n%s", diff)
			}
			if got.Seq <= before.Seq || got.ID != before.ID {
				t.Errorf("item %d seq %d -> item %d seq %d; want the same item with a larger seq", before.ID, before.Seq, got.ID, got.Seq)
			}
		})
	}
}

func testSyncEnqueueRollback(t *testing.T, s store.Store) {
	addEndpoint(t, s, "ehr")
	boom := errors.New("boom")
	err := s.InTx(t.Context(), func(tx store.Tx) error {
		if err := tx.Enqueue(t.Context(), []outbox.Work{work("ehr", "Goal", "g1", "p1", 1)}, at(0)); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("InTx = %v, want boom", err)
	}
	if got := items(t, s, outbox.Filter{}); len(got) != 0 {
		t.Errorf("rolled back enqueue left %d items", len(got))
	}
}

func testSyncLeaseOrder(t *testing.T, s store.Store) {
	addEndpoint(t, s, "ehr")
	addEndpoint(t, s, "other")
	// Patients in order of their first enqueue: p2, p1, p3, "" (no patient).
	enqueue(t, s, at(0), work("ehr", "Patient", "p2", "p2", 1), work("ehr", "Goal", "g1", "p1", 1))
	enqueue(t, s, at(0), work("ehr", "Patient", "p1", "p1", 1), work("ehr", "Appointment", "a2", "p2", 1), work("other", "Goal", "x", "p1", 1))
	enqueue(t, s, at(0), work("ehr", "Goal", "g3", "p3", 1), work("ehr", "Goal", "lone", "", 1))
	// Not yet runnable.
	enqueue(t, s, at(time.Hour), work("ehr", "Goal", "later", "p4", 1))

	ctx := t.Context()
	if bs := lease(t, s, outbox.Lease{EndpointID: "nothing", Owner: "a", MaxPatients: 5, Now: at(time.Minute), For: 2 * time.Hour}); len(bs) != 0 {
		t.Errorf("lease of an unknown endpoint = %v, want none", batchKeys(bs))
	}
	upcoming := func(limit int) []string {
		t.Helper()
		ps, err := s.Upcoming(ctx, "ehr", at(time.Minute), limit)
		if err != nil {
			t.Fatalf("Upcoming: %v", err)
		}
		return ps
	}
	if diff := cmp.Diff([]string{"p2", "p1", "p3"}, upcoming(10)); diff != "" {
		t.Errorf("Upcoming before any lease (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"p2"}, upcoming(1)); diff != "" {
		t.Errorf("Upcoming(1) (-want +got):\n%s", diff)
	}
	bs := lease(t, s, outbox.Lease{EndpointID: "ehr", Owner: "a", MaxPatients: 2, Now: at(time.Minute), For: 2 * time.Hour})
	if diff := cmp.Diff([]string{"p3"}, upcoming(10)); diff != "" {
		t.Errorf("Upcoming after leasing p2 and p1 (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"p2: p2 a2", "p1: g1 p1"}, batchKeys(bs)); diff != "" {
		t.Errorf("first lease (-want +got):\n%s", diff)
	}
	for _, b := range bs {
		for _, it := range b.Items {
			if it.State != outbox.InFlight || it.LeaseOwner != "a" || !it.LeaseUntil.Equal(at(time.Minute+2*time.Hour)) || b.EndpointID != "ehr" {
				t.Errorf("leased item %s: state %s owner %q until %v; want in_flight, a, %v", it.ResourceID, it.State, it.LeaseOwner, it.LeaseUntil, at(time.Minute+2*time.Hour))
			}
		}
	}
	// A new item of a leased patient waits for its lease.
	enqueue(t, s, at(time.Minute), work("ehr", "Observation", "o1", "p1", 1))
	bs = lease(t, s, outbox.Lease{EndpointID: "ehr", Owner: "b", MaxPatients: 5, Now: at(time.Minute), For: 2 * time.Hour})
	if diff := cmp.Diff([]string{"p3: g3", ": lone"}, batchKeys(bs)); diff != "" {
		t.Errorf("second lease (-want +got):\n%s", diff)
	}
	bs = lease(t, s, outbox.Lease{EndpointID: "ehr", Owner: "c", MaxPatients: 5, Now: at(time.Minute), For: 2 * time.Hour})
	if len(bs) != 0 {
		t.Errorf("third lease = %v, want none", batchKeys(bs))
	}
	// The other endpoint's queue is its own.
	bs = lease(t, s, outbox.Lease{EndpointID: "other", Owner: "c", MaxPatients: 5, Now: at(time.Minute), For: 2 * time.Hour})
	if diff := cmp.Diff([]string{"p1: x"}, batchKeys(bs)); diff != "" {
		t.Errorf("other endpoint's lease (-want +got):\n%s", diff)
	}
	// Once p1's batch is finished, its new item runs.
	for _, id := range []string{"g1", "p1"} {
		links, err := s.Links(ctx, "ehr", []resource.Key{{Type: map[string]string{"g1": "Goal", "p1": "Patient"}[id], ID: id}})
		if err != nil || len(links) != 1 {
			t.Fatalf("Links: %v, %v", links, err)
		}
		for _, it := range links {
			finish(t, s, outbox.Result{ItemID: it.ID, Owner: "a", Outcome: outbox.Sent, SentVersion: 1, Now: at(time.Minute)})
		}
	}
	bs = lease(t, s, outbox.Lease{EndpointID: "ehr", Owner: "c", MaxPatients: 5, Now: at(time.Minute), For: 2 * time.Hour})
	if diff := cmp.Diff([]string{"p1: o1"}, batchKeys(bs)); diff != "" {
		t.Errorf("lease after p1 finished (-want +got):\n%s", diff)
	}
	bs = lease(t, s, outbox.Lease{EndpointID: "ehr", Owner: "c", MaxPatients: 5, Now: at(time.Hour), For: time.Minute})
	if diff := cmp.Diff([]string{"p4: later"}, batchKeys(bs)); diff != "" {
		t.Errorf("lease an hour later (-want +got):\n%s", diff)
	}
}

func testSyncLeaseExpiry(t *testing.T, s store.Store) {
	ctx := t.Context()
	addEndpoint(t, s, "ehr")
	enqueue(t, s, at(0), work("ehr", "Patient", "p1", "p1", 1), work("ehr", "Goal", "g1", "p1", 1))
	a := lease(t, s, outbox.Lease{EndpointID: "ehr", Owner: "A", MaxPatients: 1, Now: at(0), For: time.Minute})
	if diff := cmp.Diff([]string{"p1: p1 g1"}, batchKeys(a)); diff != "" {
		t.Fatalf("lease by A (-want +got):\n%s", diff)
	}
	// A dies. While its lease lasts, nobody else gets the patient.
	if bs := lease(t, s, outbox.Lease{EndpointID: "ehr", Owner: "B", MaxPatients: 1, Now: at(time.Minute), For: time.Minute}); len(bs) != 0 {
		t.Errorf("lease at the expiry instant = %v, want none", batchKeys(bs))
	}
	b := lease(t, s, outbox.Lease{EndpointID: "ehr", Owner: "B", MaxPatients: 1, Now: at(time.Minute + time.Microsecond), For: time.Minute})
	if diff := cmp.Diff([]string{"p1: p1 g1"}, batchKeys(b)); diff != "" {
		t.Fatalf("lease by B after expiry (-want +got):\n%s", diff)
	}
	for _, it := range b[0].Items {
		if it.LeaseOwner != "B" {
			t.Errorf("item %s owner %q, want B", it.ResourceID, it.LeaseOwner)
		}
	}
	// A comes back: its lease is lost.
	err := s.Finish(ctx, outbox.Result{ItemID: a[0].Items[0].ID, Owner: "A", Outcome: outbox.Sent, SentVersion: 1, Now: at(2 * time.Minute)})
	wantKind(t, "Finish by A", err, treatment.KindConflict)
	err = s.Finish(ctx, outbox.Result{ItemID: a[0].Items[0].ID, Owner: "A", Outcome: outbox.Release, Now: at(2 * time.Minute)})
	wantKind(t, "Release by A", err, treatment.KindConflict)
	finish(t, s, outbox.Result{ItemID: b[0].Items[0].ID, Owner: "B", Outcome: outbox.Sent, SentVersion: 1, Now: at(2 * time.Minute)})
	// Finishing twice is a conflict too: the lease ended.
	err = s.Finish(ctx, outbox.Result{ItemID: b[0].Items[0].ID, Owner: "B", Outcome: outbox.Sent, SentVersion: 1, Now: at(2 * time.Minute)})
	wantKind(t, "second Finish by B", err, treatment.KindConflict)
	err = s.Finish(ctx, outbox.Result{ItemID: 999999, Owner: "B", Outcome: outbox.Sent, Now: at(2 * time.Minute)})
	wantKind(t, "Finish(unknown item)", err, treatment.KindConflict)
	if evs := logOf(t, s, "ehr"); len(evs) != 1 {
		t.Errorf("log has %d events, want 1 (conflicts log nothing)", len(evs))
	}
}

func testSyncLeaseRenew(t *testing.T, s store.Store) {
	ctx := t.Context()
	addEndpoint(t, s, "ehr")
	enqueue(t, s, at(0), work("ehr", "Patient", "p1", "p1", 1), work("ehr", "Goal", "g1", "p1", 1))
	a := lease(t, s, outbox.Lease{EndpointID: "ehr", Owner: "A", MaxPatients: 1, Now: at(0), For: time.Minute})
	if len(a) != 1 {
		t.Fatalf("lease by A: %v", batchKeys(a))
	}
	// A long batch renews its lease: past the first expiry nobody takes it.
	if err := s.Renew(ctx, "ehr", "p1", "A", at(3*time.Minute)); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if bs := lease(t, s, outbox.Lease{EndpointID: "ehr", Owner: "B", MaxPatients: 1, Now: at(2 * time.Minute), For: time.Minute}); len(bs) != 0 {
		t.Errorf("lease of a renewed batch = %v, want none", batchKeys(bs))
	}
	wantKind(t, "Renew by another owner", s.Renew(ctx, "ehr", "p1", "B", at(4*time.Minute)), treatment.KindConflict)
	finish(t, s, outbox.Result{ItemID: a[0].Items[0].ID, Owner: "A", Outcome: outbox.Sent, SentVersion: 1, SentHash: []byte("h"), Now: at(time.Minute)})
	finish(t, s, outbox.Result{ItemID: a[0].Items[1].ID, Owner: "A", Outcome: outbox.Sent, SentVersion: 1, SentHash: []byte("h"), Now: at(time.Minute)})
	wantKind(t, "Renew with nothing in flight", s.Renew(ctx, "ehr", "p1", "A", at(4*time.Minute)), treatment.KindConflict)
	// A replay forgets the hash of the last body sent, so the item is sent again.
	if err := s.Replay(ctx, a[0].Items[0].ID, "op", at(5*time.Minute)); err != nil {
		t.Fatal(err)
	}
	it, err := s.Item(ctx, a[0].Items[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if it.State != outbox.Pending || len(it.SentHash) != 0 || it.SentVersion != 1 {
		t.Errorf("replayed item: state %s, hash %q, sent version %d", it.State, it.SentHash, it.SentVersion)
	}
}

func testSyncFinishBatch(t *testing.T, s store.Store) {
	ctx := t.Context()
	addEndpoint(t, s, "ehr")
	enqueue(t, s, at(0), work("ehr", "Patient", "p1", "p1", 1), work("ehr", "Goal", "g1", "p1", 1), work("ehr", "Goal", "g2", "p1", 1))
	a := lease(t, s, outbox.Lease{EndpointID: "ehr", Owner: "A", MaxPatients: 1, Now: at(0), For: time.Minute})
	if len(a) != 1 || len(a[0].Items) != 3 {
		t.Fatalf("lease: %v", batchKeys(a))
	}
	items := a[0].Items
	// g2 was finished already (say, by an earlier attempt): its result conflicts, the others apply.
	finish(t, s, outbox.Result{ItemID: items[2].ID, Owner: "A", Outcome: outbox.Release, Now: at(time.Second)})
	errs, err := s.FinishBatch(ctx, []outbox.Result{
		{ItemID: items[0].ID, Owner: "A", Outcome: outbox.Sent, SentVersion: 1, EHRID: "E1", Now: at(time.Second)},
		{ItemID: items[1].ID, Owner: "A", Outcome: outbox.Reject, Error: "no", Status: 422, Now: at(time.Second)},
		{ItemID: items[2].ID, Owner: "A", Outcome: outbox.Sent, SentVersion: 1, Now: at(time.Second)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if errs[0] != nil || errs[1] != nil {
		t.Errorf("errors for leased items: %v", errs)
	}
	wantKind(t, "FinishBatch of an item not leased", errs[2], treatment.KindConflict)
	want := map[int64]outbox.State{items[0].ID: outbox.Succeeded, items[1].ID: outbox.Dead, items[2].ID: outbox.Pending}
	for id, st := range want {
		it, err := s.Item(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if it.State != st {
			t.Errorf("item %s: state %s, want %s", it.ResourceID, it.State, st)
		}
	}
	if evs := logOf(t, s, "ehr"); len(evs) != 2 {
		t.Errorf("log has %d events, want 2", len(evs))
	}
}

func testSyncFinish(t *testing.T, s store.Store) {
	opOut := []byte(`{"resourceType":"OperationOutcome"}`)
	for _, tt := range []struct {
		name   string
		r      outbox.Result
		want   outbox.Item // from the pending item at version 1 (other fields as enqueued)
		action string      // "" for no log line
	}{
		{
			name:   "sent",
			r:      outbox.Result{Outcome: outbox.Sent, SentVersion: 1, SentHash: []byte("h1"), EHRID: "E1", EHRVersion: "7", Status: 201, Request: "PUT Goal/E1"},
			want:   outbox.Item{State: outbox.Succeeded, SentVersion: 1, SentHash: []byte("h1"), EHRID: "E1", EHRVersion: "7", LastStatus: 201},
			action: "sent",
		},
		{
			name:   "unchanged",
			r:      outbox.Result{Outcome: outbox.Unchanged, SentVersion: 1, SentHash: []byte("h1")},
			want:   outbox.Item{State: outbox.Succeeded, SentVersion: 1, SentHash: []byte("h1")},
			action: "unchanged",
		},
		{
			name:   "retry",
			r:      outbox.Result{Outcome: outbox.Retry, RetryAt: at(time.Hour), Status: 503, Error: "EHR unavailable", OpOut: opOut, EHRID: "E1", Request: "POST Goal"},
			want:   outbox.Item{State: outbox.Retrying, EHRID: "E1", Attempts: 1, NextAttempt: at(time.Hour), LastStatus: 503, LastError: "EHR unavailable", Outcome: opOut},
			action: "retry",
		},
		{
			name:   "dead",
			r:      outbox.Result{Outcome: outbox.Reject, Status: 422, Error: "EHR rejected the Goal", OpOut: opOut, Request: "POST Goal"},
			want:   outbox.Item{State: outbox.Dead, Attempts: 1, LastStatus: 422, LastError: "EHR rejected the Goal", Outcome: opOut},
			action: "dead",
		},
		{
			name: "released",
			r:    outbox.Result{Outcome: outbox.Release},
			want: outbox.Item{State: outbox.Pending},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ep := "ehr-" + tt.name
			addEndpoint(t, s, ep)
			enqueue(t, s, at(0), work(ep, "Goal", "g1", "p1", 1))
			bs := lease(t, s, outbox.Lease{EndpointID: ep, Owner: "w", MaxPatients: 1, Now: at(time.Second), For: time.Minute})
			if len(bs) != 1 {
				t.Fatalf("lease = %v", batchKeys(bs))
			}
			id := bs[0].Items[0].ID
			r := tt.r
			r.ItemID, r.Owner, r.Now = id, "w", at(2*time.Second)
			finish(t, s, r)

			want := tt.want
			want.EndpointID, want.ResourceType, want.ResourceID, want.PatientID, want.WantVersion = ep, "Goal", "g1", "p1", 1
			if want.NextAttempt.IsZero() {
				want.NextAttempt = at(0)
			}
			got, err := s.Item(t.Context(), id)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got, ignoreItem); diff != "" {
				t.Errorf("item (-want +got):\n%s", diff)
			}
			var wantLog []outbox.Event
			if tt.action != "" {
				version := r.SentVersion
				if version == 0 {
					version = 1
				}
				wantLog = []outbox.Event{{
					At: r.Now, EndpointID: ep, ItemID: id, ResourceType: "Goal", ResourceID: "g1", Version: version, Action: tt.action,
					Status: r.Status, EHRID: r.EHRID, EHRVersion: r.EHRVersion, Request: r.Request, Detail: r.Error, Actor: "sync",
				}}
			}
			if diff := cmp.Diff(wantLog, logOf(t, s, ep), ignoreEventID); diff != "" {
				t.Errorf("log (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("sent clears a retry", func(t *testing.T) {
		it := driveTo(t, s, "ehr-recovered", outbox.Retrying)
		bs := lease(t, s, outbox.Lease{EndpointID: "ehr-recovered", Owner: "w2", MaxPatients: 1, Now: at(time.Hour), For: time.Minute})
		if len(bs) != 1 {
			t.Fatalf("lease = %v", batchKeys(bs))
		}
		finish(t, s, outbox.Result{ItemID: it.ID, Owner: "w2", Outcome: outbox.Sent, SentVersion: 1, SentHash: []byte("h"), Status: 200, Now: at(time.Hour)})
		got, err := s.Item(t.Context(), it.ID)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]any{outbox.Succeeded, 0, "", []byte(nil), 200}, []any{got.State, got.Attempts, got.LastError, got.Outcome, got.LastStatus}); diff != "" {
			t.Errorf("state, attempts, error, outcome, status (-want +got):\n%s", diff)
		}
	})
}

// writeRec is the outbound-write audit record of Goal/<res> version 1 at ep.
func writeRec(ep, res string, outcome audit.Outcome, status string) audit.Record {
	return audit.Record{
		Time: at(2 * time.Second), Subtype: audit.OutboundWrite, Outcome: outcome, Agent: audit.System,
		PatientID: "p1", EndpointID: ep, Entities: []audit.Entity{{Ref: "Goal/" + res + "/_history/1"}},
		Detail: map[string]string{"status": status}, Source: auditSource,
	}
}

// provenanceOf is a Provenance of Goal/<res> version 1 sent to ep; mark
// tells apart two renderings of it.
func provenanceOf(ep, res, mark string) *resource.Write {
	f := fixture{typ: "Provenance", id: "prov-" + ep + "-" + res, lastUpdated: at(2 * time.Second),
		refs: []resource.Ref{{Param: "target", Target: "Goal/" + res}}}
	w := f.write(1)
	w.Version.JSON = append(w.Version.JSON, mark...)
	return &w
}

// A finish writes the audit records and the Provenance its results carry,
// in its own transaction: those of a result whose lease was lost are not
// written, a Provenance already stored is kept, and a bad record rolls the
// whole finish back.
func testSyncFinishRecords(t *testing.T, s store.Store) {
	ctx := t.Context()
	addEndpoint(t, s, "ehr")
	enqueue(t, s, at(0), work("ehr", "Goal", "g1", "p1", 1), work("ehr", "Goal", "g2", "p1", 1), work("ehr", "Goal", "g3", "p1", 1))
	bs := lease(t, s, outbox.Lease{EndpointID: "ehr", Owner: "A", MaxPatients: 1, Now: at(time.Second), For: time.Minute})
	if len(bs) != 1 || len(bs[0].Items) != 3 {
		t.Fatalf("lease: %v", batchKeys(bs))
	}
	g1, g2, g3 := bs[0].Items[0].ID, bs[0].Items[1].ID, bs[0].Items[2].ID
	finish(t, s, outbox.Result{ItemID: g3, Owner: "A", Outcome: outbox.Release, Now: at(time.Second)})

	// A bad audit record (no source) fails the finish: nothing is written.
	bad := writeRec("ehr", "g1", audit.Success, "201")
	bad.Source = ""
	if _, err := s.FinishBatch(ctx, []outbox.Result{{ItemID: g1, Owner: "A", Outcome: outbox.Sent, SentVersion: 1, Now: at(2 * time.Second),
		Audit: []audit.Record{bad}, Provenance: provenanceOf("ehr", "g1", "bad")}}); err == nil {
		t.Fatal("FinishBatch with an invalid audit record succeeded")
	}
	if it, err := s.Item(ctx, g1); err != nil || it.State != outbox.InFlight {
		t.Errorf("after a failed finish: %v, %+v; want the item still in flight", err, it)
	}
	_, err := s.Read(ctx, "Provenance", "prov-ehr-g1")
	wantKind(t, "the Provenance of a failed finish", err, treatment.KindNotFound)
	// A Provenance comes only with a sent result.
	_, err = s.FinishBatch(ctx, []outbox.Result{{ItemID: g2, Owner: "A", Outcome: outbox.Reject, Status: 422, Now: at(2 * time.Second),
		Provenance: provenanceOf("ehr", "g2", "")}})
	wantKind(t, "a Provenance with a dead result", err, treatment.KindInvalid)

	errs, err := s.FinishBatch(ctx, []outbox.Result{
		{ItemID: g1, Owner: "A", Outcome: outbox.Sent, SentVersion: 1, Status: 201, Now: at(2 * time.Second),
			Audit: []audit.Record{writeRec("ehr", "g1", audit.Success, "201")}, Provenance: provenanceOf("ehr", "g1", " first")},
		{ItemID: g2, Owner: "A", Outcome: outbox.Reject, Status: 422, Error: "rejected", Now: at(2 * time.Second),
			Audit: []audit.Record{writeRec("ehr", "g2", audit.SeriousFailure, "422")}},
		{ItemID: g3, Owner: "A", Outcome: outbox.Sent, SentVersion: 1, Status: 200, Now: at(2 * time.Second),
			Audit: []audit.Record{writeRec("ehr", "g3", audit.Success, "200")}, Provenance: provenanceOf("ehr", "g3", "")},
	})
	if err != nil {
		t.Fatal(err)
	}
	wantKind(t, "FinishBatch of an item not leased", errs[2], treatment.KindConflict)
	page := events(t, s, audit.Filter{EndpointID: "ehr", Subtypes: []audit.Subtype{audit.OutboundWrite}, Oldest: true})
	var got []string
	for _, r := range page.Records {
		got = append(got, fmt.Sprintf("%s %s %d %s", r.PatientID, r.Entities[0].Ref, r.Outcome, r.Detail["status"]))
	}
	want := []string{"p1 Goal/g1/_history/1 0 201", "p1 Goal/g2/_history/1 8 422"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("outbound-write records (-want +got):\n%s", diff)
	}
	wantIntact(t, s, 2, 1, 2)
	if v, err := s.Read(ctx, "Provenance", "prov-ehr-g1"); err != nil || !strings.HasSuffix(string(v.JSON), " first") {
		t.Errorf("Provenance of g1: %v %q", err, v.JSON)
	}
	_, err = s.Read(ctx, "Provenance", "prov-ehr-g3")
	wantKind(t, "the Provenance of a lost lease", err, treatment.KindNotFound)
	ids, _ := search(t, s, resource.Query{Type: "Provenance", Refs: []resource.RefFilter{{Param: "target", Targets: []string{"Goal/g1"}}}, Count: 10})
	if diff := cmp.Diff([]string{"prov-ehr-g1"}, ids); diff != "" {
		t.Errorf("Provenance?target=Goal/g1 (-want +got):\n%s", diff)
	}

	// The same version sent again (a replay) is audited again; its
	// Provenance stays the first one.
	if err := s.Replay(ctx, g1, "op", at(3*time.Second)); err != nil {
		t.Fatal(err)
	}
	bs = lease(t, s, outbox.Lease{EndpointID: "ehr", Owner: "B", MaxPatients: 1, Now: at(4 * time.Second), For: time.Minute})
	if len(bs) != 1 {
		t.Fatalf("lease after the replay: %v", batchKeys(bs))
	}
	again := writeRec("ehr", "g1", audit.Success, "200")
	if err := s.Finish(ctx, outbox.Result{ItemID: g1, Owner: "B", Outcome: outbox.Sent, SentVersion: 1, Status: 200, Now: at(5 * time.Second),
		Audit: []audit.Record{again}, Provenance: provenanceOf("ehr", "g1", " second")}); err != nil {
		t.Fatal(err)
	}
	if vs, err := s.History(ctx, "Provenance", "prov-ehr-g1"); err != nil || len(vs) != 1 || !strings.HasSuffix(string(vs[0].JSON), " first") {
		t.Errorf("Provenance of g1 after a second send: %v, %d versions", err, len(vs))
	}
	wantIntact(t, s, 3, 1, 3)
}

func testSyncNewVersionInFlight(t *testing.T, s store.Store) {
	addEndpoint(t, s, "ehr")
	enqueue(t, s, at(0), work("ehr", "Goal", "g1", "p1", 1))
	bs := lease(t, s, outbox.Lease{EndpointID: "ehr", Owner: "w", MaxPatients: 1, Now: at(0), For: time.Minute})
	if len(bs) != 1 {
		t.Fatalf("lease = %v", batchKeys(bs))
	}
	id := bs[0].Items[0].ID
	// Version 2 arrives while version 1 is being sent.
	enqueue(t, s, at(time.Second), work("ehr", "Goal", "g1", "p1", 2))
	finish(t, s, outbox.Result{ItemID: id, Owner: "w", Outcome: outbox.Sent, SentVersion: 1, SentHash: []byte("h1"), EHRID: "E1", Now: at(2 * time.Second)})
	got, err := s.Item(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]any{outbox.Pending, int64(2), int64(1), "E1", at(2 * time.Second)}, []any{got.State, got.WantVersion, got.SentVersion, got.EHRID, got.NextAttempt}); diff != "" {
		t.Errorf("state, want, sent, EHR id, next attempt (-want +got):\n%s", diff)
	}
	bs = lease(t, s, outbox.Lease{EndpointID: "ehr", Owner: "w", MaxPatients: 1, Now: at(3 * time.Second), For: time.Minute})
	if len(bs) != 1 || bs[0].Items[0].WantVersion != 2 || bs[0].Items[0].EHRID != "E1" {
		t.Fatalf("second lease = %+v, want the item at version 2 with its EHR id", bs)
	}
	// An older SentVersion never lowers what the EHR holds.
	finish(t, s, outbox.Result{ItemID: id, Owner: "w", Outcome: outbox.Sent, SentVersion: 2, Now: at(4 * time.Second)})
	if got, err := s.Item(t.Context(), id); err != nil || got.State != outbox.Succeeded || got.SentVersion != 2 {
		t.Errorf("after sending version 2: %+v, %v; want succeeded at 2", got, err)
	}
}

func testSyncRetryTiming(t *testing.T, s store.Store) {
	it := driveTo(t, s, "ehr", outbox.Retrying) // retry at +1h
	if bs := lease(t, s, outbox.Lease{EndpointID: "ehr", Owner: "w", MaxPatients: 1, Now: at(time.Hour - time.Microsecond), For: time.Minute}); len(bs) != 0 {
		t.Errorf("lease before the retry time = %v, want none", batchKeys(bs))
	}
	bs := lease(t, s, outbox.Lease{EndpointID: "ehr", Owner: "w", MaxPatients: 1, Now: at(time.Hour), For: time.Minute})
	if len(bs) != 1 || bs[0].Items[0].ID != it.ID || bs[0].Items[0].Attempts != 1 {
		t.Errorf("lease at the retry time = %+v, want the item with 1 attempt", bs)
	}
}

func testSyncConcurrentLease(t *testing.T, s store.Store) {
	const patients, perPatient, workers, extra = 40, 3, 8, 20
	addEndpoint(t, s, "ehr")
	var ws []outbox.Work
	for p := range patients {
		for i := range perPatient {
			ws = append(ws, work("ehr", "Goal", fmt.Sprintf("g-%d-%d", p, i), fmt.Sprintf("p%d", p), 1))
		}
	}
	enqueue(t, s, at(0), ws...)

	var (
		mu       sync.Mutex
		active   = map[string]string{} // patient -> owner holding it
		finished = map[int64]int{}
		errs     []error
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	enqueued := make(chan struct{})
	// New items of patients that may be in flight arrive while the workers lease.
	wg.Go(func() {
		defer close(enqueued)
		<-start
		for k := range extra {
			w := work("ehr", "Observation", fmt.Sprintf("o-%d", k), fmt.Sprintf("p%d", k%patients), 1)
			if err := s.InTx(t.Context(), func(tx store.Tx) error { return tx.Enqueue(t.Context(), []outbox.Work{w}, at(0)) }); err != nil {
				fail(err)
				return
			}
		}
	})
	for w := range workers {
		owner := fmt.Sprintf("w%d", w)
		wg.Go(func() {
			<-start
			for {
				bs, err := s.Lease(t.Context(), outbox.Lease{EndpointID: "ehr", Owner: owner, MaxPatients: 2, Now: at(time.Second), For: time.Hour})
				if err != nil {
					fail(err)
					return
				}
				if len(bs) == 0 {
					select {
					case <-enqueued: // nothing left, nothing more to come
						return
					default:
						continue
					}
				}
				mu.Lock()
				for _, b := range bs {
					if other, ok := active[b.PatientID]; ok {
						errs = append(errs, fmt.Errorf("patient %s leased by %s while %s holds it", b.PatientID, owner, other))
					}
					active[b.PatientID] = owner
				}
				mu.Unlock()
				for _, b := range bs {
					for i, it := range b.Items {
						if i == len(b.Items)-1 {
							// The patient is free once its last item is
							// finished: let go of it just before.
							mu.Lock()
							delete(active, b.PatientID)
							mu.Unlock()
						}
						if err := s.Finish(t.Context(), outbox.Result{ItemID: it.ID, Owner: owner, Outcome: outbox.Sent, SentVersion: 1, Now: at(time.Second)}); err != nil {
							fail(err)
							return
						}
						mu.Lock()
						finished[it.ID]++
						mu.Unlock()
					}
				}
			}
		})
	}
	close(start)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("workers: %v", errors.Join(errs...))
	}
	total := patients*perPatient + extra
	if len(finished) != total {
		t.Errorf("%d items finished, want %d", len(finished), total)
	}
	for id, n := range finished {
		if n != 1 {
			t.Errorf("item %d finished %d times", id, n)
		}
	}
	for _, it := range items(t, s, outbox.Filter{EndpointID: "ehr", Limit: 1000}) {
		if it.State != outbox.Succeeded {
			t.Errorf("item %s is %s, want succeeded", it.ResourceID, it.State)
		}
	}
	st, err := s.Stats(t.Context(), "ehr")
	if err != nil || st.Sent != total {
		t.Errorf("Stats.Sent = %d, %v; want %d", st.Sent, err, total)
	}
}

func testSyncReplayDiscard(t *testing.T, s store.Store) {
	ctx := t.Context()
	now := at(time.Hour)
	dead := driveTo(t, s, "ehr-dead", outbox.Dead)
	retrying := driveTo(t, s, "ehr-retrying", outbox.Retrying)
	inFlight := driveTo(t, s, "ehr-inflight", outbox.InFlight)
	pending := driveTo(t, s, "ehr-pending", outbox.Pending)
	succeeded := driveTo(t, s, "ehr-succeeded", outbox.Succeeded)

	wantKind(t, "Replay(unknown)", s.Replay(ctx, 999999, "op", now), treatment.KindNotFound)
	wantKind(t, "Replay(in flight)", s.Replay(ctx, inFlight.ID, "op", now), treatment.KindConflict)
	wantKind(t, "Discard(unknown)", s.Discard(ctx, 999999, "op", now), treatment.KindNotFound)
	wantKind(t, "Discard(pending)", s.Discard(ctx, pending.ID, "op", now), treatment.KindConflict)
	wantKind(t, "Discard(in flight)", s.Discard(ctx, inFlight.ID, "op", now), treatment.KindConflict)
	wantKind(t, "Discard(succeeded)", s.Discard(ctx, succeeded.ID, "op", now), treatment.KindConflict)

	if err := s.Replay(ctx, dead.ID, "op-1", now); err != nil {
		t.Fatal(err)
	}
	got, err := s.Item(ctx, dead.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]any{outbox.Pending, 0, now}, []any{got.State, got.Attempts, got.NextAttempt}); diff != "" {
		t.Errorf("replayed item: state, attempts, next attempt (-want +got):\n%s", diff)
	}
	wantEvent := outbox.Event{At: now, EndpointID: "ehr-dead", ItemID: dead.ID, ResourceType: "Goal", ResourceID: dead.ResourceID, Version: 1, Action: "replayed", Actor: "op-1"}
	if evs := logOf(t, s, "ehr-dead"); len(evs) != 2 || !cmp.Equal(wantEvent, evs[0], ignoreEventID) {
		t.Errorf("log of ehr-dead = %+v; want the dead event, then %+v", evs, wantEvent)
	}

	if err := s.Discard(ctx, retrying.ID, "op-2", now); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Item(ctx, retrying.ID); err != nil || got.State != outbox.Discarded {
		t.Errorf("discarded item = %+v, %v", got, err)
	}
	wantEvent = outbox.Event{At: now, EndpointID: "ehr-retrying", ItemID: retrying.ID, ResourceType: "Goal", ResourceID: retrying.ResourceID, Version: 1, Action: "discarded", Actor: "op-2"}
	if evs := logOf(t, s, "ehr-retrying"); len(evs) != 2 || !cmp.Equal(wantEvent, evs[0], ignoreEventID) {
		t.Errorf("log of ehr-retrying = %+v; want the retry event, then %+v", evs, wantEvent)
	}
	// A discarded item can be replayed.
	if err := s.Replay(ctx, retrying.ID, "op-2", now); err != nil {
		t.Errorf("Replay(discarded): %v", err)
	}

	t.Run("ReplayDead", func(t *testing.T) {
		addEndpoint(t, s, "many")
		enqueue(t, s, at(0), work("many", "Goal", "d1", "p1", 1), work("many", "Goal", "d2", "p2", 1), work("many", "Goal", "r1", "p3", 1))
		bs := lease(t, s, outbox.Lease{EndpointID: "many", Owner: "w", MaxPatients: 3, Now: at(0), For: time.Minute})
		for _, b := range bs {
			it := b.Items[0]
			r := outbox.Result{ItemID: it.ID, Owner: "w", Outcome: outbox.Reject, Status: 422, Error: "rejected", Now: at(0)}
			if it.ResourceID == "r1" {
				r.Outcome, r.RetryAt = outbox.Retry, at(time.Hour)
			}
			finish(t, s, r)
		}
		n, err := s.ReplayDead(ctx, "many", "op-3", now)
		if err != nil || n != 2 {
			t.Fatalf("ReplayDead = %d, %v; want 2", n, err)
		}
		var states, replayed []string
		for _, it := range items(t, s, outbox.Filter{EndpointID: "many"}) {
			states = append(states, it.ResourceID+" "+string(it.State))
		}
		for _, e := range logOf(t, s, "many") {
			if e.Action == "replayed" && e.Actor == "op-3" {
				replayed = append(replayed, e.ResourceID)
			}
		}
		slices.Sort(replayed)
		if diff := cmp.Diff([]string{"d1 pending", "d2 pending", "r1 retrying"}, states); diff != "" {
			t.Errorf("states (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"d1", "d2"}, replayed); diff != "" {
			t.Errorf("replayed log lines (-want +got):\n%s", diff)
		}
		if n, err := s.ReplayDead(ctx, "many", "op-3", now); err != nil || n != 0 {
			t.Errorf("second ReplayDead = %d, %v; want 0", n, err)
		}
	})
}

func testSyncBackfill(t *testing.T, s store.Store) {
	ctx := t.Context()
	lu := at(0)
	putAll(t, s,
		fixture{typ: "Patient", id: "p1", lastUpdated: lu},
		fixture{typ: "Goal", id: "g1", lastUpdated: lu, refs: []resource.Ref{{Param: "subject", Target: "Patient/p1"}}},
		fixture{typ: "Goal", id: "gone", lastUpdated: lu, refs: []resource.Ref{{Param: "subject", Target: "Patient/p1"}}, deleted: true},
		fixture{typ: "Appointment", id: "a1", lastUpdated: lu, refs: []resource.Ref{{Param: "actor", Target: "Practitioner/x"}, {Param: "patient", Target: "Patient/p2"}}},
		fixture{typ: "Observation", id: "o1", lastUpdated: lu, refs: []resource.Ref{{Param: "subject", Target: "Group/x"}}},
		fixture{typ: "Observation", id: "o2", lastUpdated: lu, refs: []resource.Ref{{Param: "patient", Target: "Patient/p3"}, {Param: "subject", Target: "Patient/p1"}}},
		fixture{typ: "CarePlan", id: "c1", lastUpdated: lu, refs: []resource.Ref{{Param: "subject", Target: "Patient/p1"}}},
	)
	putAll(t, s, fixture{typ: "Goal", id: "g1", lastUpdated: lu, refs: []resource.Ref{{Param: "subject", Target: "Patient/p1"}}}) // version 2
	addEndpoint(t, s, "ehr")
	// g1 was sent at version 1 already.
	enqueue(t, s, at(0), work("ehr", "Goal", "g1", "p1", 1))
	bs := lease(t, s, outbox.Lease{EndpointID: "ehr", Owner: "w", MaxPatients: 1, Now: at(0), For: time.Minute})
	finish(t, s, outbox.Result{ItemID: bs[0].Items[0].ID, Owner: "w", Outcome: outbox.Sent, SentVersion: 1, EHRID: "E-g1", Now: at(0)})

	types := []string{"Patient", "Goal", "Appointment", "Observation"}
	n, err := s.Backfill(ctx, "ehr", types, at(time.Minute))
	if err != nil || n != 5 {
		t.Fatalf("Backfill = %d, %v; want 5", n, err)
	}
	type row struct {
		Key     string
		Patient string
		State   outbox.State
		Want    int64
		Sent    int64
		EHRID   string
	}
	var got []row
	all := items(t, s, outbox.Filter{EndpointID: "ehr"})
	for _, it := range all {
		got = append(got, row{it.ResourceType + "/" + it.ResourceID, it.PatientID, it.State, it.WantVersion, it.SentVersion, it.EHRID})
	}
	slices.SortFunc(got, func(a, b row) int { return strings.Compare(a.Key, b.Key) })
	want := []row{
		{"Appointment/a1", "p2", outbox.Pending, 1, 0, ""},
		{"Goal/g1", "p1", outbox.Pending, 2, 1, "E-g1"},
		{"Observation/o1", "", outbox.Pending, 1, 0, ""},
		{"Observation/o2", "p3", outbox.Pending, 1, 0, ""},
		{"Patient/p1", "p1", outbox.Pending, 1, 0, ""},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("items after backfill (-want +got):\n%s", diff)
	}
	// Later work orders after every backfilled item.
	enqueue(t, s, at(2*time.Minute), work("ehr", "CarePlan", "c1", "p1", 1))
	links, err := s.Links(ctx, "ehr", []resource.Key{{Type: "CarePlan", ID: "c1"}})
	if err != nil || len(links) != 1 {
		t.Fatalf("Links(c1) = %v, %v", links, err)
	}
	c1 := links[resource.Key{Type: "CarePlan", ID: "c1"}]
	for _, it := range all {
		if it.Seq >= c1.Seq {
			t.Errorf("backfilled %s/%s seq %d is not before the later enqueue's %d", it.ResourceType, it.ResourceID, it.Seq, c1.Seq)
		}
	}
	// Backfilling again re-enqueues the same resources; no types, nothing.
	if n, err := s.Backfill(ctx, "ehr", types, at(3*time.Minute)); err != nil || n != 5 {
		t.Errorf("second Backfill = %d, %v; want 5", n, err)
	}
	if n, err := s.Backfill(ctx, "ehr", nil, at(3*time.Minute)); err != nil || n != 0 {
		t.Errorf("Backfill(no types) = %d, %v; want 0", n, err)
	}
	if got := len(items(t, s, outbox.Filter{EndpointID: "ehr"})); got != 6 {
		t.Errorf("%d items, want 6", got)
	}
	_, err = s.Backfill(ctx, "nothing", types, at(0))
	wantKind(t, "Backfill(unknown endpoint)", err, treatment.KindNotFound)
}

func testSyncStats(t *testing.T, s store.Store) {
	ctx := t.Context()
	addEndpoint(t, s, "ehr")
	addEndpoint(t, s, "other")
	st, err := s.Stats(ctx, "ehr")
	if err != nil {
		t.Fatal(err)
	}
	zero := map[outbox.State]int{}
	for _, state := range outbox.States {
		zero[state] = 0
	}
	if diff := cmp.Diff(outbox.Stats{ByState: zero}, st); diff != "" {
		t.Errorf("Stats(empty) (-want +got):\n%s", diff)
	}

	enqueue(t, s, at(0),
		work("ehr", "Goal", "sent1", "p1", 1), work("ehr", "Goal", "sent2", "p2", 1), work("ehr", "Goal", "retry", "p3", 1),
		work("ehr", "Goal", "dead", "p4", 1), work("ehr", "Goal", "flight", "p5", 1), work("other", "Goal", "x", "p1", 1))
	bs := lease(t, s, outbox.Lease{EndpointID: "ehr", Owner: "w", MaxPatients: 10, Now: at(time.Minute), For: time.Hour})
	for _, b := range bs {
		it := b.Items[0]
		r := outbox.Result{ItemID: it.ID, Owner: "w", Now: at(2 * time.Minute)}
		switch it.ResourceID {
		case "sent1", "sent2":
			r.Outcome, r.SentVersion = outbox.Sent, 1
		case "retry":
			r.Outcome, r.RetryAt, r.Error, r.Now = outbox.Retry, at(30*time.Minute), "EHR unavailable", at(3*time.Minute)
		case "dead":
			r.Outcome, r.Error, r.Now = outbox.Reject, "EHR rejected the Goal", at(4*time.Minute)
		case "flight":
			continue
		}
		finish(t, s, r)
	}
	// One unchanged send (not counted as sent) and new pending work.
	enqueue(t, s, at(10*time.Minute), work("ehr", "Goal", "sent1", "p1", 1), work("ehr", "Goal", "new", "p6", 1))

	st, err = s.Stats(ctx, "ehr")
	if err != nil {
		t.Fatal(err)
	}
	want := outbox.Stats{
		ByState:       map[outbox.State]int{outbox.Pending: 2, outbox.InFlight: 1, outbox.Retrying: 1, outbox.Succeeded: 1, outbox.Dead: 1, outbox.Discarded: 0},
		OldestPending: at(10 * time.Minute),
		Sent:          2, Failed: 1, Dead: 1,
		LastError: "EHR rejected the Goal", LastErrorAt: at(4 * time.Minute),
	}
	if diff := cmp.Diff(want, st); diff != "" {
		t.Errorf("Stats (-want +got):\n%s", diff)
	}
	// The retrying item is older once it is due before the pending ones.
	enqueue(t, s, at(0), work("ehr", "Goal", "sent2", "p2", 2)) // succeeded -> pending at 0
	if st, err := s.Stats(ctx, "ehr"); err != nil || !st.OldestPending.Equal(at(0)) {
		t.Errorf("OldestPending = %v, %v; want %v", st.OldestPending, err, at(0))
	}
}

func testSyncItemsLinksLog(t *testing.T, s store.Store) {
	ctx := t.Context()
	addEndpoint(t, s, "ehr")
	addEndpoint(t, s, "other")
	enqueue(t, s, at(0), work("ehr", "Patient", "p1", "p1", 1), work("ehr", "Goal", "g1", "p1", 2), work("ehr", "Goal", "g2", "p2", 1),
		work("other", "Goal", "g1", "p1", 2), work("ehr", "Appointment", "a1", "p2", 1))
	all := items(t, s, outbox.Filter{})
	if len(all) != 5 {
		t.Fatalf("%d items, want 5", len(all))
	}
	var keys []string
	for i, it := range all {
		keys = append(keys, it.EndpointID+" "+it.ResourceType+"/"+it.ResourceID)
		if i > 0 && it.ID <= all[i-1].ID {
			t.Errorf("items not by id: %d after %d", it.ID, all[i-1].ID)
		}
	}
	if diff := cmp.Diff([]string{"ehr Patient/p1", "ehr Goal/g1", "ehr Goal/g2", "other Goal/g1", "ehr Appointment/a1"}, keys); diff != "" {
		t.Errorf("Items (-want +got):\n%s", diff)
	}
	// Paging.
	var paged []int64
	for after := int64(0); ; {
		page := items(t, s, outbox.Filter{EndpointID: "ehr", AfterID: after, Limit: 2})
		if len(page) == 0 {
			break
		}
		if len(page) > 2 {
			t.Fatalf("page of %d items, want at most 2", len(page))
		}
		for _, it := range page {
			paged = append(paged, it.ID)
		}
		after = page[len(page)-1].ID
	}
	if diff := cmp.Diff([]int64{all[0].ID, all[1].ID, all[2].ID, all[4].ID}, paged); diff != "" {
		t.Errorf("paged ids (-want +got):\n%s", diff)
	}
	if got := items(t, s, outbox.Filter{PatientID: "p2"}); len(got) != 2 {
		t.Errorf("Items(patient p2) = %d items, want 2", len(got))
	}
	bs := lease(t, s, outbox.Lease{EndpointID: "ehr", Owner: "w", MaxPatients: 1, Now: at(0), For: time.Minute})
	if got := items(t, s, outbox.Filter{State: outbox.InFlight}); len(got) != 2 || len(bs) != 1 {
		t.Errorf("Items(in flight) = %d items, want 2 (p1's)", len(got))
	}
	if got := items(t, s, outbox.Filter{EndpointID: "ehr", State: outbox.Pending}); len(got) != 2 {
		t.Errorf("Items(ehr, pending) = %d items, want 2", len(got))
	}
	_, err := s.Item(ctx, 999999)
	wantKind(t, "Item(unknown)", err, treatment.KindNotFound)
	if got, err := s.Item(ctx, all[1].ID); err != nil || !cmp.Equal(all[1], got, cmpopts.IgnoreFields(outbox.Item{}, "State", "LeaseOwner", "LeaseUntil", "Updated")) {
		t.Errorf("Item(%d) = %+v, %v; want %+v", all[1].ID, got, err, all[1])
	}

	// Links: the crosswalk, after g1 was sent.
	for _, b := range bs {
		for _, it := range b.Items {
			finish(t, s, outbox.Result{ItemID: it.ID, Owner: "w", Outcome: outbox.Sent, SentVersion: it.WantVersion, EHRID: "E-" + it.ResourceID, EHRVersion: "1", Status: 201, Request: "POST " + it.ResourceType, Now: at(time.Second)})
		}
	}
	links, err := s.Links(ctx, "ehr", []resource.Key{{Type: "Goal", ID: "g1"}, {Type: "Goal", ID: "missing"}, {Type: "Patient", ID: "g1"}, {Type: "Goal", ID: "g2"}})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for k, it := range links {
		got[k.Ref()] = it.EndpointID + " " + it.EHRID + " " + string(it.State)
	}
	if diff := cmp.Diff(map[string]string{"Goal/g1": "ehr E-g1 succeeded", "Goal/g2": "ehr  pending"}, got); diff != "" {
		t.Errorf("Links (-want +got):\n%s", diff)
	}
	if links, err := s.Links(ctx, "ehr", nil); err != nil || len(links) != 0 {
		t.Errorf("Links(none) = %v, %v", links, err)
	}

	// Log: newest first, by endpoint or all, paged by id.
	if err := s.Replay(ctx, all[3].ID, "op", at(time.Minute)); err != nil {
		t.Fatal(err)
	}
	evs, err := s.Log(ctx, "", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for i, e := range evs {
		lines = append(lines, e.EndpointID+" "+e.Action+" "+e.ResourceType+"/"+e.ResourceID)
		if i > 0 && e.ID >= evs[i-1].ID {
			t.Errorf("log not newest first: %d after %d", e.ID, evs[i-1].ID)
		}
	}
	if diff := cmp.Diff([]string{"other replayed Goal/g1", "ehr sent Goal/g1", "ehr sent Patient/p1"}, lines); diff != "" {
		t.Errorf("Log (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(evs[1:], logOf(t, s, "ehr")); diff != "" {
		t.Errorf("Log(ehr) (-want +got):\n%s", diff)
	}
	if got, err := s.Log(ctx, "", evs[0].ID, 1); err != nil || len(got) != 1 || got[0].ID != evs[1].ID {
		t.Errorf("Log(before %d, 1) = %+v, %v; want event %d", evs[0].ID, got, err, evs[1].ID)
	}
	pulled := outbox.Event{At: at(2 * time.Minute), EndpointID: "ehr", ResourceType: "Appointment", ResourceID: "s1", Action: "pulled",
		EHRID: "E-a", Detail: "session status booked -> cancelled", Actor: "ehr:ehr"}
	if err := s.AppendLog(ctx, pulled); err != nil {
		t.Fatal(err)
	}
	if got := logOf(t, s, "ehr"); len(got) != 3 || !cmp.Equal(pulled, got[0], ignoreEventID) || got[0].ID <= evs[0].ID {
		t.Errorf("log after AppendLog = %+v; want %+v first, with a new id", got, pulled)
	}
	want := outbox.Event{At: at(time.Second), EndpointID: "ehr", ItemID: all[1].ID, ResourceType: "Goal", ResourceID: "g1", Version: 2, Action: "sent",
		Status: 201, EHRID: "E-g1", EHRVersion: "1", Request: "POST Goal", Actor: "sync"}
	if diff := cmp.Diff(want, evs[1], ignoreEventID); diff != "" {
		t.Errorf("sent event (-want +got):\n%s", diff)
	}
}

func testSyncDeleteEndpoint(t *testing.T, s store.Store) {
	ctx := t.Context()
	addEndpoint(t, s, "ehr")
	addEndpoint(t, s, "other")
	enqueue(t, s, at(0), work("ehr", "Goal", "g1", "p1", 1), work("ehr", "Goal", "g2", "p1", 1), work("other", "Goal", "g1", "p1", 1))
	bs := lease(t, s, outbox.Lease{EndpointID: "ehr", Owner: "w", MaxPatients: 1, Now: at(0), For: time.Minute})
	finish(t, s, outbox.Result{ItemID: bs[0].Items[0].ID, Owner: "w", Outcome: outbox.Sent, SentVersion: 1, Now: at(0)})
	if err := s.DeleteEndpoint(ctx, "ehr"); err != nil {
		t.Fatal(err)
	}
	if got := items(t, s, outbox.Filter{EndpointID: "ehr"}); len(got) != 0 {
		t.Errorf("deleted endpoint kept %d items", len(got))
	}
	_, err := s.Item(ctx, bs[0].Items[0].ID)
	wantKind(t, "Item of a deleted endpoint", err, treatment.KindNotFound)
	err = s.Finish(ctx, outbox.Result{ItemID: bs[0].Items[1].ID, Owner: "w", Outcome: outbox.Sent, SentVersion: 1, Now: at(0)})
	wantKind(t, "Finish of a deleted endpoint's item", err, treatment.KindConflict)
	if got := items(t, s, outbox.Filter{EndpointID: "other"}); len(got) != 1 {
		t.Errorf("other endpoint has %d items, want 1", len(got))
	}
	if evs := logOf(t, s, "ehr"); len(evs) != 1 {
		t.Errorf("deleted endpoint's log has %d events, want 1 (the log stays)", len(evs))
	}
	// Re-created, it starts empty; work for it is kept again.
	addEndpoint(t, s, "ehr")
	if got := items(t, s, outbox.Filter{EndpointID: "ehr"}); len(got) != 0 {
		t.Errorf("re-created endpoint has %d items", len(got))
	}
	enqueue(t, s, at(0), work("ehr", "Goal", "g1", "p1", 1))
	if got := items(t, s, outbox.Filter{EndpointID: "ehr"}); len(got) != 1 {
		t.Errorf("re-created endpoint has %d items after enqueue, want 1", len(got))
	}
}
