//! Outputs in a bucket, against a real S3 API: `moto` in server mode (from
//! PyPI, installed into the test target folder on first use and started on
//! 127.0.0.1 for each test). The binary runs with the S3 environment a
//! deployment would set; the bucket is read back with boto3 and pyarrow,
//! independently of the tool's own code.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xquik_dm::mock::MockServer;
use xquik_dm::storage::Backend;
use xquik_dm::storage::object::ObjectStore;

use crate::cli::{bin, run};
use crate::sync::{assert_parquet_equals_jsonl, history_credits};
use crate::{ACCOUNT, KEY, assert_ground_truth, python_with, run_python, users, world};

/// The packages the S3 server and the readers need.
const PYTHON: &[&str] = &["moto[server]:moto", "boto3", "pyarrow"];

/// A moto S3 server on 127.0.0.1, stopped when dropped.
pub struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = python_with(PYTHON)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto starts");
        let moto = Moto { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (moto accepts an unsigned request).
    pub fn bucket(&self, name: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        name.to_owned()
    }

    /// The environment a deployment sets for S3: credentials, the
    /// endpoint, plain http for this local server, and the instance
    /// metadata endpoint kept on loopback.
    pub fn env(&self, cmd: &mut Command) {
        for (key, value) in self.vars() {
            cmd.env(key, value);
        }
    }

    fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_METADATA_ENDPOINT", "http://127.0.0.1:9".into()),
        ]
    }

    /// The tool's own backend on `url`, configured without touching this
    /// process's environment (for tampering and inspection).
    pub fn store(&self, url: &str) -> ObjectStore {
        let endpoint = self.endpoint();
        ObjectStore::with_options(
            &url::Url::parse(url).unwrap(),
            &[
                ("aws_access_key_id", "test"),
                ("aws_secret_access_key", "test"),
                ("aws_region", "us-east-1"),
                ("aws_endpoint", &endpoint),
                ("aws_allow_http", "true"),
            ],
        )
        .unwrap()
    }

    /// Copies the prefix to a local folder, as an analyst's download would,
    /// with the handoff segments joined into the one file a folder holds.
    pub fn mirror(&self, bucket: &str, prefix: &str, to: &Path) {
        let script = r#"
import sys, os, boto3
endpoint, bucket, prefix, to = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                  aws_secret_access_key="test", region_name="us-east-1")
segments = []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
    for obj in page.get("Contents", []):
        key = obj["Key"][len(prefix) + 1:]
        body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        if key.startswith("xquik-dm-handoff/"):
            segments.append((key, body))
            continue
        path = os.path.join(to, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").write(body)
with open(os.path.join(to, "xquik-dm-handoff.jsonl"), "wb") as f:
    for _, body in sorted(segments):
        f.write(body)
print(len(segments))
"#;
        run_python(
            python_with(PYTHON),
            script,
            &[
                Path::new(&self.endpoint()),
                Path::new(bucket),
                Path::new(prefix),
                to,
            ],
        );
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `xquik-dm sync` of `users` into `out` (a bucket URL) against `server`,
/// run from `cwd` (a fresh, empty working directory each time).
fn sync(moto: &Moto, server: &MockServer, out: &str, users: &[String], cwd: &Path) -> Command {
    let mut cmd = crate::protocol::sync(server, out, users);
    cmd.current_dir(cwd);
    moto.env(&mut cmd);
    cmd
}

fn verify(moto: &Moto, out: &str) -> (i32, String) {
    let mut cmd = bin();
    cmd.args(["verify", out]);
    moto.env(&mut cmd);
    let (code, stdout, stderr) = run(&mut cmd);
    (code, format!("{stdout}{stderr}"))
}

/// Asserts that the Parquet data under `url` holds exactly the ground
/// truth, read by pyarrow straight from the bucket with one glob.
fn assert_pyarrow_reads_the_ground_truth(
    moto: &Moto,
    url: &str,
    server: &MockServer,
    users: &[String],
) {
    let script = r#"
import sys, pyarrow.dataset as ds, pyarrow.fs as pafs
endpoint, url = sys.argv[1], sys.argv[2]
fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", access_key="test",
                       secret_key="test", region="us-east-1")
path = url[len("s3://"):] + "/parquet/messages"
table = ds.dataset(path, filesystem=fs, format="parquet", partitioning="hive").to_table()
ids = table.column("message_id").to_pylist()
convs = table.column("conversation_user_id").to_pylist()
assert len(set(zip(convs, ids))) == len(ids), "duplicate rows"
print(len(ids))
"#;
    let out = run_python(
        python_with(PYTHON),
        script,
        &[Path::new(&moto.endpoint()), Path::new(url)],
    );
    let expected: usize = users.iter().map(|u| server.history(ACCOUNT, u).len()).sum();
    assert_eq!(out.trim(), expected.to_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_sync_resumes_from_a_fresh_container_with_only_the_new_messages() {
    let moto = Arc::new(tokio::task::spawn_blocking(Moto::start).await.unwrap());
    let bucket = moto.bucket("dm-incremental");
    let url = format!("s3://{bucket}/team/dm");
    let server = Arc::new(MockServer::start(world(&[420, 130, 7], 50)).await.unwrap());
    let users = users(3);
    let (m, s, u, out) = (moto.clone(), server.clone(), users.clone(), url.clone());
    tokio::task::spawn_blocking(move || {
        let first = tempfile::tempdir().unwrap();
        let (code, _, stderr) = run(&mut sync(&m, &s, &out, &u, first.path()));
        assert_eq!(code, 0, "{stderr}");
        // New messages arrive; the next run starts in a new container: an
        // empty working directory, nothing local from the first run.
        s.append_messages(ACCOUNT, &u[0], 9);
        let before = history_credits(&s);
        let fresh = tempfile::tempdir().unwrap();
        let (code, _, stderr) = run(&mut sync(&m, &s, &out, &u, fresh.path()));
        assert_eq!(code, 0, "{stderr}");
        let spent = history_credits(&s) - before;
        assert!(
            (9..=9 + 3 * 50).contains(&spent),
            "{spent} credits: more than the new messages and one page per conversation"
        );
        assert_eq!(
            std::fs::read_dir(fresh.path()).unwrap().count(),
            0,
            "wrote locally"
        );
        let (code, report) = verify(&m, &out);
        assert_eq!(code, 0, "{report}");
    })
    .await
    .unwrap();
    let local = tempfile::tempdir().unwrap();
    moto.mirror(&bucket, "team/dm", local.path());
    assert_ground_truth(local.path(), &server, &users);
    assert_parquet_equals_jsonl(local.path());
    assert_pyarrow_reads_the_ground_truth(&moto, &url, &server, &users);
    // Nothing a run left behind: no lease, no journal pieces.
    let store = moto.store(&url);
    assert!(store.size("state/lease.json").unwrap().is_none());
    let leftovers: Vec<String> = store
        .list("audit/")
        .unwrap()
        .into_iter()
        .map(|l| l.key)
        .filter(|k| k.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_bucket_input_is_refused_before_any_request() {
    let moto = Arc::new(tokio::task::spawn_blocking(Moto::start).await.unwrap());
    let server = Arc::new(MockServer::start(world(&[30], 50)).await.unwrap());
    let (m, s) = (moto.clone(), server.clone());
    tokio::task::spawn_blocking(move || {
        let cwd = tempfile::tempdir().unwrap();
        let users = users(1);
        let attempt = |out: &str, creds: bool| {
            let mut cmd = sync(&m, &s, out, &users, cwd.path());
            if !creds {
                cmd.env_remove("AWS_ACCESS_KEY_ID")
                    .env_remove("AWS_SECRET_ACCESS_KEY");
            }
            run(&mut cmd)
        };
        let (code, _, stderr) = attempt("ftp://host/dm", true);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("unsupported scheme"), "{stderr}");
        let (code, _, stderr) = attempt("s3://no-such-bucket/dm", true);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("bucket does not exist"), "{stderr}");
        m.bucket("dm-nocreds");
        let (code, _, stderr) = attempt("s3://dm-nocreds/dm", false);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("no credentials found"), "{stderr}");
        assert!(!stderr.contains(KEY));
    })
    .await
    .unwrap();
    let ledger = server.ledger();
    assert_eq!(ledger.credits_total, 0);
    assert!(
        ledger.calls_by_endpoint.values().all(|n| *n == 0),
        "{ledger:?}"
    );
}

/// SIGKILL at random moments of syncs into a bucket, each run in a fresh
/// container (an empty working directory): the outputs converge to the
/// ground truth, with no duplicate in the segments or the Parquet data.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_bucket_syncs_then_fresh_reruns_converge() {
    let moto = Arc::new(tokio::task::spawn_blocking(Moto::start).await.unwrap());
    let bucket = moto.bucket("dm-kills");
    let url = format!("s3://{bucket}/dm");
    let sizes = vec![900u64; 12];
    let mut config = world(&sizes, 50);
    config.faults = xquik_dm::mock::Faults {
        latency: Duration::from_millis(3),
        overlap: 2,
        unordered: true,
        ..Default::default()
    };
    let server = Arc::new(MockServer::start(config).await.unwrap());
    let users = users(sizes.len());
    let seed = std::env::var("KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xb0c_u64);
    let (m, s, u, out) = (moto.clone(), server.clone(), users.clone(), url.clone());
    let killed = tokio::task::spawn_blocking(move || {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut killed = 0;
        for _ in 0..10 {
            let cwd = tempfile::tempdir().unwrap();
            let mut child = sync(&m, &s, &out, &u, cwd.path())
                .args(["--commit-interval-ms", "20"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(rng.u64(50..700)));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                killed += 1;
            }
            child.wait().unwrap();
        }
        let cwd = tempfile::tempdir().unwrap();
        let (code, _, stderr) = run(&mut sync(&m, &s, &out, &u, cwd.path()));
        assert_eq!(code, 0, "final run (seed {seed}): {stderr}");
        let (code, report) = verify(&m, &out);
        assert_eq!(code, 0, "{report}");
        killed
    })
    .await
    .unwrap();
    assert!(
        killed >= 8,
        "only {killed} runs were killed mid-run (seed {seed})"
    );
    let local = tempfile::tempdir().unwrap();
    moto.mirror(&bucket, "dm", local.path());
    assert_ground_truth(local.path(), &server, &users);
    assert_parquet_equals_jsonl(local.path());
    assert_pyarrow_reads_the_ground_truth(&moto, &url, &server, &users);
}

/// Two runs on one prefix: the second is refused while the first holds the
/// lease. Two writers that both got past the lease (one missed it): the
/// compare-and-swap lets one commit and stops the other without damage,
/// and the next run carries on.
#[tokio::test(flavor = "multi_thread")]
async fn one_run_per_prefix_and_a_lost_race_at_the_checkpoint_is_clean() {
    use xquik_dm::store::{RunStamp, Store};
    let moto = Arc::new(tokio::task::spawn_blocking(Moto::start).await.unwrap());
    let bucket = moto.bucket("dm-race");
    let url = format!("s3://{bucket}/dm");
    let mut config = world(&[600, 600], 50);
    config.faults.latency = Duration::from_millis(5);
    let server = Arc::new(MockServer::start(config).await.unwrap());
    let users = users(2);
    let (m, s, u, out) = (moto.clone(), server.clone(), users.clone(), url.clone());
    tokio::task::spawn_blocking(move || {
        let store = m.store(&out);
        let cwd = tempfile::tempdir().unwrap();
        let first = sync(&m, &s, &out, &u, cwd.path())
            .args(["--concurrency", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while store.size("state/lease.json").unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "the first run never took the lease"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let (code, _, stderr) = run(&mut sync(&m, &s, &out, &u, cwd.path()));
        assert_eq!(code, 4, "{stderr}");
        assert!(stderr.contains("another xquik-dm run"), "{stderr}");
        let output = first.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(0));

        // Two writers past the lease: the second takes it after the first
        // "missed" it (its lease removed under it). The second claims the
        // output as it opens, so the first, still running, can no longer
        // commit; nothing of what it committed before is touched.
        let storage: xquik_dm::storage::Storage = Arc::new(m.store(&out));
        let mut a = Store::open(&storage, &RunStamp::now()).unwrap();
        let key = xquik_dm::checkpoint::conversation_key(ACCOUNT, &u[0]);
        let mut state = a.checkpoint().conversations[&key].clone();
        state.status = Some("committed by a".into());
        a.set_conversation(key.clone(), state.clone());
        a.commit().unwrap();
        store.delete("state/lease.json").unwrap();
        let mut b = Store::open(&storage, &RunStamp::now()).unwrap();
        assert_eq!(
            b.checkpoint().conversations[&key].status.as_deref(),
            Some("committed by a")
        );
        state.status = Some("lost by a".into());
        a.set_conversation(key.clone(), state.clone());
        let err = a.commit().unwrap_err();
        assert!(matches!(err, xquik_dm::Error::Conflict { .. }), "{err}");
        assert_eq!(err.exit_code(), 4);
        let err = a
            .seal(xquik_dm::store::ManifestBody::empty("sync"))
            .unwrap_err();
        assert!(matches!(err, xquik_dm::Error::Conflict { .. }), "{err}");
        state.status = Some("committed by b".into());
        b.set_conversation(key.clone(), state);
        b.commit().unwrap();
        b.seal(xquik_dm::store::ManifestBody::empty("sync"))
            .unwrap();
        let committed = xquik_dm::checkpoint::Checkpoint::load(&store).unwrap();
        assert_eq!(
            committed.conversations[&key].status.as_deref(),
            Some("committed by b")
        );
        // The next run carries on from there.
        let (code, _, stderr) = run(&mut sync(&m, &s, &out, &u, cwd.path()));
        assert_eq!(code, 0, "{stderr}");
        let (code, report) = verify(&m, &out);
        assert_eq!(code, 0, "{report}");
    })
    .await
    .unwrap();
    let local = tempfile::tempdir().unwrap();
    moto.mirror(&bucket, "dm", local.path());
    assert_ground_truth(local.path(), &server, &users);
}

/// `verify s3://...` names each object that was changed, removed or added.
#[tokio::test(flavor = "multi_thread")]
async fn verify_names_every_tampered_object_in_a_bucket() {
    let moto = Arc::new(tokio::task::spawn_blocking(Moto::start).await.unwrap());
    let bucket = moto.bucket("dm-tamper");
    let url = format!("s3://{bucket}/dm");
    let server = Arc::new(MockServer::start(world(&[300, 200], 50)).await.unwrap());
    let (m, s, out) = (moto.clone(), server.clone(), url.clone());
    tokio::task::spawn_blocking(move || {
        let cwd = tempfile::tempdir().unwrap();
        let u = users(2);
        let (code, _, stderr) = run(&mut sync(&m, &s, &out, &u, cwd.path()));
        assert_eq!(code, 0, "{stderr}");
        s.append_messages(ACCOUNT, &u[1], 20);
        let (code, _, stderr) = run(&mut sync(&m, &s, &out, &u, cwd.path()));
        assert_eq!(code, 0, "{stderr}");
        let store = m.store(&out);
        let keys: Vec<String> = store.list("").unwrap().into_iter().map(|l| l.key).collect();
        let parquet = keys
            .iter()
            .find(|k| k.ends_with(".parquet"))
            .unwrap()
            .clone();
        let segment = keys
            .iter()
            .rfind(|k| k.starts_with("xquik-dm-handoff/"))
            .unwrap()
            .clone();
        // One byte changed in a Parquet file, the last segment removed, an
        // extra Parquet file added.
        let mut bytes = store.get(&parquet).unwrap().unwrap().bytes;
        bytes[100] ^= 1;
        store
            .replace(&parquet, &bytes, xquik_dm::storage::Expect::Any)
            .unwrap();
        store.delete(&segment).unwrap();
        let extra = "parquet/messages/date=2026-01-01/part-extra-0001.parquet";
        store.put_new(extra, b"PAR1").unwrap();
        let (code, report) = verify(&m, &out);
        assert_eq!(code, 5, "{report}");
        for named in [parquet.as_str(), extra] {
            assert!(report.contains(named), "{named} not named:\n{report}");
        }
        assert!(report.contains("xquik-dm-handoff"), "{report}");
    })
    .await
    .unwrap();
}

/// Four shards of one job run at once into one prefix: together they hold
/// exactly the ground truth, each conversation in one shard, in one Delta
/// table at `<prefix>/parquet/messages` (delta-rs and Polars read every row
/// once; one commit per shard, versions dense, each naming its shard) and
/// readable with one glob; `verify` checks all four and the table; another
/// split of the prefix, or an unsharded run on it, is refused.
#[tokio::test(flavor = "multi_thread")]
async fn four_shards_of_one_job_form_one_dataset() {
    let moto = Arc::new(tokio::task::spawn_blocking(Moto::start).await.unwrap());
    let bucket = moto.bucket("dm-shards");
    let url = format!("s3://{bucket}/dm");
    let sizes: Vec<u64> = (0..16).map(|i| 40 + i * 13).collect();
    let server = Arc::new(MockServer::start(world(&sizes, 50)).await.unwrap());
    let users = users(sizes.len());
    let (m, s, u, out) = (moto.clone(), server.clone(), users.clone(), url.clone());
    tokio::task::spawn_blocking(move || {
        let children: Vec<_> = (0..4)
            .map(|k| {
                let cwd = tempfile::tempdir().unwrap();
                // Each shard lists the job's conversations in its own order.
                let mut listed = u.clone();
                listed.rotate_left(k * 3);
                let child = sync(&m, &s, &out, &listed, cwd.path())
                    .args(["--shard", &format!("{k}/4"), "--json"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                (cwd, child)
            })
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for (_cwd, child) in children {
            let output = child.wait_with_output().unwrap();
            assert_eq!(
                output.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            for conversation in report["conversations"].as_array().unwrap() {
                let user = conversation["user"].as_str().unwrap().to_owned();
                assert!(seen.insert(user.clone()), "{user} synced by two shards");
            }
        }
        assert_eq!(seen.len(), u.len(), "every conversation in some shard");
        let (code, report) = verify(&m, &out);
        assert_eq!(code, 0, "{report}");
        for k in 0..4 {
            assert!(
                report.contains(&format!("shard={k} chain head")),
                "{report}"
            );
        }
        let cwd = tempfile::tempdir().unwrap();
        let (code, _, stderr) = run(sync(&m, &s, &out, &u, cwd.path()).args(["--shard", "0/3"]));
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("split into 4 shards"), "{stderr}");
        let (code, _, stderr) = run(&mut sync(&m, &s, &out, &u, cwd.path()));
        assert_eq!(code, 2, "{stderr}");
    })
    .await
    .unwrap();
    // One glob over every shard's Parquet: the whole ground truth, once.
    let script = r#"
import sys, pyarrow.dataset as ds, pyarrow.fs as pafs
endpoint, url = sys.argv[1], sys.argv[2]
fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", access_key="test",
                       secret_key="test", region="us-east-1")
root = url[len("s3://"):]
every = [f.path for f in fs.get_file_info(pafs.FileSelector(root, recursive=True))]
assert not [p for p in every if "/shard=" in p and "/parquet/" in p], "a table of a shard's own"
# The README's glob: the shards' folders of the one table.
files = [p for p in every if p.endswith(".parquet") and "/parquet/messages/shard-" in p and "/date=" in p]
table = ds.dataset(files, filesystem=fs, format="parquet").to_table()
pairs = sorted(zip(table.column("conversation_user_id").to_pylist(), table.column("message_id").to_pylist()))
assert len(set(pairs)) == len(pairs), "duplicate rows across shards"
# The one Delta table, read by delta-rs and Polars from the bucket: the
# same rows, each once; one commit per shard's one run, versions dense.
import json, polars as pl
from deltalake import DeltaTable
options = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
dt = DeltaTable(f"{url}/parquet/messages", storage_options=options)
assert dt.version() == 3, dt.version()
t = dt.to_pyarrow_table()
delta = sorted(zip(t.column("conversation_user_id").to_pylist(), t.column("message_id").to_pylist()))
assert delta == pairs, "the Delta table differs from the data files"
df = pl.read_delta(f"{url}/parquet/messages", storage_options=options)
assert sorted(zip(df["conversation_user_id"].to_list(), df["message_id"].to_list())) == pairs, "polars"
assert "date" in df.columns and not [c for c in df.columns if c.startswith("shard")], df.columns
log = sorted(p for p in every if "/parquet/messages/_delta_log/" in p and p.endswith(".json"))
assert [p.rsplit("/", 1)[1] for p in log] == [f"{v:020}.json" for v in range(4)], log
parts = []
for p in log:
    with fs.open_input_stream(p) as f:
        info = json.loads(f.read().decode().splitlines()[0])["commitInfo"]
    parts.append(info["part"])
assert sorted(parts) == [f"shard-{k}" for k in range(4)], parts
print(len(pairs))
# delta-rs's threads can abort the interpreter's teardown.
import os
sys.stdout.flush()
os._exit(0)
"#;
    let out = run_python(
        python_with(&[PYTHON, &["deltalake", "polars"]].concat()),
        script,
        &[Path::new(&moto.endpoint()), Path::new(&url)],
    );
    let expected: usize = users.iter().map(|u| server.history(ACCOUNT, u).len()).sum();
    assert_eq!(out.trim(), expected.to_string());
}

/// The demo — sync, incremental sync, a text and a media DM, verify — runs
/// unchanged into a bucket.
#[test]
fn the_demo_runs_unchanged_into_a_bucket() {
    let moto = Moto::start();
    let bucket = moto.bucket("dm-demo");
    let review = tempfile::tempdir().unwrap();
    let mut cmd = bin();
    cmd.args(["demo", "--out", &format!("s3://{bucket}/demo")])
        .env("TMPDIR", review.path());
    moto.env(&mut cmd);
    let (code, stdout, stderr) = run(&mut cmd);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("OK"), "{stdout}");
    let local = tempfile::tempdir().unwrap();
    moto.mirror(&bucket, "demo", local.path());
    let sends = crate::jsonl_records(local.path())
        .into_iter()
        .filter(|r| r["record_type"] == "send")
        .count();
    assert_eq!(sends, 2);
    let data = crate::files_under(local.path(), "parquet/sends");
    assert_eq!(
        data.iter().filter(|p| p.contains("/date=")).count(),
        1,
        "{data:?}"
    );
}

/// Large objects go up as multipart uploads: nothing is visible until the
/// upload completes, the object read back is byte for byte what was
/// written, an abandoned one leaves nothing, and a taken key is refused.
#[test]
fn large_objects_are_multipart_and_invisible_until_complete() {
    use std::io::{Read as _, Write as _};
    let moto = Moto::start();
    let bucket = moto.bucket("dm-multipart");
    let store = moto.store(&format!("s3://{bucket}/dm"));
    let mut rng = fastrand::Rng::with_seed(7);
    let bytes: Vec<u8> = (0..13 << 20).map(|_| rng.u8(..)).collect();
    let key = "parquet/messages/date=2026-11-30/part-big-0001.parquet";
    let mut object = store.create(key).unwrap();
    for chunk in bytes.chunks(1 << 20) {
        object.write_all(chunk).unwrap();
    }
    assert!(
        store.size(key).unwrap().is_none(),
        "visible before completion"
    );
    object.finish().unwrap();
    let mut back = Vec::new();
    store
        .reader(key, None)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == bytes, "read back differs");
    let mut range = Vec::new();
    store
        .reader(key, Some(6_000_000..6_000_100))
        .unwrap()
        .read_to_end(&mut range)
        .unwrap();
    assert_eq!(range, bytes[6_000_000..6_000_100]);
    // A taken key is refused before anything is uploaded.
    let mut again = store.create(key).unwrap();
    assert!(again.write_all(&bytes[..6 << 20]).is_err());
    drop(again);
    // An abandoned upload leaves no object behind.
    let other = "parquet/messages/date=2026-11-30/part-big-0002.parquet";
    let mut abandoned = store.create(other).unwrap();
    abandoned.write_all(&bytes[..11 << 20]).unwrap();
    drop(abandoned);
    assert!(store.size(other).unwrap().is_none());
}

/// In a bucket too, a run costs the same however many came before: it
/// lists nothing, and reads and writes the same number of bytes at the
/// 40th run as at the 10th (the chain is one object per entry, the handoff
/// file one segment per commit, found from the checkpoint).
#[test]
fn a_bucket_run_lists_nothing_and_costs_the_same_at_the_fortieth_run() {
    use xquik_dm::storage::counting::Counting;
    use xquik_dm::store::{RunStamp, Store};
    let moto = Moto::start();
    let bucket = moto.bucket("dm-longevity");
    let url = format!("s3://{bucket}/dm");
    let counting = Counting::new(Arc::new(moto.store(&url)));
    let storage: xquik_dm::storage::Storage = Arc::new(counting.clone());
    let run = |n: u64| {
        counting.take();
        let stamp = RunStamp {
            run_id: format!("20261130T000000Z-{n:016x}"),
            date: "2026-11-30".into(),
            started_at: "2026-11-30T00:00:00Z".into(),
        };
        crate::compact::one_run(Store::open(&storage, &stamp).unwrap(), n * 2, 2, false);
        counting.take()
    };
    for n in 0..10 {
        run(n);
    }
    let tenth = run(10);
    for n in 11..40 {
        run(n);
    }
    let fortieth = run(40);
    assert_eq!(fortieth.listed, Vec::<String>::new(), "{fortieth:?}");
    assert!(fortieth.read <= tenth.read + 64, "{tenth:?} {fortieth:?}");
    assert!(
        fortieth.written <= tenth.written + 64,
        "{tenth:?} {fortieth:?}"
    );
    let (code, report) = verify(&moto, &url);
    assert_eq!(code, 0, "{report}");
}

/// `compact` on a bucket prefix: the same protocol as in a folder (merged
/// files put create-only, the old ones deleted once the manifest is
/// chained); the rows read back are the same, one file per partition, and
/// the bucket verifies.
#[test]
fn compaction_in_a_bucket_keeps_every_row_and_verifies() {
    use crate::compact::{duckdb_rows, files_per_partition, past_runs_into};
    let moto = Moto::start();
    let bucket = moto.bucket("dm-compact");
    let url = format!("s3://{bucket}/dm");
    let storage: xquik_dm::storage::Storage = Arc::new(moto.store(&url));
    past_runs_into(&storage, 2, 4, 25);
    let before_dir = tempfile::tempdir().unwrap();
    moto.mirror(&bucket, "dm", before_dir.path());
    let before = duckdb_rows(before_dir.path());
    let mut cmd = bin();
    cmd.args(["compact", "--json", "--out", &url]);
    moto.env(&mut cmd);
    let (code, stdout, stderr) = run(&mut cmd);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["files_removed"], 16);
    assert_eq!(report["files_added"], 4);
    let (code, text) = verify(&moto, &url);
    assert_eq!(code, 0, "{text}");
    let after_dir = tempfile::tempdir().unwrap();
    moto.mirror(&bucket, "dm", after_dir.path());
    assert_eq!(duckdb_rows(after_dir.path()), before);
    assert!(
        files_per_partition(after_dir.path())
            .values()
            .all(|&n| n == 1)
    );
}

