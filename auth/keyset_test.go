package auth

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/treatment"
)

func TestPrivateKeyPEMRoundTrip(t *testing.T) {
	k := serverKey()
	if !strings.HasPrefix(string(k.PEM), "-----BEGIN PRIVATE KEY-----") {
		t.Errorf("PEM does not start with a PKCS#8 block: %.30q", k.PEM)
	}
	priv, err := ParsePrivateKey(k.PEM)
	if err != nil {
		t.Fatal(err)
	}
	again, err := MarshalPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if string(again) != string(k.PEM) {
		t.Error("marshal(parse(pem)) differs from pem")
	}
	kid, err := Thumbprint(&priv.PublicKey)
	if err != nil || kid != k.ID {
		t.Errorf("Thumbprint = %q, %v; want %q", kid, err, k.ID)
	}
}

func TestParsePrivateKeyRefuses(t *testing.T) {
	pkcs8 := func(key any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	ecDER, err := x509.MarshalECPrivateKey(ecKey())
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string][]byte{
		"empty":          nil,
		"garbage":        []byte("not a key"),
		"SEC1 EC block":  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}),
		"bad PKCS#8":     pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}),
		"RSA key":        pkcs8(rsaKey()),
		"P-256 key":      pkcs8(p256Key()),
		"public key PEM": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1}}),
	}
	for name, data := range tests {
		if _, err := ParsePrivateKey(data); err == nil {
			t.Errorf("%s: ParsePrivateKey succeeded", name)
		}
	}
	if _, err := MarshalPrivateKey(p256Key()); err == nil {
		t.Error("MarshalPrivateKey(P-256) succeeded")
	}
}

