package ehrclient

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/kapfhir/kapfhir/auth"
	"github.com/kapfhir/kapfhir/endpoint"
	"github.com/kapfhir/kapfhir/treatment"
)

// AssertionLifetime is how long a SMART Backend Services client assertion is
// valid. The specification allows at most five minutes; a little less leaves
// room for clock skew with the authorization server.
const AssertionLifetime = 4 * time.Minute

// ClientAssertionType is the client_assertion_type of SMART Backend Services.
const ClientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// defaultTokenLifetime is assumed when a token response has no expires_in.
const defaultTokenLifetime = 5 * time.Minute

// tokenSource yields the access token to send, or "" for none.
type tokenSource interface {
	// Token returns a token valid now.
	Token(ctx context.Context) (string, error)
	// Invalidate drops tok if it is still the cached one, so that the next
	// Token renews. It reports whether renewing can help at all.
	Invalidate(tok string) bool
}

// staticToken is a fixed bearer token, or none at all.
type staticToken string

func (s staticToken) Token(context.Context) (string, error) { return string(s), nil }
func (s staticToken) Invalidate(string) bool                { return false }

// oauthSource obtains tokens with the client_credentials grant, caches them,
// renews them shortly before they expire, and lets only one renewal run at a
// time: concurrent callers wait for it.
type oauthSource struct {
	ep        endpoint.Endpoint
	signer    crypto.Signer // smart-backend only
	method    jwt.SigningMethod
	http      *http.Client // to the token endpoint and discovery; no retries, no rate limit
	now       func() time.Time
	log       *slog.Logger
	userAgent string

	mu       sync.Mutex
	tokenURL string // configured or discovered
	token    string
	expires  time.Time
	renewAt  time.Time
	inflight *renewal
}

// renewal is one token request in flight; done closes when it ends.
type renewal struct {
	done  chan struct{}
	token string
	err   error
}

func newOAuthSource(ep endpoint.Endpoint, hc *http.Client, now func() time.Time, log *slog.Logger, ua string) (*oauthSource, error) {
	s := &oauthSource{ep: ep, http: hc, now: now, log: log, userAgent: ua, tokenURL: ep.Auth.TokenURL}
	if ep.Auth.Type == endpoint.AuthSMARTBackend {
		key, err := endpoint.SigningKey(ep.Auth)
		if err != nil {
			return nil, treatment.Errorf(treatment.KindInvalid, "endpoint %s: private key %s", ep.ID, err)
		}
		s.signer = key
		switch ep.Auth.Alg {
		case endpoint.AlgRS384:
			s.method = jwt.SigningMethodRS384
		case endpoint.AlgES384:
			s.method = jwt.SigningMethodES384
		default:
			return nil, treatment.Errorf(treatment.KindInvalid, "endpoint %s: alg must be RS384 or ES384", ep.ID)
		}
	}
	return s, nil
}

