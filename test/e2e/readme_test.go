package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestReadmeWalkthrough runs the README's curl walk-through, as written,
// against the real binary with auth on: `go run ./cmd/kapfhir` is the
// built binary, B the server's address; every step must succeed (bash -e,
// pipefail: a jq filter fails on an error answer) and the audit trail
// must end intact.
func TestReadmeWalkthrough(t *testing.T) {
	for _, tool := range []string{"bash", "curl", "jq"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("the README walk-through needs %s", tool)
			}
			t.Skipf("skipping the README walk-through: %s is not installed", tool)
		}
	}
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)## Walk-through \\(curl\\).*?```sh\n(.*?)```").FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md has no ```sh block under ## Walk-through (curl)")
	}
	script := string(m[1])
	in := start(t)
	addr := strings.TrimPrefix(in.base, "http://")
	prelude := `set -euo pipefail
shopt -s expand_aliases
go() { if [ "$1" = run ] && [ "$2" = ./cmd/kapfhir ]; then shift 2; "$KAPFHIR_BIN" "$@"; else command go "$@"; fi; }
`
	script = strings.Replace(script, "B=http://127.0.0.1:8080", "B="+in.base, 1)
	cmd := exec.CommandContext(t.Context(), "bash", "-c", prelude+script)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "KAPFHIR_BIN=" + binary,
		"KAPFHIR_DATA_DIR=" + in.dataDir, "KAPFHIR_LISTEN=" + addr,
	}
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the walk-through failed: %v\n%s", err, out)
	}
	for _, want := range []string{`"ketamine-iv-6x-3wk"`, `"status": "booked"`, `"intact":true`, "intact, "} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the walk-through's output lacks %s:\n%s", want, out)
		}
	}
}
