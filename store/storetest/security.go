package storetest

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/fhir/fhirjson"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/store"
	"github.com/kapfhir/kapfhir/treatment"
)

// securityTests are the audit trail's and the auth storage's part of the
// suite (see Run).
var securityTests = []suiteTest{
	{"AuditAppend", testAuditAppend},
	{"AuditRollback", testAuditRollback},
	{"AuditInvalid", testAuditInvalid},
	{"AuditChain", testAuditChain},
	{"AuditConcurrent", testAuditConcurrent},
	{"AuditFilters", testAuditFilters},
	{"AuditPaging", testAuditPaging},
	{"AuditPrune", testAuditPrune},
	{"Clients", testClients},
	{"UseJTI", testUseJTI},
	{"SigningKeys", testSigningKeys},
	{"SyncLedger", testSyncLedger},
}

// auditT0 is the audit tests' clock origin.
var auditT0 = time.Date(2026, 5, 4, 8, 0, 0, 0, time.UTC)

func aat(d time.Duration) time.Time { return auditT0.Add(d) }

// auditSource is the installation the suite's records come from.
const auditSource = "urn:uuid:6f1c1d7e-0000-4000-8000-000000000001"

// readRec is a successful read of CarePlan/cp-<n> of patient pat by client.
func readRec(n int, client, pat string, when time.Time) audit.Record {
	return audit.Record{
		Time:      when,
		Subtype:   audit.Read,
		Agent:     audit.Agent{ClientID: client, Role: "clinician", Address: "127.0.0.1"},
		PatientID: pat,
		Entities:  []audit.Entity{{Ref: "CarePlan/cp-" + strconv.Itoa(n) + "/_history/1"}},
		Source:    auditSource,
	}
}

// appendAudit appends in a transaction of its own and fails the test on error.
func appendAudit(t *testing.T, s store.Store, recs ...audit.Record) []audit.Record {
	t.Helper()
	got, err := s.AppendAudit(t.Context(), recs...)
	if err != nil {
		t.Fatalf("AppendAudit: %v", err)
	}
	return got
}

// verify verifies the chain and fails the test on error.
func verify(t *testing.T, s store.Store) audit.Report {
	t.Helper()
	rep, err := s.VerifyAudit(t.Context())
	if err != nil {
		t.Fatalf("VerifyAudit: %v", err)
	}
	return rep
}

// wantIntact fails unless the chain verifies with records from..to.
func wantIntact(t *testing.T, s store.Store, records int, from, to int64) audit.Report {
	t.Helper()
	rep := verify(t, s)
	want := audit.Report{Intact: true, Records: records, From: from, To: to}
	if diff := cmp.Diff(want, rep, cmpopts.IgnoreFields(audit.Report{}, "Head")); diff != "" {
		t.Errorf("VerifyAudit (-want +got):\n%s", diff)
	}
	return rep
}

// events lists audit records and fails the test on error.
func events(t *testing.T, s store.Store, f audit.Filter) audit.Page {
	t.Helper()
	p, err := s.AuditEvents(t.Context(), f)
	if err != nil {
		t.Fatalf("AuditEvents(%+v): %v", f, err)
	}
	return p
}

func seqs(rs []audit.Record) []int64 {
	out := make([]int64, len(rs))
	for i, r := range rs {
		out[i] = r.Seq
	}
	return out
}

func testAuditAppend(t *testing.T, s store.Store) {
	ctx := t.Context()
	in := readRec(1, "app-1", "pat-1", aat(123456789*time.Nanosecond))
	in.Detail = map[string]string{"request-id": "r-1"}
	got := appendAudit(t, s, in)
	if len(got) != 1 {
		t.Fatalf("AppendAudit returned %d records, want 1", len(got))
	}
	r := got[0]
	want := in
	want.Seq, want.ID, want.Type, want.Action = 1, "ae-1", audit.TypeRest, audit.ActionRead
	want.Time = aat(123456 * time.Microsecond) // kept to the microsecond
	want.Entities = []audit.Entity{{Ref: "CarePlan/cp-1/_history/1", Role: audit.RoleDomainResource}}
	want.PrevHash = audit.Genesis()
	if diff := cmp.Diff(want, r, cmpopts.IgnoreFields(audit.Record{}, "JSON", "Hash")); diff != "" {
		t.Errorf("appended record (-want +got):\n%s", diff)
	}
	if len(r.Hash) != audit.HashSize {
		t.Errorf("hash has %d bytes, want %d", len(r.Hash), audit.HashSize)
	}
	// Appending renders nothing: the record is rendered when first served.
	if len(r.JSON) != 0 {
		t.Errorf("appended record has JSON %q; it is rendered when first read", r.JSON)
	}

	// Read back by id: what was returned, with its rendering, a valid
	// AuditEvent with the record's id, kept for the next read.
	back, err := s.AuditEvent(ctx, "ae-1")
	if err != nil {
		t.Fatalf("AuditEvent: %v", err)
	}
	if diff := cmp.Diff(r, back, cmpopts.IgnoreFields(audit.Record{}, "JSON")); diff != "" {
		t.Errorf("AuditEvent(ae-1) (-want +got):\n%s", diff)
	}
	if err := fhirjson.Validate(back.JSON); err != nil {
		t.Errorf("rendered JSON does not validate: %v\n%s", err, back.JSON)
	}
	var head struct {
		ResourceType, ID string
	}
	if err := json.Unmarshal(back.JSON, &head); err != nil || head.ResourceType != "AuditEvent" || head.ID != "ae-1" {
		t.Errorf("rendered JSON is %s/%s (%v), want AuditEvent/ae-1", head.ResourceType, head.ID, err)
	}
	again := events(t, s, audit.Filter{})
	if len(again.Records) != 1 || !bytes.Equal(again.Records[0].JSON, back.JSON) {
		t.Errorf("listed again: %d records, not the kept rendering", len(again.Records))
	}
	for _, id := range []string{"ae-2", "ae-0", "ae-01", "1", "", "ae-x"} {
		_, err := s.AuditEvent(ctx, id)
		wantKind(t, "AuditEvent("+id+")", err, treatment.KindNotFound)
	}
	// Nothing to append is nothing.
	if got, err := s.AppendAudit(ctx); err != nil || len(got) != 0 {
		t.Errorf("AppendAudit() = %v, %v; want nothing", got, err)
	}
}