// Token returns the cached token, or renews it when it is missing or close to
// expiry. When a renewal fails while the cached token is still valid, the
// cached token is used and the failure only logged.
func (s *oauthSource) Token(ctx context.Context) (string, error) {
	s.mu.Lock()
	now := s.now()
	if s.token != "" && now.Before(s.renewAt) {
		tok := s.token
		s.mu.Unlock()
		return tok, nil
	}
	r := s.inflight
	if r == nil {
		r = &renewal{done: make(chan struct{})}
		s.inflight = r
		// The renewal does not belong to any one caller: a caller that gives
		// up must not fail the others waiting for it.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.ep.Timeout())
		go func() {
			defer cancel()
			s.renew(rctx, r)
		}()
	}
	s.mu.Unlock()

	select {
	case <-r.done:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	if r.err == nil {
		return r.token, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.token != "" && s.now().Before(s.expires) {
		s.log.Warn("ehr token renewal failed; using the cached token until it expires",
			"endpoint", s.ep.ID, "error", r.err)
		return s.token, nil
	}
	return "", r.err
}

func (s *oauthSource) renew(ctx context.Context, r *renewal) {
	tok, lifetime, err := s.fetch(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		now := s.now()
		s.token = tok
		s.expires = now.Add(lifetime)
		s.renewAt = s.expires.Add(-renewMargin(lifetime))
		s.log.Debug("ehr token renewed", "endpoint", s.ep.ID, "expiresIn", lifetime)
	}
	r.token, r.err = tok, err
	s.inflight = nil
	close(r.done)
}

// renewMargin is how long before expiry a token is renewed: a tenth of its
// lifetime, at least 30 seconds, but never more than half of it.
func renewMargin(lifetime time.Duration) time.Duration {
	return min(max(lifetime/10, 30*time.Second), lifetime/2)
}

// Invalidate drops tok when it is still the cached token.
func (s *oauthSource) Invalidate(tok string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if tok != "" && tok == s.token {
		s.token = ""
		s.expires, s.renewAt = time.Time{}, time.Time{}
	}
	return true
}

// tokenResponse is the OAuth 2.0 token endpoint's answer (RFC 6749 5.1, 5.2).
type tokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	Error       string `json:"error"`
}

func (s *oauthSource) fetch(ctx context.Context) (string, time.Duration, error) {
	tokenURL, err := s.endpointURL(ctx)
	if err != nil {
		return "", 0, err
	}
	form := url.Values{"grant_type": {"client_credentials"}}
	if s.ep.Auth.Scope != "" {
		form.Set("scope", s.ep.Auth.Scope)
	}
	if s.ep.Auth.Type == endpoint.AuthSMARTBackend {
		assertion, err := s.assertion(tokenURL)
		if err != nil {
			return "", 0, treatment.Errorf(treatment.KindInternal, "endpoint %s: cannot sign the client assertion", s.ep.ID)
		}
		form.Set("client_assertion_type", ClientAssertionType)
		form.Set("client_assertion", assertion)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return "", 0, treatment.Errorf(treatment.KindInvalid, "endpoint %s: bad token URL", s.ep.ID)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if s.userAgent != "" {
		req.Header.Set("User-Agent", s.userAgent)
	}
	if s.ep.Auth.Type == endpoint.AuthClientSecret {
		// RFC 6749 2.3.1: both parts form-encoded before Basic.
		req.SetBasicAuth(url.QueryEscape(s.ep.Auth.ClientID), url.QueryEscape(s.ep.Auth.ClientSecret))
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return "", 0, transportError(ctx, s.ep.ID, "token request", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", 0, transportError(ctx, s.ep.ID, "token request", err)
	}
	var tr tokenResponse
	jsonErr := json.Unmarshal(body, &tr)
	s.log.Debug("ehr token response", "endpoint", s.ep.ID, "status", resp.StatusCode)
	switch {
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return "", 0, treatment.Errorf(treatment.KindUnavailable, "endpoint %s: token endpoint answered %d", s.ep.ID, resp.StatusCode)
	case resp.StatusCode != http.StatusOK:
		code := "no OAuth error code"
		if jsonErr == nil && tr.Error != "" {
			code = oauthErrorCode(tr.Error)
		}
		return "", 0, treatment.Errorf(treatment.KindUnauthorized, "endpoint %s: token endpoint refused the client (%d, %s)", s.ep.ID, resp.StatusCode, code)
	case jsonErr != nil || tr.AccessToken == "":
		return "", 0, treatment.Errorf(treatment.KindUnauthorized, "endpoint %s: token endpoint answered without an access token", s.ep.ID)
	case !strings.EqualFold(tr.TokenType, "bearer"):
		return "", 0, treatment.Errorf(treatment.KindUnauthorized, "endpoint %s: token endpoint issued a %q token; only bearer is supported", s.ep.ID, oauthErrorCode(tr.TokenType))
	}
	lifetime := defaultTokenLifetime
	if tr.ExpiresIn > 0 {
		lifetime = time.Duration(tr.ExpiresIn) * time.Second
	}
	return tr.AccessToken, lifetime, nil
}

// oauthErrorCode keeps an OAuth error code printable and short: it comes from
// the remote server and ends up in logs.
func oauthErrorCode(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return -1
		}
		return r
	}, s)
	if len(s) > 64 {
		s = s[:64]
	}
	return s
}

