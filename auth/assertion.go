package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
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
