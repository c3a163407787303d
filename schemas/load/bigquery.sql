-- Load xquik-dm Parquet into BigQuery.
-- Copy DIR/parquet/messages/ to gs://BUCKET/xquik-dm/parquet/messages/ first
-- (e.g. gsutil -m rsync -r), then run with `bq query --use_legacy_sql=false`.
-- Replace DATASET and BUCKET.
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
    uris = ['gs://BUCKET/xquik-dm/parquet/messages/*']
);
