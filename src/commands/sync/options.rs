//! What a sync run is asked to do: the conversations, where their rows go,
//! and the limits it keeps to.

use std::time::Duration;

use crate::api::client::ClientConfig;
use crate::api::{Account, UserRef};
use crate::audit::AuditKey;
use crate::shard::Shard;
use crate::sshsig::SigningKey;
use crate::storage::Location;
use crate::store::RunStamp;

/// Most conversations of one account paged at the same time, unless
/// `--concurrency` says otherwise: at 300 reads/s and 300 ms per answer,
/// about 90 are needed to keep the pace, twice that to keep it steady.
pub const DEFAULT_CONCURRENCY: usize = 256;

/// The longest retention window `--retain-days` takes: a century.
pub const MAX_RETAIN_DAYS: u32 = 36_500;

/// One conversation to sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The connected account reading it.
    pub account: Account,
    /// The other participant.
    pub user: UserRef,
}

/// Validated options of a sync run.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// How to reach the API.
    pub api: ClientConfig,
    /// Output folder.
    pub out: Location,
    /// Only this shard of the job's conversations, in `<out>/shard=K/`.
    pub shard: Option<Shard>,
    /// Pages fetched per scan of a conversation in one run at most (an
    /// incremental scan and a backfill each); the rest is left for the next
    /// run.
    pub max_pages: Option<u64>,
    /// Conversations.
    pub targets: Vec<Target>,
    /// Most conversations paged at the same time per account.
    pub concurrency: usize,
    /// Stop before the run spends more credits than this.
    pub max_credits: Option<u64>,
    /// Consecutive empty pages that end a scan.
    pub max_empty_pages: u32,
    /// Longest time between commits.
    pub commit_interval: Duration,
    /// Print progress lines while running.
    pub progress: bool,
    /// Key for signing the run's manifest.
    pub audit_key: Option<AuditKey>,
    /// SSH key for signing the run's manifest (`--signing-key`).
    pub signing_key: Option<SigningKey>,
    /// Compact the partitions of dates that closed since the last
    /// compaction, after the run (`--compact`).
    pub compact: bool,
    /// Erase the messages older than this many days, at most once a day,
    /// inside the run (`--retain-days`).
    pub retain_days: Option<u32>,
    /// The run's ID and start time; `None` for now. The longevity bench
    /// sets it to simulate a job running every five minutes for days.
    pub stamp: Option<RunStamp>,
}

impl SyncOptions {
    /// Options with the defaults for everything but the essentials.
    pub fn new(api: ClientConfig, out: impl Into<Location>, targets: Vec<Target>) -> SyncOptions {
        SyncOptions {
            api,
            out: out.into(),
            shard: None,
            max_pages: None,
            targets,
            concurrency: DEFAULT_CONCURRENCY,
            max_credits: None,
            max_empty_pages: 5,
            commit_interval: Duration::from_secs(1),
            progress: false,
            compact: false,
            retain_days: None,
            stamp: None,
            audit_key: None,
            signing_key: None,
        }
    }
}
