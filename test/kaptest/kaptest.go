// Package kaptest assembles a complete in-process kapfhir (real SQLite store in
// a temp dir, the real catalogue, app, fhir and api on one Echo server) for
// tests and benchmarks that need the whole HTTP surface without the binary.
package kaptest

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kapfhir/kapfhir/access"
	"github.com/kapfhir/kapfhir/api"
	"github.com/kapfhir/kapfhir/app"
	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/auth"
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
	// Access is the authorization server; every role has a registered
	// client (see Client).
	Access *access.Service
	keys   map[auth.Role]*ecdsa.PrivateKey
	kids   map[auth.Role]string

	mu      sync.Mutex
	clients map[auth.Role]*http.Client
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	acc, err := access.New(ctx, access.Options{Store: db, Issuer: base, DataDir: t.TempDir(), Source: svc.Installation(), TokenLifetime: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	env := &Env{URL: base, App: svc, Store: db, Clock: clock, Access: acc, keys: map[auth.Role]*ecdsa.PrivateKey{}, kids: map[auth.Role]string{}}
	for _, role := range []auth.Role{auth.RoleClinic, auth.RoleEHR, auth.RoleAdmin, auth.RoleAuditor} {
		path, err := acc.CreateKeyClient(ctx, "test-"+string(role), "test "+string(role), role, []string{"system/*.rs"}, audit.System)
		if err != nil {
			t.Fatal(err)
		}
		if env.keys[role], env.kids[role], err = access.ClientKey(path); err != nil {
			t.Fatal(err)
		}
	}
	e := server.New(server.Options{FHIR: fs, API: api.New(svc, ""), MaxBodyBytes: maxBody, Access: acc, Audit: db, Source: svc.Installation()})
	srv := httptest.NewUnstartedServer(e)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return env
}

// Token gets an access token for role's test client through POST /auth/token.
func (e *Env) Token(t testing.TB, role auth.Role) string {
	t.Helper()
	tok, err := auth.RequestToken(context.Background(), http.DefaultClient, e.URL+"/auth/token", "test-"+string(role), e.keys[role], e.kids[role], "system/*.rs")
	if err != nil {
		t.Fatalf("token for %s: %v", role, err)
	}
	return tok
}

// Client returns an HTTP client that sends role's bearer token (one token
// per role and Env, valid for an hour).
func (e *Env) Client(t testing.TB, role auth.Role) *http.Client {
	t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if c, ok := e.clients[role]; ok {
		return c
	}
	if e.clients == nil {
		e.clients = map[auth.Role]*http.Client{}
	}
	c := &http.Client{Transport: bearer{token: e.Token(t, role), next: http.DefaultTransport}}
	e.clients[role] = c
	return c
}

// WithToken returns a transport that sends token as a bearer token over next.
func WithToken(token string, next http.RoundTripper) http.RoundTripper {
	return bearer{token: token, next: next}
}

type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
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

// SQLiteBytes returns the raw bytes of the SQLite database file name in dir
// and of its WAL (where recent rows are), to check what is, and is not,
// written at rest.
func SQLiteBytes(t testing.TB, dir, name string) []byte {
	t.Helper()
	var all []byte
	for _, f := range []string{name, name + "-wal"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	return all
}
