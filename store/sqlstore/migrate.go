package sqlstore

import (
	"context"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
)

// Migration is one embedded schema change.
type Migration struct {
	Version int
	Name    string // file name, NNNN_description.sql
	SQL     string
}

// LoadMigrations returns the migrations/*.sql files of fsys in version
// order. Files are named NNNN_description.sql; two files may not share a
// version.
func LoadMigrations(fsys fs.FS) ([]Migration, error) {
	names, err := fs.Glob(fsys, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var ms []Migration
	seen := map[int]string{}
	for _, name := range names {
		base := path.Base(name)
		num, _, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: name must start with a positive number and _", base)
		}
		if prev, dup := seen[v]; dup {
			return nil, fmt.Errorf("migrations %s and %s share version %d", prev, base, v)
		}
		seen[v] = base
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		ms = append(ms, Migration{Version: v, Name: base, SQL: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	return ms, nil
}

// Migrate loads the migrations of fsys, runs setup (which creates
// schema_migrations), then apply for each migration in order, and reports
// how many apply says it applied. apply runs each in its own transaction,
// typically through ApplyMigration.
func Migrate(ctx context.Context, fsys fs.FS, setup func(context.Context) error, apply func(context.Context, Migration) (bool, error)) (applied int, err error) {
	ms, err := LoadMigrations(fsys)
	if err != nil {
		return 0, fmt.Errorf("migrate: %w", err)
	}
	if err := setup(ctx); err != nil {
		return 0, fmt.Errorf("migrate: create schema_migrations: %w", err)
	}
	for _, m := range ms {
		done, err := apply(ctx, m)
		if err != nil {
			return applied, fmt.Errorf("migrate %s: %w", m.Name, err)
		}
		if done {
			applied++
		}
	}
	return applied, nil
}

// ApplyMigration applies m through q (a transaction) unless
// schema_migrations already records it, and records it; it reports whether
// it applied it.
func ApplyMigration(ctx context.Context, d *Dialect, q Querier, m Migration) (bool, error) {
	var n int
	if err := q.QueryRow(ctx, d.Rebind(`SELECT COUNT(*) FROM schema_migrations WHERE version = ?`), m.Version).Scan(&n); err != nil {
		return false, err
	}
	if n > 0 {
		return false, nil
	}
	if _, err := q.Exec(ctx, m.SQL); err != nil {
		return false, err
	}
	if _, err := q.Exec(ctx, d.Rebind(`INSERT INTO schema_migrations (version, name) VALUES (?, ?)`), m.Version, m.Name); err != nil {
		return false, err
	}
	return true, nil
}
