package ehrclient

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/endpoint"
	"github.com/kapfhir/kapfhir/treatment"
)

// fakeAuth is an authorization server and EHR in one: the token endpoint
// issues tok-1, tok-2, ... and the EHR accepts the tokens accept says yes to.
type fakeAuth struct {
	t         *testing.T
	expiresIn int
	// release, when set, holds token answers until it is closed.
	release chan struct{}
	// tokenStatus, when set, is answered with tokenBody instead of a token.
	tokenStatus int
	tokenBody   string
	// accept decides whether the EHR accepts a token (default: all).
	accept func(tok string) int

	tokenHits counter
	ehrHits   counter
	mu        sync.Mutex
	forms     []url.Values
	basic     [][2]string
	ehrTokens []string
}

func (f *fakeAuth) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Host == "auth.example" && r.URL.Path == "/oauth/token":
		f.token(w, r)
	case r.URL.Path == "/fhir/.well-known/smart-configuration":
		io.WriteString(w, `{"token_endpoint":"`+testTokenURL+`","token_endpoint_auth_methods_supported":["private_key_jwt"]}`)
	case strings.HasPrefix(r.URL.Path, "/fhir/"):
		f.ehrHits.inc()
		tok := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		f.mu.Lock()
		f.ehrTokens = append(f.ehrTokens, tok)
		f.mu.Unlock()
		status := http.StatusOK
		if f.accept != nil {
			status = f.accept(tok)
		}
		w.WriteHeader(status)
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeAuth) token(w http.ResponseWriter, r *http.Request) {
	n := f.tokenHits.inc()
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" {
		f.t.Errorf("token request %s with Content-Type %q", r.Method, r.Header.Get("Content-Type"))
	}
	if err := r.ParseForm(); err != nil {
		f.t.Errorf("token form: %v", err)
	}
	user, pass, _ := r.BasicAuth()
	f.mu.Lock()
	f.forms = append(f.forms, r.PostForm)
	f.basic = append(f.basic, [2]string{user, pass})
	f.mu.Unlock()
	if f.release != nil {
		<-f.release
	}
	if f.tokenStatus != 0 {
		w.WriteHeader(f.tokenStatus)
		io.WriteString(w, f.tokenBody)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"access_token": fmt.Sprintf("tok-%d", n),
		"token_type":   "Bearer",
		"expires_in":   f.expiresIn,
		"scope":        "system/*.rs",
	})
}

func (f *fakeAuth) assertions() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, form := range f.forms {
		out = append(out, form.Get("client_assertion"))
	}
	return out
}

func newFakeAuth(t *testing.T) *fakeAuth {
	return &fakeAuth{t: t, expiresIn: 300}
}

func TestClientAssertion(t *testing.T) {
	for _, alg := range []string{endpoint.AlgRS384, endpoint.AlgES384} {
		t.Run(alg, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFakeAuth(t)
				ep := smartEndpoint(t, alg)
				c, _ := newTestClient(t, ep, handlerTransport(f))
				// Two tokens: the first is refused once by the EHR.
				f.accept = func(tok string) int {
					if tok == "tok-1" {
						return http.StatusUnauthorized
					}
					return http.StatusOK
				}
				resp, err := c.Read(t.Context(), "Goal", "g1")
				if err != nil {
					t.Fatalf("Read: %v", err)
				}
				if resp.Status != 200 {
					t.Fatalf("status %d", resp.Status)
				}
				f.mu.Lock()
				form := f.forms[0]
				f.mu.Unlock()
				wantForm := url.Values{
					"grant_type":            {"client_credentials"},
					"client_assertion_type": {ClientAssertionType},
					"scope":                 {"system/*.rs"},
				}
				gotForm := url.Values{}
				for k, v := range form {
					if k != "client_assertion" {
						gotForm[k] = v
					}
				}
				if diff := cmp.Diff(wantForm, gotForm); diff != "" {
					t.Errorf("token form (-want +got):\n%s", diff)
				}

				var pub any = &rsaKey().PublicKey
				if alg == endpoint.AlgES384 {
					pub = &ecKey().PublicKey
				}
				jtis := map[string]bool{}
				for _, a := range f.assertions() {
					var claims jwt.RegisteredClaims
					tok, err := jwt.ParseWithClaims(a, &claims, func(tok *jwt.Token) (any, error) { return pub, nil },
						jwt.WithValidMethods([]string{alg}),
						jwt.WithIssuer("kapfhir-client"),
						jwt.WithSubject("kapfhir-client"),
						jwt.WithAudience(testTokenURL),
						jwt.WithExpirationRequired(),
						jwt.WithIssuedAt(),
						jwt.WithLeeway(time.Second),
					)
					if err != nil {
						t.Fatalf("assertion does not verify: %v", err)
					}
					if got := tok.Header["kid"]; got != "key-1" {
						t.Errorf("kid = %v, want key-1", got)
					}
					if life := claims.ExpiresAt.Sub(claims.IssuedAt.Time); life <= 0 || life > 5*time.Minute {
						t.Errorf("assertion lives %v, want at most 5m", life)
					}
					if claims.ID == "" || jtis[claims.ID] {
						t.Errorf("jti %q empty or reused", claims.ID)
					}
					jtis[claims.ID] = true
				}
				if len(jtis) != 2 {
					t.Errorf("%d assertions, want 2", len(jtis))
				}
			})
		})
	}
}

