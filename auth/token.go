package auth

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/kapfhir/kapfhir/treatment"
)

// Token endpoint constants (SMART Backend Services, RFC 7523).
const (
	GrantClientCredentials = "client_credentials"
	ClientAssertionType    = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	// TokenTypeAccess is the "typ" header of kapfhir's access tokens (RFC 9068),
	// so that no other JWT can pass for one.
	TokenTypeAccess = "at+jwt"
)

// Limits and defaults.
const (
	// DefaultTokenLifetime is how long an access token is valid.
	DefaultTokenLifetime = 5 * time.Minute
	// MaxAssertionLifetime is how far in the future an assertion's exp may be.
	MaxAssertionLifetime = 5 * time.Minute
	// DefaultLeeway absorbs clock skew when checking exp, nbf and iat.
	DefaultLeeway = 30 * time.Second
	// MaxTokenBytes is the largest assertion or access token read; longer
	// ones are refused before parsing.
	MaxTokenBytes = 8 << 10
	// maxJTILen bounds the jti kept by the replay cache.
	maxJTILen = 255
)

// JTIStore remembers the jti of every accepted client assertion until it
// expires. UseJTI records (clientID, jti) as used until expires and returns a
// treatment error of kind conflict when it is already recorded and unexpired;
// it may drop entries that expired before now. Any other error is a failure.
type JTIStore interface {
	UseJTI(ctx context.Context, clientID, jti string, expires, now time.Time) error
}

// TokenServerConfig configures a TokenServer.
type TokenServerConfig struct {
	// Issuer is kapfhir's base URL, e.g. "https://kapfhir.example.org": the
	// iss of every access token. Required.
	Issuer string
	// Audience is the aud of access tokens. Default: Issuer, because one token
	// opens kapfhir's whole surface (/fhir, /api/v1, admin): kapfhir is a
	// single resource server named by its base URL.
	Audience string
	// TokenURL is the aud clients must put in assertions. Default:
	// Issuer + "/auth/token".
	TokenURL string
	// TokenLifetime of access tokens. Default DefaultTokenLifetime.
	TokenLifetime time.Duration
	// Leeway for clock skew on an assertion's exp (past), nbf and iat.
	// Default DefaultLeeway. It never extends MaxAssertionLifetime.
	Leeway  time.Duration
	Keys    *KeySet  // required
	Clients Clients  // required
	JTIs    JTIStore // required: the replay cache
	// Fetcher fetches jwksUrl clients' key sets. Default: NewJWKSFetcher with
	// the defaults and Now.
	Fetcher *JWKSFetcher
	Now     func() time.Time
}

// TokenServer is the logic of POST /auth/token: it authenticates a client by
// its signed assertion and issues an access token. It is safe for concurrent use.
type TokenServer struct {
	issuer, audience, tokenURL string
	lifetime, leeway           time.Duration
	keys                       *KeySet
	clients                    Clients
	jtis                       JTIStore
	fetcher                    *JWKSFetcher
	now                        func() time.Time
	parser                     *jwt.Parser
}

