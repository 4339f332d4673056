package server

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/kapfhir/kapfhir/auth"
	"github.com/kapfhir/kapfhir/treatment"
)

// fakeFront accepts the tokens "clinic", "ehr", "admin" and "auditor" as a
// principal of that role with system/*.rs (the real token logic is tested
// in package auth and end to end).
type fakeFront struct{}

func (fakeFront) Verify(tok string) (auth.Principal, error) {
	r := auth.Role(tok)
	if !r.Valid() {
		return auth.Principal{}, &treatment.Error{Kind: treatment.KindUnauthorized, Msg: "bad token"}
	}
	scopes, _ := auth.ParseScopes("system/*.rs")
	return auth.Principal{ClientID: "c-" + tok, Role: r, Scopes: scopes}, nil
}
func (fakeFront) Token(context.Context, url.Values, string) (auth.Issued, error) {
	return auth.Issued{}, &auth.OAuthError{Code: auth.CodeInvalidClient, Description: "no", Status: http.StatusUnauthorized}
}
func (fakeFront) TokenURL() string { return "http://kapfhir.test/auth/token" }
func (fakeFront) Issuer() string   { return "http://kapfhir.test" }
func (fakeFront) JWKS() []byte     { return []byte(`{"keys":[]}`) }

func TestEveryProtectedRouteNeedsAToken(t *testing.T) {
	e, _ := newTestServer(t, nil)
	ok := func(c echo.Context) error { return c.String(http.StatusOK, "data") }
	for _, p := range []string{"/fhir/CarePlan", "/fhir/CarePlan/x", "/fhir/AuditEvent", "/api/v1/patients/x", "/api/v1/endpoints", "/api/v1/clients", "/api/v1/audit/verify", "/api/v1/audit/sync"} {
		e.GET(p, ok)
	}
	e.POST("/api/v1/patients", ok)
	e.POST("/api/v1/endpoints", ok)
	for _, tt := range []struct {
		method, path, token string
		want                int
	}{
		{"GET", "/fhir/CarePlan", "none", 401},
		{"GET", "/fhir/CarePlan", "forged", 401},
		{"GET", "/fhir/CarePlan", "ehr", 200},
		{"GET", "/fhir/CarePlan/x", "clinic", 200},
		{"GET", "/fhir/CarePlan", "admin", 403},   // admin reads no clinical data
		{"GET", "/fhir/CarePlan", "auditor", 403}, // auditors read the audit trail only
		{"GET", "/fhir/AuditEvent", "auditor", 200},
		{"GET", "/fhir/AuditEvent", "clinic", 403},
		{"POST", "/api/v1/patients", "clinic", 200},
		{"POST", "/api/v1/patients", "ehr", 403},
		{"POST", "/api/v1/patients", "auditor", 403},
		{"GET", "/api/v1/patients/x", "ehr", 403},
		{"GET", "/api/v1/endpoints", "admin", 200},
		{"GET", "/api/v1/endpoints", "ehr", 403},
		{"POST", "/api/v1/endpoints", "clinic", 403},
		{"GET", "/api/v1/clients", "admin", 200},
		{"GET", "/api/v1/clients", "auditor", 403},
		{"GET", "/api/v1/audit/verify", "auditor", 200},
		{"GET", "/api/v1/audit/verify", "admin", 403},
		{"GET", "/api/v1/audit/sync", "auditor", 200},
		{"GET", "/fhir/metadata", "none", 404}, // public (no route in this test server)
		{"GET", "/.well-known/smart-configuration", "none", 200},
		{"GET", "/fhir/.well-known/smart-configuration", "none", 200},
		{"GET", "/auth/jwks.json", "none", 200},
	} {
		req := httptest.NewRequest(tt.method, tt.path, nil)
		req.Header.Set("Authorization", "Bearer "+tt.token)
		if tt.token == "none" {
			req.Header.Set("Authorization", "none")
		}
		rec := do(e, req)
		if rec.Code != tt.want {
			t.Errorf("%s %s as %s: %d, want %d: %s", tt.method, tt.path, tt.token, rec.Code, tt.want, rec.Body.String())
		}
		if rec.Code == 401 && !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s %s: 401 without a Bearer challenge", tt.method, tt.path)
		}
		if rec.Code == 403 && strings.HasPrefix(tt.path, "/fhir/") && !strings.Contains(rec.Body.String(), `"OperationOutcome"`) {
			t.Errorf("%s %s: 403 is not an OperationOutcome: %s", tt.method, tt.path, rec.Body.String())
		}
		if rec.Code == 403 && strings.HasPrefix(tt.path, "/api/") && !strings.Contains(rec.Header().Get("Content-Type"), "problem+json") {
			t.Errorf("%s %s: 403 is not problem+json", tt.method, tt.path)
		}
	}
}
