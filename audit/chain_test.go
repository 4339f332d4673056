package audit_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/audit"
)

// canonRec is a record with every field set.
func canonRec() audit.Record {
	return audit.Record{
		Seq: 7, ID: "ae-7", Time: t0, Type: audit.TypeRest, Subtype: audit.SearchType, Action: audit.ActionExecute,
		Outcome: audit.MinorFailure, OutcomeDesc: "bad parameter",
		Agent:     audit.Agent{ClientID: "app-1", Role: "clinician", Address: "192.0.2.10"},
		PatientID: "p1",
		Entities: []audit.Entity{
			{Query: "CarePlan?patient=p1", Role: audit.RoleQuery},
			{Ref: "CarePlan/cp1/_history/2", Role: audit.RoleDomainResource},
			{Identifier: "client:app-1", Role: audit.RoleSecurityResource},
		},
		EndpointID: "ehr-1",
		Detail:     map[string]string{"b": "2", "a": "1", "c": ""},
		Source:     source,
	}
}

// TestCanonicalFrozen pins the encoding: a stored chain verifies only as
// long as it does not change (a new encoding needs a new version string).
func TestCanonicalFrozen(t *testing.T) {
	got := hex.EncodeToString(audit.Hash(audit.Genesis(), audit.Canonical(canonRec())))
	const want = "b8232491e7b1d5eb89fffc3cb74166a078e33bf332ed0352415f125b92f5a99d"
	if got != want {
		t.Errorf("hash of the canonical record = %s, want %s", got, want)
	}
}

// TestCanonicalLayout builds the encoding of a small record byte by byte,
// as Canonical documents it.
func TestCanonicalLayout(t *testing.T) {
	r := audit.Record{
		Seq: 1, ID: "ae-1", Time: time.UnixMicro(258), Type: audit.TypeRest, Subtype: audit.Read, Action: audit.ActionRead,
		Outcome: audit.MajorFailure, Agent: audit.Agent{ClientID: "c"},
		Entities: []audit.Entity{{Ref: "A/b", Role: "4"}}, Detail: map[string]string{"k": "v"}, Source: "s",
	}
	var want []byte
	i64 := func(v int64) { want = binary.BigEndian.AppendUint64(want, uint64(v)) }
	str := func(s string) { i64(int64(len(s))); want = append(want, s...) }
	str("kapfhir-audit-v2")
	i64(1)
	str("ae-1")
	i64(258)
	str("rest")
	str("read")
	str("R")
	i64(12)
	str("")  // outcome desc
	str("c") // client
	str("")  // role
	str("")  // address
	str("")  // patient
	i64(1)
	str("A/b")
	str("") // identifier
	str("") // query
	str("4")
	str("") // endpoint
	i64(1)
	str("k")
	str("v")
	str("s")
	if got := audit.Canonical(r); !bytes.Equal(got, want) {
		t.Errorf("Canonical =\n%x\nwant\n%x", got, want)
	}
}

func TestCanonicalDeterministic(t *testing.T) {
	r := canonRec()
	for i := range 50 {
		r.Detail["k"+strconv.Itoa(i)] = strconv.Itoa(i)
	}
	first := audit.Canonical(r)
	for range 20 {
		if got := audit.Canonical(r); !bytes.Equal(first, got) {
			t.Fatal("Canonical differs between calls")
		}
	}
	// Chain fields other than Seq are not covered: they are the chain.
	r2 := r
	r2.PrevHash, r2.Hash, r2.JSON = []byte("p"), []byte("h"), []byte("j")
	if !bytes.Equal(first, audit.Canonical(r2)) {
		t.Error("Canonical reads PrevHash, Hash or the JSON field")
	}
	// No entities and no detail encode alike whether nil or empty.
	r3, r4 := canonRec(), canonRec()
	r3.Entities, r3.Detail = nil, nil
	r4.Entities, r4.Detail = []audit.Entity{}, map[string]string{}
	if !bytes.Equal(audit.Canonical(r3), audit.Canonical(r4)) {
		t.Error("nil and empty lists encode differently")
	}
}

