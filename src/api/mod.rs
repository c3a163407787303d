//! The Xquik API: the HTTP client (`client`), the endpoints it calls
//! (`endpoint`), the retry rules (`retry`), the
//! wire shapes (`types`), and the small validated values every request is
//! built from (user references, account handles, idempotency keys), which are
//! checked here so that bad input is refused before any request is made.

pub mod client;
pub mod endpoint;
pub mod pace;
pub mod pagination;
pub mod retry;
pub mod types;

use std::fmt;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub use endpoint::Endpoint;

/// A user as given on the command line: a numeric ID, or a username (with or
/// without `@`) that must be resolved through `GET /x/users/{id}` first.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UserRef {
    /// Numeric X user ID, as a string.
    Id(String),
    /// Username without `@`.
    Username(String),
}

impl UserRef {
    /// Parses `12345`, `@jack` or `jack`. `field` names the option in the
    /// error (`--to`, `--user`, ...).
    pub fn parse(input: &str, field: &'static str) -> Result<UserRef> {
        let s = input.trim();
        if let Some(name) = s.strip_prefix('@') {
            return if is_username(name) {
                Ok(UserRef::Username(name.to_owned()))
            } else {
                Err(Error::invalid(
                    field,
                    "not a valid @username (1-15 letters, digits or _)",
                ))
            };
        }
        if is_numeric_id(s) {
            Ok(UserRef::Id(s.to_owned()))
        } else if is_username(s) {
            Ok(UserRef::Username(s.to_owned()))
        } else {
            // The value is not echoed: a misplaced argument may be a message.
            Err(Error::invalid(
                field,
                "neither a numeric user ID nor an @username (1-15 letters, digits or _)",
            ))
        }
    }

    /// The path value for `GET /x/users/{id}`.
    pub fn as_path(&self) -> &str {
        match self {
            UserRef::Id(id) => id,
            UserRef::Username(name) => name,
        }
    }
}

impl fmt::Display for UserRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserRef::Id(id) => f.write_str(id),
            UserRef::Username(name) => write!(f, "@{name}"),
        }
    }
}

/// A connected sender account: its handle without `@`, or its numeric ID.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Account(String);

impl Account {
    /// Validates `acme`, `@acme` or a numeric account ID. X handles are
    /// case-insensitive, so the handle is kept in lowercase: `ACME` and
    /// `acme` are one account, with one checkpoint state and one
    /// idempotency key per DM.
    pub fn parse(input: &str) -> Result<Account> {
        let s = input.trim();
        let s = s.strip_prefix('@').unwrap_or(s);
        if is_username(s) || is_numeric_id(s) {
            Ok(Account(s.to_ascii_lowercase()))
        } else {
            Err(Error::invalid(
                "--account",
                "not an X handle (1-15 letters, digits or _) or a numeric account ID",
            ))
        }
    }

    /// The handle as the API expects it (no `@`).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `s` is a numeric X ID (snowflakes have at most 20 digits).
pub fn is_numeric_id(s: &str) -> bool {
    (1..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_username(s: &str) -> bool {
    (1..=15).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The `Idempotency-Key` of one intended write: reused, unchanged, on every
/// retry of that write, so the API can answer a retry with the original
/// action instead of performing it twice.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Accepts a caller-supplied key: 1-255 printable ASCII characters, no
    /// spaces (the API's pattern `^[!-~]{1,255}$`).
    pub fn try_new(key: &str) -> Result<IdempotencyKey> {
        if (1..=255).contains(&key.len()) && key.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
            Ok(IdempotencyKey(key.to_owned()))
        } else {
            Err(Error::invalid(
                "--idempotency-key",
                "use 1-255 printable ASCII characters without spaces",
            ))
        }
    }

    /// Derives a key deterministically from the parts of a write (account,
    /// action, recipient, payload digest, job key): the same intended write
    /// always gets the same key, across retries and across process restarts.
    /// Each part is length-prefixed so that no two part lists collide.
    pub fn derive(parts: &[&[u8]]) -> IdempotencyKey {
        let mut h = Sha256::new();
        for part in parts {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        IdempotencyKey(format!("xqdm-{}", hex::encode(&h.finalize()[..20])))
    }

    /// The header value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_refs() {
        assert_eq!(
            UserRef::parse("1234567890123456789", "--to").unwrap(),
            UserRef::Id("1234567890123456789".into())
        );
        assert_eq!(
            UserRef::parse("@jack", "--to").unwrap(),
            UserRef::Username("jack".into())
        );
        assert_eq!(
            UserRef::parse("jack_2", "--to").unwrap(),
            UserRef::Username("jack_2".into())
        );
        assert_eq!(
            UserRef::parse("@123", "--to").unwrap(),
            UserRef::Username("123".into())
        );
        for bad in [
            "",
            "@",
            "a b",
            "@jack!",
            "x/../y",
            "123456789012345678901",
            "@waytoolongusername1",
        ] {
            let err = UserRef::parse(bad, "--to").unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
            assert!(err.to_string().starts_with("invalid --to: "), "{err}");
        }
    }

    #[test]
    fn accounts() {
        assert_eq!(
            Account::parse("@acme_support").unwrap().as_str(),
            "acme_support"
        );
        assert_eq!(Account::parse("42").unwrap().as_str(), "42");
        assert!(Account::parse("acme support").is_err());
        assert!(Account::parse("").is_err());
    }

    #[test]
    fn idempotency_keys() {
        assert!(IdempotencyKey::try_new("job-2026-11-26#1").is_ok());
        assert!(IdempotencyKey::try_new("has space").is_err());
        assert!(IdempotencyKey::try_new("").is_err());
        assert!(IdempotencyKey::try_new(&"k".repeat(256)).is_err());
        let a = IdempotencyKey::derive(&[b"acme", b"send_dm", b"42", b"hello"]);
        let b = IdempotencyKey::derive(&[b"acme", b"send_dm", b"42", b"hello"]);
        let c = IdempotencyKey::derive(&[b"acme", b"send_dm", b"42h", b"ello"]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(IdempotencyKey::try_new(a.as_str()).is_ok());
    }

    #[test]
    fn endpoint_costs() {
        assert_eq!(Endpoint::User.credits(0), 1);
        assert_eq!(Endpoint::History.credits(37), 37);
        assert_eq!(Endpoint::Media.credits(0), 10);
        assert_eq!(Endpoint::SendDm.credits(0), 10);
        assert_eq!(Endpoint::WriteAction.credits(0), 0);
    }
}
