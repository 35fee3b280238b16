-- Where each step's output is in its job's log: the numbers of its first
-- and last lines, recorded by the runner when the step starts and ends, so
-- the log page folds steps by line rather than guessing from timestamps.
-- 0 means not known (the step has not started or ended, or was recorded
-- before this migration). Additive only: see ../README.md.

-- +goose Up
ALTER TABLE steps ADD COLUMN first_line INTEGER NOT NULL DEFAULT 0;
ALTER TABLE steps ADD COLUMN last_line INTEGER NOT NULL DEFAULT 0;

-- +goose Down
ALTER TABLE steps DROP COLUMN last_line;
ALTER TABLE steps DROP COLUMN first_line;
