package server

import (
	"context"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/kapfhir/kapfhir/audit"
	"github.com/kapfhir/kapfhir/auth"
	"github.com/kapfhir/kapfhir/throttle"
	"github.com/kapfhir/kapfhir/treatment"
)

// Front is the authorization server (package access): it verifies the
// bearer tokens of every protected request and answers /auth/token.
type Front interface {
	Verify(token string) (auth.Principal, error)
	Token(ctx context.Context, form url.Values, addr string) (auth.Issued, error)
	TokenURL() string
	Issuer() string
	JWKS() []byte
}

// Recorder appends audit records in a transaction of their own: reads,
// searches and refused requests (changes audit themselves, in their own
// transaction).
type Recorder interface {
	AppendAudit(ctx context.Context, recs ...audit.Record) ([]audit.Record, error)
}

// Throttle limits each client's request rate.
type Throttle interface {
	Allow(clientID string) (bool, time.Duration)
}

// public routes need no token: discovery, keys, the token endpoint itself,
// the CapabilityStatement and the health probes.
func public(path string) bool {
	switch path {
	case "/fhir/metadata", "/fhir/.well-known/smart-configuration", "/.well-known/smart-configuration",
		"/auth/token", "/auth/jwks.json", "/healthz", "/readyz":
		return true
	}
	return false
}

// registerAuth mounts the SMART discovery document, the token endpoint and
// kapfhir's public keys.
func registerAuth(e *echo.Echo, f Front) {
	smart := func(c echo.Context) error {
		c.Response().Header().Set("Cache-Control", "no-store")
		return c.JSON(http.StatusOK, map[string]any{
			"issuer":                                f.Issuer(),
			"jwks_uri":                              f.Issuer() + "/auth/jwks.json",
			"token_endpoint":                        f.TokenURL(),
			"grant_types_supported":                 []string{auth.GrantClientCredentials},
			"token_endpoint_auth_methods_supported": []string{"private_key_jwt"},
			"token_endpoint_auth_signing_alg_values_supported": []string{auth.AlgRS384, auth.AlgES384},
			"scopes_supported": []string{"system/*.rs", "system/*.read", "system/CarePlan.rs", "system/Appointment.rs",
				"system/Observation.rs", "system/Patient.rs", "system/Goal.rs", "system/PlanDefinition.rs",
				"system/AuditEvent.rs", "system/Provenance.rs"},
			"capabilities": []string{"client-confidential-asymmetric"},
		})
	}
	e.GET("/.well-known/smart-configuration", smart)
	e.GET("/fhir/.well-known/smart-configuration", smart)
	e.GET("/auth/jwks.json", func(c echo.Context) error {
		return c.Blob(http.StatusOK, "application/jwk-set+json", f.JWKS())
	})
	e.POST("/auth/token", func(c echo.Context) error {
		h := c.Response().Header()
		h.Set("Cache-Control", "no-store")
		h.Set("Pragma", "no-cache")
		req := c.Request()
		mt, _, _ := mime.ParseMediaType(req.Header.Get(echo.HeaderContentType))
		if mt != echo.MIMEApplicationForm {
			return c.JSON(http.StatusBadRequest, auth.OAuthError{Code: auth.CodeInvalidRequest, Description: "the body must be application/x-www-form-urlencoded"})
		}
		if err := req.ParseForm(); err != nil {
			return c.JSON(http.StatusBadRequest, auth.OAuthError{Code: auth.CodeInvalidRequest, Description: "the body is not a valid form"})
		}
		form := req.PostForm // never the query string: it ends up in logs and caches
		iss, err := f.Token(req.Context(), form, c.RealIP())
		if oe, ok := auth.AsOAuthError(err); ok && err != nil {
			if oe.Status == http.StatusUnauthorized {
				h.Set("WWW-Authenticate", `Bearer realm="kapfhir"`)
			}
			return c.JSON(oe.Status, oe)
		}
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, iss.Response)
	})
}

// authenticate requires a valid bearer token on every route that is not
// public, checks the route's permission, throttles per client, puts the
// agent in the request context and audits reads and refusals.
func authenticate(f Front, rec Recorder, th Throttle, source string, now func() time.Time, log *slog.Logger) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			req := c.Request()
			path := req.URL.Path
			if public(path) || !(isFHIR(path) || strings.HasPrefix(path, "/api/")) {
				return next(c)
			}
			r := routeOf(req)
			ev := newEvent(c, r, source, now)
			tok, err := auth.BearerToken(req.Header.Get("Authorization"))
			var p auth.Principal
			if err == nil {
				p, err = f.Verify(tok)
			}
			if err != nil {
				c.Response().Header().Set("WWW-Authenticate", challenge(tok != ""))
				ev.Outcome, ev.OutcomeDesc = audit.MinorFailure, "no valid bearer token"
				record(c, rec, ev, log)
				return &treatment.Error{Kind: treatment.KindUnauthorized, Msg: "a valid bearer token is required (SMART Backend Services: POST /auth/token)"}
			}
			ev.Agent.ClientID, ev.Agent.Role = p.ClientID, string(p.Role)
			if err := permit(p, r); err != nil {
				ev.Outcome, ev.OutcomeDesc = audit.MinorFailure, err.Error()
				record(c, rec, ev, log)
				return err
			}
			if th != nil {
				if ok, wait := th.Allow(p.ClientID); !ok {
					c.Response().Header().Set("Retry-After", throttle.RetryAfterSeconds(wait))
					return echo.NewHTTPError(http.StatusTooManyRequests, "too many requests from this client; retry later")
				}
			}
			c.SetRequest(req.WithContext(audit.WithAgent(req.Context(), ev.Agent)))
			if !r.read {
				return audited(c, next, r, rec, ev, log)
			}
			return auditedRead(c, next, rec, ev)
		}
	}
}

func challenge(hadToken bool) string {
	if hadToken {
		return `Bearer realm="kapfhir", error="invalid_token"`
	}
	return `Bearer realm="kapfhir"`
}

// closed is the Front of a server built without one: every token is refused.
type closed struct{}

func (closed) Verify(string) (auth.Principal, error) {
	return auth.Principal{}, &treatment.Error{Kind: treatment.KindUnauthorized, Msg: "no authorization server is configured"}
}
func (closed) Token(context.Context, url.Values, string) (auth.Issued, error) {
	return auth.Issued{}, &auth.OAuthError{Code: auth.CodeInvalidClient, Description: "no authorization server is configured", Status: http.StatusUnauthorized}
}
func (closed) TokenURL() string { return "" }
func (closed) Issuer() string   { return "" }
func (closed) JWKS() []byte     { return []byte(`{"keys":[]}`) }
