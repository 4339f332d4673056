// Package kaptest assembles a complete in-process kapfhir (real SQLite store in
// a temp dir, the real catalogue, app, fhir and api on one Echo server) for
// tests and benchmarks that need the whole HTTP surface without the binary.
package kaptest

import (
	"context"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kapfhir/kapfhir/api"
	"github.com/kapfhir/kapfhir/app"
	"github.com/kapfhir/kapfhir/catalogue"
	"github.com/kapfhir/kapfhir/fhir"
	"github.com/kapfhir/kapfhir/server"
	"github.com/kapfhir/kapfhir/store/sqlite"
	"github.com/kapfhir/kapfhir/treatment"
)

// Env is a running in-process kapfhir.
type Env struct {
	URL   string // base URL of the test server
	App   *app.Service
	Store *sqlite.DB
	Clock *Clock
}

// Clock is a settable clock.
type Clock struct{ now atomic.Int64 }

// Now returns the clock's time.
func (c *Clock) Now() time.Time { return time.Unix(0, c.now.Load()).UTC() }

// Set sets the clock.
func (c *Clock) Set(t time.Time) { c.now.Store(t.UnixNano()) }

// Advance moves the clock forward.
func (c *Clock) Advance(d time.Duration) { c.now.Add(int64(d)) }

// Start is the clock's initial time: 2026-11-20 12:00 UTC.
var Start = time.Date(2026, 11, 20, 12, 0, 0, 0, time.UTC)

// New starts an Env with SQLite in a temp dir, deterministic ids
// ("id-0001", ...), a settable clock and the default clinic calendar in
// America/New_York. maxBody caps request bodies (0 = 1 MiB).
func New(t testing.TB, maxBody int64) *Env {
	t.Helper()
	ctx := context.Background()
	db := Store(t)
	cat := Catalogue(t)
	loc, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	clock := &Clock{}
	clock.Set(Start)
	var n atomic.Int64
	svc, err := app.New(ctx, app.Options{
		Store: db, Catalogue: cat, Calendar: treatment.DefaultCalendar(loc),
		CanonicalBase: "https://kapfhir.org/fhir", IdentifierSystem: "urn:uuid:00000000-0000-4000-8000-000000000000",
		Now: clock.Now, NewID: func() string { return fmt.Sprintf("id-%04d", n.Add(1)) },
	})
	if err != nil {
		t.Fatal(err)
	}
	fs, err := fhir.New(db, fhir.Options{Software: "kapfhir test", Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if maxBody == 0 {
		maxBody = 1 << 20
	}
	e := server.New(server.Options{FHIR: fs, API: api.New(svc, ""), MaxBodyBytes: maxBody})
	srv := httptest.NewServer(e)
	t.Cleanup(srv.Close)
	return &Env{URL: srv.URL, App: svc, Store: db, Clock: clock}
}

// Store returns a migrated SQLite store in a temp dir, closed at cleanup.
func Store(t testing.TB) *sqlite.DB {
	t.Helper()
	ctx := context.Background()
	db, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "kapfhir.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if _, err := db.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return db
}

// Catalogue returns the shipped protocol catalogue.
func Catalogue(t testing.TB) *catalogue.Catalogue {
	t.Helper()
	cat, err := catalogue.Load("")
	if err != nil {
		t.Fatal(err)
	}
	return cat
}
