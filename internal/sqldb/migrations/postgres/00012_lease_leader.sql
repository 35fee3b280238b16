-- The lease leader of servers sharing one database (issue 12 item 3): one
-- row (id 1), written by the server that holds the lease leader's advisory
-- lock. epoch counts the leaders: each new one adds 1 before it loads the
-- lease state, and every lease state write of a leader checks, in its own
-- transaction, that the epoch is still its own (the fence: a deposed
-- leader's late write changes nothing). url is where the other replicas
-- forward lease connections and calls ('' while the new leader loads its
-- state), token what they present to it. Additive only: see ../README.md.

-- +goose Up
CREATE TABLE lease_leader (
    id       INTEGER PRIMARY KEY,
    epoch    BIGINT NOT NULL DEFAULT 0,
    url      TEXT NOT NULL DEFAULT '',
    token    TEXT NOT NULL DEFAULT '',
    instance TEXT NOT NULL DEFAULT '',
    elected  BIGINT NOT NULL DEFAULT 0,
    renewed  BIGINT NOT NULL DEFAULT 0
);

-- +goose Down
DROP TABLE lease_leader;