func testAuditRollback(t *testing.T, s store.Store) {
	ctx := t.Context()
	errBoom := errors.New("boom")
	err := s.InTx(ctx, func(tx store.Tx) error {
		got, err := tx.AppendAudit(ctx, readRec(1, "app-1", "pat-1", aat(0)), readRec(2, "app-1", "pat-1", aat(0)))
		if err != nil {
			return err
		}
		if diff := cmp.Diff([]int64{1, 2}, seqs(got)); diff != "" {
			t.Errorf("seqs in the transaction (-want +got):\n%s", diff)
		}
		return errBoom
	})
	if !errors.Is(err, errBoom) {
		t.Fatalf("InTx = %v, want errBoom", err)
	}
	if p := events(t, s, audit.Filter{}); len(p.Records) != 0 {
		t.Errorf("after rollback: %d records, want none", len(p.Records))
	}
	wantIntact(t, s, 0, 0, 0)

	// A committed change and its record go together, and the rolled-back
	// seqs are reused: the chain has no hole.
	inTx(t, s, func(tx store.Tx) error {
		if err := tx.SetMeta(ctx, "audited", "yes"); err != nil {
			return err
		}
		got, err := tx.AppendAudit(ctx, readRec(3, "app-1", "pat-1", aat(time.Second)))
		if err == nil && got[0].Seq != 1 {
			t.Errorf("first committed seq = %d, want 1", got[0].Seq)
		}
		return err
	})
	wantIntact(t, s, 1, 1, 1)
}

func testAuditInvalid(t *testing.T, s store.Store) {
	ctx := t.Context()
	good := readRec(1, "app-1", "pat-1", aat(0))
	bad := []struct {
		name string
		edit func(r *audit.Record)
	}{
		{"no time", func(r *audit.Record) { r.Time = time.Time{} }},
		{"unknown subtype", func(r *audit.Record) { r.Subtype = "peek" }},
		{"unknown type", func(r *audit.Record) { r.Type = "110199" }},
		{"bad action", func(r *audit.Record) { r.Action = "X" }},
		{"bad outcome", func(r *audit.Record) { r.Outcome = 3 }},
		{"no source", func(r *audit.Record) { r.Source = "" }},
		{"entity with two things", func(r *audit.Record) { r.Entities = []audit.Entity{{Ref: "CarePlan/a", Query: "x"}} }},
		{"absolute reference", func(r *audit.Record) { r.Entities = []audit.Entity{{Ref: "https://ehr.example/CarePlan/a"}} }},
		{"outbound write without endpoint", func(r *audit.Record) { r.Subtype = audit.OutboundWrite }},
		{"prune record", func(r *audit.Record) { r.Subtype = audit.Prune }},
	}
	for _, c := range bad {
		r := good
		c.edit(&r)
		// A bad record fails the whole append, the good one with it.
		_, err := s.AppendAudit(ctx, good, r)
		wantKind(t, c.name, err, treatment.KindInvalid)
		err = s.InTx(ctx, func(tx store.Tx) error { _, err := tx.AppendAudit(ctx, r); return err })
		wantKind(t, c.name+" in a transaction", err, treatment.KindInvalid)
	}
	wantIntact(t, s, 0, 0, 0)
}

// kinds is one record of every subtype, as a caller would write them.
func kinds() []audit.Record {
	base := audit.Record{Time: aat(0), Agent: audit.Agent{ClientID: "app-1", Role: "admin"}, Source: auditSource}
	with := func(sub audit.Subtype, edit func(r *audit.Record)) audit.Record {
		r := base
		r.Subtype = sub
		if edit != nil {
			edit(&r)
		}
		return r
	}
	return []audit.Record{
		with(audit.Read, func(r *audit.Record) { r.PatientID, r.Entities = "p1", []audit.Entity{{Ref: "Goal/g1"}} }),
		with(audit.VRead, func(r *audit.Record) { r.Entities = []audit.Entity{{Ref: "Goal/g1/_history/2"}} }),
		with(audit.HistoryInstance, func(r *audit.Record) { r.Entities = []audit.Entity{{Ref: "Goal/g1"}} }),
		with(audit.SearchType, func(r *audit.Record) {
			r.PatientID, r.Entities = "p1", []audit.Entity{{Query: "CarePlan?patient=Patient/p1&_count=10"}}
		}),
		with(audit.Create, func(r *audit.Record) { r.Entities = []audit.Entity{{Ref: "Patient/p2"}} }),
		with(audit.Update, func(r *audit.Record) { r.Entities = []audit.Entity{{Ref: "CarePlan/c1/_history/4"}} }),
		with(audit.Delete, func(r *audit.Record) { r.Entities = []audit.Entity{{Ref: "CarePlan/c1"}} }),
		with(audit.TokenIssued, func(r *audit.Record) { r.Detail = map[string]string{"scope": "system/*.read"} }),
		with(audit.TokenRefused, func(r *audit.Record) { r.Outcome, r.OutcomeDesc = audit.MinorFailure, "unknown client" }),
		with(audit.ConfigChange, func(r *audit.Record) { r.Entities = []audit.Entity{{Identifier: "endpoint:ehr-1"}} }),
		with(audit.ClientChange, func(r *audit.Record) {
			r.Action, r.Entities = audit.ActionCreate, []audit.Entity{{Identifier: "client:app-2", Role: audit.RoleSecurityResource}}
		}),
		with(audit.KeyChange, func(r *audit.Record) {
			r.Entities = []audit.Entity{{Identifier: "kid:k1", Role: audit.RoleSecurityResource}}
		}),
		with(audit.OutboundWrite, func(r *audit.Record) {
			r.Agent, r.EndpointID, r.PatientID = audit.Agent{ClientID: "sync"}, "ehr-1", "p1"
			r.Entities = []audit.Entity{{Ref: "CarePlan/c1/_history/4"}}
		}),
		with(audit.InboundPoll, func(r *audit.Record) {
			r.Agent, r.EndpointID = audit.Agent{ClientID: "sync"}, "ehr-1"
			r.Entities = []audit.Entity{{Query: "Appointment?identifier=urn:x|&_lastUpdated=gt2026-05-01"}}
		}),
		with(audit.Replay, func(r *audit.Record) { r.EndpointID, r.Detail = "ehr-1", map[string]string{"item": "17"} }),
	}
}

