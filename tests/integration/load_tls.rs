//! `xquik-dm load` over TLS and through a restart, against the machine's
//! PostgreSQL 15 listening on 127.0.0.1 with certificates the test makes
//! with `openssl`: a cluster with `ssl = on`, `hostssl … scram-sha-256`
//! and `hostnossl … reject` (and `cert` for one client-certificate user),
//! and a cluster without TLS for the downgrade cases. The server name is
//! `db.test`, reached through `hostaddr=127.0.0.1`: no DNS, loopback only.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use xquik_dm::commands::sync;
use xquik_dm::mock::MockServer;

use crate::cli::{bin, run};
use crate::load::{expected, tables_by};
use crate::warehouse::Postgres;
use crate::{sync_options, users, world};

/// The `postgres` user's password on every cluster here.
const PASSWORD: &str = "pw-7c1e9a0f-never-printed";
/// The lock `load` takes, held by a test to catch the loader waiting.
const LOAD_LOCK: i64 = 7813021906;
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The test's certificates, made by `openssl` (EC P-256 keys: quick to
/// make, and signed with ECDSA-SHA256, which channel binding can hash).
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        for ca in ["ca", "other-ca"] {
            pki.openssl(&format!(
                "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                 -keyout {ca}.key -out {ca}.pem -days 2 -subj /CN=xquik-test-{ca}"
            ));
        }
        for (file, name) in [("server", "db.test"), ("client", "loader")] {
            pki.request(file, name);
            pki.openssl(&format!(
                "x509 -req -in {file}.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                 -out {file}.pem -days 2 -extfile {file}.ext"
            ));
        }
        // Valid in January 2020: `openssl ca` is the one command of
        // OpenSSL 3.0 that sets both dates.
        pki.request("expired", "db.test");
        std::fs::write(
            pki.path("ca.cnf"),
            "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\nnew_certs_dir = .\n\
             serial = serial.txt\ndefault_md = sha256\npolicy = any\n[any]\ncommonName = supplied\n",
        )
        .unwrap();
        std::fs::write(pki.path("index.txt"), "").unwrap();
        std::fs::write(pki.path("serial.txt"), "01\n").unwrap();
        pki.openssl(
            "ca -batch -notext -config ca.cnf -cert ca.pem -keyfile ca.key -in expired.csr \
             -out expired.pem -extfile expired.ext -startdate 20200101000000Z -enddate 20200201000000Z",
        );
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `openssl` with these words, in the folder.
    fn openssl(&self, words: &str) {
        let mut openssl = Command::new("openssl");
        output(
            openssl
                .current_dir(self.dir.path())
                .args(words.split_whitespace()),
        );
    }

    /// A key and a signing request for `name` (the CN; the extension file
    /// gives the SAN).
    fn request(&self, file: &str, name: &str) {
        std::fs::write(
            self.path(&format!("{file}.ext")),
            format!("subjectAltName=DNS:{name}\n"),
        )
        .unwrap();
        self.openssl(&format!(
            "req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
             -keyout {file}.key -out {file}.csr -subj /CN={name}"
        ));
    }
}

/// A PostgreSQL 15 cluster on 127.0.0.1 (and its private socket), with
/// TLS or without; stopped on drop.
struct Cluster {
    pg: Postgres,
    port: u16,
    /// The server's options, for `pg_ctl start` after a stop.
    options: String,
}

