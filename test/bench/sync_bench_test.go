package bench

// Sync throughput and drain benchmarks (issue: EHR sync). They run the real
// engine on a real SQLite store against an in-process EHR that answers
// conditional updates after an injected latency:
//
//	go test ./test/bench -run '^$' -bench Sync -benchtime 1x
//
// Throughput is compared with its bound, concurrency/latency, measured in the
// same run; the drain benchmark compares the time to drain a backlog under a
// rate limit with backlog/rate. KAPFHIR_BENCH_BACKLOG sets the drain backlog
// (default 1000; the figure is 10000: 500 s at 20/s).

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kapfhir/kapfhir/adapter/ehrclient"
	"github.com/kapfhir/kapfhir/adapter/engine"
	"github.com/kapfhir/kapfhir/app"
	"github.com/kapfhir/kapfhir/endpoint"
	"github.com/kapfhir/kapfhir/outbox"
	"github.com/kapfhir/kapfhir/store/sqlite"
	"github.com/kapfhir/kapfhir/test/kaptest"
	"github.com/kapfhir/kapfhir/treatment"
)

// ehrStats counts the fake EHR's requests (searches and writes) and the
// time they took.
type ehrStats struct {
	requests atomic.Int64
	busy     atomic.Int64 // nanoseconds spent answering
}

// latency is the mean time the EHR took to answer a request, as measured.
func (s *ehrStats) latency() time.Duration {
	if n := s.requests.Load(); n > 0 {
		return time.Duration(s.busy.Load() / n)
	}
	return 0
}

// fakeEHR answers what the engine asks, each search and write after
// latency; with tx it also takes transaction Bundles (each one request,
// after the same latency, whatever its size) of at most txMax entries
// (0: any number; Medplum takes 8 when they are conditional updates).
func fakeEHR(latency time.Duration, st *ehrStats, tx bool, txMax int) *httptest.Server {
	interactions := ""
	if tx {
		interactions = `,"interaction":[{"code":"transaction"}]`
	}
	metadata := `{"resourceType":"CapabilityStatement","status":"active","date":"2026-01-01","kind":"instance","fhirVersion":"4.0.1","format":["json"],"rest":[{"mode":"server","resource":[` +
		`{"type":"Patient","interaction":[{"code":"read"},{"code":"search-type"}]},` +
		`{"type":"Goal","interaction":[{"code":"update"},{"code":"create"},{"code":"search-type"}],"conditionalUpdate":true},` +
		`{"type":"Appointment","interaction":[{"code":"update"},{"code":"create"},{"code":"search-type"}],"conditionalUpdate":true},` +
		`{"type":"CarePlan","interaction":[{"code":"update"},{"code":"create"},{"code":"search-type"}],"conditionalUpdate":true},` +
		`{"type":"Observation","interaction":[{"code":"update"},{"code":"create"},{"code":"search-type"}],"conditionalUpdate":true}]` + interactions + `}]}`
	var n atomic.Int64
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/fhir+json")
		if r.URL.Path == "/fhir/metadata" {
			w.Write([]byte(metadata))
			return
		}
		// The injected EHR latency. This is a benchmark of wall-clock
		// throughput against a latency bound, so the wait is real time
		// (a synctest bubble would measure a simulation, not kapfhir);
		// it ends early if the client goes away.
		start := time.Now()
		t := time.NewTimer(latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
		defer func() { st.requests.Add(1); st.busy.Add(int64(time.Since(start))) }()
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/fhir/Patient":
			// Every patient exists, with the identifier searched for
			// (identifier=s|a,s|b,... is any of them).
			var entries []string
			for _, ident := range strings.Split(r.URL.Query().Get("identifier"), ",") {
				system, value, _ := strings.Cut(ident, "|")
				entries = append(entries, fmt.Sprintf(`{"resource":{"resourceType":"Patient","id":"ehr-%s","identifier":[{"system":%q,"value":%q}]},"search":{"mode":"match"}}`, value, system, value))
			}
			fmt.Fprintf(w, `{"resourceType":"Bundle","type":"searchset","entry":[%s]}`, strings.Join(entries, ","))
		case tx && r.Method == http.MethodPost && r.URL.Path == "/fhir":
			// A transaction of conditional updates: every entry created.
			var b struct {
				Entry []struct{ Request struct{ URL string } }
			}
			if err := json.NewDecoder(r.Body).Decode(&b); err != nil || (txMax > 0 && len(b.Entry) > txMax) {
				http.Error(w, "refused", http.StatusBadRequest)
				return
			}
			out := make([]string, len(b.Entry))
			for i, e := range b.Entry {
				typ, _, _ := strings.Cut(e.Request.URL, "?")
				out[i] = fmt.Sprintf(`{"response":{"status":"201 Created","location":"%s/e%d/_history/1","etag":"W/\"1\""}}`, typ, n.Add(1))
			}
			fmt.Fprintf(w, `{"resourceType":"Bundle","type":"transaction-response","entry":[%s]}`, strings.Join(out, ","))
		case r.Method == http.MethodPut:
			typ := strings.TrimPrefix(r.URL.Path, "/fhir/")
			id := n.Add(1)
			w.Header().Set("Location", fmt.Sprintf("/fhir/%s/e%d/_history/1", typ, id))
			w.Header().Set("ETag", `W/"1"`)
			w.WriteHeader(http.StatusCreated)
		default:
			http.Error(w, "not found", http.StatusNotFound)
		}
	}))
}

