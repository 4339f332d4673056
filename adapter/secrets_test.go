package adapter_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"

	"github.com/kapfhir/kapfhir/adapter"
	"github.com/kapfhir/kapfhir/endpoint"
	"github.com/kapfhir/kapfhir/seal"
	"github.com/kapfhir/kapfhir/store/postgres"
	"github.com/kapfhir/kapfhir/store/sqlite"
	"github.com/kapfhir/kapfhir/test/kaptest"
	"github.com/kapfhir/kapfhir/test/pgtest"
)

// The secrets of the test endpoints: none may be found in the database.
const (
	bearerToken  = "B3arer-token-7f3a0c"
	clientSecret = "cl1ent-S3cret-9c2e55"
)

// fakeEHR is an EHR and its token endpoint on loopback. It records the
// credentials it receives: "bearer TOKEN", "basic ID:SECRET", or
// "assertion KID" for a client assertion that verifies with pub.
type fakeEHR struct {
	t   *testing.T
	srv *httptest.Server
	pub *ecdsa.PublicKey

	mu   sync.Mutex
	seen []string
}

func newFakeEHR(t *testing.T, pub *ecdsa.PublicKey) *fakeEHR {
	f := &fakeEHR{t: t, pub: pub}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeEHR) record(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen = append(f.seen, s)
}

// received returns what was recorded since the last call.
func (f *fakeEHR) received() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.seen
	f.seen = nil
	return s
}

func (f *fakeEHR) serve(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/fhir/metadata":
		w.Header().Set("Content-Type", "application/fhir+json")
		io.WriteString(w, `{"resourceType":"CapabilityStatement","status":"active","date":"2026-01-01","kind":"instance","fhirVersion":"4.0.1","format":["json"],
"rest":[{"mode":"server","resource":[{"type":"Patient","interaction":[{"code":"read"},{"code":"search-type"}]}]}]}`)
	case "/fhir/.well-known/smart-configuration":
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"token_endpoint":"`+f.srv.URL+`/token","token_endpoint_auth_methods_supported":["private_key_jwt","client_secret_basic"],"token_endpoint_auth_signing_alg_values_supported":["ES384"]}`)
	case "/token":
		if err := r.ParseForm(); err != nil {
			http.Error(w, "bad form", http.StatusBadRequest)
			return
		}
		if id, secret, ok := r.BasicAuth(); ok {
			f.record("basic " + id + ":" + secret)
		}
		if a := r.PostForm.Get("client_assertion"); a != "" {
			tok, err := jwt.Parse(a, func(*jwt.Token) (any, error) { return f.pub, nil }, jwt.WithValidMethods([]string{"ES384"}))
			if err != nil {
				f.record("assertion refused: " + err.Error())
				http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
				return
			}
			f.record("assertion " + tok.Header["kid"].(string))
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"access_token":"issued-token","token_type":"Bearer","expires_in":300}`)
	case "/fhir/Patient":
		f.record("bearer " + strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))
		w.Header().Set("Content-Type", "application/fhir+json")
		io.WriteString(w, `{"resourceType":"Bundle","type":"searchset","total":0}`)
	default:
		http.NotFound(w, r)
	}
}

// testEndpoints are one endpoint per kind of stored secret, disabled (no
// worker runs; Manager.Test still uses the credentials).
func testEndpoints(t *testing.T, f *fakeEHR, keyPEM string) []endpoint.Endpoint {
	t.Helper()
	ep := func(id string, a endpoint.Auth) endpoint.Endpoint {
		e := endpoint.Defaults()
		e.ID, e.Name, e.FHIRBaseURL, e.Auth = id, "EHR "+id, f.srv.URL+"/fhir", a
		e.PatientIdentifierSystem, e.Enabled = "https://clinic.example/mrn", false
		return e
	}
	return []endpoint.Endpoint{
		ep("bearer-ehr", endpoint.Auth{Type: endpoint.AuthBearer, Token: bearerToken}),
		ep("key-ehr", endpoint.Auth{Type: endpoint.AuthSMARTBackend, TokenURL: f.srv.URL + "/token", ClientID: "kapfhir", PrivateKeyPEM: keyPEM, Alg: endpoint.AlgES384, Kid: "k1", Scope: "system/*.rs"}),
		ep("secret-ehr", endpoint.Auth{Type: endpoint.AuthClientSecret, TokenURL: f.srv.URL + "/token", ClientID: "kapfhir", ClientSecret: clientSecret, Scope: "system/*.rs"}),
	}
}

// wantCredentials is what the fake EHR receives when each endpoint is tested.
var wantCredentials = map[string][]string{
	"bearer-ehr": {"bearer " + bearerToken},
	"key-ehr":    {"assertion k1", "bearer issued-token"},
	"secret-ehr": {"basic kapfhir:" + clientSecret, "bearer issued-token"},
}

