//! The set-up of a run's conversations: each target's user ID (usernames
//! resolved once, then remembered in the checkpoint) and its state from the
//! checkpoint.

use super::options::Target;
use super::report::{ConversationReport, ConversationStatus};
use super::shared::Run;
use crate::api::{Account, Endpoint, UserRef};
use crate::checkpoint::{Conversation, Recipient, conversation_key};
use crate::error::{Error, ErrorClass};
use crate::store::Store;

/// A conversation ready to sync: the account, the other participant's
/// user ID, and the conversation's state.
pub(super) type Resolved = (Account, String, Conversation);

/// Resolves usernames to IDs (once: remembered in the checkpoint) and loads
/// each conversation's state. Targets that cannot be resolved are reported
/// as failed; the others go on.
pub(super) async fn resolve_targets(
    run: &Run,
    store: &mut Store,
) -> (Vec<Resolved>, Vec<ConversationReport>) {
    let mut resolved: Vec<Resolved> = Vec::new();
    let mut failed = Vec::new();
    for target in &run.options.targets {
        let user_id = match user_id_of(run, store, target).await {
            Ok(user_id) => user_id,
            Err(report) => {
                failed.push(report);
                continue;
            }
        };
        if resolved
            .iter()
            .any(|(a, u, _)| a == &target.account && u == &user_id)
        {
            continue; // the same conversation named twice
        }
        if store.checkpoint().erasure.forgotten.contains_key(&user_id) {
            // Erased by `forget`: not fetched again until `forget --undo-user`.
            failed.push(forgotten(target, &user_id));
            continue;
        }
        let key = conversation_key(target.account.as_str(), &user_id);
        let state = store
            .checkpoint()
            .conversations
            .get(&key)
            .cloned()
            .unwrap_or_else(|| Conversation {
                account: target.account.as_str().to_owned(),
                user_id: user_id.clone(),
                ..Conversation::default()
            });
        resolved.push((target.account.clone(), user_id, state));
    }
    (resolved, failed)
}

/// A target's user ID: as named, remembered, or looked up and remembered.
/// A target that cannot be resolved gets its report instead.
async fn user_id_of(
    run: &Run,
    store: &mut Store,
    target: &Target,
) -> Result<String, ConversationReport> {
    let name = match &target.user {
        UserRef::Id(id) => return Ok(id.clone()),
        UserRef::Username(name) => name,
    };
    let key = name.to_lowercase();
    if let Some(r) = store.checkpoint().recipients.get(&key) {
        return Ok(r.id.clone());
    }
    if run.stopped() || !run.reserve(1) {
        return Err(unresolved(target, "not_started", None));
    }
    let result = run.client.user(&target.user, Some(&target.account)).await;
    run.settle(Endpoint::User, 1, u64::from(result.is_ok()));
    let logged = store.log_request(Endpoint::User, &target.user.to_string(), &result);
    if let Err(e) = logged {
        run.stop_job(&e);
    }
    match result {
        Ok(reply) if !crate::normalize::is_valid_id(&reply.value.id) => {
            let e = Error::Decode {
                endpoint: Endpoint::User,
                reason: "the profile's id is not 1-20 decimal digits".into(),
            };
            Err(unresolved(target, "lookup_failed", Some(e)))
        }
        Ok(reply) => {
            let profile = reply.value;
            store.checkpoint_mut().recipients.insert(
                key,
                Recipient {
                    id: profile.id.clone(),
                    username: profile.username,
                    can_dm: profile.can_dm,
                },
            );
            Ok(profile.id)
        }
        Err(e) => {
            if e.stops_job() {
                run.stop_job(&e);
            }
            Err(unresolved(target, "lookup_failed", Some(e)))
        }
    }
}

/// The report of a forgotten conversation, skipped: nothing is left to do
/// for it, by an operator's decision.
fn forgotten(target: &Target, user_id: &str) -> ConversationReport {
    ConversationReport {
        status: ConversationStatus::Complete,
        user: user_id.to_owned(),
        ..unresolved(target, "forgotten", None)
    }
}

/// The report of a target that could not be resolved.
fn unresolved(target: &Target, reason: &str, error: Option<Error>) -> ConversationReport {
    ConversationReport {
        account: target.account.to_string(),
        user: target.user.to_string(),
        status: match &error {
            Some(e) if e.class() != ErrorClass::Retryable && !e.stops_job() => {
                ConversationStatus::Failed
            }
            _ => ConversationStatus::Partial,
        },
        reason: match &error {
            Some(Error::Api(api) | Error::NotSent { cause: api, .. }) => api.code.clone(),
            _ => reason.to_owned(),
        },
        class: error.as_ref().map(Error::class),
        error: error.map(|e| e.to_string()),
        pages: 0,
        invalid_records: 0,
        fetched: 0,
        new_messages: 0,
    }
}