func testAuditChain(t *testing.T, s store.Store) {
	ctx := t.Context()
	var all []audit.Record
	// Records of every kind, in batches of several sizes, in and out of transactions.
	all = append(all, appendAudit(t, s, kinds()...)...)
	for i := range 20 {
		recs := make([]audit.Record, i%4+1)
		for j := range recs {
			recs[j] = readRec(i*10+j, "app-"+strconv.Itoa(i%3), "pat-"+strconv.Itoa(i%5), aat(time.Duration(i)*time.Minute))
		}
		if i%2 == 0 {
			all = append(all, appendAudit(t, s, recs...)...)
			continue
		}
		inTx(t, s, func(tx store.Tx) error {
			got, err := tx.AppendAudit(ctx, recs...)
			all = append(all, got...)
			return err
		})
	}
	for i, r := range all {
		if r.Seq != int64(i+1) {
			t.Fatalf("record %d has seq %d", i+1, r.Seq)
		}
		if i > 0 && !slices.Equal(r.PrevHash, all[i-1].Hash) {
			t.Errorf("record %d does not link to %d", r.Seq, r.Seq-1)
		}
	}
	n := int64(len(all))
	rep := wantIntact(t, s, len(all), 1, n)
	if want := hex.EncodeToString(all[n-1].Hash); rep.Head != want {
		t.Errorf("Head = %s, want the last hash %s", rep.Head, want)
	}
	// What is listed is what was appended, each rendered as a valid AuditEvent.
	p := events(t, s, audit.Filter{Oldest: true, Limit: 1000})
	if diff := cmp.Diff(all, p.Records, cmpopts.EquateEmpty(), cmpopts.IgnoreFields(audit.Record{}, "JSON")); diff != "" {
		t.Errorf("AuditEvents (-want +got):\n%s", diff)
	}
	for _, r := range p.Records {
		if err := fhirjson.Validate(r.JSON); err != nil {
			t.Errorf("record %d (%s) does not validate: %v\n%s", r.Seq, r.Subtype, err, r.JSON)
		}
	}
	// The kept renderings are checked too.
	wantIntact(t, s, len(all), 1, n)
}

func testAuditConcurrent(t *testing.T, s store.Store) {
	concurrentAppends(t, []store.Store{s})
}

// concurrentAppends appends from several goroutines on each store (half in
// transactions with another write) and checks that one chain holds them all.
func concurrentAppends(t *testing.T, stores []store.Store) {
	t.Helper()
	ctx := t.Context()
	const workers, each = 4, 8
	var wg sync.WaitGroup
	errs := make(chan error, workers*len(stores))
	start := make(chan struct{})
	for si, s := range stores {
		for w := range workers {
			wg.Go(func() {
				<-start
				for i := range each {
					r := readRec(i, fmt.Sprintf("app-%d-%d", si, w), "pat-1", aat(time.Duration(i)*time.Second))
					var err error
					if (w+i)%2 == 0 {
						_, err = s.AppendAudit(ctx, r)
					} else {
						err = s.InTx(ctx, func(tx store.Tx) error {
							if err := tx.SetMeta(ctx, fmt.Sprintf("k-%d-%d", si, w), strconv.Itoa(i)); err != nil {
								return err
							}
							_, err := tx.AppendAudit(ctx, r, r)
							return err
						})
					}
					if err != nil {
						errs <- err
						return
					}
				}
			})
		}
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent append: %v", err)
	}
	want := len(stores) * workers * (each/2 + each) // half the rounds append two
	for _, s := range stores {
		wantIntact(t, s, want, 1, int64(want))
	}
}

