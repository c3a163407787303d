//! xquik-dm moves X direct messages between the Xquik API and the private
//! systems where teams keep them.
//!
//! The data flow, one module per step:
//! - [`api`]: the HTTP client, endpoints, retry rules and wire shapes of the
//!   Xquik API;
//! - [`normalize`], [`timestamp`], [`records`], [`dedupe`]: messages become
//!   rows, deduped by message ID;
//! - [`commands`]: what each subcommand does, each returning a report;
//! - [`store`]: the commit protocol over the outputs ([`sinks`], [`audit`],
//!   [`checkpoint`]), written once against the [`storage`] seam (a local
//!   folder or a bucket); [`delta`] keeps the Parquet outputs as Delta
//!   tables;
//! - [`mock`]: an embedded, realistic mock of the API for the demo and tests.
//!
//! The binary (`src/main.rs`) only parses the command line (`cli`), calls a
//! command and maps its outcome to an exit status.

pub mod api;
pub mod audit;
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod dedupe;
pub mod delta;
pub mod erasure;
pub mod error;
pub mod logging;
pub mod metrics;
pub mod mock;
pub mod normalize;
pub mod records;
pub mod shard;
pub mod sinks;
pub mod sshsig;
pub mod storage;
pub mod store;
pub mod timestamp;

pub use api::client::{ApiKey, Client, ClientConfig, DEFAULT_BASE_URL};
pub use api::retry::RetryPolicy;
pub use api::{Account, Endpoint, IdempotencyKey, UserRef};
pub use error::{ApiError, Error, ErrorClass, Result};
