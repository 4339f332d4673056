package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/kapfhir/kapfhir/treatment"
)

// t0 is the fixed start of every test clock.
var t0 = time.Date(2026, 1, 15, 10, 0, 0, 0, time.UTC)

// clock is a manual clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: t0} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// memJTIs is an in-memory JTIStore.
type memJTIs struct {
	mu   sync.Mutex
	used map[string]time.Time
}

func (m *memJTIs) UseJTI(_ context.Context, clientID, jti string, expires, now time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.used == nil {
		m.used = map[string]time.Time{}
	}
	key := clientID + "\x00" + jti
	if exp, ok := m.used[key]; ok && now.Before(exp) {
		return treatment.Errorf(treatment.KindConflict, "jti already used")
	}
	m.used[key] = expires
	return nil
}

// memClients is an in-memory Clients.
type memClients map[string]Client

func (m memClients) Client(_ context.Context, id string) (Client, error) {
	c, ok := m[id]
	if !ok {
		return Client{}, treatment.NotFound("client", id)
	}
	return c, nil
}

// Test keys are generated once: RSA generation is slow under -race.
var (
	rsaKey      = sync.OnceValue(func() *rsa.PrivateKey { return mustRSA(2048) })
	otherRSAKey = sync.OnceValue(func() *rsa.PrivateKey { return mustRSA(2048) })
	ecKey       = sync.OnceValue(func() *ecdsa.PrivateKey { return mustEC(elliptic.P384()) })
	otherECKey  = sync.OnceValue(func() *ecdsa.PrivateKey { return mustEC(elliptic.P384()) })
	p256Key     = sync.OnceValue(func() *ecdsa.PrivateKey { return mustEC(elliptic.P256()) })
	smallRSAKey = sync.OnceValue(func() *rsa.PrivateKey { return mustRSA(1024) })
	serverKey   = sync.OnceValue(func() StoredKey { return mustStoredKey(t0.Add(-time.Hour)) })
	foreignKey  = sync.OnceValue(func() StoredKey { return mustStoredKey(t0.Add(-time.Hour)) })
)

func mustRSA(bits int) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		panic(err)
	}
	return k
}

func mustEC(c elliptic.Curve) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

func mustStoredKey(created time.Time) StoredKey {
	k, err := GenerateKey(created)
	if err != nil {
		panic(err)
	}
	return k
}

var b64 = base64.RawURLEncoding

// jwkJSON renders a public key as a JWK map with kid (and extra members).
func jwkJSON(kid string, pub crypto.PublicKey, extra map[string]any) map[string]any {
	m := map[string]any{"kid": kid}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		m["kty"] = "RSA"
		m["n"] = b64.EncodeToString(k.N.Bytes())
		m["e"] = b64.EncodeToString(big.NewInt(int64(k.E)).Bytes())
	case *ecdsa.PublicKey:
		b, err := k.Bytes()
		if err != nil {
			panic(err)
		}
		n := (len(b) - 1) / 2
		m["kty"] = "EC"
		m["crv"] = k.Curve.Params().Name
		m["x"] = b64.EncodeToString(b[1 : 1+n])
		m["y"] = b64.EncodeToString(b[1+n:])
	}
	for k, v := range extra {
		m[k] = v
	}
	return m
}

// jwksJSON renders a JWKS of the given keys.
func jwksJSON(keys ...any) json.RawMessage {
	b, err := json.Marshal(map[string]any{"keys": keys})
	if err != nil {
		panic(err)
	}
	return b
}

const (
	issuer   = "https://kapfhir.test"
	tokenURL = "https://kapfhir.test/auth/token"
	rsaKid   = "rsa-1"
	ecKid    = "ec-1"
)

// fixture is a token server and verifier over in-memory clients.
type fixture struct {
	clock    *clock
	keys     *KeySet
	clients  memClients
	jtis     *memJTIs
	server   *TokenServer
	verifier *Verifier
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	f := &fixture{clock: newClock(), jtis: &memJTIs{}}
	keys, err := NewKeySet(f.clock.Now, serverKey())
	if err != nil {
		t.Fatal(err)
	}
	f.keys = keys
	f.clients = memClients{
		"ehr-1": {
			ID:     "ehr-1",
			JWKS:   jwksJSON(jwkJSON(rsaKid, &rsaKey().PublicKey, nil), jwkJSON(ecKid, &ecKey().PublicKey, nil)),
			Scopes: []string{"system/*.rs"},
			Role:   RoleEHR,
		},
		"audit-1": {
			ID:     "audit-1",
			JWKS:   jwksJSON(jwkJSON(ecKid, &ecKey().PublicKey, nil)),
			Scopes: []string{"system/AuditEvent.rs", "system/Provenance.rs"},
			Role:   RoleAuditor,
		},
	}
	f.server, err = NewTokenServer(TokenServerConfig{
		Issuer: issuer, Keys: keys, Clients: f.clients, JTIs: f.jtis, Now: f.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	f.verifier, err = NewVerifier(VerifierConfig{Issuer: issuer, Keys: keys, Now: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// claims are good assertion claims for client id at now.
func goodClaims(id string, now time.Time) jwt.MapClaims {
	return jwt.MapClaims{
		"iss": id,
		"sub": id,
		"aud": tokenURL,
		"exp": now.Add(4 * time.Minute).Unix(),
		"iat": now.Unix(),
		"jti": rand.Text(),
	}
}

// sign signs claims with method and key, setting kid unless it is "".
func sign(t testing.TB, m jwt.SigningMethod, key any, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return s
}

// form is a token request body.
func form(assertion, scope string) url.Values {
	return url.Values{
		"grant_type":            {GrantClientCredentials},
		"client_assertion_type": {ClientAssertionType},
		"client_assertion":      {assertion},
		"scope":                 {scope},
	}
}

func sha256b64(b []byte) string {
	s := sha256.Sum256(b)
	return b64.EncodeToString(s[:])
}

func contextWithCancel(t *testing.T) (context.Context, context.CancelFunc) {
	return context.WithCancel(t.Context())
}
