-- kapfhir schema, version 3: the audit trail (a hash chain, see package
-- audit), API clients, used token ids and signing keys. Times are Unix
-- microseconds (UTC); 0 is "none".

-- One row per audit record. seq is assigned from audit_head, contiguous
-- from 1; every column but the chain's own is covered by hash.
CREATE TABLE audit_events (
	seq          INTEGER PRIMARY KEY,
	at           INTEGER NOT NULL,
	type         TEXT NOT NULL,
	subtype      TEXT NOT NULL,
	action       TEXT NOT NULL,
	outcome      INTEGER NOT NULL,
	outcome_desc TEXT NOT NULL DEFAULT '',
	client_id    TEXT NOT NULL DEFAULT '',
	agent_role   TEXT NOT NULL DEFAULT '',
	address      TEXT NOT NULL DEFAULT '',
	patient_id   TEXT NOT NULL DEFAULT '',
	endpoint_id  TEXT NOT NULL DEFAULT '',
	entities     TEXT NOT NULL DEFAULT '', -- JSON list of audit.Entity
	detail       TEXT NOT NULL DEFAULT '', -- JSON object of strings
	source       TEXT NOT NULL,
	json         BLOB NOT NULL,            -- the rendered AuditEvent
	prev_hash    BLOB NOT NULL,
	hash         BLOB NOT NULL
);
CREATE INDEX audit_events_time ON audit_events (at);
CREATE INDEX audit_events_client ON audit_events (client_id, seq);
CREATE INDEX audit_events_patient ON audit_events (patient_id, seq);
CREATE INDEX audit_events_subtype ON audit_events (subtype, seq);
CREATE INDEX audit_events_endpoint ON audit_events (endpoint_id, seq);

-- The entity keys each record is found by (audit.Record.Keys): a search
-- index, not covered by the chain.
CREATE TABLE audit_entities (
	ref TEXT NOT NULL,
	seq INTEGER NOT NULL,
	PRIMARY KEY (ref, seq)
) WITHOUT ROWID;
CREATE INDEX audit_entities_seq ON audit_entities (seq);

-- The end of the chain (one row): the last seq and its hash.
CREATE TABLE audit_head (
	id   INTEGER PRIMARY KEY CHECK (id = 1),
	seq  INTEGER NOT NULL,
	hash BLOB NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, zeroblob(32));

CREATE TABLE auth_clients (
	id      TEXT PRIMARY KEY,
	role    TEXT NOT NULL DEFAULT '',
	json    TEXT NOT NULL,
	created INTEGER NOT NULL,
	updated INTEGER NOT NULL
);

-- Token ids (jti) used by each client, until they expire.
CREATE TABLE auth_jti (
	client_id TEXT NOT NULL,
	jti       TEXT NOT NULL,
	expires   INTEGER NOT NULL,
	PRIMARY KEY (client_id, jti)
);
CREATE INDEX auth_jti_expires ON auth_jti (expires);

CREATE TABLE auth_signing_keys (
	kid     TEXT PRIMARY KEY,
	alg     TEXT NOT NULL,
	private BLOB NOT NULL, -- encrypted by the caller
	public  BLOB,
	created INTEGER NOT NULL,
	retired INTEGER NOT NULL DEFAULT 0
);
