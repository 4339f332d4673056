-- kapfhir schema, version 2: EHR endpoints, the sync queue (outbox) and the
-- sync log. Times are Unix microseconds (UTC); 0 is "none".

CREATE TABLE sync_endpoints (
	id         TEXT PRIMARY KEY,
	json       TEXT NOT NULL, -- endpoint.Endpoint, secrets included
	source     TEXT NOT NULL,
	auth_state TEXT NOT NULL DEFAULT '',
	last_error TEXT NOT NULL DEFAULT '',
	created    INTEGER NOT NULL,
	updated    INTEGER NOT NULL
);

CREATE TABLE sync_items (
	id            INTEGER PRIMARY KEY AUTOINCREMENT,
	endpoint_id   TEXT NOT NULL REFERENCES sync_endpoints (id) ON DELETE CASCADE,
	resource_type TEXT NOT NULL,
	resource_id   TEXT NOT NULL,
	patient_id    TEXT NOT NULL DEFAULT '',
	seq           INTEGER NOT NULL,
	state         TEXT NOT NULL,
	want_version  INTEGER NOT NULL,
	sent_version  INTEGER NOT NULL DEFAULT 0,
	sent_hash     BLOB,
	ehr_id        TEXT NOT NULL DEFAULT '',
	ehr_version   TEXT NOT NULL DEFAULT '',
	attempts      INTEGER NOT NULL DEFAULT 0,
	next_attempt  INTEGER NOT NULL,
	lease_owner   TEXT NOT NULL DEFAULT '',
	lease_until   INTEGER NOT NULL DEFAULT 0,
	last_status   INTEGER NOT NULL DEFAULT 0,
	last_error    TEXT NOT NULL DEFAULT '',
	outcome       BLOB,
	updated       INTEGER NOT NULL,
	UNIQUE (endpoint_id, resource_type, resource_id)
);
CREATE INDEX sync_items_runnable ON sync_items (endpoint_id, state, next_attempt);
CREATE INDEX sync_items_patient ON sync_items (endpoint_id, patient_id, state);
CREATE INDEX sync_items_state ON sync_items (state, id);

-- The last seq handed out (one row); the one writer connection serialises it.
CREATE TABLE sync_seq (
	id    INTEGER PRIMARY KEY CHECK (id = 1),
	value INTEGER NOT NULL
);
INSERT INTO sync_seq (id, value) VALUES (1, 0);

CREATE TABLE sync_log (
	id            INTEGER PRIMARY KEY AUTOINCREMENT,
	at            INTEGER NOT NULL,
	endpoint_id   TEXT NOT NULL,
	item_id       INTEGER NOT NULL DEFAULT 0,
	resource_type TEXT NOT NULL DEFAULT '',
	resource_id   TEXT NOT NULL DEFAULT '',
	version       INTEGER NOT NULL DEFAULT 0,
	action        TEXT NOT NULL,
	status        INTEGER NOT NULL DEFAULT 0,
	ehr_id        TEXT NOT NULL DEFAULT '',
	ehr_version   TEXT NOT NULL DEFAULT '',
	request       TEXT NOT NULL DEFAULT '',
	detail        TEXT NOT NULL DEFAULT '',
	actor         TEXT NOT NULL DEFAULT ''
);
CREATE INDEX sync_log_endpoint ON sync_log (endpoint_id, id);
CREATE INDEX sync_log_action ON sync_log (endpoint_id, action, id);
