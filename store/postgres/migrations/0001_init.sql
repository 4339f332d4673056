-- kapfhir schema, version 1. Times are Unix microseconds (UTC); text compares
-- bytewise (COLLATE "C") so ordering matches SQLite.

CREATE TABLE patients (
	id   TEXT COLLATE "C" PRIMARY KEY,
	json BYTEA NOT NULL
);

CREATE TABLE patient_identifiers (
	system     TEXT COLLATE "C" NOT NULL,
	value      TEXT COLLATE "C" NOT NULL,
	patient_id TEXT COLLATE "C" NOT NULL REFERENCES patients (id),
	UNIQUE (system, value)
);
CREATE INDEX patient_identifiers_patient_id ON patient_identifiers (patient_id);

CREATE TABLE programs (
	id         TEXT COLLATE "C" PRIMARY KEY,
	patient_id TEXT COLLATE "C" NOT NULL REFERENCES patients (id),
	version    BIGINT NOT NULL,
	created    BIGINT NOT NULL,
	json       BYTEA NOT NULL
);
CREATE INDEX programs_patient_id ON programs (patient_id, created, id);

CREATE TABLE sessions (
	id         TEXT COLLATE "C" PRIMARY KEY,
	program_id TEXT COLLATE "C" NOT NULL REFERENCES programs (id)
);
CREATE INDEX sessions_program_id ON sessions (program_id);

CREATE TABLE resources (
	type         TEXT COLLATE "C" NOT NULL,
	id           TEXT COLLATE "C" NOT NULL,
	version_id   BIGINT NOT NULL,
	last_updated BIGINT NOT NULL,
	deleted      BOOLEAN NOT NULL DEFAULT FALSE,
	hash         BYTEA,
	sort_date    BIGINT NOT NULL,
	json         BYTEA NOT NULL,
	PRIMARY KEY (type, id)
);
CREATE INDEX resources_type_sort_date ON resources (type, sort_date, id);
CREATE INDEX resources_type_last_updated ON resources (type, last_updated, id);

CREATE TABLE resource_versions (
	type         TEXT COLLATE "C" NOT NULL,
	id           TEXT COLLATE "C" NOT NULL,
	version_id   BIGINT NOT NULL,
	last_updated BIGINT NOT NULL,
	deleted      BOOLEAN NOT NULL DEFAULT FALSE,
	json         BYTEA NOT NULL,
	PRIMARY KEY (type, id, version_id)
);

CREATE TABLE search_tokens (
	type   TEXT COLLATE "C" NOT NULL,
	id     TEXT COLLATE "C" NOT NULL,
	param  TEXT COLLATE "C" NOT NULL,
	system TEXT COLLATE "C" NOT NULL,
	code   TEXT COLLATE "C" NOT NULL
);
CREATE INDEX search_tokens_lookup ON search_tokens (type, param, code, system);
CREATE INDEX search_tokens_resource ON search_tokens (type, id);

CREATE TABLE search_refs (
	type   TEXT COLLATE "C" NOT NULL,
	id     TEXT COLLATE "C" NOT NULL,
	param  TEXT COLLATE "C" NOT NULL,
	target TEXT COLLATE "C" NOT NULL
);
CREATE INDEX search_refs_lookup ON search_refs (type, param, target);
CREATE INDEX search_refs_resource ON search_refs (type, id);

CREATE TABLE search_dates (
	type  TEXT COLLATE "C" NOT NULL,
	id    TEXT COLLATE "C" NOT NULL,
	param TEXT COLLATE "C" NOT NULL,
	lo    BIGINT NOT NULL,
	hi    BIGINT NOT NULL
);
CREATE INDEX search_dates_lookup ON search_dates (type, param, lo);
CREATE INDEX search_dates_resource ON search_dates (type, id);

CREATE TABLE meta (
	key   TEXT COLLATE "C" PRIMARY KEY,
	value TEXT COLLATE "C" NOT NULL
);
