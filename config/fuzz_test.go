package config

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad feeds arbitrary YAML to the configuration loader: it must load or
// report problems, never panic.
func FuzzLoad(f *testing.F) {
	for _, s := range []string{
		"listen: 127.0.0.1:8080\n",
		"clinic:\n  hours: {mon: \"09:00-17:00\"}\n  closed: [\"2026-12-25\"]\n",
		"store: {driver: postgres, postgresURL: \"postgres://u:p@h/db\"}\n",
		"http: {shutdownTimeout: 1h}\n",
		"clinic: {hours: [1,2]}\n",
		"{{{{",
		"listen: &a [*a]\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		p := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := Load(p, func(string) (string, bool) { return "", false })
		if err == nil {
			if probs := cfg.Validate(); len(probs) > 0 {
				t.Fatalf("Load accepted a config that Validate refuses: %v", probs)
			}
			if _, err := cfg.Calendar(); err != nil {
				t.Fatalf("Load accepted a config whose calendar fails: %v", err)
			}
		}
	})
}