func testAuditFilters(t *testing.T, s store.Store) {
	recs := []audit.Record{
		readRec(1, "app-a", "pat-1", aat(0)), // 1
		readRec(2, "app-b", "pat-2", aat(time.Hour)),
		{Time: aat(2 * time.Hour), Subtype: audit.SearchType, Agent: audit.Agent{ClientID: "app-a"}, PatientID: "pat-1", Source: auditSource,
			Entities: []audit.Entity{{Query: "Goal?patient=pat-1"}}}, // 3
		{Time: aat(3 * time.Hour), Subtype: audit.TokenRefused, Outcome: audit.MinorFailure, Agent: audit.Agent{ClientID: "app-c"}, Source: auditSource}, // 4
		{Time: aat(4 * time.Hour), Subtype: audit.OutboundWrite, Agent: audit.Agent{ClientID: "sync"}, EndpointID: "ehr-1", PatientID: "pat-2", Source: auditSource,
			Entities: []audit.Entity{{Ref: "CarePlan/cp-2/_history/7"}}}, // 5
		{Time: aat(5 * time.Hour), Subtype: audit.ClientChange, Outcome: audit.SeriousFailure, Agent: audit.Agent{ClientID: "admin"}, Source: auditSource,
			Entities: []audit.Entity{{Identifier: "client:app-c", Role: audit.RoleSecurityResource}}}, // 6
	}
	appendAudit(t, s, recs...)
	tests := []struct {
		name string
		f    audit.Filter
		want []int64
	}{
		{"all, newest first", audit.Filter{}, []int64{6, 5, 4, 3, 2, 1}},
		{"oldest first", audit.Filter{Oldest: true}, []int64{1, 2, 3, 4, 5, 6}},
		{"from", audit.Filter{From: aat(4 * time.Hour)}, []int64{6, 5}},
		{"to is exclusive", audit.Filter{To: aat(2 * time.Hour)}, []int64{2, 1}},
		{"from and to", audit.Filter{From: aat(time.Hour), To: aat(3*time.Hour + time.Microsecond)}, []int64{4, 3, 2}},
		{"client", audit.Filter{ClientID: "app-a"}, []int64{3, 1}},
		{"patient", audit.Filter{PatientID: "pat-2"}, []int64{5, 2}},
		{"entity, any version", audit.Filter{Entity: "CarePlan/cp-2"}, []int64{5, 2}},
		{"entity with a version", audit.Filter{Entity: "CarePlan/cp-2/_history/1"}, []int64{5, 2}},
		{"entity patient", audit.Filter{Entity: "Patient/pat-1"}, []int64{3, 1}},
		{"entity identifier", audit.Filter{Entity: "client:app-c"}, []int64{6}},
		{"endpoint", audit.Filter{EndpointID: "ehr-1"}, []int64{5}},
		{"type", audit.Filter{Types: []audit.Type{audit.TypeUserAuthentication, audit.TypeSecurityAlert}}, []int64{6, 4}},
		{"subtype", audit.Filter{Subtypes: []audit.Subtype{audit.Read, audit.SearchType}}, []int64{3, 2, 1}},
		{"outcome", audit.Filter{Outcomes: []audit.Outcome{audit.MinorFailure, audit.SeriousFailure}}, []int64{6, 4}},
		{"success", audit.Filter{Outcomes: []audit.Outcome{audit.Success}}, []int64{5, 3, 2, 1}},
		{"combined", audit.Filter{ClientID: "app-a", Subtypes: []audit.Subtype{audit.Read}}, []int64{1}},
		{"nothing", audit.Filter{ClientID: "nobody"}, []int64{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := events(t, s, tt.f)
			if diff := cmp.Diff(tt.want, seqs(p.Records)); diff != "" {
				t.Errorf("seqs (-want +got):\n%s", diff)
			}
			if p.Next != 0 {
				t.Errorf("Next = %d, want 0", p.Next)
			}
		})
	}
	_, err := s.AuditEvents(t.Context(), audit.Filter{Outcomes: []audit.Outcome{5}})
	wantKind(t, "unknown outcome", err, treatment.KindInvalid)
}

func testAuditPaging(t *testing.T, s store.Store) {
	var recs []audit.Record
	for i := range 7 {
		recs = append(recs, readRec(i, "app-"+strconv.Itoa(i%2), "pat-1", aat(time.Duration(i)*time.Minute)))
	}
	appendAudit(t, s, recs...)
	walk := func(f audit.Filter) [][]int64 {
		var out [][]int64
		for range 10 {
			p := events(t, s, f)
			out = append(out, seqs(p.Records))
			if p.Next == 0 {
				return out
			}
			f.Cursor = p.Next
		}
		t.Fatalf("paging %+v does not end", f)
		return nil
	}
	tests := []struct {
		name string
		f    audit.Filter
		want [][]int64
	}{
		{"newest first", audit.Filter{Limit: 3}, [][]int64{{7, 6, 5}, {4, 3, 2}, {1}}},
		{"oldest first", audit.Filter{Limit: 3, Oldest: true}, [][]int64{{1, 2, 3}, {4, 5, 6}, {7}}},
		{"exact pages", audit.Filter{Limit: 7}, [][]int64{{7, 6, 5, 4, 3, 2, 1}}},
		{"filtered", audit.Filter{Limit: 2, ClientID: "app-0"}, [][]int64{{7, 5}, {3, 1}}},
		{"from a cursor", audit.Filter{Limit: 10, Cursor: 4}, [][]int64{{3, 2, 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, walk(tt.f)); diff != "" {
				t.Errorf("pages (-want +got):\n%s", diff)
			}
		})
	}
}

