// Package storetest is the conformance suite every store.Store implementation
// runs (in the manner of river's riverdrivertest): one set of behaviours,
// checked against SQLite and PostgreSQL alike.
//
// Resource JSON is opaque to a store, so the suite stores short marker bytes
// rather than FHIR documents.
package storetest

import (
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/store"
	"github.com/kapfhir/kapfhir/treatment"
)

// Run runs the conformance suite. open must return a new, migrated, empty
// store for each call and arrange its cleanup with t.Cleanup.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	t.Helper()
	tests := []suiteTest{
		{"Patients", testPatients},
		{"Programs", testPrograms},
		{"ResourceVersions", testResourceVersions},
		{"Deleted", testDeleted},
		{"Rollback", testRollback},
		{"Panic", testPanic},
		{"SearchFilters", testSearchFilters},
		{"SearchSort", testSearchSort},
		{"SearchPaging", testSearchPaging},
		{"SearchCount", testSearchCount},
		{"Include", testInclude},
		{"ConcurrentPutVersion", testConcurrentPutVersion},
		{"ConcurrentUpdateProgram", testConcurrentUpdateProgram},
		{"Meta", testMeta},
	}
	tests = append(tests, syncTests...)
	tests = append(tests, securityTests...)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.fn(t, open(t))
		})
	}
}

// suiteTest is one test of the suite, run on a new store.
type suiteTest struct {
	name string
	fn   func(t *testing.T, s store.Store)
}

// ts parses an RFC 3339 time.
func ts(t *testing.T, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return v.UTC()
}

// inTx runs fn in a transaction and fails the test on error.
func inTx(t *testing.T, s store.Store, fn func(tx store.Tx) error) {
	t.Helper()
	if err := s.InTx(t.Context(), fn); err != nil {
		t.Fatalf("InTx: %v", err)
	}
}

// wantKind fails unless err is a *treatment.Error of kind k.
func wantKind(t *testing.T, what string, err error, k treatment.Kind) {
	t.Helper()
	var te *treatment.Error
	if !errors.As(err, &te) || te.Kind != k {
		t.Errorf("%s: err = %v, want a %s error", what, err, k)
	}
}

func intp(v int) *int { return &v }

func testPatients(t *testing.T, s store.Store) {
	ctx := t.Context()
	created := ts(t, "2026-01-05T09:00:00Z")
	p1 := treatment.Patient{
		ID:          "pat-1",
		Identifiers: []treatment.Identifier{{System: "urn:mrn", Value: "100"}, {System: "urn:other", Value: "A"}},
		Family:      "Example", Given: []string{"Test"}, BirthDate: "1980-02-03", Gender: "unknown",
		Created: created, Updated: created,
	}
	inTx(t, s, func(tx store.Tx) error {
		if err := tx.CreatePatient(ctx, p1); err != nil {
			return err
		}
		got, err := tx.Patient(ctx, p1.ID)
		if err != nil {
			return err
		}
		if diff := cmp.Diff(p1, got); diff != "" {
			t.Errorf("Patient in tx (-want +got):\n%s", diff)
		}
		return nil
	})
	got, err := s.Patient(ctx, p1.ID)
	if err != nil {
		t.Fatalf("Patient: %v", err)
	}
	if diff := cmp.Diff(p1, got); diff != "" {
		t.Errorf("Patient (-want +got):\n%s", diff)
	}

	// The same value in another system is a different identifier.
	p2 := treatment.Patient{ID: "pat-2", Identifiers: []treatment.Identifier{{System: "urn:mrn2", Value: "100"}}, Created: created, Updated: created}
	inTx(t, s, func(tx store.Tx) error { return tx.CreatePatient(ctx, p2) })

	conflicts := []struct {
		name string
		p    treatment.Patient
	}{
		{"duplicate identifier", treatment.Patient{ID: "pat-3", Identifiers: []treatment.Identifier{{System: "urn:new", Value: "1"}, {System: "urn:mrn", Value: "100"}}}},
		{"identifier repeated in one patient", treatment.Patient{ID: "pat-4", Identifiers: []treatment.Identifier{{System: "urn:x", Value: "1"}, {System: "urn:x", Value: "1"}}}},
		{"duplicate id", treatment.Patient{ID: "pat-1", Identifiers: []treatment.Identifier{{System: "urn:mrn", Value: "999"}}}},
	}
	for _, c := range conflicts {
		err := s.InTx(ctx, func(tx store.Tx) error { return tx.CreatePatient(ctx, c.p) })
		wantKind(t, c.name, err, treatment.KindConflict)
	}
	for _, id := range []string{"pat-3", "pat-4"} {
		_, err := s.Patient(ctx, id)
		wantKind(t, "Patient after failed create", err, treatment.KindNotFound)
	}
	// The failed creates left no identifier behind.
	inTx(t, s, func(tx store.Tx) error {
		return tx.CreatePatient(ctx, treatment.Patient{ID: "pat-5", Identifiers: []treatment.Identifier{{System: "urn:new", Value: "1"}, {System: "urn:mrn", Value: "999"}}})
	})

	_, err = s.Patient(ctx, "nobody")
	wantKind(t, "Patient(nobody)", err, treatment.KindNotFound)
	err = s.InTx(ctx, func(tx store.Tx) error {
		_, err := tx.Patient(ctx, "nobody")
		return err
	})
	wantKind(t, "tx.Patient(nobody)", err, treatment.KindNotFound)
}

func program(id, patientID string, created time.Time, sessions ...string) treatment.Program {
	p := treatment.Program{
		ID: id, PatientID: patientID, ProtocolID: "ketamine-iv-6x-3wk", Route: "iv", Doses: 6,
		Timezone: "America/New_York", Start: created, Status: treatment.ProgramActive,
		Plans:   []treatment.Plan{{ID: id + "-plan", ProtocolID: "ketamine-iv-6x-3wk", Kind: "induction", Status: treatment.PlanActive, Created: created}},
		Outcome: treatment.Outcome{Baseline: intp(18)},
		Version: 1, Created: created, Updated: created,
	}
	for i, s := range sessions {
		p.Sessions = append(p.Sessions, treatment.Session{
			ID: s, PlanID: id + "-plan", Kind: treatment.SessionDosing, Status: treatment.StatusBooked, Dose: i + 1,
			Start: created.Add(time.Duration(i+1) * 48 * time.Hour), End: created.Add(time.Duration(i+1)*48*time.Hour + time.Hour),
		})
	}
	return p
}

