-- Lease pools as data: pools and resources created, changed, disabled or
-- deleted through the REST API, kept so that they survive a restart. One
-- row per pool: its definition as JSON (forge.Pool), or a tombstone
-- (deleted = 1, pool '') so that a pool deleted through the API stays
-- deleted even when the configuration file still declares it.
-- lease_state holds the lease sessions a gracefully stopped server left
-- for the next one to resume (one row, taken at start). Additive only: see
-- ../README.md.

-- +goose Up
CREATE TABLE lease_pools (
    name    TEXT PRIMARY KEY,
    pool    TEXT NOT NULL DEFAULT '',
    deleted INTEGER NOT NULL DEFAULT 0,
    updated INTEGER NOT NULL
);
CREATE TABLE lease_state (
    id    INTEGER PRIMARY KEY,
    state TEXT NOT NULL,
    saved INTEGER NOT NULL
);

-- +goose Down
DROP TABLE lease_state;
DROP TABLE lease_pools;