func testAuditPrune(t *testing.T, s store.Store) {
	ctx := t.Context()
	for i := range 10 {
		appendAudit(t, s, readRec(i, "app-1", "pat-1", aat(time.Duration(i)*time.Hour)))
	}
	by := func(at time.Duration) audit.Record {
		return audit.Record{Time: aat(at), Agent: audit.Agent{ClientID: "operator", Role: "admin"}, Source: auditSource}
	}
	prune := func(before time.Time, at time.Duration) int {
		t.Helper()
		n, err := s.PruneAudit(ctx, before, by(at))
		if err != nil {
			t.Fatalf("PruneAudit(%s): %v", before, err)
		}
		return n
	}

	// Records 1-5 are older than hour 5; the prune record is 11.
	if n := prune(aat(5*time.Hour), 100*time.Hour); n != 5 {
		t.Errorf("pruned %d, want 5", n)
	}
	wantIntact(t, s, 6, 6, 11)
	p := events(t, s, audit.Filter{Subtypes: []audit.Subtype{audit.Prune}})
	if len(p.Records) != 1 {
		t.Fatalf("%d prune records, want 1", len(p.Records))
	}
	pr := p.Records[0]
	six, err := s.AuditEvent(ctx, "ae-6")
	if err != nil {
		t.Fatal(err)
	}
	wantDetail := map[string]string{
		audit.DetailPruned: "5", audit.DetailFirstSeq: "6", audit.DetailAnchor: hex.EncodeToString(six.PrevHash),
		audit.DetailBefore: aat(5 * time.Hour).Format(time.RFC3339Nano),
	}
	if diff := cmp.Diff(wantDetail, pr.Detail); diff != "" {
		t.Errorf("prune detail (-want +got):\n%s", diff)
	}
	if pr.Seq != 11 || pr.Agent.ClientID != "operator" || pr.Type != audit.TypeAuditLogUsed || pr.Action != audit.ActionDelete {
		t.Errorf("prune record = seq %d by %q, type %s, action %s", pr.Seq, pr.Agent.ClientID, pr.Type, pr.Action)
	}
	if err := fhirjson.Validate(pr.JSON); err != nil {
		t.Errorf("prune record does not validate: %v", err)
	}
	for _, id := range []string{"ae-1", "ae-5"} {
		_, err := s.AuditEvent(ctx, id)
		wantKind(t, "pruned "+id, err, treatment.KindNotFound)
	}
	if got := events(t, s, audit.Filter{Entity: "CarePlan/cp-0"}); len(got.Records) != 0 {
		t.Errorf("a pruned record is still found by its entity: %v", seqs(got.Records))
	}

	// Appending and pruning again keep it intact; a prune that deletes
	// nothing is still recorded.
	appendAudit(t, s, readRec(20, "app-1", "pat-1", aat(101*time.Hour)))
	if n := prune(aat(time.Hour), 102*time.Hour); n != 0 {
		t.Errorf("pruned %d, want 0", n)
	}
	wantIntact(t, s, 8, 6, 13)
	if n := prune(aat(8*time.Hour), 103*time.Hour); n != 3 { // 6, 7, 8
		t.Errorf("pruned %d, want 3", n)
	}
	wantIntact(t, s, 6, 9, 14)

	// Pruning everything leaves the prune record alone, chained to the rest.
	if n := prune(aat(1000*time.Hour), 104*time.Hour); n != 6 {
		t.Errorf("pruned %d, want 6", n)
	}
	wantIntact(t, s, 1, 15, 15)
	got := appendAudit(t, s, readRec(30, "app-1", "pat-1", aat(105*time.Hour)))
	if got[0].Seq != 16 {
		t.Errorf("seq after pruning everything = %d, want 16", got[0].Seq)
	}
	wantIntact(t, s, 2, 15, 16)

	// A prune with a bad template writes nothing.
	_, err = s.PruneAudit(ctx, aat(1000*time.Hour), audit.Record{Source: auditSource})
	wantKind(t, "prune without a time", err, treatment.KindInvalid)
	wantIntact(t, s, 2, 15, 16)
}

func testClients(t *testing.T, s store.Store) {
	ctx := t.Context()
	c1 := store.ClientRecord{ID: "app-1", Role: "clinician", JSON: []byte(`{"id":"app-1","jwks":{"keys":[]}}`), Created: aat(0), Updated: aat(0)}
	c2 := store.ClientRecord{ID: "app-0", Role: "admin", JSON: []byte(`{"id":"app-0"}`), Created: aat(time.Hour), Updated: aat(time.Hour)}
	for _, c := range []store.ClientRecord{c1, c2} {
		if err := s.PutClient(ctx, c); err != nil {
			t.Fatalf("PutClient(%s): %v", c.ID, err)
		}
	}
	got, err := s.Client(ctx, "app-1")
	if err != nil {
		t.Fatalf("Client: %v", err)
	}
	if diff := cmp.Diff(c1, got); diff != "" {
		t.Errorf("Client (-want +got):\n%s", diff)
	}

	// Replacing keeps Created.
	c1b := c1
	c1b.Role, c1b.JSON, c1b.Created, c1b.Updated = "auditor", []byte(`{"id":"app-1","v":2}`), aat(50*time.Hour), aat(2*time.Hour)
	if err := s.PutClient(ctx, c1b); err != nil {
		t.Fatalf("PutClient(replace): %v", err)
	}
	want := c1b
	want.Created = c1.Created
	all, err := s.Clients(ctx)
	if err != nil {
		t.Fatalf("Clients: %v", err)
	}
	if diff := cmp.Diff([]store.ClientRecord{c2, want}, all); diff != "" {
		t.Errorf("Clients (-want +got):\n%s", diff)
	}

	if err := s.DeleteClient(ctx, "app-0"); err != nil {
		t.Fatalf("DeleteClient: %v", err)
	}
	_, err = s.Client(ctx, "app-0")
	wantKind(t, "deleted client", err, treatment.KindNotFound)
	wantKind(t, "delete twice", s.DeleteClient(ctx, "app-0"), treatment.KindNotFound)
	wantKind(t, "client without id", s.PutClient(ctx, store.ClientRecord{JSON: []byte(`{}`)}), treatment.KindInvalid)
	if all, err := s.Clients(ctx); err != nil || len(all) != 1 {
		t.Errorf("Clients after delete = %d, %v; want 1", len(all), err)
	}
}

