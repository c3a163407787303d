//! `xquik-dm forget --out DIR|URL`: erases conversations or single
//! messages from every output, as an audited run of its own (see
//! [`crate::erasure`] for the mechanism and the evidence it leaves), or
//! stops forgetting conversations (`--undo-user`). Usernames are resolved
//! here, before anything is changed: from the output's recipients, else
//! with the API's lookup when a key is set, else refused (exit 2).
//!
//! A prefix split into shards (`sync --shard K/N`) is erased shard by
//! shard: one erasure run in each shard's chain, in order, every shard
//! forgetting the same people (a person's conversations with several
//! accounts can fall into several shards). Each shard's erasure is atomic
//! on its own; a `forget` killed between two shards has erased the first
//! ones only, and running the same `forget` again finishes the others (a
//! shard already erased erases nothing more and records it).

use crate::api::UserRef;
use crate::api::client::{Client, ClientConfig};
use crate::checkpoint::Checkpoint;
use crate::erasure::{self, ErasureKind, ErasureReport, Selection};
use crate::error::{Error, Result};
use crate::sshsig::SigningKey;
use crate::storage::{Location, Storage};
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

/// What `forget` did: one erasure run, or one per shard of a prefix.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum ForgetReport {
    /// An output root's erasure run.
    One(Box<ErasureReport>),
    /// A sharded prefix's: each shard's erasure run, in shard order.
    Shards {
        /// The prefix.
        out: Location,
        /// Each shard's report.
        shards: Vec<ErasureReport>,
    },
}

impl std::fmt::Display for ForgetReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForgetReport::One(report) => report.fmt(f),
            ForgetReport::Shards { out, shards } => {
                writeln!(f, "{out}: {} shards", shards.len())?;
                shards.iter().try_for_each(|report| report.fmt(f))
            }
        }
    }
}

/// Runs `forget` on an output root, or on every shard of a prefix.
pub async fn run(options: ForgetOptions) -> Result<ForgetReport> {
    options.out.require_existing("--out")?;
    let Some(shards) = crate::shard::registered(options.out.open()?.as_ref())? else {
        let storage = crate::shard::open(&options.out)?;
        let users = resolve_all(&options, std::slice::from_ref(&storage)).await?;
        return erase(&options, storage, users)
            .await
            .map(|r| ForgetReport::One(Box::new(r)));
    };
    let roots: Vec<Storage> = (0..shards)
        .map(|k| crate::shard::open(&options.out.join(&format!("shard={k}"))))
        .collect::<Result<_>>()?;
    // Every username resolved before any shard is changed.
    let users = resolve_all(&options, &roots).await?;
    let mut reports = Vec::new();
    for storage in roots {
        reports.push(erase(&options, storage, users.clone()).await?);
    }
    Ok(ForgetReport::Shards {
        out: options.out.clone(),
        shards: reports,
    })
}

/// The erasure run of `options` in the output root `storage`, for the
/// conversations of `users`.
async fn erase(
    options: &ForgetOptions,
    storage: Storage,
    users: Vec<String>,
) -> Result<ErasureReport> {
    let kind = if options.undo_users.is_empty() {
        ErasureKind::Forget
    } else {
        ErasureKind::UndoForget
    };
    let selection = Selection {
        users,
        messages: options.messages.clone(),
        older_than: None,
        undo_users: options.undo_users.clone(),
    };
    let (reason, key) = (options.reason.clone(), options.key.clone());
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

/// The user IDs of `options.users`: each as given, from the recipients of
/// the roots' checkpoints, or looked up.
async fn resolve_all(options: &ForgetOptions, roots: &[Storage]) -> Result<Vec<String>> {
    // Only a username needs the recipients the checkpoints remember.
    let named = options
        .users
        .iter()
        .any(|u| matches!(u, UserRef::Username(_)));
    let roots = if named { roots.to_vec() } else { Vec::new() };
    let known = tokio::task::spawn_blocking(move || {
        roots
            .iter()
            .map(|root| Checkpoint::load(root.as_ref()))
            .collect::<Result<Vec<Checkpoint>>>()
    })
    .await
    .map_err(|e| Error::io("<forget>", std::io::Error::other(e)))??;
    let mut users = Vec::new();
    for user in &options.users {
        users.push(resolve(user, &known, options.api.as_ref()).await?);
    }
    Ok(users)
}

/// A conversation's user ID: as given, from the output's recipients, or
/// looked up.
async fn resolve(
    user: &UserRef,
    known: &[Checkpoint],
    api: Option<&ClientConfig>,
) -> Result<String> {
    let name = match user {
        UserRef::Id(id) => return Ok(id.clone()),
        UserRef::Username(name) => name,
    };
    if let Some(r) = known
        .iter()
        .find_map(|c| c.recipients.get(&name.to_lowercase()))
    {
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
