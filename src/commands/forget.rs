//! `xquik-dm forget --out DIR|URL`: erases conversations or single
//! messages from every output, as an audited run of its own (see
//! [`crate::erasure`] for the mechanism and the evidence it leaves), or
//! stops forgetting conversations (`--undo-user`). Usernames are resolved
//! here, before anything is changed: from the output's recipients, else
//! with the API's lookup when a key is set, else refused (exit 2).

use crate::api::UserRef;
use crate::api::client::{Client, ClientConfig};
use crate::checkpoint::Checkpoint;
use crate::erasure::{self, ErasureKind, ErasureReport, Selection};
use crate::error::{Error, Result};
use crate::sshsig::SigningKey;
use crate::storage::Location;
use crate::store::RunStamp;

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
    options.out.require_existing("--out")?;
    let storage = options.out.open()?;
    let known = {
        let storage = storage.clone();
        tokio::task::spawn_blocking(move || Checkpoint::load(storage.as_ref()))
            .await
            .map_err(|e| Error::io("<forget>", std::io::Error::other(e)))??
    };
    let mut users = Vec::new();
    for user in &options.users {
        users.push(resolve(user, &known, options.api.as_ref()).await?);
    }
    let kind = if options.undo_users.is_empty() {
        ErasureKind::Forget
    } else {
        ErasureKind::UndoForget
    };
    let selection = Selection {
        users,
        messages: options.messages,
        older_than: None,
        undo_users: options.undo_users,
    };
    let (reason, key) = (options.reason, options.key);
    tokio::task::spawn_blocking(move || {
        erasure::run(
            &storage,
            &RunStamp::now(),
            &selection,
            kind,
            &reason,
            None,
            key.as_ref(),
        )
    })
    .await
    .map_err(|e| Error::io("<forget>", std::io::Error::other(e)))?
}

/// A conversation's user ID: as given, from the output's recipients, or
/// looked up.
async fn resolve(user: &UserRef, known: &Checkpoint, api: Option<&ClientConfig>) -> Result<String> {
    let name = match user {
        UserRef::Id(id) => return Ok(id.clone()),
        UserRef::Username(name) => name,
    };
    if let Some(r) = known.recipients.get(&name.to_lowercase()) {
        return Ok(r.id.clone());
    }
    let Some(api) = api else {
        return Err(Error::invalid(
            "--user",
            format!(
                "@{name} is not among this output's recipients: give the numeric user ID, or set XQUIK_API_KEY to look the username up"
            ),
        ));
    };
    let client = Client::new(api.clone())?;
    let profile = client.user(user, None).await?.value;
    if !crate::normalize::is_valid_id(&profile.id) {
        return Err(Error::Decode {
            endpoint: crate::api::Endpoint::User,
            reason: "the profile's id is not 1-20 decimal digits".into(),
        });
    }
    tracing::info!(user_id = %profile.id, "user resolved");
    Ok(profile.id)
}
