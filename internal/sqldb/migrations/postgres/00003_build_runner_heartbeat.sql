-- Which server runs a build, and when it last said so: with several
-- servers sharing one database, a running build is ended as "server
-- restarted" only when its server stopped heartbeating, never while a live
-- replica runs it. Rows from before this migration have no heartbeat and
-- count as stale. Additive only: see ../README.md.

-- +goose Up
ALTER TABLE builds ADD COLUMN runner TEXT NOT NULL DEFAULT '';
ALTER TABLE builds ADD COLUMN heartbeat BIGINT;

-- +goose Down
ALTER TABLE builds DROP COLUMN heartbeat;
ALTER TABLE builds DROP COLUMN runner;