func TestClientSecretBasic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeAuth(t)
		ep := testEndpoint()
		ep.Auth = endpoint.Auth{Type: endpoint.AuthClientSecret, TokenURL: testTokenURL, ClientID: "client:1", ClientSecret: "s3cret/+", Scope: "system/*.rs"}
		c, _ := newTestClient(t, ep, handlerTransport(f))
		if _, err := c.Read(t.Context(), "Goal", "g1"); err != nil {
			t.Fatalf("Read: %v", err)
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		// RFC 6749 2.3.1: form-encoded, then Basic.
		if diff := cmp.Diff([][2]string{{"client%3A1", "s3cret%2F%2B"}}, f.basic); diff != "" {
			t.Errorf("basic credentials (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(url.Values{"grant_type": {"client_credentials"}, "scope": {"system/*.rs"}}, f.forms[0]); diff != "" {
			t.Errorf("form (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"tok-1"}, f.ehrTokens); diff != "" {
			t.Errorf("EHR saw tokens (-want +got):\n%s", diff)
		}
	})
}

func TestTokenCachedAndRenewedBeforeExpiry(t *testing.T) {
	f := newFakeAuth(t)
	f.expiresIn = 300 // renewed 30s before expiry
	start := time.Date(2025, 3, 1, 9, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	now := start
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	c, err := New(smartEndpoint(t, endpoint.AlgES384), Options{Transport: handlerTransport(f), Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		at            time.Duration
		wantTokenHits int
	}{
		{0, 1},
		{100 * time.Second, 1},
		{269 * time.Second, 1},
		{271 * time.Second, 2}, // inside the 30s margin: renewed
		{500 * time.Second, 2},
		{541 * time.Second, 3},
	} {
		mu.Lock()
		now = start.Add(step.at)
		mu.Unlock()
		if _, err := c.Read(t.Context(), "Goal", "g1"); err != nil {
			t.Fatalf("Read at %v: %v", step.at, err)
		}
		if got := f.tokenHits.get(); got != step.wantTokenHits {
			t.Errorf("at %v: %d token requests, want %d", step.at, got, step.wantTokenHits)
		}
	}
	if diff := cmp.Diff([]string{"tok-1", "tok-1", "tok-1", "tok-2", "tok-2", "tok-3"}, f.ehrTokens); diff != "" {
		t.Errorf("EHR saw tokens (-want +got):\n%s", diff)
	}
}

func TestOneRenewalInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeAuth(t)
		f.release = make(chan struct{})
		c, _ := newTestClient(t, smartEndpoint(t, endpoint.AlgES384), handlerTransport(f))
		var wg sync.WaitGroup
		errs := make(chan error, 20)
		for range 20 {
			wg.Go(func() {
				_, err := c.Read(t.Context(), "Goal", "g1")
				errs <- err
			})
		}
		synctest.Wait() // all 20 wait for the one token request
		if got := f.tokenHits.get(); got != 1 {
			t.Errorf("%d token requests in flight, want 1", got)
		}
		close(f.release)
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Errorf("Read: %v", err)
			}
		}
		if got := []int{f.tokenHits.get(), f.ehrHits.get()}; !cmp.Equal(got, []int{1, 20}) {
			t.Errorf("token requests, EHR requests = %v, want [1 20]", got)
		}
	})
}

func TestCallerGivingUpDoesNotFailRenewal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeAuth(t)
		f.release = make(chan struct{})
		c, _ := newTestClient(t, smartEndpoint(t, endpoint.AlgES384), handlerTransport(f))
		ctx := t.Context()
		ctx1, cancel1 := context.WithCancel(ctx)
		defer cancel1()
		first := make(chan error, 1)
		go func() { _, err := c.Read(ctx1, "Goal", "g1"); first <- err }()
		second := make(chan error, 1)
		go func() { _, err := c.Read(ctx, "Goal", "g2"); second <- err }()
		synctest.Wait()
		cancel1()
		if err := <-first; err == nil {
			t.Error("the cancelled caller got no error")
		}
		close(f.release)
		if err := <-second; err != nil {
			t.Errorf("the waiting caller failed: %v", err)
		}
		if got := f.tokenHits.get(); got != 1 {
			t.Errorf("%d token requests, want 1", got)
		}
	})
}

func TestUnauthorizedRenewsOnce(t *testing.T) {
	for _, tc := range []struct {
		name       string
		accept     func(tok string) int
		wantKind   treatment.Kind // "" for success
		wantTokens []string
	}{
		{
			name: "renewed token accepted",
			accept: func(tok string) int {
				if tok == "tok-1" {
					return 401
				}
				return 200
			},
			wantTokens: []string{"tok-1", "tok-2"},
		},
		{
			name:       "401 twice",
			accept:     func(string) int { return 401 },
			wantKind:   treatment.KindUnauthorized,
			wantTokens: []string{"tok-1", "tok-2"},
		},
		{
			name: "401 then 403",
			accept: func(tok string) int {
				if tok == "tok-1" {
					return 401
				}
				return 403
			},
			wantKind:   treatment.KindForbidden,
			wantTokens: []string{"tok-1", "tok-2"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFakeAuth(t)
				f.accept = tc.accept
				c, _ := newTestClient(t, smartEndpoint(t, endpoint.AlgES384), handlerTransport(f))
				// A plain POST too: a 401 means it was not processed.
				resp, err := c.Do(t.Context(), Request{Method: http.MethodPost, Path: "Goal", Body: []byte(`{}`)})
				if got := treatment.ErrorKind(err); err != nil && got != tc.wantKind || err == nil && tc.wantKind != "" {
					t.Fatalf("Do = %v, %v; want kind %q", resp, err, tc.wantKind)
				}
				if diff := cmp.Diff(tc.wantTokens, f.ehrTokens); diff != "" {
					t.Errorf("EHR saw tokens (-want +got):\n%s", diff)
				}
			})
		})
	}
}

func TestTokenEndpointErrors(t *testing.T) {
	for _, tc := range []struct {
		status   int
		body     string
		wantKind treatment.Kind
		wantMsg  string
	}{
		{400, `{"error":"invalid_client","error_description":"unknown kid"}`, treatment.KindUnauthorized, "invalid_client"},
		{401, `{"error":"invalid_client"}`, treatment.KindUnauthorized, "invalid_client"},
		{400, `not json`, treatment.KindUnauthorized, "no OAuth error code"},
		{200, `{"token_type":"Bearer"}`, treatment.KindUnauthorized, "without an access token"},
		{503, ``, treatment.KindUnavailable, "503"},
	} {
		t.Run(fmt.Sprint(tc.status, tc.wantMsg), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFakeAuth(t)
				f.tokenStatus, f.tokenBody = tc.status, tc.body
				c, _ := newTestClient(t, smartEndpoint(t, endpoint.AlgRS384), handlerTransport(f))
				_, err := c.Read(t.Context(), "Goal", "g1")
				if got := treatment.ErrorKind(err); got != tc.wantKind {
					t.Fatalf("kind %q (%v), want %q", got, err, tc.wantKind)
				}
				if !strings.Contains(err.Error(), tc.wantMsg) {
					t.Errorf("error %q lacks %q", err, tc.wantMsg)
				}
				for _, a := range f.assertions() {
					if strings.Contains(err.Error(), a) {
						t.Error("error carries the client assertion")
					}
				}
				if f.ehrHits.get() != 0 {
					t.Error("the EHR was called without a token")
				}
			})
		})
	}
}

func TestTokenURLDiscovery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeAuth(t)
		ep := smartEndpoint(t, endpoint.AlgES384)
		ep.Auth.TokenURL = ""
		c, _ := newTestClient(t, ep, handlerTransport(f))
		if _, err := c.Read(t.Context(), "Goal", "g1"); err != nil {
			t.Fatalf("Read: %v", err)
		}
		if got := f.tokenHits.get(); got != 1 {
			t.Errorf("%d token requests at the discovered URL, want 1", got)
		}
		var claims jwt.RegisteredClaims
		if _, _, err := jwt.NewParser().ParseUnverified(f.assertions()[0], &claims); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(jwt.ClaimStrings{testTokenURL}, claims.Audience); diff != "" {
			t.Errorf("aud (-want +got):\n%s", diff)
		}
		cfg, err := c.SMARTConfiguration(t.Context())
		if err != nil {
			t.Fatalf("SMARTConfiguration: %v", err)
		}
		if diff := cmp.Diff(&SMARTConfiguration{TokenEndpoint: testTokenURL, TokenEndpointAuthMethodsSupported: []string{"private_key_jwt"}}, cfg); diff != "" {
			t.Errorf("SMARTConfiguration (-want +got):\n%s", diff)
		}
	})
}

func TestDiscoveredTokenURLChecked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, `{"token_endpoint":"http://169.254.169.254/token"}`)
		})
		ep := smartEndpoint(t, endpoint.AlgES384)
		ep.Auth.TokenURL = ""
		c, _ := newTestClient(t, ep, handlerTransport(h))
		if _, err := c.Read(t.Context(), "Goal", "g1"); treatment.ErrorKind(err) != treatment.KindUnauthorized {
			t.Errorf("Read = %v, want unauthorized", err)
		}
	})
}

func TestRetryCarriesRenewedToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeAuth(t)
		f.expiresIn = 60 // renewed 30s before expiry
		var n counter
		f.accept = func(string) int {
			if n.inc() == 1 {
				return http.StatusServiceUnavailable
			}
			return http.StatusOK
		}
		ep := smartEndpoint(t, endpoint.AlgES384)
		c, _ := newTestClient(t, ep, handlerTransport(retryAfterOnce(f, "45")))
		if _, err := c.Read(t.Context(), "Goal", "g1"); err != nil {
			t.Fatalf("Read: %v", err)
		}
		if diff := cmp.Diff([]string{"tok-1", "tok-2"}, f.ehrTokens); diff != "" {
			t.Errorf("EHR saw tokens (-want +got):\n%s", diff)
		}
	})
}

// retryAfterOnce adds Retry-After to the EHR's first answer.
func retryAfterOnce(h http.Handler, v string) http.Handler {
	var once sync.Once
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/fhir/") {
			once.Do(func() { w.Header().Set("Retry-After", v) })
		}
		h.ServeHTTP(w, r)
	})
}

func TestRenewMargin(t *testing.T) {
	for _, tc := range []struct{ lifetime, want time.Duration }{
		{time.Hour, 6 * time.Minute},
		{5 * time.Minute, 30 * time.Second},
		{40 * time.Second, 20 * time.Second},
	} {
		if got := renewMargin(tc.lifetime); got != tc.want {
			t.Errorf("renewMargin(%v) = %v, want %v", tc.lifetime, got, tc.want)
		}
	}
}
