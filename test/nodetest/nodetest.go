// Package nodetest decides whether tests that need Node.js and a project's
// npm packages run, skip or fail: they skip with a message saying how to
// enable them, unless KAPFHIR_REQUIRE_NODE=1 or CI=true, where they fail.
package nodetest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// Dir returns test/<name>, the directory of a Node project under test/.
func Dir(name string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", name)
}

// Mandatory reports whether missing Node.js fails instead of skipping.
func Mandatory() bool {
	return os.Getenv("KAPFHIR_REQUIRE_NODE") == "1" || os.Getenv("CI") == "true"
}

// Available reports why the Node project in dir cannot run (package is a
// path under node_modules that proves its install), or nil when it can.
func Available(dir, pkg string) error {
	if _, err := exec.LookPath("node"); err != nil {
		return fmt.Errorf("node is not on PATH")
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", pkg)); err != nil {
		return fmt.Errorf("npm packages are not installed (run: npm ci --prefix %s)", dir)
	}
	return nil
}

// Require skips t when err is not nil, or fails it when Node.js is mandatory.
// what names the thing that needs Node ("the test EHR").
func Require(t testing.TB, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if Mandatory() {
		t.Fatalf("%s required but unavailable: %v", what, err)
	}
	t.Skipf("skipping: %s unavailable: %v (set KAPFHIR_REQUIRE_NODE=1 to make this fail)", what, err)
}
