package main

import (
	"regexp"
	"strings"
	"testing"
)

// keys list shows the signing key; keys rotate makes a new one sign while
// the old one verifies until it is due for retirement, audited.
func TestKeysRotateAndList(t *testing.T) {
	env := dataEnv(t)
	out, _, err := cli(t, env, "keys", "list")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "KID ") || !strings.Contains(lines[1], " signs ") {
		t.Fatalf("keys list on a new store:\n%s", out)
	}
	first := strings.Fields(lines[1])[0]

	out, _, err = cli(t, env, "keys", "rotate")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`rotated: key (\S+) signs from now on`).FindStringSubmatch(out)
	if m == nil || m[1] == first {
		t.Fatalf("keys rotate:\n%s", out)
	}
	_, table, _ := strings.Cut(out, "\nKID ")
	var states []string
	for _, l := range strings.Split(strings.TrimSpace(table), "\n")[1:] {
		f := strings.Fields(l)
		states = append(states, f[0]+" "+f[2])
	}
	if want := m[1] + " signs," + first + " verifies"; strings.Join(states, ",") != want {
		t.Errorf("keys after rotation: %q, want %q:\n%s", strings.Join(states, ","), want, out)
	}
	if !strings.Contains(out, " verifies until ") {
		t.Errorf("the old key's retirement time is not shown:\n%s", out)
	}
	if out, _, err := cli(t, env, "audit", "verify"); err != nil || !strings.HasPrefix(out, "intact") {
		t.Errorf("audit verify after rotation: %q, %v", out, err)
	}
	if _, _, err := cli(t, env, "keys", "delete"); err == nil || !strings.Contains(err.Error(), "usage: kapfhir keys rotate") {
		t.Errorf("keys delete: %v, want the usage", err)
	}
}
