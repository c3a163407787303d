//! The API endpoints this tool calls, named by their route template: what
//! each costs, whether it writes, and which limit it counts against. A leaf
//! of the crate (the error type names endpoints, so this module may depend
//! on nothing that depends on errors).

use std::fmt;

use super::pace;

/// The API endpoints this tool calls, named by their route template. Used in
/// errors, logs, the credits ledger and the audit manifest, so it never
/// carries a concrete ID, cursor or body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Endpoint {
    /// `GET /x/users/{id}`
    #[serde(rename = "GET /x/users/{id}")]
    User,
    /// `GET /x/dm/{userId}/history`
    #[serde(rename = "GET /x/dm/{userId}/history")]
    History,
    /// `POST /x/media`
    #[serde(rename = "POST /x/media")]
    Media,
    /// `POST /x/dm/{userId}`
    #[serde(rename = "POST /x/dm/{userId}")]
    SendDm,
    /// `GET /x/write-actions/{id}`
    #[serde(rename = "GET /x/write-actions/{id}")]
    WriteAction,
}

impl Endpoint {
    /// The route template, e.g. `GET /x/dm/{userId}/history`.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::User => "GET /x/users/{id}",
            Endpoint::History => "GET /x/dm/{userId}/history",
            Endpoint::Media => "POST /x/media",
            Endpoint::SendDm => "POST /x/dm/{userId}",
            Endpoint::WriteAction => "GET /x/write-actions/{id}",
        }
    }

    /// Credits one successful call costs at the documented prices; `items` is
    /// the number of messages a history page returned.
    pub fn credits(self, items: u64) -> u64 {
        match self {
            Endpoint::User => 1,
            Endpoint::History => items,
            Endpoint::Media | Endpoint::SendDm => 10,
            Endpoint::WriteAction => 0,
        }
    }

    /// Whether the call is a write, which must carry an `Idempotency-Key`.
    pub fn is_write(self) -> bool {
        matches!(self, Endpoint::Media | Endpoint::SendDm)
    }

    /// Which of an account's limits the call counts against.
    pub fn pace_kind(self) -> pace::Kind {
        match self {
            Endpoint::Media | Endpoint::SendDm => pace::Kind::Post,
            Endpoint::User | Endpoint::History | Endpoint::WriteAction => pace::Kind::Get,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