// syncFixture is a SQLite store holding programmes of patients; each
// benchmark adds its own endpoint and backfills it.
type syncFixture struct {
	db     *sqlite.DB
	system string
	items  int
}

func newSyncFixture(b *testing.B, patients int) *syncFixture {
	b.Helper()
	ctx := context.Background()
	db := kaptest.Store(b)
	svc, err := app.New(ctx, app.Options{Store: db, Catalogue: kaptest.Catalogue(b), Calendar: treatment.DefaultCalendar(time.UTC)})
	if err != nil {
		b.Fatal(err)
	}
	for i := range patients {
		p, err := svc.CreatePatient(ctx, app.PatientInput{
			Identifiers: []treatment.Identifier{{System: "https://clinic.example/mrn", Value: fmt.Sprintf("B%05d", i)}},
			Family:      "Bench", BirthDate: "1980-01-01", Gender: "other",
		})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := svc.CreateProgram(ctx, app.ProgramInput{PatientID: p.ID, ProtocolID: "ketamine-iv-6x-3wk", Start: "2027-01-04T09:00", Timezone: "UTC"}); err != nil {
			b.Fatal(err)
		}
	}
	return &syncFixture{db: db, system: svc.IdentifierSystem()}
}

// drain adds endpoint ep, backfills it and runs a worker until its queue is
// empty; it returns the items sent and the time taken.
func (f *syncFixture) drain(b *testing.B, ep endpoint.Endpoint) (int, time.Duration) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	now := time.Now().UTC()
	if err := f.db.PutEndpoint(ctx, endpoint.Stored{Endpoint: ep, Source: endpoint.SourceAPI, AuthState: endpoint.AuthOK, Created: now, Updated: now}); err != nil {
		b.Fatal(err)
	}
	client, err := ehrclient.New(ep, ehrclient.Options{})
	if err != nil {
		b.Fatal(err)
	}
	n, err := f.db.Backfill(ctx, ep.ID, ep.ResourceTypes, now)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	var closed atomic.Bool
	check := func() {
		st, err := f.db.Stats(ctx, ep.ID)
		if err == nil && st.Backlog() == 0 && closed.CompareAndSwap(false, true) {
			close(done)
		}
	}
	w := engine.New(engine.Options{Source: "urn:uuid:bench",
		Endpoint: ep, IdentifierSystem: f.system, Store: f.db, EHR: client, Owner: "bench",
		Poll: 10 * time.Millisecond, OnBatch: check,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	start := time.Now()
	go w.Run(ctx)
	<-done
	elapsed := time.Since(start)
	st, err := f.db.Stats(ctx, ep.ID)
	if err != nil {
		b.Fatal(err)
	}
	if st.ByState[outbox.Succeeded] != n {
		b.Fatalf("%d of %d items succeeded: %+v", st.ByState[outbox.Succeeded], n, st.ByState)
	}
	return n, elapsed
}

func benchEndpoint(id, url string) endpoint.Endpoint {
	ep := endpoint.Defaults()
	ep.ID, ep.Name, ep.FHIRBaseURL = id, id, url+"/fhir"
	ep.Auth = endpoint.Auth{Type: endpoint.AuthNone}
	ep.PatientIdentifierSystem = "https://clinic.example/mrn"
	ep.RateLimit = endpoint.RateLimit{PerSecond: 1000, Burst: 1000}
	return ep
}

// strategies are the ways the engine writes: one conditional update per
// resource (an EHR without transactions), or a transaction Bundle per
// patient batch, to an EHR that takes any size or at most 8 entries (as
// Medplum does: the engine learns the bound, and the CarePlan travels with
// each of the three Bundles a 16-resource batch then takes).
var strategies = []struct {
	name  string
	tx    bool
	txMax int
}{{"one-by-one", false, 0}, {"transactions", true, 0}, {"transactions-max8", true, 8}}

// BenchmarkSyncThroughput pushes to an EHR with 20 ms latency at
// concurrency 1, 4 and 16, writing one resource per request or a patient's
// batch per transaction. The bound is concurrency / latency, with the
// latency the EHR actually took, measured in the same run: requests/s
// against it is how busy the engine keeps its connections (x-bound-requests),
// items/s against it the ratio (x-bound).
func BenchmarkSyncThroughput(b *testing.B) {
	const latency = 20 * time.Millisecond
	f := newSyncFixture(b, 96)
	run := 0
	for _, s := range strategies {
		var st ehrStats
		ehr := fakeEHR(latency, &st, s.tx, s.txMax)
		defer ehr.Close()
		for _, c := range []int{1, 4, 16} {
			b.Run(fmt.Sprintf("%s/concurrency-%d", s.name, c), func(b *testing.B) {
				for b.Loop() {
					run++
					ep := benchEndpoint(fmt.Sprintf("tp-%d-%d", c, run), ehr.URL)
					ep.Concurrency = c
					st.requests.Store(0)
					st.busy.Store(0)
					n, d := f.drain(b, ep)
					rate := float64(n) / d.Seconds()
					reqs := float64(st.requests.Load())
					bound := float64(c) / st.latency().Seconds()
					b.ReportMetric(float64(st.latency().Microseconds())/1000, "latency-ms")
					b.ReportMetric(reqs/float64(n), "requests/item")
					b.ReportMetric(rate, "items/s")
					b.ReportMetric(bound, "bound/s")
					b.ReportMetric(rate/bound, "x-bound")
					b.ReportMetric(reqs/d.Seconds()/bound, "x-bound-requests")
					b.ReportMetric(float64(n), "items")
				}
			})
		}
	}
}

// BenchmarkSyncDrain drains a backlog under a 20/s rate limit, writing one
// resource per request or a patient's batch per transaction; the goal is a
// drain time at most 1.1 × backlog/rate.
func BenchmarkSyncDrain(b *testing.B) {
	backlog := 1000
	if v, err := strconv.Atoi(os.Getenv("KAPFHIR_BENCH_BACKLOG")); err == nil && v > 0 {
		backlog = v
	}
	const rate = 20.0
	// A 6-infusion programme has 16 synced resources (13 Appointments, a
	// CarePlan, 2 Goals).
	f := newSyncFixture(b, (backlog+15)/16)
	run := 0
	for _, s := range strategies {
		var st ehrStats
		ehr := fakeEHR(0, &st, s.tx, s.txMax)
		defer ehr.Close()
		b.Run(s.name, func(b *testing.B) {
			for b.Loop() {
				run++
				ep := benchEndpoint(fmt.Sprintf("drain-%d", run), ehr.URL)
				ep.Concurrency = 4
				ep.RateLimit = endpoint.RateLimit{PerSecond: rate, Burst: 1}
				st.requests.Store(0)
				n, d := f.drain(b, ep)
				bound := time.Duration(float64(n) / rate * float64(time.Second))
				b.ReportMetric(float64(n), "items")
				b.ReportMetric(d.Seconds(), "drain-s")
				b.ReportMetric(bound.Seconds(), "bound-s")
				b.ReportMetric(float64(st.requests.Load())/float64(n), "requests/item")
				b.ReportMetric(d.Seconds()/bound.Seconds(), "x-bound")
			}
		})
	}
}