// NewTokenServer checks c and returns a token server.
func NewTokenServer(c TokenServerConfig) (*TokenServer, error) {
	if c.Issuer == "" || c.Keys == nil || c.Clients == nil || c.JTIs == nil {
		return nil, errors.New("new token server: Issuer, Keys, Clients and JTIs are required")
	}
	s := &TokenServer{
		issuer:   strings.TrimSuffix(c.Issuer, "/"),
		audience: c.Audience,
		tokenURL: c.TokenURL,
		lifetime: c.TokenLifetime,
		leeway:   c.Leeway,
		keys:     c.Keys,
		clients:  c.Clients,
		jtis:     c.JTIs,
		fetcher:  c.Fetcher,
		now:      c.Now,
	}
	if s.audience == "" {
		s.audience = s.issuer
	}
	if s.tokenURL == "" {
		s.tokenURL = s.issuer + "/auth/token"
	}
	if s.lifetime <= 0 {
		s.lifetime = DefaultTokenLifetime
	}
	if s.leeway <= 0 {
		s.leeway = DefaultLeeway
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.fetcher == nil {
		s.fetcher = NewJWKSFetcher(FetcherOptions{Now: s.now})
	}
	s.parser = jwt.NewParser(
		jwt.WithValidMethods([]string{AlgRS384, AlgES384}),
		jwt.WithAudience(s.tokenURL),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(s.leeway),
		jwt.WithTimeFunc(s.now),
	)
	return s, nil
}

// TokenURL is the URL assertions must name as aud (for the SMART configuration).
func (s *TokenServer) TokenURL() string { return s.tokenURL }

// TokenResponse is the successful answer (RFC 6749 section 5.1); encode it
// with encoding/json and "Cache-Control: no-store".
type TokenResponse struct {
	AccessToken string `json:"access_token"`
	TokenType   string `json:"token_type"`
	ExpiresIn   int64  `json:"expires_in"`
	Scope       string `json:"scope"`
}

// Issued is a granted token request: the response to send, and who got what,
// for the audit log.
type Issued struct {
	Response  TokenResponse
	Principal Principal
}

// Token handles one token request. form holds the parameters of the
// application/x-www-form-urlencoded request body (never the query string).
// A refusal is an *OAuthError; any other error is a server failure (500).
func (s *TokenServer) Token(ctx context.Context, form url.Values) (Issued, error) {
	grant, err := single(form, "grant_type")
	if err != nil {
		return Issued{}, err
	}
	if grant != GrantClientCredentials {
		return Issued{}, unsupportedGrantType("grant_type must be " + GrantClientCredentials)
	}
	typ, err := single(form, "client_assertion_type")
	if err != nil {
		return Issued{}, err
	}
	if typ != ClientAssertionType {
		return Issued{}, invalidRequest("client_assertion_type must be " + ClientAssertionType)
	}
	assertion, err := single(form, "client_assertion")
	if err != nil {
		return Issued{}, err
	}
	scope, err := single(form, "scope")
	if err != nil {
		return Issued{}, err
	}
	clientIDParam, err := optional(form, "client_id")
	if err != nil {
		return Issued{}, err
	}

	client, claims, err := s.authenticate(ctx, assertion)
	if err != nil {
		return Issued{}, err
	}
	if clientIDParam != "" && clientIDParam != client.ID {
		return Issued{}, withClient(invalidClient("client_id does not match the assertion's iss"), client.ID)
	}

	requested, err := ParseScopes(scope)
	if err != nil {
		return Issued{}, withClient(invalidScope(strings.TrimPrefix(err.Error(), ErrScope.Error()+": ")), client.ID)
	}
	allowed, err := client.AllowedScopes()
	if err != nil {
		return Issued{}, fmt.Errorf("token: client %s: stored scopes: %w", client.ID, err)
	}
	granted := Narrow(requested, allowed)
	if len(granted) == 0 {
		return Issued{}, withClient(invalidScope("none of the requested scopes is allowed for this client"), client.ID)
	}

	now := s.now()
	if err := s.jtis.UseJTI(ctx, client.ID, claims.ID, claims.ExpiresAt.Time, now); err != nil {
		if treatment.ErrorKind(err) == treatment.KindConflict {
			return Issued{}, withClient(invalidClient("jti has already been used: every assertion needs a new jti"), client.ID)
		}
		return Issued{}, fmt.Errorf("token: client %s: replay check: %w", client.ID, err)
	}
	tok, p, err := s.issue(client, granted, now)
	if err != nil {
		return Issued{}, fmt.Errorf("token: client %s: %w", client.ID, err)
	}
	return Issued{
		Response:  TokenResponse{AccessToken: tok, TokenType: "bearer", ExpiresIn: int64(s.lifetime / time.Second), Scope: FormatScopes(granted)},
		Principal: p,
	}, nil
}

// single returns the one value of a required form parameter.
func single(form url.Values, name string) (string, error) {
	v, err := optional(form, name)
	if err == nil && v == "" {
		err = invalidRequest(name + " is required")
	}
	return v, err
}

// optional returns the value of a form parameter, or "" when absent.
func optional(form url.Values, name string) (string, error) {
	switch vs := form[name]; len(vs) {
	case 0:
		return "", nil
	case 1:
		return vs[0], nil
	default:
		return "", invalidRequest(name + " must not be repeated")
	}
}

// withClient records the authenticated client id on e, for logs.
func withClient(e *OAuthError, clientID string) *OAuthError {
	e.Err = fmt.Errorf("client %s", clientID)
	if ValidClientID(clientID) {
		e.ClientID = clientID
	}
	return e
}

// serverFailure marks a keyfunc error that is kapfhir's fault, not the client's.
type serverFailure struct{ err error }

func (f serverFailure) Error() string { return f.err.Error() }
func (f serverFailure) Unwrap() error { return f.err }

// authenticate verifies the client assertion and returns the client and its
// verified claims.
func (s *TokenServer) authenticate(ctx context.Context, assertion string) (Client, jwt.RegisteredClaims, error) {
	if len(assertion) > MaxTokenBytes {
		return Client{}, jwt.RegisteredClaims{}, invalidClient(fmt.Sprintf("client_assertion is longer than %d bytes", MaxTokenBytes))
	}
	var (
		claims jwt.RegisteredClaims
		client Client
	)
	keyFunc := func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		if kid == "" {
			return nil, invalidClient("client_assertion header has no kid")
		}
		if claims.Issuer == "" || claims.Subject == "" {
			return nil, invalidClient("iss and sub are required and must be the client_id")
		}
		if claims.Issuer != claims.Subject {
			return nil, invalidClient("iss and sub must both be the client_id")
		}
		if !ValidClientID(claims.Issuer) {
			return nil, invalidClient("unknown client")
		}
		c, err := s.clients.Client(ctx, claims.Issuer)
		if err != nil {
			if treatment.ErrorKind(err) == treatment.KindNotFound {
				return nil, invalidClient("unknown client")
			}
			return nil, serverFailure{fmt.Errorf("client %s: lookup: %w", claims.Issuer, err)}
		}
		client = c
		key, err := s.clientKey(ctx, c, kid)
		if err != nil {
			return nil, err
		}
		if key.alg != t.Method.Alg() {
			return nil, withClient(invalidClient(fmt.Sprintf("the key named by kid is for %s, not for the client_assertion's alg", key.alg)), c.ID)
		}
		return key.pub, nil
	}
	tok, err := s.parser.ParseWithClaims(assertion, &claims, keyFunc)
	if err != nil {
		err = s.assertionError(tok, &claims, client.ID, err)
		if oe, ok := AsOAuthError(err); ok && oe.ClientID == "" && ValidClientID(claims.Issuer) {
			oe.ClientID = claims.Issuer // claimed, not authenticated: for the audit record
		}
		return Client{}, jwt.RegisteredClaims{}, err
	}
	if claims.ExpiresAt.Time.After(s.now().Add(MaxAssertionLifetime)) {
		return Client{}, jwt.RegisteredClaims{}, withClient(invalidClient("exp must be at most 5 minutes in the future"), client.ID)
	}
	switch {
	case claims.ID == "":
		return Client{}, jwt.RegisteredClaims{}, withClient(invalidClient("jti is required"), client.ID)
	case len(claims.ID) > maxJTILen:
		return Client{}, jwt.RegisteredClaims{}, withClient(invalidClient(fmt.Sprintf("jti must be at most %d characters", maxJTILen)), client.ID)
	}
	return client, claims, nil
}

