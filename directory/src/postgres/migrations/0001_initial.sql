-- The directory's store on PostgreSQL, version 1 (docs/storage.md).
--
-- Values the domain code reads and writes whole are its postcard encodings (bytea),
-- exactly as the redb backend stores them; the columns beside them are what a query
-- finds rows by. Everything about one person is keyed by `pid` first, the person's
-- number that never changes (a medical ID can be replaced): `pid` is the distribution
-- key when the tables are spread over nodes (Citus). Lookups by My Number, medical ID
-- or card are small tables keyed by that number, which name the pid.

CREATE TABLE settings (
    name  text PRIMARY KEY,
    value text NOT NULL
);

-- Counters: next pid, next case and notice numbers, membership serials.
CREATE TABLE counters (
    name  text PRIMARY KEY,
    value bigint NOT NULL
);

-- The registry.
CREATE TABLE persons (
    pid        bigint PRIMARY KEY,
    my_number  bigint NOT NULL,
    medical_id bigint NOT NULL,
    record     bytea  NOT NULL
);

-- My Number → pid; a replaced My Number stays as an alias of the same person.
CREATE TABLE my_numbers (
    my_number bigint PRIMARY KEY,
    pid       bigint NOT NULL
);

-- Every medical ID ever issued → its entry (current, changed, retired). Never deleted:
-- an ID is never issued twice.
CREATE TABLE medical_ids (
    medical_id bigint PRIMARY KEY,
    pid        bigint NOT NULL,
    entry      bytea  NOT NULL
);

-- Card key (insurer, symbol, number, branch) → the card's standing. Keys start with
-- the insurer number, so one range lists an insurer's people.
CREATE TABLE cards (
    card_key bytea  PRIMARY KEY,
    pid      bigint NOT NULL,
    standing bytea  NOT NULL
);

-- The linkage DB's service history: every check that named a person, in the order it
-- was recorded (seq) and by person.
CREATE SEQUENCE service_use_seq AS bigint;
CREATE TABLE service_uses (
    pid         bigint NOT NULL,
    seq         bigint NOT NULL,
    service_use bytea  NOT NULL,
    PRIMARY KEY (pid, seq)
);
CREATE INDEX service_uses_by_seq ON service_uses (seq);

-- (days since the common era of death, pid), for the retirement sweep.
CREATE TABLE deaths (
    died_day bigint NOT NULL,
    pid      bigint NOT NULL,
    PRIMARY KEY (died_day, pid)
);

-- Cases an operator resolves.
CREATE TABLE conflicts (
    id       bigint PRIMARY KEY,
    conflict bytea  NOT NULL
);
-- An open conflict's row, canonically encoded → its case, so a file ingested again
-- records each conflict once.
CREATE TABLE conflict_keys (
    row_key bytea  PRIMARY KEY,
    id      bigint NOT NULL
);
CREATE TABLE mismatches (
    id       bigint PRIMARY KEY,
    mismatch bytea  NOT NULL
);
CREATE TABLE mismatch_keys (
    card_and_id bytea  PRIMARY KEY,
    id          bigint NOT NULL
);
CREATE TABLE notices (
    id     bigint PRIMARY KEY,
    notice bytea  NOT NULL
);

-- The federation.
CREATE TABLE institutions (
    code   bigint PRIMARY KEY,
    record bytea  NOT NULL
);
CREATE TABLE institution_keys (
    public_key bytea  PRIMARY KEY CHECK (octet_length(public_key) = 32),
    code       bigint NOT NULL
);
-- A person's consent decisions, in the order they were made.
CREATE TABLE consents (
    pid    bigint NOT NULL,
    seq    bigint NOT NULL,
    record bytea  NOT NULL,
    PRIMARY KEY (pid, seq)
);
CREATE TABLE grants (
    grant_id   bytea  PRIMARY KEY CHECK (octet_length(grant_id) = 16),
    medical_id bigint NOT NULL,
    record     bytea  NOT NULL
);
-- Unmatched grants an operator closed, with who, why and when.
CREATE TABLE closed_grants (
    grant_id bytea PRIMARY KEY CHECK (octet_length(grant_id) = 16),
    record   bytea NOT NULL
);
-- Notification id → its audit log index: one delivered twice is logged once.
CREATE TABLE notification_ids (
    id   bytea  PRIMARY KEY CHECK (octet_length(id) = 16),
    leaf bigint NOT NULL
);
-- Requests sent with an EMR's idempotency key, and what they were answered.
CREATE TABLE idempotency (
    scope   bytea  PRIMARY KEY CHECK (octet_length(scope) = 32),
    kept_at bigint NOT NULL,
    kept    bytea  NOT NULL
);
CREATE INDEX idempotency_by_time ON idempotency (kept_at);

-- The audit log: one append-only RFC 6962 sequence. Only the holder of the appender's
-- advisory lock appends; leaves are never updated or deleted.
CREATE TABLE audit_leaves (
    leaf       bigint PRIMARY KEY CHECK (leaf >= 0),
    entry      bytea  NOT NULL,
    -- The patient the entry concerns, for the per-patient access log.
    medical_id bigint
);
CREATE INDEX audit_leaves_by_patient ON audit_leaves (medical_id, leaf)
    WHERE medical_id IS NOT NULL;
-- (last leaf, level) → the hash of the perfect subtree of 2^level leaves ending there.
CREATE TABLE audit_subtrees (
    last_leaf bigint  NOT NULL,
    level     integer NOT NULL CHECK (level BETWEEN 0 AND 63),
    hash      bytea   NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (last_leaf, level)
);
-- Tree size → the signed tree head.
CREATE TABLE audit_heads (
    size bigint PRIMARY KEY,
    head bytea  NOT NULL
);
REVOKE UPDATE, DELETE, TRUNCATE ON audit_leaves, audit_subtrees, audit_heads FROM PUBLIC;

-- My Portal.
CREATE TABLE portal_accounts (
    pid     bigint PRIMARY KEY,
    account bytea  NOT NULL
);
-- Signed-in sessions, by the SHA-256 of their token (the token itself is only in the
-- person's cookie), so a restart or a second process signs no one out.
CREATE TABLE portal_sessions (
    token_hash bytea       PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    pid        bigint      NOT NULL,
    medical_id bigint      NOT NULL,
    csrf       text        NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX portal_sessions_by_expiry ON portal_sessions (expires_at);
-- Failed sign-ins, by address or account, within a window.
CREATE TABLE sign_in_failures (
    subject       text        PRIMARY KEY,
    failures      integer     NOT NULL,
    window_start  timestamptz NOT NULL,
    blocked_until timestamptz
);

-- Insurers' uploads over HTTPS and their outcome, which any process can report.
CREATE TABLE upload_jobs (
    id         text        PRIMARY KEY,
    insurer    text        NOT NULL,
    state      text        NOT NULL CHECK (state IN ('running', 'done', 'failed')),
    summary    jsonb,
    error      text,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The agency CA's certificates and their revocations.
CREATE TABLE ca_certificates (
    serial     bytea       PRIMARY KEY,
    kind       text        NOT NULL,
    subject    text        NOT NULL,
    issued_at  timestamptz NOT NULL,
    not_after  timestamptz NOT NULL,
    revoked_at timestamptz,
    reason     text
);
