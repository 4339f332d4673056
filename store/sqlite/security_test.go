package sqlite_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/kapfhir/kapfhir/store"
	"github.com/kapfhir/kapfhir/store/sqlite"
	"github.com/kapfhir/kapfhir/store/storetest"
)

// openAt returns a migrated store on the database file at path, closed at cleanup.
func openAt(t *testing.T, path string) *sqlite.DB {
	t.Helper()
	db, err := sqlite.Open(t.Context(), path)
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

// Two handles on one file are two processes: each has its own writer.
func TestShared(t *testing.T) {
	storetest.RunShared(t, func(t *testing.T) (store.Store, store.Store) {
		path := filepath.Join(t.TempDir(), "kapfhir.db")
		return openAt(t, path), openAt(t, path)
	})
}

// The tamperer opens the database file itself, through the same driver.
func TestAuditTamper(t *testing.T) {
	storetest.RunTamper(t, func(t *testing.T) (store.Store, storetest.Exec) {
		path := filepath.Join(t.TempDir(), "kapfhir.db")
		db := openAt(t, path)
		raw, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
		if err != nil {
			t.Fatalf("open the file directly: %v", err)
		}
		t.Cleanup(func() { raw.Close() })
		return db, func(ctx context.Context, query string) error {
			_, err := raw.ExecContext(ctx, query)
			return err
		}
	})
}
