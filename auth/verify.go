package auth

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/kapfhir/kapfhir/treatment"
)

// Principal is the authenticated caller of a request: the client an access
// token was issued to, with what it may do.
type Principal struct {
	ClientID string
	Role     Role
	Scopes   []Scope
	// TokenID is the token's jti, for audit logs.
	TokenID string
	Expires time.Time
}

// Can reports whether p's role may perform a.
func (p Principal) Can(a Action) bool { return p.Role.Can(a) }

// CanReadFHIR reports whether p may read (PermRead) and/or search
// (PermSearch) FHIR resources of resourceType: its role must allow the
// action and the type (Role.CanReadType), and its scopes the permissions.
// kapfhir's FHIR surface is read-only, so any other permission is refused.
func (p Principal) CanReadFHIR(resourceType string, perm Perms) bool {
	if perm == 0 || perm&^(PermRead|PermSearch) != 0 {
		return false
	}
	if perm&PermRead != 0 && !p.Role.Can(FHIRRead) {
		return false
	}
	if perm&PermSearch != 0 && !p.Role.Can(FHIRSearch) {
		return false
	}
	return p.Role.CanReadType(resourceType) && Allows(p.Scopes, resourceType, perm)
}

// ErrInvalidToken is wrapped by every refusal of Verify and BearerToken. Such
// a refusal is a treatment error of kind unauthorized whose Msg is safe to
// send as the error_description of a WWW-Authenticate: Bearer
// error="invalid_token" challenge.
var ErrInvalidToken = errors.New("invalid access token")

// ErrUnknownKey is wrapped, with ErrInvalidToken, by the refusal of a token
// whose kid is not in the key set: retired, forged, or signed by a key that
// another process sharing the store created after this one loaded its keys
// (a caller may reload the key set and verify once more).
var ErrUnknownKey = errors.New("unknown signing key")

func invalidToken(msg string) error {
	return &treatment.Error{Kind: treatment.KindUnauthorized, Msg: msg, Err: ErrInvalidToken}
}

// BearerToken extracts the token from an Authorization header value
// ("Bearer <token>", scheme case-insensitive).
func BearerToken(authorization string) (string, error) {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(authorization), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", invalidToken("a Bearer access token is required")
	}
	tok = strings.TrimSpace(tok)
	if tok == "" {
		return "", invalidToken("a Bearer access token is required")
	}
	return tok, nil
}

// DefaultVerifierCacheSize is how many verified tokens a Verifier remembers.
const DefaultVerifierCacheSize = 10000

// DefaultVerifierLeeway absorbs clock skew when a Verifier checks exp, nbf
// and iat: a token verifies until its exp plus the leeway.
const DefaultVerifierLeeway = 5 * time.Second

// VerifierConfig configures a Verifier.
type VerifierConfig struct {
	Issuer   string  // required: as TokenServerConfig.Issuer
	Audience string  // default Issuer, as TokenServerConfig.Audience
	Keys     *KeySet // required
	// Leeway for clock skew on exp, nbf and iat. Default
	// DefaultVerifierLeeway: kapfhir signs and verifies with the same clock.
	Leeway    time.Duration
	CacheSize int // default DefaultVerifierCacheSize
	Now       func() time.Time
}

// Verifier checks kapfhir's access tokens. It is safe for concurrent use.
type Verifier struct {
	keys    *KeySet
	now     func() time.Time
	parser  *jwt.Parser
	maxSize int

	mu    sync.Mutex
	cache map[[sha256.Size]byte]cached
}

// cached is a verified token, valid until p.Expires while kid is in the key set.
type cached struct {
	p   Principal
	kid string
}

