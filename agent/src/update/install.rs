//! Installer mode: provision a device from files (a manifest and its artifacts on local media or
//! a netbooted installer), with no trial boot: nothing runs from either slot yet, so the freshly
//! verified slot becomes the committed one directly.

use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use tugboot_firmware::{
    MAX_MANIFEST_BYTES, Policy, Timestamp, TrustedRoot, VerifyError, verify_manifest,
};

use crate::bootloader::Slot;
use crate::io::{Io, write_atomic};
use crate::slot::{self, SlotError, SlotPaths};
use crate::update::boot::{AbBootloader, BootError};
use crate::update::machine::{UpdateError, image_of};
use crate::update::state::AgentState;

/// What the installer needs to know.
#[derive(Debug, Clone)]
pub struct InstallConfig {
    /// The two slots.
    pub slots: SlotPaths,
    /// The slot to install into (and commit).
    pub target: Slot,
    /// Where the agent's state file goes.
    pub state_path: PathBuf,
    /// The device's board.
    pub board: Option<String>,
    /// The time to check expiry against.
    pub now: Timestamp,
    /// Streaming chunk size.
    pub chunk: usize,
}

/// Installation failed; nothing was committed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallError {
    /// The manifest or an artifact file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest file is larger than any valid manifest.
    #[error("{0}: larger than a manifest can be")]
    ManifestTooLarge(PathBuf),
    /// The manifest was rejected.
    #[error("manifest rejected ({code}): {0}", code = .0.code())]
    Manifest(#[from] VerifyError),
    /// The manifest has no single slot artifact.
    #[error(transparent)]
    Update(#[from] UpdateError),
    /// The artifact name cannot be a file in the artifact directory.
    #[error("artifact name {0:?} is not a plain file name")]
    BadArtifactName(String),
    /// Writing or verifying the slot failed.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// Writing the state file failed.
    #[error("writing {path}: {source}")]
    State {
        /// The state file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Setting the bootloader failed.
    #[error("bootloader: {0}")]
    Bootloader(#[from] BootError),
}

/// Verifies the manifest at `manifest`, streams its `slot` artifact from `artifact_dir` into
/// `config.target`, reads it back, records it as committed (floor = its version) and makes it the
/// bootloader's default. Returns the state written.
///
/// Order: slot, state, bootloader. A power loss at any point leaves the bootloader pointing at
/// whatever it pointed at before; running the installer again completes the job.
///
/// # Errors
/// See [`InstallError`].
pub fn install_from_files(
    manifest: &Path,
    artifact_dir: &Path,
    root: &TrustedRoot,
    config: &InstallConfig,
    io: &mut dyn Io,
    boot: &mut dyn AbBootloader,
) -> Result<AgentState, InstallError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InstallError::Read { path, source }
    };
    let mut bytes = Vec::new();
    File::open(manifest)
        .and_then(|f| {
            f.take(u64::try_from(MAX_MANIFEST_BYTES).unwrap_or(u64::MAX) + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(read_err(manifest))?;
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(InstallError::ManifestTooLarge(manifest.to_path_buf()));
    }
    let policy = Policy {
        now: config.now,
        board: config.board.as_deref(),
        floor: 0,
        current_version: None,
    };
    let verified = verify_manifest(&bytes, root, &policy)?;
    let (image, _) = image_of(&verified)?;
    let name = verified
        .artifacts
        .iter()
        .find(|a| a.sha256 == image.sha256 && a.role == tugboot_firmware::Role::Slot)
        .map(|a| a.name.clone())
        .unwrap_or_default();
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(InstallError::BadArtifactName(name));
    }
    let artifact = artifact_dir.join(&name);
    let mut source = File::open(&artifact).map_err(read_err(&artifact))?;
    let slot_path = config.slots.path(config.target);
    slot::write_slot(
        io,
        slot_path,
        image.sha256,
        image.size,
        &mut source,
        config.chunk,
        &mut |_| {},
    )?;
    slot::sync_and_verify(io, slot_path, image.sha256, image.size, config.chunk)?;
    let floor = image.version;
    let state = AgentState::provisioned(config.target, Some(image), floor);
    write_atomic(io, &config.state_path, &state.to_bytes()).map_err(|source| {
        InstallError::State {
            path: config.state_path.clone(),
            source,
        }
    })?;
    boot.abort_trial(config.target)?;
    Ok(state)
}
