package auth

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/treatment"
)

// issueToken gets an access token for ehr-1 from f.
func issueToken(t *testing.T, f *fixture) string {
	t.Helper()
	a := sign(t, jwt.SigningMethodES384, ecKey(), ecKid, goodClaims("ehr-1", f.clock.Now()))
	got, err := f.server.Token(t.Context(), form(a, "system/*.rs"))
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	return got.Response.AccessToken
}

// checkInvalidToken asserts a Verify refusal.
func checkInvalidToken(t *testing.T, p Principal, err error, msgPart string) {
	t.Helper()
	if diff := cmp.Diff(Principal{}, p); diff != "" {
		t.Errorf("a principal was returned (-want +got):\n%s", diff)
	}
	if !errors.Is(err, ErrInvalidToken) || treatment.ErrorKind(err) != treatment.KindUnauthorized {
		t.Fatalf("error = %v, want an unauthorized ErrInvalidToken", err)
	}
	var te *treatment.Error
	errors.As(err, &te)
	if !strings.Contains(te.Msg, msgPart) {
		t.Errorf("message = %q, want it to contain %q", te.Msg, msgPart)
	}
	// Only an unknown kid invites the caller to reload its keys.
	if unknown := strings.Contains(te.Msg, "unknown or retired key"); errors.Is(err, ErrUnknownKey) != unknown {
		t.Errorf("errors.Is(%v, ErrUnknownKey) = %v, want %v", err, !unknown, unknown)
	}
}

