package sqlite_test

import (
	"path/filepath"
	"testing"

	"github.com/kapfhir/kapfhir/store"
	"github.com/kapfhir/kapfhir/store/sqlite"
	"github.com/kapfhir/kapfhir/store/storetest"
)

// open returns a migrated store in a new temp dir, closed at cleanup.
func open(t testing.TB) *sqlite.DB {
	t.Helper()
	db, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "data", "kapfhir.db"))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	if _, err := db.Migrate(t.Context()); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	return db
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return open(t) })
}

func TestMigrate(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "kapfhir.db")
	db, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := db.SchemaVersion(ctx); err != nil || v != 0 {
		t.Errorf("SchemaVersion(new) = %d, %v; want 0", v, err)
	}
	n, err := db.Migrate(ctx)
	if err != nil || n < 1 {
		t.Fatalf("Migrate = %d, %v; want at least 1 applied", n, err)
	}
	v, err := db.SchemaVersion(ctx)
	if err != nil || v != n {
		t.Errorf("SchemaVersion = %d, %v; want %d", v, err, n)
	}
	if n, err := db.Migrate(ctx); err != nil || n != 0 {
		t.Errorf("second Migrate = %d, %v; want 0", n, err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopening keeps the schema.
	db, err = sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if got, err := db.SchemaVersion(ctx); err != nil || got != v {
		t.Errorf("SchemaVersion after reopen = %d, %v; want %d", got, err, v)
	}
	if n, err := db.Migrate(ctx); err != nil || n != 0 {
		t.Errorf("Migrate after reopen = %d, %v; want 0", n, err)
	}
}

func TestReadersAreQueryOnly(t *testing.T) {
	db := open(t)
	// Reads go through the query-only pool: a write through it must fail.
	if _, err := sqlite.ReadPool(db).ExecContext(t.Context(), `INSERT INTO meta (key, value) VALUES ('k', 'v')`); err == nil {
		t.Error("write through the reader pool succeeded, want an error")
	}
}
