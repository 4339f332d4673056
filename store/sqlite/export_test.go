package sqlite

import "database/sql"

// ReadPool exposes the reader pool to tests.
func ReadPool(db *DB) *sql.DB { return db.read }