func TestVerifierAttacks(t *testing.T) {
	// ours signs tokens with the given claims changes, by our own key.
	ours := func(t *testing.T, f *fixture, header map[string]any, mod func(c jwt.MapClaims)) string {
		now := f.clock.Now()
		c := jwt.MapClaims{
			"iss": issuer, "aud": issuer, "sub": "ehr-1", "client_id": "ehr-1", "scope": "system/*.rs",
			"role": "ehr", "iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(), "jti": "t1",
		}
		if mod != nil {
			mod(c)
		}
		tok := jwt.NewWithClaims(jwt.SigningMethodES384, c)
		tok.Header["kid"] = serverKey().ID
		tok.Header["typ"] = "at+jwt"
		for k, v := range header {
			if v == nil {
				delete(tok.Header, k)
			} else {
				tok.Header[k] = v
			}
		}
		priv, err := ParsePrivateKey(serverKey().PEM)
		if err != nil {
			t.Fatal(err)
		}
		s, err := tok.SignedString(priv)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	tests := []struct {
		name    string
		token   func(t *testing.T, f *fixture) string
		msgPart string
	}{
		{
			name: "from another issuer, same keys",
			token: func(t *testing.T, f *fixture) string {
				other, err := NewTokenServer(TokenServerConfig{
					Issuer: "https://evil.test", TokenURL: tokenURL, Audience: issuer,
					Keys: f.keys, Clients: f.clients, JTIs: &memJTIs{}, Now: f.clock.Now,
				})
				if err != nil {
					t.Fatal(err)
				}
				a := sign(t, jwt.SigningMethodES384, ecKey(), ecKid, goodClaims("ehr-1", f.clock.Now()))
				got, err := other.Token(t.Context(), form(a, "system/*.rs"))
				if err != nil {
					t.Fatal(err)
				}
				return got.Response.AccessToken
			},
			msgPart: "issued by another server",
		},
		{
			name: "signed by a key not in the key set",
			token: func(t *testing.T, f *fixture) string {
				keys, err := NewKeySet(f.clock.Now, foreignKey())
				if err != nil {
					t.Fatal(err)
				}
				other, err := NewTokenServer(TokenServerConfig{Issuer: issuer, Keys: keys, Clients: f.clients, JTIs: &memJTIs{}, Now: f.clock.Now})
				if err != nil {
					t.Fatal(err)
				}
				a := sign(t, jwt.SigningMethodES384, ecKey(), ecKid, goodClaims("ehr-1", f.clock.Now()))
				got, err := other.Token(t.Context(), form(a, "system/*.rs"))
				if err != nil {
					t.Fatal(err)
				}
				return got.Response.AccessToken
			},
			msgPart: "unknown or retired key",
		},
		{
			name: "foreign key claiming our kid",
			token: func(t *testing.T, f *fixture) string {
				tok := jwt.NewWithClaims(jwt.SigningMethodES384, jwt.MapClaims{"iss": issuer, "aud": issuer, "sub": "ehr-1", "client_id": "ehr-1", "role": "admin", "scope": "system/*.cruds", "iat": f.clock.Now().Unix(), "exp": f.clock.Now().Add(time.Minute).Unix(), "jti": "x"})
				tok.Header["kid"] = serverKey().ID
				tok.Header["typ"] = "at+jwt"
				priv, err := ParsePrivateKey(foreignKey().PEM)
				if err != nil {
					t.Fatal(err)
				}
				s, err := tok.SignedString(priv)
				if err != nil {
					t.Fatal(err)
				}
				return s
			},
			msgPart: "signature is invalid",
		},
		{
			name: "alg none",
			token: func(t *testing.T, f *fixture) string {
				tok := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"iss": issuer, "aud": issuer, "sub": "ehr-1", "exp": f.clock.Now().Add(time.Minute).Unix()})
				tok.Header["kid"] = serverKey().ID
				tok.Header["typ"] = "at+jwt"
				s, err := tok.SignedString(jwt.UnsafeAllowNoneSignatureType)
				if err != nil {
					t.Fatal(err)
				}
				return s
			},
			msgPart: "signature is invalid",
		},
		{
			name: "a client assertion presented as an access token",
			token: func(t *testing.T, f *fixture) string {
				return sign(t, jwt.SigningMethodES384, ecKey(), ecKid, goodClaims("ehr-1", f.clock.Now()))
			},
			msgPart: "typ must be at+jwt",
		},
		{
			name:    "missing typ",
			token:   func(t *testing.T, f *fixture) string { return ours(t, f, map[string]any{"typ": nil}, nil) },
			msgPart: "typ must be at+jwt",
		},
		{
			name:    "missing kid",
			token:   func(t *testing.T, f *fixture) string { return ours(t, f, map[string]any{"kid": nil}, nil) },
			msgPart: "no kid",
		},
		{
			name: "wrong audience",
			token: func(t *testing.T, f *fixture) string {
				return ours(t, f, nil, func(c jwt.MapClaims) { c["aud"] = "https://other.test" })
			},
			msgPart: "another audience",
		},
		{
			name: "missing exp",
			token: func(t *testing.T, f *fixture) string {
				return ours(t, f, nil, func(c jwt.MapClaims) { delete(c, "exp") })
			},
			msgPart: "lacks a required claim",
		},
		{
			name: "missing iat",
			token: func(t *testing.T, f *fixture) string {
				return ours(t, f, nil, func(c jwt.MapClaims) { delete(c, "iat") })
			},
			msgPart: "no iat",
		},
		{
			name: "iat in the future",
			token: func(t *testing.T, f *fixture) string {
				return ours(t, f, nil, func(c jwt.MapClaims) { c["iat"] = f.clock.Now().Add(time.Minute).Unix() })
			},
			msgPart: "not valid yet",
		},
		{
			name: "missing jti",
			token: func(t *testing.T, f *fixture) string {
				return ours(t, f, nil, func(c jwt.MapClaims) { delete(c, "jti") })
			},
			msgPart: "no jti",
		},
		{
			name: "sub differs from client_id",
			token: func(t *testing.T, f *fixture) string {
				return ours(t, f, nil, func(c jwt.MapClaims) { c["sub"] = "audit-1" })
			},
			msgPart: "sub and client_id",
		},
		{
			name: "unknown role",
			token: func(t *testing.T, f *fixture) string {
				return ours(t, f, nil, func(c jwt.MapClaims) { c["role"] = "root" })
			},
			msgPart: "unknown role",
		},
		{
			name: "patient scope",
			token: func(t *testing.T, f *fixture) string {
				return ours(t, f, nil, func(c jwt.MapClaims) { c["scope"] = "patient/*.rs" })
			},
			msgPart: "invalid scope",
		},
		{
			name: "oversized",
			token: func(t *testing.T, f *fixture) string {
				return ours(t, f, nil, func(c jwt.MapClaims) { c["pad"] = strings.Repeat("x", MaxTokenBytes) })
			},
			msgPart: "longer than 8192 bytes",
		},
		{
			name:    "garbage",
			token:   func(t *testing.T, f *fixture) string { return "a.b.c" },
			msgPart: "not a well-formed JWT",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			p, err := f.verifier.Verify(tt.token(t, f))
			checkInvalidToken(t, p, err, tt.msgPart)
		})
	}
}

