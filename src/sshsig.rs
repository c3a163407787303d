//! SSH signatures over the audit manifests: the OpenSSH `SSHSIG` format
//! that `ssh-keygen -Y sign|verify` reads and writes, so that a reviewer
//! proves who sealed each run with a public key and a tool they already
//! have, and nobody holding a verifying key can forge a manifest (the gap
//! an HMAC's shared secret leaves).
//!
//! It owns the signing key ([`SigningKey`]: an unencrypted OpenSSH Ed25519
//! private key file, refused when its mode is wider than 0600, the way
//! `ssh-keygen` refuses it) and the reviewer's trust list
//! ([`AllowedSigners`]: the `allowed_signers` format of `ssh-keygen(1)`,
//! with `namespaces=`, `valid-after=` and `valid-before=`). Encoding and
//! checking the signatures is the RustCrypto `ssh-key` crate's; nothing
//! here writes SSHSIG bytes by hand. Where the signature files live and
//! what the chain records of them is `audit`'s.
//!
//! A key held by `ssh-agent` is not supported: the one maintained client
//! crate (`ssh-agent-client-rs`) turns on `ssh-key`'s `crypto` feature,
//! which builds RSA, three NIST curves and a bignum library into the
//! binary for key types this module refuses anyway — and the `rsa` crate
//! carries RUSTSEC-2023-0071 (Marvin), for which no release is fixed.

// Reads bytes a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, SshSig, public::KeyData};

use crate::error::{Error, Result};

/// The one namespace every manifest signature is made in: a signature
/// made for another purpose (a git commit, a file) never verifies as a
/// manifest's.
pub const NAMESPACE: &str = "xquik-dm-manifest@v1";
/// Environment variable naming the signing key file.
pub const SIGNING_KEY_ENV: &str = "XQUIK_DM_SIGNING_KEY_FILE";
/// Suffix of a manifest's detached signature, next to it.
pub const SIG_SUFFIX: &str = ".sig";

/// An Ed25519 private key that signs manifests. `Debug` shows only its
/// fingerprint: the key itself never reaches a log or an error.
#[derive(Clone)]
pub struct SigningKey {
    key: Arc<PrivateKey>,
    fingerprint: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({}, <redacted>)", self.fingerprint)
    }
}

