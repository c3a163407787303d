//! Where `load` connects, and how: the connection string and the `PG*`
//! variables read as libpq reads them, TLS as `sslmode` asks (see `tls`),
//! a few attempts while a server restarts, and every failure worded for
//! the person who must act, never with the password or a key.
//!
//! - The URL's own words win over the variables: `sslmode` over
//!   `PGSSLMODE`, `sslrootcert` over `PGSSLROOTCERT`, `sslcert`/`sslkey`
//!   over `PGSSLCERT`/`PGSSLKEY`, `channel_binding` over
//!   `PGCHANNELBINDING`. tokio-postgres knows only three `sslmode` words
//!   and no certificate files, so those four keys are taken out of the
//!   string here and the rest is handed to it unchanged.
//! - `prefer` (the default) tries TLS first and falls back to a plain
//!   connection when the server offers none or the handshake fails, as
//!   libpq does; `require` and stronger never fall back. Over a Unix
//!   socket PostgreSQL speaks no TLS and libpq does not ask for it: the
//!   socket is local, so every mode connects plainly there.
//! - A connection that ends up unencrypted to a host that is neither a
//!   socket nor loopback is warned about: the password and the rows
//!   cross a network in clear.
//! - Exit statuses: a certificate or TLS failure, or a refusal by the
//!   server, is exit 3 (a person must act); an unreachable server, after
//!   `--retry-connect` more attempts, exit 2; a connection lost once
//!   loading has begun is the caller's exit 4.

use std::ops::Range;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::config::{ChannelBinding, Host, SslMode as WireMode};
use tokio_postgres::{Client, Connection};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::tls::{SslMode, TlsSettings, TlsWords};
use crate::api::retry::RetryPolicy;
use crate::error::{Error, Result};

/// Where to connect, resolved from the connection string and the
/// environment.
#[derive(Debug)]
pub struct Target {
    /// Everything but TLS, for tokio-postgres.
    config: tokio_postgres::Config,
    /// The TLS words, resolved.
    pub tls: TlsSettings,
    /// `postgresql://USER@HOST/DB`, without the password.
    pub described: String,
    /// Some host is reached over a network: neither a socket nor loopback.
    remote: bool,
    /// Every host is a Unix socket.
    socket_only: bool,
}

impl Target {
    /// The settings of `url` (a URL or libpq's `key=value` form),
    /// completed by the `PG*` variables that `env` reads.
    pub fn new(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Target> {
        let mut string = ConnString::parse(url)?;
        let mut take = |key: &str, var: &str| string.take(key).or_else(|| env(var));
        let words = TlsWords {
            sslmode: take("sslmode", "PGSSLMODE"),
            sslrootcert: take("sslrootcert", "PGSSLROOTCERT"),
            sslcert: take("sslcert", "PGSSLCERT"),
            sslkey: take("sslkey", "PGSSLKEY"),
        };
        let binding_given = string.has("channel_binding");
        let mut config = tokio_postgres::Config::from_str(&string.rebuilt()).map_err(|e| {
            Error::invalid(
                "--to",
                format!(
                    "not a PostgreSQL connection string ({}): postgresql://USER@HOST:PORT/DB",
                    chain(&e)
                ),
            )
        })?;
        complete(&mut config, env);
        if !binding_given && let Some(word) = env("PGCHANNELBINDING") {
            config.channel_binding(match word.as_str() {
                "disable" => ChannelBinding::Disable,
                "prefer" => ChannelBinding::Prefer,
                "require" => ChannelBinding::Require,
                _ => {
                    return Err(Error::invalid(
                        "--to",
                        format!("PGCHANNELBINDING={word} is not one of disable, prefer, require"),
                    ));
                }
            });
        }
        let tls = TlsSettings::resolve(&words, env("HOME").map(PathBuf::from).as_deref())?;
        if config.get_channel_binding() == ChannelBinding::Require && tls.mode == SslMode::Disable {
            return Err(Error::invalid(
                "--to",
                "channel_binding=require needs TLS: it cannot be used with sslmode=disable",
            ));
        }
        let hosts = config.get_hosts();
        let socket_only =
            config.get_hostaddrs().is_empty() && hosts.iter().all(|h| matches!(h, Host::Unix(_)));
        let remote = hosts.iter().any(|h| !is_local(h))
            || config.get_hostaddrs().iter().any(|a| !a.is_loopback());
        Ok(Target {
            described: describe(&config),
            config,
            tls,
            remote,
            socket_only,
        })
    }
}

/// Fills in what the string left out from the `PG*` variables, and the
/// defaults of this program.
fn complete(config: &mut tokio_postgres::Config, env: &dyn Fn(&str) -> Option<String>) {
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        let host = env("PGHOST").unwrap_or_else(|| "/var/run/postgresql".to_owned());
        config.host(&host);
    }
    if config.get_ports().is_empty()
        && let Some(port) = env("PGPORT").and_then(|p| p.parse().ok())
    {
        config.port(port);
    }
    if config.get_user().is_none() {
        config.user(env("PGUSER").unwrap_or_else(|| "postgres".to_owned()));
    }
    if config.get_password().is_none()
        && let Some(password) = env("PGPASSWORD")
    {
        config.password(password);
    }
    if config.get_dbname().is_none()
        && let Some(db) = env("PGDATABASE")
    {
        config.dbname(db);
    }
    // Shown in pg_stat_activity, where a DBA looks for who holds a lock.
    if config.get_application_name().is_none() {
        config.application_name("xquik-dm");
    }
}