func testPrograms(t *testing.T, s store.Store) {
	ctx := t.Context()
	t0 := ts(t, "2026-02-01T10:00:00Z")
	pat := treatment.Patient{ID: "pat-1", Created: t0, Updated: t0}
	other := treatment.Patient{ID: "pat-2", Created: t0, Updated: t0}
	// Created out of id order: ProgramsByPatient is oldest first.
	late := program("prog-a", pat.ID, t0.Add(24*time.Hour), "a-s1")
	early := program("prog-b", pat.ID, t0, "b-s1", "b-s2")
	theirs := program("prog-c", other.ID, t0, "c-s1")
	inTx(t, s, func(tx store.Tx) error {
		for _, p := range []treatment.Patient{pat, other} {
			if err := tx.CreatePatient(ctx, p); err != nil {
				return err
			}
		}
		for _, p := range []treatment.Program{late, early, theirs} {
			if err := tx.CreateProgram(ctx, p); err != nil {
				return err
			}
		}
		got, err := tx.ProgramBySession(ctx, "b-s2")
		if err != nil {
			return err
		}
		if diff := cmp.Diff(early, got); diff != "" {
			t.Errorf("ProgramBySession in tx (-want +got):\n%s", diff)
		}
		return nil
	})

	got, err := s.Program(ctx, early.ID)
	if err != nil {
		t.Fatalf("Program: %v", err)
	}
	if diff := cmp.Diff(early, got); diff != "" {
		t.Errorf("Program (-want +got):\n%s", diff)
	}
	got, err = s.ProgramBySession(ctx, "b-s1")
	if err != nil {
		t.Fatalf("ProgramBySession: %v", err)
	}
	if diff := cmp.Diff(early, got); diff != "" {
		t.Errorf("ProgramBySession (-want +got):\n%s", diff)
	}
	list, err := s.ProgramsByPatient(ctx, pat.ID)
	if err != nil {
		t.Fatalf("ProgramsByPatient: %v", err)
	}
	if diff := cmp.Diff([]treatment.Program{early, late}, list); diff != "" {
		t.Errorf("ProgramsByPatient (-want +got):\n%s", diff)
	}
	list, err = s.ProgramsByPatient(ctx, "nobody")
	if err != nil || len(list) != 0 {
		t.Errorf("ProgramsByPatient(nobody) = %d programmes, %v; want none, nil", len(list), err)
	}

	// Update: version 1 -> 2, sessions rewritten (b-s1 dropped, b-s3 added).
	v2 := program("prog-b", pat.ID, t0, "b-s2", "b-s3")
	v2.Version = 2
	v2.Status = treatment.ProgramCompleted
	inTx(t, s, func(tx store.Tx) error { return tx.UpdateProgram(ctx, v2) })
	got, err = s.ProgramBySession(ctx, "b-s3")
	if err != nil {
		t.Fatalf("ProgramBySession(new session): %v", err)
	}
	if diff := cmp.Diff(v2, got); diff != "" {
		t.Errorf("after update (-want +got):\n%s", diff)
	}
	_, err = s.ProgramBySession(ctx, "b-s1")
	wantKind(t, "ProgramBySession(dropped session)", err, treatment.KindNotFound)

	stale := v2 // another writer also loaded version 1 and made version 2
	stale.Status = treatment.ProgramRevoked
	err = s.InTx(ctx, func(tx store.Tx) error { return tx.UpdateProgram(ctx, stale) })
	wantKind(t, "UpdateProgram(stale)", err, treatment.KindConflict)
	skip := v2
	skip.Version = 4
	err = s.InTx(ctx, func(tx store.Tx) error { return tx.UpdateProgram(ctx, skip) })
	wantKind(t, "UpdateProgram(version skipped)", err, treatment.KindConflict)
	got, err = s.Program(ctx, v2.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(v2, got); diff != "" {
		t.Errorf("after rejected updates (-want +got):\n%s", diff)
	}

	unknown := program("prog-x", pat.ID, t0)
	unknown.Version = 2
	err = s.InTx(ctx, func(tx store.Tx) error { return tx.UpdateProgram(ctx, unknown) })
	wantKind(t, "UpdateProgram(unknown)", err, treatment.KindNotFound)
	err = s.InTx(ctx, func(tx store.Tx) error { return tx.CreateProgram(ctx, program("prog-a", pat.ID, t0)) })
	wantKind(t, "CreateProgram(duplicate)", err, treatment.KindConflict)
	err = s.InTx(ctx, func(tx store.Tx) error { return tx.CreateProgram(ctx, program("prog-y", pat.ID, t0, "a-s1")) })
	wantKind(t, "CreateProgram(session of another programme)", err, treatment.KindConflict)
	_, err = s.Program(ctx, "prog-y")
	wantKind(t, "Program after failed create", err, treatment.KindNotFound)
	err = s.InTx(ctx, func(tx store.Tx) error { return tx.CreateProgram(ctx, program("prog-z", "nobody", t0)) })
	wantKind(t, "CreateProgram(unknown patient)", err, treatment.KindNotFound)

	_, err = s.Program(ctx, "nothing")
	wantKind(t, "Program(nothing)", err, treatment.KindNotFound)
	_, err = s.ProgramBySession(ctx, "nothing")
	wantKind(t, "ProgramBySession(nothing)", err, treatment.KindNotFound)
}

// fixture is one resource for the resource tests; JSON is a marker naming it.
type fixture struct {
	typ, id     string
	lastUpdated time.Time
	sortDate    time.Time
	tokens      []resource.Token
	refs        []resource.Ref
	dates       []resource.Date
	deleted     bool
}

func (f fixture) write(v int64) resource.Write {
	return resource.Write{
		Version: resource.Version{
			Type: f.typ, ID: f.id, VersionID: v, LastUpdated: f.lastUpdated, Deleted: f.deleted,
			JSON: fmt.Appendf(nil, "%s/%s/_history/%d", f.typ, f.id, v),
		},
		Hash:  fmt.Appendf(nil, "hash %s/%s %d", f.typ, f.id, v),
		Index: resource.Index{Tokens: f.tokens, Refs: f.refs, Dates: f.dates, SortDate: f.sortDate},
	}
}

// putAll stores each fixture as the next version of its resource, in one transaction.
func putAll(t *testing.T, s store.Store, fs ...fixture) {
	t.Helper()
	ctx := t.Context()
	inTx(t, s, func(tx store.Tx) error {
		for _, f := range fs {
			cur, _, err := tx.CurrentVersion(ctx, f.typ, f.id)
			if err != nil {
				return err
			}
			if err := tx.PutVersion(ctx, f.write(cur+1)); err != nil {
				return err
			}
		}
		return nil
	})
}

func testResourceVersions(t *testing.T, s store.Store) {
	ctx := t.Context()
	f := fixture{typ: "Patient", id: "p1", lastUpdated: ts(t, "2026-03-01T10:00:00.123Z")}
	w1 := f.write(1)
	f.lastUpdated = ts(t, "2026-03-02T10:00:00.456Z")
	w2 := f.write(2)

	inTx(t, s, func(tx store.Tx) error {
		v, h, err := tx.CurrentVersion(ctx, "Patient", "p1")
		if err != nil || v != 0 || h != nil {
			t.Errorf("CurrentVersion(new) = %d, %q, %v; want 0, nil, nil", v, h, err)
		}
		if err := tx.PutVersion(ctx, w1); err != nil {
			return err
		}
		v, h, err = tx.CurrentVersion(ctx, "Patient", "p1")
		if err != nil || v != 1 || string(h) != string(w1.Hash) {
			t.Errorf("CurrentVersion in tx = %d, %q, %v; want 1, %q, nil", v, h, err, w1.Hash)
		}
		return nil
	})
	inTx(t, s, func(tx store.Tx) error { return tx.PutVersion(ctx, w2) })

	got, err := s.Read(ctx, "Patient", "p1")
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if diff := cmp.Diff(w2.Version, got); diff != "" {
		t.Errorf("Read (-want +got):\n%s", diff)
	}
	got, err = s.VRead(ctx, "Patient", "p1", 1)
	if err != nil {
		t.Fatalf("VRead: %v", err)
	}
	if diff := cmp.Diff(w1.Version, got); diff != "" {
		t.Errorf("VRead(1) (-want +got):\n%s", diff)
	}
	hist, err := s.History(ctx, "Patient", "p1")
	if err != nil {
		t.Fatalf("History: %v", err)
	}
	if diff := cmp.Diff([]resource.Version{w2.Version, w1.Version}, hist); diff != "" {
		t.Errorf("History (-want +got):\n%s", diff)
	}

	// Unchanged content: the caller compares the hash and writes nothing.
	inTx(t, s, func(tx store.Tx) error {
		v, h, err := tx.CurrentVersion(ctx, "Patient", "p1")
		if err != nil || v != 2 || string(h) != string(w2.Hash) {
			t.Errorf("CurrentVersion = %d, %q, %v; want 2, %q, nil", v, h, err, w2.Hash)
		}
		return nil
	})
	if hist, _ := s.History(ctx, "Patient", "p1"); len(hist) != 2 {
		t.Errorf("History after an unchanged write has %d versions, want 2", len(hist))
	}

	wrong := []struct {
		name string
		w    resource.Write
	}{
		{"repeat current version", f.write(2)},
		{"skip a version", f.write(4)},
		{"rewrite version 1", f.write(1)},
		{"version 2 of a new resource", fixture{typ: "Patient", id: "p2"}.write(2)},
		{"version 0", fixture{typ: "Patient", id: "p3"}.write(0)},
	}
	for _, c := range wrong {
		err := s.InTx(ctx, func(tx store.Tx) error { return tx.PutVersion(ctx, c.w) })
		wantKind(t, c.name, err, treatment.KindConflict)
	}
	if got, err := s.Read(ctx, "Patient", "p1"); err != nil || got.VersionID != 2 {
		t.Errorf("Read after rejected writes = version %d, %v; want 2", got.VersionID, err)
	}

	// Types are separate namespaces.
	_, err = s.Read(ctx, "Goal", "p1")
	wantKind(t, "Read(other type)", err, treatment.KindNotFound)
	_, err = s.Read(ctx, "Patient", "p2")
	wantKind(t, "Read(absent)", err, treatment.KindNotFound)
	_, err = s.VRead(ctx, "Patient", "p1", 3)
	wantKind(t, "VRead(absent version)", err, treatment.KindNotFound)
	_, err = s.VRead(ctx, "Patient", "p2", 1)
	wantKind(t, "VRead(absent resource)", err, treatment.KindNotFound)
	_, err = s.History(ctx, "Patient", "p2")
	wantKind(t, "History(absent)", err, treatment.KindNotFound)
}

func testDeleted(t *testing.T, s store.Store) {
	ctx := t.Context()
	tok := []resource.Token{{Param: "status", System: "urn:s", Code: "booked"}}
	f := fixture{typ: "Appointment", id: "a1", lastUpdated: ts(t, "2026-03-01T10:00:00Z"), tokens: tok}
	putAll(t, s, f)
	f.deleted, f.tokens, f.lastUpdated = true, nil, ts(t, "2026-03-02T10:00:00Z")
	putAll(t, s, f)

	_, err := s.Read(ctx, "Appointment", "a1")
	wantKind(t, "Read(deleted)", err, treatment.KindNotFound)
	got, err := s.VRead(ctx, "Appointment", "a1", 2)
	if err != nil || !got.Deleted {
		t.Errorf("VRead(deletion) = deleted %v, %v; want true, nil", got.Deleted, err)
	}
	hist, err := s.History(ctx, "Appointment", "a1")
	if err != nil || len(hist) != 2 || !hist[0].Deleted || hist[1].Deleted {
		t.Errorf("History(deleted) = %d versions, %v; want the deletion then version 1", len(hist), err)
	}
	page, err := s.Search(ctx, resource.Query{Type: "Appointment", Count: 10})
	if err != nil || page.Total != 0 || len(page.Versions) != 0 {
		t.Errorf("Search after delete = %d total, %d versions, %v; want none", page.Total, len(page.Versions), err)
	}
	// A deleted resource can come back as the next version.
	f.deleted, f.tokens = false, tok
	putAll(t, s, f)
	if got, err := s.Read(ctx, "Appointment", "a1"); err != nil || got.VersionID != 3 {
		t.Errorf("Read(recreated) = version %d, %v; want 3", got.VersionID, err)
	}
}

func testRollback(t *testing.T, s store.Store) {
	ctx := t.Context()
	boom := errors.New("boom")
	w := fixture{typ: "Patient", id: "p1", lastUpdated: ts(t, "2026-03-01T10:00:00Z"),
		tokens: []resource.Token{{Param: "identifier", System: "urn:mrn", Code: "1"}}}.write(1)
	err := s.InTx(ctx, func(tx store.Tx) error {
		if err := tx.CreatePatient(ctx, treatment.Patient{ID: "p1", Identifiers: []treatment.Identifier{{System: "urn:mrn", Value: "1"}}}); err != nil {
			return err
		}
		if err := tx.PutVersion(ctx, w); err != nil {
			return err
		}
		if err := tx.SetMeta(ctx, "k", "v"); err != nil {
			return err
		}
		return fmt.Errorf("later step: %w", boom)
	})
	if !errors.Is(err, boom) {
		t.Fatalf("InTx = %v, want fn's error", err)
	}
	_, err = s.Patient(ctx, "p1")
	wantKind(t, "Patient after rollback", err, treatment.KindNotFound)
	_, err = s.Read(ctx, "Patient", "p1")
	wantKind(t, "Read after rollback", err, treatment.KindNotFound)
	page, err := s.Search(ctx, resource.Query{Type: "Patient", Count: 10})
	if err != nil || page.Total != 0 {
		t.Errorf("Search after rollback = %d, %v; want 0 matches", page.Total, err)
	}
	// Nothing was left behind: the same writes succeed now.
	inTx(t, s, func(tx store.Tx) error {
		if v, _, err := tx.CurrentVersion(ctx, "Patient", "p1"); err != nil || v != 0 {
			t.Errorf("CurrentVersion after rollback = %d, %v; want 0", v, err)
		}
		if v, err := tx.Meta(ctx, "k"); err != nil || v != "" {
			t.Errorf("Meta after rollback = %q, %v; want empty", v, err)
		}
		if err := tx.CreatePatient(ctx, treatment.Patient{ID: "p1", Identifiers: []treatment.Identifier{{System: "urn:mrn", Value: "1"}}}); err != nil {
			return err
		}
		return tx.PutVersion(ctx, w)
	})
}

func testPanic(t *testing.T, s store.Store) {
	ctx := t.Context()
	err := s.InTx(ctx, func(tx store.Tx) error {
		if err := tx.CreatePatient(ctx, treatment.Patient{ID: "p1"}); err != nil {
			return err
		}
		panic("bug")
	})
	wantKind(t, "InTx(panic)", err, treatment.KindInternal)
	_, err = s.Patient(ctx, "p1")
	wantKind(t, "Patient after panic", err, treatment.KindNotFound)
	// The store is still usable.
	inTx(t, s, func(tx store.Tx) error { return tx.CreatePatient(ctx, treatment.Patient{ID: "p1"}) })
}

func testMeta(t *testing.T, s store.Store) {
	ctx := t.Context()
	inTx(t, s, func(tx store.Tx) error {
		v, err := tx.Meta(ctx, "installation")
		if err != nil || v != "" {
			t.Errorf("Meta(unset) = %q, %v; want empty", v, err)
		}
		return tx.SetMeta(ctx, "installation", "abc")
	})
	inTx(t, s, func(tx store.Tx) error {
		if v, err := tx.Meta(ctx, "installation"); err != nil || v != "abc" {
			t.Errorf("Meta = %q, %v; want abc", v, err)
		}
		if err := tx.SetMeta(ctx, "installation", "def"); err != nil {
			return err
		}
		return tx.SetMeta(ctx, "other", "x")
	})
	inTx(t, s, func(tx store.Tx) error {
		for k, want := range map[string]string{"installation": "def", "other": "x"} {
			if v, err := tx.Meta(ctx, k); err != nil || v != want {
				t.Errorf("Meta(%s) = %q, %v; want %q", k, v, err, want)
			}
		}
		return nil
	})
}

// ids returns the ids of vs, in order.
func ids(vs []resource.Version) []string {
	out := make([]string, 0, len(vs))
	for _, v := range vs {
		out = append(out, v.ID)
	}
	return out
}

// search runs q and returns the ids of the whole first page.
func search(t *testing.T, s store.Store, q resource.Query) ([]string, int) {
	t.Helper()
	page, err := s.Search(t.Context(), q)
	if err != nil {
		t.Fatalf("Search(%+v): %v", q, err)
	}
	return ids(page.Versions), page.Total
}

const statusSys = "http://hl7.org/fhir/appointmentstatus"

// searchFixtures are six appointments, a deleted one and, to show that types
// do not mix, a Goal indexed like a1.
func searchFixtures(t *testing.T) []fixture {
	day := func(d string) time.Time { return ts(t, "2026-"+d+"Z") }
	status := func(code string) resource.Token {
		return resource.Token{Param: "status", System: statusSys, Code: code}
	}
	ident := func(sys, code string) resource.Token {
		return resource.Token{Param: "identifier", System: sys, Code: code}
	}
	patient := func(id string) resource.Ref { return resource.Ref{Param: "patient", Target: "Patient/" + id} }
	date := func(lo, hi string) resource.Date { return resource.Date{Param: "date", Lo: day(lo), Hi: day(hi)} }
	return []fixture{
		{typ: "Appointment", id: "a1", lastUpdated: day("01-01T00:00:00"), sortDate: day("03-01T10:00:00"),
			tokens: []resource.Token{status("booked"), ident("urn:a", "1")}, refs: []resource.Ref{patient("p1")},
			dates: []resource.Date{date("03-01T10:00:00", "03-01T11:00:00")}},
		{typ: "Appointment", id: "a2", lastUpdated: day("01-02T00:00:00"), sortDate: day("03-02T10:00:00"),
			tokens: []resource.Token{status("booked"), ident("urn:b", "1")}, refs: []resource.Ref{patient("p1"), {Param: "supporting-info", Target: "CarePlan/cp1"}},
			dates: []resource.Date{date("03-02T10:00:00", "03-02T11:00:00")}},
		{typ: "Appointment", id: "a3", lastUpdated: day("01-03T12:00:00"), sortDate: day("03-02T23:30:00"),
			tokens: []resource.Token{status("cancelled"), ident("", "1")}, refs: []resource.Ref{patient("p2")},
			dates: []resource.Date{date("03-02T23:30:00", "03-03T00:30:00")}},
		{typ: "Appointment", id: "a4", lastUpdated: day("01-04T00:00:00"), sortDate: day("03-03T09:00:00"),
			tokens: []resource.Token{status("proposed"), ident("", "2")}, refs: []resource.Ref{patient("p2"), {Param: "supporting-info", Target: "CarePlan/cp1"}},
			dates: []resource.Date{date("03-03T00:00:00", "03-03T01:00:00")}}, // starts exactly at a day boundary
		// A booster window: one long range. Its sort date ties with a2.
		{typ: "Appointment", id: "a5", lastUpdated: day("01-05T00:00:00"), sortDate: day("03-02T10:00:00"),
			tokens: []resource.Token{status("proposed")}, refs: []resource.Ref{patient("p3")},
			dates: []resource.Date{date("02-01T00:00:00", "04-01T00:00:00")}},
		// No date at all: sorts first by date ascending.
		{typ: "Appointment", id: "a6", lastUpdated: day("01-06T00:00:00"),
			tokens: []resource.Token{{Param: "service-type", System: "urn:svc", Code: "booked"}}},
		{typ: "Appointment", id: "a7", lastUpdated: day("01-07T00:00:00"), deleted: true},
		{typ: "Goal", id: "a1", lastUpdated: day("01-01T00:00:00"), sortDate: day("03-01T10:00:00"),
			tokens: []resource.Token{status("booked")}, refs: []resource.Ref{patient("p1")},
			dates: []resource.Date{date("03-01T10:00:00", "03-01T11:00:00")}},
	}
}

func testSearchFilters(t *testing.T, s store.Store) {
	putAll(t, s, searchFixtures(t)...)
	day := func(d string) (time.Time, time.Time) {
		lo := ts(t, d+"T00:00:00Z")
		return lo, lo.AddDate(0, 0, 1)
	}
	dateF := func(param string, p resource.Prefix, lo, hi time.Time) resource.DateFilter {
		return resource.DateFilter{Param: param, Prefix: p, Lo: lo, Hi: hi}
	}
	d0302lo, d0302hi := day("2026-03-02")
	marLo, marHi := ts(t, "2026-03-01T00:00:00Z"), ts(t, "2026-04-01T00:00:00Z")
	yLo, yHi := ts(t, "2026-01-01T00:00:00Z"), ts(t, "2027-01-01T00:00:00Z")
	lu0103lo, lu0103hi := day("2026-01-03")
	instant := ts(t, "2026-01-02T00:00:00Z")
	statusTok := func(vs ...resource.TokenValue) []resource.TokenFilter {
		return []resource.TokenFilter{{Param: "status", Values: vs}}
	}
	identTok := func(vs ...resource.TokenValue) []resource.TokenFilter {
		return []resource.TokenFilter{{Param: "identifier", Values: vs}}
	}
	all := []string{"a1", "a2", "a3", "a4", "a5", "a6"}

	tests := []struct {
		name string
		q    resource.Query
		want []string
	}{
		{"no filter skips deleted", resource.Query{}, all},
		{"_id", resource.Query{IDs: []string{"a4", "a2", "a7", "zz"}}, []string{"a2", "a4"}},
		{"system|code", resource.Query{Tokens: statusTok(resource.TokenValue{System: statusSys, Code: "booked"})}, []string{"a1", "a2"}},
		{"system|code wrong system", resource.Query{Tokens: statusTok(resource.TokenValue{System: "urn:other", Code: "booked"})}, nil},
		{"code in any system", resource.Query{Tokens: identTok(resource.TokenValue{AnySystem: true, Code: "1"})}, []string{"a1", "a2", "a3"}},
		{"|code without system", resource.Query{Tokens: identTok(resource.TokenValue{Code: "1"})}, []string{"a3"}},
		{"system| any code", resource.Query{Tokens: identTok(resource.TokenValue{System: "urn:b"})}, []string{"a2"}},
		{"token is per parameter", resource.Query{Tokens: []resource.TokenFilter{{Param: "service-type", Values: []resource.TokenValue{{AnySystem: true, Code: "booked"}}}}}, []string{"a6"}},
		{"token OR", resource.Query{Tokens: statusTok(resource.TokenValue{System: statusSys, Code: "cancelled"}, resource.TokenValue{AnySystem: true, Code: "proposed"})}, []string{"a3", "a4", "a5"}},
		{"token AND", resource.Query{Tokens: []resource.TokenFilter{
			{Param: "status", Values: []resource.TokenValue{{AnySystem: true, Code: "booked"}}},
			{Param: "identifier", Values: []resource.TokenValue{{System: "urn:a", Code: "1"}}},
		}}, []string{"a1"}},
		{"_id AND token", resource.Query{IDs: []string{"a1", "a3"}, Tokens: statusTok(resource.TokenValue{AnySystem: true, Code: "booked"})}, []string{"a1"}},
		{"ref", resource.Query{Refs: []resource.RefFilter{{Param: "patient", Targets: []string{"Patient/p1"}}}}, []string{"a1", "a2"}},
		{"ref OR", resource.Query{Refs: []resource.RefFilter{{Param: "patient", Targets: []string{"Patient/p2", "Patient/p3"}}}}, []string{"a3", "a4", "a5"}},
		{"ref AND", resource.Query{Refs: []resource.RefFilter{
			{Param: "patient", Targets: []string{"Patient/p2"}},
			{Param: "supporting-info", Targets: []string{"CarePlan/cp1"}},
		}}, []string{"a4"}},
		{"ref is per parameter", resource.Query{Refs: []resource.RefFilter{{Param: "supporting-info", Targets: []string{"Patient/p1"}}}}, nil},
		{"ref AND token", resource.Query{
			Refs:   []resource.RefFilter{{Param: "patient", Targets: []string{"Patient/p1", "Patient/p2"}}},
			Tokens: statusTok(resource.TokenValue{AnySystem: true, Code: "booked"}, resource.TokenValue{AnySystem: true, Code: "cancelled"}),
		}, []string{"a1", "a2", "a3"}},
		{"date eq day", resource.Query{Dates: []resource.DateFilter{dateF("date", resource.EQ, d0302lo, d0302hi)}}, []string{"a2"}},
		{"date ne day", resource.Query{Dates: []resource.DateFilter{dateF("date", resource.NE, d0302lo, d0302hi)}}, []string{"a1", "a3", "a4", "a5"}},
		{"date lt day", resource.Query{Dates: []resource.DateFilter{dateF("date", resource.LT, d0302lo, d0302hi)}}, []string{"a1", "a5"}},
		{"date le day", resource.Query{Dates: []resource.DateFilter{dateF("date", resource.LE, d0302lo, d0302hi)}}, []string{"a1", "a2", "a3", "a5"}},
		{"date gt day", resource.Query{Dates: []resource.DateFilter{dateF("date", resource.GT, d0302lo, d0302hi)}}, []string{"a3", "a4", "a5"}},
		{"date ge day", resource.Query{Dates: []resource.DateFilter{dateF("date", resource.GE, d0302lo, d0302hi)}}, []string{"a2", "a3", "a4", "a5"}},
		{"date eq month", resource.Query{Dates: []resource.DateFilter{dateF("date", resource.EQ, marLo, marHi)}}, []string{"a1", "a2", "a3", "a4"}},
		{"date eq year", resource.Query{Dates: []resource.DateFilter{dateF("date", resource.EQ, yLo, yHi)}}, []string{"a1", "a2", "a3", "a4", "a5"}},
		{"date range ge AND le", resource.Query{Dates: []resource.DateFilter{
			dateF("date", resource.GE, d0302lo, d0302hi), dateF("date", resource.LE, d0302lo, d0302hi),
		}}, []string{"a2", "a3", "a5"}},
		{"date AND ref", resource.Query{
			Dates: []resource.DateFilter{dateF("date", resource.GE, d0302lo, d0302hi)},
			Refs:  []resource.RefFilter{{Param: "patient", Targets: []string{"Patient/p2"}}},
		}, []string{"a3", "a4"}},
		{"_lastUpdated eq day", resource.Query{Dates: []resource.DateFilter{dateF("_lastUpdated", resource.EQ, lu0103lo, lu0103hi)}}, []string{"a3"}},
		{"_lastUpdated ne day", resource.Query{Dates: []resource.DateFilter{dateF("_lastUpdated", resource.NE, lu0103lo, lu0103hi)}}, []string{"a1", "a2", "a4", "a5", "a6"}},
		{"_lastUpdated lt day", resource.Query{Dates: []resource.DateFilter{dateF("_lastUpdated", resource.LT, lu0103lo, lu0103hi)}}, []string{"a1", "a2"}},
		{"_lastUpdated le day", resource.Query{Dates: []resource.DateFilter{dateF("_lastUpdated", resource.LE, lu0103lo, lu0103hi)}}, []string{"a1", "a2", "a3"}},
		{"_lastUpdated gt day", resource.Query{Dates: []resource.DateFilter{dateF("_lastUpdated", resource.GT, lu0103lo, lu0103hi)}}, []string{"a4", "a5", "a6"}},
		{"_lastUpdated ge day", resource.Query{Dates: []resource.DateFilter{dateF("_lastUpdated", resource.GE, lu0103lo, lu0103hi)}}, []string{"a3", "a4", "a5", "a6"}},
		{"_lastUpdated eq instant", resource.Query{Dates: []resource.DateFilter{dateF("_lastUpdated", resource.EQ, instant, instant.Add(time.Microsecond))}}, []string{"a2"}},
		{"_lastUpdated gt instant", resource.Query{Dates: []resource.DateFilter{dateF("_lastUpdated", resource.GT, instant, instant.Add(time.Microsecond))}}, []string{"a3", "a4", "a5", "a6"}},
		{"_lastUpdated AND date", resource.Query{Dates: []resource.DateFilter{
			dateF("_lastUpdated", resource.GE, lu0103lo, lu0103hi), dateF("date", resource.LT, d0302lo, d0302hi),
		}}, []string{"a5"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := tt.q
			q.Type, q.Count = "Appointment", 100
			got, total := search(t, s, q)
			if diff := cmp.Diff(tt.want, got, cmp.Transformer("empty", func(s []string) []string {
				if len(s) == 0 {
					return nil
				}
				return s
			})); diff != "" {
				t.Errorf("ids (-want +got):\n%s", diff)
			}
			if total != len(tt.want) {
				t.Errorf("Total = %d, want %d", total, len(tt.want))
			}
		})
	}

	// The page holds the current versions, as stored.
	page, err := s.Search(t.Context(), resource.Query{Type: "Appointment", IDs: []string{"a2"}, Count: 10})
	if err != nil {
		t.Fatal(err)
	}
	want := searchFixtures(t)[1].write(1).Version
	if diff := cmp.Diff(resource.Page{Versions: []resource.Version{want}, Total: 1}, page); diff != "" {
		t.Errorf("page (-want +got):\n%s", diff)
	}
}

func testSearchSort(t *testing.T, s store.Store) {
	putAll(t, s, searchFixtures(t)...)
	tests := []struct {
		sort resource.SortField
		desc bool
		want []string
	}{
		{"", false, []string{"a1", "a2", "a3", "a4", "a5", "a6"}},
		{resource.SortID, false, []string{"a1", "a2", "a3", "a4", "a5", "a6"}},
		{resource.SortID, true, []string{"a6", "a5", "a4", "a3", "a2", "a1"}},
		// a2 and a5 share a sort date; a6 has none.
		{resource.SortDate, false, []string{"a6", "a1", "a2", "a5", "a3", "a4"}},
		{resource.SortDate, true, []string{"a4", "a3", "a5", "a2", "a1", "a6"}},
		{resource.SortLastUpdated, false, []string{"a1", "a2", "a3", "a4", "a5", "a6"}},
		{resource.SortLastUpdated, true, []string{"a6", "a5", "a4", "a3", "a2", "a1"}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s desc=%v", tt.sort, tt.desc), func(t *testing.T) {
			got, _ := search(t, s, resource.Query{Type: "Appointment", Sort: tt.sort, Desc: tt.desc, Count: 100})
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("order (-want +got):\n%s", diff)
			}
		})
	}
	_, err := s.Search(t.Context(), resource.Query{Type: "Appointment", Sort: "status", Count: 10})
	wantKind(t, "Search(unknown sort)", err, treatment.KindInvalid)
}

