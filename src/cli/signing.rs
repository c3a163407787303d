//! The SSH signing options: `--signing-key` on every command that seals a
//! run (`sync`, `send`, `compact`), with `XQUIK_DM_SIGNING_KEY_FILE` and a
//! job file's `signing_key` behind it, and `verify`'s trust list. The keys
//! are read here, once, so that a bad key file is bad input (exit 2)
//! before any request is made or any file written.

// Reads bytes the API or a file supplies: no panic may be reachable from them.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::sshsig::{AllowedSigners, SigningKey};

/// The signing key option, as typed (flattened into each sealing
/// command's options).
#[derive(Debug, clap::Args)]
pub struct SigningArgs {
    /// OpenSSH Ed25519 private key (unencrypted, mode 0600) that signs the run's
    /// manifest: audit/runs/<run>.manifest.json.sig, which `ssh-keygen -Y verify
    /// -n xquik-dm-manifest@v1` checks.
    #[arg(long, env = crate::sshsig::SIGNING_KEY_ENV, value_name = "FILE")]
    signing_key: Option<PathBuf>,
}

impl SigningArgs {
    /// The key: the option's (or the environment's), else `job_key` (a job
    /// file's `signing_key`); `None` when neither names one.
    pub fn load(&self, job_key: Option<&Path>) -> Result<Option<SigningKey>> {
        match (&self.signing_key, job_key) {
            (Some(path), _) => SigningKey::load(path, "--signing-key").map(Some),
            (None, Some(path)) => SigningKey::load(path, "signing_key").map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// The trust list of `verify --allowed-signers`, if given.
pub fn load_allowed_signers(path: Option<&Path>) -> Result<Option<AllowedSigners>> {
    path.map(|p| AllowedSigners::load(p, "--allowed-signers"))
        .transpose()
}
