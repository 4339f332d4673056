package main

import (
	"regexp"
	"strings"
	"testing"
)

// TestAuditPrune prunes through the CLI: refused without a retention or a
// date, then everything before a date goes, the prune is recorded and the
// chain still verifies.
func TestAuditPrune(t *testing.T) {
	env := dataEnv(t)
	if _, _, err := cli(t, env, "demo"); err != nil { // domain writes, each audited
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"audit", "prune"}, "no retention is configured"},
		{[]string{"audit", "prune", "-before", "last tuesday"}, "-before must be a date"},
		{[]string{"audit", "shred"}, "usage: kapfhir audit verify | kapfhir audit prune"},
	} {
		if _, _, err := cli(t, env, tt.args...); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: error %v, want it to contain %q", tt.args, err, tt.want)
		}
	}

	// A retention of a day keeps what was just written.
	env["KAPFHIR_AUDIT_RETENTION"] = "24h"
	out, _, err := cli(t, env, "audit", "prune")
	if err != nil || !strings.Contains(out, "pruned 0 records") || !strings.Contains(out, "intact") {
		t.Fatalf("prune with 24h retention: %q, %v", out, err)
	}
	// Everything before a date in the future goes but the prune records.
	out, _, err = cli(t, env, "audit", "prune", "-before", "2999-01-01")
	if err != nil {
		t.Fatalf("prune -before: %q, %v", out, err)
	}
	m := regexp.MustCompile(`pruned (\d+) records older than 2999-01-01T00:00:00Z`).FindStringSubmatch(out)
	if m == nil || m[1] == "0" {
		t.Fatalf("prune -before 2999-01-01: %q; want some records pruned", out)
	}
	if !regexp.MustCompile(`intact, 1 records`).MatchString(out) {
		t.Errorf("after pruning everything: %q; want the prune record alone, intact", out)
	}
	out, _, err = cli(t, env, "audit", "verify")
	if err != nil || !strings.HasPrefix(out, "intact, 1 records") {
		t.Errorf("audit verify: %q, %v", out, err)
	}
}
