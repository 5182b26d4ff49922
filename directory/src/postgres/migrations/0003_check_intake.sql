-- Checks answered over the network that append to the logs and change nothing else:
-- durable here before their answer, without waiting for the audit log's lock, and
-- moved into the audit log and the service uses (then deleted) by whichever process
-- holds that lock next, a few milliseconds later.
CREATE TABLE check_intake (
    seq     bigserial PRIMARY KEY,
    -- The person whose service use the row records, if the check named anyone.
    pid     bigint,
    -- (audit entry, service use), postcard, as the embedded store's intake files hold.
    entries bytea     NOT NULL
);