fn is_local(host: &Host) -> bool {
    match host {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    }
}

/// The target as a person reads it: never the password.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => config
            .get_hostaddrs()
            .first()
            .map(ToString::to_string)
            .unwrap_or_default(),
    };
    let port = config
        .get_ports()
        .first()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let user = config.get_user().unwrap_or_default();
    let db = config.get_dbname().unwrap_or(user);
    format!("postgresql://{user}@{host}{port}/{db}")
}

/// A connection string, in either of libpq's forms, with each parameter's
/// place in it so that the ones taken out leave the rest byte for byte.
struct ConnString {
    text: String,
    /// Key, decoded value, and the bytes of `text` the parameter covers.
    params: Vec<(String, String, Range<usize>)>,
}

impl ConnString {
    fn parse(text: &str) -> Result<ConnString> {
        let params = if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            url_params(text)?
        } else {
            keyword_params(text)?
        };
        Ok(ConnString {
            text: text.to_owned(),
            params,
        })
    }

    fn has(&self, key: &str) -> bool {
        self.params.iter().any(|(k, _, _)| k == key)
    }

    /// Takes out every `key`; the last one counts, as in libpq.
    fn take(&mut self, key: &str) -> Option<String> {
        let mut value = None;
        let mut kept = Vec::with_capacity(self.params.len());
        for (k, v, span) in std::mem::take(&mut self.params) {
            match k == key {
                true => {
                    self.text
                        .replace_range(span.clone(), &" ".repeat(span.len()));
                    value = Some(v);
                }
                false => kept.push((k, v, span)),
            }
        }
        self.params = kept;
        value
    }

    /// The string without the parameters taken (blanked, so that the
    /// spans of the others stay valid until here).
    fn rebuilt(&self) -> String {
        match self.text.split_once('?') {
            Some((base, query)) if base.contains("://") => {
                let kept: Vec<&str> = query
                    .split('&')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .collect();
                match kept.is_empty() {
                    true => base.to_owned(),
                    false => format!("{base}?{}", kept.join("&")),
                }
            }
            _ => self.text.clone(),
        }
    }
}

fn malformed(what: &str) -> Error {
    // Never the string itself: it may hold the password.
    Error::invalid(
        "--to",
        format!("not a PostgreSQL connection string ({what}): postgresql://USER@HOST:PORT/DB"),
    )
}

