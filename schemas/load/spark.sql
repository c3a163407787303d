-- Read the xquik-dm Delta tables in Spark (with delta-spark 3.x) or
-- Databricks. Replace BUCKET/PREFIX with the --out bucket prefix (s3://,
-- gs:// or abfss://; the cluster needs read access to it, nothing else: no
-- catalog server, no metastore entry beyond the table name).
--
-- Each table reads its latest snapshot from _delta_log/; a run is one
-- commit, so a reader never sees half a run or half a compaction.
-- `DESCRIBE HISTORY dm_messages` lists one commit per run (userMetadata
-- holds no body; the commitInfo names the run ID, which the run's manifest
-- under audit/runs/ names back, with the table version).
CREATE TABLE IF NOT EXISTS dm_messages
USING DELTA
LOCATION 's3://BUCKET/PREFIX/parquet/messages';

CREATE TABLE IF NOT EXISTS dm_sends
USING DELTA
LOCATION 's3://BUCKET/PREFIX/parquet/sends';

-- Time travel: the table as run N's manifest left it ("delta" -> version).
-- SELECT count(*) FROM dm_messages VERSION AS OF 7;
