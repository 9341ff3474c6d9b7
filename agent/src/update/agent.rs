//! The thin shell around [`UpdateMachine`]: executes its actions with an [`Io`] and an
//! [`AbBootloader`], feeds the results back, and stops where the device must do something the
//! shell cannot (reboot, run health checks).
//!
//! After any error the agent must be dropped and started again from the persisted state
//! ([`Agent::start`]): an error is usually a power loss, after which nothing in memory counts.

use std::path::{Path, PathBuf};

use tugboot_firmware::{Policy, Timestamp, TrustedRoot, VerifyError, verify_manifest};

use crate::io::{Io, read_file, write_atomic};
use crate::slot::{self, ArtifactSource, SlotError, SlotPaths, WriteObserver};
use crate::update::boot::{AbBootloader, BootError, Booted};
use crate::update::machine::{Action, Event, Progress, UpdateError, UpdateMachine, image_of};
use crate::update::state::{AgentState, MAX_STATE_BYTES, Outcome, StateError};

/// Where things are on the device.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The state file (its directory must be on a file system that honours `fsync`).
    pub state_path: PathBuf,
    /// The two slots.
    pub slots: SlotPaths,
    /// The device's board, checked against manifests.
    pub board: Option<String>,
    /// Chunk size for streaming into slots.
    pub chunk: usize,
    /// Bytes between download checkpoints (slot synced, offset persisted; 0: none).
    pub checkpoint: u64,
}

/// What the device must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing: no update in progress (or waiting for the next one).
    Idle,
    /// Reboot now (into the trial, or back to the committed slot).
    Reboot,
    /// Run the health checks, then call [`Agent::health`] (or [`Agent::watchdog_timeout`]).
    HealthCheck,
}

