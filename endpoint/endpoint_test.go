package endpoint

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"gopkg.in/yaml.v3"

	"github.com/kapfhir/kapfhir/treatment"
)

func writeKey(t *testing.T, key any) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func valid(t *testing.T) Endpoint {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	e := Defaults()
	e.ID, e.Name, e.FHIRBaseURL = "main-ehr", "Main EHR", "https://ehr.example.org/fhir/R4"
	e.Auth.ClientID, e.Auth.Kid, e.Auth.Alg, e.Auth.PrivateKeyFile = "kapfhir", "k1", AlgES384, writeKey(t, k)
	e.PatientIdentifierSystem = "https://clinic.example/mrn"
	return e
}

// fields returns the sorted field names of a validation error.
func fields(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		return nil
	}
	var te *treatment.Error
	if !asError(err, &te) || te.Kind != treatment.KindInvalid {
		t.Fatalf("not an invalid error: %v", err)
	}
	var out []string
	for _, f := range te.Fields {
		out = append(out, f.Field)
	}
	sort.Strings(out)
	return out
}

func TestValidate(t *testing.T) {
	rsaSmall, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	ecP256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name   string
		edit   func(e *Endpoint)
		fields []string
	}{
		{"valid", func(*Endpoint) {}, nil},
		{"http to loopback", func(e *Endpoint) { e.FHIRBaseURL = "http://127.0.0.1:8103/fhir/R4" }, nil},
		{"http to localhost", func(e *Endpoint) { e.FHIRBaseURL = "http://localhost:8103/fhir" }, nil},
		{"http elsewhere", func(e *Endpoint) { e.FHIRBaseURL = "http://ehr.example.org/fhir" }, []string{"fhirBaseUrl"}},
		{"http elsewhere allowed", func(e *Endpoint) { e.FHIRBaseURL = "http://ehr.example.org/fhir"; e.AllowInsecureHTTP = true }, nil},
		{"metadata address", func(e *Endpoint) { e.FHIRBaseURL = "http://169.254.169.254/latest"; e.AllowInsecureHTTP = true }, []string{"fhirBaseUrl"}},
		{"metadata name", func(e *Endpoint) { e.FHIRBaseURL = "https://metadata.google.internal/x" }, []string{"fhirBaseUrl"}},
		{"link-local v6", func(e *Endpoint) { e.FHIRBaseURL = "https://[fe80::1]/fhir" }, []string{"fhirBaseUrl"}},
		{"aws v6 metadata", func(e *Endpoint) { e.FHIRBaseURL = "https://[fd00:ec2::254]/fhir" }, []string{"fhirBaseUrl"}},
		{"credentials in url", func(e *Endpoint) { e.FHIRBaseURL = "https://u:p@ehr.example.org/fhir" }, []string{"fhirBaseUrl"}},
		{"ftp", func(e *Endpoint) { e.FHIRBaseURL = "ftp://ehr.example.org/fhir" }, []string{"fhirBaseUrl"}},
		{"bad token url", func(e *Endpoint) { e.Auth.TokenURL = "http://ehr.example.org/token" }, []string{"auth.tokenUrl"}},
		{"everything wrong", func(e *Endpoint) {
			*e = Endpoint{ID: "Bad ID", Auth: Auth{Type: "kerberos"}, ResourceTypes: []string{"Encounter", "Encounter"},
				Retry: Retry{MinBackoff: Duration(-1)}, Pull: Pull{Enabled: true}}
		}, []string{"auth.type", "concurrency", "fhirBaseUrl", "id", "name", "patientIdentifierSystem", "pull.intervalSeconds",
			"rateLimit.burst", "rateLimit.perSecond", "resourceTypes[0]", "resourceTypes[1]", "retry.maxAttempts", "retry.minBackoff", "timeoutSeconds"}},
		{"smart without key", func(e *Endpoint) { e.Auth = Auth{Type: AuthSMARTBackend, Alg: "HS256"} },
			[]string{"auth.alg", "auth.clientId", "auth.kid", "auth.privateKeyFile", "auth.scope"}},
		{"missing key file", func(e *Endpoint) { e.Auth.PrivateKeyFile = "/no/such/key.pem" }, []string{"auth.privateKeyFile"}},
		{"RSA key with ES384", func(e *Endpoint) { e.Auth.PrivateKeyFile = writeKey(t, rsaSmall) }, []string{"auth.privateKeyFile"}},
		{"small RSA key", func(e *Endpoint) { e.Auth.Alg = AlgRS384; e.Auth.PrivateKeyFile = writeKey(t, rsaSmall) }, []string{"auth.privateKeyFile"}},
		{"P-256 key", func(e *Endpoint) { e.Auth.PrivateKeyFile = writeKey(t, ecP256) }, []string{"auth.privateKeyFile"}},
		{"key twice", func(e *Endpoint) { e.Auth.PrivateKeyPEM = "x" }, []string{"auth.privateKeyPem"}},
		{"client secret", func(e *Endpoint) { e.Auth = Auth{Type: AuthClientSecret} }, []string{"auth.clientId", "auth.clientSecret"}},
		{"bearer", func(e *Endpoint) { e.Auth = Auth{Type: AuthBearer} }, []string{"auth.token"}},
		{"none", func(e *Endpoint) { e.Auth = Auth{Type: AuthNone} }, nil},
		{"create patients needs Patient", func(e *Endpoint) { e.CreatePatients = true }, []string{"createPatients"}},
		{"backoff order", func(e *Endpoint) { e.Retry.MaxBackoff = Duration(1) }, []string{"retry.maxBackoff"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := valid(t)
			tt.edit(&e)
			if diff := cmp.Diff(tt.fields, fields(t, Validate(e))); diff != "" {
				t.Errorf("fields (-want +got):\n%s\nerror: %v", diff, Validate(e))
			}
		})
	}
}

