//! TLS for `load`: libpq's `sslmode` words resolved into what the handshake
//! checks, and the rustls client configuration (ring, the same provider as
//! every other connection of this program) that checks it.
//!
//! What each mode means, as in libpq
//! (<https://www.postgresql.org/docs/current/libpq-ssl.html>):
//!
//! | `sslmode`     | encrypted          | server certificate checked                 |
//! |---------------|--------------------|--------------------------------------------|
//! | `disable`     | never              | —                                          |
//! | `prefer`      | if the server can  | only if a root certificate file is present |
//! | `require`     | always             | only if a root certificate file is present |
//! | `verify-ca`   | always             | chain to `sslrootcert`, and dates          |
//! | `verify-full` | always             | chain, dates, and the host name            |
//!
//! Owns neither the connection string nor the connection: `connect` reads
//! the words and opens the socket; this module turns settings into a
//! [`rustls::ClientConfig`], reading the certificate and key files. No
//! error made here quotes a file's contents: PEM parse errors can carry a
//! line of the file, and that line may be part of a private key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::{Error, Result};

/// libpq's `sslmode` words, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it; libpq's default.
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS, and the server's certificate chains to a trusted root.
    VerifyCa,
    /// As `verify-ca`, and the certificate names the host.
    VerifyFull,
}

impl SslMode {
    /// Parses one of libpq's words.
    pub fn parse(word: &str) -> Result<SslMode> {
        match word {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            // libpq's `allow` tries without TLS first: a downgrade by
            // design, which this loader does not offer.
            other => Err(Error::invalid(
                "--to",
                format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                ),
            )),
        }
    }

    /// The word, as libpq spells it.
    pub fn word(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// None: the certificate is not checked (`prefer`/`require` with no
    /// root certificate file).
    Unchecked,
    /// The certificates in this PEM file.
    File(PathBuf),
    /// The machine's trusted roots (`sslrootcert=system`).
    System,
}

impl std::fmt::Display for Roots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Roots::Unchecked => f.write_str("no root certificate"),
            Roots::File(path) => write!(f, "sslrootcert={}", path.display()),
            Roots::System => f.write_str("the system's roots"),
        }
    }
}

/// The TLS half of the connection settings, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The mode asked for.
    pub mode: SslMode,
    /// What the server's certificate is checked against.
    pub roots: Roots,
    /// A client certificate chain and its key, both PEM files.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The TLS words as given (connection string first, `PG*` variables
/// second), before they are resolved.
#[derive(Debug, Clone, Default)]
pub struct TlsWords {
    /// `sslmode` / `PGSSLMODE`.
    pub sslmode: Option<String>,
    /// `sslrootcert` / `PGSSLROOTCERT`.
    pub sslrootcert: Option<String>,
    /// `sslcert` / `PGSSLCERT`.
    pub sslcert: Option<String>,
    /// `sslkey` / `PGSSLKEY`.
    pub sslkey: Option<String>,
}

