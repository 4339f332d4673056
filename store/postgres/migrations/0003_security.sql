-- kapfhir schema, version 3: the audit trail (a hash chain, see package
-- audit), API clients, used token ids and signing keys. Times are Unix
-- microseconds (UTC); 0 is "none". Text compares bytewise (COLLATE "C") so
-- ordering matches SQLite. Hashed bytes are BYTEA (kept exactly), never JSONB.

-- One row per audit record. seq is assigned from audit_head, contiguous
-- from 1; every column but the chain's own is covered by hash.
CREATE TABLE audit_events (
	seq          BIGINT PRIMARY KEY,
	at           BIGINT NOT NULL,
	type         TEXT COLLATE "C" NOT NULL,
	subtype      TEXT COLLATE "C" NOT NULL,
	action       TEXT COLLATE "C" NOT NULL,
	outcome      INTEGER NOT NULL,
	outcome_desc TEXT NOT NULL DEFAULT '',
	client_id    TEXT COLLATE "C" NOT NULL DEFAULT '',
	agent_role   TEXT COLLATE "C" NOT NULL DEFAULT '',
	address      TEXT COLLATE "C" NOT NULL DEFAULT '',
	patient_id   TEXT COLLATE "C" NOT NULL DEFAULT '',
	endpoint_id  TEXT COLLATE "C" NOT NULL DEFAULT '',
	entities     TEXT NOT NULL DEFAULT '', -- JSON list of audit.Entity
	detail       TEXT NOT NULL DEFAULT '', -- JSON object of strings
	source       TEXT COLLATE "C" NOT NULL,
	json         BYTEA NOT NULL,           -- the rendered AuditEvent
	prev_hash    BYTEA NOT NULL,
	hash         BYTEA NOT NULL
);
CREATE INDEX audit_events_time ON audit_events (at);
CREATE INDEX audit_events_client ON audit_events (client_id, seq);
CREATE INDEX audit_events_patient ON audit_events (patient_id, seq);
CREATE INDEX audit_events_subtype ON audit_events (subtype, seq);
CREATE INDEX audit_events_endpoint ON audit_events (endpoint_id, seq);

-- The entity keys each record is found by (audit.Record.Keys): a search
-- index, not covered by the chain.
CREATE TABLE audit_entities (
	ref TEXT COLLATE "C" NOT NULL,
	seq BIGINT NOT NULL,
	PRIMARY KEY (ref, seq)
);
CREATE INDEX audit_entities_seq ON audit_entities (seq);

-- The end of the chain (one row), locked FOR UPDATE by every appender:
-- the last seq and its hash.
CREATE TABLE audit_head (
	id   INTEGER PRIMARY KEY CHECK (id = 1),
	seq  BIGINT NOT NULL,
	hash BYTEA NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));

CREATE TABLE auth_clients (
	id      TEXT COLLATE "C" PRIMARY KEY,
	role    TEXT COLLATE "C" NOT NULL DEFAULT '',
	json    TEXT NOT NULL,
	created BIGINT NOT NULL,
	updated BIGINT NOT NULL
);

-- Token ids (jti) used by each client, until they expire.
CREATE TABLE auth_jti (
	client_id TEXT COLLATE "C" NOT NULL,
	jti       TEXT COLLATE "C" NOT NULL,
	expires   BIGINT NOT NULL,
	PRIMARY KEY (client_id, jti)
);
CREATE INDEX auth_jti_expires ON auth_jti (expires);

CREATE TABLE auth_signing_keys (
	kid     TEXT COLLATE "C" PRIMARY KEY,
	alg     TEXT COLLATE "C" NOT NULL,
	private BYTEA NOT NULL, -- encrypted by the caller
	public  BYTEA,
	created BIGINT NOT NULL,
	retired BIGINT NOT NULL DEFAULT 0
);
