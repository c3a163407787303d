//! `xquik-dm forget --out DIR|URL`: erases conversations or single
//! messages from every output, as an audited run of its own (see
//! [`crate::erasure`] for the mechanism and the evidence it leaves).
//! Usernames are resolved here, before anything is changed.

use crate::api::UserRef;
use crate::api::client::ClientConfig;
use crate::erasure::ErasureReport;
use crate::error::Result;
use crate::sshsig::SigningKey;
use crate::storage::Location;

/// A validated `forget`.
#[derive(Debug, Clone)]
pub struct ForgetOptions {
    /// The output folder or bucket.
    pub out: Location,
    /// Conversations to erase (and forget).
    pub users: Vec<UserRef>,
    /// Single messages to erase, by ID.
    pub messages: Vec<String>,
    /// Conversations to stop forgetting.
    pub undo_users: Vec<String>,
    /// Why.
    pub reason: String,
    /// How to reach the API to resolve a username the output does not
    /// know; `None` without a key.
    pub api: Option<ClientConfig>,
    /// SSH key that signs the erasure's manifest.
    pub key: Option<SigningKey>,
}

/// Runs `forget`.
pub async fn run(options: ForgetOptions) -> Result<ErasureReport> {
    let _ = options;
    todo!()
}
