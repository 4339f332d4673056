package audit_test

import (
	"testing"
	"time"

	"github.com/kapfhir/kapfhir/audit"
)

func readRecord() audit.Record {
	return audit.Record{Seq: 42, ID: audit.IDFor(42), Time: time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC), Subtype: audit.Read, Outcome: audit.Success,
		Source: "kapfhir-test", Agent: audit.Agent{ClientID: "test-ehr", Role: "ehr", Address: "127.0.0.1"},
		Entities: []audit.Entity{{Ref: "CarePlan/cp-1"}}, PatientID: "pat-1"}
}

func BenchmarkRender(b *testing.B) {
	r, err := audit.Prepare(readRecord())
	if err != nil {
		b.Fatal(err)
	}
	r.Seq, r.ID = 42, audit.IDFor(42)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := audit.Render(r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSeal(b *testing.B) {
	r, _ := audit.Prepare(readRecord())
	r.Seq, r.ID = 42, audit.IDFor(42)
	r.JSON, _ = audit.Render(r)
	prev := audit.Genesis()
	b.ReportAllocs()
	for b.Loop() {
		audit.Seal(r, prev)
	}
}
