package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"iter"
	"slices"
	"strconv"
)

// The hash chain. Record n's Hash is
//
//	SHA-256(PrevHash || Canonical(record))
//
// where PrevHash is record n-1's Hash, or Genesis for record 1. Seqs are
// contiguous. Pruning deletes a prefix of the chain and appends a prune
// record (PruneRecord) whose detail names the first remaining seq and that
// record's PrevHash (the anchor), so the shortened chain still verifies
// and a later deletion from its front does not.
//
// The chain covers a record's facts, not its FHIR rendering: the
// AuditEvent JSON is a deterministic function of them (Render), made the
// first time the record is served and kept; Verify renders again every
// record that has JSON kept and reports one whose JSON differs. So the
// write path that every audited request waits for does no FHIR rendering.

// HashSize is the length of a hash.
const HashSize = sha256.Size

// Genesis is the PrevHash of the first record: 32 zero bytes.
func Genesis() []byte { return make([]byte, HashSize) }

// canonicalVersion starts every canonical encoding; a change of encoding
// needs a new one.
const canonicalVersion = "kapfhir-audit-v2"

// Canonical is the deterministic encoding of a record that its hash covers:
// every stored field, each length-prefixed so no field's bytes can be
// moved into another. In order:
//
//	str  "kapfhir-audit-v2"
//	int  Seq
//	str  ID
//	int  Time, Unix microseconds
//	str  Type, Subtype, Action
//	int  Outcome
//	str  OutcomeDesc, Agent.ClientID, Agent.Role, Agent.Address, PatientID
//	int  number of entities, then for each: str Ref, Identifier, Query, Role
//	str  EndpointID
//	int  number of detail entries, then for each, by key: str key, str value
//	str  Source
//
// where int is 8 bytes big-endian (two's complement) and str is its length
// as an int followed by its bytes. r's JSON, PrevHash and Hash fields are
// not read (Hash chains PrevHash).
func Canonical(r Record) []byte {
	n := 256 + len(r.OutcomeDesc)
	for _, e := range r.Entities {
		n += 32 + len(e.Ref) + len(e.Identifier) + len(e.Query)
	}
	for k, v := range r.Detail {
		n += 16 + len(k) + len(v)
	}
	b := make([]byte, 0, n)
	i64 := func(v int64) { b = binary.BigEndian.AppendUint64(b, uint64(v)) }
	str := func(s string) { i64(int64(len(s))); b = append(b, s...) }
	str(canonicalVersion)
	i64(r.Seq)
	str(r.ID)
	i64(r.Time.UnixMicro())
	str(string(r.Type))
	str(string(r.Subtype))
	str(string(r.Action))
	i64(int64(r.Outcome))
	str(r.OutcomeDesc)
	str(r.Agent.ClientID)
	str(r.Agent.Role)
	str(r.Agent.Address)
	str(r.PatientID)
	i64(int64(len(r.Entities)))
	for _, e := range r.Entities {
		str(e.Ref)
		str(e.Identifier)
		str(e.Query)
		str(string(e.Role))
	}
	str(r.EndpointID)
	keys := make([]string, 0, len(r.Detail))
	for k := range r.Detail {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	i64(int64(len(keys)))
	for _, k := range keys {
		str(k)
		str(r.Detail[k])
	}
	str(r.Source)
	return b
}

// Hash chains a record's canonical encoding to the previous hash.
func Hash(prev, canonical []byte) []byte {
	h := sha256.New()
	h.Write(prev)
	h.Write(canonical)
	return h.Sum(nil)
}

// Seal sets r's PrevHash to prev and its Hash (r.Seq and r.ID must be set).
func Seal(r Record, prev []byte) Record {
	r.PrevHash = bytes.Clone(prev)
	r.Hash = Hash(r.PrevHash, Canonical(r))
	return r
}

// Report is the result of verifying a chain.
type Report struct {
	// Intact is true when every record verifies and nothing is missing.
	Intact bool
	// Records is how many records were read.
	Records int
	// From and To are the first and last seq read (0 when none).
	From, To int64
	// Head is the hex hash of the last record read (of Genesis when none):
	// kept outside the database, it lets a later check prove that nothing
	// up to here was rewritten.
	Head string
	// FirstBad is the lowest seq found missing, altered or out of place (0 when intact).
	FirstBad int64
	// Reason says what is wrong at FirstBad ("" when intact).
	Reason string
}

// Verifier checks a chain record by record, in seq order, in constant memory.
type Verifier struct {
	n      int
	first  Record // Seq and PrevHash of the first record
	last   Record // Seq and Hash of the last record
	prune  *pruneAnchor
	bad    int64
	reason string
}

// pruneAnchor is what the latest prune record says the chain starts with.
type pruneAnchor struct {
	seq      int64 // the prune record's own seq
	firstSeq int64
	anchor   string
	unknown  bool // the record was altered: firstSeq and anchor are not known
}

// fail records a problem at seq unless one at a lower seq is known.
func (v *Verifier) fail(seq int64, reason string) {
	if v.bad == 0 || seq < v.bad {
		v.bad, v.reason = seq, reason
	}
}

// Fail records a problem the caller found with the record at seq (e.g. a
// stored column that does not decode).
func (v *Verifier) Fail(seq int64, reason string) { v.fail(seq, reason) }

// Add checks the next record. Records must come in ascending seq order.
func (v *Verifier) Add(r Record) {
	if v.n == 0 {
		v.first = Record{Seq: r.Seq, PrevHash: bytes.Clone(r.PrevHash)}
	} else {
		switch {
		case r.Seq <= v.last.Seq:
			v.fail(r.Seq, fmt.Sprintf("record %d is out of order or repeated (after record %d)", r.Seq, v.last.Seq))
		case r.Seq != v.last.Seq+1:
			v.fail(v.last.Seq+1, fmt.Sprintf("record %d is missing (the next is %d)", v.last.Seq+1, r.Seq))
		case !bytes.Equal(r.PrevHash, v.last.Hash):
			v.fail(r.Seq, fmt.Sprintf("record %d does not link to record %d", r.Seq, v.last.Seq))
		}
	}
	sound := bytes.Equal(Hash(r.PrevHash, Canonical(r)), r.Hash)
	if !sound {
		v.fail(r.Seq, fmt.Sprintf("record %d does not match its hash: it was altered", r.Seq))
	} else if len(r.JSON) > 0 {
		if js, err := Render(r); err != nil || !bytes.Equal(js, r.JSON) {
			v.fail(r.Seq, fmt.Sprintf("record %d's AuditEvent JSON is not its rendering: it was altered", r.Seq))
		}
	}
	if r.ID != IDFor(r.Seq) {
		v.fail(r.Seq, fmt.Sprintf("record %d has the id of another record", r.Seq))
	}
	if r.Subtype == Prune {
		// Only a sound prune record says where the chain starts; after an
		// altered one, where it starts cannot be judged.
		first, err := strconv.ParseInt(r.Detail[DetailFirstSeq], 10, 64)
		switch {
		case !sound:
			v.prune = &pruneAnchor{seq: r.Seq, unknown: true}
		case err != nil || first <= 0 || first > r.Seq:
			v.fail(r.Seq, fmt.Sprintf("prune record %d has no valid first seq", r.Seq))
			v.prune = &pruneAnchor{seq: r.Seq, unknown: true}
		default:
			v.prune = &pruneAnchor{seq: r.Seq, firstSeq: first, anchor: r.Detail[DetailAnchor]}
		}
	}
	v.last = Record{Seq: r.Seq, Hash: bytes.Clone(r.Hash)}
	v.n++
}

// Report finishes the check. head, when not nil, is where the store says
// the chain ends; records missing after the last one read are then found too.
func (v *Verifier) Report(head *Head) Report {
	rep := Report{Records: v.n, Head: hex.EncodeToString(Genesis())}
	if v.n > 0 {
		rep.From, rep.To, rep.Head = v.first.Seq, v.last.Seq, hex.EncodeToString(v.last.Hash)
		// The front: the genesis record, or where the latest prune left it.
		switch p := v.prune; {
		case p != nil && p.unknown:
		case p == nil && v.first.Seq != 1:
			v.fail(1, fmt.Sprintf("records 1 to %d are missing and no prune record accounts for them", v.first.Seq-1))
		case p == nil && !bytes.Equal(v.first.PrevHash, Genesis()):
			v.fail(1, "record 1 does not start the chain")
		case p != nil && v.first.Seq > p.firstSeq:
			v.fail(p.firstSeq, fmt.Sprintf("records %d to %d are missing: prune record %d left the chain starting at %d", p.firstSeq, v.first.Seq-1, p.seq, p.firstSeq))
		case p != nil && v.first.Seq < p.firstSeq:
			v.fail(v.first.Seq, fmt.Sprintf("record %d precedes where prune record %d left the chain (%d)", v.first.Seq, p.seq, p.firstSeq))
		case p != nil && hex.EncodeToString(v.first.PrevHash) != p.anchor:
			v.fail(v.first.Seq, fmt.Sprintf("record %d does not link to the anchor of prune record %d", v.first.Seq, p.seq))
		}
	}
	if head != nil {
		switch {
		case head.Seq > v.last.Seq:
			v.fail(v.last.Seq+1, fmt.Sprintf("records %d to %d are missing (the chain's head is %d)", v.last.Seq+1, head.Seq, head.Seq))
		case head.Seq < v.last.Seq:
			v.fail(head.Seq+1, fmt.Sprintf("records %d to %d are past the chain's head", head.Seq+1, v.last.Seq))
		case v.n > 0 && !bytes.Equal(head.Hash, v.last.Hash):
			v.fail(v.last.Seq, fmt.Sprintf("record %d is not the chain's head", v.last.Seq))
		}
	}
	rep.FirstBad, rep.Reason = v.bad, v.reason
	rep.Intact = v.bad == 0
	return rep
}

// Verify checks the records of rows, which must come in ascending seq
// order, against each other and, when head is not nil, against the head.
func Verify(rows iter.Seq[Record], head *Head) Report {
	var v Verifier
	for r := range rows {
		v.Add(r)
	}
	return v.Report(head)
}