// clientKey finds the client's key named kid, inline or at its jwksUrl.
func (s *TokenServer) clientKey(ctx context.Context, c Client, kid string) (clientKey, error) {
	if !c.hasInlineJWKS() {
		if c.JWKSURL == "" {
			return clientKey{}, serverFailure{fmt.Errorf("client %s: has neither jwks nor jwksUrl", c.ID)}
		}
		k, err := s.fetcher.key(ctx, c.JWKSURL, kid)
		switch {
		case errors.Is(err, ErrUnknownKid):
			return clientKey{}, withClient(invalidClient("kid does not name a usable key in the client's JWKS"), c.ID)
		case err != nil:
			e := invalidClient("the client's JWKS could not be fetched")
			e.Err = fmt.Errorf("client %s: %w", c.ID, err)
			return clientKey{}, e
		}
		return k, nil
	}
	keys, _, err := parseJWKS(c.JWKS)
	if err != nil {
		return clientKey{}, serverFailure{fmt.Errorf("client %s: stored jwks %v", c.ID, err)}
	}
	k, ok := findKey(keys, kid)
	if !ok {
		return clientKey{}, withClient(invalidClient("kid does not name a usable key in the client's JWKS"), c.ID)
	}
	return k, nil
}

// assertionError turns a parse failure into the error to return.
func (s *TokenServer) assertionError(tok *jwt.Token, claims *jwt.RegisteredClaims, clientID string, err error) error {
	var oe *OAuthError
	if errors.As(err, &oe) {
		return oe
	}
	var sf serverFailure
	if errors.As(err, &sf) {
		return fmt.Errorf("token: %w", sf.err)
	}
	algRefused := tok != nil && (tok.Method == nil || !slices.Contains([]string{AlgRS384, AlgES384}, tok.Method.Alg()))
	var desc string
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		desc = "client_assertion is not a well-formed JWT"
	case errors.Is(err, jwt.ErrTokenUnverifiable), algRefused && errors.Is(err, jwt.ErrTokenSignatureInvalid):
		desc = "client_assertion alg must be RS384 or ES384"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		desc = "client_assertion signature does not verify with the key named by kid"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing) && claims.ExpiresAt == nil:
		desc = "exp is required"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing), errors.Is(err, jwt.ErrTokenInvalidAudience):
		desc = "aud must be the token URL " + s.tokenURL
	case errors.Is(err, jwt.ErrTokenExpired):
		desc = "client_assertion has expired"
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		desc = "iat is in the future"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		desc = "nbf is in the future"
	default:
		desc = "client_assertion is invalid"
	}
	e := invalidClient(desc)
	e.Err = err
	if clientID != "" {
		e.Err = fmt.Errorf("client %s: %w", clientID, err)
	}
	return e
}

