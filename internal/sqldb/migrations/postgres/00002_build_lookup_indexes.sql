-- Indexes for the lookups the server makes per repository: the newest
-- builds of a branch (badges, supersede on push) and of a pull request
-- (supersede on synchronize). Additive only: see ../README.md.

-- +goose Up
CREATE INDEX builds_repo_branch ON builds (repo_id, branch, id);
CREATE INDEX builds_repo_pull_request ON builds (repo_id, pull_request, id);

-- +goose Down
DROP INDEX builds_repo_pull_request;
DROP INDEX builds_repo_branch;
