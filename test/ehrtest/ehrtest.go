// Package ehrtest runs the test EHR (test/ehr: Medplum's FHIR engine behind a
// strict Node.js server with SMART Backend Services auth, an admin API and
// fault injection) for kapfhir's sync end-to-end tests. It is test support
// only.
//
// Require skips the calling test when Node.js or the test EHR's npm packages
// are missing, unless KAPFHIR_REQUIRE_NODE=1 or CI=true, where it fails it.
// Install the packages with: npm ci --prefix test/ehr
package ehrtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kapfhir/kapfhir/test/nodetest"
)

// startTimeout bounds how long the server may take to print its listening
// line (loading the R4 definitions takes a second or two).
const startTimeout = 60 * time.Second

// Dir is the test EHR's directory (test/ehr).
func Dir() string { return nodetest.Dir("ehr") }

// Available reports why the test EHR cannot run, or nil when it can.
func Available() error { return nodetest.Available(Dir(), "@medplum/fhir-router") }

// Require skips t when the test EHR cannot run, or fails it when Node.js is
// mandatory (KAPFHIR_REQUIRE_NODE=1 or CI=true).
func Require(t testing.TB) {
	t.Helper()
	nodetest.Require(t, "the test EHR", Available())
}

// Options configure a test EHR at start.
type Options struct {
	// Auth makes FHIR requests (except metadata and the SMART configuration)
	// require a bearer token from TokenURL.
	Auth bool
	// TokenLifetime is the access tokens' lifetime (expires_in), rounded
	// down to whole seconds; zero means five minutes.
	TokenLifetime time.Duration
	// NoTransactions leaves transaction and batch out of the
	// CapabilityStatement and refuses them (405), as many EHRs do.
	NoTransactions bool
}

// EHR is a running test EHR.
type EHR struct {
	// BaseURL is the FHIR base, http://127.0.0.1:PORT/fhir/R4.
	BaseURL string
	// TokenURL is the SMART Backend Services token endpoint (the assertion's aud).
	TokenURL string
	// AdminURL is the control API, http://127.0.0.1:PORT/_admin.
	AdminURL string

	client *http.Client
}

// Start runs the test EHR on a free port and stops it when t ends. It calls
// Require first. The server also exits when the test process dies (it watches
// its stdin, which only this process holds).
func Start(t testing.TB, opts Options) *EHR {
	t.Helper()
	Require(t)
	args := []string{"server.mjs", "--port", "0", "--exit-on-stdin-close"}
	if opts.Auth {
		args = append(args, "--auth")
	}
	if opts.TokenLifetime > 0 {
		args = append(args, "--token-lifetime", strconv.Itoa(lifetimeSeconds(t, opts.TokenLifetime)))
	}
	if opts.NoTransactions {
		args = append(args, "--no-transactions")
	}
	cmd := exec.Command("node", args...)
	cmd.Dir = Dir()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatalf("test EHR stdin: %v", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("test EHR stdout: %v", err)
	}
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting test EHR: %v", err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("test EHR stderr:\n%s", stderr.String())
		}
	})

	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, stdout) // keep the pipe drained
	}()
	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	var line string
	select {
	case l, ok := <-lines:
		if !ok {
			t.Fatalf("test EHR exited before listening: %s", strings.TrimSpace(stderr.String()))
		}
		line = l
	case <-timer.C:
		t.Fatalf("test EHR did not start within %v: %s", startTimeout, strings.TrimSpace(stderr.String()))
	}
	const prefix = "test-ehr listening on "
	root, ok := strings.CutPrefix(line, prefix)
	if !ok {
		t.Fatalf("test EHR printed %q, want %q...", line, prefix)
	}
	if _, err := url.Parse(root); err != nil {
		t.Fatalf("test EHR root URL %q: %v", root, err)
	}
	return &EHR{
		BaseURL:  root + "/fhir/R4",
		TokenURL: root + "/auth/token",
		AdminURL: root + "/_admin",
		client:   &http.Client{Timeout: 30 * time.Second},
	}
}

