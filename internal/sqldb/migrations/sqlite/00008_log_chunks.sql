-- Log lines are stored in chunks: one row holds a run of consecutive lines
-- of a job (up to about a thousand, or 64 KiB), encoded in data, so that
-- storing a million-line log is a thousand row writes rather than a
-- million, reading any range is one index seek plus decoding, and an
-- in-log search scans a job's chunks (see ../../logchunk.go for the
-- encoding). first_line and last_line are the numbers of the chunk's
-- first and last line; a job's chunks never overlap. The last chunk of a
-- job is extended by later appends until it is full.
--
-- The lines already in logs are copied into chunks here, in a text form
-- the store reads as well as its own (a 'T' followed by, for each line,
-- "NUMBER TIME STREAMBYTES TEXTBYTES:" then the stream and the text).
-- logs keeps them (a migrate down gives them back) but is no longer
-- written or read, except that pruning deletes a pruned job's rows there.
--
-- forge:breaking an older forge reads and writes log lines in logs, one row a line, and would not see the lines stored in log_chunks from here on

-- +goose Up
CREATE TABLE log_chunks (
    job_id     INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    first_line INTEGER NOT NULL,
    last_line  INTEGER NOT NULL,
    line_count INTEGER NOT NULL,
    data       BLOB    NOT NULL,
    PRIMARY KEY (job_id, first_line)
);

INSERT INTO log_chunks (job_id, first_line, last_line, line_count, data)
SELECT job_id, min(number), max(number), count(*),
       CAST('T' || group_concat(number || ' ' || time || ' ' || length(CAST(stream AS BLOB)) || ' ' || length(CAST(text AS BLOB)) || ':' || stream || text, '' ORDER BY number) AS BLOB)
FROM logs
GROUP BY job_id, (number - 1) / 1024;

-- +goose Down
-- The lines stored since the upgrade are lost; those from before it are
-- still in logs.
DROP TABLE log_chunks;
