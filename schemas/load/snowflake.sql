-- Load xquik-dm Parquet into Snowflake.
-- PUT the files of DIR/parquet/messages/ on the stage first, e.g.
--   PUT file://DIR/parquet/messages/*/*.parquet @xquik_dm_stage AUTO_COMPRESS = FALSE;
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
PATTERN = '.*[.]parquet';