impl SigningKey {
    /// Reads the key file `path` given as `field` (`--signing-key`, the
    /// job file's `signing_key`). Bad input (exit 2) when it is readable by
    /// others, not an OpenSSH private key, encrypted, or not Ed25519; no
    /// error quotes the file's content.
    pub fn load(path: &Path, field: &'static str) -> Result<SigningKey> {
        let refuse =
            |reason: String| Error::invalid(field, format!("{}: {reason}", path.display()));
        let meta = std::fs::metadata(path).map_err(|e| refuse(e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(refuse(format!(
                    "permissions {mode:04o} are too open: a private key must be readable by its owner only (chmod 600)"
                )));
            }
        }
        if !meta.is_file() {
            return Err(refuse("not a file".into()));
        }
        let text = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| refuse(e.to_string()))?);
        Self::from_openssh(&text).map_err(refuse)
    }

    /// Parses an OpenSSH private key; the reason it is refused otherwise.
    fn from_openssh(text: &[u8]) -> std::result::Result<SigningKey, String> {
        const ED25519_ONLY: &str =
            "manifests are signed with Ed25519 keys only (ssh-keygen -t ed25519)";
        let key = PrivateKey::from_openssh(text).map_err(|_| {
            // Only Ed25519 is built in: another type's key is armored the
            // same way but cannot be decoded.
            match text
                .trim_ascii_start()
                .starts_with(b"-----BEGIN OPENSSH PRIVATE KEY-----")
            {
                true => format!("not a readable Ed25519 key: {ED25519_ONLY}"),
                false => "not an OpenSSH private key (-----BEGIN OPENSSH PRIVATE KEY-----)".into(),
            }
        })?;
        if key.is_encrypted() {
            return Err(
                "the key is encrypted with a passphrase, which a scheduled job cannot type: use a key without one (ssh-keygen -t ed25519 -N '') kept mode 0600"
                    .into(),
            );
        }
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(format!("an {} key: {ED25519_ONLY}", key.algorithm()));
        }
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        Ok(SigningKey {
            key: Arc::new(key),
            fingerprint,
        })
    }

    /// Makes a new key and writes it to `path` (mode 0600, OpenSSH format,
    /// unencrypted) with its public half at `<path>.pub`: the throwaway key
    /// of the demo.
    pub fn generate(path: &Path, comment: &str) -> Result<SigningKey> {
        let io = |e: std::io::Error| Error::io(path, e);
        let other = |e: ssh_key::Error| io(std::io::Error::other(e.to_string()));
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| io(std::io::Error::other(e.to_string())))?;
        let pair = ssh_key::private::Ed25519Keypair::from_seed(&seed);
        let key = PrivateKey::new(ssh_key::private::KeypairData::Ed25519(pair), comment)
            .map_err(other)?;
        let text = key.to_openssh(LineEnding::LF).map_err(other)?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(io)?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(io)?;
        let public = key.public_key().to_openssh().map_err(other)?;
        let mut pub_path = path.as_os_str().to_owned();
        pub_path.push(".pub");
        std::fs::write(&pub_path, format!("{public}\n")).map_err(io)?;
        Self::load(path, "--signing-key")
    }

    /// The public key, as a line of `authorized_keys` or `allowed_signers`
    /// writes it (`ssh-ed25519 AAAA... comment`).
    pub fn public_openssh(&self) -> Result<String> {
        self.key
            .public_key()
            .to_openssh()
            .map_err(|e| Error::io("<public key>", std::io::Error::other(e.to_string())))
    }

    /// The public key's SHA-256 fingerprint, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The detached signature of `msg` in [`NAMESPACE`], armored as
    /// `ssh-keygen -Y sign` writes it.
    pub fn sign(&self, msg: &[u8], path: &str) -> Result<Vec<u8>> {
        let failed = |e: ssh_key::Error| Error::io(path, std::io::Error::other(e.to_string()));
        let sig = self
            .key
            .sign(NAMESPACE, HashAlg::Sha512, msg)
            .map_err(failed)?;
        let pem = sig.to_pem(LineEnding::LF).map_err(failed)?;
        Ok(pem.into_bytes())
    }
}

/// One line of an `allowed_signers` file.
#[derive(Debug, Clone)]
struct AllowedSigner {
    principals: String,
    key: KeyData,
    namespaces: Option<Vec<String>>,
    valid_after: Option<DateTime<Utc>>,
    valid_before: Option<DateTime<Utc>>,
}

/// The keys a reviewer trusts, read from an OpenSSH `allowed_signers`
/// file. Certificate authorities (`cert-authority`) are not followed: the
/// tool signs with plain keys.
#[derive(Debug, Clone, Default)]
pub struct AllowedSigners {
    signers: Vec<AllowedSigner>,
}

/// Why a signature does not verify. Each names what a reviewer must look
/// at; none carries key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigFailure {
    /// The file is not an SSH signature.
    Unreadable,
    /// Made for another purpose than a manifest.
    Namespace(String),
    /// By a key the allowed signers do not hold (its fingerprint).
    UnknownKey(String),
    /// Does not match the manifest's bytes.
    Bad,
    /// The key is not allowed to sign manifests (its `namespaces=`).
    NamespaceNotAllowed(String),
    /// The key was not valid when the run finished.
    OutsideWindow {
        /// The key's principals.
        principals: String,
        /// Its windows, as `valid-after..valid-before`.
        windows: String,
    },
}