func TestCheckAddr(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1": true, "10.1.2.3": true, "203.0.113.9": true, "::1": true, "2001:db8::1": true,
		"169.254.169.254": false, "169.254.1.1": false, "::ffff:169.254.169.254": false, "fe80::1": false,
		"fd00:ec2::254": false, "100.100.100.200": false, "0.0.0.0": false, "::": false, "224.0.0.1": false,
	} {
		if err := CheckAddr(netip.MustParseAddr(addr)); (err == nil) != ok {
			t.Errorf("CheckAddr(%s) = %v, want ok=%v", addr, err, ok)
		}
	}
}

func TestSecretsAreWriteOnly(t *testing.T) {
	e := valid(t)
	e.Auth = Auth{Type: AuthClientSecret, ClientID: "c", ClientSecret: "s3cret-value"}
	r := e.Redacted()
	b, _ := json.Marshal(r)
	y, _ := yaml.Marshal(r)
	for _, out := range []string{string(b), string(y)} {
		if strings.Contains(out, "s3cret-value") {
			t.Errorf("secret in redacted output: %s", out)
		}
	}
	if r.Auth.ClientSecret != Redaction || e.Auth.ClientSecret != "s3cret-value" {
		t.Errorf("Redacted changed the original or did not redact: %q / %q", r.Auth.ClientSecret, e.Auth.ClientSecret)
	}
	// An update that does not repeat the secret (or echoes the redaction) keeps it.
	upd := r
	upd.Name = "Renamed"
	if got := upd.KeepSecrets(e).Auth.ClientSecret; got != "s3cret-value" {
		t.Errorf("KeepSecrets: %q", got)
	}
	upd.Auth.ClientSecret = "new-secret"
	if got := upd.KeepSecrets(e).Auth.ClientSecret; got != "new-secret" {
		t.Errorf("KeepSecrets replaced a new secret: %q", got)
	}
}

func TestDecodeKeepsDefaults(t *testing.T) {
	e := Defaults()
	if err := yaml.Unmarshal([]byte("id: x\nretry:\n  maxBackoff: 1m\n"), &e); err != nil {
		t.Fatal(err)
	}
	if e.Retry.MaxBackoff.D().String() != "1m0s" || e.Retry.MinBackoff != Defaults().Retry.MinBackoff || e.Concurrency != 4 || !e.Enabled {
		t.Errorf("YAML over defaults: %+v", e)
	}
	j := Defaults()
	if err := json.Unmarshal([]byte(`{"id":"x","retry":{"maxRetryAfter":"90s"}}`), &j); err != nil {
		t.Fatal(err)
	}
	if j.Retry.MaxRetryAfter.D().String() != "1m30s" || j.Retry.MaxAttempts != 5 {
		t.Errorf("JSON over defaults: %+v", j.Retry)
	}
	if err := json.Unmarshal([]byte(`{"retry":{"minBackoff":"soon"}}`), &j); err == nil || !strings.Contains(err.Error(), "not a duration") {
		t.Errorf("bad duration: %v", err)
	}
}

func asError(err error, target **treatment.Error) bool { return errors.As(err, target) }

func TestEverySecretRedactedAndKept(t *testing.T) {
	e := valid(t)
	for _, s := range e.Auth.Secrets() {
		*s.Value = "value-of-" + s.Name
	}
	r := e.Redacted()
	b, _ := json.Marshal(r)
	var got []string
	for _, s := range r.Auth.Secrets() {
		got = append(got, s.Name+"="+*s.Value)
		if strings.Contains(string(b), "value-of-"+s.Name) {
			t.Errorf("%s in redacted JSON: %s", s.Name, b)
		}
	}
	want := []string{"privateKeyPem=" + Redaction, "clientSecret=" + Redaction, "token=" + Redaction}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("redacted secrets (-want +got):\n%s", diff)
	}
	kept := r.KeepSecrets(e)
	for _, s := range kept.Auth.Secrets() {
		if *s.Value != "value-of-"+s.Name {
			t.Errorf("KeepSecrets: %s = %q", s.Name, *s.Value)
		}
	}
}
