package config

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestAuditRetention(t *testing.T) {
	tests := []struct {
		name      string
		file      string
		env       map[string]string
		retention time.Duration
		problems  []string
	}{
		{name: "default keeps everything", retention: 0},
		{name: "six years", file: "audit: {retention: 52560h}", retention: 52560 * time.Hour},
		{name: "from the environment", file: "audit: {retention: 52560h}", env: map[string]string{"KAPFHIR_AUDIT_RETENTION": "8760h"}, retention: 8760 * time.Hour},
		{name: "too short", file: "audit: {retention: 1h}", problems: []string{"audit.retention"}},
		{name: "negative", file: "audit: {retention: -24h}", problems: []string{"audit.retention"}},
		{name: "not a duration", env: map[string]string{"KAPFHIR_AUDIT_RETENTION": "6y"}, problems: []string{"KAPFHIR_AUDIT_RETENTION"}},
		{name: "prune interval out of range", file: "audit: {pruneEvery: 1s}", problems: []string{"audit.pruneEvery"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := ""
			if tt.file != "" {
				path = writeFile(t, tt.file)
			}
			cfg, err := Load(path, envMap(tt.env))
			var keys []string
			if probs, ok := err.(Problems); ok {
				for _, p := range probs {
					keys = append(keys, p.Key)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.problems, keys); diff != "" {
				t.Fatalf("problems (-want +got):\n%s", diff)
			}
			if err == nil && (cfg.Audit.Retention != tt.retention || cfg.Audit.PruneEvery != 24*time.Hour) {
				t.Errorf("audit = %+v, want retention %v, pruneEvery 24h", cfg.Audit, tt.retention)
			}
		})
	}
}
