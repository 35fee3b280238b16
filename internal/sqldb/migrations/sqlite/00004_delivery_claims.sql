-- Which server processes a repository's pending deliveries: with several
-- servers sharing one database, one at a time claims a repository's
-- deliveries (repo is owner/name, or '' for deliveries that name none),
-- keeps the claim alive while it works and gives it up when done; a claim
-- whose expiry passed was left by a server that died, and any server takes
-- it over. Additive only: see ../README.md.

-- +goose Up
CREATE TABLE delivery_claims (
    repo    TEXT   PRIMARY KEY,
    owner   TEXT   NOT NULL,
    expires BIGINT NOT NULL
);

-- +goose Down
DROP TABLE delivery_claims;