// accessClaims are the claims of kapfhir's access tokens.
type accessClaims struct {
	jwt.RegisteredClaims
	ClientID string `json:"client_id"`
	Scope    string `json:"scope"`
	Role     Role   `json:"role"`
}

// issue signs an access token for client with the granted scopes.
func (s *TokenServer) issue(c Client, granted []Scope, now time.Time) (string, Principal, error) {
	key, err := s.keys.signer()
	if err != nil {
		return "", Principal{}, err
	}
	p := Principal{
		ClientID: c.ID,
		Role:     c.Role,
		Scopes:   granted,
		TokenID:  rand.Text(),
		Expires:  now.Add(s.lifetime).Truncate(time.Second),
	}
	claims := accessClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    s.issuer,
			Subject:   c.ID,
			Audience:  jwt.ClaimStrings{s.audience},
			ExpiresAt: jwt.NewNumericDate(p.Expires),
			IssuedAt:  jwt.NewNumericDate(now),
			ID:        p.TokenID,
		},
		ClientID: c.ID,
		Scope:    FormatScopes(granted),
		Role:     c.Role,
	}
	t := jwt.NewWithClaims(jwt.SigningMethodES384, claims)
	t.Header["kid"] = key.kid
	t.Header["typ"] = TokenTypeAccess
	signed, err := t.SignedString(key.priv)
	if err != nil {
		return "", Principal{}, fmt.Errorf("sign access token: %w", err)
	}
	return signed, p, nil
}
