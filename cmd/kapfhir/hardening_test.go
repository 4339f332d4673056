package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kapfhir/kapfhir/seal"
	"github.com/kapfhir/kapfhir/test/kaptest"
)

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key into
// a temp dir and returns their paths and a pool that trusts the certificate.
func selfSigned(t *testing.T) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	return selfSignedSerial(t, 1)
}

// selfSignedSerial is selfSigned with a given serial number.
func selfSignedSerial(t *testing.T, serial int64) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: "kapfhir test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	for path, b := range map[string]*pem.Block{certFile: {Type: "CERTIFICATE", Bytes: der}, keyFile: {Type: "PRIVATE KEY", Bytes: pk}} {
		if err := os.WriteFile(path, pem.EncodeToMemory(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	roots = x509.NewCertPool()
	roots.AddCert(cert)
	return certFile, keyFile, roots
}

// startServe runs `kapfhir serve` in-process until the test ends and returns
// the base URL of its listening line.
func startServe(t *testing.T, env map[string]string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := run(ctx, []string{"serve"}, pw, io.Discard, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
		pw.Close()
		done <- err
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve did not shut down cleanly: %v", err)
		}
	})
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		cancel()
		t.Fatalf("no listening line: %v", err)
	}
	go io.Copy(io.Discard, pr)
	return strings.Fields(strings.TrimPrefix(line, "kapfhir listening on "))[0]
}

// serveTLS starts kapfhir serving HTTPS with a self-signed certificate for
// 127.0.0.1 and returns its base URL and the certificate's files.
func serveTLS(t *testing.T) (base, certFile, keyFile string, env map[string]string) {
	t.Helper()
	certFile, keyFile, _ = selfSigned(t)
	env = dataEnv(t)
	env["KAPFHIR_LISTEN"] = "127.0.0.1:0"
	env["KAPFHIR_TLS_CERT_FILE"] = certFile
	env["KAPFHIR_TLS_KEY_FILE"] = keyFile
	return startServe(t, env), certFile, keyFile, env
}

func TestServeTLS(t *testing.T) {
	base, certFile, _, _ := serveTLS(t)
	roots := x509.NewCertPool()
	pemCert, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	roots.AppendCertsFromPEM(pemCert)
	if !strings.HasPrefix(base, "https://127.0.0.1:") {
		t.Fatalf("listening on %q, want https://127.0.0.1:PORT", base)
	}
	hostPort := strings.TrimPrefix(base, "https://")
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}}
	t.Cleanup(client.CloseIdleConnections)

	for _, tc := range []struct{ path, want string }{
		{"/healthz", `"ok"`},
		{"/fhir/metadata", `"CapabilityStatement"`},
		// With no baseURL, the issuer is the listening address, over https.
		{"/.well-known/smart-configuration", `"token_endpoint":"https://` + hostPort + `/auth/token"`},
	} {
		resp, err := client.Get(base + tc.path)
		if err != nil {
			t.Fatalf("GET %s: %v", tc.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), tc.want) {
			t.Errorf("GET %s: %d %s; want 200 with %s", tc.path, resp.StatusCode, body, tc.want)
		}
		if hsts := resp.Header.Get("Strict-Transport-Security"); !strings.HasPrefix(hsts, "max-age=") {
			t.Errorf("GET %s over TLS: Strict-Transport-Security %q, want max-age", tc.path, hsts)
		}
		if resp.TLS == nil || resp.TLS.Version < tls.VersionTLS12 || resp.ProtoMajor != 2 {
			t.Errorf("GET %s: %s, TLS %+v; want HTTP/2 over TLS 1.2 or later", tc.path, resp.Proto, resp.TLS)
		}
	}

	t.Run("plain HTTP is not served", func(t *testing.T) {
		resp, err := http.Get("http://" + hostPort + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || strings.Contains(string(body), `"ok"`) {
			t.Errorf("plain HTTP answered %d %s; want 400", resp.StatusCode, body)
		}
	})
	t.Run("a client that does not trust the certificate is refused", func(t *testing.T) {
		_, err := http.Get(base + "/healthz")
		var unknown x509.UnknownAuthorityError
		if !errors.As(err, &unknown) {
			t.Errorf("GET with the system roots = %v, want an unknown authority error", err)
		}
	})
	t.Run("TLS 1.1 is refused", func(t *testing.T) {
		conn, err := tls.Dial("tcp", hostPort, &tls.Config{RootCAs: roots, MaxVersion: tls.VersionTLS11})
		if err == nil {
			conn.Close()
			t.Error("a TLS 1.1 handshake succeeded")
		}
	})
}

