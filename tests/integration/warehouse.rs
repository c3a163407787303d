//! The documented schemas and load statements, run for real: the JSON
//! Schema validates every JSONL record, DuckDB runs `schemas/load/duckdb.sql`
//! and PostgreSQL runs `schemas/load/postgresql.sql`, and both must hold
//! exactly the messages the mock served, byte for byte.
//!
//! DuckDB and jsonschema come from PyPI: they are installed on first use
//! into the test target folder, so `cargo test` needs no other set-up.
//! PostgreSQL is the machine's own server, started on a private socket.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};
use xquik_dm::commands::sync::{self};
use xquik_dm::mock::MockServer;

use crate::{
    ACCOUNT, history_by_conversation, python_with, run_python, sync_options, users, world,
};

const SCHEMAS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas");

/// Syncs a Unicode-rich world of three conversations into a new folder.
async fn synced_folder() -> (tempfile::TempDir, MockServer, Vec<String>) {
    let server = MockServer::start(world(&[900, 40, 1], 100)).await.unwrap();
    let users = users(3);
    let dir = tempfile::tempdir().unwrap();
    let report = sync::run(sync_options(&server, dir.path(), &users))
        .await
        .unwrap();
    assert_eq!(report.exit_code(), 0);
    (dir, server, users)
}

/// A digest of every history message, ordered by bytes of (conversation,
/// message ID): `conv:id:text` lines, `<null>` for no text.
fn digest(rows: impl IntoIterator<Item = (String, String, Option<String>)>) -> String {
    let mut rows: Vec<_> = rows.into_iter().collect();
    rows.sort();
    let joined = rows
        .iter()
        .map(|(c, id, t)| format!("{c}:{id}:{}", t.as_deref().unwrap_or("<null>")))
        .collect::<Vec<_>>()
        .join("\n");
    hex::encode(Sha256::digest(joined.as_bytes()))
}