func testUseJTI(t *testing.T, s store.Store) {
	useJTI(t, s, s)
}

// useJTI checks the replay cache through a and b, two handles on one database.
func useJTI(t *testing.T, a, b store.Store) {
	t.Helper()
	ctx := t.Context()
	exp := aat(5 * time.Minute)
	steps := []struct {
		name         string
		s            store.Store
		client, jti  string
		expires, now time.Time
		conflict     bool
	}{
		{"first use", a, "app-1", "j1", exp, aat(0), false},
		{"replay", a, "app-1", "j1", exp, aat(time.Minute), true},
		{"replay through the other handle", b, "app-1", "j1", exp, aat(2 * time.Minute), true},
		{"same jti, other client", b, "app-2", "j1", exp, aat(2 * time.Minute), false},
		{"other jti", b, "app-1", "j2", exp, aat(2 * time.Minute), false},
		{"replay at the expiry", a, "app-1", "j1", exp, exp.Add(-time.Microsecond), true},
		{"after expiry, a new use", a, "app-1", "j1", aat(20 * time.Minute), exp, false},
		{"which is recorded", b, "app-1", "j1", aat(20 * time.Minute), aat(10 * time.Minute), true},
	}
	for _, st := range steps {
		err := st.s.UseJTI(ctx, st.client, st.jti, st.expires, st.now)
		switch {
		case st.conflict:
			wantKind(t, st.name, err, treatment.KindConflict)
		case err != nil:
			t.Errorf("%s: %v", st.name, err)
		}
	}
	wantKind(t, "empty jti", a.UseJTI(ctx, "app-1", "", exp, aat(0)), treatment.KindInvalid)

	// Concurrent uses of one jti: exactly one wins.
	errs := race(t, func() error { return a.UseJTI(ctx, "app-3", "j-race", exp, aat(0)) })
	if errs[0] != nil {
		t.Errorf("one concurrent use should win: %v", errs[0])
	}
	wantKind(t, "the other concurrent use", errs[1], treatment.KindConflict)
	errs = race(t, func() error { return b.UseJTI(ctx, "app-3", "j-race-2", exp, aat(0)) })
	if errs[0] != nil {
		t.Errorf("one concurrent use should win: %v", errs[0])
	}
	wantKind(t, "the other concurrent use", errs[1], treatment.KindConflict)
}

func testSigningKeys(t *testing.T, s store.Store) {
	ctx := t.Context()
	rec := func(kid, change string) audit.Record {
		return audit.Record{Time: aat(0), Subtype: audit.KeyChange, Outcome: audit.Success, Agent: audit.Agent{ClientID: "operator", Role: "admin"},
			Entities: []audit.Entity{{Identifier: "key:" + kid}}, Detail: map[string]string{"change": change}, Source: auditSource}
	}
	k1 := store.SigningKey{KID: "k1", Alg: "ES384", Private: []byte("sealed-1"), Public: []byte(`{"kty":"EC"}`), Created: aat(0)}
	k2 := store.SigningKey{KID: "k2", Alg: "RS384", Private: []byte("sealed-2"), Created: aat(time.Hour)}
	for _, k := range []store.SigningKey{k1, k2} {
		if err := s.PutSigningKey(ctx, k, rec(k.KID, "created")); err != nil {
			t.Fatalf("PutSigningKey(%s): %v", k.KID, err)
		}
	}
	wantKind(t, "duplicate kid", s.PutSigningKey(ctx, k1, rec(k1.KID, "created")), treatment.KindConflict)
	wantKind(t, "no private key", s.PutSigningKey(ctx, store.SigningKey{KID: "k3", Alg: "ES384"}), treatment.KindInvalid)
	// A record that cannot be appended takes the key with it.
	bad := rec("k3", "created")
	bad.Subtype = audit.Prune
	if err := s.PutSigningKey(ctx, store.SigningKey{KID: "k3", Alg: "ES384", Private: []byte("sealed-3"), Created: aat(0)}, bad); err == nil {
		t.Error("PutSigningKey with an invalid audit record succeeded")
	}

	if done, err := s.RetireSigningKey(ctx, "k1", aat(2*time.Hour), rec("k1", "retired")); err != nil || !done {
		t.Fatalf("RetireSigningKey = %v, %v; want done", done, err)
	}
	// Retiring again keeps the first time and records nothing.
	if done, err := s.RetireSigningKey(ctx, "k1", aat(3*time.Hour), rec("k1", "retired")); err != nil || done {
		t.Fatalf("RetireSigningKey again = %v, %v; want nothing done", done, err)
	}
	_, err := s.RetireSigningKey(ctx, "k9", aat(0), rec("k9", "retired"))
	wantKind(t, "retire unknown", err, treatment.KindNotFound)

	// Resealing replaces the bytes only while they are the ones the caller read.
	if done, err := s.ResealSigningKey(ctx, "k2", []byte("sealed-2"), []byte("resealed-2"), rec("k2", "sealed")); err != nil || !done {
		t.Fatalf("ResealSigningKey = %v, %v; want done", done, err)
	}
	if done, err := s.ResealSigningKey(ctx, "k2", []byte("sealed-2"), []byte("other"), rec("k2", "sealed")); err != nil || done {
		t.Fatalf("ResealSigningKey of replaced bytes = %v, %v; want nothing done", done, err)
	}
	_, err = s.ResealSigningKey(ctx, "k9", []byte("x"), []byte("y"), rec("k9", "sealed"))
	wantKind(t, "reseal unknown", err, treatment.KindNotFound)

	got, err := s.SigningKeys(ctx)
	if err != nil {
		t.Fatalf("SigningKeys: %v", err)
	}
	k1.Retired = aat(2 * time.Hour)
	k2.Private = []byte("resealed-2")
	if diff := cmp.Diff([]store.SigningKey{k2, k1}, got); diff != "" {
		t.Errorf("SigningKeys (-want +got):\n%s", diff)
	}
	// The chain holds the changes made, once each, and verifies.
	var changes []string
	for _, r := range events(t, s, audit.Filter{Subtypes: []audit.Subtype{audit.KeyChange}, Oldest: true}).Records {
		changes = append(changes, r.Entities[0].Identifier+" "+r.Detail["change"])
	}
	if diff := cmp.Diff([]string{"key:k1 created", "key:k2 created", "key:k1 retired", "key:k2 sealed"}, changes); diff != "" {
		t.Errorf("key change records (-want +got):\n%s", diff)
	}
	wantIntact(t, s, 4, 1, 4)
}

