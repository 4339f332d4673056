package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kapfhir/kapfhir/test/pgtest"
)

// cli runs the command line in-process with the given environment and returns
// stdout, stderr and the error.
func cli(t *testing.T, env map[string]string, args ...string) (string, string, error) {
	t.Helper()
	var out, errw bytes.Buffer
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	err := run(t.Context(), args, &out, &errw, lookup)
	return out.String(), errw.String(), err
}

// dataEnv points the data directory at a fresh temp dir.
func dataEnv(t *testing.T) map[string]string {
	return map[string]string{"KAPFHIR_DATA_DIR": filepath.Join(t.TempDir(), "data")}
}

var shipped = []string{
	"ketamine-iv-6x-3wk", "ketamine-iv-6x-2wk-study", "kap-spaced-3to6", "sublingual-foundation-8",
	"sublingual-extended-24", "booster-3to6mo", "maintenance-weekly", "maintenance-biweekly",
	"maintenance-monthly", "booster-on-relapse",
}

func TestUsageErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{nil, "no command given"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"config"}, `"config" takes "check"`},
		{[]string{"config", "lint"}, `"config" takes "check"`},
		{[]string{"serve", "extra"}, "unexpected arguments"},
		{[]string{"serve", "-nope"}, "flag provided but not defined"},
		{[]string{"serve", "-config", "/no/such/kapfhir.yaml"}, "kapfhir.yaml"},
	} {
		_, _, err := cli(t, nil, tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: error %v, want it to contain %q", tt.args, err, tt.want)
		}
	}
	out, _, err := cli(t, nil, "version")
	if err != nil || !strings.HasPrefix(out, "kapfhir ") {
		t.Errorf("version: %q, %v", out, err)
	}
	out, _, err = cli(t, nil, "help")
	if err != nil || !strings.Contains(out, "kapfhir serve") {
		t.Errorf("help: %q, %v", out, err)
	}
}

func TestConfigCheck(t *testing.T) {
	out, _, err := cli(t, nil, "config", "check")
	if err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, want := range []string{"configuration OK", "127.0.0.1:8080", "kapfhir-data"} {
		if !strings.Contains(out, want) {
			t.Errorf("config check output lacks %q:\n%s", want, out)
		}
	}

	t.Run("every problem at once", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "kapfhir.yaml")
		bad := "listen: not-an-address\nstore:\n  driver: oracle\nclinic:\n  timezone: Mars/Olympus\n  closed: [2026-13-45]\nlog:\n  level: chatty\n"
		if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err := cli(t, nil, "config", "check", "-config", path)
		if err == nil {
			t.Fatal("bad config accepted")
		}
		for _, want := range []string{"listen", "store.driver", "clinic.timezone", "clinic.closed", "log.level"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error does not name %q:\n%v", want, err)
			}
		}
	})

	t.Run("environment overrides the file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "kapfhir.yaml")
		if err := os.WriteFile(path, []byte("listen: 127.0.0.1:9999\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		out, _, err := cli(t, map[string]string{"KAPFHIR_CONFIG": path, "KAPFHIR_LISTEN": "127.0.0.1:7777"}, "config", "check")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "127.0.0.1:7777") || strings.Contains(out, "9999") {
			t.Errorf("KAPFHIR_LISTEN did not override the file:\n%s", out)
		}
	})

	t.Run("secrets are redacted", func(t *testing.T) {
		out, _, err := cli(t, map[string]string{
			"KAPFHIR_STORE_DRIVER": "postgres",
			"KAPFHIR_POSTGRES_URL": "postgres://kap:hunter2@127.0.0.1:5432/test",
		}, "config", "check")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, "hunter2") {
			t.Errorf("config check printed the database password:\n%s", out)
		}
	})

	t.Run("bad protocol directory", func(t *testing.T) {
		env := map[string]string{"KAPFHIR_PROTOCOLS_DIR": filepath.Join("..", "..", "catalogue", "testdata", "bad")}
		_, _, err := cli(t, env, "config", "check")
		if err == nil {
			t.Fatal("bad protocol directory accepted")
		}
		for _, want := range []string{"values.yml", "doses.default", "spacing.weekdays[1]", "followOn[0]"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error does not name %q:\n%v", want, err)
			}
		}
	})
}

