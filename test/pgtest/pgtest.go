// Package pgtest decides whether tests that need PostgreSQL run, skip or
// fail: they run when KAPFHIR_TEST_POSTGRES_URL names a database, skip with
// a message saying how to run them when it does not, and fail instead of
// skipping in CI (CI=true), where .ci/run sets the variable.
package pgtest

import (
	"os"
	"testing"
)

// Env is the variable that names the test database.
const Env = "KAPFHIR_TEST_POSTGRES_URL"

// URL returns the test database's URL, or skips t (fails it in CI) when
// none is configured. what names the test's need ("the PostgreSQL
// conformance suite").
func URL(t testing.TB, what string) string {
	t.Helper()
	if url := os.Getenv(Env); url != "" {
		return url
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s needs PostgreSQL: %s must be set in CI", what, Env)
	}
	t.Skipf("skipping %s: PostgreSQL not configured (set %s=postgres://user@host:5432/db?sslmode=disable to run it)", what, Env)
	return ""
}