// NewVerifier checks c and returns a verifier.
func NewVerifier(c VerifierConfig) (*Verifier, error) {
	if c.Issuer == "" || c.Keys == nil {
		return nil, errors.New("new verifier: Issuer and Keys are required")
	}
	issuer := strings.TrimSuffix(c.Issuer, "/")
	aud := c.Audience
	if aud == "" {
		aud = issuer
	}
	if c.Leeway <= 0 {
		c.Leeway = DefaultVerifierLeeway
	}
	if c.CacheSize <= 0 {
		c.CacheSize = DefaultVerifierCacheSize
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return &Verifier{
		keys: c.Keys,
		now:  c.Now,
		parser: jwt.NewParser(
			jwt.WithValidMethods([]string{AlgES384}),
			jwt.WithIssuer(issuer),
			jwt.WithAudience(aud),
			jwt.WithExpirationRequired(),
			jwt.WithIssuedAt(),
			jwt.WithLeeway(c.Leeway),
			jwt.WithTimeFunc(c.Now),
		),
		maxSize: c.CacheSize,
		cache:   map[[sha256.Size]byte]cached{},
	}, nil
}

// Verify checks an access token and returns its principal. A refusal wraps
// ErrInvalidToken (see there); the message never echoes the token.
func (v *Verifier) Verify(token string) (Principal, error) {
	if len(token) > MaxTokenBytes {
		return Principal{}, invalidToken(fmt.Sprintf("access token is longer than %d bytes", MaxTokenBytes))
	}
	sum := sha256.Sum256([]byte(token))
	now := v.now()
	v.mu.Lock()
	c, hit := v.cache[sum]
	if hit && !now.Before(c.p.Expires) {
		delete(v.cache, sum)
		hit = false
	}
	v.mu.Unlock()
	if hit {
		if _, ok := v.keys.publicKey(c.kid); ok {
			return clonePrincipal(c.p), nil
		}
		v.mu.Lock()
		delete(v.cache, sum)
		v.mu.Unlock()
	}

	p, kid, err := v.verify(token)
	if err != nil {
		return Principal{}, err
	}
	if now.Before(p.Expires) {
		v.remember(sum, cached{p: p, kid: kid}, now)
	}
	return clonePrincipal(p), nil
}

func clonePrincipal(p Principal) Principal {
	p.Scopes = slices.Clone(p.Scopes)
	return p
}

// remember caches a verified token, making room when the cache is full: first
// by dropping expired entries, then arbitrary ones.
func (v *Verifier) remember(sum [sha256.Size]byte, c cached, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.cache) >= v.maxSize {
		for k, e := range v.cache {
			if !now.Before(e.p.Expires) {
				delete(v.cache, k)
			}
		}
		for k := range v.cache {
			if len(v.cache) < v.maxSize-v.maxSize/10 {
				break
			}
			delete(v.cache, k)
		}
	}
	v.cache[sum] = c
}

// verify parses and checks a token that is not cached.
func (v *Verifier) verify(token string) (Principal, string, error) {
	var (
		claims accessClaims
		kid    string
	)
	_, err := v.parser.ParseWithClaims(token, &claims, func(t *jwt.Token) (any, error) {
		typ, _ := t.Header["typ"].(string)
		if !strings.EqualFold(typ, TokenTypeAccess) && !strings.EqualFold(typ, "application/"+TokenTypeAccess) {
			return nil, invalidToken("not an access token (typ must be at+jwt)")
		}
		kid, _ = t.Header["kid"].(string)
		if kid == "" {
			return nil, invalidToken("access token header has no kid")
		}
		pub, ok := v.keys.publicKey(kid)
		if !ok {
			return nil, &treatment.Error{Kind: treatment.KindUnauthorized, Msg: "access token is signed by an unknown or retired key",
				Err: fmt.Errorf("%w: %w", ErrInvalidToken, ErrUnknownKey)}
		}
		return pub, nil
	})
	if err != nil {
		return Principal{}, "", tokenError(err)
	}
	switch {
	case claims.IssuedAt == nil:
		return Principal{}, "", invalidToken("access token has no iat")
	case claims.ID == "":
		return Principal{}, "", invalidToken("access token has no jti")
	case !ValidClientID(claims.Subject) || claims.ClientID != claims.Subject:
		return Principal{}, "", invalidToken("access token sub and client_id must name one client")
	case !claims.Role.Valid():
		return Principal{}, "", invalidToken("access token has an unknown role")
	}
	scopes, err := ParseScopes(claims.Scope)
	if err != nil {
		return Principal{}, "", invalidToken("access token has an invalid scope")
	}
	return Principal{
		ClientID: claims.ClientID,
		Role:     claims.Role,
		Scopes:   scopes,
		TokenID:  claims.ID,
		Expires:  claims.ExpiresAt.Time,
	}, kid, nil
}

// tokenError turns a parse failure into a caller-safe refusal.
func tokenError(err error) error {
	var te *treatment.Error
	if errors.As(err, &te) {
		return te
	}
	var msg string
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		msg = "access token is not a well-formed JWT"
	case errors.Is(err, jwt.ErrTokenUnverifiable), errors.Is(err, jwt.ErrTokenSignatureInvalid):
		msg = "access token signature is invalid"
	case errors.Is(err, jwt.ErrTokenExpired):
		msg = "access token has expired"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		msg = "access token was issued by another server"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		msg = "access token is for another audience"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		msg = "access token lacks a required claim"
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued), errors.Is(err, jwt.ErrTokenNotValidYet):
		msg = "access token is not valid yet"
	default:
		msg = "access token is invalid"
	}
	return &treatment.Error{Kind: treatment.KindUnauthorized, Msg: msg, Err: fmt.Errorf("%w: %w", ErrInvalidToken, err)}
}
