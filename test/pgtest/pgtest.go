// Package pgtest decides whether tests that need PostgreSQL run, skip or
// fail: they run when KAPFHIR_TEST_POSTGRES_URL names a database, skip with
// a message saying how to run them when it does not, and fail instead of
// skipping in CI (CI=true), where .ci/run sets the variable.
package pgtest

import (
	"context"
	"crypto/rand"
	neturl "net/url"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
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

// Schema creates a uniquely named schema (prefix plus random text) in the
// database at url, dropped with everything in it at cleanup, and returns
// url with search_path set to it: every connection opened with that URL
// works in the schema (pgx passes the parameter to the server).
func Schema(t testing.TB, url, prefix string) string {
	t.Helper()
	ctx := context.Background()
	schema := pgx.Identifier{prefix + strings.ToLower(rand.Text())}.Sanitize()
	exec := func(sql string) error {
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, sql)
		return err
	}
	if err := exec("CREATE SCHEMA " + schema); err != nil {
		t.Fatalf("create schema: %v", err)
	}
	t.Cleanup(func() {
		if err := exec("DROP SCHEMA " + schema + " CASCADE"); err != nil {
			t.Errorf("drop schema: %v", err)
		}
	})
	u, err := neturl.Parse(url)
	if err != nil {
		t.Fatalf("parse %s: %v", Env, err)
	}
	q := u.Query()
	q.Set("search_path", strings.Trim(schema, `"`))
	u.RawQuery = q.Encode()
	return u.String()
}
