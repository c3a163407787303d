-- Load xquik-dm outputs into DuckDB.
-- Replace {{OUT}} with the --out folder. Run: duckdb my.db < duckdb.sql
--
-- Parquet: the data files under parquet/messages/, by glob. The table is a
-- Delta table: duckdb-delta.sql reads its latest snapshot instead (no glob,
-- never a compaction half done). The glob names data files only
-- (`date=*/*.parquet`): the Delta log's checkpoints under _delta_log/ are
-- Parquet too. The hive partition column `date` is the UTC date of the run
-- that wrote the file (not the message date: use created_at for that).
-- A sharded prefix (sync --shard K/N) holds one table whose data files are in
-- a folder per shard: glob '{{OUT}}/parquet/messages/shard-*/date=*/*.parquet'.
CREATE OR REPLACE TABLE dm_messages AS
SELECT
    message_id,
    conversation_user_id,
    account,
    sender_id,
    receiver_id,
    created_at,
    message_text,
    media_url,
    "date" AS synced_on
FROM read_parquet('{{OUT}}/parquet/messages/date=*/*.parquet', hive_partitioning = true);

-- The same rows from the JSON Lines handoff file, with explicit types so that
-- IDs stay strings (DuckDB would otherwise read numeric-looking IDs as
-- integers).
CREATE OR REPLACE TABLE dm_handoff_history AS
SELECT *
FROM read_json(
    '{{OUT}}/xquik-dm-handoff.jsonl',
    format = 'newline_delimited',
    columns = {
        record_type: 'VARCHAR',
        message_id: 'VARCHAR',
        conversation_user_id: 'VARCHAR',
        account: 'VARCHAR',
        sender_id: 'VARCHAR',
        receiver_id: 'VARCHAR',
        created_at: 'TIMESTAMPTZ',
        message_text: 'VARCHAR',
        media_url: 'VARCHAR'
    }
)
WHERE record_type = 'history';
