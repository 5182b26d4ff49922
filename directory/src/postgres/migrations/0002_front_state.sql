-- The HTTPS front's state in the values the embedded store keeps too (seconds or
-- milliseconds since the epoch, records as the front writes them), so the rules that
-- read them are the same on both backends. The tables of 0001 they replace were
-- never written.
DROP TABLE portal_sessions;
DROP TABLE sign_in_failures;
DROP TABLE upload_jobs;

-- Signed-in sessions, by the SHA-256 of their token (the token itself is only in the
-- person's cookie), so a restart or a second process signs no one out.
CREATE TABLE portal_sessions (
    token_hash bytea  PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    session    bytea  NOT NULL,
    -- Seconds since the epoch; the session ends then unless it is used again.
    expires_at bigint NOT NULL
);
CREATE INDEX portal_sessions_by_expiry ON portal_sessions (expires_at);

-- Failed sign-ins by address ("a:…") or account ("m:…"): read, decided on and written
-- back under one advisory lock by whichever process the try reached.
CREATE TABLE sign_in_tries (
    subject       text    PRIMARY KEY,
    failures      integer NOT NULL,
    since_ms      bigint  NOT NULL,
    not_before_ms bigint  NOT NULL
);
CREATE INDEX sign_in_tries_by_age ON sign_in_tries (since_ms);

-- Insurers' uploads and their outcome, which any process can report.
CREATE TABLE upload_jobs (
    id         text   PRIMARY KEY,
    insurer    text   NOT NULL,
    state      text   NOT NULL CHECK (state IN ('running', 'done', 'failed')),
    -- The job as the insurer is shown it (JSON).
    job        bytea  NOT NULL,
    updated_at bigint NOT NULL
);

-- The agency CA's latest revocation list, as `ca revoke` wrote it where the CA's key
-- is: every `serve` on this database installs a newer one within seconds, so a
-- certificate revoked at one front is refused at all of them.
DROP TABLE ca_certificates;
CREATE TABLE ca_crl (
    id     integer PRIMARY KEY CHECK (id = 1),
    number bigint  NOT NULL,
    pem    text    NOT NULL
);