// pages walks every page of q and returns the ids of each page, checking the
// total on each.
func pages(t *testing.T, s store.Store, q resource.Query, total int) [][]string {
	t.Helper()
	var out [][]string
	for range 20 {
		page, err := s.Search(t.Context(), q)
		if err != nil {
			t.Fatalf("Search: %v", err)
		}
		if page.Total != total {
			t.Errorf("page %d: Total = %d, want %d", len(out)+1, page.Total, total)
		}
		out = append(out, ids(page.Versions))
		if page.Next == nil {
			return out
		}
		q.After = page.Next
	}
	t.Fatalf("paging did not end: %v", out)
	return nil
}

func testSearchPaging(t *testing.T, s store.Store) {
	t1, t2, t3 := ts(t, "2026-05-01T08:00:00Z"), ts(t, "2026-05-02T08:00:00Z"), ts(t, "2026-05-03T08:00:00Z")
	tok := []resource.Token{{Param: "code", System: "urn:c", Code: "phq9"}}
	obs := func(id string, at time.Time) fixture {
		return fixture{typ: "Observation", id: id, lastUpdated: at, sortDate: at, tokens: tok}
	}
	// Inserted out of order; four share t2 and two share t3.
	putAll(t, s, obs("o5", t2), obs("o1", t1), obs("o7", t3), obs("o3", t2), obs("o2", t2), obs("o6", t3), obs("o4", t2),
		fixture{typ: "Observation", id: "x1", lastUpdated: t2, sortDate: t2}) // filtered out below

	tests := []struct {
		sort resource.SortField
		desc bool
		want [][]string
	}{
		{resource.SortID, false, [][]string{{"o1", "o2", "o3"}, {"o4", "o5", "o6"}, {"o7"}}},
		{resource.SortID, true, [][]string{{"o7", "o6", "o5"}, {"o4", "o3", "o2"}, {"o1"}}},
		{resource.SortDate, false, [][]string{{"o1", "o2", "o3"}, {"o4", "o5", "o6"}, {"o7"}}},
		{resource.SortDate, true, [][]string{{"o7", "o6", "o5"}, {"o4", "o3", "o2"}, {"o1"}}},
		{resource.SortLastUpdated, false, [][]string{{"o1", "o2", "o3"}, {"o4", "o5", "o6"}, {"o7"}}},
		{resource.SortLastUpdated, true, [][]string{{"o7", "o6", "o5"}, {"o4", "o3", "o2"}, {"o1"}}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s desc=%v", tt.sort, tt.desc), func(t *testing.T) {
			q := resource.Query{Type: "Observation", Sort: tt.sort, Desc: tt.desc, Count: 3,
				Tokens: []resource.TokenFilter{{Param: "code", Values: []resource.TokenValue{{AnySystem: true, Code: "phq9"}}}}}
			if diff := cmp.Diff(tt.want, pages(t, s, q, 7)); diff != "" {
				t.Errorf("pages (-want +got):\n%s", diff)
			}
		})
	}

	// The cursor is the sort value and id of the page's last entry.
	page, err := s.Search(t.Context(), resource.Query{Type: "Observation", Sort: resource.SortDate, Count: 3})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&resource.Cursor{Time: t2, ID: "o3"}, page.Next); diff != "" {
		t.Errorf("Next (-want +got):\n%s", diff)
	}
	page, err = s.Search(t.Context(), resource.Query{Type: "Observation", Count: 2, After: &resource.Cursor{ID: "o4"}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&resource.Cursor{ID: "o6"}, page.Next); diff != "" {
		t.Errorf("Next by _id (-want +got):\n%s", diff)
	}
	// A page that ends exactly at the last match has no Next.
	page, err = s.Search(t.Context(), resource.Query{Type: "Observation", Count: 8})
	if err != nil || len(page.Versions) != 8 || page.Next != nil || page.Total != 8 {
		t.Errorf("exact page = %d versions, next %v, total %d, %v; want 8, nil, 8", len(page.Versions), page.Next, page.Total, err)
	}
}