func lifetimeSeconds(t testing.TB, d time.Duration) int {
	t.Helper()
	s := int(d / time.Second)
	if s < 1 {
		t.Fatalf("token lifetime %v is shorter than one second", d)
	}
	return s
}

// lockedBuffer collects the server's stderr.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *lockedBuffer) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

// admin calls the control API and decodes its JSON answer into out (if not
// nil). It fails t unless the status is 2xx. It does not use t.Context():
// admin calls also run in t.Cleanup, after that context is cancelled; the
// client's timeout bounds them instead.
func (e *EHR) admin(t testing.TB, method, path string, in, out any) {
	t.Helper()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			t.Fatalf("admin %s %s: %v", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, e.AdminURL+path, body)
	if err != nil {
		t.Fatalf("admin %s %s: %v", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatalf("admin %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("admin %s %s: reading answer: %v", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		t.Fatalf("admin %s %s: %s: %s", method, path, resp.Status, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("admin %s %s: decoding answer: %v", method, path, err)
		}
	}
}

// RegisterClient registers a SMART Backend Services client's public key
// (RSA for RS384, P-384 ECDSA for ES384) under clientID and kid. A client may
// have several keys.
func (e *EHR) RegisterClient(t testing.TB, clientID, kid string, pub crypto.PublicKey) {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatalf("RegisterClient %s: %v", clientID, err)
	}
	p := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	e.admin(t, http.MethodPost, "/clients", map[string]string{"clientId": clientID, "kid": kid, "pem": string(p)}, nil)
}

// SetAuth turns the bearer-token requirement on FHIR requests on or off.
func (e *EHR) SetAuth(t testing.TB, on bool) {
	t.Helper()
	e.admin(t, http.MethodPut, "/config", map[string]any{"auth": on}, nil)
}

// SetTokenLifetime sets the lifetime (expires_in) of tokens issued from now
// on, in whole seconds (at least one).
func (e *EHR) SetTokenLifetime(t testing.TB, d time.Duration) {
	t.Helper()
	e.admin(t, http.MethodPut, "/config", map[string]any{"tokenLifetimeSeconds": lifetimeSeconds(t, d)}, nil)
}

// ExpireTokens makes every access token issued so far expired, so the next
// FHIR request with one gets 401 (tests token refresh without waiting).
func (e *EHR) ExpireTokens(t testing.TB) {
	t.Helper()
	e.admin(t, http.MethodPost, "/tokens/expire", nil, nil)
}

// Faults are injected into FHIR requests (paths under BaseURL) only; the
// token endpoint and the admin API are never affected. The random faults
// draw once per request from a PRNG seeded with Seed, so a run is
// reproducible: with rates r, a draw below RateReset resets the connection,
// the next Rate429 answers 429, the next Rate503 answers 503.
type Faults struct {
	Rate429           float64  // fraction answered 429 with Retry-After
	RetryAfterSeconds int      // Retry-After on 429 (default 1 when zero)
	Rate503           float64  // fraction answered 503
	RateReset         float64  // fraction whose connection is reset, no response
	Seed              int64    // PRNG seed for the rates
	Hang              bool     // hold requests until faults change or the client leaves
	Down              bool     // drop every request's connection unanswered
	LatencyMS         int      // added delay; answers carry X-Test-EHR-Latency-Ms
	RejectIdentifiers []string // identifier values whose writes get 422
}

// SetFaults replaces the fault configuration and reseeds the PRNG. Requests
// held by Hang are released when the new configuration does not hang.
func (e *EHR) SetFaults(t testing.TB, f Faults) {
	t.Helper()
	in := map[string]any{
		"rate429": f.Rate429, "rate503": f.Rate503, "rateReset": f.RateReset, "seed": f.Seed,
		"hang": f.Hang, "down": f.Down, "latencyMs": f.LatencyMS, "rejectIdentifiers": f.RejectIdentifiers,
	}
	if f.RetryAfterSeconds > 0 {
		in["retryAfterSeconds"] = f.RetryAfterSeconds
	}
	e.admin(t, http.MethodPut, "/faults", in, nil)
}