/// `load --from s3://…`: the runs in a bucket load exactly as from a
/// folder (the tables equal the JSONL the bucket's segments join into).
#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_loads_into_postgresql() {
    let moto = Arc::new(tokio::task::spawn_blocking(Moto::start).await.unwrap());
    let bucket = moto.bucket("dm-load");
    let url = format!("s3://{bucket}/dm");
    let server = Arc::new(MockServer::start(world(&[150, 40], 50)).await.unwrap());
    let users = users(2);
    let (m, s, u, out) = (moto.clone(), server.clone(), users.clone(), url.clone());
    let pg = tokio::task::spawn_blocking(move || {
        let cwd = tempfile::tempdir().unwrap();
        let (code, _, stderr) = run(&mut sync(&m, &s, &out, &u, cwd.path()));
        assert_eq!(code, 0, "{stderr}");
        let pg = crate::warehouse::Postgres::start();
        let mut load = bin();
        load.args(["load", "--from", &out, "--to", &pg.url()]);
        m.env(&mut load);
        let (code, stdout, stderr) = run(&mut load);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.contains("190 rows inserted"), "{stdout}");
        pg
    })
    .await
    .unwrap();
    let local = tempfile::tempdir().unwrap();
    moto.mirror(&bucket, "dm", local.path());
    assert_eq!(
        crate::load::tables(&pg, local.path()),
        crate::load::expected(local.path())
    );
}