// TestCanonicalCoversEverything changes each field, and moves bytes from one
// field into its neighbour: every change must change the encoding.
func TestCanonicalCoversEverything(t *testing.T) {
	base := canonRec()
	js := []byte(`{"a":1}`)
	tests := []struct {
		name string
		edit func(r *audit.Record, js *[]byte)
	}{
		{"seq", func(r *audit.Record, _ *[]byte) { r.Seq = 8 }},
		{"id", func(r *audit.Record, _ *[]byte) { r.ID = "ae-8" }},
		{"time by a microsecond", func(r *audit.Record, _ *[]byte) { r.Time = r.Time.Add(time.Microsecond) }},
		{"type", func(r *audit.Record, _ *[]byte) { r.Type = audit.TypeSecurityAlert }},
		{"subtype", func(r *audit.Record, _ *[]byte) { r.Subtype = audit.Read }},
		{"action", func(r *audit.Record, _ *[]byte) { r.Action = audit.ActionRead }},
		{"outcome", func(r *audit.Record, _ *[]byte) { r.Outcome = audit.Success }},
		{"outcome desc", func(r *audit.Record, _ *[]byte) { r.OutcomeDesc = "" }},
		{"client", func(r *audit.Record, _ *[]byte) { r.Agent.ClientID = "app-2" }},
		{"role", func(r *audit.Record, _ *[]byte) { r.Agent.Role = "admin" }},
		{"address", func(r *audit.Record, _ *[]byte) { r.Agent.Address = "192.0.2.11" }},
		{"patient", func(r *audit.Record, _ *[]byte) { r.PatientID = "p2" }},
		{"entity dropped", func(r *audit.Record, _ *[]byte) { r.Entities = r.Entities[:2] }},
		{"entity ref", func(r *audit.Record, _ *[]byte) { r.Entities[1].Ref = "CarePlan/cp1/_history/3" }},
		{"entity role", func(r *audit.Record, _ *[]byte) { r.Entities[1].Role = audit.RoleSecurityResource }},
		{"entities reordered", func(r *audit.Record, _ *[]byte) { r.Entities[0], r.Entities[1] = r.Entities[1], r.Entities[0] }},
		{"endpoint", func(r *audit.Record, _ *[]byte) { r.EndpointID = "ehr-2" }},
		{"detail value", func(r *audit.Record, _ *[]byte) { r.Detail["a"] = "9" }},
		{"detail key", func(r *audit.Record, _ *[]byte) { delete(r.Detail, "a"); r.Detail["A"] = "1" }},
		{"empty detail value dropped", func(r *audit.Record, _ *[]byte) { delete(r.Detail, "c") }},
		{"source", func(r *audit.Record, _ *[]byte) { r.Source = "other" }},
		// Moving bytes across a boundary keeps the concatenation but not the encoding.
		{"client into role", func(r *audit.Record, _ *[]byte) { r.Agent.ClientID, r.Agent.Role = "app-", "1clinician" }},
		{"outcome desc into client", func(r *audit.Record, _ *[]byte) { r.OutcomeDesc, r.Agent.ClientID = "bad paramete", "rapp-1" }},
		{"detail key into value", func(r *audit.Record, _ *[]byte) { delete(r.Detail, "b"); r.Detail["b2"] = "" }},
		{"two entities into one", func(r *audit.Record, _ *[]byte) {
			r.Entities = []audit.Entity{{Ref: "A/b", Role: "4"}, {Ref: "C/d", Role: "4"}}
		}},
	}
	want := audit.Canonical(base)
	seen := map[string]string{}
	for _, tt := range tests {
		r := canonRec()
		j := bytes.Clone(js)
		tt.edit(&r, &j)
		if tt.name == "two entities into one" {
			// The baseline for this one: the same two refs as one.
			one := canonRec()
			one.Entities = []audit.Entity{{Ref: "A/bC/d", Role: "44"}}
			if bytes.Equal(audit.Canonical(one), audit.Canonical(r)) {
				t.Errorf("%s: encodes alike", tt.name)
			}
		}
		got := audit.Canonical(r)
		if bytes.Equal(got, want) {
			t.Errorf("%s: the encoding did not change", tt.name)
		}
		if prev, dup := seen[string(got)]; dup {
			t.Errorf("%s encodes like %s", tt.name, prev)
		}
		seen[string(got)] = tt.name
	}
}

// chain builds n records as a store would: prepared, numbered, rendered, sealed.
func chain(t *testing.T, n int) []audit.Record {
	t.Helper()
	prev := audit.Genesis()
	var out []audit.Record
	for i := range n {
		out = append(out, link(t, audit.Record{
			Time: t0.Add(time.Duration(i) * time.Minute), Subtype: audit.Read, Agent: audit.Agent{ClientID: "app-1"},
			PatientID: "p" + strconv.Itoa(i%3), Entities: []audit.Entity{{Ref: fmt.Sprintf("Goal/g%d", i)}}, Source: source,
		}, int64(i+1), prev))
		prev = out[i].Hash
	}
	return out
}

