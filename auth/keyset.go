package auth

import (
	"cmp"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/kapfhir/kapfhir/treatment"
)

// StoredKey is one of kapfhir's own signing keys in the form the store keeps:
// the caller persists these bytes (they are a secret) and loads them at start.
type StoredKey struct {
	// ID is the key's kid: its RFC 7638 thumbprint.
	ID string
	// PEM is the private key, PKCS#8 in a "PRIVATE KEY" PEM block.
	PEM []byte
	// Created orders the keys: the newest signs.
	Created time.Time
}

// GenerateKey makes a new P-384 signing key, created at the given time.
func GenerateKey(created time.Time) (StoredKey, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return StoredKey{}, fmt.Errorf("generate key: %w", err)
	}
	b, err := MarshalPrivateKey(priv)
	if err != nil {
		return StoredKey{}, fmt.Errorf("generate key: %w", err)
	}
	kid, err := Thumbprint(&priv.PublicKey)
	if err != nil {
		return StoredKey{}, fmt.Errorf("generate key: %w", err)
	}
	return StoredKey{ID: kid, PEM: b, Created: created}, nil
}

// MarshalPrivateKey encodes a P-384 private key as PKCS#8 PEM.
func MarshalPrivateKey(k *ecdsa.PrivateKey) ([]byte, error) {
	if k == nil || k.Curve != elliptic.P384() {
		return nil, errors.New("marshal private key: not a P-384 key")
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("marshal private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParsePrivateKey decodes a PKCS#8 PEM private key and checks that it is a
// P-384 ECDSA key. Errors never include key material.
func ParsePrivateKey(data []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("parse private key: expected a PKCS#8 \"PRIVATE KEY\" PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, errors.New("parse private key: not a valid PKCS#8 key")
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P384() {
		return nil, errors.New("parse private key: must be an ECDSA P-384 key")
	}
	return ec, nil
}

// ownKey is a loaded signing key.
type ownKey struct {
	kid     string
	priv    *ecdsa.PrivateKey
	created time.Time
}

// KeySet holds kapfhir's signing keys. The newest signs access tokens; every
// key in the set verifies them, so rotation needs no downtime: Rotate adds a
// new signing key, and the old one keeps verifying the tokens it signed until
// it is retired, once they have all expired (RetireSuperseded). It is safe for
// concurrent use.
type KeySet struct {
	now func() time.Time

	mu   sync.RWMutex
	keys []ownKey // oldest first; the last one signs
}

// NewKeySet returns a key set holding keys (in any order). It may be empty
// until the first Rotate.
func NewKeySet(now func() time.Time, keys ...StoredKey) (*KeySet, error) {
	if now == nil {
		now = time.Now
	}
	ks := &KeySet{now: now}
	for _, k := range keys {
		if err := ks.Add(k); err != nil {
			return nil, err
		}
	}
	return ks, nil
}

// Add loads a stored key. Adding a key already in the set does nothing. The
// ID, when set, must be the key's thumbprint.
func (ks *KeySet) Add(k StoredKey) error {
	o, err := loadKey(k)
	if err != nil {
		return err
	}
	ks.mu.Lock()
	defer ks.mu.Unlock()
	if slices.ContainsFunc(ks.keys, func(x ownKey) bool { return x.kid == o.kid }) {
		return nil
	}
	ks.keys = append(ks.keys, o)
	sortKeys(ks.keys)
	return nil
}

// Replace makes the set hold exactly keys (a key given twice counts once),
// for a caller that reloads the keys other processes stored. Every key is
// loaded first: on an error the set is unchanged; otherwise the new keys
// take the old ones' place at once, so signers and verifiers see either
// the old set or the new one, never a mix. Tokens verified and cached under
// a key no longer in the set stop verifying.
func (ks *KeySet) Replace(keys ...StoredKey) error {
	next := make([]ownKey, 0, len(keys))
	for _, k := range keys {
		o, err := loadKey(k)
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(next, func(x ownKey) bool { return x.kid == o.kid }) {
			next = append(next, o)
		}
	}
	sortKeys(next)
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.keys = next
	return nil
}

// loadKey parses a stored key and checks its id.
func loadKey(k StoredKey) (ownKey, error) {
	priv, err := ParsePrivateKey(k.PEM)
	if err != nil {
		return ownKey{}, fmt.Errorf("key set: %w", err)
	}
	kid, err := Thumbprint(&priv.PublicKey)
	if err != nil {
		return ownKey{}, fmt.Errorf("key set: %w", err)
	}
	if k.ID != "" && k.ID != kid {
		return ownKey{}, errors.New("key set: the key's id is not its thumbprint")
	}
	return ownKey{kid: kid, priv: priv, created: k.Created}, nil
}

// sortKeys orders keys oldest first (ties by kid), so the last one signs.
func sortKeys(keys []ownKey) {
	slices.SortStableFunc(keys, func(a, b ownKey) int {
		if c := a.created.Compare(b.created); c != 0 {
			return c
		}
		return cmp.Compare(a.kid, b.kid)
	})
}

// Rotate generates a new key that signs from now on and returns it for the
// caller to persist. Older keys keep verifying until retired.
func (ks *KeySet) Rotate() (StoredKey, error) {
	now := ks.now()
	ks.mu.RLock()
	if n := len(ks.keys); n > 0 && !now.After(ks.keys[n-1].created) {
		// Keep the new key the newest even if the clock stands still.
		now = ks.keys[n-1].created.Add(time.Nanosecond)
	}
	ks.mu.RUnlock()
	k, err := GenerateKey(now)
	if err != nil {
		return StoredKey{}, fmt.Errorf("rotate: %w", err)
	}
	if err := ks.Add(k); err != nil {
		return StoredKey{}, fmt.Errorf("rotate: %w", err)
	}
	return k, nil
}

// Retire removes key kid: tokens it signed no longer verify. Unknown kid is a
// treatment not_found error; retiring the only key is a conflict (rotate first).
func (ks *KeySet) Retire(kid string) error {
	ks.mu.Lock()
	defer ks.mu.Unlock()
	i := slices.IndexFunc(ks.keys, func(o ownKey) bool { return o.kid == kid })
	if i < 0 {
		return treatment.NotFound("signing key", kid)
	}
	if len(ks.keys) == 1 {
		return treatment.Errorf(treatment.KindConflict, "signing key %q is the only key: rotate before retiring it", kid)
	}
	ks.keys = slices.Delete(ks.keys, i, i+1)
	return nil
}

// RetireSuperseded retires every key that stopped signing (a newer key was
// created) more than grace ago, and returns their kids so the caller can
// delete them from the store. Pass the access-token lifetime plus the
// verifier's leeway as grace: by then every token such a key signed has
// expired. See Superseded.
func (ks *KeySet) RetireSuperseded(grace time.Duration) []string {
	now := ks.now()
	ks.mu.Lock()
	defer ks.mu.Unlock()
	var retired []string
	keep := ks.keys[:0:0]
	for i, k := range ks.keys {
		if superseded(ks.keys, i, now, grace) {
			retired = append(retired, k.kid)
			continue
		}
		keep = append(keep, k)
	}
	ks.keys = keep
	return retired
}

// Superseded returns, oldest first, the ids of the keys among keys that
// stopped signing (a newer key was created) at least grace before now: the
// keys due for retirement, by the rule RetireSuperseded applies. The
// newest key is never among them. Every key needs its ID.
func Superseded(keys []StoredKey, now time.Time, grace time.Duration) []string {
	sorted := make([]ownKey, len(keys))
	for i, k := range keys {
		sorted[i] = ownKey{kid: k.ID, created: k.Created}
	}
	sortKeys(sorted)
	var out []string
	for i, k := range sorted {
		if superseded(sorted, i, now, grace) {
			out = append(out, k.kid)
		}
	}
	return out
}

// superseded reports whether keys[i] (keys oldest first) stopped signing,
// when keys[i+1] was created, at least grace before now.
func superseded(keys []ownKey, i int, now time.Time, grace time.Duration) bool {
	return i < len(keys)-1 && !now.Before(keys[i+1].created.Add(grace))
}

// KeyIDs lists the kids in the set, oldest first; the last one signs.
func (ks *KeySet) KeyIDs() []string {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	ids := make([]string, len(ks.keys))
	for i, k := range ks.keys {
		ids[i] = k.kid
	}
	return ids
}

// JWKS returns the public JSON Web Key Set (RFC 7517) to serve at
// /auth/jwks.json, newest key first. It holds no private material.
func (ks *KeySet) JWKS() []byte {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	set := struct {
		Keys []publicJWK `json:"keys"`
	}{Keys: []publicJWK{}}
	for i := len(ks.keys) - 1; i >= 0; i-- {
		k := ks.keys[i]
		j, err := toJWK(k.kid, &k.priv.PublicKey)
		if err != nil {
			continue // cannot happen for a P-384 key parsed by ParsePrivateKey
		}
		set.Keys = append(set.Keys, j)
	}
	b, err := json.Marshal(set)
	if err != nil {
		return []byte(`{"keys":[]}`)
	}
	return b
}

// signer returns the newest key.
func (ks *KeySet) signer() (ownKey, error) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	if len(ks.keys) == 0 {
		return ownKey{}, treatment.Errorf(treatment.KindUnavailable, "no signing key: rotate to create one")
	}
	return ks.keys[len(ks.keys)-1], nil
}

// publicKey returns the public key kid, if the set holds it.
func (ks *KeySet) publicKey(kid string) (*ecdsa.PublicKey, bool) {
	ks.mu.RLock()
	defer ks.mu.RUnlock()
	for _, k := range ks.keys {
		if k.kid == kid {
			return &k.priv.PublicKey, true
		}
	}
	return nil, false
}