func newBox(t *testing.T) *seal.Box {
	t.Helper()
	k, err := seal.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	b, err := seal.New(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newManager(t *testing.T, st adapter.Store, box *seal.Box) *adapter.Manager {
	t.Helper()
	m := adapter.New(adapter.Options{Store: st, Seal: box, IdentifierSystem: "urn:example:kapfhir"})
	t.Cleanup(m.Stop)
	return m
}

// credentials tests the endpoint through the manager and returns what the
// fake EHR received.
func credentials(t *testing.T, m *adapter.Manager, f *fakeEHR, id string) []string {
	t.Helper()
	r, err := m.Test(t.Context(), id)
	if err != nil {
		t.Fatalf("Test(%s): %v", id, err)
	}
	for _, c := range r.Checks {
		if c.Name == "credentials" && !c.OK {
			t.Errorf("Test(%s): credentials refused: %s", id, c.Detail)
		}
	}
	return f.received()
}

// rawStore is the test's view of a store: the manager's port and the bytes
// in which no secret may appear in plaintext.
type rawStore struct {
	adapter.Store
	bytes func(t *testing.T) []byte
}

func TestSecretsSealedAtRestSQLite(t *testing.T) {
	testSecretsSealedAtRest(t, func(t *testing.T) rawStore {
		dir := t.TempDir()
		db, err := sqlite.Open(t.Context(), filepath.Join(dir, "kapfhir.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		if _, err := db.Migrate(t.Context()); err != nil {
			t.Fatal(err)
		}
		return rawStore{Store: db, bytes: func(t *testing.T) []byte { return kaptest.SQLiteBytes(t, dir, "kapfhir.db") }}
	})
}

func TestSecretsSealedAtRestPostgres(t *testing.T) {
	url := pgtest.URL(t, "the PostgreSQL test of endpoint secrets at rest")
	testSecretsSealedAtRest(t, func(t *testing.T) rawStore {
		url := pgtest.Schema(t, url, "kapfhir_test_")
		db, err := postgres.Open(t.Context(), url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		if _, err := db.Migrate(t.Context()); err != nil {
			t.Fatal(err)
		}
		return rawStore{Store: db, bytes: func(t *testing.T) []byte {
			conn, err := pgx.Connect(t.Context(), url)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			rows, err := conn.Query(t.Context(), `SELECT id || ' ' || json::text FROM sync_endpoints`)
			if err != nil {
				t.Fatal(err)
			}
			texts, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Fatal(err)
			}
			return []byte(strings.Join(texts, "\n"))
		}}
	})
}

func testSecretsSealedAtRest(t *testing.T, open func(t *testing.T) rawStore) {
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	keyBody := strings.Split(keyPEM, "\n")[1] // a line of the key's base64
	f := newFakeEHR(t, &key.PublicKey)
	ctx := t.Context()

	// setup stores the endpoints through a manager with box.
	setup := func(t *testing.T, box *seal.Box) (rawStore, *adapter.Manager) {
		st := open(t)
		m := newManager(t, st, box)
		for _, e := range testEndpoints(t, f, keyPEM) {
			if _, err := m.CreateEndpoint(ctx, e); err != nil {
				t.Fatalf("CreateEndpoint(%s): %v", e.ID, err)
			}
		}
		return st, m
	}

	t.Run("sealed in the database, used in clear", func(t *testing.T) {
		st, m := setup(t, newBox(t))
		raw := st.bytes(t)
		for _, s := range []string{bearerToken, clientSecret, keyBody} {
			if bytes.Contains(raw, []byte(s)) {
				t.Errorf("the database holds the secret %q in plaintext", s)
			}
		}
		// The bytes read are the right ones: they hold the endpoints and sealed values.
		for _, s := range []string{"bearer-ehr", "secret-ehr", "key-ehr", "kseal1:"} {
			if !bytes.Contains(raw, []byte(s)) {
				t.Errorf("the database bytes lack %q: the check above proves nothing", s)
			}
		}
		for id, want := range wantCredentials {
			if diff := cmp.Diff(want, credentials(t, m, f, id)); diff != "" {
				t.Errorf("%s: the EHR received (-want +got):\n%s", id, diff)
			}
			got, err := m.Endpoint(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range got.Auth.Secrets() {
				if *s.Value != "" && *s.Value != endpoint.Redaction {
					t.Errorf("%s: Endpoint returns %s = %q, want it redacted", id, s.Name, *s.Value)
				}
			}
		}
		// An update that does not repeat the secret keeps it (opened, sealed again).
		e := testEndpoints(t, f, keyPEM)[0]
		e.Name, e.Auth.Token = "Renamed", ""
		if _, err := m.UpdateEndpoint(ctx, e); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(wantCredentials["bearer-ehr"], credentials(t, m, f, "bearer-ehr")); diff != "" {
			t.Errorf("after an update: the EHR received (-want +got):\n%s", diff)
		}
		if bytes.Contains(st.bytes(t), []byte(bearerToken)) {
			t.Error("after an update the database holds the token in plaintext")
		}
	})

	t.Run("a wrong key is a clear error naming the endpoint", func(t *testing.T) {
		st, _ := setup(t, newBox(t))
		other := newManager(t, st, newBox(t))
		err := other.Start(ctx)
		if !errors.Is(err, seal.ErrUnknownKey) || !strings.Contains(err.Error(), "endpoint bearer-ehr") {
			t.Errorf("Start with another key = %v; want ErrUnknownKey naming endpoint bearer-ehr", err)
		}
		_, err = other.Test(ctx, "secret-ehr")
		if !errors.Is(err, seal.ErrUnknownKey) || !strings.Contains(err.Error(), "endpoint secret-ehr") {
			t.Errorf("Test with another key = %v; want ErrUnknownKey naming endpoint secret-ehr", err)
		}
		if got := f.received(); len(got) != 0 {
			t.Errorf("the EHR received credentials although they could not be opened: %q", got)
		}
		noKey := newManager(t, st, nil)
		if err := noKey.Start(ctx); err == nil || !strings.Contains(err.Error(), "no sealing key") {
			t.Errorf("Start without a key = %v; want an error saying no sealing key was given", err)
		}
	})

	t.Run("tampering is detected", func(t *testing.T) {
		st, m := setup(t, newBox(t))
		bearer, err := st.Endpoint(ctx, "bearer-ehr") // as stored: sealed
		if err != nil {
			t.Fatal(err)
		}
		secret, err := st.Endpoint(ctx, "secret-ehr")
		if err != nil {
			t.Fatal(err)
		}
		flipped := []byte(bearer.Auth.Token)
		i := len(flipped) / 2
		flipped[i] = map[bool]byte{true: 'A', false: 'B'}[flipped[i] != 'A']
		for name, tampered := range map[string]string{
			"a changed byte":                     string(flipped),
			"a sealed value of another endpoint": secret.Auth.ClientSecret,
		} {
			e := bearer
			e.Auth.Token = tampered
			if err := st.PutEndpoint(ctx, e); err != nil {
				t.Fatal(err)
			}
			_, err := m.Test(ctx, "bearer-ehr")
			if !errors.Is(err, seal.ErrTampered) || !strings.Contains(err.Error(), "endpoint bearer-ehr") || !strings.Contains(err.Error(), "auth.token") {
				t.Errorf("%s: Test = %v; want ErrTampered naming endpoint bearer-ehr and auth.token", name, err)
			}
		}
		if got := f.received(); len(got) != 0 {
			t.Errorf("the EHR received credentials from a tampered endpoint: %q", got)
		}
		// Operators still see it (redacted) and can delete it.
		if got, err := m.Endpoint(ctx, "bearer-ehr"); err != nil || got.Auth.Token != endpoint.Redaction {
			t.Errorf("Endpoint(tampered) = token %q, %v; want it listed, redacted", got.Auth.Token, err)
		}
		if err := m.DeleteEndpoint(ctx, "bearer-ehr"); err != nil {
			t.Errorf("DeleteEndpoint(tampered): %v", err)
		}
	})

	t.Run("plaintext from an older kapfhir is sealed at start", func(t *testing.T) {
		st := open(t)
		created, err := setupPlain(st, testEndpoints(t, f, keyPEM))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(st.bytes(t), []byte(bearerToken)) {
			t.Fatal("the older kapfhir's plaintext is not in the database bytes: the check below proves nothing")
		}
		m := newManager(t, st, newBox(t))
		if err := m.Start(ctx); err != nil {
			t.Fatal(err)
		}
		for _, id := range created {
			stored, err := st.Endpoint(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range stored.Auth.Secrets() {
				if *s.Value != "" && !seal.IsSealed([]byte(*s.Value)) {
					t.Errorf("%s: %s still in plaintext after Start", id, s.Name)
				}
			}
			if diff := cmp.Diff(wantCredentials[id], credentials(t, m, f, id)); diff != "" {
				t.Errorf("%s: the EHR received (-want +got):\n%s", id, diff)
			}
		}
	})
}

// setupPlain stores endpoints as a kapfhir without sealing did.
func setupPlain(st adapter.Store, eps []endpoint.Endpoint) ([]string, error) {
	var ids []string
	for _, e := range eps {
		if err := st.PutEndpoint(context.Background(), endpoint.Stored{Endpoint: e, Source: endpoint.SourceAPI, AuthState: endpoint.AuthOK}); err != nil {
			return nil, err
		}
		ids = append(ids, e.ID)
	}
	return ids, nil
}