impl Cluster {
    /// `pki` given: TLS with its `server` certificate, `hostssl` only.
    fn start(pki: Option<&Pki>) -> Cluster {
        let pg = Postgres::start_with(Some(PASSWORD));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut options = format!(
            "-k {} -c listen_addresses=127.0.0.1 -p {port}",
            pg.socket.display()
        );
        if let Some(pki) = pki {
            for file in ["server.pem", "server.key", "ca.pem"] {
                let to = pg.socket.join(file);
                std::fs::copy(pki.path(file), &to).unwrap();
                chown_postgres(&to);
            }
            std::fs::write(
                pg.socket.join("data/pg_hba.conf"),
                "local all all scram-sha-256\n\
                 hostssl all loader 127.0.0.1/32 cert\n\
                 hostssl all all 127.0.0.1/32 scram-sha-256\n\
                 hostnossl all all 127.0.0.1/32 reject\n",
            )
            .unwrap();
            let dir = pg.socket.display();
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={dir}/server.pem -c ssl_key_file={dir}/server.key -c ssl_ca_file={dir}/ca.pem"
            ));
        }
        let cluster = Cluster { pg, port, options };
        cluster.pg_ctl(&["restart", "-m", "fast"]);
        cluster
    }

    /// `pg_ctl ACTION` as the `postgres` user, waiting for it.
    fn pg_ctl(&self, action: &[&str]) {
        let status = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(Path::new(PG_BIN).join("pg_ctl"))
            .arg("-D")
            .arg(self.pg.socket.join("data"))
            .args(["-w", "-o", &self.options, "-l"])
            .arg(self.pg.socket.join("log"))
            .args(action)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl {action:?} failed");
    }

    /// A connection string to `db.test` on this cluster, plus `extra`.
    fn url(&self, extra: &str) -> String {
        format!(
            "host=db.test hostaddr=127.0.0.1 port={} user=postgres dbname=postgres {extra}",
            self.port
        )
    }

    /// The one value `sql` returns, from the `postgres` database.
    fn query(&self, sql: &str) -> String {
        self.query_in("postgres", sql)
    }

    fn query_in(&self, db: &str, sql: &str) -> String {
        let port = self.port.to_string();
        output(self.psql().args(["-p", &port, "-d", db, "-c", sql]))
    }

    fn psql(&self) -> Command {
        self.pg.psql(self.pg.socket.as_path())
    }

    /// The ledger's runs; 0 before a load created it.
    fn runs_loaded(&self) -> u64 {
        let port = self.port.to_string();
        let sql = "SELECT count(*) FROM xquik_dm.loaded_runs";
        let out = self.psql().args(["-p", &port, "-c", sql]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// Whether `load` ever created its tables here.
    fn has_tables(&self) -> bool {
        self.query("SELECT to_regclass('xquik_dm.loaded_runs') IS NOT NULL") == "t"
    }
}

/// What `command` prints, trimmed; it must succeed.
fn output(command: &mut Command) -> String {
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{command:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn chown_postgres(path: &Path) {
    let status = Command::new("chown")
        .arg("postgres:postgres")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// `xquik-dm load --json` from `out` into `url`, with no `PG*` TLS
/// variable and a home without `~/.postgresql`.
fn load_command(out: &Path, url: &str, home: &Path) -> Command {
    let mut cmd = bin();
    cmd.args(["load", "--json", "--from"])
        .arg(out)
        .arg("--to")
        .arg(url)
        .env("HOME", home);
    for var in [
        "PGSSLMODE",
        "PGSSLROOTCERT",
        "PGSSLCERT",
        "PGSSLKEY",
        "PGCHANNELBINDING",
        "PGPASSWORD",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn load(out: &Path, url: &str, home: &Path) -> (i32, Value, String) {
    let (code, stdout, stderr) = run(&mut load_command(out, url, home));
    (
        code,
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stderr,
    )
}

/// A folder of sealed runs: `conversations` of `size` messages, each
/// run taking `pages` pages of 1,000 of each conversation.
async fn synced(conversations: usize, size: u64, pages: u64) -> (tempfile::TempDir, PathBuf) {
    let server = MockServer::start(world(&vec![size; conversations], 1000))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut options = sync_options(&server, &out, &users(conversations));
    options.max_pages = Some(pages);
    // One commit per run: fewer, larger files are quicker to write.
    options.commit_interval = Duration::from_secs(600);
    while sync::run(options.clone()).await.unwrap().exit_code() != 0 {}
    (dir, out)
}

/// Polls `sql` on `client` until it returns a row, for at most 20 s.
async fn wait_for_row(client: &tokio_postgres::Client, sql: &str) -> tokio_postgres::Row {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(row) = client.query(sql, &[]).await.unwrap().into_iter().next() {
            return row;
        }
        assert!(Instant::now() < deadline, "no row for {sql}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The loader's connection, seen by the server while it waits for the
/// lock the test holds: encrypted (`pg_stat_ssl.ssl`), then the load
/// finishes and the tables equal the JSONL.
#[tokio::test(flavor = "multi_thread")]
async fn verify_full_loads_over_tls_and_the_server_sees_an_encrypted_connection() {
    let pki = Pki::new();
    let cluster = Cluster::start(Some(&pki));
    let (_dir, out) = synced(2, 300, 1).await;
    let (client, connection) = tokio_postgres::connect(
        &format!(
            "host={} port={} user=postgres password={PASSWORD}",
            cluster.pg.socket.display(),
            cluster.port
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOAD_LOCK])
        .await
        .unwrap();
    let ca = pki.path("ca.pem");
    let url = cluster.url(&format!(
        "password={PASSWORD} sslmode=verify-full sslrootcert={}",
        ca.display()
    ));
    let loader = load_command(&out, &url, pki.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = wait_for_row(
        &client,
        "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.application_name = 'xquik-dm' AND a.wait_event_type = 'Lock'",
    )
    .await;
    let (ssl, version): (bool, Option<String>) = (seen.get(0), seen.get(1));
    assert!(ssl, "the loader's connection is not encrypted");
    assert!(version.is_some_and(|v| v.starts_with("TLSv1.")));
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOAD_LOCK])
        .await
        .unwrap();
    let finished = loader.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&finished.stderr);
    assert_eq!(finished.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains(PASSWORD));
    let report: Value = serde_json::from_slice(&finished.stdout).unwrap();
    assert_eq!(report["runs_loaded"], 1);
    assert_eq!(tables_by(|sql| cluster.query(sql)), expected(&out));

    // channel_binding=require: SCRAM-SHA-256-PLUS, bound to the TLS
    // channel, or no connection at all.
    let (code, again, stderr) = load(
        &out,
        &format!("{url} channel_binding=require"),
        pki.dir.path(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(again["runs_loaded"], 0);

    // sslrootcert=system: the machine's roots, here the test CA through
    // SSL_CERT_FILE, which OpenSSL (and so libpq) reads too; verify-full
    // by default.
    let system = cluster.url(&format!("password={PASSWORD} sslrootcert=system"));
    let (code, _, stderr) =
        run(load_command(&out, &system, pki.dir.path()).env("SSL_CERT_FILE", &ca));
    assert_eq!(code, 0, "{stderr}");
    let other = system.replace("host=db.test", "host=other.test");
    let (code, _, stderr) =
        run(load_command(&out, &other, pki.dir.path()).env("SSL_CERT_FILE", &ca));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("name mismatch"), "{stderr}");
}

/// The `hostssl … cert` user: refused without a client certificate
/// (exit 3, the server's reason), loaded with one.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_the_server_demands_is_sent() {
    let pki = Pki::new();
    let cluster = Cluster::start(Some(&pki));
    cluster.query("CREATE ROLE loader LOGIN");
    cluster.query("CREATE DATABASE certdb OWNER loader");
    let (_dir, out) = synced(1, 200, 1).await;
    let ca = pki.path("ca.pem");
    let url = format!(
        "host=db.test hostaddr=127.0.0.1 port={} user=loader dbname=certdb sslmode=verify-full sslrootcert={}",
        cluster.port,
        ca.display()
    );
    let (code, _, stderr) = load(&out, &url, pki.dir.path());
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
    let with_cert = format!(
        "{url} sslcert={} sslkey={}",
        pki.path("client.pem").display(),
        pki.path("client.key").display()
    );
    let (code, report, stderr) = load(&out, &with_cert, pki.dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["runs_loaded"], 1);
    assert_eq!(
        cluster.query_in("certdb", "SELECT count(*) FROM xquik_dm.messages"),
        "200"
    );
}

/// Each failure exits 3 with one line that says what is wrong, and
/// loads nothing; neither the password nor a key appears.
#[tokio::test(flavor = "multi_thread")]
async fn certificate_and_tls_failures_exit_3_and_load_nothing() {
    let pki = Pki::new();
    let (tls, plain) = (Cluster::start(Some(&pki)), Cluster::start(None));
    let (_dir, out) = synced(1, 50, 1).await;
    let home = pki.dir.path();
    let root = |ca: &str| format!("password={PASSWORD} sslrootcert={}", pki.path(ca).display());
    let cases = [
        (
            tls.url(&format!("{} sslmode=verify-ca", root("other-ca.pem"))),
            "not signed by a trusted CA",
        ),
        // libpq's rule: `require` with a root certificate file checks the
        // chain as verify-ca does.
        (
            tls.url(&format!("{} sslmode=require", root("other-ca.pem"))),
            "not signed by a trusted CA",
        ),
        (
            tls.url(&format!("{} sslmode=verify-full", root("ca.pem")))
                .replace("host=db.test", "host=other.test"),
            "is for db.test, not other.test",
        ),
        (
            plain.url(&format!("password={PASSWORD} sslmode=require")),
            "the server offers no TLS",
        ),
        // A server that accepts only TLS, and a client that will not.
        (
            tls.url(&format!("password={PASSWORD} sslmode=disable")),
            "no encryption",
        ),
    ];
    for (url, says) in &cases {
        let (code, _, stderr) = load(&out, url, home);
        assert_eq!(code, 3, "{url}: {stderr}");
        assert!(stderr.contains(says), "{url}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(!stderr.contains(PASSWORD), "{stderr}");
    }
    // `require` without a root file encrypts and checks nothing, as libpq.
    let (code, _, stderr) = load(
        &out,
        &tls.url(&format!("password={PASSWORD} sslmode=require")),
        home,
    );
    assert_eq!(code, 0, "{stderr}");
    tls.query("DROP SCHEMA xquik_dm CASCADE");

    // An expired certificate, in place of the good one.
    for ext in ["pem", "key"] {
        let to = tls.pg.socket.join(format!("server.{ext}"));
        std::fs::copy(pki.path(&format!("expired.{ext}")), &to).unwrap();
    }
    tls.query("SELECT pg_reload_conf()");
    let url = tls.url(&format!("{} sslmode=verify-ca", root("ca.pem")));
    let deadline = Instant::now() + Duration::from_secs(10);
    let stderr = loop {
        let (code, _, stderr) = load(&out, &url, home);
        if stderr.contains("expired") || Instant::now() > deadline {
            assert_eq!(code, 3, "{stderr}");
            break stderr;
        }
        // The server has not read the new certificate yet.
        assert_eq!(code, 0, "{stderr}");
        tls.query("DROP SCHEMA xquik_dm CASCADE");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        stderr.contains("the server's certificate expired on 2020-02-01"),
        "{stderr}"
    );
    for key in ["expired.key", "client.key", "server.key"] {
        let text = std::fs::read_to_string(pki.path(key)).unwrap();
        for line in text.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!stderr.contains(line), "{stderr}");
        }
    }
    assert!(!tls.has_tables());
    assert!(!plain.has_tables());
}

/// `prefer` (the default) against a server without TLS: loaded, with a
/// warning for a host name that is not loopback, none for 127.0.0.1.
#[tokio::test(flavor = "multi_thread")]
async fn prefer_loads_from_a_server_without_tls_with_a_warning() {
    let home = tempfile::tempdir().unwrap();
    let plain = Cluster::start(None);
    let (_dir, out) = synced(1, 120, 1).await;
    let (code, report, stderr) = load(
        &out,
        &plain.url(&format!("password={PASSWORD}")),
        home.path(),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(report["runs_loaded"], 1);
    assert!(stderr.contains("WITHOUT TLS"), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    assert_eq!(tables_by(|sql| plain.query(sql)), expected(&out));
    let local = format!(
        "host=127.0.0.1 port={} user=postgres password={PASSWORD} sslmode=prefer",
        plain.port
    );
    let (code, _, stderr) = load(&out, &local, home.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("WITHOUT TLS"), "{stderr}");
}

/// `pg_ctl restart -m fast` at random moments of a 200,000-row load over
/// TLS, each after a run or more was loaded: each cut load exits 4 with
/// the runs before the cut loaded and the ledger equal to the tables; a
/// load started while the server is down connects once it is back
/// (`--retry-connect`), and the tables and the ledger are then exact.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_restarting_mid_load_cuts_it_at_a_whole_run_and_the_rerun_finishes() {
    let pki = Pki::new();
    let cluster = Cluster::start(Some(&pki));
    // 4 conversations of 50,000: 10 runs of 20,000 rows.
    let (dir, out) = synced(4, 50_000, 5).await;
    let url = cluster.url(&format!(
        "password={PASSWORD} sslmode=verify-full sslrootcert={}",
        pki.path("ca.pem").display()
    ));
    let home = pki.dir.path();
    let mut rng = fastrand::Rng::with_seed(22);
    let consistent = "SELECT (SELECT coalesce(sum(rows_inserted), 0) FROM xquik_dm.loaded_runs)
        = (SELECT count(*) FROM xquik_dm.messages) + (SELECT count(*) FROM xquik_dm.sends)";
    for round in 0..3 {
        let before = cluster.runs_loaded();
        let mut loader = load_command(&out, &url, home)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A run loaded, then a random moment of the next one.
        let deadline = Instant::now() + Duration::from_secs(30);
        while cluster.runs_loaded() == before {
            assert!(Instant::now() < deadline, "round {round}: no run loaded");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(rng.u64(0..300)));
        assert!(
            loader.try_wait().unwrap().is_none(),
            "round {round}: the load ended first"
        );
        cluster.pg_ctl(&["restart", "-m", "fast"]);
        let finished = loader.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&finished.stderr);
        assert_eq!(finished.status.code(), Some(4), "round {round}: {stderr}");
        let report: Value = serde_json::from_slice(&finished.stdout).unwrap();
        assert!(report["interrupted"]["run_id"].is_string(), "{report}");
        assert_eq!(
            cluster.runs_loaded(),
            before + report["runs_loaded"].as_u64().unwrap()
        );
        assert_eq!(cluster.query(consistent), "t", "round {round}");
    }
    // Down when the load starts, back while it tries again.
    cluster.pg_ctl(&["stop", "-m", "fast"]);
    let log = dir.path().join("retry.log");
    let loader = load_command(&out, &url, home)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("cannot be reached yet")
    {
        assert!(Instant::now() < deadline, "the loader never retried");
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.pg_ctl(&["start"]);
    let finished = loader.wait_with_output().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(finished.status.code(), Some(0), "{stderr}");
    let report: Value = serde_json::from_slice(&finished.stdout).unwrap();
    assert_eq!(report["rows_skipped"], 0);
    assert_eq!(tables_by(|sql| cluster.query(sql)), expected(&out));
    let chain = std::fs::read_to_string(out.join("audit/chain.jsonl")).unwrap();
    assert_eq!(
        cluster.query(
            "SELECT count(*), sum(rows_inserted), sum(rows_present), max(seq) FROM xquik_dm.loaded_runs"
        ),
        format!("{0}|200000|0|{0}", chain.lines().count())
    );
}
