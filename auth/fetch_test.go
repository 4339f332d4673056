package auth

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// jwksServer serves a JWKS that tests can change, and counts requests.
type jwksServer struct {
	*httptest.Server
	mu    sync.Mutex
	body  []byte
	code  int
	count int
}

func newJWKSServer(t *testing.T, body []byte) *jwksServer {
	t.Helper()
	s := &jwksServer{body: body, code: http.StatusOK}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.count++
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.WriteHeader(s.code)
		w.Write(s.body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(body []byte, code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.body, s.code = body, code
}

func (s *jwksServer) requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

// urlFixture is a token server whose client "remote" publishes its keys at srv.
func urlFixture(t *testing.T, url string, opts FetcherOptions) *fixture {
	t.Helper()
	f := newFixture(t)
	f.clients["remote"] = Client{ID: "remote", JWKSURL: url, Scopes: []string{"system/*.rs"}, Role: RoleClinic}
	opts.Now = f.clock.Now
	var err error
	f.server, err = NewTokenServer(TokenServerConfig{
		Issuer: issuer, Keys: f.keys, Clients: f.clients, JTIs: f.jtis, Now: f.clock.Now,
		Fetcher: NewJWKSFetcher(opts),
	})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// remoteToken asks for a token as "remote", signing with the key named kid.
func remoteToken(t *testing.T, f *fixture, kid string) (Issued, error) {
	t.Helper()
	m, key := jwt.SigningMethod(jwt.SigningMethodES384), any(ecKey())
	if strings.HasPrefix(kid, "rsa") {
		m, key = jwt.SigningMethodRS384, rsaKey()
	}
	return f.server.Token(t.Context(), form(sign(t, m, key, kid, goodClaims("remote", f.clock.Now())), "system/*.rs"))
}

func TestJWKSURLFetchedOnceAndCached(t *testing.T) {
	srv := newJWKSServer(t, jwksJSON(jwkJSON(ecKid, &ecKey().PublicKey, nil)))
	f := urlFixture(t, srv.URL+"/jwks.json", FetcherOptions{})
	step := func(name, kid string, wantOK bool, wantRequests int) {
		t.Helper()
		got, err := remoteToken(t, f, kid)
		if wantOK && err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if !wantOK {
			checkRefused(t, got, err, CodeInvalidClient, http.StatusUnauthorized, "kid does not name a usable key", "")
		}
		if n := srv.requests(); n != wantRequests {
			t.Errorf("%s: %d requests to the JWKS URL, want %d", name, n, wantRequests)
		}
	}
	step("first token", ecKid, true, 1)
	f.clock.Advance(30 * time.Second)
	step("second token, cached", ecKid, true, 1)

	// The client adds an RSA key: the unknown kid prompts one refetch.
	srv.set(jwksJSON(jwkJSON(ecKid, &ecKey().PublicKey, nil), jwkJSON(rsaKid, &rsaKey().PublicKey, nil)), http.StatusOK)
	f.clock.Advance(31 * time.Second) // 61 s after the first fetch
	step("new kid, refetched", rsaKid, true, 2)

	// Made-up kids: at most one refetch per minute.
	step("unknown kid, just fetched", "rsa-spray-1", false, 2)
	f.clock.Advance(59 * time.Second)
	step("unknown kid, 59 s later", "rsa-spray-2", false, 2)
	f.clock.Advance(time.Second)
	step("unknown kid, a minute later", "rsa-spray-3", false, 3)
	step("known kid still cached", ecKid, true, 3)

	// After the TTL the set is fetched again, and a removed key stops working.
	srv.set(jwksJSON(jwkJSON(rsaKid, &rsaKey().PublicKey, nil)), http.StatusOK)
	f.clock.Advance(DefaultJWKSCacheTTL)
	step("removed key after the TTL", ecKid, false, 4)
	step("remaining key", rsaKid, true, 4)
}

func TestJWKSURLFailures(t *testing.T) {
	good := jwksJSON(jwkJSON(ecKid, &ecKey().PublicKey, nil))
	tests := []struct {
		name string
		body []byte
		code int
		opts FetcherOptions
	}{
		{name: "server error", body: good, code: http.StatusInternalServerError},
		{name: "redirect not followed", body: nil, code: http.StatusFound},
		{name: "not a JWKS", body: []byte("<html>"), code: http.StatusOK},
		{name: "too large", body: append(append([]byte{}, good...), strings.Repeat(" ", 100)...), code: http.StatusOK, opts: FetcherOptions{MaxBytes: int64(len(good) + 10)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newJWKSServer(t, tt.body)
			srv.set(tt.body, tt.code)
			f := urlFixture(t, srv.URL, tt.opts)
			got, err := remoteToken(t, f, ecKid)
			checkRefused(t, got, err, CodeInvalidClient, http.StatusUnauthorized, "the client's JWKS could not be fetched", "")
			// A failed fetch is retried at most once a minute.
			srv.set(good, http.StatusOK)
			got, err = remoteToken(t, f, ecKid)
			checkRefused(t, got, err, CodeInvalidClient, http.StatusUnauthorized, "the client's JWKS could not be fetched", "")
			if n := srv.requests(); n != 1 {
				t.Errorf("%d requests within the minute, want 1", n)
			}
			f.clock.Advance(DefaultMinRefetch)
			if _, err := remoteToken(t, f, ecKid); err != nil {
				t.Errorf("after a minute, with the set repaired: %v", err)
			}
		})
	}
}

func TestJWKSURLTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs first: the handler returns, then Close
	f := urlFixture(t, srv.URL, FetcherOptions{Timeout: 50 * time.Millisecond})
	got, err := remoteToken(t, f, ecKid)
	checkRefused(t, got, err, CodeInvalidClient, http.StatusUnauthorized, "the client's JWKS could not be fetched", "")
}

func TestJWKSURLRequestContext(t *testing.T) {
	// A cancelled request stops the fetch too, whatever the client timeout.
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	fetcher := NewJWKSFetcher(FetcherOptions{Timeout: time.Hour})
	ctx, cancel := contextWithCancel(t)
	cancel()
	if _, err := fetcher.key(ctx, srv.URL, ecKid); err == nil {
		t.Fatal("fetch with a cancelled context succeeded")
	}
}

func TestJWKSFetcherDialGuard(t *testing.T) {
	// The default client refuses link-local addresses when it dials; the
	// refusal happens before any packet is sent.
	fetcher := NewJWKSFetcher(FetcherOptions{})
	_, err := fetcher.key(t.Context(), "http://169.254.169.254/jwks", ecKid)
	if err == nil || !strings.Contains(err.Error(), "link-local") {
		t.Errorf("fetch from a link-local address: %v, want refused by the dial guard", err)
	}
}

func TestParseJWKSFetchedIgnoresBadKeys(t *testing.T) {
	// A fetched set may hold keys kapfhir cannot use; the usable ones work.
	body, _ := json.Marshal(map[string]any{"keys": []any{
		jwkJSON("p256", &p256Key().PublicKey, nil),
		jwkJSON(ecKid, &ecKey().PublicKey, nil),
	}})
	srv := newJWKSServer(t, body)
	f := urlFixture(t, srv.URL, FetcherOptions{})
	if _, err := remoteToken(t, f, ecKid); err != nil {
		t.Errorf("usable key beside an unusable one: %v", err)
	}
}
