// Package ehrclient talks FHIR R4 REST to one EHR endpoint for the sync
// engine: go-retryablehttp with every hook set (retries only of requests that
// are safe to repeat, Retry-After honoured up to a bound, the EHR's
// OperationOutcome kept), an adaptive rate budget, SMART Backend Services or
// client-secret tokens cached with one renewal in flight, and a dialer that
// refuses link-local and cloud-metadata addresses.
//
// Logs carry the endpoint id, method, path (never the query: it holds
// identifiers), status and attempt; never a body or a token.
package ehrclient

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-retryablehttp"

	"github.com/kapfhir/kapfhir/endpoint"
	"github.com/kapfhir/kapfhir/treatment"
)

// MaxBodyBytes bounds the body read from the EHR.
const MaxBodyBytes = 32 << 20

// FHIRJSON is the FHIR JSON media type.
const FHIRJSON = "application/fhir+json"

// Options are a Client's collaborators; all are optional.
type Options struct {
	// Logger receives request logs without bodies or queries. Default: discard.
	Logger *slog.Logger
	// Now is the clock for tokens, assertions and Retry-After dates.
	// Default: time.Now.
	Now func() time.Time
	// Transport replaces the pooled, address-guarded transport (tests: an
	// in-memory fake EHR). Rate limiting, timeouts, retries and auth still
	// apply on top of it.
	Transport http.RoundTripper
	// UserAgent is sent with every request when set.
	UserAgent string
	// RootCAs are the authorities the EHR's certificates are verified
	// against (the system's plus the configured bundle); nil means the
	// system's. Certificates are always verified.
	RootCAs *x509.CertPool
}

// Request is one FHIR REST interaction.
type Request struct {
	Method string
	// Path is relative to the FHIR base URL and may carry a query
	// ("Appointment?identifier=..."). An absolute URL is accepted only
	// under the base URL (a search's next link).
	Path string
	Body []byte
	// Header adds headers: If-Match, If-None-Exist, Prefer, Content-Type
	// (default application/fhir+json when there is a body).
	Header http.Header
	// Idempotent marks a request safe to repeat: GET, PUT, a conditional
	// create (If-None-Exist) or a conditional update. Only these are
	// retried. A POST without If-None-Exist is never retried, whatever this
	// says (Transaction is the one exception).
	Idempotent bool
	// bundle marks a transaction Bundle posted to the base whose entries
	// are all safe to repeat (see Transaction).
	bundle bool
}

// Response is the EHR's answer, whatever its status: a 4xx keeps the body
// (usually an OperationOutcome) for the caller to read.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
	// Location is the Location header, or Content-Location.
	Location string
	ETag     string
	// VersionID is parsed from ETag (W/"n") or from Location (.../_history/n).
	VersionID string
	// RetryAfter is the EHR's Retry-After, when it sent one: a 429 or 503
	// returned because it asked for a longer wait than the endpoint's
	// maxRetryAfter should be requeued no earlier than this.
	RetryAfter time.Duration
}

// Client is the HTTP client to one EHR endpoint. It is safe for concurrent use.
type Client struct {
	ep        endpoint.Endpoint
	base      string // FHIR base URL without a trailing slash
	log       *slog.Logger
	now       func() time.Time
	userAgent string
	limiter   *Limiter
	tokens    tokenSource
	rc        *retryablehttp.Client
	auth      *http.Client // token endpoint and SMART configuration: no retries, no budget
}

