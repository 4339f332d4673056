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