func TestVerifierExpiryAndCache(t *testing.T) {
	f := newFixture(t)
	tok := issueToken(t, f)
	p1, err := f.verifier.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	// The cached principal cannot be changed through a returned copy.
	p1.Scopes[0] = Scope{Type: "*", Perms: PermAll}
	p2, err := f.verifier.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]Scope{{Type: "*", Perms: PermRead | PermSearch}}, p2.Scopes); diff != "" {
		t.Errorf("scopes after a caller changed a copy (-want +got):\n%s", diff)
	}
	f.clock.Advance(DefaultTokenLifetime - time.Second)
	if _, err := f.verifier.Verify(tok); err != nil {
		t.Errorf("1 s before exp: %v", err)
	}
	// At exp the cache no longer answers; the parser's leeway (5 s) still does.
	f.clock.Advance(time.Second)
	if _, err := f.verifier.Verify(tok); err != nil {
		t.Errorf("at exp, within the leeway: %v", err)
	}
	f.clock.Advance(6 * time.Second)
	p, err := f.verifier.Verify(tok)
	checkInvalidToken(t, p, err, "expired")
}

func TestVerifierCacheBounded(t *testing.T) {
	f := newFixture(t)
	v, err := NewVerifier(VerifierConfig{Issuer: issuer, Keys: f.keys, Now: f.clock.Now, CacheSize: 3})
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := v.Verify(issueToken(t, f)); err != nil {
			t.Fatal(err)
		}
		if n := len(v.cache); n > 3 {
			t.Fatalf("cache holds %d entries, want at most 3", n)
		}
	}
}

func TestRotation(t *testing.T) {
	f := newFixture(t)
	old := issueToken(t, f)
	if _, err := f.verifier.Verify(old); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Minute)
	nk, err := f.keys.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.verifier.Verify(old); err != nil {
		t.Errorf("old token after Rotate: %v", err)
	}
	fresh := issueToken(t, f)
	tok, _, err := jwt.NewParser().ParseUnverified(fresh, jwt.MapClaims{})
	if err != nil {
		t.Fatal(err)
	}
	if tok.Header["kid"] != nk.ID {
		t.Errorf("new token kid = %v, want the new key %s", tok.Header["kid"], nk.ID)
	}
	if diff := cmp.Diff([]string{serverKey().ID, nk.ID}, f.keys.KeyIDs()); diff != "" {
		t.Errorf("key ids (-want +got):\n%s", diff)
	}
	if err := f.keys.Retire(serverKey().ID); err != nil {
		t.Fatal(err)
	}
	p, err := f.verifier.Verify(old) // cached, but its key is gone
	checkInvalidToken(t, p, err, "unknown or retired key")
	if !errors.Is(err, ErrUnknownKey) {
		t.Errorf("refusal of a retired key's token = %v, want ErrUnknownKey (a caller may reload its keys)", err)
	}
	if _, err := f.verifier.Verify(fresh); err != nil {
		t.Errorf("new token after retiring the old key: %v", err)
	}
}

func TestBearerToken(t *testing.T) {
	tests := []struct {
		header string
		want   string
		ok     bool
	}{
		{"Bearer abc.def.ghi", "abc.def.ghi", true},
		{"bearer  abc", "abc", true},
		{"Basic dXNlcjpwYXNz", "", false},
		{"Bearer", "", false},
		{"Bearer ", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		got, err := BearerToken(tt.header)
		if got != tt.want || (err == nil) != tt.ok {
			t.Errorf("BearerToken(%q) = %q, %v; want %q, ok %v", tt.header, got, err, tt.want, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidToken) {
			t.Errorf("BearerToken(%q) error %v does not wrap ErrInvalidToken", tt.header, err)
		}
	}
}

func TestConcurrentTokensAndVerify(t *testing.T) {
	f := newFixture(t)
	errs := make(chan error, 16)
	for range 8 {
		a := sign(t, jwt.SigningMethodES384, ecKey(), ecKid, goodClaims("ehr-1", f.clock.Now()))
		go func() {
			got, err := f.server.Token(t.Context(), form(a, "system/*.rs"))
			if err != nil {
				errs <- err
				return
			}
			for range 3 {
				if _, err := f.verifier.Verify(got.Response.AccessToken); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
