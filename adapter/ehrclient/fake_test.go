package ehrclient

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/kapfhir/kapfhir/endpoint"
)

// The fake EHR: handlers called in memory through a RoundTripper, so that
// everything runs inside a synctest bubble (real sockets would not let the
// bubble's clock advance).

const (
	testBase     = "https://ehr.example/fhir"
	testTokenURL = "https://auth.example/oauth/token"
)

// roundTripFunc is an http.RoundTripper in a function.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// handlerTransport serves requests with h, in memory.
func handlerTransport(h http.Handler) http.RoundTripper {
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if r.Body != nil {
			defer r.Body.Close()
		}
		if err := r.Context().Err(); err != nil {
			return nil, err
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		resp := rec.Result()
		resp.Request = r
		return resp, nil
	})
}

// testEndpoint is an endpoint without auth and with a generous budget.
func testEndpoint() endpoint.Endpoint {
	ep := endpoint.Defaults()
	ep.ID = "ehr-test"
	ep.Name = "Test EHR"
	ep.FHIRBaseURL = testBase
	ep.Auth = endpoint.Auth{Type: endpoint.AuthNone}
	ep.PatientIdentifierSystem = "urn:example:mrn"
	ep.RateLimit = endpoint.RateLimit{PerSecond: 1000, Burst: 1000}
	ep.Retry = endpoint.Retry{
		MaxAttempts:   5,
		MinBackoff:    endpoint.Duration(100 * time.Millisecond),
		MaxBackoff:    endpoint.Duration(2 * time.Second),
		MaxRetryAfter: endpoint.Duration(2 * time.Minute),
	}
	return ep
}

// logBuffer collects JSON log lines, safely across goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newTestClient returns a client to ep whose requests h serves, and its log.
func newTestClient(t *testing.T, ep endpoint.Endpoint, rt http.RoundTripper) (*Client, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	c, err := New(ep, Options{
		Logger:    slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Transport: rt,
		UserAgent: "kapfhir-test",
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c, logs
}

// counter counts calls, safely across goroutines.
type counter struct {
	mu sync.Mutex
	n  int
}

func (c *counter) inc() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	return c.n
}

func (c *counter) get() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// Keys are generated once: RSA generation is slow.
var (
	rsaKey = sync.OnceValue(func() *rsa.PrivateKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		return k
	})
	ecKey = sync.OnceValue(func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	})
)

// pemKey encodes key as a PKCS #8 PEM block.
func pemKey(t *testing.T, key crypto.Signer) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

// smartEndpoint is testEndpoint with SMART Backend Services auth.
func smartEndpoint(t *testing.T, alg string) endpoint.Endpoint {
	t.Helper()
	ep := testEndpoint()
	var key crypto.Signer = rsaKey()
	if alg == endpoint.AlgES384 {
		key = ecKey()
	}
	ep.Auth = endpoint.Auth{
		Type:          endpoint.AuthSMARTBackend,
		TokenURL:      testTokenURL,
		ClientID:      "kapfhir-client",
		PrivateKeyPEM: pemKey(t, key),
		Alg:           alg,
		Kid:           "key-1",
		Scope:         "system/*.rs",
	}
	if err := endpoint.Validate(ep); err != nil {
		t.Fatalf("test endpoint invalid: %v", err)
	}
	return ep
}
