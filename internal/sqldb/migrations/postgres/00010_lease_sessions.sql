-- Lease sessions kept as they change (issue 12 item 2): one row per open
-- resumable session, its state (secret hash, grace, leases, queued requests
-- with their place in the global arrival order) as JSON, upserted by the
-- lease manager's journal in group-commit transactions and deleted when the
-- session ends. A server killed with kill -9 restarts from these rows.
-- Additive only: see ../README.md.

-- +goose Up
CREATE TABLE lease_sessions (
    id      TEXT PRIMARY KEY,
    state   TEXT NOT NULL,
    updated BIGINT NOT NULL
);

-- +goose Down
DROP TABLE lease_sessions;
