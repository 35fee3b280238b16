-- Search across the logs of a repository's builds: a full-text index of
-- log lines, filled off the build's hot path by the log indexer once a job
-- has finished (DB.IndexLogs), and the jobs it has indexed; and what
-- finished jobs' test and coverage reports said, for badges.
--
-- log_search is a contentless FTS5 table with the trigram tokenizer: a
-- query matches any substring of 3 characters or more, case-insensitively,
-- and the text itself stays only in logs. A row's rowid is
-- job_id * 2^32 + number, so the newest jobs' lines come first in rowid
-- order and a job's rows are one rowid range. Additive only: see
-- ../README.md.

-- +goose Up
CREATE VIRTUAL TABLE log_search USING fts5 (
    text,
    content = '',
    contentless_delete = 1,
    tokenize = 'trigram'
);

CREATE TABLE log_indexed (
    job_id  INTEGER PRIMARY KEY,
    lines   INTEGER NOT NULL,
    indexed INTEGER NOT NULL
);

-- What finished jobs' reports said, for the tests and coverage badges
-- (DB.SaveJobReport): test counts when has_tests = 1, coverage in percent
-- when not NULL.
CREATE TABLE job_reports (
    job_id        INTEGER PRIMARY KEY,
    has_tests     INTEGER NOT NULL DEFAULT 0,
    tests_total   INTEGER NOT NULL DEFAULT 0,
    tests_failed  INTEGER NOT NULL DEFAULT 0,
    tests_skipped INTEGER NOT NULL DEFAULT 0,
    coverage      REAL,
    updated       INTEGER NOT NULL
);

-- +goose Down
DROP TABLE job_reports;
DROP TABLE log_indexed;
DROP TABLE log_search;