/// The `?key=value&…` parameters of a URL, percent-decoded.
fn url_params(text: &str) -> Result<Vec<(String, String, Range<usize>)>> {
    let Some(start) = text.find('?') else {
        return Ok(Vec::new());
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| malformed("a parameter is not UTF-8"))
    };
    let mut params = Vec::new();
    let mut at = start + 1;
    for piece in text[at..].split('&') {
        let span = at..at + piece.len();
        at = span.end + 1;
        if let Some((key, value)) = piece.split_once('=') {
            params.push((decode(key)?, decode(value)?, span));
        }
    }
    Ok(params)
}

/// libpq's `key = value` form, with its quoting: a value in single
/// quotes, a backslash escaping the next character.
fn keyword_params(text: &str) -> Result<Vec<(String, String, Range<usize>)>> {
    let mut chars = text.char_indices().peekable();
    let mut params = Vec::new();
    let skip_blank = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_blank(&mut chars);
        let Some(&(start, _)) = chars.peek() else {
            return Ok(params);
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|&(_, c)| !c.is_whitespace() && c != '=') {
            key.push(c);
        }
        skip_blank(&mut chars);
        if key.is_empty() || chars.next().is_none_or(|(_, c)| c != '=') {
            return Err(malformed("expected key=value"));
        }
        skip_blank(&mut chars);
        let quoted = chars.next_if(|&(_, c)| c == '\'').is_some();
        let mut value = String::new();
        let mut closed = !quoted;
        while let Some((_, c)) = chars.next() {
            match c {
                '\\' => value.extend(chars.next().map(|(_, c)| c)),
                '\'' if quoted => {
                    closed = true;
                    break;
                }
                c if c.is_whitespace() && !quoted => break,
                c => value.push(c),
            }
        }
        if !closed {
            return Err(malformed("an unterminated quoted value"));
        }
        let end = chars.peek().map_or(text.len(), |&(i, _)| i);
        params.push((key, value, start..end));
    }
}

/// An open connection and the task that drives it.
pub struct Session {
    /// The client.
    pub client: Client,
    driver: tokio::task::JoinHandle<()>,
}

impl Session {
    fn spawn<S, T>(client: Client, connection: Connection<S, T>) -> Session
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // The connection's own end (an error included) reaches the client
        // as the error of the request in flight, or `connection closed`.
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Session { client, driver }
    }

    /// Closes the connection and waits for its task.
    pub async fn close(self) {
        drop(self.client);
        let _ = self.driver.await;
    }
}

/// How the bytes travel, from the mode and the hosts.
enum Wire {
    Plain,
    Tls(MakeRustlsConnect),
    TlsThenPlain(MakeRustlsConnect),
}

