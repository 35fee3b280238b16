-- The queries forge's stores ran on postgres while 00009 was the newest migration.
-- TestUpgrade runs them on the newest schema once a later migration lands.
-- Added to by: go test ./internal/sqldb -update-queries (see README.md here).
DELETE FROM delivery_claims WHERE owner = ? AND repo IN (?)
DELETE FROM lease_state WHERE id = 1
DELETE FROM log_search WHERE job_id = ? AND number <= ?
DELETE FROM logs WHERE job_id = ? AND number <= ?
DELETE FROM outbox WHERE version = delivered AND updated < ?
DELETE FROM tokens WHERE id = ?
INSERT INTO builds (repo_id, number, action, status, event, branch, pull_request, sha, hook, delivery_id, error, created, started, finished, version, runner, heartbeat) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?) RETURNING id
INSERT INTO deliveries (id, event, action, payload, received, processed, result) VALUES (?, ?, ?, ?, ?, ?, ?)
INSERT INTO deliveries (id, event, action, payload, received, processed, result) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING
INSERT INTO delivery_claims (repo, owner, expires) VALUES (?, ?, ?) ON CONFLICT (repo) DO UPDATE SET owner = excluded.owner, expires = excluded.expires WHERE delivery_claims.owner = excluded.owner OR delivery_claims.expires < ? OR (? <> '' AND substr(delivery_claims.owner, 1, length(?)) = ?) RETURNING repo
INSERT INTO jobs (build_id, name, status, attempt, exit_code, error, needs, started, finished, backend, handle) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id, name
INSERT INTO lease_pools (name, pool, deleted, updated) VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET pool = excluded.pool, deleted = excluded.deleted, updated = excluded.updated
INSERT INTO lease_state (id, state, saved) VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE SET state = excluded.state, saved = excluded.saved
INSERT INTO log_indexed (job_id, lines, indexed) VALUES (?, 0, ?) ON CONFLICT (job_id) DO UPDATE SET lines = 0, indexed = excluded.indexed
INSERT INTO log_indexed (job_id, lines, indexed) VALUES (?, ?, ?) ON CONFLICT (job_id) DO UPDATE SET lines = excluded.lines, indexed = excluded.indexed
INSERT INTO log_search (job_id, number, words) SELECT job_id, number, to_tsvector('simple', regexp_replace(text, '[^[:alnum:]]+', ' ', 'g')) FROM logs WHERE job_id = ? AND number > ? AND number <= ?
INSERT INTO logs (job_id, number, time, stream, text) VALUES (?, ?, ?, ?, ?)
INSERT INTO outbox (item_key, kind, rank, weak, payload, version, delivered, created, updated, owner, lease_until) VALUES (?, ?, ?, ?, ?, 1, 0, ?, ?, ?, ?)
INSERT INTO repos (owner, name, clone_url, default_branch, private, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (owner, name) DO UPDATE SET clone_url = excluded.clone_url, default_branch = excluded.default_branch, private = excluded.private, updated = excluded.updated RETURNING id, created, updated
INSERT INTO steps (job_id, idx, name, status, exit_code, started, finished, first_line, last_line) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
INSERT INTO steps (job_id, idx, name, status, exit_code, started, finished, first_line, last_line) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, idx) DO UPDATE SET name = excluded.name, status = excluded.status, exit_code = excluded.exit_code, started = excluded.started, finished = excluded.finished, first_line = excluded.first_line, last_line = excluded.last_line
INSERT INTO tokens (name, hash, admin, created) VALUES (?, ?, ?, ?) RETURNING id
SELECT 1 FROM builds WHERE delivery_id = ? AND action = ? AND delivery_id <> ''
SELECT 1 FROM builds WHERE id = ?
SELECT 1 FROM jobs WHERE id = ?
SELECT 1 FROM jobs WHERE id = ? FOR KEY SHARE
SELECT COALESCE(max(number), 0) FROM logs WHERE job_id = ?
SELECT b.number, j.id, j.name, l.number, l.text FROM log_search s JOIN jobs j ON j.id = s.job_id JOIN builds b ON b.id = j.build_id JOIN logs l ON l.job_id = s.job_id AND l.number = s.number WHERE s.words @@ phraseto_tsquery('simple', regexp_replace(?, '[^[:alnum:]]+', ' ', 'g')) AND b.repo_id = ? ORDER BY s.job_id DESC, s.number DESC LIMIT ?
SELECT id, build_id, name, status, attempt, exit_code, error, needs, started, finished, backend, handle FROM jobs WHERE build_id = ? ORDER BY id
SELECT id, build_id, name, status, attempt, exit_code, error, needs, started, finished, backend, handle FROM jobs WHERE id = ?
SELECT id, build_id, name, status, attempt, exit_code, error, needs, started, finished, backend, handle FROM jobs WHERE id > ? AND status IN (?) ORDER BY id LIMIT ?
SELECT id, event, action, payload, received, processed, result FROM deliveries WHERE id = ?
SELECT id, event, action, payload, received, processed, result FROM deliveries WHERE processed IS NULL ORDER BY received, id LIMIT ?
SELECT id, name, hash, admin, created FROM tokens ORDER BY id
SELECT id, name, hash, admin, created FROM tokens WHERE hash = ?
SELECT id, owner, name, clone_url, default_branch, private, created, updated FROM repos ORDER BY owner, name
SELECT id, owner, name, clone_url, default_branch, private, created, updated FROM repos WHERE id = ?
SELECT id, owner, name, clone_url, default_branch, private, created, updated FROM repos WHERE owner = ? AND name = ?
SELECT id, repo_id, number, action, status, hook, delivery_id, error, created, started, finished, version, runner, heartbeat FROM builds ORDER BY id ASC LIMIT ?
SELECT id, repo_id, number, action, status, hook, delivery_id, error, created, started, finished, version, runner, heartbeat FROM builds ORDER BY id DESC LIMIT ?
SELECT id, repo_id, number, action, status, hook, delivery_id, error, created, started, finished, version, runner, heartbeat FROM builds WHERE action = ? AND delivery_id = ? AND delivery_id <> '' ORDER BY id DESC LIMIT ?
SELECT id, repo_id, number, action, status, hook, delivery_id, error, created, started, finished, version, runner, heartbeat FROM builds WHERE action = ? ORDER BY id DESC LIMIT ?
SELECT id, repo_id, number, action, status, hook, delivery_id, error, created, started, finished, version, runner, heartbeat FROM builds WHERE branch = ? ORDER BY id DESC LIMIT ?
SELECT id, repo_id, number, action, status, hook, delivery_id, error, created, started, finished, version, runner, heartbeat FROM builds WHERE delivery_id = ? AND delivery_id <> '' ORDER BY id DESC LIMIT ?
SELECT id, repo_id, number, action, status, hook, delivery_id, error, created, started, finished, version, runner, heartbeat FROM builds WHERE id < ? AND id > ? ORDER BY id DESC LIMIT ?
SELECT id, repo_id, number, action, status, hook, delivery_id, error, created, started, finished, version, runner, heartbeat FROM builds WHERE id < ? ORDER BY id DESC LIMIT ?
SELECT id, repo_id, number, action, status, hook, delivery_id, error, created, started, finished, version, runner, heartbeat FROM builds WHERE id = ?
SELECT id, repo_id, number, action, status, hook, delivery_id, error, created, started, finished, version, runner, heartbeat FROM builds WHERE id > ? ORDER BY id ASC LIMIT ?
SELECT id, repo_id, number, action, status, hook, delivery_id, error, created, started, finished, version, runner, heartbeat FROM builds WHERE pull_request = ? ORDER BY id DESC LIMIT ?
SELECT id, repo_id, number, action, status, hook, delivery_id, error, created, started, finished, version, runner, heartbeat FROM builds WHERE repo_id = ? AND branch = ? ORDER BY id DESC LIMIT ?
SELECT id, repo_id, number, action, status, hook, delivery_id, error, created, started, finished, version, runner, heartbeat FROM builds WHERE repo_id = ? AND number = ?
SELECT id, repo_id, number, action, status, hook, delivery_id, error, created, started, finished, version, runner, heartbeat FROM builds WHERE repo_id = ? ORDER BY id ASC LIMIT ?
SELECT id, repo_id, number, action, status, hook, delivery_id, error, created, started, finished, version, runner, heartbeat FROM builds WHERE repo_id = ? ORDER BY id DESC LIMIT ?
SELECT id, repo_id, number, action, status, hook, delivery_id, error, created, started, finished, version, runner, heartbeat FROM builds WHERE sha = ? ORDER BY id DESC LIMIT ?
SELECT id, repo_id, number, action, status, hook, delivery_id, error, created, started, finished, version, runner, heartbeat FROM builds WHERE status = ? AND status IN (?) ORDER BY id DESC LIMIT ?
SELECT id, repo_id, number, action, status, hook, delivery_id, error, created, started, finished, version, runner, heartbeat FROM builds WHERE status = ? ORDER BY id DESC LIMIT ?
SELECT id, repo_id, number, action, status, hook, delivery_id, error, created, started, finished, version, runner, heartbeat FROM builds WHERE status IN (?) ORDER BY id ASC LIMIT ?
SELECT item_key, kind, rank, weak, payload, ref, progress, version, delivered, attempts, next_at, error, created, updated FROM outbox WHERE item_key = ?
SELECT item_key, kind, rank, weak, payload, ref, progress, version, delivered, attempts, next_at, error, created, updated FROM outbox WHERE version > delivered AND (next_at IS NULL OR next_at <= ?) AND (lease_until IS NULL OR lease_until <= ? OR owner = '' OR (? = 1 AND owner = ?)) ORDER BY created, item_key LIMIT ? FOR UPDATE SKIP LOCKED
SELECT j.id FROM builds b JOIN jobs j ON j.build_id = b.id WHERE b.status IN ('success', 'failure', 'error', 'skipped', 'canceled') AND (b.finished < ?) AND EXISTS (SELECT 1 FROM logs l WHERE l.job_id = j.id)
SELECT j.id FROM builds b JOIN jobs j ON j.build_id = b.id WHERE b.status IN ('success', 'failure', 'error', 'skipped', 'canceled') AND (b.number < (SELECT c.number FROM builds c WHERE c.repo_id = b.repo_id ORDER BY c.number DESC LIMIT 1 OFFSET ?)) AND EXISTS (SELECT 1 FROM logs l WHERE l.job_id = j.id)
SELECT j.id, COALESCE(x.lines, 0) FROM jobs j LEFT JOIN log_indexed x ON x.job_id = j.id WHERE j.status IN ('success', 'failure', 'error', 'skipped', 'canceled') AND (x.job_id IS NULL OR x.indexed = 0) ORDER BY j.id DESC LIMIT 1
SELECT job_id, idx, name, status, exit_code, started, finished, first_line, last_line FROM steps WHERE job_id IN (?) ORDER BY job_id, idx
SELECT max(number) FROM logs WHERE job_id = ?
SELECT name, pool, deleted FROM lease_pools ORDER BY name
SELECT number FROM logs WHERE job_id = ? AND number > ? ORDER BY number LIMIT 1 OFFSET ?
SELECT number FROM logs WHERE job_id = ? AND number >= ? AND text ILIKE ? ESCAPE '\' ORDER BY number
SELECT number FROM logs WHERE job_id = ? ORDER BY number LIMIT 1 OFFSET ?
SELECT number, time, stream, text FROM logs WHERE job_id = ? AND number >= ? AND number < ? ORDER BY number
SELECT number, time, stream, text FROM logs WHERE job_id = ? AND number >= ? ORDER BY number
SELECT state FROM lease_state WHERE id = 1
SELECT version FROM builds WHERE id = ?
UPDATE builds SET heartbeat = ? WHERE runner = ? AND status = ? AND (heartbeat IS NULL OR heartbeat < ?) AND id IN (?)
UPDATE builds SET status = ?, error = ?, started = ?, finished = ?, runner = ?, heartbeat = ?, version = version + 1 WHERE id = ? AND version = ?
UPDATE deliveries SET processed = ?, result = ? WHERE id = ?
UPDATE delivery_claims SET expires = ? WHERE owner = ? AND repo IN (?)
UPDATE jobs SET status = ?, attempt = ?, exit_code = ?, error = ?, started = ?, finished = ?, backend = ?, handle = ? WHERE id = ?
UPDATE outbox SET kind = ?, rank = ?, weak = ?, payload = ?, version = ?, attempts = 0, next_at = NULL, error = '', progress = 0, updated = ?, owner = ?, lease_until = ? WHERE item_key = ?
UPDATE outbox SET owner = ?, lease_until = ? WHERE item_key = ?
UPDATE outbox SET ref = ?, progress = ?, attempts = CASE WHEN version = ? THEN attempts + 1 ELSE attempts END, next_at = CASE WHEN version = ? THEN ? ELSE next_at END, error = CASE WHEN version = ? THEN ? ELSE error END, owner = CASE WHEN version = ? THEN '' ELSE owner END, lease_until = CASE WHEN version = ? THEN NULL ELSE lease_until END, updated = ? WHERE item_key = ?
UPDATE outbox SET ref = ?, progress = ?, delivered = CASE WHEN version = ? THEN version ELSE delivered END, error = CASE WHEN version = ? THEN ? ELSE error END, owner = CASE WHEN version = ? THEN '' ELSE owner END, lease_until = CASE WHEN version = ? THEN NULL ELSE lease_until END, updated = ? WHERE item_key = ?
UPDATE repos SET last_number = last_number + 1 WHERE id = ? RETURNING last_number
UPDATE repos SET last_number = last_number WHERE id = ?