// New returns a client for ep, which must have passed endpoint.Validate.
func New(ep endpoint.Endpoint, o Options) (*Client, error) {
	if err := endpoint.CheckURL(ep.FHIRBaseURL, ep.AllowInsecureHTTP); err != nil {
		return nil, treatment.Errorf(treatment.KindInvalid, "endpoint %s: fhirBaseUrl %s", ep.ID, err)
	}
	c := &Client{
		ep:        ep,
		base:      strings.TrimSuffix(ep.FHIRBaseURL, "/"),
		log:       o.Logger,
		now:       o.Now,
		userAgent: o.UserAgent,
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	c.limiter = NewLimiter(ep.RateLimit, c.now)

	ehrTransport, authTransport := o.Transport, o.Transport
	if ehrTransport == nil {
		ehrTransport = newTransport(ep, o.RootCAs)
		authEP := ep
		authEP.Concurrency = 2
		authTransport = newTransport(authEP, o.RootCAs)
	}
	c.auth = &http.Client{
		Transport: authTransport,
		Timeout:   max(ep.Timeout(), time.Second),
		// Never follow a token endpoint's redirect with credentials.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}

	switch ep.Auth.Type {
	case endpoint.AuthSMARTBackend, endpoint.AuthClientSecret:
		s, err := newOAuthSource(ep, c.auth, c.now, c.log, c.userAgent)
		if err != nil {
			return nil, err
		}
		c.tokens = s
	case endpoint.AuthBearer:
		c.tokens = staticToken(ep.Auth.Token)
	case endpoint.AuthNone:
		c.tokens = staticToken("")
	default:
		return nil, treatment.Errorf(treatment.KindInvalid, "endpoint %s: unknown auth type", ep.ID)
	}

	retries := max(ep.Retry.MaxAttempts, 1) - 1
	c.rc = &retryablehttp.Client{
		HTTPClient: &http.Client{
			// The per-attempt timeout is applied by budgetTransport after
			// the rate-limit wait, so waiting for budget is not a timeout.
			Transport: &budgetTransport{base: ehrTransport, c: c},
			// FHIR answers 201 with Location; a redirect is not followed
			// with credentials to wherever it points.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		// Its own messages print the URL with its query: we log through
		// the hooks instead.
		Logger:          nil,
		RetryWaitMin:    ep.Retry.MinBackoff.D(),
		RetryWaitMax:    ep.Retry.MaxBackoff.D(),
		RetryMax:        retries,
		RequestLogHook:  c.logRequest,
		ResponseLogHook: c.logResponse,
		CheckRetry:      c.checkRetry,
		Backoff:         c.backoff,
		ErrorHandler:    retryablehttp.PassthroughErrorHandler,
		PrepareRetry:    c.prepareRetry,
	}
	return c, nil
}

// EndpointID returns the id of the endpoint this client talks to.
func (c *Client) EndpointID() string { return c.ep.ID }

// Budget returns the endpoint's current rate budget.
func (c *Client) Budget() Budget { return c.limiter.Budget() }

// Do sends r and returns the EHR's answer, whatever its status. The error is
// for a transport failure that outlasted the retries (KindUnavailable), a
// refused address (KindInvalid), ctx ending, or credentials the EHR keeps
// refusing (KindUnauthorized, KindForbidden): on a 401 the token is renewed
// once and the request sent once more.
func (c *Client) Do(ctx context.Context, r Request) (*Response, error) {
	resp, used, err := c.exchange(ctx, r)
	if err != nil {
		return nil, err
	}
	if resp.Status != http.StatusUnauthorized {
		return resp, nil
	}
	if !c.tokens.Invalidate(used) {
		return nil, treatment.Errorf(treatment.KindUnauthorized, "endpoint %s: the EHR refused the credentials (401)", c.ep.ID)
	}
	c.log.Info("ehr answered 401; renewing the token once", "endpoint", c.ep.ID, "method", r.Method, "path", pathOnly(r.Path))
	resp, _, err = c.exchange(ctx, r)
	if err != nil {
		return nil, err
	}
	switch resp.Status {
	case http.StatusUnauthorized:
		return nil, treatment.Errorf(treatment.KindUnauthorized, "endpoint %s: the EHR refused a freshly issued token (401)", c.ep.ID)
	case http.StatusForbidden:
		return nil, treatment.Errorf(treatment.KindForbidden, "endpoint %s: the EHR refused a freshly issued token (403)", c.ep.ID)
	}
	return resp, nil
}

// Read reads typ/id.
func (c *Client) Read(ctx context.Context, typ, id string) (*Response, error) {
	return c.Do(ctx, Request{Method: http.MethodGet, Path: typ + "/" + url.PathEscape(id), Idempotent: true})
}

// Search searches typ with q.
func (c *Client) Search(ctx context.Context, typ string, q url.Values) (*Response, error) {
	p := typ
	if len(q) > 0 {
		p += "?" + q.Encode()
	}
	return c.Do(ctx, Request{Method: http.MethodGet, Path: p, Idempotent: true})
}

// Transaction posts a transaction Bundle to the FHIR base URL. The EHR
// applies all of its entries or none; when every entry is safe to repeat
// (conditional updates, creates with ifNoneExist) the caller says so with
// idempotent, and the Bundle is retried as a PUT would be.
func (c *Client) Transaction(ctx context.Context, bundle []byte, idempotent bool) (*Response, error) {
	return c.Do(ctx, Request{Method: http.MethodPost, Path: "", Body: bundle, Idempotent: idempotent, bundle: true})
}

// SMARTConfiguration reads {fhirBaseUrl}/.well-known/smart-configuration,
// without credentials.
func (c *Client) SMARTConfiguration(ctx context.Context) (*SMARTConfiguration, error) {
	return fetchSMARTConfiguration(ctx, c.auth, c.ep, c.userAgent)
}

// attemptKey carries a request's retry safety to CheckRetry.
type attemptKey struct{}

// exchange sends r once through the retrying client and reads the answer. It
// also returns the access token the final attempt carried.
func (c *Client) exchange(ctx context.Context, r Request) (*Response, string, error) {
	u, err := c.resolve(r.Path)
	if err != nil {
		return nil, "", err
	}
	tok, err := c.tokens.Token(ctx)
	if err != nil {
		return nil, "", err
	}
	idem := r.Idempotent && (r.Method != http.MethodPost || r.Header.Get("If-None-Exist") != "" || r.bundle)
	var body any
	if r.Body != nil {
		body = r.Body
	}
	req, err := retryablehttp.NewRequestWithContext(context.WithValue(ctx, attemptKey{}, idem), r.Method, u, body)
	if err != nil {
		return nil, "", treatment.Errorf(treatment.KindInvalid, "endpoint %s: cannot build the request", c.ep.ID)
	}
	for k, vs := range r.Header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if req.Header.Get("Accept") == "" {
		req.Header.Set("Accept", FHIRJSON)
	}
	if r.Body != nil && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", FHIRJSON)
	}
	if c.userAgent != "" {
		req.Header.Set("User-Agent", c.userAgent)
	}
	setToken(req.Header, tok)

	hr, err := c.rc.Do(req)
	if err != nil {
		if hr != nil {
			hr.Body.Close()
		}
		what := r.Method + " " + pathOnly(r.Path)
		var te *treatment.Error
		if errors.As(err, &te) { // PrepareRetry could not get a token
			return nil, "", err
		}
		return nil, "", transportError(ctx, c.ep.ID, what, err)
	}
	defer hr.Body.Close()
	b, err := io.ReadAll(io.LimitReader(hr.Body, MaxBodyBytes+1))
	if err != nil {
		return nil, "", transportError(ctx, c.ep.ID, r.Method+" "+pathOnly(r.Path)+" (reading the body)", err)
	}
	if len(b) > MaxBodyBytes {
		return nil, "", treatment.Errorf(treatment.KindUnavailable, "endpoint %s: %s %s: body larger than %d bytes", c.ep.ID, r.Method, pathOnly(r.Path), MaxBodyBytes)
	}
	resp := &Response{
		Status:   hr.StatusCode,
		Header:   hr.Header,
		Body:     b,
		Location: hr.Header.Get("Location"),
		ETag:     hr.Header.Get("ETag"),
	}
	if resp.Location == "" {
		resp.Location = hr.Header.Get("Content-Location")
	}
	resp.VersionID = versionID(resp.ETag, resp.Location)
	if d, ok := retryAfter(hr.Header, c.now()); ok {
		resp.RetryAfter = d
	}
	used := strings.TrimPrefix(hr.Request.Header.Get("Authorization"), "Bearer ")
	return resp, used, nil
}

func setToken(h http.Header, tok string) {
	if tok == "" {
		h.Del("Authorization")
		return
	}
	h.Set("Authorization", "Bearer "+tok)
}

// resolve turns a request path into a URL under the base.
func (c *Client) resolve(p string) (string, error) {
	if u, err := url.Parse(p); err == nil && u.IsAbs() {
		if p != c.base && !strings.HasPrefix(p, c.base+"/") && !strings.HasPrefix(p, c.base+"?") {
			return "", treatment.Errorf(treatment.KindInvalid, "endpoint %s: URL is not under the FHIR base URL", c.ep.ID)
		}
		return p, nil
	}
	if p == "" {
		return c.base, nil // the base itself: a transaction or batch
	}
	return c.base + "/" + strings.TrimPrefix(p, "/"), nil
}

// pathOnly drops the query of a path or URL, for logs and errors.
func pathOnly(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	if u, err := url.Parse(p); err == nil && u.IsAbs() {
		return u.Path
	}
	return p
}

// versionID parses W/"n" (or "n") from an ETag, else n from .../_history/n.
func versionID(etag, location string) string {
	if e := strings.TrimPrefix(etag, "W/"); len(e) >= 2 && e[0] == '"' && e[len(e)-1] == '"' {
		if v := e[1 : len(e)-1]; v != "" {
			return v
		}
	}
	loc := pathOnly(location)
	if i := strings.LastIndex(loc, "/_history/"); i >= 0 {
		if v := strings.Trim(loc[i+len("/_history/"):], "/"); v != "" && !strings.Contains(v, "/") {
			return v
		}
	}
	return ""
}

// retryAfter parses Retry-After: delay-seconds or an HTTP date.
func retryAfter(h http.Header, now time.Time) (time.Duration, bool) {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0, false
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		if s < 0 {
			return 0, false
		}
		if s > int64(24*time.Hour/time.Second) {
			s = int64(24 * time.Hour / time.Second)
		}
		return time.Duration(s) * time.Second, true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return max(t.Sub(now), 0), true
}

// budgetTransport waits for rate budget before every attempt (retries
// included), bounds each attempt by the endpoint's timeout, and feeds 429s and
// successes back into the limiter.
type budgetTransport struct {
	base http.RoundTripper
	c    *Client
}

func (t *budgetTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := t.c.limiter.Wait(req.Context()); err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, err
	}
	ctx, cancel := context.WithTimeout(req.Context(), t.c.ep.Timeout())
	resp, err := t.base.RoundTrip(req.WithContext(ctx))
	if err != nil {
		cancel()
		t.c.log.Info("ehr request failed", "endpoint", t.c.ep.ID, "method", req.Method, "path", req.URL.Path, "error", err)
		return nil, err
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		t.c.limiter.On429()
	case resp.StatusCode < 500:
		t.c.limiter.OnSuccess()
	}
	resp.Body = &cancelBody{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

// cancelBody ends an attempt's timeout when its body is closed.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// retryStatuses are the answers worth repeating a safe request for.
var retryStatuses = map[int]bool{
	http.StatusTooManyRequests:    true,
	http.StatusBadGateway:         true,
	http.StatusServiceUnavailable: true,
	http.StatusGatewayTimeout:     true,
}

// checkRetry is the CheckRetry hook: only requests safe to repeat, only on
// 429, 502, 503, 504, connection errors and timeouts, never once ctx has ended,
// and not when the EHR asks to wait longer than maxRetryAfter (the caller gets
// the answer, with RetryAfter, and requeues).
func (c *Client) checkRetry(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if idem, _ := ctx.Value(attemptKey{}).(bool); !idem {
		return false, nil
	}
	if err != nil {
		return retryableError(err), nil
	}
	if !retryStatuses[resp.StatusCode] {
		return false, nil
	}
	if d, ok := retryAfter(resp.Header, c.now()); ok && d > c.ep.Retry.MaxRetryAfter.D() {
		return false, nil
	}
	return true, nil
}

// retryableError reports whether a transport error is a connection failure or
// a timeout, as opposed to a refused address, a bad certificate or a bad URL,
// which another attempt would not change.
func retryableError(err error) bool {
	if errors.Is(err, ErrAddressRefused) {
		return false
	}
	if isCertificateError(err) {
		return false
	}
	var ue *url.Error
	if errors.As(err, &ue) && strings.Contains(ue.Err.Error(), "unsupported protocol scheme") {
		return false
	}
	return true
}

// backoff is the Backoff hook: the EHR's Retry-After when it sent one (checkRetry
// has already refused those above maxRetryAfter), else exponential with jitter
// between min and max.
func (c *Client) backoff(lo, hi time.Duration, attempt int, resp *http.Response) time.Duration {
	if resp != nil {
		if d, ok := retryAfter(resp.Header, c.now()); ok && d <= c.ep.Retry.MaxRetryAfter.D() {
			return d
		}
	}
	return jitterBackoff(lo, hi, attempt)
}

// prepareRetry is the PrepareRetry hook: the next attempt carries the current
// access token (it may have been renewed while waiting).
func (c *Client) prepareRetry(req *http.Request) error {
	tok, err := c.tokens.Token(req.Context())
	if err != nil {
		return err
	}
	req.Header = req.Header.Clone()
	setToken(req.Header, tok)
	return nil
}

func (c *Client) logRequest(_ retryablehttp.Logger, req *http.Request, attempt int) {
	if attempt == 0 {
		c.log.Debug("ehr request", "endpoint", c.ep.ID, "method", req.Method, "path", req.URL.Path, "attempt", attempt+1)
		return
	}
	c.log.Info("ehr retry", "endpoint", c.ep.ID, "method", req.Method, "path", req.URL.Path, "attempt", attempt+1)
}

func (c *Client) logResponse(_ retryablehttp.Logger, resp *http.Response) {
	level := slog.LevelDebug
	if resp.StatusCode >= 400 {
		level = slog.LevelInfo
	}
	c.log.Log(resp.Request.Context(), level, "ehr response", "endpoint", c.ep.ID,
		"method", resp.Request.Method, "path", resp.Request.URL.Path, "status", resp.StatusCode)
}
