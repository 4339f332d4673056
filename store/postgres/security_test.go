package postgres_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/kapfhir/kapfhir/store"
	"github.com/kapfhir/kapfhir/store/postgres"
	"github.com/kapfhir/kapfhir/store/storetest"
)

// Two pools on one schema are two processes.
func TestShared(t *testing.T) {
	url := databaseURL(t)
	storetest.RunShared(t, func(t *testing.T) (store.Store, store.Store) {
		cfg := newSchema(t, url)
		var dbs [2]store.Store
		for i := range dbs {
			db, err := postgres.OpenConfig(t.Context(), cfg.Copy())
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			t.Cleanup(func() { db.Close() })
			if _, err := db.Migrate(t.Context()); err != nil {
				t.Fatalf("Migrate: %v", err)
			}
			dbs[i] = db
		}
		return dbs[0], dbs[1]
	})
}

// The tamperer connects directly with pgx, to the store's schema.
func TestAuditTamper(t *testing.T) {
	url := databaseURL(t)
	storetest.RunTamper(t, func(t *testing.T) (store.Store, storetest.Exec) {
		cfg := newSchema(t, url)
		db, err := postgres.OpenConfig(t.Context(), cfg.Copy())
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { db.Close() })
		if _, err := db.Migrate(t.Context()); err != nil {
			t.Fatalf("Migrate: %v", err)
		}
		conn, err := pgx.ConnectConfig(t.Context(), cfg.ConnConfig)
		if err != nil {
			t.Fatalf("connect directly: %v", err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		return db, func(ctx context.Context, query string) error {
			_, err := conn.Exec(ctx, query)
			return err
		}
	})
}