/// Connects, trying `retries` more times with backoff while the server
/// cannot be reached or is starting up (a restart, a failover).
pub async fn open(target: &Target, retries: u32) -> Result<Session> {
    let wire = match target.tls.mode {
        _ if target.socket_only => Wire::Plain,
        SslMode::Disable => Wire::Plain,
        SslMode::Prefer => Wire::TlsThenPlain(MakeRustlsConnect::new(target.tls.client_config()?)),
        _ => Wire::Tls(MakeRustlsConnect::new(target.tls.client_config()?)),
    };
    let policy = RetryPolicy {
        max_attempts: retries.saturating_add(1),
        base_delay: Duration::from_millis(500),
        max_delay: Duration::from_secs(8),
        ..RetryPolicy::default()
    };
    let mut rng = fastrand::Rng::new();
    let mut attempt = 1;
    loop {
        match connect_once(target, &wire).await {
            Ok((session, encrypted)) => {
                if !encrypted && target.remote {
                    tracing::warn!(
                        target = target.described.as_str(),
                        "connected WITHOUT TLS (sslmode={}): the password and the rows cross the network in clear; use sslmode=verify-full",
                        target.tls.mode.word()
                    );
                }
                return Ok(session);
            }
            Err(e) if attempt <= retries && is_transient(&e) => {
                let wait = policy.delay(attempt, None, &mut rng);
                tracing::warn!(
                    target = target.described.as_str(),
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    "the database cannot be reached yet ({}); trying again",
                    chain(&e)
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(e) => return Err(connect_error(target, &e, attempt)),
        }
    }
}

/// One connection attempt; whether it is encrypted.
async fn connect_once(
    target: &Target,
    wire: &Wire,
) -> std::result::Result<(Session, bool), tokio_postgres::Error> {
    let plain = || async {
        let mut config = target.config.clone();
        let (client, connection) = config
            .ssl_mode(WireMode::Disable)
            .connect(tokio_postgres::NoTls)
            .await?;
        Ok((Session::spawn(client, connection), false))
    };
    let encrypted = |tls: &MakeRustlsConnect| {
        let (mut config, tls) = (target.config.clone(), tls.clone());
        async move {
            let (client, connection) = config.ssl_mode(WireMode::Require).connect(tls).await?;
            Ok((Session::spawn(client, connection), true))
        }
    };
    match wire {
        Wire::Plain => plain().await,
        Wire::Tls(tls) => encrypted(tls).await,
        Wire::TlsThenPlain(tls) => match encrypted(tls).await {
            // libpq's `prefer`: no TLS offered, or a handshake that failed,
            // and the next try is without TLS.
            Err(e) if is_tls_failure(&e) && !is_transient(&e) => {
                tracing::debug!(reason = chain(&e), "sslmode=prefer: no TLS, trying without");
                plain().await
            }
            other => other,
        },
    }
}

/// The error and its causes, on one line.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

/// The first I/O error among `e` and its causes.
fn io_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        next = err.source();
    }
    None
}

/// The rustls error among `e` and its causes: tokio-rustls wraps it in an
/// I/O error, whose `source` skips it, hence `get_ref`.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(e);
    while let Some(err) = next {
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if let Some(found) = err.downcast_ref::<rustls::Error>().or(inner) {
            return Some(found);
        }
        next = err.source();
    }
    None
}

/// SQLSTATEs of a server that is going away or not there yet: shut down
/// by an administrator (`pg_ctl restart -m fast`), crashed, starting up
/// or shutting down, and class 08, connection exceptions.
fn is_going_away(code: &str) -> bool {
    matches!(code, "57P01" | "57P02" | "57P03") || code.starts_with("08")
}

/// Whether trying again later can succeed unchanged: the server is down,
/// restarting or dropped the connection. Never a refusal, a certificate
/// or a bad setting.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    use std::io::ErrorKind as K;
    if let Some(db) = e.as_db_error() {
        return is_going_away(db.code().code());
    }
    if rustls_error(e).is_some() {
        return false;
    }
    e.is_closed()
        || io_error(e).is_some_and(|io| {
            matches!(
                io.kind(),
                K::ConnectionRefused
                    | K::NotFound
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::UnexpectedEof
                    | K::BrokenPipe
                    | K::TimedOut
            )
        })
}

/// Whether an error on an open connection means the connection is gone
/// (rather than a statement refused on a live one).
pub fn is_lost(e: &tokio_postgres::Error) -> bool {
    is_transient(e) || (e.as_db_error().is_none() && io_error(e).is_some())
}

/// What a lost connection's end looked like, for the report.
pub fn lost_reason(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => chain(e),
    }
}

/// tokio-postgres' error kinds are private; its TLS kind says this.
fn is_tls_failure(e: &tokio_postgres::Error) -> bool {
    e.to_string() == "error performing TLS handshake"
}

