-- Search across the logs of a repository's builds: a full-text index of
-- log lines, filled off the build's hot path by the log indexer once a job
-- has finished (DB.IndexLogs), and the jobs it has indexed; and what
-- finished jobs' test and coverage reports said, for badges.
--
-- log_search holds each line's words as a tsvector of the 'simple'
-- configuration (no stemming, no stop words: logs are not prose) under a
-- GIN index; the text itself stays only in logs. It needs no extension.
-- Additive only: see ../README.md.

-- +goose Up
CREATE TABLE log_search (
    job_id BIGINT   NOT NULL,
    number BIGINT   NOT NULL,
    words  tsvector NOT NULL,
    PRIMARY KEY (job_id, number)
);
CREATE INDEX log_search_words ON log_search USING gin (words);

CREATE TABLE log_indexed (
    job_id  BIGINT PRIMARY KEY,
    lines   BIGINT NOT NULL,
    indexed BIGINT NOT NULL
);

-- What finished jobs' reports said, for the tests and coverage badges
-- (DB.SaveJobReport): test counts when has_tests = 1, coverage in percent
-- when not NULL.
CREATE TABLE job_reports (
    job_id        BIGINT PRIMARY KEY,
    has_tests     INTEGER NOT NULL DEFAULT 0,
    tests_total   BIGINT NOT NULL DEFAULT 0,
    tests_failed  BIGINT NOT NULL DEFAULT 0,
    tests_skipped BIGINT NOT NULL DEFAULT 0,
    coverage      DOUBLE PRECISION,
    updated       BIGINT NOT NULL
);

-- +goose Down
DROP TABLE job_reports;
DROP TABLE log_indexed;
DROP TABLE log_search;
