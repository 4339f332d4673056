package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func envMap(m map[string]string) LookupFunc {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kapfhir.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadDefaults(t *testing.T) {
	cfg, err := Load("", envMap(nil))
	if err != nil {
		t.Fatalf("Load with nothing configured: %v", err)
	}
	if diff := cmp.Diff(Defaults(), cfg); diff != "" {
		t.Errorf("defaults changed (-want +got):\n%s", diff)
	}
	if cfg.Listen != "127.0.0.1:8080" || cfg.SQLitePath() != filepath.Join("kapfhir-data", "kapfhir.db") {
		t.Errorf("listen %q, sqlite %q: want 127.0.0.1:8080 and kapfhir-data/kapfhir.db", cfg.Listen, cfg.SQLitePath())
	}
}

func TestLoadFileThenEnv(t *testing.T) {
	path := writeFile(t, `
listen: 127.0.0.1:9090
dataDir: /var/lib/kapfhir
clinic:
  timezone: Europe/London
  hours: {mon: "09:00-17:00", wed: "10:00-16:30"}
  closed: ["2026-12-25"]
fhir:
  identifierSystem: https://clinic.example/fhir/id
log: {level: debug, format: json}
`)
	cfg, err := Load(path, envMap(map[string]string{
		"KAPFHIR_LISTEN":           ":0",
		"KAPFHIR_SHUTDOWN_TIMEOUT": "3s",
		"KAPFHIR_CLINIC_CLOSED":    "2026-12-25, 2027-01-01",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != ":0" || cfg.DataDir != "/var/lib/kapfhir" || cfg.HTTP.ShutdownTimeout != 3*time.Second {
		t.Errorf("got listen %q dataDir %q shutdown %v", cfg.Listen, cfg.DataDir, cfg.HTTP.ShutdownTimeout)
	}
	if diff := cmp.Diff([]string{"2026-12-25", "2027-01-01"}, cfg.Clinic.Closed); diff != "" {
		t.Errorf("closed (-want +got):\n%s", diff)
	}
	cal, err := cfg.Calendar()
	if err != nil {
		t.Fatal(err)
	}
	if h := cal.Open[time.Wednesday]; h.Open != 600 || h.Close != 990 {
		t.Errorf("wednesday hours = %+v, want 600-990", h)
	}
	if _, open := cal.Open[time.Tuesday]; open {
		t.Error("tuesday is not listed and must be closed")
	}
	if !cal.Closed["2027-01-01"] || cal.Location.String() != "Europe/London" {
		t.Errorf("calendar = %+v", cal)
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	path := writeFile(t, `
listen: nonsense
baseURL: ftp://x
store: {driver: mysql}
clinic:
  timezone: Mars/Olympus
  hours: {mon: "18:00-08:00", funday: "09:00-10:00"}
  closed: ["25/12/2026"]
fhir: {identifierSystem: "not a uri", canonicalBase: "https://x/"}
http: {maxBodyBytes: 10}
log: {level: loud, format: xml}
`)
	_, err := Load(path, envMap(map[string]string{"KAPFHIR_MAX_BODY_BYTES": "lots"}))
	probs, ok := err.(Problems)
	if !ok {
		t.Fatalf("err = %v (%T), want Problems", err, err)
	}
	var keys []string
	for _, p := range probs {
		keys = append(keys, p.Key)
		if p.Reason == "" {
			t.Errorf("%s: empty reason", p.Key)
		}
	}
	want := []string{
		"KAPFHIR_MAX_BODY_BYTES", "listen", "baseURL", "store.driver", "clinic.timezone",
		"clinic.hours.funday", "clinic.hours.mon", "clinic.closed[0]", "fhir.identifierSystem",
		"fhir.canonicalBase", "http.maxBodyBytes", "log.level", "log.format",
	}
	if diff := cmp.Diff(want, keys); diff != "" {
		t.Errorf("problem keys (-want +got):\n%s\nerror:\n%v", diff, err)
	}
}

func TestUnknownKeyRefused(t *testing.T) {
	_, err := Load(writeFile(t, "listn: 127.0.0.1:1\n"), envMap(nil))
	if err == nil || !strings.Contains(err.Error(), "listn") {
		t.Fatalf("err = %v, want it to name the unknown key listn", err)
	}
}

func TestPostgresNeedsURLAndDumpRedacts(t *testing.T) {
	_, err := Load("", envMap(map[string]string{"KAPFHIR_STORE_DRIVER": "postgres"}))
	if err == nil || !strings.Contains(err.Error(), "store.postgresURL") {
		t.Fatalf("err = %v, want store.postgresURL required", err)
	}
	cfg, err := Load("", envMap(map[string]string{
		"KAPFHIR_STORE_DRIVER": "postgres",
		"KAPFHIR_POSTGRES_URL": "postgres://kap:s3cret@db:5432/kap?sslmode=require",
	}))
	if err != nil {
		t.Fatal(err)
	}
	dump := cfg.Dump()
	if strings.Contains(dump, "s3cret") || !strings.Contains(dump, "REDACTED") {
		t.Errorf("Dump leaks or does not redact the password:\n%s", dump)
	}
}

func TestEndpoints(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "kapfhir.yaml")
	file := `endpoints:
  - id: main-ehr
    name: Main EHR
    fhirBaseUrl: http://127.0.0.1:8103/fhir/R4
    auth: {type: client-secret, clientId: kapfhir}
    patientIdentifierSystem: https://clinic.example/mrn
    retry: {maxBackoff: 1m}
  - id: main-ehr
    name: Twin
    fhirBaseUrl: http://169.254.169.254/
    auth: {type: bearer}
    patientIdentifierSystem: x
    concurrency: 0
`
	if err := os.WriteFile(path, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"KAPFHIR_ENDPOINT_MAIN_EHR_CLIENT_SECRET": "s3cret"}
	cfg, err := Load(path, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	var probs Problems
	if !errors.As(err, &probs) {
		t.Fatalf("Load: %v", err)
	}
	var keys []string
	for _, p := range probs {
		keys = append(keys, p.Key)
	}
	want := []string{"endpoints[1].id", "endpoints[1].fhirBaseUrl", "endpoints[1].auth.token", "endpoints[1].patientIdentifierSystem", "endpoints[1].concurrency"}
	if diff := cmp.Diff(want, keys); diff != "" {
		t.Errorf("problems (-want +got):\n%s\n%v", diff, err)
	}
	e := cfg.Endpoints[0]
	if e.Auth.ClientSecret != "s3cret" || e.Retry.MaxBackoff.D() != time.Minute || e.Concurrency != 4 || !e.Enabled {
		t.Errorf("endpoint decoded over defaults with the secret from the environment: %+v", e)
	}
	if strings.Contains(cfg.Dump(), "s3cret") {
		t.Errorf("Dump shows the endpoint secret")
	}

	if err := os.WriteFile(path, []byte("endpoints:\n  - id: x\n    colour: blue\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path, nil); err == nil || !strings.Contains(err.Error(), "colour") {
		t.Errorf("unknown endpoint key: %v", err)
	}
}

func TestAuthClients(t *testing.T) {
	dir := t.TempDir()
	path := writeFile(t, `auth:
  tokenLifetime: 2h
  clients:
    - id: ehr-1
      jwksUrl: https://ehr.example/jwks.json
      scopes: [system/*.rs]
      role: ehr
    - id: ehr-1
      jwksUrl: https://ehr.example/jwks.json
      scopes: [system/*.rs]
      role: superuser
    - id: clinic
      jwksFile: `+filepath.Join(dir, "missing.json")+`
      scopes: [system/*.rs]
      role: clinic
`)
	_, err := Load(path, envMap(nil))
	var probs Problems
	if !errors.As(err, &probs) {
		t.Fatalf("Load: %v", err)
	}
	var keys []string
	for _, p := range probs {
		keys = append(keys, p.Key)
	}
	want := []string{"auth.tokenLifetime", "auth.clients[1].id", "auth.clients[1].role", "auth.clients[2]"}
	if diff := cmp.Diff(want, keys); diff != "" {
		t.Errorf("problems (-want +got):\n%s\n%v", diff, err)
	}
}
