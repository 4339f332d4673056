-- kapfhir schema, version 1. Times are Unix microseconds (UTC).

CREATE TABLE patients (
	id   TEXT PRIMARY KEY,
	json BLOB NOT NULL
);

CREATE TABLE patient_identifiers (
	system     TEXT NOT NULL,
	value      TEXT NOT NULL,
	patient_id TEXT NOT NULL REFERENCES patients (id),
	UNIQUE (system, value)
);
CREATE INDEX patient_identifiers_patient_id ON patient_identifiers (patient_id);

CREATE TABLE programs (
	id         TEXT PRIMARY KEY,
	patient_id TEXT NOT NULL REFERENCES patients (id),
	version    INTEGER NOT NULL,
	created    INTEGER NOT NULL,
	json       BLOB NOT NULL
);
CREATE INDEX programs_patient_id ON programs (patient_id, created, id);

CREATE TABLE sessions (
	id         TEXT PRIMARY KEY,
	program_id TEXT NOT NULL REFERENCES programs (id)
);
CREATE INDEX sessions_program_id ON sessions (program_id);

CREATE TABLE resources (
	type         TEXT NOT NULL,
	id           TEXT NOT NULL,
	version_id   INTEGER NOT NULL,
	last_updated INTEGER NOT NULL,
	deleted      INTEGER NOT NULL DEFAULT 0,
	hash         BLOB,
	sort_date    INTEGER NOT NULL,
	json         BLOB NOT NULL,
	PRIMARY KEY (type, id)
);
CREATE INDEX resources_type_sort_date ON resources (type, sort_date, id);
CREATE INDEX resources_type_last_updated ON resources (type, last_updated, id);

CREATE TABLE resource_versions (
	type         TEXT NOT NULL,
	id           TEXT NOT NULL,
	version_id   INTEGER NOT NULL,
	last_updated INTEGER NOT NULL,
	deleted      INTEGER NOT NULL DEFAULT 0,
	json         BLOB NOT NULL,
	PRIMARY KEY (type, id, version_id)
);

CREATE TABLE search_tokens (
	type   TEXT NOT NULL,
	id     TEXT NOT NULL,
	param  TEXT NOT NULL,
	system TEXT NOT NULL,
	code   TEXT NOT NULL
);
CREATE INDEX search_tokens_lookup ON search_tokens (type, param, code, system);
CREATE INDEX search_tokens_resource ON search_tokens (type, id);

CREATE TABLE search_refs (
	type   TEXT NOT NULL,
	id     TEXT NOT NULL,
	param  TEXT NOT NULL,
	target TEXT NOT NULL
);
CREATE INDEX search_refs_lookup ON search_refs (type, param, target);
CREATE INDEX search_refs_resource ON search_refs (type, id);

CREATE TABLE search_dates (
	type  TEXT NOT NULL,
	id    TEXT NOT NULL,
	param TEXT NOT NULL,
	lo    INTEGER NOT NULL,
	hi    INTEGER NOT NULL
);
CREATE INDEX search_dates_lookup ON search_dates (type, param, lo);
CREATE INDEX search_dates_resource ON search_dates (type, id);

CREATE TABLE meta (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
);