/// A failed connection, worded for the person who must act.
fn connect_error(target: &Target, e: &tokio_postgres::Error, attempts: u32) -> Error {
    if let Some(reason) = tls_reason(target, e) {
        return Error::Storage {
            path: target.described.clone().into(),
            reason,
        };
    }
    // tokio-postgres' authentication errors (channel binding refused,
    // SASL failures) are not database errors, but refusals all the same.
    if e.as_db_error().is_some() || e.to_string() == "authentication error" {
        return session_error(target, e);
    }
    let tries = match attempts {
        1 => String::new(),
        n => format!(" ({n} attempts)"),
    };
    Error::invalid(
        "--to",
        format!(
            "{}: cannot reach the database: {}{tries}",
            target.described,
            chain(e)
        ),
    )
}

/// An error of the open connection: refused (authentication,
/// permissions) is exit 3; anything else is worded as unreachable.
pub fn session_error(target: &Target, e: &tokio_postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) => Error::Storage {
            path: target.described.clone().into(),
            reason: format!(
                "the database refused: {} ({})",
                db.message(),
                db.code().code()
            ),
        },
        None if e.to_string() == "authentication error" => Error::Storage {
            path: target.described.clone().into(),
            reason: format!("the database refused: {}", chain(e)),
        },
        None => Error::invalid(
            "--to",
            format!(
                "{}: cannot reach the database: {}",
                target.described,
                chain(e)
            ),
        ),
    }
}

/// The TLS failure in `e`, if it is one, in one line.
fn tls_reason(target: &Target, e: &tokio_postgres::Error) -> Option<String> {
    let mode = target.tls.mode.word();
    if let Some(problem) = rustls_error(e) {
        let rule = match target.tls.mode {
            SslMode::Prefer | SslMode::Require => {
                " checks the chain when a root certificate file is present, as libpq"
            }
            _ => "",
        };
        return Some(format!(
            "{} (sslmode={mode}{rule}; {})",
            certificate_problem(problem),
            target.tls.roots
        ));
    }
    // Said only in words: the error's kind is private.
    if chain(e).contains("server does not support TLS") {
        return Some(format!(
            "the server offers no TLS, and sslmode={mode} does not allow a connection without it"
        ));
    }
    None
}

