//! `xquik-dm lookup`: a recipient's profile, for the `canDm` preflight and to
//! turn a username into the numeric ID that DM writes need.

use crate::api::UserRef;
use crate::api::client::Client;
use crate::api::types::UserProfile;
use crate::error::Result;

/// Looks a user up by numeric ID or username. 1 credit.
pub async fn run(client: &Client, user: &UserRef) -> Result<UserProfile> {
    let reply = client.user(user, None).await?;
    tracing::info!(
        endpoint = "GET /x/users/{id}",
        user_id = %reply.value.id,
        attempts = reply.meta.attempts,
        "user resolved"
    );
    Ok(reply.value)
}