func TestKeySetJWKS(t *testing.T) {
	c := newClock()
	ks, err := NewKeySet(c.Now, serverKey())
	if err != nil {
		t.Fatal(err)
	}
	c.Advance(time.Minute)
	nk, err := ks.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(ks.JWKS(), &set); err != nil {
		t.Fatal(err)
	}
	if len(set.Keys) != 2 {
		t.Fatalf("JWKS has %d keys, want 2", len(set.Keys))
	}
	for i, want := range []StoredKey{nk, serverKey()} {
		got := set.Keys[i]
		priv, err := ParsePrivateKey(want.PEM)
		if err != nil {
			t.Fatal(err)
		}
		x, y, err := ecCoordinates(&priv.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		wantJWK := map[string]string{"kty": "EC", "crv": "P-384", "x": x, "y": y, "kid": want.ID, "alg": "ES384", "use": "sig"}
		if diff := cmp.Diff(wantJWK, got); diff != "" {
			t.Errorf("key %d (-want +got):\n%s", i, diff)
		}
		// What we publish parses back, through the same reader as clients' sets.
		raw, _ := json.Marshal(got)
		k, skip, err := parseJWK(raw)
		if err != nil || skip || !k.pub.(*ecdsa.PublicKey).Equal(&priv.PublicKey) {
			t.Errorf("key %d does not parse back: %v %v", i, skip, err)
		}
	}
	empty, _ := NewKeySet(nil)
	if got := string(empty.JWKS()); got != `{"keys":[]}` {
		t.Errorf("empty JWKS = %s", got)
	}
}

func TestThumbprintRFC7638(t *testing.T) {
	// RFC 7638 section 3.1 gives an RSA example only; check the EC form
	// against the member order the RFC requires, computed independently.
	priv, err := ParsePrivateKey(serverKey().PEM)
	if err != nil {
		t.Fatal(err)
	}
	j, err := toJWK("", &priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	canon, _ := json.Marshal(struct {
		Crv string `json:"crv"`
		Kty string `json:"kty"`
		X   string `json:"x"`
		Y   string `json:"y"`
	}{j.Crv, j.Kty, j.X, j.Y})
	want := sha256b64(canon)
	if got, _ := Thumbprint(&priv.PublicKey); got != want {
		t.Errorf("Thumbprint = %s, want %s", got, want)
	}
}

func TestKeySetOrderAndRetire(t *testing.T) {
	c := newClock()
	older := mustStoredKey(t0.Add(-2 * time.Hour))
	newer := serverKey() // t0 - 1h
	ks, err := NewKeySet(c.Now, newer, older, newer)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{older.ID, newer.ID}, ks.KeyIDs()); diff != "" {
		t.Errorf("ids, oldest first (-want +got):\n%s", diff)
	}
	if s, _ := ks.signer(); s.kid != newer.ID {
		t.Errorf("signer = %s, want the newest %s", s.kid, newer.ID)
	}
	bad := newer
	bad.ID = "not-the-thumbprint"
	if err := ks.Add(bad); err == nil {
		t.Error("Add with a wrong id succeeded")
	}
	if err := ks.Retire("nope"); treatment.ErrorKind(err) != treatment.KindNotFound {
		t.Errorf("Retire(unknown) = %v, want not_found", err)
	}

	// older stopped signing when newer was created (t0-1h): with a grace of
	// 2 h it stays, with 1 h it goes. The signer always stays.
	if got := ks.RetireSuperseded(2 * time.Hour); len(got) != 0 {
		t.Errorf("RetireSuperseded(2h) = %v, want none", got)
	}
	if diff := cmp.Diff([]string{older.ID}, ks.RetireSuperseded(time.Hour)); diff != "" {
		t.Errorf("RetireSuperseded(1h) (-want +got):\n%s", diff)
	}
	if got := ks.RetireSuperseded(0); len(got) != 0 {
		t.Errorf("RetireSuperseded(0) retired the signer: %v", got)
	}
	if err := ks.Retire(newer.ID); treatment.ErrorKind(err) != treatment.KindConflict {
		t.Errorf("Retire(only key) = %v, want conflict", err)
	}
}

func TestRotateWithStoppedClock(t *testing.T) {
	c := newClock()
	ks, err := NewKeySet(c.Now)
	if err != nil {
		t.Fatal(err)
	}
	a, err := ks.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	b, err := ks.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := ks.signer(); s.kid != b.ID || !b.Created.After(a.Created) {
		t.Errorf("signer = %s, want the last rotated %s (created %v after %v)", s.kid, b.ID, b.Created, a.Created)
	}
}

// Replace swaps the whole set at once: the keys given, each once, the
// newest signing; a bad key leaves the set as it was.
func TestKeySetReplace(t *testing.T) {
	c := newClock()
	a, b := mustStoredKey(t0.Add(-2*time.Hour)), mustStoredKey(t0.Add(-time.Minute))
	ks, err := NewKeySet(c.Now, serverKey())
	if err != nil {
		t.Fatal(err)
	}
	if err := ks.Replace(b, a, b); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{a.ID, b.ID}, ks.KeyIDs()); diff != "" {
		t.Errorf("after Replace, ids oldest first (-want +got):\n%s", diff)
	}
	if _, ok := ks.publicKey(serverKey().ID); ok {
		t.Error("a key left out of Replace still verifies")
	}
	bad := serverKey()
	bad.ID = "not-the-thumbprint"
	for name, keys := range map[string][]StoredKey{
		"wrong id":  {serverKey(), bad},
		"not a key": {serverKey(), {PEM: []byte("garbage")}},
		"P-256 key": {{PEM: mustPEM(t, p256Key())}},
	} {
		if err := ks.Replace(keys...); err == nil {
			t.Errorf("%s: Replace succeeded", name)
		}
		if diff := cmp.Diff([]string{a.ID, b.ID}, ks.KeyIDs()); diff != "" {
			t.Errorf("%s: a failed Replace changed the set (-want +got):\n%s", name, diff)
		}
	}
}

func mustPEM(t *testing.T, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// A key is due for retirement once grace has passed since a newer key
// was created; the newest never is.
func TestSuperseded(t *testing.T) {
	k1 := StoredKey{ID: "k1", Created: t0}
	k2 := StoredKey{ID: "k2", Created: t0.Add(time.Hour)}
	k3 := StoredKey{ID: "k3", Created: t0.Add(2 * time.Hour)}
	grace := 10 * time.Minute
	for _, tt := range []struct {
		name string
		keys []StoredKey
		now  time.Time
		want []string
	}{
		{"one key", []StoredKey{k1}, t0.Add(24 * time.Hour), nil},
		{"within grace", []StoredKey{k2, k1}, t0.Add(time.Hour + grace - time.Nanosecond), nil},
		{"at the end of grace", []StoredKey{k2, k1}, t0.Add(time.Hour + grace), []string{"k1"}},
		{"the middle key still in grace", []StoredKey{k3, k1, k2}, t0.Add(2*time.Hour + time.Minute), []string{"k1"}},
		{"both older keys", []StoredKey{k3, k1, k2}, t0.Add(2*time.Hour + grace), []string{"k1", "k2"}},
	} {
		if diff := cmp.Diff(tt.want, Superseded(tt.keys, tt.now, grace)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tt.name, diff)
		}
	}
}