impl std::fmt::Display for SigFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SigFailure::Unreadable => {
                f.write_str("not an SSH signature (-----BEGIN SSH SIGNATURE-----)")
            }
            SigFailure::Namespace(ns) => {
                write!(
                    f,
                    "made in namespace {ns:?}, not {NAMESPACE:?}: not a manifest signature"
                )
            }
            SigFailure::UnknownKey(fp) => {
                write!(
                    f,
                    "signed by key {fp}, which the allowed signers do not hold"
                )
            }
            SigFailure::Bad => f.write_str(
                "bad signature: the manifest changed, or the signature is another file's",
            ),
            SigFailure::NamespaceNotAllowed(principals) => {
                write!(
                    f,
                    "the key of {principals} is not allowed to sign in {NAMESPACE:?} (namespaces=)"
                )
            }
            SigFailure::OutsideWindow {
                principals,
                windows,
            } => write!(
                f,
                "the key of {principals} was not valid when the run finished (valid {windows})"
            ),
        }
    }
}

impl AllowedSigners {
    /// Reads an `allowed_signers` file given as `field`; a line it cannot
    /// read is bad input (exit 2), named by its number.
    pub fn load(path: &Path, field: &'static str) -> Result<AllowedSigners> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid(field, format!("{}: {e}", path.display())))?;
        Self::parse(&text)
            .map_err(|reason| Error::invalid(field, format!("{}: {reason}", path.display())))
    }

