-- The exchange authority's patients (docs/roles.md): the medical IDs the registry's
-- notices named, the reported death, whether the ID was retired. Never a My Number,
-- name or address.
CREATE TABLE subjects (
    pid  bigint PRIMARY KEY,
    body bytea  NOT NULL
);

-- A registry's notices to the exchange authority not yet applied there, by number.
CREATE TABLE registry_outbox (
    seq    bigint PRIMARY KEY,
    notice bytea  NOT NULL
);
