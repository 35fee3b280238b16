-- The first forge schema. Times are microseconds since the Unix epoch (UTC);
-- NULL means "not yet". Additive changes only: see ../README.md.

-- +goose Up
CREATE TABLE repos (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    owner          TEXT    NOT NULL,
    name           TEXT    NOT NULL,
    clone_url      TEXT    NOT NULL DEFAULT '',
    default_branch TEXT    NOT NULL DEFAULT '',
    private        INTEGER NOT NULL DEFAULT 0,
    -- last_number is the number of the repository's newest build; CreateBuild
    -- increments it in its transaction, so numbers are never shared.
    last_number    INTEGER NOT NULL DEFAULT 0,
    created        INTEGER NOT NULL,
    updated        INTEGER NOT NULL,
    UNIQUE (owner, name)
);

CREATE TABLE deliveries (
    id        TEXT    PRIMARY KEY,
    event     TEXT    NOT NULL,
    action    TEXT    NOT NULL DEFAULT '',
    payload   BLOB    NOT NULL,
    received  INTEGER NOT NULL,
    processed INTEGER,
    result    TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX deliveries_pending ON deliveries (received, id) WHERE processed IS NULL;

CREATE TABLE builds (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    repo_id      INTEGER NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    number       INTEGER NOT NULL,
    action       TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    -- event, branch, pull_request and sha copy fields of hook for filtering.
    event        TEXT    NOT NULL DEFAULT '',
    branch       TEXT    NOT NULL DEFAULT '',
    pull_request INTEGER NOT NULL DEFAULT 0,
    sha          TEXT    NOT NULL DEFAULT '',
    hook         TEXT    NOT NULL,
    delivery_id  TEXT    NOT NULL DEFAULT '',
    error        TEXT    NOT NULL DEFAULT '',
    created      INTEGER NOT NULL,
    started      INTEGER,
    finished     INTEGER,
    version      INTEGER NOT NULL,
    UNIQUE (repo_id, number)
);
-- A webhook delivery creates at most one build per action.
CREATE UNIQUE INDEX builds_delivery ON builds (delivery_id, action) WHERE delivery_id <> '';
CREATE INDEX builds_repo ON builds (repo_id, id);
CREATE INDEX builds_status ON builds (status, id);

CREATE TABLE jobs (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    build_id  INTEGER NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    name      TEXT    NOT NULL,
    status    TEXT    NOT NULL,
    attempt   INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER NOT NULL DEFAULT 0,
    error     TEXT    NOT NULL DEFAULT '',
    needs     TEXT    NOT NULL DEFAULT '[]',
    started   INTEGER,
    finished  INTEGER,
    backend   TEXT    NOT NULL DEFAULT '',
    handle    BLOB,
    UNIQUE (build_id, name)
);
CREATE INDEX jobs_status ON jobs (status, id);

CREATE TABLE steps (
    job_id    INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx       INTEGER NOT NULL,
    name      TEXT    NOT NULL,
    status    TEXT    NOT NULL,
    exit_code INTEGER NOT NULL DEFAULT 0,
    started   INTEGER,
    finished  INTEGER,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;

-- Log lines are clustered by (job_id, number) so a range of a
-- million-line log is one index walk.
CREATE TABLE logs (
    job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    time   INTEGER NOT NULL,
    stream TEXT    NOT NULL DEFAULT '',
    text   TEXT    NOT NULL,
    PRIMARY KEY (job_id, number)
) WITHOUT ROWID;

CREATE TABLE tokens (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    name    TEXT    NOT NULL,
    hash    TEXT    NOT NULL UNIQUE,
    admin   INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL
);

-- +goose Down
DROP TABLE tokens;
DROP TABLE logs;
DROP TABLE steps;
DROP TABLE jobs;
DROP TABLE builds;
DROP TABLE deliveries;
DROP TABLE repos;