func testSyncLedger(t *testing.T, s store.Store) {
	ctx := t.Context()
	// Resources whose patient the ledger finds through the search index.
	putAll(t, s,
		fixture{typ: "Patient", id: "p1", lastUpdated: aat(0)},
		fixture{typ: "CarePlan", id: "c1", lastUpdated: aat(0), refs: []resource.Ref{{Param: "subject", Target: "Patient/p1"}}},
		fixture{typ: "Appointment", id: "a2", lastUpdated: aat(0), refs: []resource.Ref{{Param: "patient", Target: "Patient/p2"}}},
	)
	lines := []outbox.Event{
		{At: aat(0), EndpointID: "ehr-1", ItemID: 1, ResourceType: "Patient", ResourceID: "p1", Version: 1, Action: "sent", Status: 201, EHRID: "E1", EHRVersion: "1", Request: "PUT Patient", Actor: "sync"},
		{At: aat(time.Hour), EndpointID: "ehr-1", ItemID: 2, ResourceType: "CarePlan", ResourceID: "c1", Version: 3, Action: "sent", Status: 200, EHRID: "E2", EHRVersion: "4", Request: "PUT CarePlan", Actor: "sync"},
		{At: aat(2 * time.Hour), EndpointID: "ehr-2", ItemID: 3, ResourceType: "CarePlan", ResourceID: "c1", Version: 3, Action: "dead", Status: 422, Request: "PUT CarePlan", Detail: "rejected", Actor: "sync"},
		{At: aat(3 * time.Hour), EndpointID: "ehr-1", ResourceType: "Appointment", ResourceID: "a2", Version: 2, Action: "pulled", EHRID: "E9", EHRVersion: "7", Actor: "ehr:ehr-1"},
		{At: aat(4 * time.Hour), EndpointID: "ehr-2", ItemID: 9, ResourceType: "Goal", ResourceID: "gone", Version: 1, Action: "replayed", Actor: "operator"},
	}
	for _, e := range lines {
		if err := s.AppendLog(ctx, e); err != nil {
			t.Fatalf("AppendLog: %v", err)
		}
	}
	all, err := s.SyncLedger(ctx, outbox.LedgerFilter{})
	if err != nil {
		t.Fatalf("SyncLedger: %v", err)
	}
	var want []outbox.LedgerEntry
	for i, pat := range []string{"p1", "p1", "p1", "p2", ""} {
		want = append(want, outbox.LedgerEntry{Event: lines[i], PatientID: pat})
	}
	slices.Reverse(want)
	if diff := cmp.Diff(want, all.Entries, cmpopts.IgnoreFields(outbox.Event{}, "ID")); diff != "" {
		t.Errorf("SyncLedger (-want +got):\n%s", diff)
	}
	ledgerIDs := func(p outbox.LedgerPage) []string {
		out := []string{}
		for _, e := range p.Entries {
			out = append(out, e.EndpointID+":"+e.ResourceType+"/"+e.ResourceID+":"+e.Action)
		}
		return out
	}
	tests := []struct {
		name string
		f    outbox.LedgerFilter
		want []string
	}{
		{"endpoint", outbox.LedgerFilter{EndpointID: "ehr-2"}, []string{"ehr-2:Goal/gone:replayed", "ehr-2:CarePlan/c1:dead"}},
		{"patient", outbox.LedgerFilter{PatientID: "p1"}, []string{"ehr-2:CarePlan/c1:dead", "ehr-1:CarePlan/c1:sent", "ehr-1:Patient/p1:sent"}},
		{"patient through patient", outbox.LedgerFilter{PatientID: "p2"}, []string{"ehr-1:Appointment/a2:pulled"}},
		{"type", outbox.LedgerFilter{ResourceType: "CarePlan", EndpointID: "ehr-1"}, []string{"ehr-1:CarePlan/c1:sent"}},
		{"time", outbox.LedgerFilter{From: aat(time.Hour), To: aat(3 * time.Hour)}, []string{"ehr-2:CarePlan/c1:dead", "ehr-1:CarePlan/c1:sent"}},
		{"nothing", outbox.LedgerFilter{PatientID: "p9"}, []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := s.SyncLedger(ctx, tt.f)
			if err != nil {
				t.Fatalf("SyncLedger: %v", err)
			}
			if diff := cmp.Diff(tt.want, ledgerIDs(p)); diff != "" {
				t.Errorf("entries (-want +got):\n%s", diff)
			}
		})
	}
	// Paging walks every line once.
	var pages [][]string
	f := outbox.LedgerFilter{Limit: 2}
	for range 5 {
		p, err := s.SyncLedger(ctx, f)
		if err != nil {
			t.Fatalf("SyncLedger: %v", err)
		}
		pages = append(pages, ledgerIDs(p))
		if p.Next == 0 {
			break
		}
		f.Cursor = p.Next
	}
	wantPages := [][]string{
		{"ehr-2:Goal/gone:replayed", "ehr-1:Appointment/a2:pulled"},
		{"ehr-2:CarePlan/c1:dead", "ehr-1:CarePlan/c1:sent"},
		{"ehr-1:Patient/p1:sent"},
	}
	if diff := cmp.Diff(wantPages, pages); diff != "" {
		t.Errorf("pages (-want +got):\n%s", diff)
	}
}