    /// Parses `allowed_signers` text.
    pub fn parse(text: &str) -> std::result::Result<AllowedSigners, String> {
        let mut signers = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_line(line).map_err(|e| format!("line {}: {e}", number + 1))? {
                Some(signer) => signers.push(signer),
                None => continue,
            }
        }
        Ok(AllowedSigners { signers })
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.signers.is_empty()
    }

    /// Checks `sig` (armored) over `msg` against the keys held, at `at`
    /// (the run's `finished_at`). Returns the signing key's fingerprint
    /// and principals.
    pub fn verify(
        &self,
        msg: &[u8],
        sig: &[u8],
        at: DateTime<Utc>,
    ) -> std::result::Result<(String, String), SigFailure> {
        let sig = SshSig::from_pem(sig).map_err(|_| SigFailure::Unreadable)?;
        if sig.namespace() != NAMESPACE {
            return Err(SigFailure::Namespace(sig.namespace().to_owned()));
        }
        let fingerprint = sig.public_key().fingerprint(HashAlg::Sha256).to_string();
        let holding: Vec<&AllowedSigner> = self
            .signers
            .iter()
            .filter(|s| s.key == *sig.public_key())
            .collect();
        let Some(first) = holding.first() else {
            return Err(SigFailure::UnknownKey(fingerprint));
        };
        PublicKey::from(sig.public_key().clone())
            .verify(NAMESPACE, msg, &sig)
            .map_err(|_| SigFailure::Bad)?;
        let allowed: Vec<&&AllowedSigner> = holding
            .iter()
            .filter(|s| {
                s.namespaces
                    .as_ref()
                    .is_none_or(|ns| ns.iter().any(|p| glob(p, NAMESPACE)))
            })
            .collect();
        if allowed.is_empty() {
            return Err(SigFailure::NamespaceNotAllowed(first.principals.clone()));
        }
        // OpenSSH's bounds are inclusive at both ends (sshsig.c).
        match allowed.iter().find(|s| {
            s.valid_after.is_none_or(|t| at >= t) && s.valid_before.is_none_or(|t| at <= t)
        }) {
            Some(s) => Ok((fingerprint, s.principals.clone())),
            None => Err(SigFailure::OutsideWindow {
                principals: first.principals.clone(),
                windows: allowed
                    .iter()
                    .map(|s| format!("{}..{}", stamp(s.valid_after), stamp(s.valid_before)))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

/// A window bound as a reviewer reads it.
fn stamp(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(String::new, |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// Parses one non-empty, non-comment line: `principals [options] keytype
/// base64 [comment]`. `None` for a `cert-authority` line.
fn parse_line(line: &str) -> std::result::Result<Option<AllowedSigner>, String> {
    let tokens = tokens(line);
    let mut rest = tokens.iter().map(String::as_str);
    let principals = rest.next().ok_or("no principals")?.to_owned();
    let mut next = rest.next().ok_or("no key")?;
    let mut options = Vec::new();
    if !is_key_type(next) {
        options = split_options(next);
        next = rest.next().ok_or("no key after the options")?;
    }
    let blob = rest.next().ok_or("no key after its type")?;
    let key = PublicKey::from_openssh(&format!("{next} {blob}"))
        .map_err(|_| format!("not a public key ({next})"))?;
    let mut signer = AllowedSigner {
        principals,
        key: key.key_data().clone(),
        namespaces: None,
        valid_after: None,
        valid_before: None,
    };
    for option in options {
        let (name, value) = option.split_once('=').unwrap_or((option.as_str(), ""));
        let value = value.trim_matches('"');
        match name.to_ascii_lowercase().as_str() {
            "cert-authority" => return Ok(None),
            "namespaces" => {
                signer.namespaces = Some(value.split(',').map(str::to_owned).collect());
            }
            "valid-after" => signer.valid_after = Some(parse_time(value)?),
            "valid-before" => signer.valid_before = Some(parse_time(value)?),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(Some(signer))
}

/// Whether `token` names an SSH key type.
fn is_key_type(token: &str) -> bool {
    token.starts_with("ssh-") || token.starts_with("ecdsa-") || token.starts_with("sk-")
}

/// Whitespace-separated tokens, a double-quoted run kept whole.
fn tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Comma-separated options, a comma inside double quotes kept.
fn split_options(field: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in field.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    out.push(current);
    out
}

/// A time as `allowed_signers` writes it: `YYYYMMDD[HHMM[SS]]`, UTC with a
/// trailing `Z` and local time without, as OpenSSH reads it.
fn parse_time(value: &str) -> std::result::Result<DateTime<Utc>, String> {
    let (digits, utc) = match value.strip_suffix(['Z', 'z']) {
        Some(d) => (d, true),
        None => (value, false),
    };
    let padded = match digits.len() {
        8 => format!("{digits}000000"),
        12 => format!("{digits}00"),
        14 => digits.to_owned(),
        _ => return Err(format!("{value:?} is not YYYYMMDD[HHMM[SS]][Z]")),
    };
    let naive = chrono::NaiveDateTime::parse_from_str(&padded, "%Y%m%d%H%M%S")
        .map_err(|_| format!("{value:?} is not YYYYMMDD[HHMM[SS]][Z]"))?;
    if utc {
        return Ok(naive.and_utc());
    }
    naive
        .and_local_timezone(chrono::Local)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| format!("{value:?} does not exist in local time"))
}

/// OpenSSH's pattern match: `*` any run, `?` any one character.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some(pi);
                mark = ti;
                pi += 1;
            }
            Some(&c) if c == '?' || Some(&c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some(s) => {
                    pi = s + 1;
                    mark += 1;
                    ti = mark;
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|c| *c == '*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_patterns_match_as_openssh_does() {
        assert!(glob("xquik-dm-*", NAMESPACE));
        assert!(glob("*", NAMESPACE));
        assert!(glob("xquik-dm-manifest@v?", NAMESPACE));
        assert!(!glob("git", NAMESPACE));
        assert!(!glob("xquik-dm-manifest@v", NAMESPACE));
    }

    #[test]
    fn allowed_signers_times_and_options_parse() {
        assert_eq!(
            parse_time("20261203Z").unwrap().to_rfc3339(),
            "2026-12-03T00:00:00+00:00"
        );
        assert_eq!(
            parse_time("202612030102Z").unwrap().to_rfc3339(),
            "2026-12-03T01:02:00+00:00"
        );
        assert!(parse_time("2026-12-03").is_err());
        assert_eq!(
            split_options(r#"namespaces="a,b",valid-after=20260101Z"#),
            [r#"namespaces="a,b""#, "valid-after=20260101Z"]
        );
        let err = AllowedSigners::parse("a@x nonsense-option ssh-ed25519 AAAA\n").unwrap_err();
        assert!(err.starts_with("line 1:"), "{err}");
    }

    #[test]
    fn key_files_are_refused_without_quoting_them() {
        let err = SigningKey::from_openssh(b"secret material, not a key").unwrap_err();
        assert!(!err.contains("secret"), "{err}");
    }
}