// assertion signs a SMART Backend Services client assertion for aud.
func (s *oauthSource) assertion(aud string) (string, error) {
	return auth.SignAssertion(s.method, s.signer, s.ep.Auth.ClientID, s.ep.Auth.Kid, aud, s.now(), AssertionLifetime)
}

// endpointURL returns the token URL: configured, or discovered once from the
// EHR's SMART configuration.
func (s *oauthSource) endpointURL(ctx context.Context) (string, error) {
	s.mu.Lock()
	u := s.tokenURL
	s.mu.Unlock()
	if u != "" {
		return u, nil
	}
	cfg, err := fetchSMARTConfiguration(ctx, s.http, s.ep, s.userAgent)
	if err != nil {
		return "", err
	}
	if cfg.TokenEndpoint == "" {
		return "", treatment.Errorf(treatment.KindUnauthorized, "endpoint %s: the SMART configuration names no token_endpoint", s.ep.ID)
	}
	if err := endpoint.CheckURL(cfg.TokenEndpoint, s.ep.AllowInsecureHTTP); err != nil {
		return "", treatment.Errorf(treatment.KindUnauthorized, "endpoint %s: the discovered token_endpoint %s", s.ep.ID, err)
	}
	s.mu.Lock()
	s.tokenURL = cfg.TokenEndpoint
	s.mu.Unlock()
	return cfg.TokenEndpoint, nil
}

// SMARTConfiguration is the part of {fhirBaseUrl}/.well-known/smart-configuration
// kapfhir uses.
type SMARTConfiguration struct {
	TokenEndpoint                              string   `json:"token_endpoint"`
	TokenEndpointAuthMethodsSupported          []string `json:"token_endpoint_auth_methods_supported,omitempty"`
	TokenEndpointAuthSigningAlgValuesSupported []string `json:"token_endpoint_auth_signing_alg_values_supported,omitempty"`
	GrantTypesSupported                        []string `json:"grant_types_supported,omitempty"`
	ScopesSupported                            []string `json:"scopes_supported,omitempty"`
	Capabilities                               []string `json:"capabilities,omitempty"`
}

// fetchSMARTConfiguration reads the SMART configuration without credentials.
func fetchSMARTConfiguration(ctx context.Context, hc *http.Client, ep endpoint.Endpoint, ua string) (*SMARTConfiguration, error) {
	u := strings.TrimSuffix(ep.FHIRBaseURL, "/") + "/.well-known/smart-configuration"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, treatment.Errorf(treatment.KindInvalid, "endpoint %s: bad FHIR base URL", ep.ID)
	}
	req.Header.Set("Accept", "application/json")
	if ua != "" {
		req.Header.Set("User-Agent", ua)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, transportError(ctx, ep.ID, "SMART configuration", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, transportError(ctx, ep.ID, "SMART configuration", err)
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return nil, treatment.Errorf(treatment.KindUnavailable, "endpoint %s: SMART configuration answered %d", ep.ID, resp.StatusCode)
	case resp.StatusCode != http.StatusOK:
		return nil, treatment.Errorf(treatment.KindUnauthorized, "endpoint %s: SMART configuration answered %d (configure auth.tokenUrl)", ep.ID, resp.StatusCode)
	}
	var cfg SMARTConfiguration
	if err := json.Unmarshal(body, &cfg); err != nil {
		return nil, treatment.Errorf(treatment.KindUnauthorized, "endpoint %s: SMART configuration is not valid JSON", ep.ID)
	}
	return &cfg, nil
}

// transportError turns a failed exchange into an unavailable error without
// the URL (it may carry a query with identifiers), or an invalid one when the
// dialer refused the address.
func transportError(ctx context.Context, id, what string, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if ctx.Err() != nil {
		return fmt.Errorf("endpoint %s: %s: %w", id, what, ctx.Err())
	}
	kind := treatment.KindUnavailable
	if errors.Is(err, ErrAddressRefused) {
		kind = treatment.KindInvalid
	}
	return &treatment.Error{Kind: kind, Msg: fmt.Sprintf("endpoint %s: %s failed", id, what), Err: err}
}