// RunShared runs the tests that need two handles on one database (two
// processes): the replay cache and the audit chain are shared. open must
// return two handles on a new, migrated, empty database.
func RunShared(t *testing.T, open func(t *testing.T) (a, b store.Store)) {
	t.Helper()
	t.Run("SharedUseJTI", func(t *testing.T) {
		t.Parallel()
		a, b := open(t)
		useJTI(t, a, b)
	})
	t.Run("SharedAuditChain", func(t *testing.T) {
		t.Parallel()
		a, b := open(t)
		concurrentAppends(t, []store.Store{a, b})
	})
}

// Exec runs a statement on a store's database behind the store's back.
type Exec func(ctx context.Context, query string) error

// RunTamper checks that VerifyAudit finds records altered, deleted,
// reordered or added behind the store's back. open must return a new,
// migrated, empty store and a way to run SQL on its database directly.
func RunTamper(t *testing.T, open func(t *testing.T) (store.Store, Exec)) {
	t.Helper()
	tests := []struct {
		name     string
		sql      []string
		firstBad int64
	}{
		{"untouched by a no-op update", []string{`UPDATE audit_events SET json = json WHERE seq = 4`}, 0},
		{"content altered", []string{`UPDATE audit_events SET outcome_desc = 'nothing to see' WHERE seq = 4`}, 4},
		{"patient altered", []string{`UPDATE audit_events SET patient_id = 'someone-else' WHERE seq = 5`}, 5},
		{"entities altered", []string{`UPDATE audit_events SET entities = '[{"ref":"CarePlan/x","role":"4"}]' WHERE seq = 3`}, 3},
		{"entities garbled", []string{`UPDATE audit_events SET entities = '[{' WHERE seq = 3`}, 3},
		{"kept rendering altered", []string{`UPDATE audit_events SET json = (SELECT json FROM audit_events WHERE seq = 2) WHERE seq = 5`}, 5},
		{"middle row deleted", []string{`DELETE FROM audit_events WHERE seq = 4`}, 4},
		{"first row deleted", []string{`DELETE FROM audit_events WHERE seq = 1`}, 1},
		{"last row deleted", []string{`DELETE FROM audit_events WHERE seq = 8`}, 8},
		{"rows swapped", []string{
			`UPDATE audit_events SET seq = -1 WHERE seq = 3`,
			`UPDATE audit_events SET seq = 3 WHERE seq = 6`,
			`UPDATE audit_events SET seq = 6 WHERE seq = -1`,
		}, 3},
		{"row copied past the head", []string{
			`INSERT INTO audit_events (` + tamperCols + `) SELECT 9, ` + tamperRest + ` FROM audit_events WHERE seq = 8`,
		}, 9},
		{"head moved back", []string{`UPDATE audit_head SET seq = 7`}, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, exec := open(t)
			for i := range 8 {
				appendAudit(t, s, readRec(i, "app-1", "pat-"+strconv.Itoa(i), aat(time.Duration(i)*time.Minute)))
			}
			events(t, s, audit.Filter{Limit: 100}) // served once: renderings kept
			wantIntact(t, s, 8, 1, 8)
			for _, q := range tt.sql {
				if err := exec(t.Context(), q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			rep := verify(t, s)
			if tt.firstBad == 0 {
				if !rep.Intact {
					t.Errorf("VerifyAudit = %+v, want intact", rep)
				}
				return
			}
			if rep.Intact || rep.FirstBad != tt.firstBad || rep.Reason == "" {
				t.Errorf("VerifyAudit = %+v, want not intact, first bad %d, with a reason", rep, tt.firstBad)
			}
		})
	}
	t.Run("prune forged", func(t *testing.T) {
		t.Parallel()
		s, exec := open(t)
		for i := range 8 {
			appendAudit(t, s, readRec(i, "app-1", "pat-1", aat(time.Duration(i)*time.Minute)))
		}
		n, err := s.PruneAudit(t.Context(), aat(3*time.Minute), audit.Record{Time: aat(time.Hour), Agent: audit.Agent{ClientID: "operator"}, Source: auditSource})
		if err != nil || n != 3 {
			t.Fatalf("PruneAudit = %d, %v; want 3", n, err)
		}
		wantIntact(t, s, 6, 4, 9)
		// Deleting more from the front after a prune is found.
		if err := exec(t.Context(), `DELETE FROM audit_events WHERE seq = 4`); err != nil {
			t.Fatal(err)
		}
		if rep := verify(t, s); rep.Intact || rep.FirstBad != 4 {
			t.Errorf("VerifyAudit = %+v, want not intact, first bad 4", rep)
		}
	})
}

// tamperCols and tamperRest copy a row under another seq.
const (
	tamperCols = `seq, at, type, subtype, action, outcome, outcome_desc, client_id, agent_role, address, patient_id, endpoint_id, entities, detail, source, json, prev_hash, hash`
	tamperRest = `at, type, subtype, action, outcome, outcome_desc, client_id, agent_role, address, patient_id, endpoint_id, entities, detail, source, json, hash, hash`
)