func testSearchCount(t *testing.T, s store.Store) {
	putAll(t, s, searchFixtures(t)...)
	page, err := s.Search(t.Context(), resource.Query{Type: "Appointment", Count: 0,
		Tokens: []resource.TokenFilter{{Param: "status", Values: []resource.TokenValue{{AnySystem: true, Code: "proposed"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(resource.Page{Total: 2}, page); diff != "" {
		t.Errorf("Count 0 (-want +got):\n%s", diff)
	}
	page, err = s.Search(t.Context(), resource.Query{Type: "Appointment", Count: 2})
	if err != nil || page.Total != 6 || len(page.Versions) != 2 || page.Next == nil {
		t.Errorf("Count 2 = total %d, %d versions, next %v, %v; want 6, 2, set", page.Total, len(page.Versions), page.Next, err)
	}
	page, err = s.Search(t.Context(), resource.Query{Type: "PlanDefinition", Count: 10})
	if err != nil || page.Total != 0 || len(page.Versions) != 0 || page.Next != nil {
		t.Errorf("empty type = %+v, %v; want nothing", page, err)
	}
}

func testInclude(t *testing.T, s store.Store) {
	ctx := t.Context()
	lu := ts(t, "2026-03-01T10:00:00Z")
	ref := func(param, target string) resource.Ref { return resource.Ref{Param: param, Target: target} }
	fs := []fixture{
		{typ: "Appointment", id: "a1", lastUpdated: lu},
		{typ: "Appointment", id: "a2", lastUpdated: lu},
		{typ: "Appointment", id: "a3", lastUpdated: lu, deleted: true},
		{typ: "Patient", id: "p1", lastUpdated: lu},
		{typ: "Goal", id: "g1", lastUpdated: lu},
		{typ: "CarePlan", id: "cp1", lastUpdated: lu, refs: []resource.Ref{
			ref("activity-reference", "Appointment/a2"), ref("activity-reference", "Appointment/a1"),
			ref("activity-reference", "Appointment/missing"), ref("subject", "Patient/p1"), ref("goal", "Goal/g1"),
		}},
		{typ: "CarePlan", id: "cp2", lastUpdated: lu, refs: []resource.Ref{
			ref("activity-reference", "Appointment/a1"), ref("activity-reference", "Appointment/a3"),
			ref("mixed", "Patient/p1"), ref("mixed", "Goal/g1"), ref("mixed", "Appointment/a2"),
		}},
		// Appointment a9 also references a1, but it is not a CarePlan.
		{typ: "Appointment", id: "a9", lastUpdated: lu, refs: []resource.Ref{ref("activity-reference", "Appointment/a1")}},
	}
	putAll(t, s, fs...)
	// Update a2 so the include returns its current version.
	putAll(t, s, fixture{typ: "Appointment", id: "a2", lastUpdated: lu.Add(time.Hour)})

	keys := func(vs []resource.Version) []string {
		out := []string{}
		for _, v := range vs {
			out = append(out, fmt.Sprintf("%s/%s/%d", v.Type, v.ID, v.VersionID))
		}
		return out
	}
	tests := []struct {
		name  string
		ids   []string
		param string
		want  []string
	}{
		{"each once, missing and deleted skipped", []string{"cp1", "cp2"}, "activity-reference", []string{"Appointment/a1/1", "Appointment/a2/2"}},
		{"one source", []string{"cp1"}, "subject", []string{"Patient/p1/1"}},
		{"ordered by type then id", []string{"cp2"}, "mixed", []string{"Appointment/a2/2", "Goal/g1/1", "Patient/p1/1"}},
		{"other param", []string{"cp2"}, "subject", []string{}},
		{"unknown source", []string{"cp9"}, "activity-reference", []string{}},
		{"no sources", nil, "activity-reference", []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Include(ctx, "CarePlan", tt.ids, tt.param)
			if err != nil {
				t.Fatalf("Include: %v", err)
			}
			if diff := cmp.Diff(tt.want, keys(got)); diff != "" {
				t.Errorf("Include (-want +got):\n%s", diff)
			}
		})
	}
}

// race runs fn twice at once and returns both errors, sorted nil first.
func race(t *testing.T, fn func() error) []error {
	t.Helper()
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() {
			<-start
			errs[i] = fn()
		})
	}
	close(start)
	wg.Wait()
	sort.SliceStable(errs, func(i, j int) bool { return errs[i] == nil && errs[j] != nil })
	return errs
}

func testConcurrentPutVersion(t *testing.T, s store.Store) {
	ctx := t.Context()
	lu := ts(t, "2026-03-01T10:00:00Z")
	existing := fixture{typ: "Appointment", id: "c1", lastUpdated: lu}
	putAll(t, s, existing)
	for _, tt := range []struct {
		name string
		w    resource.Write
	}{
		{"new resource", fixture{typ: "Appointment", id: "c2", lastUpdated: lu}.write(1)},
		{"existing resource", existing.write(2)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			errs := race(t, func() error {
				return s.InTx(ctx, func(tx store.Tx) error { return tx.PutVersion(ctx, tt.w) })
			})
			if errs[0] != nil {
				t.Errorf("neither writer won: %v; %v", errs[0], errs[1])
			}
			wantKind(t, "losing writer", errs[1], treatment.KindConflict)
			hist, err := s.History(ctx, tt.w.Version.Type, tt.w.Version.ID)
			if err != nil || int64(len(hist)) != tt.w.Version.VersionID {
				t.Errorf("History = %d versions, %v; want %d", len(hist), err, tt.w.Version.VersionID)
			}
		})
	}
}

func testConcurrentUpdateProgram(t *testing.T, s store.Store) {
	ctx := t.Context()
	t0 := ts(t, "2026-02-01T10:00:00Z")
	p := program("prog-1", "pat-1", t0, "s1")
	inTx(t, s, func(tx store.Tx) error {
		if err := tx.CreatePatient(ctx, treatment.Patient{ID: "pat-1"}); err != nil {
			return err
		}
		return tx.CreateProgram(ctx, p)
	})
	p.Version = 2
	errs := race(t, func() error {
		return s.InTx(ctx, func(tx store.Tx) error { return tx.UpdateProgram(ctx, p) })
	})
	if errs[0] != nil {
		t.Errorf("neither update won: %v; %v", errs[0], errs[1])
	}
	wantKind(t, "losing update", errs[1], treatment.KindConflict)
}
