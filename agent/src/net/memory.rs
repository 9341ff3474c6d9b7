//! Small facts the `run` loop keeps between cycles and reboots, each in its own file next to
//! the state file, written atomically (`io::write_atomic`) and read strictly with a size cap.
//! None of them is part of the update's state machine, and older agents never read them:
//!
//! - `refused.json` ([`Refusal`]): the assignment whose manifest the device refused or whose
//!   update failed, with that outcome. The same assignment is not tried again (no full
//!   download and no second report on every poll) until the server assigns something else, or
//!   the operator runs `tugboot-agent retry`.
//! - `revoked.json` ([`Revocation`]): the server said the device's certificate is revoked.
//!   The agent then stops talking to the server (no updates, no reports) until it is enrolled
//!   again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{DeviceConfig, read_capped};
use crate::io::{RealIo, write_atomic};
use crate::net::Assignment;
use crate::update::Outcome;

/// Size cap of each memory file.
pub const MAX_MEMORY_BYTES: usize = 16 * 1024;

/// A memory file could not be written or removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// The OS refused.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Which file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn dir_of(config: &DeviceConfig) -> &Path {
    config.state_file.parent().unwrap_or_else(|| Path::new("/"))
}

fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let bytes = read_capped(path, MAX_MEMORY_BYTES).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn store<T: Serialize>(path: &Path, value: &T) -> Result<(), MemoryError> {
    let bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    write_atomic(&mut RealIo::new(), path, &bytes).map_err(|source| MemoryError::Io {
        op: "write",
        path: path.to_path_buf(),
        source,
    })
}

fn clear(path: &Path) -> Result<(), MemoryError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(MemoryError::Io {
            op: "remove",
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// An assignment the device will not try again, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    /// The assignment's manifest URL.
    pub manifest_url: String,
    /// The assignment's rollout.
    pub rollout: Option<i64>,
    /// How it ended on this device (`failed`, `rejected`).
    pub outcome: Outcome,
}

impl Refusal {
    /// `refused.json` beside the state file.
    #[must_use]
    pub fn path(config: &DeviceConfig) -> PathBuf {
        dir_of(config).join("refused.json")
    }

    /// The remembered refusal, if any (an unreadable file counts as none: the cost is one
    /// more attempt).
    #[must_use]
    pub fn load(config: &DeviceConfig) -> Option<Self> {
        load(&Self::path(config))
    }

    /// Remembers a refusal of `assignment`.
    ///
    /// # Errors
    /// The file could not be written.
    pub fn store(
        config: &DeviceConfig,
        assignment: &Assignment,
        outcome: &Outcome,
    ) -> Result<(), MemoryError> {
        store(
            &Self::path(config),
            &Self {
                manifest_url: assignment.manifest_url.clone(),
                rollout: assignment.rollout,
                outcome: outcome.clone(),
            },
        )
    }

    /// Forgets it (the assignment changed, or `tugboot-agent retry`).
    ///
    /// # Errors
    /// The file could not be removed.
    pub fn clear(config: &DeviceConfig) -> Result<(), MemoryError> {
        clear(&Self::path(config))
    }

    /// Whether `assignment` is the one refused: same manifest URL and same rollout.
    #[must_use]
    pub fn is_for(&self, assignment: &Assignment) -> bool {
        self.manifest_url == assignment.manifest_url && self.rollout == assignment.rollout
    }
}

/// The server revoked the device's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// The server's words (`certificate … is revoked`, `device 7 is revoked or deleted`).
    pub reason: String,
    /// When the agent learnt it, unix seconds.
    pub at: u64,
}

impl Revocation {
    /// `revoked.json` beside the state file.
    #[must_use]
    pub fn path(config: &DeviceConfig) -> PathBuf {
        dir_of(config).join("revoked.json")
    }

    /// The recorded revocation, if any.
    #[must_use]
    pub fn load(config: &DeviceConfig) -> Option<Self> {
        load(&Self::path(config))
    }

    /// Records a revocation.
    ///
    /// # Errors
    /// The file could not be written.
    pub fn store(config: &DeviceConfig, reason: &str, at: u64) -> Result<(), MemoryError> {
        store(
            &Self::path(config),
            &Self {
                reason: reason.to_owned(),
                at,
            },
        )
    }

    /// Forgets it (after a new enrollment).
    ///
    /// # Errors
    /// The file could not be removed.
    pub fn clear(config: &DeviceConfig) -> Result<(), MemoryError> {
        clear(&Self::path(config))
    }
}
