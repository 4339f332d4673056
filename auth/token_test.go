package auth

import (
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestTokenValidAssertions(t *testing.T) {
	tests := []struct {
		name       string
		client     string
		method     jwt.SigningMethod
		key        func() any
		kid        string
		scope      string
		wantScopes []Scope
		wantRole   Role
	}{
		{
			name: "RS384, v2 scopes narrowed", client: "ehr-1",
			method: jwt.SigningMethodRS384, key: func() any { return rsaKey() }, kid: rsaKid,
			scope:      "system/*.cruds",
			wantScopes: []Scope{{Type: "*", Perms: PermRead | PermSearch}},
			wantRole:   RoleEHR,
		},
		{
			name: "ES384, v1 scope narrowed to one type", client: "ehr-1",
			method: jwt.SigningMethodES384, key: func() any { return ecKey() }, kid: ecKid,
			scope:      "system/CarePlan.read system/Observation.r",
			wantScopes: []Scope{{Type: "CarePlan", Perms: PermRead | PermSearch}, {Type: "Observation", Perms: PermRead}},
			wantRole:   RoleEHR,
		},
		{
			name: "auditor asking for everything gets its types", client: "audit-1",
			method: jwt.SigningMethodES384, key: func() any { return ecKey() }, kid: ecKid,
			scope:      "system/*.*",
			wantScopes: []Scope{{Type: "AuditEvent", Perms: PermRead | PermSearch}, {Type: "Provenance", Perms: PermRead | PermSearch}},
			wantRole:   RoleAuditor,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			a := sign(t, tt.method, tt.key(), tt.kid, goodClaims(tt.client, f.clock.Now()))
			got, err := f.server.Token(t.Context(), form(a, tt.scope))
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			wantResp := TokenResponse{TokenType: "bearer", ExpiresIn: 300, Scope: FormatScopes(tt.wantScopes)}
			if diff := cmp.Diff(wantResp, got.Response, cmpopts.IgnoreFields(TokenResponse{}, "AccessToken")); diff != "" {
				t.Errorf("response (-want +got):\n%s", diff)
			}
			p, err := f.verifier.Verify(got.Response.AccessToken)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			want := Principal{
				ClientID: tt.client, Role: tt.wantRole, Scopes: tt.wantScopes,
				TokenID: got.Principal.TokenID, Expires: f.clock.Now().Add(DefaultTokenLifetime),
			}
			if diff := cmp.Diff(want, p); diff != "" {
				t.Errorf("principal (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(want, got.Principal); diff != "" {
				t.Errorf("issued principal (-want +got):\n%s", diff)
			}
			if got.Principal.TokenID == "" {
				t.Error("token has no jti")
			}
		})
	}
}

func TestTokenClaims(t *testing.T) {
	f := newFixture(t)
	a := sign(t, jwt.SigningMethodES384, ecKey(), ecKid, goodClaims("ehr-1", f.clock.Now()))
	got, err := f.server.Token(t.Context(), form(a, "system/Patient.rs"))
	if err != nil {
		t.Fatal(err)
	}
	claims := jwt.MapClaims{}
	tok, _, err := jwt.NewParser().ParseUnverified(got.Response.AccessToken, claims)
	if err != nil {
		t.Fatal(err)
	}
	now := f.clock.Now().Unix()
	wantHeader := map[string]any{"alg": "ES384", "typ": "at+jwt", "kid": serverKey().ID}
	if diff := cmp.Diff(wantHeader, tok.Header); diff != "" {
		t.Errorf("header (-want +got):\n%s", diff)
	}
	want := jwt.MapClaims{
		"iss": issuer, "aud": []any{issuer}, "sub": "ehr-1", "client_id": "ehr-1",
		"scope": "system/Patient.rs", "role": "ehr",
		"iat": float64(now), "exp": float64(now + 300), "jti": got.Principal.TokenID,
	}
	if diff := cmp.Diff(want, claims); diff != "" {
		t.Errorf("claims (-want +got):\n%s", diff)
	}
}

// TestTokenAttacks checks that every malformed or hostile token request is
// refused with the right OAuth error, and never yields a token.
func TestTokenAttacks(t *testing.T) {
	const scope = "system/*.rs"
	// assertion builds an assertion with good claims changed by mod.
	assertion := func(t *testing.T, now time.Time, mod func(jwt.MapClaims)) string {
		c := goodClaims("ehr-1", now)
		if mod != nil {
			mod(c)
		}
		return sign(t, jwt.SigningMethodRS384, rsaKey(), rsaKid, c)
	}
	pubPEM := func() []byte {
		der, err := x509.MarshalPKIXPublicKey(&rsaKey().PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	}

	tests := []struct {
		name     string
		form     func(t *testing.T, now time.Time) url.Values
		code     string
		status   int
		descPart string
	}{
		{
			name: "alg none",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, rsaKid, goodClaims("ehr-1", now)), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "alg must be RS384 or ES384",
		},
		{
			name: "HS256 with the public key as secret",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(sign(t, jwt.SigningMethodHS256, pubPEM(), rsaKid, goodClaims("ehr-1", now)), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "alg must be RS384 or ES384",
		},
		{
			name: "RS256 with the registered key",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(sign(t, jwt.SigningMethodRS256, rsaKey(), rsaKid, goodClaims("ehr-1", now)), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "alg must be RS384 or ES384",
		},
		{
			name: "ES256",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(sign(t, jwt.SigningMethodES256, p256Key(), ecKid, goodClaims("ehr-1", now)), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "alg must be RS384 or ES384",
		},
		{
			name: "unknown alg",
			form: func(t *testing.T, now time.Time) url.Values {
				a := sign(t, jwt.SigningMethodRS384, rsaKey(), rsaKid, goodClaims("ehr-1", now))
				parts := strings.Split(a, ".")
				parts[0] = b64.EncodeToString([]byte(`{"alg":"XX999","kid":"rsa-1"}`))
				return form(strings.Join(parts, "."), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "alg must be RS384 or ES384",
		},
		{
			name: "RS384 header naming the EC key",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(sign(t, jwt.SigningMethodRS384, rsaKey(), ecKid, goodClaims("ehr-1", now)), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "the key named by kid is for ES384",
		},
		{
			name: "wrong aud",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(assertion(t, now, func(c jwt.MapClaims) { c["aud"] = "https://other.test/token" }), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "aud must be the token URL " + tokenURL,
		},
		{
			name: "aud is our FHIR base",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(assertion(t, now, func(c jwt.MapClaims) { c["aud"] = issuer }), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "aud must be the token URL",
		},
		{
			name: "missing aud",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(assertion(t, now, func(c jwt.MapClaims) { delete(c, "aud") }), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "aud must be the token URL",
		},
		{
			name: "missing exp",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(assertion(t, now, func(c jwt.MapClaims) { delete(c, "exp") }), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "exp is required",
		},
		{
			name: "expired beyond the leeway",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(assertion(t, now, func(c jwt.MapClaims) {
					c["exp"] = now.Add(-31 * time.Second).Unix()
					c["iat"] = now.Add(-5 * time.Minute).Unix()
				}), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "client_assertion has expired",
		},
		{
			name: "exp more than 5 minutes ahead",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(assertion(t, now, func(c jwt.MapClaims) { c["exp"] = now.Add(5*time.Minute + time.Second).Unix() }), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "exp must be at most 5 minutes in the future",
		},
		{
			name: "iat in the future",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(assertion(t, now, func(c jwt.MapClaims) { c["iat"] = now.Add(2 * time.Minute).Unix() }), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "iat is in the future",
		},
		{
			name: "nbf in the future",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(assertion(t, now, func(c jwt.MapClaims) { c["nbf"] = now.Add(2 * time.Minute).Unix() }), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "nbf is in the future",
		},
		{
			name: "missing jti",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(assertion(t, now, func(c jwt.MapClaims) { delete(c, "jti") }), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "jti is required",
		},
		{
			name: "jti too long",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(assertion(t, now, func(c jwt.MapClaims) { c["jti"] = strings.Repeat("j", 256) }), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "jti must be at most 255 characters",
		},
		{
			name: "unknown kid",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(sign(t, jwt.SigningMethodRS384, rsaKey(), "nope", goodClaims("ehr-1", now)), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "kid does not name a usable key",
		},
		{
			name: "missing kid",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(sign(t, jwt.SigningMethodRS384, rsaKey(), "", goodClaims("ehr-1", now)), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "header has no kid",
		},
		{
			name: "signed by another key",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(sign(t, jwt.SigningMethodRS384, otherRSAKey(), rsaKid, goodClaims("ehr-1", now)), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "signature does not verify",
		},
		{
			name: "ES384 signed by another key",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(sign(t, jwt.SigningMethodES384, otherECKey(), ecKid, goodClaims("ehr-1", now)), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "signature does not verify",
		},
		{
			name: "payload changed after signing",
			form: func(t *testing.T, now time.Time) url.Values {
				parts := strings.Split(sign(t, jwt.SigningMethodRS384, rsaKey(), rsaKid, goodClaims("ehr-1", now)), ".")
				other := strings.Split(sign(t, jwt.SigningMethodRS384, otherRSAKey(), rsaKid, goodClaims("ehr-1", now)), ".")
				return form(parts[0]+"."+other[1]+"."+parts[2], scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "signature does not verify",
		},
		{
			name: "iss is not sub",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(assertion(t, now, func(c jwt.MapClaims) { c["sub"] = "audit-1" }), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "iss and sub must both be the client_id",
		},
		{
			name: "missing sub",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(assertion(t, now, func(c jwt.MapClaims) { delete(c, "sub") }), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "iss and sub are required",
		},
		{
			name: "unknown client",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(sign(t, jwt.SigningMethodRS384, rsaKey(), rsaKid, goodClaims("stranger", now)), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "unknown client",
		},
		{
			name: "client_id parameter names another client",
			form: func(t *testing.T, now time.Time) url.Values {
				v := form(assertion(t, now, nil), scope)
				v.Set("client_id", "audit-1")
				return v
			},
			code: CodeInvalidClient, status: 401, descPart: "client_id does not match",
		},
		{
			name: "scope escalation to a type not allowed",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(sign(t, jwt.SigningMethodES384, ecKey(), ecKid, goodClaims("audit-1", now)), "system/Patient.rs system/Observation.cruds")
			},
			code: CodeInvalidScope, status: 400, descPart: "none of the requested scopes is allowed",
		},
		{
			name: "scope escalation to write",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(assertion(t, now, nil), "system/*.cud")
			},
			code: CodeInvalidScope, status: 400, descPart: "none of the requested scopes is allowed",
		},
		{
			name: "patient scope",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(assertion(t, now, nil), "patient/*.rs")
			},
			code: CodeInvalidScope, status: 400, descPart: "patient/ scopes are not available to backend services",
		},
		{
			name: "user scope beside a good one",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(assertion(t, now, nil), "system/*.rs user/Patient.read")
			},
			code: CodeInvalidScope, status: 400, descPart: "user/ scopes are not available",
		},
		{
			name: "oversized assertion",
			form: func(t *testing.T, now time.Time) url.Values {
				return form(assertion(t, now, func(c jwt.MapClaims) { c["pad"] = strings.Repeat("x", MaxTokenBytes) }), scope)
			},
			code: CodeInvalidClient, status: 401, descPart: "longer than 8192 bytes",
		},
		{
			name: "not a JWT",
			form: func(t *testing.T, now time.Time) url.Values { return form("not-a-jwt", scope) },
			code: CodeInvalidClient, status: 401, descPart: "not a well-formed JWT",
		},
		{
			name: "wrong grant_type",
			form: func(t *testing.T, now time.Time) url.Values {
				v := form(assertion(t, now, nil), scope)
				v.Set("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
				return v
			},
			code: CodeUnsupportedGrantType, status: 400, descPart: "grant_type must be client_credentials",
		},
		{
			name: "missing grant_type",
			form: func(t *testing.T, now time.Time) url.Values {
				v := form(assertion(t, now, nil), scope)
				v.Del("grant_type")
				return v
			},
			code: CodeInvalidRequest, status: 400, descPart: "grant_type is required",
		},
		{
			name: "wrong assertion type",
			form: func(t *testing.T, now time.Time) url.Values {
				v := form(assertion(t, now, nil), scope)
				v.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:saml2-bearer")
				return v
			},
			code: CodeInvalidRequest, status: 400, descPart: "client_assertion_type must be",
		},
		{
			name: "repeated assertion",
			form: func(t *testing.T, now time.Time) url.Values {
				v := form(assertion(t, now, nil), scope)
				v.Add("client_assertion", assertion(t, now, nil))
				return v
			},
			code: CodeInvalidRequest, status: 400, descPart: "client_assertion must not be repeated",
		},
		{
			name: "missing scope",
			form: func(t *testing.T, now time.Time) url.Values {
				v := form(assertion(t, now, nil), scope)
				v.Del("scope")
				return v
			},
			code: CodeInvalidRequest, status: 400, descPart: "scope is required",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			v := tt.form(t, f.clock.Now())
			got, err := f.server.Token(t.Context(), v)
			checkRefused(t, got, err, tt.code, tt.status, tt.descPart, v.Get("client_assertion"))
		})
	}
}

// checkRefused asserts an OAuth refusal without a token.
func checkRefused(t *testing.T, got Issued, err error, code string, status int, descPart, assertion string) {
	t.Helper()
	if diff := cmp.Diff(Issued{}, got); diff != "" {
		t.Errorf("a token was issued (-want +got):\n%s", diff)
	}
	oe, ok := AsOAuthError(err)
	if !ok {
		t.Fatalf("error = %v, want an *OAuthError", err)
	}
	if oe.Code != code || oe.Status != status {
		t.Errorf("error = %s %d (%s), want %s %d", oe.Code, oe.Status, oe.Description, code, status)
	}
	if !strings.Contains(oe.Description, descPart) {
		t.Errorf("description = %q, want it to contain %q", oe.Description, descPart)
	}
	if len(assertion) > 20 {
		for _, part := range strings.Split(assertion, ".") {
			if len(part) > 20 && strings.Contains(oe.Error(), part) {
				t.Errorf("error echoes the assertion: %q", oe.Error())
			}
		}
	}
}

func TestTokenReusedJTI(t *testing.T) {
	f := newFixture(t)
	c := goodClaims("ehr-1", f.clock.Now())
	a := sign(t, jwt.SigningMethodRS384, rsaKey(), rsaKid, c)
	if _, err := f.server.Token(t.Context(), form(a, "system/*.rs")); err != nil {
		t.Fatalf("first use: %v", err)
	}
	// The same assertion again, and a new assertion with the same jti.
	got, err := f.server.Token(t.Context(), form(a, "system/*.rs"))
	checkRefused(t, got, err, CodeInvalidClient, http.StatusUnauthorized, "jti has already been used", a)
	f.clock.Advance(time.Minute)
	c2 := goodClaims("ehr-1", f.clock.Now())
	c2["jti"] = c["jti"]
	a2 := sign(t, jwt.SigningMethodES384, ecKey(), ecKid, c2)
	got, err = f.server.Token(t.Context(), form(a2, "system/*.rs"))
	checkRefused(t, got, err, CodeInvalidClient, http.StatusUnauthorized, "jti has already been used", a2)
	// Another client may use the same jti: jtis are per client.
	c3 := goodClaims("audit-1", f.clock.Now())
	c3["jti"] = c["jti"]
	if _, err := f.server.Token(t.Context(), form(sign(t, jwt.SigningMethodES384, ecKey(), ecKid, c3), "system/AuditEvent.rs")); err != nil {
		t.Errorf("other client, same jti: %v", err)
	}
}

func TestTokenLeewayOnExpOnly(t *testing.T) {
	f := newFixture(t)
	now := f.clock.Now()
	c := goodClaims("ehr-1", now)
	c["exp"] = now.Add(-20 * time.Second).Unix() // within the leeway
	if _, err := f.server.Token(t.Context(), form(sign(t, jwt.SigningMethodRS384, rsaKey(), rsaKid, c), "system/*.rs")); err != nil {
		t.Errorf("exp 20 s ago: %v, want accepted (clock skew)", err)
	}
	c = goodClaims("ehr-1", now)
	c["exp"] = now.Add(MaxAssertionLifetime).Unix() // exactly 5 minutes: allowed
	if _, err := f.server.Token(t.Context(), form(sign(t, jwt.SigningMethodRS384, rsaKey(), rsaKid, c), "system/*.rs")); err != nil {
		t.Errorf("exp in exactly 5 minutes: %v, want accepted", err)
	}
}

func TestTokenCustomLifetimeAndNoKey(t *testing.T) {
	c := newClock()
	keys, err := NewKeySet(c.Now)
	if err != nil {
		t.Fatal(err)
	}
	clients := memClients{"ehr-1": {ID: "ehr-1", JWKS: jwksJSON(jwkJSON(rsaKid, &rsaKey().PublicKey, nil)), Scopes: []string{"system/*.rs"}, Role: RoleEHR}}
	s, err := NewTokenServer(TokenServerConfig{Issuer: issuer + "/", Keys: keys, Clients: clients, JTIs: &memJTIs{}, Now: c.Now, TokenLifetime: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if s.TokenURL() != tokenURL {
		t.Errorf("TokenURL = %q, want %q", s.TokenURL(), tokenURL)
	}
	// No signing key yet: a server failure, not an OAuth error.
	_, err = s.Token(t.Context(), form(sign(t, jwt.SigningMethodRS384, rsaKey(), rsaKid, goodClaims("ehr-1", c.Now())), "system/*.rs"))
	if _, ok := AsOAuthError(err); ok || err == nil {
		t.Fatalf("Token without keys: %v, want a server failure", err)
	}
	if _, err := keys.Rotate(); err != nil {
		t.Fatal(err)
	}
	got, err := s.Token(t.Context(), form(sign(t, jwt.SigningMethodRS384, rsaKey(), rsaKid, goodClaims("ehr-1", c.Now())), "system/*.rs"))
	if err != nil {
		t.Fatal(err)
	}
	if got.Response.ExpiresIn != 60 || !got.Principal.Expires.Equal(c.Now().Add(time.Minute)) {
		t.Errorf("expires_in = %d, expires %v; want 60 s", got.Response.ExpiresIn, got.Principal.Expires)
	}
}

func TestNewTokenServerRequires(t *testing.T) {
	if _, err := NewTokenServer(TokenServerConfig{Issuer: issuer}); err == nil {
		t.Error("NewTokenServer without keys, clients and jtis succeeded")
	}
	if _, err := NewVerifier(VerifierConfig{}); err == nil {
		t.Error("NewVerifier without issuer and keys succeeded")
	}
}