// link prepares, numbers and seals one record after prev.
func link(t *testing.T, r audit.Record, seq int64, prev []byte) audit.Record {
	t.Helper()
	p, err := audit.Prepare(r)
	if err != nil {
		t.Fatal(err)
	}
	p.Seq, p.ID = seq, audit.IDFor(seq)
	return audit.Seal(p, prev)
}

// withJSON is rs with every record's JSON kept, as a store keeps it once
// the record was served.
func withJSON(t *testing.T, rs []audit.Record) []audit.Record {
	t.Helper()
	for i := range rs {
		js, err := audit.Render(rs[i])
		if err != nil {
			t.Fatal(err)
		}
		rs[i].JSON = js
	}
	return rs
}

func headOf(rs []audit.Record) *audit.Head {
	if len(rs) == 0 {
		return &audit.Head{Hash: audit.Genesis()}
	}
	last := rs[len(rs)-1]
	return &audit.Head{Seq: last.Seq, Hash: last.Hash}
}

// pruned is the chain of 10 pruned before record 5: records 5-10 and the
// prune record 11.
func pruned(t *testing.T) []audit.Record {
	t.Helper()
	rs := chain(t, 10)[4:]
	pr := audit.PruneRecord(audit.Record{Time: t0.Add(time.Hour), Agent: audit.Agent{ClientID: "operator"}, Source: source},
		t0.Add(4*time.Minute), 4, 5, rs[0].PrevHash)
	return append(rs, link(t, pr, 11, rs[len(rs)-1].Hash))
}

