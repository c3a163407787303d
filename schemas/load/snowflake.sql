-- Read or load xquik-dm's messages in Snowflake.
--
-- 1. The Delta table, read in place from the bucket (no copy): an external
--    table with TABLE_FORMAT = DELTA on a stage over the --out prefix. Replace
--    BUCKET/PREFIX and the storage integration. It reads the latest snapshot
--    of parquet/messages/_delta_log/ at each REFRESH: run
--    `ALTER EXTERNAL TABLE dm_messages_delta REFRESH;` after each sync.
CREATE STAGE IF NOT EXISTS xquik_dm_delta_stage
    URL = 's3://BUCKET/PREFIX/parquet/'
    STORAGE_INTEGRATION = xquik_dm_integration
    FILE_FORMAT = (TYPE = PARQUET);

CREATE EXTERNAL TABLE IF NOT EXISTS dm_messages_delta (
    message_id VARCHAR AS (value:message_id::VARCHAR),
    conversation_user_id VARCHAR AS (value:conversation_user_id::VARCHAR),
    account VARCHAR AS (value:account::VARCHAR),
    sender_id VARCHAR AS (value:sender_id::VARCHAR),
    receiver_id VARCHAR AS (value:receiver_id::VARCHAR),
    created_at TIMESTAMP_TZ AS (value:created_at::TIMESTAMP_TZ),
    message_text VARCHAR AS (value:message_text::VARCHAR),
    media_url VARCHAR AS (value:media_url::VARCHAR)
)
LOCATION = @xquik_dm_delta_stage/messages/
FILE_FORMAT = (TYPE = PARQUET)
TABLE_FORMAT = DELTA
AUTO_REFRESH = FALSE
REFRESH_ON_CREATE = TRUE;

-- 2. A copy into a native table, from files PUT on a stage. PUT the data
--    files only (date=*/...): parquet/messages/_delta_log/ holds Parquet
--    checkpoints too, which are not rows.
--   PUT file://DIR/parquet/messages/date=*/*.parquet @xquik_dm_stage AUTO_COMPRESS = FALSE;
--    (A sharded prefix, sync --shard K/N: DIR/parquet/messages/shard-*/date=*/*.parquet.)
CREATE TABLE IF NOT EXISTS dm_messages (
    message_id VARCHAR NOT NULL,
    conversation_user_id VARCHAR NOT NULL,
    account VARCHAR NOT NULL,
    sender_id VARCHAR NOT NULL,
    receiver_id VARCHAR NOT NULL,
    created_at TIMESTAMP_TZ,
    message_text VARCHAR,
    media_url VARCHAR,
    PRIMARY KEY (conversation_user_id, message_id)
);

CREATE STAGE IF NOT EXISTS xquik_dm_stage FILE_FORMAT = (TYPE = PARQUET);

-- COPY skips files it loaded before (load metadata), and every run writes
-- new file names, so rerunning this after each sync loads each row once.
COPY INTO dm_messages
FROM @xquik_dm_stage
FILE_FORMAT = (TYPE = PARQUET)
MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE
PATTERN = '(.*/)?part-[^/]*[.]parquet';