// TestSealKey: with no key configured, kapfhir generates one into the data
// directory once; the endpoint secrets it stores are sealed with it.
func TestSealKey(t *testing.T) {
	env := dataEnv(t)
	dir := env["KAPFHIR_DATA_DIR"]
	cfg := filepath.Join(t.TempDir(), "kapfhir.yaml")
	if err := os.WriteFile(cfg, []byte(`endpoints:
  - id: main-ehr
    name: Main EHR
    fhirBaseUrl: http://127.0.0.1:9/fhir
    patientIdentifierSystem: https://clinic.example/mrn
    enabled: false
    auth: {type: bearer}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	const token = "cfg-t0ken-5b1d9e"
	env["KAPFHIR_CONFIG"] = cfg
	env["KAPFHIR_ENDPOINT_MAIN_EHR_TOKEN"] = token

	_, stderr, err := cli(t, env, "endpoints", "list")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr, "generated the key that seals secrets") || strings.Contains(stderr, token) {
		t.Errorf("first start: the log does not say the key was generated, or shows the token:\n%s", stderr)
	}
	keyPath := filepath.Join(dir, sealKeyFile)
	fi, err := os.Stat(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("%s has mode %#o, want 0600", keyPath, perm)
	}
	key, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(stderr, strings.TrimSpace(string(key))) {
		t.Error("the log shows the sealing key")
	}
	db := kaptest.SQLiteBytes(t, dir, "kapfhir.db")
	if bytes.Contains(db, []byte(token)) || !bytes.Contains(db, []byte("kseal1:")) {
		t.Errorf("the database holds the token in plaintext (%v) or nothing sealed (%v)", bytes.Contains(db, []byte(token)), !bytes.Contains(db, []byte("kseal1:")))
	}

	_, stderr, err = cli(t, env, "endpoints", "list")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(stderr, "generated the key") {
		t.Errorf("second start generated another key:\n%s", stderr)
	}
	if again, _ := os.ReadFile(keyPath); !bytes.Equal(again, key) {
		t.Error("the key file changed on the second start")
	}

	// Another key (KAPFHIR_SEAL_KEY) cannot open what the first sealed.
	k, err := seal.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	env["KAPFHIR_SEAL_KEY"] = seal.EncodeKey(k)
	delete(env, "KAPFHIR_ENDPOINT_MAIN_EHR_TOKEN")
	env["KAPFHIR_CONFIG"] = "" // the stored endpoint only
	if _, _, err := cli(t, env, "endpoints", "list"); err == nil || !strings.Contains(err.Error(), "endpoint main-ehr") || !strings.Contains(err.Error(), "unknown key") {
		t.Errorf("start with another key: %v; want an error naming endpoint main-ehr and the unknown key", err)
	}
}

// A renewed certificate (both files replaced, as renewal tools do) is served
// from the next handshake on, without a restart; a renewal that does not
// load (a key that does not match) leaves the previous certificate served.
func TestServeTLSReloadsRenewedCertificate(t *testing.T) {
	base, certFile, keyFile, _ := serveTLS(t)
	hostPort := strings.TrimPrefix(base, "https://")
	renewedCert, renewedKey, _ := selfSignedSerial(t, 2)
	trusted := x509.NewCertPool() // both certificates
	for _, f := range []string{certFile, renewedCert} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		trusted.AppendCertsFromPEM(b)
	}
	// served is the serial of the certificate a new connection gets.
	served := func() int64 {
		t.Helper()
		conn, err := tls.Dial("tcp", hostPort, &tls.Config{RootCAs: trusted})
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	if got := served(); got != 1 {
		t.Fatalf("serial %d served at start, want 1", got)
	}
	// replace writes src over dst as renewal tools do: a new file renamed in.
	replace := func(src, dst string) {
		t.Helper()
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		tmp := dst + ".new"
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, dst); err != nil {
			t.Fatal(err)
		}
	}
	replace(renewedCert, certFile)
	replace(renewedKey, keyFile)
	if got := served(); got != 2 {
		t.Errorf("serial %d served after the renewal, want 2", got)
	}

	// A key that does not match the certificate: the renewed one stays.
	_, otherKey, _ := selfSignedSerial(t, 3)
	replace(otherKey, keyFile)
	if got := served(); got != 2 {
		t.Errorf("serial %d served after a broken renewal, want 2 (the last good one)", got)
	}
}

// kapfhir token, against kapfhir serving HTTPS with a self-signed
// certificate, trusts that certificate (the configured one) and gets a token.
func TestTokenOverSelfSignedHTTPS(t *testing.T) {
	base, _, _, env := serveTLS(t)
	var out, errOut bytes.Buffer
	err := run(t.Context(), []string{"token", "-url", base}, &out, &errOut, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatalf("kapfhir token -url %s: %v\n%s", base, err, errOut.String())
	}
	if tok := strings.TrimSpace(out.String()); strings.Count(tok, ".") != 2 {
		t.Errorf("kapfhir token printed %q, want a JWT", tok)
	}
}