func TestVerify(t *testing.T) {
	tests := []struct {
		name string
		rows func(t *testing.T) []audit.Record
		// head is where the store says the chain ends; nil: the end of the
		// untampered chain (rows before tampering); noHead: not checked.
		head     func(rs []audit.Record) *audit.Head
		noHead   bool
		firstBad int64
	}{
		{name: "intact", rows: func(t *testing.T) []audit.Record { return chain(t, 6) }},
		{name: "empty", rows: func(t *testing.T) []audit.Record { return nil }},
		{name: "content altered", firstBad: 3, rows: func(t *testing.T) []audit.Record {
			rs := chain(t, 6)
			rs[2].PatientID = "someone-else"
			return rs
		}},
		{name: "intact, json kept", rows: func(t *testing.T) []audit.Record { return withJSON(t, chain(t, 6)) }},
		{name: "json altered", firstBad: 3, rows: func(t *testing.T) []audit.Record {
			rs := withJSON(t, chain(t, 6))
			rs[2].JSON = bytes.Replace(rs[2].JSON, []byte("Goal/g2"), []byte("Goal/g9"), 1)
			return rs
		}},
		{name: "altered and resealed", firstBad: 4, rows: func(t *testing.T) []audit.Record {
			rs := chain(t, 6)
			rs[2].PatientID = "someone-else"
			rs[2] = audit.Seal(rs[2], rs[2].PrevHash)
			return rs
		}},
		{name: "altered and resealed, json kept", firstBad: 3, rows: func(t *testing.T) []audit.Record {
			// The kept rendering no longer matches the resealed record.
			rs := withJSON(t, chain(t, 6))
			rs[2].PatientID = "someone-else"
			rs[2] = audit.Seal(rs[2], rs[2].PrevHash)
			return rs
		}},
		{name: "middle deleted", firstBad: 3, rows: func(t *testing.T) []audit.Record {
			return slices.Delete(chain(t, 6), 2, 3)
		}},
		{name: "first deleted", firstBad: 1, rows: func(t *testing.T) []audit.Record { return chain(t, 6)[1:] }},
		{name: "last deleted, found by the head", firstBad: 6, rows: func(t *testing.T) []audit.Record { return chain(t, 6)[:5] },
			head: func([]audit.Record) *audit.Head { return &audit.Head{Seq: 6} }},
		{name: "last deleted, no head to tell", noHead: true, rows: func(t *testing.T) []audit.Record { return chain(t, 6)[:5] }},
		{name: "repeated", firstBad: 3, rows: func(t *testing.T) []audit.Record {
			rs := chain(t, 6)
			return slices.Insert(rs, 3, rs[2])
		}},
		{name: "reordered", firstBad: 3, rows: func(t *testing.T) []audit.Record {
			rs := chain(t, 6)
			rs[2], rs[3] = rs[3], rs[2]
			return rs
		}},
		{name: "seqs swapped", firstBad: 3, rows: func(t *testing.T) []audit.Record {
			rs := chain(t, 6)
			rs[2], rs[4] = rs[4], rs[2]
			rs[2].Seq, rs[4].Seq = 3, 5
			return rs
		}},
		{name: "inserted past the head", firstBad: 7, rows: func(t *testing.T) []audit.Record {
			rs := chain(t, 6)
			extra := link(t, audit.Record{Time: t0, Subtype: audit.Read, Source: source}, 7, rs[5].Hash)
			return append(rs, extra)
		}, head: func(rs []audit.Record) *audit.Head { return headOf(rs[:6]) }},
		{name: "head hash differs", firstBad: 6, rows: func(t *testing.T) []audit.Record { return chain(t, 6) },
			head: func(rs []audit.Record) *audit.Head { return &audit.Head{Seq: 6, Hash: rs[4].Hash} }},
		{name: "first does not start at genesis", firstBad: 1, rows: func(t *testing.T) []audit.Record {
			rs := chain(t, 3)
			rs[0] = audit.Seal(rs[0], bytes.Repeat([]byte{1}, 32))
			return rs
		}},
		{name: "id of another record", firstBad: 2, rows: func(t *testing.T) []audit.Record {
			rs := chain(t, 3)
			rs[1].ID = "ae-9"
			rs[1] = audit.Seal(rs[1], rs[1].PrevHash)
			rs[2] = audit.Seal(rs[2], rs[1].Hash)
			return rs
		}},
		{name: "pruned", rows: pruned},
		{name: "pruned, then the front deleted", firstBad: 5, rows: func(t *testing.T) []audit.Record { return pruned(t)[1:] }},
		{name: "pruned, then a pruned record back", firstBad: 4, rows: func(t *testing.T) []audit.Record {
			return append([]audit.Record{chain(t, 10)[3]}, pruned(t)...)
		}},
		{name: "prune record altered", firstBad: 11, rows: func(t *testing.T) []audit.Record {
			rs := pruned(t)
			rs[6].Detail[audit.DetailFirstSeq] = "6"
			return rs
		}},
		{name: "prune record forged", firstBad: 5, rows: func(t *testing.T) []audit.Record {
			// Records deleted from the front and a prune record appended to
			// cover it, without the anchor (the deleted record's hash).
			rs := chain(t, 10)[4:]
			pr := audit.PruneRecord(audit.Record{Time: t0, Source: source}, t0, 4, 5, audit.Genesis())
			return append(rs, link(t, pr, 11, rs[len(rs)-1].Hash))
		}},
		{name: "prune record without a first seq", firstBad: 4, rows: func(t *testing.T) []audit.Record {
			rs := chain(t, 3)
			pr := audit.PruneRecord(audit.Record{Time: t0, Source: source}, t0, 0, 1, audit.Genesis())
			delete(pr.Detail, audit.DetailFirstSeq)
			return append(rs, link(t, pr, 4, rs[2].Hash))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := tt.rows(t)
			var head *audit.Head
			switch {
			case tt.noHead:
			case tt.head != nil:
				head = tt.head(rs)
			default:
				head = headOf(rs)
			}
			rep := audit.Verify(slices.Values(rs), head)
			if rep.FirstBad != tt.firstBad || rep.Intact != (tt.firstBad == 0) || (rep.Reason == "") != rep.Intact {
				t.Errorf("Verify = %+v, want first bad %d", rep, tt.firstBad)
			}
			if rep.Records != len(rs) {
				t.Errorf("Records = %d, want %d", rep.Records, len(rs))
			}
		})
	}
}

func TestVerifyReport(t *testing.T) {
	rs := pruned(t)
	got := audit.Verify(slices.Values(rs), headOf(rs))
	want := audit.Report{Intact: true, Records: 7, From: 5, To: 11, Head: hex.EncodeToString(rs[6].Hash)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Verify (-want +got):\n%s", diff)
	}
	empty := audit.Verify(slices.Values([]audit.Record(nil)), headOf(nil))
	if diff := cmp.Diff(audit.Report{Intact: true, Head: hex.EncodeToString(audit.Genesis())}, empty); diff != "" {
		t.Errorf("Verify(empty) (-want +got):\n%s", diff)
	}
	// A problem the caller found is reported at its seq.
	var v audit.Verifier
	for _, r := range chain(t, 3) {
		v.Add(r)
	}
	v.Fail(2, "entities do not decode")
	if rep := v.Report(nil); rep.Intact || rep.FirstBad != 2 || rep.Reason != "entities do not decode" {
		t.Errorf("Report after Fail = %+v", rep)
	}
}
