package sqlite_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/endpoint"
	"github.com/kapfhir/kapfhir/resource"
	"github.com/kapfhir/kapfhir/store"
	"github.com/kapfhir/kapfhir/store/sqlite"
)

// The benchmark fixture: benchPatients patients with benchPerPatient
// appointments each, 100,000 resources in all. It is built once per test
// binary run and shared by the benchmarks.
const (
	benchPatients   = 1000
	benchPerPatient = 99
)

var bench struct {
	once sync.Once
	dir  string
	db   *sqlite.DB
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bench.db != nil {
		bench.db.Close()
	}
	if bench.dir != "" {
		os.RemoveAll(bench.dir)
	}
	os.Exit(code)
}

// benchDB returns the shared 100k-resource store, building it on first use.
func benchDB(b *testing.B) *sqlite.DB {
	b.Helper()
	bench.once.Do(func() {
		bench.dir, bench.err = os.MkdirTemp("", "kapfhir-bench-")
		if bench.err != nil {
			return
		}
		bench.db, bench.err = buildFixture(context.Background(), filepath.Join(bench.dir, "kapfhir.db"))
	})
	if bench.err != nil {
		b.Fatalf("build fixture: %v", bench.err)
	}
	return bench.db
}

func buildFixture(ctx context.Context, path string) (*sqlite.DB, error) {
	db, err := sqlite.Open(ctx, path)
	if err != nil {
		return nil, err
	}
	if _, err := db.Migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	base := time.Date(2026, 1, 5, 9, 0, 0, 0, time.UTC)
	const perTx = 100 // patients per transaction: 10 transactions of 10,000 resources
	for first := 0; first < benchPatients; first += perTx {
		err := db.InTx(ctx, func(tx store.Tx) error {
			for p := first; p < first+perTx; p++ {
				pid := fmt.Sprintf("pat-%04d", p)
				w := resource.Write{
					Version: resource.Version{Type: "Patient", ID: pid, VersionID: 1, LastUpdated: base, JSON: []byte("Patient/" + pid)},
					Hash:    []byte(pid),
					Index:   resource.Index{Tokens: []resource.Token{{Param: "identifier", System: "urn:mrn", Code: pid}}},
				}
				if err := tx.PutVersion(ctx, w); err != nil {
					return err
				}
				for a := range benchPerPatient {
					aid := fmt.Sprintf("appt-%04d-%02d", p, a)
					start := base.Add(time.Duration(a) * 24 * time.Hour)
					w := resource.Write{
						Version: resource.Version{Type: "Appointment", ID: aid, VersionID: 1, LastUpdated: base, JSON: []byte("Appointment/" + aid)},
						Hash:    []byte(aid),
						Index: resource.Index{
							Tokens:   []resource.Token{{Param: "status", System: "http://hl7.org/fhir/appointmentstatus", Code: "booked"}},
							Refs:     []resource.Ref{{Param: "patient", Target: "Patient/" + pid}, {Param: "actor", Target: "Patient/" + pid}},
							Dates:    []resource.Date{{Param: "date", Lo: start, Hi: start.Add(2 * time.Hour)}},
							SortDate: start,
						},
					}
					if err := tx.PutVersion(ctx, w); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			db.Close()
			return nil, err
		}
	}
	return db, nil
}

// BenchmarkRead reads one resource from a store of 100,000.
func BenchmarkRead(b *testing.B) {
	db := benchDB(b)
	ctx := b.Context()
	for b.Loop() {
		if _, err := db.Read(ctx, "Appointment", "appt-0500-42"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSearch finds a patient's booked appointments, first page of 20 by date.
func BenchmarkSearch(b *testing.B) {
	db := benchDB(b)
	ctx := b.Context()
	q := resource.Query{
		Type:   "Appointment",
		Refs:   []resource.RefFilter{{Param: "patient", Targets: []string{"Patient/pat-0500"}}},
		Tokens: []resource.TokenFilter{{Param: "status", Values: []resource.TokenValue{{AnySystem: true, Code: "booked"}}}},
		Sort:   resource.SortDate,
		Count:  20,
	}
	for b.Loop() {
		page, err := db.Search(ctx, q)
		if err != nil {
			b.Fatal(err)
		}
		if page.Total != benchPerPatient || len(page.Versions) != 20 {
			b.Fatalf("Search = %d of %d, want 20 of %d", len(page.Versions), page.Total, benchPerPatient)
		}
	}
}

// BenchmarkBackfill enqueues all 100,000 resources for an endpoint (the
// first run inserts the items, later ones coalesce into them), then checks
// the patient attribution of one.
func BenchmarkBackfill(b *testing.B) {
	db := benchDB(b)
	ctx := b.Context()
	now := time.Date(2026, 4, 1, 9, 0, 0, 0, time.UTC)
	e := endpoint.Stored{Endpoint: endpoint.Defaults(), Source: endpoint.SourceAPI, Created: now, Updated: now}
	e.ID = "bench-ehr"
	if err := db.PutEndpoint(ctx, e); err != nil {
		b.Fatal(err)
	}
	want := benchPatients * (1 + benchPerPatient)
	for b.Loop() {
		n, err := db.Backfill(ctx, e.ID, []string{"Patient", "Appointment"}, now)
		if err != nil || n != want {
			b.Fatalf("Backfill = %d, %v; want %d", n, err, want)
		}
	}
	links, err := db.Links(ctx, e.ID, []resource.Key{{Type: "Appointment", ID: "appt-0500-42"}})
	if err != nil || links[resource.Key{Type: "Appointment", ID: "appt-0500-42"}].PatientID != "pat-0500" {
		b.Fatalf("Links = %+v, %v; want the appointment of pat-0500", links, err)
	}
}

// BenchmarkAppendAudit appends audit records in batches of the sizes group
// commit makes (one record per audited read): the time per batch is what
// a read waits for before it is answered.
func BenchmarkAppendAudit(b *testing.B) {
	for _, n := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("batch-%d", n), func(b *testing.B) {
			db, err := sqlite.Open(b.Context(), filepath.Join(b.TempDir(), "k.db"))
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			if _, err := db.Migrate(b.Context()); err != nil {
				b.Fatal(err)
			}
			recs := make([]audit.Record, n)
			for i := range recs {
				recs[i] = audit.Record{Time: time.Now(), Subtype: audit.Read, Source: "urn:uuid:bench", PatientID: "pat-1",
					Agent: audit.Agent{ClientID: "test-ehr", Role: "ehr", Address: "127.0.0.1"}, Entities: []audit.Entity{{Ref: "CarePlan/cp-1"}}}
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := db.AppendAudit(b.Context(), recs...); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*n), "us/record")
		})
	}
}
