package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// SignAssertion signs a SMART Backend Services client assertion (the client
// side of POST /auth/token, for kapfhir's own CLI and for the EHR client):
// iss = sub = clientID, aud = tokenURL, a random jti, exp = now + lifetime
// (at most MaxAssertionLifetime), kid in the header. method is RS384 or
// ES384 and key the matching private key.
func SignAssertion(method jwt.SigningMethod, key crypto.Signer, clientID, kid, tokenURL string, now time.Time, lifetime time.Duration) (string, error) {
	if method != jwt.SigningMethodRS384 && method != jwt.SigningMethodES384 {
		return "", fmt.Errorf("sign assertion: algorithm %s is not RS384 or ES384", method.Alg())
	}
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", fmt.Errorf("sign assertion: %w", err)
	}
	if lifetime <= 0 || lifetime > MaxAssertionLifetime {
		lifetime = MaxAssertionLifetime
	}
	claims := jwt.RegisteredClaims{
		Issuer:    clientID,
		Subject:   clientID,
		Audience:  jwt.ClaimStrings{tokenURL},
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(lifetime)),
		ID:        hex.EncodeToString(jti[:]),
	}
	t := jwt.NewWithClaims(method, claims)
	t.Header["kid"] = kid
	s, err := t.SignedString(key)
	if err != nil {
		return "", fmt.Errorf("sign assertion: %w", err)
	}
	return s, nil
}

// PublicJWKS is the JSON Web Key Set of one P-384 public key with kid, for
// registering a client whose key kapfhir generated (the bootstrap admin).
func PublicJWKS(kid string, pub *ecdsa.PublicKey) ([]byte, error) {
	j, err := toJWK(kid, pub)
	if err != nil {
		return nil, fmt.Errorf("public jwks: %w", err)
	}
	return json.Marshal(struct {
		Keys []publicJWK `json:"keys"`
	}{Keys: []publicJWK{j}})
}

// ClientKey is a P-384 key pair kapfhir generated for one of its clients.
type ClientKey struct {
	Private *ecdsa.PrivateKey
	// PEM is the private key, PKCS#8: the client keeps it.
	PEM []byte
	// KID is the key's RFC 7638 thumbprint; JWKS holds the public key under it.
	KID  string
	JWKS []byte
}

// NewClientKey generates a client key pair.
func NewClientKey() (ClientKey, error) {
	k, err := GenerateKey(time.Now())
	if err != nil {
		return ClientKey{}, err
	}
	priv, err := ParsePrivateKey(k.PEM)
	if err != nil {
		return ClientKey{}, err
	}
	jwks, err := PublicJWKS(k.ID, &priv.PublicKey)
	if err != nil {
		return ClientKey{}, err
	}
	return ClientKey{Private: priv, PEM: k.PEM, KID: k.ID, JWKS: jwks}, nil
}

// RequestToken is the client side of POST /auth/token for a client holding
// an ES384 key: it signs an assertion for tokenURL and returns the access
// token, or an error naming the OAuth error the server answered.
func RequestToken(ctx context.Context, hc *http.Client, tokenURL, clientID string, key *ecdsa.PrivateKey, kid, scope string) (string, error) {
	a, err := SignAssertion(jwt.SigningMethodES384, key, clientID, kid, tokenURL, time.Now(), time.Minute)
	if err != nil {
		return "", err
	}
	form := url.Values{"grant_type": {GrantClientCredentials}, "scope": {scope},
		"client_assertion_type": {ClientAssertionType}, "client_assertion": {a}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return "", fmt.Errorf("request token: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("request token: %w", err)
	}
	defer resp.Body.Close()
	var out struct {
		AccessToken string `json:"access_token"`
		OAuthError
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&out); err != nil {
		return "", fmt.Errorf("request token: %s answered %d", tokenURL, resp.StatusCode)
	}
	if resp.StatusCode != http.StatusOK || out.AccessToken == "" {
		return "", fmt.Errorf("request token: refused (%d): %s: %s", resp.StatusCode, out.Code, out.Description)
	}
	return out.AccessToken, nil
}