/// `load --from s3://…` across an erasure in the bucket: a database loaded
/// before the `forget` and one loaded after it (from scratch) end up equal,
/// and equal to the JSONL the bucket's segments join into.
#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_loads_across_an_erasure() {
    let moto = Arc::new(tokio::task::spawn_blocking(Moto::start).await.unwrap());
    let bucket = moto.bucket("dm-load-erased");
    let url = format!("s3://{bucket}/dm");
    let server = Arc::new(MockServer::start(world(&[50, 40], 50)).await.unwrap());
    let users = users(2);
    let (m, s, u, out) = (moto.clone(), server.clone(), users.clone(), url.clone());
    let (before, after) = tokio::task::spawn_blocking(move || {
        let cwd = tempfile::tempdir().unwrap();
        let with_moto = |cmd: &mut Command| -> (i32, String, String) {
            m.env(cmd);
            run(cmd)
        };
        let (code, _, stderr) = run(&mut sync(&m, &s, &out, &u, cwd.path()));
        assert_eq!(code, 0, "{stderr}");
        let before = crate::warehouse::Postgres::start();
        let load = |pg: &crate::warehouse::Postgres| {
            let (code, stdout, stderr) =
                with_moto(bin().args(["load", "--from", &out, "--to", &pg.url()]));
            assert_eq!(code, 0, "{stderr}");
            stdout
        };
        load(&before);
        let (code, stdout, stderr) = with_moto(bin().args([
            "forget",
            "--out",
            &out,
            "--user",
            &u[1],
            "--reason",
            "erasure request 7",
        ]));
        assert_eq!(code, 0, "{stdout}{stderr}");
        s.append_messages(ACCOUNT, &u[0], 6);
        let (code, _, stderr) = run(&mut sync(&m, &s, &out, &u[..1], cwd.path()));
        assert_eq!(code, 0, "{stderr}");
        let stdout = load(&before);
        assert!(stdout.contains("40 rows deleted"), "{stdout}");
        let after = crate::warehouse::Postgres::start();
        load(&after);
        (before, after)
    })
    .await
    .unwrap();
    let local = tempfile::tempdir().unwrap();
    moto.mirror(&bucket, "dm", local.path());
    let expected = crate::load::expected(local.path());
    assert_eq!(expected.0.len(), 56);
    assert_eq!(crate::load::tables(&before, local.path()), expected);
    assert_eq!(crate::load::tables(&after, local.path()), expected);
}
