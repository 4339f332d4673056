package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"slices"
)

// The client assertion algorithms SMART Backend Services requires servers to
// support. No others are accepted.
const (
	AlgRS384 = "RS384"
	AlgES384 = "ES384"
)

// RSA key sizes accepted in a client's JWKS. The upper bound keeps signature
// checks cheap for an unauthenticated caller.
const (
	minRSABits = 2048
	maxRSABits = 8192
)

// jwk holds the JSON Web Key members kapfhir reads (RFC 7517, RFC 7518
// section 6). Private members are read only to refuse them.
type jwk struct {
	Kty    string   `json:"kty"`
	Kid    string   `json:"kid"`
	Use    string   `json:"use"`
	KeyOps []string `json:"key_ops"`
	Alg    string   `json:"alg"`
	// EC
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
	// RSA
	N string `json:"n"`
	E string `json:"e"`
	// Private members (EC and RSA "d", RSA primes and CRT values, oct "k").
	D  string `json:"d"`
	P  string `json:"p"`
	Q  string `json:"q"`
	DP string `json:"dp"`
	DQ string `json:"dq"`
	QI string `json:"qi"`
	K  string `json:"k"`
}

// clientKey is one public key of a client, usable for exactly one algorithm.
type clientKey struct {
	kid string
	alg string // AlgRS384 or AlgES384
	pub crypto.PublicKey
}

// keyProblem is why the key at Index of a JWKS cannot be used.
type keyProblem struct {
	Index  int
	Reason string
}

// maxJWKSKeys bounds the number of keys read from one JWKS.
const maxJWKSKeys = 100

// parseJWKS reads a JSON Web Key Set. It returns the keys usable to verify
// RS384 or ES384 client assertions and, for the others, why not. Keys that are
// merely not meant for signatures (use "enc", key_ops without "verify", a kty
// kapfhir does not know) are skipped without a problem. The error is for a
// document that is not a JWKS at all.
func parseJWKS(data []byte) ([]clientKey, []keyProblem, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, nil, errors.New("is not a JSON Web Key Set (a JSON object with a keys array)")
	}
	if set.Keys == nil {
		return nil, nil, errors.New("has no keys array")
	}
	if len(set.Keys) > maxJWKSKeys {
		return nil, nil, fmt.Errorf("holds more than %d keys", maxJWKSKeys)
	}
	var keys []clientKey
	var problems []keyProblem
	seen := map[string]bool{}
	for i, raw := range set.Keys {
		k, skip, err := parseJWK(raw)
		switch {
		case err != nil:
			problems = append(problems, keyProblem{Index: i, Reason: err.Error()})
		case skip:
		case seen[k.kid]:
			problems = append(problems, keyProblem{Index: i, Reason: "kid is used by another key of this set"})
		default:
			seen[k.kid] = true
			keys = append(keys, k)
		}
	}
	return keys, problems, nil
}

// parseJWK reads one key. skip is true for keys that are not signature keys
// kapfhir knows; err says why a signature key is unusable.
func parseJWK(raw json.RawMessage) (k clientKey, skip bool, err error) {
	var j jwk
	if err := json.Unmarshal(raw, &j); err != nil {
		return clientKey{}, false, errors.New("is not a JSON Web Key")
	}
	if j.K != "" || j.Kty == "oct" {
		return clientKey{}, false, errors.New("is a symmetric key: a JWKS must hold public keys only")
	}
	if j.D != "" || j.P != "" || j.Q != "" || j.DP != "" || j.DQ != "" || j.QI != "" {
		return clientKey{}, false, errors.New("holds private key material: publish the public key only")
	}
	if j.Kty != "RSA" && j.Kty != "EC" {
		return clientKey{}, true, nil
	}
	if j.Use != "" && j.Use != "sig" {
		return clientKey{}, true, nil
	}
	if j.KeyOps != nil && !slices.Contains(j.KeyOps, "verify") {
		return clientKey{}, true, nil
	}
	if j.Kid == "" {
		return clientKey{}, false, errors.New("kid is required (client assertions name their key by kid)")
	}
	k.kid = j.Kid
	switch j.Kty {
	case "RSA":
		if j.Alg != "" && j.Alg != AlgRS384 {
			return clientKey{}, false, fmt.Errorf("alg must be %s for an RSA key", AlgRS384)
		}
		pub, err := rsaPublicKey(j.N, j.E)
		if err != nil {
			return clientKey{}, false, err
		}
		k.alg, k.pub = AlgRS384, pub
	case "EC":
		if j.Alg != "" && j.Alg != AlgES384 {
			return clientKey{}, false, fmt.Errorf("alg must be %s for an EC key", AlgES384)
		}
		if j.Crv != "P-384" {
			return clientKey{}, false, errors.New("crv must be P-384 (ES384 signs with P-384)")
		}
		pub, err := ecPublicKey(j.X, j.Y)
		if err != nil {
			return clientKey{}, false, err
		}
		k.alg, k.pub = AlgES384, pub
	}
	return k, false, nil
}

