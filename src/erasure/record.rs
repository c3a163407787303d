//! The manifest's `erasure` object: the body-free record of an erasure
//! run, as `audit::Manifest` carries it. Kept apart from the mechanism
//! (`super`) so that the audit trail can name it without depending on it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The key of the handoff file's new generation that the erasure run
/// `run_id` stages: at the root, next to the file it replaces (it holds
/// bodies, so never under `state/`).
pub fn staged_key(run_id: &str) -> String {
    format!(".xquik-dm-handoff.jsonl.{run_id}.generation")
}

/// The longest reason accepted, in characters: it is stored in the
/// manifest, so it must stay short and body-free.
pub const MAX_REASON_CHARS: usize = 200;

/// Why an erasure run was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErasureKind {
    /// `forget`: an operator's erasure request.
    Forget,
    /// `sync --retain-days`: messages past the retention window.
    Retention,
    /// `forget --undo-user`: conversations no longer forgotten (nothing is
    /// erased).
    UndoForget,
}

/// The handoff file's new generation, as the erasure wrote it: what it
/// replaced and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// Length of the generation it replaced.
    pub before_bytes: u64,
    /// Records in the generation it replaced.
    pub before_rows: u64,
    /// SHA-256 of the generation it replaced (as `SHA256SUMS` had it).
    pub before_sha256: String,
    /// Length of the new generation (also the run's segment at offset 0).
    pub bytes: u64,
    /// Records in it.
    pub rows: u64,
    /// Its SHA-256.
    pub sha256: String,
}

/// The manifest's `erasure` object: what an erasure run took out, and
/// why. Body-free: counts, user IDs, a Merkle root and the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erasure {
    /// Forget, retention or undo.
    pub kind: ErasureKind,
    /// The operator's reason (at most [`MAX_REASON_CHARS`] characters).
    pub reason: String,
    /// When it was made (RFC 3339 UTC).
    pub erased_at: String,
    /// Records erased (history and send), the rows file's lines.
    pub erased: u64,
    /// Records erased per conversation (history) or recipient (send).
    pub by_conversation: BTreeMap<String, u64>,
    /// Send records among them.
    pub sends_erased: u64,
    /// Merkle root (RFC 6962 shape, as the rows files') over the erased
    /// message IDs, sorted and each once; null when nothing was erased.
    pub merkle_root: Option<String>,
    /// Users forgotten by this run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forgotten_users: Vec<String>,
    /// Users no longer forgotten after this run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub undone_users: Vec<String>,
    /// Retention: the window, in days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_days: Option<u32>,
    /// Retention: the cut-off instant (RFC 3339 UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than: Option<String>,
    /// The handoff file's new generation; null when no handoff record was
    /// erased (the file is left as it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<Generation>,
    /// Tombstones in the state after this run.
    pub tombstones: u64,
}
