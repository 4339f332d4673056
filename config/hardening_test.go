package config

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/kapfhir/kapfhir/seal"
)

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key
// into dir and returns their paths and the certificate.
func selfSigned(t *testing.T, dir, name string) (certFile, keyFile string, cert *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err = x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "PRIVATE KEY", pk)
	return certFile, keyFile, cert
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// problemKeys returns the keys of the problems Validate reports for cfg,
// with their reasons for failure messages.
func problemKeys(cfg Config) ([]string, string) {
	var keys []string
	var all strings.Builder
	for _, p := range cfg.Validate() {
		keys = append(keys, p.Key)
		fmt.Fprintf(&all, "%s: %s\n", p.Key, p.Reason)
	}
	return keys, all.String()
}

func TestValidateTLS(t *testing.T) {
	dir := t.TempDir()
	cert, key, _ := selfSigned(t, dir, "server")
	otherCert, _, _ := selfSigned(t, dir, "other")
	missing := filepath.Join(dir, "missing.pem")
	for _, tt := range []struct {
		name string
		tls  TLS
		want []string
		// reason is a part of the first problem's reason.
		reason string
	}{
		{name: "off", tls: TLS{}},
		{name: "certificate and key", tls: TLS{CertFile: cert, KeyFile: key}},
		{name: "certificate alone", tls: TLS{CertFile: cert}, want: []string{"tls.keyFile"}, reason: "required"},
		{name: "key alone", tls: TLS{KeyFile: key}, want: []string{"tls.certFile"}, reason: "required"},
		{name: "missing files", tls: TLS{CertFile: missing, KeyFile: missing}, want: []string{"tls.certFile", "tls.keyFile"}, reason: "cannot read"},
		{name: "key of another certificate", tls: TLS{CertFile: otherCert, KeyFile: key}, want: []string{"tls.certFile"}, reason: "matching private key"},
		{name: "key given as the certificate", tls: TLS{CertFile: key, KeyFile: key}, want: []string{"tls.certFile"}, reason: "certificate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Defaults()
			cfg.TLS = tt.tls
			got, all := problemKeys(cfg)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("problem keys (-want +got):\n%s\n%s", diff, all)
			}
			if tt.reason != "" && !strings.Contains(all, tt.reason) {
				t.Errorf("reasons lack %q:\n%s", tt.reason, all)
			}
			if cfg.TLS.Enabled() != (tt.tls != TLS{}) {
				t.Errorf("Enabled() = %v", cfg.TLS.Enabled())
			}
		})
	}
}

func TestValidateOutboundCAFile(t *testing.T) {
	dir := t.TempDir()
	cert, key, _ := selfSigned(t, dir, "ca")
	garbage := filepath.Join(dir, "garbage.pem")
	writePEM(t, garbage, "CERTIFICATE", []byte("not DER"))
	for _, tt := range []struct {
		name, file, reason string
	}{
		{name: "a certificate", file: cert},
		{name: "missing", file: filepath.Join(dir, "missing.pem"), reason: "cannot read"},
		{name: "a key, no certificate", file: key, reason: "holds no PEM certificate"},
		{name: "a broken certificate", file: garbage, reason: "PEM block 1 is not a valid certificate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Defaults()
			cfg.Outbound.CAFile = tt.file
			got, all := problemKeys(cfg)
			var want []string
			if tt.reason != "" {
				want = []string{"outbound.caFile"}
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("problem keys (-want +got):\n%s\n%s", diff, all)
			}
			if !strings.Contains(all, tt.reason) {
				t.Errorf("reasons lack %q:\n%s", tt.reason, all)
			}
		})
	}
}

func TestRootCAsTrustTheBundle(t *testing.T) {
	certFile, _, cert := selfSigned(t, t.TempDir(), "clinic-ca")
	pool, err := Outbound{}.RootCAs()
	if err != nil || pool != nil {
		t.Fatalf("RootCAs without a bundle = %v, %v; want nil (the system's roots)", pool, err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{}); err == nil {
		t.Fatal("the system roots trust the test certificate; the test proves nothing")
	}
	pool, err = Outbound{CAFile: certFile}.RootCAs()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		t.Errorf("a certificate of the bundle does not verify against RootCAs: %v", err)
	}
}

func TestHardeningFromEnvironment(t *testing.T) {
	dir := t.TempDir()
	cert, key, _ := selfSigned(t, dir, "server")
	k, err := seal.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	encoded := seal.EncodeKey(k)
	cfg, err := Load("", envMap(map[string]string{
		"KAPFHIR_TLS_CERT_FILE":    cert,
		"KAPFHIR_TLS_KEY_FILE":     key,
		"KAPFHIR_OUTBOUND_CA_FILE": cert,
		"KAPFHIR_SEAL_KEY":         encoded,
	}))
	if err != nil {
		t.Fatal(err)
	}
	want := struct {
		TLS      TLS
		Outbound Outbound
	}{TLS{CertFile: cert, KeyFile: key}, Outbound{CAFile: cert}}
	if diff := cmp.Diff(want, struct {
		TLS      TLS
		Outbound Outbound
	}{cfg.TLS, cfg.Outbound}); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	got, err := cfg.Secrets.SealKey()
	if err != nil || !bytes.Equal(got, k) {
		t.Errorf("SealKey() = %v; want the key of KAPFHIR_SEAL_KEY", err)
	}
	for name, out := range map[string]string{"Dump": cfg.Dump(), "%v": fmt.Sprintf("%v", cfg), "%+v": fmt.Sprintf("%+v", cfg), "%#v": fmt.Sprintf("%#v", cfg)} {
		if strings.Contains(out, encoded) {
			t.Errorf("%s shows the sealing key:\n%s", name, out)
		}
	}
}

func TestValidateSealKey(t *testing.T) {
	k, err := seal.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "seal.key")
	if err := os.WriteFile(good, []byte(seal.EncodeKey(k)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(dir, "open.key")
	if err := os.WriteFile(open, []byte(seal.EncodeKey(k)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		secrets Secrets
		want    []string
		reason  string
	}{
		{name: "none: generated into the data directory", secrets: Secrets{}},
		{name: "key file", secrets: Secrets{KeyFile: good}},
		{name: "environment", secrets: Secrets{Key: Secret(seal.EncodeKey(k))}},
		{name: "both", secrets: Secrets{KeyFile: good, Key: Secret(seal.EncodeKey(k))}, want: []string{"secrets.keyFile"}, reason: "set one"},
		{name: "short key", secrets: Secrets{Key: Secret(seal.EncodeKey(k[:16]))}, want: []string{"KAPFHIR_SEAL_KEY"}, reason: "16 bytes; want 32"},
		{name: "file readable by others", secrets: Secrets{KeyFile: open}, want: []string{"secrets.keyFile"}, reason: "chmod 600"},
		{name: "missing file", secrets: Secrets{KeyFile: filepath.Join(dir, "none.key")}, want: []string{"secrets.keyFile"}, reason: "no such file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Defaults()
			cfg.Secrets = tt.secrets
			got, all := problemKeys(cfg)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("problem keys (-want +got):\n%s\n%s", diff, all)
			}
			if !strings.Contains(all, tt.reason) {
				t.Errorf("reasons lack %q:\n%s", tt.reason, all)
			}
			if strings.Contains(all, seal.EncodeKey(k)) {
				t.Errorf("a reason shows the key:\n%s", all)
			}
		})
	}
}