impl TlsSettings {
    /// Resolves the words as libpq does; `home` is where `~/.postgresql/`
    /// lives, for libpq's default file names.
    pub fn resolve(words: &TlsWords, home: Option<&Path>) -> Result<TlsSettings> {
        let default = |name: &str| home.map(|h| h.join(".postgresql").join(name));
        let system = words.sslrootcert.as_deref() == Some("system");
        // libpq 16: `sslrootcert=system` makes verify-full the default, and
        // refuses anything weaker, because the public roots vouch for any
        // name they signed: only the name check makes them mean something.
        let mode = match words.sslmode.as_deref() {
            Some(word) => SslMode::parse(word)?,
            None if system => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if system && mode != SslMode::VerifyFull {
            return Err(Error::invalid(
                "--to",
                format!(
                    "weak sslmode={} may not be used with sslrootcert=system (use verify-full)",
                    mode.word()
                ),
            ));
        }
        if mode == SslMode::Disable {
            return Ok(TlsSettings {
                mode,
                roots: Roots::Unchecked,
                client: None,
            });
        }
        // libpq's default root file is ~/.postgresql/root.crt.
        let file = words
            .sslrootcert
            .as_deref()
            .map(PathBuf::from)
            .or_else(|| default("root.crt"));
        let roots = match file {
            _ if system => Roots::System,
            Some(file) if file.exists() => Roots::File(file),
            Some(_) | None => Roots::Unchecked,
        };
        if roots == Roots::Unchecked && mode >= SslMode::VerifyCa {
            let file = words
                .sslrootcert
                .as_deref()
                .unwrap_or("~/.postgresql/root.crt");
            return Err(Error::invalid(
                "--to",
                format!(
                    "root certificate file {file} does not exist: sslmode={} needs the CA that signed the server's certificate (sslrootcert=FILE, or sslrootcert=system for the machine's roots)",
                    mode.word()
                ),
            ));
        }
        let client = client_files(words, default("postgresql.crt"), default("postgresql.key"))?;
        Ok(TlsSettings {
            mode,
            roots,
            client,
        })
    }

    /// What the handshake checks. libpq's rule, kept for its users'
    /// sake: with a root certificate file present, `require` (and
    /// `prefer`) check the chain as `verify-ca` does.
    pub fn check(&self) -> Check {
        match (self.mode, &self.roots) {
            (SslMode::VerifyFull, _) => Check::ChainAndName,
            (_, Roots::Unchecked) => Check::Nothing,
            _ => Check::Chain,
        }
    }

    /// The rustls configuration that makes the checks of [`Self::check`],
    /// with the client certificate when there is one.
    pub fn client_config(&self) -> Result<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = match (self.check(), &self.roots) {
            (Check::Nothing, _) | (_, Roots::Unchecked) => None,
            (_, Roots::File(path)) => Some(roots_from_file(path)?),
            (_, Roots::System) => Some(system_roots()?),
        };
        let verifier = ServerCheck {
            roots: roots.map(Arc::new),
            names: self.check() == Check::ChainAndName,
            algorithms: provider.signature_verification_algorithms,
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::invalid("--to", format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        match &self.client {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => builder
                .with_client_auth_cert(certificates(cert)?, private_key(key)?)
                .map_err(|e| {
                    Error::invalid(
                        "--to",
                        format!(
                            "sslcert {} and sslkey {} do not make a usable pair ({e})",
                            cert.display(),
                            key.display()
                        ),
                    )
                }),
        }
    }
}

/// libpq's client certificate rule: the certificate file is optional (a
/// missing one means no client certificate, and the server decides); a
/// certificate present needs its key.
fn client_files(
    words: &TlsWords,
    default_cert: Option<PathBuf>,
    default_key: Option<PathBuf>,
) -> Result<Option<(PathBuf, PathBuf)>> {
    let Some(cert) = words.sslcert.clone().map(PathBuf::from).or(default_cert) else {
        return Ok(None);
    };
    if !cert.exists() {
        return Ok(None);
    }
    let key = words.sslkey.clone().map(PathBuf::from).or(default_key);
    match key {
        Some(key) if key.exists() => {
            key_permissions(&key)?;
            Ok(Some((cert, key)))
        }
        _ => Err(Error::invalid(
            "--to",
            format!(
                "certificate present ({}), but not its private key file: give sslkey=FILE",
                cert.display()
            ),
        )),
    }
}

/// libpq refuses a key file that others can read: the key is the
/// client's identity, and a readable copy lends it to every user of the
/// machine. Owned by root, group-readable is allowed (system-managed keys).
fn key_permissions(key: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(key).map_err(|e| Error::io(key, e))?;
    let allowed = if meta.uid() == 0 { 0o640 } else { 0o600 };
    if meta.mode() & 0o777 & !allowed != 0 {
        return Err(Error::invalid(
            "--to",
            format!(
                "private key file {} has group or world access; permissions should be u=rw (0600) or less, or u=rw,g=r (0640) if owned by root",
                key.display()
            ),
        ));
    }
    Ok(())
}

/// What the handshake checks of the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Nothing: encryption against passive listening only.
    Nothing,
    /// The chain to a trusted root, and the dates.
    Chain,
    /// The chain, the dates and the host name.
    ChainAndName,
}

/// The certificates of a PEM file, at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let unreadable = || {
        Error::invalid(
            "--to",
            format!("{}: not a PEM file of certificates", path.display()),
        )
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|_| unreadable())?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| unreadable())?;
    if certs.is_empty() {
        return Err(unreadable());
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1). The PEM
/// error is not quoted: it can hold a line of the key.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|_| {
        Error::invalid(
            "--to",
            format!(
                "{}: no unencrypted private key in it (PEM: PKCS#8, PKCS#1 or SEC1; encrypted keys are not supported)",
                path.display()
            ),
        )
    })
}

fn roots_from_file(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certificates(path)?);
    if added == 0 {
        return Err(Error::invalid(
            "--to",
            format!("{}: no usable CA certificate in it", path.display()),
        ));
    }
    Ok(roots)
}

/// The machine's roots, found where OpenSSL (and so libpq) looks
/// (`SSL_CERT_FILE` and `SSL_CERT_DIR` honoured).
fn system_roots() -> Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(Error::invalid(
            "--to",
            "sslrootcert=system: this machine has no trusted root certificates (install ca-certificates, or give sslrootcert=FILE)",
        ));
    }
    Ok(roots)
}

