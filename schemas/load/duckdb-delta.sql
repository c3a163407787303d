-- Read the xquik-dm Delta tables in DuckDB (the `delta` extension, DuckDB
-- 1.1 or later; INSTALL fetches it once). Replace {{OUT}} with the --out
-- folder or bucket URL (s3://BUCKET/PREFIX; for a bucket, LOAD httpfs and
-- CREATE SECRET with the bucket's credentials first).
--
-- delta_scan reads the table's latest snapshot from parquet/messages/_delta_log/:
-- exactly the files the sealed runs list, never a compaction's both file
-- sets, and it skips files by the created_at statistics of each commit.
INSTALL delta;
LOAD delta;

CREATE OR REPLACE VIEW dm_messages AS
SELECT * FROM delta_scan('{{OUT}}/parquet/messages');

CREATE OR REPLACE VIEW dm_sends AS
SELECT * FROM delta_scan('{{OUT}}/parquet/sends');

-- e.g. one day of messages; files whose created_at range misses it are not read.
-- SELECT count(*) FROM dm_messages
-- WHERE created_at >= TIMESTAMPTZ '2026-12-01 00:00:00+00' AND created_at < TIMESTAMPTZ '2026-12-02 00:00:00+00';