// rsaPublicKey decodes the RSA modulus and exponent members.
func rsaPublicKey(n64, e64 string) (*rsa.PublicKey, error) {
	nb, err := base64.RawURLEncoding.DecodeString(n64)
	if err != nil || len(nb) == 0 {
		return nil, errors.New("n must be the base64url-encoded modulus")
	}
	eb, err := base64.RawURLEncoding.DecodeString(e64)
	if err != nil || len(eb) == 0 || len(eb) > 4 {
		return nil, errors.New("e must be the base64url-encoded public exponent")
	}
	n := new(big.Int).SetBytes(nb)
	if bits := n.BitLen(); bits < minRSABits || bits > maxRSABits {
		return nil, fmt.Errorf("RSA key must have %d to %d bits", minRSABits, maxRSABits)
	}
	var e int64
	for _, b := range eb {
		e = e<<8 | int64(b)
	}
	if e < 3 || e%2 == 0 || e > 1<<31-1 {
		return nil, errors.New("e must be an odd public exponent of at least 3")
	}
	return &rsa.PublicKey{N: n, E: int(e)}, nil
}

// p384CoordLen is the length of one P-384 coordinate (RFC 7518 6.2.1.2: the
// full length of the field, leading zeros kept).
const p384CoordLen = 48

// ecPublicKey decodes the P-384 point members and checks the point.
func ecPublicKey(x64, y64 string) (*ecdsa.PublicKey, error) {
	x, errX := base64.RawURLEncoding.DecodeString(x64)
	y, errY := base64.RawURLEncoding.DecodeString(y64)
	if errX != nil || errY != nil || len(x) != p384CoordLen || len(y) != p384CoordLen {
		return nil, fmt.Errorf("x and y must be base64url-encoded %d-byte P-384 coordinates", p384CoordLen)
	}
	pt := make([]byte, 0, 1+2*p384CoordLen)
	pt = append(pt, 4)
	pt = append(pt, x...)
	pt = append(pt, y...)
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P384(), pt)
	if err != nil {
		return nil, errors.New("x and y are not a point on P-384")
	}
	return pub, nil
}

// publicJWK is the JSON form of one of kapfhir's own public keys, members in
// RFC 7517 / 7518 names.
type publicJWK struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
	Kid string `json:"kid"`
	Alg string `json:"alg"`
	Use string `json:"use"`
}

// ecCoordinates returns the base64url x and y of a P-384 public key.
func ecCoordinates(pub *ecdsa.PublicKey) (x, y string, err error) {
	b, err := pub.Bytes()
	if err != nil {
		return "", "", err
	}
	if len(b) != 1+2*p384CoordLen || b[0] != 4 {
		return "", "", errors.New("not an uncompressed P-384 point")
	}
	enc := base64.RawURLEncoding
	return enc.EncodeToString(b[1 : 1+p384CoordLen]), enc.EncodeToString(b[1+p384CoordLen:]), nil
}

// toJWK renders a P-384 public key for the JWKS kapfhir publishes.
func toJWK(kid string, pub *ecdsa.PublicKey) (publicJWK, error) {
	x, y, err := ecCoordinates(pub)
	if err != nil {
		return publicJWK{}, err
	}
	return publicJWK{Kty: "EC", Crv: "P-384", X: x, Y: y, Kid: kid, Alg: AlgES384, Use: "sig"}, nil
}

// Thumbprint returns the RFC 7638 JWK thumbprint (SHA-256, base64url) of a
// P-384 public key. kapfhir uses it as the key's kid, so a kid is stable
// across restarts and never names two keys.
func Thumbprint(pub *ecdsa.PublicKey) (string, error) {
	x, y, err := ecCoordinates(pub)
	if err != nil {
		return "", fmt.Errorf("thumbprint: %w", err)
	}
	// The required members in lexicographic order, no whitespace (RFC 7638
	// section 3.2). x and y are base64url, so they need no JSON escaping.
	sum := sha256.Sum256([]byte(`{"crv":"P-384","kty":"EC","x":"` + x + `","y":"` + y + `"}`))
	return base64.RawURLEncoding.EncodeToString(sum[:]), nil
}
