package postgres_test

import (
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/kapfhir/kapfhir/store"
	"github.com/kapfhir/kapfhir/store/postgres"
	"github.com/kapfhir/kapfhir/store/storetest"
	"github.com/kapfhir/kapfhir/test/pgtest"
)

// databaseURL is the test database (see pgtest.URL).
func databaseURL(t *testing.T) string {
	t.Helper()
	return pgtest.URL(t, "the PostgreSQL store tests")
}

// newSchema creates a uniquely named schema, dropped at cleanup, and returns
// a pool configuration whose connections use it as their search_path.
func newSchema(t *testing.T, url string) *pgxpool.Config {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(pgtest.Schema(t, url, "kapfhir_test_"))
	if err != nil {
		t.Fatalf("parse %s: %v", pgtest.Env, err)
	}
	cfg.MaxConns = 4
	return cfg
}

// open returns an unmigrated store in a new schema, closed at cleanup.
func open(t *testing.T, url string) *postgres.DB {
	t.Helper()
	db, err := postgres.OpenConfig(t.Context(), newSchema(t, url))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func TestConformance(t *testing.T) {
	url := databaseURL(t)
	storetest.Run(t, func(t *testing.T) store.Store {
		db := open(t, url)
		if _, err := db.Migrate(t.Context()); err != nil {
			t.Fatalf("Migrate: %v", err)
		}
		return db
	})
}

func TestMigrate(t *testing.T) {
	url := databaseURL(t)
	ctx := t.Context()
	cfg := newSchema(t, url)
	db, err := postgres.OpenConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if v, err := db.SchemaVersion(ctx); err != nil || v != 0 {
		t.Errorf("SchemaVersion(new) = %d, %v; want 0", v, err)
	}

	// Two processes starting at once: the advisory lock lets exactly one apply each migration.
	other, err := postgres.OpenConfig(ctx, cfg.Copy())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	var wg sync.WaitGroup
	applied := make([]int, 2)
	errs := make([]error, 2)
	for i, d := range []*postgres.DB{db, other} {
		wg.Go(func() { applied[i], errs[i] = d.Migrate(ctx) })
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("concurrent Migrate: %v; %v", errs[0], errs[1])
	}
	n := applied[0] + applied[1]
	if n < 1 {
		t.Fatalf("concurrent Migrate applied %v, want at least 1 in total", applied)
	}
	v, err := db.SchemaVersion(ctx)
	if err != nil || v != n {
		t.Errorf("SchemaVersion = %d, %v; want %d", v, err, n)
	}
	if n, err := db.Migrate(ctx); err != nil || n != 0 {
		t.Errorf("second Migrate = %d, %v; want 0", n, err)
	}
}

func TestOpenBadURL(t *testing.T) {
	_, err := postgres.Open(t.Context(), "postgres://user:s3cret@[::1")
	if err == nil {
		t.Fatal("Open(bad URL) succeeded")
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error %q reveals the password", err)
	}
}