fn certificate_problem(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    let date = |t: &rustls::pki_types::UnixTime| {
        i64::try_from(t.as_secs())
            .ok()
            .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
            .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default()
    };
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "the server's certificate is not signed by a trusted CA (unknown issuer)".to_owned()
        }
        rustls::Error::InvalidCertificate(C::NotValidForNameContext {
            expected,
            presented,
        }) => {
            // rustls lists the names as `DnsName("db.example.com")`.
            let bare = |name: &'_ String| {
                name.split_once('(')
                    .and_then(|(_, inner)| inner.strip_suffix(')'))
                    .unwrap_or(name)
                    .trim_matches('"')
                    .to_owned()
            };
            let names: Vec<String> = presented.iter().map(bare).collect();
            format!(
                "the server's certificate is for {}, not {} (name mismatch)",
                names.join(", "),
                expected.to_str()
            )
        }
        rustls::Error::InvalidCertificate(C::NotValidForName) => {
            "the server's certificate is not for this host name (name mismatch)".to_owned()
        }
        rustls::Error::InvalidCertificate(C::ExpiredContext { not_after, .. }) => {
            format!("the server's certificate expired on {}", date(not_after))
        }
        rustls::Error::InvalidCertificate(C::Expired) => {
            "the server's certificate has expired".to_owned()
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the server's certificate is not valid yet (check this machine's clock)".to_owned()
        }
        rustls::Error::AlertReceived(alert) => format!(
            "the server ended the TLS handshake ({alert:?}): it may want a client certificate it trusts (sslcert, sslkey)"
        ),
        other => format!("the TLS handshake failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_tls_keys_are_taken_out_of_a_url_and_the_rest_is_kept() {
        let mut s = ConnString::parse(
            "postgresql://u:p%40ss@db.example.com:5433/app?sslmode=verify-full&application_name=a%20b&sslrootcert=%2Ftmp%2Fca.pem",
        )
        .unwrap();
        assert_eq!(s.take("sslmode").as_deref(), Some("verify-full"));
        assert_eq!(s.take("sslrootcert").as_deref(), Some("/tmp/ca.pem"));
        assert_eq!(s.take("sslcert"), None);
        assert_eq!(
            s.rebuilt(),
            "postgresql://u:p%40ss@db.example.com:5433/app?application_name=a%20b"
        );
        let mut only = ConnString::parse("postgres://h/db?sslmode=require").unwrap();
        assert_eq!(only.take("sslmode").as_deref(), Some("require"));
        assert_eq!(only.rebuilt(), "postgres://h/db");
    }

    #[test]
    fn the_tls_keys_are_taken_out_of_the_keyword_form_with_its_quoting() {
        let mut s = ConnString::parse(
            r"host=db port=5433 password='it''s' sslmode = verify-ca sslrootcert='/a b/c\'d.pem' user=x",
        );
        // `'it''s'` is not libpq quoting (a backslash escapes): refused
        // without quoting the string.
        assert!(s.is_err());
        s = ConnString::parse(
            r"host=db port=5433 password='it\'s' sslmode = verify-ca sslrootcert='/a b/c\'d.pem' user=x sslmode=require",
        );
        let mut s = s.unwrap();
        assert_eq!(s.take("sslmode").as_deref(), Some("require"));
        assert_eq!(s.take("sslrootcert").as_deref(), Some("/a b/c'd.pem"));
        let config = tokio_postgres::Config::from_str(&s.rebuilt()).unwrap();
        assert_eq!(config.get_user(), Some("x"));
        assert_eq!(config.get_password(), Some(&b"it's"[..]));
        assert_eq!(config.get_ports(), [5433]);
        let e = ConnString::parse("host=db password='secret").err().unwrap();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn the_url_wins_over_the_variables_and_the_variables_fill_in() {
        let vars = [
            ("PGSSLMODE", "require"),
            ("PGCHANNELBINDING", "require"),
            ("PGPASSWORD", "pw"),
        ];
        let t = Target::new("host=127.0.0.1 port=5999 sslmode=disable", &env(&vars));
        // channel_binding=require (from the variable) and sslmode=disable
        // (from the URL) cannot both hold.
        assert!(t.unwrap_err().to_string().contains("channel_binding"));
        let t = Target::new("host=127.0.0.1 port=5999", &env(&vars)).unwrap();
        assert_eq!(t.tls.mode, SslMode::Require);
        assert_eq!(t.config.get_channel_binding(), ChannelBinding::Require);
        assert_eq!(t.config.get_password(), Some(&b"pw"[..]));
        assert_eq!(t.described, "postgresql://postgres@127.0.0.1:5999/postgres");
        let t = Target::new("postgresql://h/db?channel_binding=disable", &env(&vars)).unwrap();
        assert_eq!(t.config.get_channel_binding(), ChannelBinding::Disable);
    }

    #[test]
    fn loopback_and_sockets_are_local_and_names_are_not() {
        let local = |url: &str| !Target::new(url, &env(&[])).unwrap().remote;
        assert!(local("host=/tmp"));
        assert!(local("host=localhost"));
        assert!(local("host=127.0.0.2"));
        assert!(local("postgresql://[::1]:5432/db"));
        assert!(!local("host=db.example.com"));
        assert!(!local("host=10.0.0.5"));
        // The name is what the URL means elsewhere: db.test is a network
        // host even where hostaddr says loopback.
        assert!(!local("host=db.test hostaddr=127.0.0.1"));
        assert!(
            Target::new("host=/tmp sslmode=require", &env(&[]))
                .unwrap()
                .socket_only
        );
    }

    #[test]
    fn going_away_codes_are_transient() {
        for code in ["57P01", "57P02", "57P03", "08006", "08001"] {
            assert!(is_going_away(code), "{code}");
        }
        for code in ["28P01", "28000", "42501", "23505", "53300"] {
            assert!(!is_going_away(code), "{code}");
        }
    }
}
