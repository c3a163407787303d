-- Load the xquik-dm JSON Lines handoff file into PostgreSQL (PostgreSQL has
-- no Parquet reader; the JSONL holds the same records).
-- Run from the --out folder: psql -v ON_ERROR_STOP=1 -f postgresql.sql
CREATE TABLE IF NOT EXISTS dm_messages (
    message_id text NOT NULL,
    conversation_user_id text NOT NULL,
    account text NOT NULL,
    sender_id text NOT NULL,
    receiver_id text NOT NULL,
    created_at timestamptz,
    message_text text,
    media_url text,
    PRIMARY KEY (conversation_user_id, message_id)
);

CREATE TEMP TABLE xquik_dm_lines (line jsonb NOT NULL);

-- CSV mode with quote and delimiter bytes that never occur in JSON Lines:
-- text mode would unescape the backslashes inside the JSON.
\copy xquik_dm_lines (line) FROM 'xquik-dm-handoff.jsonl' WITH (FORMAT csv, QUOTE E'\x01', DELIMITER E'\x02')

-- Idempotent: reloading the whole file after every sync adds only new rows.
INSERT INTO dm_messages
SELECT
    line->>'message_id',
    line->>'conversation_user_id',
    line->>'account',
    line->>'sender_id',
    line->>'receiver_id',
    (line->>'created_at')::timestamptz,
    line->>'message_text',
    line->>'media_url'
FROM xquik_dm_lines
WHERE line->>'record_type' = 'history'
ON CONFLICT (conversation_user_id, message_id) DO NOTHING;