/// The one server certificate verifier of the three checks. The
/// handshake signatures are always verified, whatever the mode: without
/// roots the server is not authenticated, but the key exchange is still
/// bound to the certificate it presented (and so is channel binding).
#[derive(Debug)]
struct ServerCheck {
    roots: Option<Arc<RootCertStore>>,
    names: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

type Der<'a> = CertificateDer<'a>;
type Dss = DigitallySignedStruct;
type Signature = std::result::Result<HandshakeSignatureValid, rustls::Error>;

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        if self.names {
            rustls::client::verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, msg: &[u8], cert: &Der<'_>, dss: &Dss) -> Signature {
        rustls::crypto::verify_tls12_signature(msg, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(&self, msg: &[u8], cert: &Der<'_>, dss: &Dss) -> Signature {
        rustls::crypto::verify_tls13_signature(msg, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(sslmode: Option<&str>, sslrootcert: Option<&str>) -> TlsWords {
        TlsWords {
            sslmode: sslmode.map(str::to_owned),
            sslrootcert: sslrootcert.map(str::to_owned),
            ..TlsWords::default()
        }
    }

    #[test]
    fn prefer_is_the_default_and_checks_nothing_without_a_root_file() {
        let home = tempfile::tempdir().unwrap();
        let tls = TlsSettings::resolve(&words(None, None), Some(home.path())).unwrap();
        assert_eq!(tls.mode, SslMode::Prefer);
        assert_eq!(tls.check(), Check::Nothing);
    }

    #[test]
    fn require_with_a_root_file_present_checks_the_chain_as_libpq_does() {
        let home = tempfile::tempdir().unwrap();
        let ca = home.path().join("ca.pem");
        std::fs::write(&ca, "").unwrap();
        let given =
            TlsSettings::resolve(&words(Some("require"), ca.to_str()), Some(home.path())).unwrap();
        assert_eq!(given.check(), Check::Chain);
        // The default file, ~/.postgresql/root.crt, counts too.
        std::fs::create_dir(home.path().join(".postgresql")).unwrap();
        std::fs::write(home.path().join(".postgresql/root.crt"), "").unwrap();
        let default =
            TlsSettings::resolve(&words(Some("require"), None), Some(home.path())).unwrap();
        assert_eq!(default.check(), Check::Chain);
        // A root file given but absent: require checks nothing (libpq).
        let absent =
            TlsSettings::resolve(&words(Some("require"), Some("/nonexistent/ca.pem")), None)
                .unwrap();
        assert_eq!(absent.check(), Check::Nothing);
    }

    #[test]
    fn verify_modes_need_a_root_file() {
        for mode in ["verify-ca", "verify-full"] {
            let e = TlsSettings::resolve(&words(Some(mode), Some("/nonexistent/ca.pem")), None)
                .unwrap_err();
            assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
            assert_eq!(e.exit_code(), 2);
        }
    }

    #[test]
    fn sslrootcert_system_means_verify_full_and_refuses_weaker_modes() {
        let tls = TlsSettings::resolve(&words(None, Some("system")), None).unwrap();
        assert_eq!(
            (tls.mode, &tls.roots),
            (SslMode::VerifyFull, &Roots::System)
        );
        assert_eq!(tls.check(), Check::ChainAndName);
        for weak in ["disable", "prefer", "require", "verify-ca"] {
            let e = TlsSettings::resolve(&words(Some(weak), Some("system")), None).unwrap_err();
            assert!(e.to_string().contains("weak sslmode"), "{e}");
        }
    }

    #[test]
    fn disable_reads_no_file_and_unknown_words_are_refused() {
        let tls = TlsSettings::resolve(&words(Some("disable"), Some("/nonexistent/ca.pem")), None)
            .unwrap();
        assert_eq!((tls.roots, tls.client), (Roots::Unchecked, None));
        for word in ["allow", "REQUIRE", "verify_full", ""] {
            assert!(TlsSettings::resolve(&words(Some(word), None), None).is_err());
        }
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "").unwrap();
        let mut given = TlsWords {
            sslmode: Some("require".into()),
            sslcert: cert.to_str().map(str::to_owned),
            ..TlsWords::default()
        };
        let e = TlsSettings::resolve(&given, None).unwrap_err();
        assert!(e.to_string().contains("private key"), "{e}");
        std::fs::write(&key, "secret").unwrap();
        given.sslkey = key.to_str().map(str::to_owned);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = TlsSettings::resolve(&given, None).unwrap_err();
        assert!(e.to_string().contains("group or world access"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let tls = TlsSettings::resolve(&given, None).unwrap();
        assert_eq!(tls.client, Some((cert, key.clone())));
        // An unreadable key is named, its contents never quoted.
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nsecret!\n").unwrap();
        let e = private_key(&key).unwrap_err().to_string();
        assert!(e.contains("k.pem") && !e.contains("secret"), "{e}");
        // No certificate file: no client certificate, as in libpq.
        given.sslcert = Some("/nonexistent/c.pem".into());
        assert_eq!(TlsSettings::resolve(&given, None).unwrap().client, None);
    }
}