/// Failure of the update shell.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The state file is unusable.
    #[error("state {path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: StateError,
    },
    /// Reading or writing the state file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest was rejected; nothing was written.
    #[error("manifest rejected ({code}): {0}", code = .0.code())]
    Manifest(#[from] VerifyError),
    /// The state machine refused the step.
    #[error(transparent)]
    Update(#[from] UpdateError),
    /// Committing or cancelling a trial in the bootloader failed; the persisted state still
    /// describes the situation and the step is retried on the next start.
    #[error("bootloader: {0}")]
    Bootloader(#[from] BootError),
    /// An action needed an artifact source and none was given.
    #[error("no artifact source for the download")]
    NoSource,
    /// The download stopped for a while (the network); the update stays in `downloading` and
    /// resumes from its last checkpoint at the next attempt.
    #[error("download stopped at byte {offset}, resumable: {source}")]
    Download {
        /// The last checkpoint.
        offset: u64,
        /// The source's error.
        #[source]
        source: std::io::Error,
    },
}

/// The agent's update path on one device.
#[derive(Debug)]
pub struct Agent<I, B> {
    io: I,
    boot: B,
    config: AgentConfig,
    machine: UpdateMachine,
    reports: Vec<Outcome>,
}

impl<I: Io, B: AbBootloader> Agent<I, B> {
    /// Starts in a fresh boot: reads the state (or, if there is none, records `booted` as the
    /// committed slot with no known image), then does whatever the persisted phase calls for.
    /// `booted` is the running slot with its evidence (a bare [`Slot`] counts as the kernel
    /// command line's); `boot_id` must be non-empty.
    ///
    /// # Errors
    /// An unusable state file, I/O or bootloader errors.
    pub fn start(
        mut io: I,
        boot: B,
        config: AgentConfig,
        booted: impl Into<Booted>,
        boot_id: &str,
    ) -> Result<(Self, Next), AgentError> {
        let booted: Booted = booted.into();
        let path = config.state_path.clone();
        let io_err = |op, source| AgentError::Io {
            op,
            path: path.clone(),
            source,
        };
        let len = io.len(&path).map_err(|e| io_err("stat", e))?;
        if let Some(len) = len.filter(|&l| l > u64::try_from(MAX_STATE_BYTES).unwrap_or(u64::MAX)) {
            return Err(AgentError::State {
                path,
                source: StateError::TooLarge(usize::try_from(len).unwrap_or(usize::MAX)),
            });
        }
        let bytes = read_file(&mut io, &path, MAX_STATE_BYTES).map_err(|e| io_err("read", e))?;
        let state = match bytes {
            Some(bytes) => {
                AgentState::parse(&bytes).map_err(|source| AgentError::State { path, source })?
            }
            None => AgentState::provisioned(booted.slot, None, 0),
        };
        let mut agent = Self {
            io,
            boot,
            config,
            machine: UpdateMachine::new(state),
            reports: Vec::new(),
        };
        agent.machine.handle(Event::Booted {
            booted,
            boot_id: boot_id.to_owned(),
        })?;
        let next = agent.drive(None)?;
        Ok((agent, next))
    }

    /// Verifies `manifest` against `root` (floor and installed version from the state) and, if
    /// it is good, installs its `slot` artifact read from `artifact` into the inactive slot and
    /// arms the bootloader. A rejected manifest writes nothing at all. When an interrupted
    /// download of the same manifest is in progress it resumes from its last checkpoint;
    /// another manifest abandons it ([`Outcome::Interrupted`]) first.
    ///
    /// # Errors
    /// [`AgentError::Manifest`] for a rejected manifest; [`AgentError::Download`] when the
    /// source stopped for a while (resumable); I/O errors. A bad artifact is not an error: it
    /// ends the update with [`Outcome::Failed`] (see [`Agent::take_reports`]).
    pub fn update(
        &mut self,
        manifest: &[u8],
        root: &TrustedRoot,
        now: Timestamp,
        artifact: &mut dyn ArtifactSource,
    ) -> Result<Next, AgentError> {
        let state = self.machine.state();
        let policy = Policy {
            now,
            board: self.config.board.as_deref(),
            floor: state.floor,
            current_version: state.committed.image.as_ref().map(|i| i.version),
        };
        let verified = verify_manifest(manifest, root, &policy)?;
        let (image, manifest_sha256) = image_of(&verified)?;
        self.machine.handle(Event::ManifestVerified {
            image,
            manifest_sha256,
        })?;
        self.drive(Some(artifact))
    }

    /// Gives up an interrupted download ([`Outcome::Interrupted`]); nothing else changes.
    ///
    /// # Errors
    /// No download in progress; I/O errors.
    pub fn abandon_download(&mut self) -> Result<Next, AgentError> {
        self.machine.handle(Event::AbandonDownload)?;
        self.drive(None)
    }

    /// Result of the health checks in the trial boot.
    ///
    /// # Errors
    /// As for [`Agent::update`].
    pub fn health(&mut self, result: Result<(), String>) -> Result<Next, AgentError> {
        self.machine.handle(Event::Health(result))?;
        self.drive(None)
    }

    /// The health checks did not complete in time.
    ///
    /// # Errors
    /// As for [`Agent::update`].
    pub fn watchdog_timeout(&mut self) -> Result<Next, AgentError> {
        self.machine.handle(Event::WatchdogTimeout)?;
        self.drive(None)
    }

    /// The state as last persisted.
    #[must_use]
    pub fn state(&self) -> &AgentState {
        self.machine.state()
    }

    /// Download progress.
    #[must_use]
    pub fn progress(&self) -> Option<Progress> {
        self.machine.progress()
    }

    /// Outcomes to report, oldest first (each one is already persisted).
    pub fn take_reports(&mut self) -> Vec<Outcome> {
        std::mem::take(&mut self.reports)
    }

    /// The bootloader adapter.
    pub fn bootloader(&mut self) -> &mut B {
        &mut self.boot
    }

    /// Gives back the I/O and the bootloader.
    pub fn into_parts(self) -> (I, B) {
        (self.io, self.boot)
    }

    fn feed(&mut self, event: Event) -> Result<(), AgentError> {
        Ok(self.machine.handle(event)?)
    }

    fn drive(&mut self, mut source: Option<&mut dyn ArtifactSource>) -> Result<Next, AgentError> {
        while let Some(action) = self.machine.poll_action() {
            match action {
                Action::Persist(state) => {
                    let path = &self.config.state_path;
                    write_atomic(&mut self.io, path, &state.to_bytes()).map_err(|source| {
                        AgentError::Io {
                            op: "write",
                            path: path.clone(),
                            source,
                        }
                    })?;
                }
                Action::WriteSlot {
                    slot,
                    sha256,
                    size,
                    from,
                } => {
                    let src = source.take().ok_or(AgentError::NoSource)?;
                    let path = self.config.slots.path(slot).to_path_buf();
                    let mut observer = Observer {
                        machine: &mut self.machine,
                        state_path: &self.config.state_path,
                        every: self.config.checkpoint,
                        last: from,
                    };
                    let result = slot::write_slot_from(
                        &mut self.io,
                        &path,
                        sha256,
                        size,
                        from,
                        src,
                        self.config.chunk,
                        &mut observer,
                    );
                    let last = observer.last;
                    match result {
                        Ok(()) => self.feed(Event::ArtifactComplete)?,
                        Err(SlotError::Source(e)) if src.is_transient(&e) => {
                            return Err(AgentError::Download {
                                offset: last,
                                source: e,
                            });
                        }
                        Err(e) => self.feed(Event::ArtifactFailed {
                            reason: e.to_string(),
                        })?,
                    }
                }
                Action::SyncAndVerifySlot { slot, sha256, size } => {
                    let path = self.config.slots.path(slot).to_path_buf();
                    let result =
                        slot::sync_and_verify(&mut self.io, &path, sha256, size, self.config.chunk);
                    self.feed(match result {
                        Ok(()) => Event::SlotVerified,
                        Err(e) => Event::SlotVerifyFailed {
                            reason: e.to_string(),
                        },
                    })?;
                }
                Action::ArmTrial(slot) => {
                    let event = match self.boot.arm_trial(slot) {
                        Ok(()) => Event::BootloaderArmed,
                        Err(e) => Event::BootloaderArmFailed {
                            reason: e.to_string(),
                        },
                    };
                    self.feed(event)?;
                }
                Action::CommitBoot(slot) => {
                    self.boot.commit(slot)?;
                    self.feed(Event::BootloaderCommitted)?;
                }
                Action::AbortTrial(slot) => {
                    self.boot.abort_trial(slot)?;
                    self.feed(Event::BootloaderDisarmed)?;
                }
                Action::Reboot => return Ok(Next::Reboot),
                Action::RunHealthChecks => return Ok(Next::HealthCheck),
                Action::Report(outcome) => self.reports.push(outcome),
            }
        }
        Ok(Next::Idle)
    }
}

/// The machine's view of a slot write: progress counts, and each checkpoint is fed to the
/// machine and its `Persist` carried out at once (the slot is synced up to the checkpoint
/// before, so the persisted offset never runs ahead of the data).
struct Observer<'a> {
    machine: &'a mut UpdateMachine,
    state_path: &'a Path,
    every: u64,
    last: u64,
}

impl WriteObserver for Observer<'_> {
    fn written(&mut self, len: u64) {
        // Chunk events only update the progress counter; they cannot fail while downloading.
        let _ = self.machine.handle(Event::ChunkWritten { len });
    }

    fn checkpoint_every(&self) -> u64 {
        self.every
    }

    fn checkpoint(&mut self, io: &mut dyn Io, offset: u64) -> std::io::Result<()> {
        self.machine
            .handle(Event::Checkpoint { offset })
            .map_err(std::io::Error::other)?;
        while let Some(action) = self.machine.poll_action() {
            if let Action::Persist(state) = action {
                write_atomic(io, self.state_path, &state.to_bytes())?;
            }
        }
        self.last = offset;
        Ok(())
    }
}