fn expected_digest(server: &MockServer, users: &[String]) -> (usize, String) {
    let rows: Vec<_> = users
        .iter()
        .flat_map(|u| {
            server
                .history(ACCOUNT, u)
                .into_iter()
                .map(move |m| (u.clone(), m.id, m.text))
        })
        .collect();
    (rows.len(), digest(rows))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_jsonl_record_matches_the_json_schema() {
    let (dir, _server, _) = synced_folder().await;
    let script = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
n = 0
for line in open(sys.argv[2], encoding="utf-8"):
    record = json.loads(line)
    errors = list(validator.iter_errors(record))
    if errors:
        sys.exit(f"record {n}: {errors[0].message}")
    n += 1
# The schema must also refuse what is not a history record.
bad = dict(record, message_id=12)
assert list(validator.iter_errors(bad)), "schema accepts a numeric message_id"
bad = dict(record, created_at="2025-01-15T14:00:00+02:00")
assert list(validator.iter_errors(bad)), "schema accepts a non-UTC created_at"
print(n)
"#;
    let schema = PathBuf::from(SCHEMAS).join("history-record.schema.json");
    let jsonl = dir.path().join("xquik-dm-handoff.jsonl");
    let out = run_python(python_with(&["jsonschema"]), script, &[&schema, &jsonl]);
    assert_eq!(out.trim(), "941");
}

#[tokio::test(flavor = "multi_thread")]
async fn manifests_and_audit_rows_match_their_json_schemas() {
    let (dir, _server, _) = synced_folder().await;
    let script = r#"
import json, sys, glob, os, jsonschema
schemas, out = sys.argv[1], sys.argv[2]
def validator(name):
    schema = json.load(open(os.path.join(schemas, name)))
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
manifest, row = validator("manifest.schema.json"), validator("audit-row.schema.json")
checked = 0
for path in glob.glob(os.path.join(out, "audit/runs/*.manifest.json")):
    errors = list(manifest.iter_errors(json.load(open(path))))
    if errors:
        sys.exit(f"{path}: {errors[0].json_path}: {errors[0].message}")
    checked += 1
for path in glob.glob(os.path.join(out, "audit/runs/*.rows.jsonl")):
    for line in open(path, encoding="utf-8"):
        errors = list(row.iter_errors(json.loads(line)))
        if errors:
            sys.exit(f"{path}: {errors[0].message}")
        checked += 1
schema = json.load(open(os.path.join(schemas, "manifest.schema.json")))
page, request = (jsonschema.Draft202012Validator(dict(schema["$defs"][d], **{"$schema": schema["$schema"]})) for d in ("page", "request"))
pages = 0
for path in glob.glob(os.path.join(out, "audit/runs/*.pages.jsonl")):
    for line in open(path, encoding="utf-8"):
        record = json.loads(line)
        errors = list((page if record["endpoint"] == "GET /x/dm/{userId}/history" else request).iter_errors(record))
        if errors:
            sys.exit(f"{path}: {errors[0].message}")
        pages += 1
assert pages == 11, pages  # 9 + 1 + 1 pages of 100
print(checked)
"#;
    let out = run_python(
        python_with(&["jsonschema"]),
        script,
        &[Path::new(SCHEMAS), dir.path()],
    );
    // One manifest and one audit row per message written.
    assert_eq!(out.trim(), "942");
}

#[tokio::test(flavor = "multi_thread")]
async fn duckdb_loads_the_parquet_and_the_jsonl_exactly() {
    let (dir, server, users) = synced_folder().await;
    let (count, expected) = expected_digest(&server, &users);
    let sql = std::fs::read_to_string(PathBuf::from(SCHEMAS).join("load/duckdb.sql"))
        .unwrap()
        .replace("{{OUT}}", dir.path().to_str().unwrap());
    let sql_path = dir.path().join("load.sql");
    std::fs::write(&sql_path, sql).unwrap();
    let script = r#"
import duckdb, hashlib, sys
con = duckdb.connect()
con.execute(open(sys.argv[1]).read())
def digest(table):
    rows = con.execute(f"SELECT conversation_user_id, message_id, message_text FROM {table}").fetchall()
    rows.sort(key=lambda r: (r[0].encode(), r[1].encode(), r[2].encode() if r[2] is not None else b""))
    joined = "\n".join(f"{c}:{i}:{t if t is not None else '<null>'}" for c, i, t in rows)
    return len(rows), hashlib.sha256(joined.encode()).hexdigest()
types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE dm_messages)").fetchall())
assert types["message_id"] == "VARCHAR", types
assert types["created_at"] == "TIMESTAMP WITH TIME ZONE", types
mismatch = con.execute("""
    SELECT count(*) FROM dm_messages m JOIN dm_handoff_history h USING (conversation_user_id, message_id)
    WHERE m.created_at IS DISTINCT FROM h.created_at OR m.media_url IS DISTINCT FROM h.media_url
""").fetchone()[0]
assert mismatch == 0, mismatch
for table in ("dm_messages", "dm_handoff_history"):
    n, d = digest(table)
    print(table, n, d)
"#;
    let out = run_python(python_with(&["duckdb"]), script, &[&sql_path]);
    for table in ["dm_messages", "dm_handoff_history"] {
        assert!(
            out.contains(&format!("{table} {count} {expected}")),
            "{table} differs from the ground truth ({count} {expected}):\n{out}"
        );
    }
    // The rows the library itself wrote, for the same digest.
    let written = history_by_conversation(dir.path());
    let rows = written.iter().flat_map(|(c, msgs)| {
        msgs.iter().map(move |(id, r)| {
            (
                c.clone(),
                id.clone(),
                r["message_text"].as_str().map(str::to_owned),
            )
        })
    });
    assert_eq!(digest(rows), expected);
}

/// A private PostgreSQL server on a Unix socket, stopped on drop.
pub struct Postgres {
    data: PathBuf,
    pub socket: PathBuf,
    password: Option<String>,
    _dir: tempfile::TempDir,
}

