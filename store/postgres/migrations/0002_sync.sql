-- kapfhir schema, version 2: EHR endpoints, the sync queue (outbox) and the
-- sync log. Times are Unix microseconds (UTC); 0 is "none". Text compares
-- bytewise (COLLATE "C") so ordering matches SQLite.

CREATE TABLE sync_endpoints (
	id         TEXT COLLATE "C" PRIMARY KEY,
	json       JSONB NOT NULL, -- endpoint.Endpoint, secrets included
	source     TEXT COLLATE "C" NOT NULL,
	auth_state TEXT COLLATE "C" NOT NULL DEFAULT '',
	last_error TEXT NOT NULL DEFAULT '',
	created    BIGINT NOT NULL,
	updated    BIGINT NOT NULL
);

CREATE TABLE sync_items (
	id            BIGSERIAL PRIMARY KEY,
	endpoint_id   TEXT COLLATE "C" NOT NULL REFERENCES sync_endpoints (id) ON DELETE CASCADE,
	resource_type TEXT COLLATE "C" NOT NULL,
	resource_id   TEXT COLLATE "C" NOT NULL,
	patient_id    TEXT COLLATE "C" NOT NULL DEFAULT '',
	seq           BIGINT NOT NULL,
	state         TEXT COLLATE "C" NOT NULL,
	want_version  BIGINT NOT NULL,
	sent_version  BIGINT NOT NULL DEFAULT 0,
	sent_hash     BYTEA,
	ehr_id        TEXT COLLATE "C" NOT NULL DEFAULT '',
	ehr_version   TEXT COLLATE "C" NOT NULL DEFAULT '',
	attempts      INTEGER NOT NULL DEFAULT 0,
	next_attempt  BIGINT NOT NULL,
	lease_owner   TEXT COLLATE "C" NOT NULL DEFAULT '',
	lease_until   BIGINT NOT NULL DEFAULT 0,
	last_status   INTEGER NOT NULL DEFAULT 0,
	last_error    TEXT NOT NULL DEFAULT '',
	outcome       BYTEA,
	updated       BIGINT NOT NULL,
	UNIQUE (endpoint_id, resource_type, resource_id)
);
CREATE INDEX sync_items_runnable ON sync_items (endpoint_id, state, next_attempt);
CREATE INDEX sync_items_patient ON sync_items (endpoint_id, patient_id, state);
CREATE INDEX sync_items_state ON sync_items (state, id);

-- Orders enqueues across concurrent transactions.
CREATE SEQUENCE sync_seq AS BIGINT;

CREATE TABLE sync_log (
	id            BIGSERIAL PRIMARY KEY,
	at            BIGINT NOT NULL,
	endpoint_id   TEXT COLLATE "C" NOT NULL,
	item_id       BIGINT NOT NULL DEFAULT 0,
	resource_type TEXT COLLATE "C" NOT NULL DEFAULT '',
	resource_id   TEXT COLLATE "C" NOT NULL DEFAULT '',
	version       BIGINT NOT NULL DEFAULT 0,
	action        TEXT COLLATE "C" NOT NULL,
	status        INTEGER NOT NULL DEFAULT 0,
	ehr_id        TEXT COLLATE "C" NOT NULL DEFAULT '',
	ehr_version   TEXT COLLATE "C" NOT NULL DEFAULT '',
	request       TEXT NOT NULL DEFAULT '',
	detail        TEXT NOT NULL DEFAULT '',
	actor         TEXT COLLATE "C" NOT NULL DEFAULT ''
);
CREATE INDEX sync_log_endpoint ON sync_log (endpoint_id, id);
CREATE INDEX sync_log_action ON sync_log (endpoint_id, action, id);
