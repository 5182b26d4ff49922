-- The audit log's checkpoints as witnesses cosigned them: the signed note (the log's
-- signature and each witness's cosignature), by the size it covers.
CREATE TABLE witnessed_checkpoints (
    size bigint PRIMARY KEY,
    note text   NOT NULL
);