// ClearFaults removes every fault and releases held requests.
func (e *EHR) ClearFaults(t testing.TB) {
	t.Helper()
	e.admin(t, http.MethodDelete, "/faults", nil, nil)
}

// WaitHung blocks until at least n FHIR requests are held by the Hang fault.
func (e *EHR) WaitHung(t testing.TB, n int) {
	t.Helper()
	e.admin(t, http.MethodGet, "/hung?min="+strconv.Itoa(n), nil, nil)
}

// Reset drops every resource (a new, empty repository) and the request log.
// Clients, tokens, auth settings and faults are kept.
func (e *EHR) Reset(t testing.TB) {
	t.Helper()
	e.admin(t, http.MethodPost, "/reset", nil, nil)
}

// Request is one request the EHR received on its FHIR or token endpoint.
type Request struct {
	Seq    int    `json:"seq"`
	Method string `json:"method"`
	Path   string `json:"path"`   // e.g. /fhir/R4/Appointment
	Query  string `json:"query"`  // raw query string without "?"
	Status int    `json:"status"` // 0 when no response was sent (reset, down, abandoned hang)
	Fault  string `json:"fault"`  // "", "429", "503", "reset", "down", "hang", "latency"
}

// Requests returns the request log in arrival order.
func (e *EHR) Requests(t testing.TB) []Request {
	t.Helper()
	var out []Request
	e.admin(t, http.MethodGet, "/requests", nil, &out)
	return out
}

// ClearRequests empties the request log (and so the counters).
func (e *EHR) ClearRequests(t testing.TB) {
	t.Helper()
	e.admin(t, http.MethodDelete, "/requests", nil, nil)
}

// Counters summarise the request log.
type Counters struct {
	Total int `json:"total"`
	// ByRoute counts "METHOD pattern", where FHIR paths are relative to the
	// base with ids replaced and query parameter names sorted:
	// "PUT Appointment?identifier", "GET Patient/{id}", "POST /" (batch or
	// transaction), "POST /auth/token".
	ByRoute map[string]int `json:"byRoute"`
	// ByStatus counts status codes as strings; "0" means no response.
	ByStatus map[string]int `json:"byStatus"`
}

// Counters returns the request counters.
func (e *EHR) Counters(t testing.TB) Counters {
	t.Helper()
	var c Counters
	e.admin(t, http.MethodGet, "/counters", nil, &c)
	return c
}

// Count returns how many resources of resourceType exist, restricted to those
// carrying identifier system|value when value is not empty.
func (e *EHR) Count(t testing.TB, resourceType, system, value string) int {
	t.Helper()
	q := url.Values{"type": {resourceType}}
	if value != "" {
		q.Set("identifier", system+"|"+value)
	}
	var out struct {
		Count int `json:"count"`
	}
	e.admin(t, http.MethodGet, "/count?"+q.Encode(), nil, &out)
	return out.Count
}

// Search runs a FHIR search such as "Appointment?identifier=sys|val" on the
// admin side (no auth, no faults, not logged) and returns the Bundle JSON.
func (e *EHR) Search(t testing.TB, query string) []byte {
	t.Helper()
	status, body := e.AdminFHIR(t, http.MethodGet, query, nil)
	if status != http.StatusOK {
		t.Fatalf("Search %s: status %d: %s", query, status, body)
	}
	return body
}

// AdminFHIR performs a FHIR interaction on the admin side (no auth, no
// faults, not logged, still validated), e.g. to change a resource behind
// kapfhir's back: AdminFHIR(t, "PUT", "Appointment/123", body). path is
// relative to the FHIR base. It returns the status and body.
func (e *EHR) AdminFHIR(t testing.TB, method, path string, body []byte) (int, []byte) {
	t.Helper()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, e.AdminURL+"/fhir/"+strings.TrimPrefix(path, "/"), r)
	if err != nil {
		t.Fatalf("AdminFHIR %s %s: %v", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatalf("AdminFHIR %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("AdminFHIR %s %s: reading answer: %v", method, path, err)
	}
	return resp.StatusCode, b
}

// String describes the EHR for test logs.
func (e *EHR) String() string { return fmt.Sprintf("test EHR at %s", e.BaseURL) }
