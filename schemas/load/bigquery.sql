-- Read or load xquik-dm's messages in BigQuery. Run with
-- `bq query --use_legacy_sql=false`; replace DATASET, BUCKET, and for the
-- Delta table the connection (PROJECT.REGION.CONNECTION, a Cloud resource
-- connection whose service account can read the bucket).
--
-- 1. The Delta table as a BigLake table, read in place: `sync --out
--    gs://BUCKET/xquik-dm` (or a copy of DIR there). BigQuery reads the latest
--    snapshot of parquet/messages/_delta_log/ at query time.
CREATE EXTERNAL TABLE IF NOT EXISTS DATASET.dm_messages_delta
WITH CONNECTION `PROJECT.REGION.CONNECTION`
OPTIONS (
    format = 'DELTA_LAKE',
    uris = ['gs://BUCKET/xquik-dm/parquet/messages']
);

-- 2. A copy into a native table. The URI names data files only
--    (date=*): parquet/messages/_delta_log/ holds Parquet checkpoints too.
--    A sharded prefix (sync --shard K/N): parquet/messages/shard-*/date=*.
CREATE TABLE IF NOT EXISTS DATASET.dm_messages (
    message_id STRING NOT NULL,
    conversation_user_id STRING NOT NULL,
    account STRING NOT NULL,
    sender_id STRING NOT NULL,
    receiver_id STRING NOT NULL,
    created_at TIMESTAMP,
    message_text STRING,
    media_url STRING
)
CLUSTER BY conversation_user_id;

-- Each run adds new immutable files; load a run's files once. Rows are
-- unique by (conversation_user_id, message_id) across all files.
LOAD DATA INTO DATASET.dm_messages (
    message_id STRING, conversation_user_id STRING, account STRING,
    sender_id STRING, receiver_id STRING, created_at TIMESTAMP,
    message_text STRING, media_url STRING
)
FROM FILES (
    format = 'PARQUET',
    uris = ['gs://BUCKET/xquik-dm/parquet/messages/date=*']
);