// TestServeRefusesBadSetUp: serve stops before listening, naming what is wrong.
func TestServeRefusesBadSetUp(t *testing.T) {
	certFile, _, _ := selfSigned(t)
	_, otherKey, _ := selfSigned(t)
	for _, tt := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"a bad catalogue", map[string]string{"KAPFHIR_PROTOCOLS_DIR": filepath.Join("..", "..", "catalogue", "testdata", "bad")}, "protocol catalogue"},
		{"a key of another certificate", map[string]string{"KAPFHIR_TLS_CERT_FILE": certFile, "KAPFHIR_TLS_KEY_FILE": otherKey}, "tls.certFile"},
	} {
		env := dataEnv(t)
		env["KAPFHIR_LISTEN"] = "127.0.0.1:0"
		maps.Copy(env, tt.env)
		out, _, err := cli(t, env, "serve")
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("serve with %s: %v; want an error naming %s", tt.name, err, tt.want)
		}
		if strings.Contains(out, "listening") {
			t.Errorf("serve with %s announced it was listening:\n%s", tt.name, out)
		}
	}
}

func TestServeStopsOnCancel(t *testing.T) {
	env := dataEnv(t)
	env["KAPFHIR_LISTEN"] = "127.0.0.1:0"
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := run(ctx, []string{"serve"}, pw, io.Discard, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
		pw.Close()
		done <- err
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("no listening line: %v (serve returned %v)", err, <-done)
	}
	addr := strings.Fields(strings.TrimPrefix(line, "kapfhir listening on "))[0]
	resp, err := http.Get(addr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/readyz: %d", resp.StatusCode)
	}
	go io.Copy(io.Discard, pr)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve did not shut down cleanly: %v", err)
	}
}

func TestProtocols(t *testing.T) {
	out, _, err := cli(t, nil, "protocols")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range shipped {
		if !strings.Contains(out, id+" ") {
			t.Errorf("protocols does not list %s:\n%s", id, out)
		}
	}
}

func TestMigrate(t *testing.T) {
	env := dataEnv(t)
	out, _, err := cli(t, env, "migrate")
	if err != nil {
		t.Fatal(err)
	}
	if out == "migrations applied: 0\n" || !strings.HasPrefix(out, "migrations applied: ") {
		t.Errorf("first migrate: %q", out)
	}
	out, _, err = cli(t, env, "migrate")
	if err != nil || out != "migrations applied: 0\n" {
		t.Errorf("second migrate: %q, %v", out, err)
	}
	if _, err := os.Stat(filepath.Join(env["KAPFHIR_DATA_DIR"], "kapfhir.db")); err != nil {
		t.Errorf("database not created in the data directory: %v", err)
	}
}

func TestMigratePostgres(t *testing.T) {
	url := pgtest.URL(t, "the PostgreSQL migrate test")
	env := map[string]string{"KAPFHIR_STORE_DRIVER": "postgres", "KAPFHIR_POSTGRES_URL": url}
	for range 2 {
		out, _, err := cli(t, env, "migrate")
		if err != nil || !strings.HasPrefix(out, "migrations applied: ") {
			t.Fatalf("migrate: %q, %v", out, err)
		}
	}
}

// TestDemo runs the demo as if it were each day of a week: every shipped
// protocol must enrol, whatever the weekday.
func TestDemo(t *testing.T) {
	defer func() { now = time.Now }()
	for d := range 7 {
		day := time.Date(2026, 11, 30+d, 15, 0, 0, 0, time.UTC)
		t.Run(day.Weekday().String(), func(t *testing.T) {
			now = func() time.Time { return day }
			out, _, err := cli(t, dataEnv(t), "demo")
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range shipped {
				if !strings.Contains(out, id) {
					t.Errorf("demo did not use protocol %s", id)
				}
			}
			for _, want := range []string{"/fhir/CarePlan?patient=Patient/", "_include=CarePlan:activity-reference", "in 10 protocols", "dosing", "integration", "window "} {
				if !strings.Contains(out, want) {
					t.Errorf("demo output lacks %q", want)
				}
			}
			if strings.Contains(out, " ! ") {
				t.Errorf("demo schedules report problems:\n%s", out)
			}
		})
	}
}
