-- The outbox: messages for outside services (GitHub commit statuses, check
-- runs, comments, pull requests, deployments), kept until delivered so that
-- a restart or a GitHub outage loses none. One row per thing reported (a
-- commit's status context, a build's check run): a newer message replaces
-- the row's payload and version, an outdated one is dropped. A row is
-- delivered when delivered = version; owner and lease_until say which
-- server delivers it. Additive only: see ../README.md.

-- +goose Up
CREATE TABLE outbox (
    item_key    TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    rank        INTEGER NOT NULL,
    weak        INTEGER NOT NULL DEFAULT 0,
    payload     TEXT NOT NULL,
    ref         TEXT NOT NULL DEFAULT '',
    progress    INTEGER NOT NULL DEFAULT 0,
    version     INTEGER NOT NULL DEFAULT 1,
    delivered   INTEGER NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     INTEGER,
    error       TEXT NOT NULL DEFAULT '',
    owner       TEXT NOT NULL DEFAULT '',
    lease_until INTEGER,
    created     INTEGER NOT NULL,
    updated     INTEGER NOT NULL
);
CREATE INDEX outbox_pending ON outbox (created) WHERE version > delivered;
CREATE INDEX outbox_updated ON outbox (updated) WHERE version = delivered;

-- +goose Down
DROP TABLE outbox;