impl Postgres {
    pub fn start() -> Postgres {
        Postgres::start_with(None)
    }

    /// A server whose `postgres` user needs `password` (scram-sha-256).
    pub fn start_with(password: Option<&str>) -> Postgres {
        let bin = Path::new("/usr/lib/postgresql/15/bin");
        assert!(
            bin.join("initdb").exists(),
            "PostgreSQL 15 server binaries are needed"
        );
        let dir = tempfile::Builder::new()
            .prefix("xquik-dm-pg")
            .tempdir()
            .unwrap();
        // The server refuses to run as root: it runs as the `postgres` user,
        // which must be able to enter the folder.
        let status = Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success());
        let (data, socket) = (dir.path().join("data"), dir.path().to_owned());
        let as_postgres = |program: &str| {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(bin.join(program));
            cmd
        };
        let mut initdb = as_postgres("initdb");
        match password {
            Some(password) => {
                let file = dir.path().join("pw");
                std::fs::write(&file, password).unwrap();
                let _ = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&file)
                    .status();
                initdb
                    .args(["-A", "scram-sha-256"])
                    .arg(format!("--pwfile={}", file.display()));
            }
            None => {
                initdb.args(["-A", "trust"]);
            }
        }
        let status = initdb
            .args(["-U", "postgres", "-E", "UTF8", "--locale", "C", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        let status = as_postgres("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-o")
            .arg(format!("-k {} -c listen_addresses=''", socket.display()))
            .args(["-w", "-l"])
            .arg(dir.path().join("log"))
            .arg("start")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "PostgreSQL did not start");
        Postgres {
            data,
            socket,
            password: password.map(str::to_owned),
            _dir: dir,
        }
    }

    /// A connection string for `xquik-dm load --to`.
    pub fn url(&self) -> String {
        format!(
            "host={} user=postgres dbname=postgres",
            self.socket.display()
        )
    }

    pub fn psql(&self, cwd: &Path) -> Command {
        let mut cmd = Command::new("psql");
        if let Some(password) = &self.password {
            cmd.env("PGPASSWORD", password);
        }
        cmd.current_dir(cwd).arg("-h").arg(&self.socket).args([
            "-U",
            "postgres",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
        ]);
        cmd
    }

    pub fn query(&self, cwd: &Path, sql: &str) -> String {
        let out = self.psql(cwd).args(["-c", sql]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                "/usr/lib/postgresql/15/bin/pg_ctl",
                "-m",
                "immediate",
                "-D",
            ])
            .arg(&self.data)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgresql_loads_the_jsonl_exactly_and_idempotently() {
    let (dir, server, users) = synced_folder().await;
    let (count, expected) = expected_digest(&server, &users);
    let pg = Postgres::start();
    let load = PathBuf::from(SCHEMAS).join("load/postgresql.sql");
    for _ in 0..2 {
        let out = pg.psql(dir.path()).arg("-f").arg(&load).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let got = pg.query(
        dir.path(),
        "SELECT count(*) || ' ' || encode(sha256(convert_to(string_agg(conversation_user_id || ':' || message_id || ':' || coalesce(message_text, '<null>'), E'\\n' ORDER BY convert_to(conversation_user_id, 'UTF8'), convert_to(message_id, 'UTF8'), convert_to(coalesce(message_text, ''), 'UTF8')), 'UTF8')), 'hex') FROM dm_messages",
    );
    assert_eq!(got, format!("{count} {expected}"));
    let nulls = pg.query(
        dir.path(),
        "SELECT count(*) FROM dm_messages WHERE created_at IS NULL",
    );
    let expected_nulls = users
        .iter()
        .flat_map(|u| server.history(ACCOUNT, u))
        .filter(|m| m.created_at.is_none())
        .count();
    assert_eq!(nulls, expected_nulls.to_string());
}
