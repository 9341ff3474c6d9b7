//! The sans-IO A/B update state machine: events in, actions out; no files, no clock.
//!
//! Shape of quinn-proto: [`UpdateMachine::handle`] takes an [`Event`] (something the shell did or
//! observed), [`UpdateMachine::poll_action`] hands out [`Action`]s in order. The shell executes
//! actions one by one and stops at the first failure (a power loss); every
//! [`Action::Persist`] precedes the actions it makes safe, so whatever prefix of them completed,
//! the persisted state describes the device conservatively. See `docs/agent.md`.

use std::collections::VecDeque;

use tugboot_firmware::{Role, Sha256Digest, VerifiedManifest};

use crate::bootloader::Slot;
use crate::update::boot::{Booted, Evidence};
use crate::update::state::{AgentState, Committed, Image, Outcome, Phase, UpdateRecord, clip};

/// Something that happened, fed to [`UpdateMachine::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The agent started in a boot: which slot the bootloader booted and how that is known
    /// (kernel command line, firmware, the bootloader's records), and an identifier of this
    /// boot (`/proc/sys/kernel/random/boot_id`). Always the first event.
    Booted {
        /// The slot running now, and the evidence.
        booted: Booted,
        /// Changes on every boot.
        boot_id: String,
    },
    /// A manifest passed verification; install its `slot` artifact.
    ManifestVerified {
        /// What to install.
        image: Image,
        /// SHA-256 of the verified envelope.
        manifest_sha256: Sha256Digest,
    },
    /// Bytes of the artifact were written into the target slot (already size-checked).
    ChunkWritten {
        /// How many.
        len: u64,
    },
    /// The target slot holds the first `offset` bytes of the artifact, synced: a later attempt
    /// may resume there.
    Checkpoint {
        /// Bytes written and synced.
        offset: u64,
    },
    /// Give up an interrupted download (the server assigns something else now).
    AbandonDownload,
    /// The whole artifact was streamed and matched its size and digest.
    ArtifactComplete,
    /// The artifact could not be written or is not the signed one.
    ArtifactFailed {
        /// Why.
        reason: String,
    },
    /// The slot was synced and reads back as the artifact.
    SlotVerified,
    /// Sync or read-back failed.
    SlotVerifyFailed {
        /// Why.
        reason: String,
    },
    /// The bootloader now tries the target slot on the next boot.
    BootloaderArmed,
    /// Arming failed (the environment is unchanged or unknown).
    BootloaderArmFailed {
        /// Why.
        reason: String,
    },
    /// The bootloader now boots the target slot for good.
    BootloaderCommitted,
    /// The bootloader now boots the committed slot, without a trial.
    BootloaderDisarmed,
    /// Result of the health checks in the trial boot.
    Health(Result<(), String>),
    /// The health checks did not finish in time.
    WatchdogTimeout,
}

/// Something the shell must do, taken from [`UpdateMachine::poll_action`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Replace the state file with this state (atomically) before anything that follows.
    Persist(Box<AgentState>),
    /// Stream the artifact into `slot` from byte `from` (the slot already holds the bytes
    /// before it, synced); answer with chunk and checkpoint events and then `ArtifactComplete`
    /// or `ArtifactFailed`. A source that fails for a while (network) is not answered at all:
    /// the update stays resumable from its last checkpoint.
    WriteSlot {
        /// Target.
        slot: Slot,
        /// Expected digest.
        sha256: Sha256Digest,
        /// Expected size.
        size: u64,
        /// Where to resume.
        from: u64,
    },
    /// Sync `slot`, read back and check; answer `SlotVerified` or `SlotVerifyFailed`.
    SyncAndVerifySlot {
        /// Target.
        slot: Slot,
        /// Expected digest.
        sha256: Sha256Digest,
        /// Expected size.
        size: u64,
    },
    /// Arm the bootloader for one trial boot of the slot; answer `BootloaderArmed` or
    /// `BootloaderArmFailed`.
    ArmTrial(Slot),
    /// Make the slot the bootloader's default; answer `BootloaderCommitted`.
    CommitBoot(Slot),
    /// Cancel any trial and boot this (committed) slot; answer `BootloaderDisarmed`.
    AbortTrial(Slot),
    /// Reboot the device (the shell syncs first).
    Reboot,
    /// Run the health checks; answer `Health` or `WatchdogTimeout`.
    RunHealthChecks,
    /// Tell the server (and the log) how the update ended. Always after the `Persist` recording
    /// it.
    Report(Outcome),
}

/// An event that does not fit the current state, or a manifest the machine cannot install.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// An event arrived that the state does not expect; nothing changed.
    #[error("event {event} is not expected while {state}")]
    Unexpected {
        /// The event.
        event: &'static str,
        /// The state.
        state: &'static str,
    },
    /// A new update while another one is in progress, or before the boot is known.
    #[error("cannot start an update while {0}")]
    Busy(&'static str),
    /// The running slot is not the committed one: installing would overwrite the only verified
    /// fallback.
    #[error("running slot {booted} is not the committed slot {committed}")]
    NotOnCommittedSlot {
        /// Running.
        booted: Slot,
        /// Committed.
        committed: Slot,
    },
    /// The manifest has no `slot` artifact.
    #[error("manifest has no slot artifact")]
    NoSlotArtifact,
    /// The manifest has more than one `slot` artifact.
    #[error("manifest has {0} slot artifacts, the A/B backend installs exactly one")]
    SeveralSlotArtifacts(usize),
    /// The image is below the rollback floor.
    #[error("version {version} is below the floor {floor}")]
    BelowFloor {
        /// Image version.
        version: u64,
        /// Floor.
        floor: u64,
    },
}

/// The image and manifest digest to install from a verified manifest: its one `slot` artifact.
///
/// # Errors
/// No or several `slot` artifacts.
pub fn image_of(manifest: &VerifiedManifest) -> Result<(Image, Sha256Digest), UpdateError> {
    let slots: Vec<_> = manifest
        .artifacts
        .iter()
        .filter(|a| a.role == Role::Slot)
        .collect();
    let artifact = match slots.as_slice() {
        [] => return Err(UpdateError::NoSlotArtifact),
        [one] => *one,
        many => return Err(UpdateError::SeveralSlotArtifacts(many.len())),
    };
    Ok((
        Image {
            name: manifest.name.clone(),
            version: manifest.version,
            sha256: artifact.sha256,
            size: artifact.size,
        },
        Sha256Digest::of(manifest.envelope_bytes()),
    ))
}

/// Bytes written into the target slot so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Written.
    pub written: u64,
    /// Total.
    pub size: u64,
}

/// The update state machine. Holds the persisted state plus what is known about this boot.
#[derive(Debug)]
pub struct UpdateMachine {
    state: AgentState,
    booted: Option<(Slot, String)>,
    evidence: Evidence,
    /// [`Action::RunHealthChecks`] was handed out in this boot: only then may a health result
    /// (and with it a commit) come in.
    awaiting_health: bool,
    /// [`Action::WriteSlot`] was handed out and not yet answered: a second manifest is busy.
    writing: bool,
    progress: Option<Progress>,
    actions: VecDeque<Action>,
}

fn event_name(e: &Event) -> &'static str {
    match e {
        Event::Booted { .. } => "booted",
        Event::ManifestVerified { .. } => "manifest-verified",
        Event::ChunkWritten { .. } => "chunk-written",
        Event::Checkpoint { .. } => "checkpoint",
        Event::AbandonDownload => "abandon-download",
        Event::ArtifactComplete => "artifact-complete",
        Event::ArtifactFailed { .. } => "artifact-failed",
        Event::SlotVerified => "slot-verified",
        Event::SlotVerifyFailed { .. } => "slot-verify-failed",
        Event::BootloaderArmed => "bootloader-armed",
        Event::BootloaderArmFailed { .. } => "bootloader-arm-failed",
        Event::BootloaderCommitted => "bootloader-committed",
        Event::BootloaderDisarmed => "bootloader-disarmed",
        Event::Health(_) => "health",
        Event::WatchdogTimeout => "watchdog-timeout",
    }
}

impl UpdateMachine {
    /// A machine resuming from `state` (read from disk). Feed [`Event::Booted`] first.
    #[must_use]
    pub fn new(state: AgentState) -> Self {
        Self {
            state,
            booted: None,
            evidence: Evidence::Default,
            awaiting_health: false,
            writing: false,
            progress: None,
            actions: VecDeque::new(),
        }
    }

    /// The state as last handed out for persisting (or as loaded).
    #[must_use]
    pub fn state(&self) -> &AgentState {
        &self.state
    }

    /// Download progress while downloading in this boot.
    #[must_use]
    pub fn progress(&self) -> Option<Progress> {
        self.progress
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Short name of the current phase, for errors and logs.
    #[must_use]
    pub fn phase_name(&self) -> &'static str {
        if self.booted.is_none() {
            return "starting";
        }
        match self.state.update.as_ref().map(|u| &u.phase) {
            None => "idle",
            Some(Phase::Downloading) => "downloading",
            Some(Phase::Installed) => "installed",
            Some(Phase::Trying { .. }) => "trying",
            Some(Phase::RollingBack { .. }) => "rolling back",
        }
    }

    fn persist(&mut self) {
        self.actions
            .push_back(Action::Persist(Box::new(self.state.clone())));
    }

    fn set_phase(&mut self, phase: Phase) {
        if let Some(u) = &mut self.state.update {
            u.phase = phase;
        }
        self.persist();
    }

    /// Ends the update with `outcome`: persist the end state, then report it.
    fn finish(&mut self, outcome: Outcome) {
        self.state.update = None;
        self.state.last_result = Some(outcome.clone());
        self.progress = None;
        self.persist();
        self.actions.push_back(Action::Report(outcome));
    }

    fn request_health(&mut self) {
        self.awaiting_health = true;
        self.actions.push_back(Action::RunHealthChecks);
    }

    fn start_rollback(&mut self, reason: &str) {
        let committed = self.state.committed.slot;
        self.set_phase(Phase::RollingBack {
            reason: clip(reason),
        });
        self.actions.push_back(Action::AbortTrial(committed));
    }

    /// Feeds one event.
    ///
    /// # Errors
    /// [`UpdateError`] for an event the state does not expect or a manifest it cannot install;
    /// the machine is then unchanged and queued no action.
    pub fn handle(&mut self, event: Event) -> Result<(), UpdateError> {
        let unexpected = UpdateError::Unexpected {
            event: event_name(&event),
            state: self.phase_name(),
        };
        if let Event::Booted { booted, boot_id } = event {
            if self.booted.is_some() {
                return Err(unexpected);
            }
            self.booted = Some((booted.slot, boot_id));
            self.evidence = booted.evidence;
            self.on_boot();
            return Ok(());
        }
        let Some((booted, boot_id)) = self.booted.clone() else {
            return Err(unexpected);
        };
        let committed = self.state.committed.slot;
        let Some(update) = self.state.update.clone() else {
            return match event {
                Event::ManifestVerified {
                    image,
                    manifest_sha256,
                } => self.start(booted, image, manifest_sha256),
                _ => Err(unexpected),
            };
        };
        let target = update.slot;
        let image = update.image.clone();
        match (&update.phase, event) {
            (
                Phase::Downloading,
                Event::ManifestVerified {
                    image: new,
                    manifest_sha256,
                },
            ) if !self.writing => {
                if booted != committed {
                    return Err(UpdateError::NotOnCommittedSlot { booted, committed });
                }
                if manifest_sha256 == update.manifest_sha256 && new == image {
                    // The same update again: carry on from the last checkpoint.
                    self.progress = Some(Progress {
                        written: update.downloaded,
                        size: image.size,
                    });
                    self.writing = true;
                    self.actions.push_back(Action::WriteSlot {
                        slot: target,
                        sha256: image.sha256,
                        size: image.size,
                        from: update.downloaded,
                    });
                } else {
                    // Something else is assigned now: this download is over.
                    self.finish(Outcome::Interrupted {
                        name: image.name,
                        version: image.version,
                    });
                    return self.start(booted, new, manifest_sha256);
                }
            }
            (_, Event::ManifestVerified { .. }) => {
                return Err(UpdateError::Busy(self.phase_name()));
            }
            (Phase::Downloading, Event::AbandonDownload) if !self.writing => {
                self.finish(Outcome::Interrupted {
                    name: image.name,
                    version: image.version,
                });
            }
            (Phase::Downloading, Event::ChunkWritten { len }) => {
                if let Some(p) = &mut self.progress {
                    p.written = p.written.saturating_add(len);
                }
            }
            (Phase::Downloading, Event::Checkpoint { offset }) if offset <= image.size => {
                if let Some(u) = &mut self.state.update {
                    u.downloaded = offset;
                }
                self.persist();
            }
            (Phase::Downloading, Event::ArtifactComplete) => {
                self.writing = false;
                self.actions.push_back(Action::SyncAndVerifySlot {
                    slot: target,
                    sha256: image.sha256,
                    size: image.size,
                });
            }
            (
                Phase::Downloading | Phase::Installed,
                Event::ArtifactFailed { reason } | Event::SlotVerifyFailed { reason },
            ) => {
                self.writing = false;
                self.finish(Outcome::Failed {
                    name: image.name,
                    version: image.version,
                    reason: clip(&reason),
                    rejected: None,
                });
            }
            (Phase::Downloading | Phase::Installed, Event::SlotVerified) => {
                self.progress = None;
                if let Some(u) = &mut self.state.update {
                    u.downloaded = 0;
                }
                self.set_phase(Phase::Installed);
                self.actions.push_back(Action::ArmTrial(target));
            }
            (Phase::Installed, Event::BootloaderArmed) => {
                self.set_phase(Phase::Trying { boot_id });
                self.actions.push_back(Action::Reboot);
            }
            (Phase::Installed, Event::BootloaderArmFailed { reason }) => {
                self.start_rollback(&format!("arming the bootloader failed: {reason}"));
            }
            (Phase::Trying { .. }, Event::Health(Ok(()))) if self.awaiting_health => {
                self.awaiting_health = false;
                self.actions.push_back(Action::CommitBoot(target));
            }
            (Phase::Trying { .. }, Event::Health(Err(reason))) if self.awaiting_health => {
                self.awaiting_health = false;
                self.start_rollback(&format!("health check failed: {reason}"));
            }
            (Phase::Trying { .. }, Event::WatchdogTimeout) if self.awaiting_health => {
                self.awaiting_health = false;
                self.start_rollback("health checks timed out (watchdog)");
            }
            (Phase::Trying { .. }, Event::BootloaderCommitted) if booted == target => {
                // The floor rises here and only here: the new image is running, healthy, and
                // the bootloader boots it by default.
                self.state.floor = self.state.floor.max(image.version);
                self.state.committed = Committed {
                    slot: target,
                    image: Some(image.clone()),
                };
                self.finish(Outcome::Committed {
                    name: image.name,
                    version: image.version,
                    slot: target,
                });
            }
            (Phase::RollingBack { reason }, Event::BootloaderDisarmed) => {
                if booted == committed {
                    self.finish(Outcome::RolledBack {
                        name: image.name,
                        version: image.version,
                        slot: committed,
                        reason: reason.clone(),
                    });
                } else {
                    self.actions.push_back(Action::Reboot);
                }
            }
            (_, _) => return Err(unexpected),
        }
        Ok(())
    }

    fn start(
        &mut self,
        booted: Slot,
        image: Image,
        manifest_sha256: Sha256Digest,
    ) -> Result<(), UpdateError> {
        let committed = self.state.committed.slot;
        if booted != committed {
            return Err(UpdateError::NotOnCommittedSlot { booted, committed });
        }
        if image.version < self.state.floor {
            return Err(UpdateError::BelowFloor {
                version: image.version,
                floor: self.state.floor,
            });
        }
        let target = committed.other();
        self.progress = Some(Progress {
            written: 0,
            size: image.size,
        });
        let write = Action::WriteSlot {
            slot: target,
            sha256: image.sha256,
            size: image.size,
            from: 0,
        };
        self.state.update = Some(UpdateRecord {
            slot: target,
            image,
            manifest_sha256,
            phase: Phase::Downloading,
            downloaded: 0,
        });
        self.state.last_result = None;
        self.persist();
        self.writing = true;
        self.actions.push_back(write);
        Ok(())
    }

    /// Decides what to do in a fresh boot from the persisted phase and the booted slot.
    fn on_boot(&mut self) {
        let Some((booted, boot_id)) = self.booted.clone() else {
            return;
        };
        let committed = self.state.committed.slot;
        let Some(update) = self.state.update.clone() else {
            return;
        };
        let target = update.slot;
        match update.phase {
            // Half-written slot, synced up to the last checkpoint: nothing to do until the shell
            // offers the same manifest again (resume) or another one (abandon).
            Phase::Downloading => {}
            Phase::Installed if booted == target && self.evidence == Evidence::Default => {
                // Only the bootloader's default names the target, yet it was never committed:
                // nothing shows that it booted as a trial. Go back to the committed slot.
                self.start_rollback(&format!(
                    "slot {target} is the bootloader's default but was never committed"
                ));
            }
            Phase::Installed if booted == target => {
                // Armed, then lost power before recording it; the bootloader took the trial
                // (the kernel command line, the firmware or the trial counter says so). The
                // boot that armed it is unknown: record none.
                self.set_phase(Phase::Trying {
                    boot_id: String::new(),
                });
                self.request_health();
            }
            Phase::Installed => {
                // Check the slot again (nothing may have touched it, but arming is the one step
                // that must never act on unverified content), then arm.
                self.actions.push_back(Action::SyncAndVerifySlot {
                    slot: target,
                    sha256: update.image.sha256,
                    size: update.image.size,
                });
            }
            Phase::Trying { boot_id: asked_in } if !asked_in.is_empty() && asked_in == boot_id => {
                // The boot that armed the trial is still running: no reboot happened, so the
                // trial cannot be running, whatever an armed environment says. Ask again.
                self.actions.push_back(Action::Reboot);
            }
            Phase::Trying { .. } if booted == target => {
                // A new boot, and the bootloader's records put it in the target: the trial
                // (or, after a power cut between the bootloader's commit and persisting it,
                // the target as the committed default).
                self.request_health();
            }
            Phase::Trying { .. } => {
                // A new boot, and not of the trial slot: the bootloader fell back.
                self.start_rollback(&format!(
                    "slot {target} did not come up healthy; the bootloader fell back to {committed}"
                ));
            }
            Phase::RollingBack { .. } => {
                self.actions.push_back(Action::AbortTrial(committed));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(version: u64) -> Image {
        Image {
            name: "edge".into(),
            version,
            sha256: Sha256Digest::of(&version.to_le_bytes()),
            size: 100,
        }
    }

    fn machine() -> UpdateMachine {
        UpdateMachine::new(AgentState::provisioned(Slot::A, Some(image(41)), 41))
    }

    fn boot(m: &mut UpdateMachine, slot: Slot, id: &str) {
        boot_with(m, slot, Evidence::KernelCmdline, id);
    }

    fn boot_with(m: &mut UpdateMachine, slot: Slot, evidence: Evidence, id: &str) {
        m.handle(Event::Booted {
            booted: Booted { slot, evidence },
            boot_id: id.into(),
        })
        .unwrap();
    }

    fn drain(m: &mut UpdateMachine) -> Vec<Action> {
        std::iter::from_fn(|| m.poll_action()).collect()
    }

    fn kinds(actions: &[Action]) -> Vec<&'static str> {
        actions
            .iter()
            .map(|a| match a {
                Action::Persist(_) => "persist",
                Action::WriteSlot { .. } => "write",
                Action::SyncAndVerifySlot { .. } => "sync",
                Action::ArmTrial(_) => "arm",
                Action::CommitBoot(_) => "commit",
                Action::AbortTrial(_) => "abort",
                Action::Reboot => "reboot",
                Action::RunHealthChecks => "health",
                Action::Report(_) => "report",
            })
            .collect()
    }

    fn verified(m: &mut UpdateMachine, version: u64) -> Result<(), UpdateError> {
        m.handle(Event::ManifestVerified {
            image: image(version),
            manifest_sha256: Sha256Digest::of(b"m"),
        })
    }

    /// Runs an update up to the reboot into the trial.
    fn to_trial(m: &mut UpdateMachine) {
        verified(m, 42).unwrap();
        assert_eq!(kinds(&drain(m)), ["persist", "write"]);
        m.handle(Event::ChunkWritten { len: 60 }).unwrap();
        m.handle(Event::ChunkWritten { len: 40 }).unwrap();
        assert_eq!(
            m.progress(),
            Some(Progress {
                written: 100,
                size: 100
            })
        );
        m.handle(Event::ArtifactComplete).unwrap();
        assert_eq!(kinds(&drain(m)), ["sync"]);
        m.handle(Event::SlotVerified).unwrap();
        assert_eq!(kinds(&drain(m)), ["persist", "arm"]);
        m.handle(Event::BootloaderArmed).unwrap();
        assert_eq!(kinds(&drain(m)), ["persist", "reboot"]);
    }

    #[test]
    fn full_cycle_commits_and_raises_floor_last() {
        let mut m = machine();
        boot(&mut m, Slot::A, "1");
        assert!(drain(&mut m).is_empty());
        to_trial(&mut m);
        assert_eq!(m.state().floor, 41);
        let mut m = UpdateMachine::new(m.state().clone());
        boot(&mut m, Slot::B, "2");
        assert_eq!(kinds(&drain(&mut m)), ["health"]);
        m.handle(Event::Health(Ok(()))).unwrap();
        let a = drain(&mut m);
        assert_eq!(a, [Action::CommitBoot(Slot::B)]);
        assert_eq!(m.state().floor, 41, "not before the bootloader commit");
        m.handle(Event::BootloaderCommitted).unwrap();
        let a = drain(&mut m);
        assert_eq!(kinds(&a), ["persist", "report"]);
        let Action::Persist(s) = &a[0] else {
            unreachable!()
        };
        assert_eq!(s.floor, 42);
        assert_eq!(s.committed.slot, Slot::B);
        assert_eq!(s.update, None);
        assert!(matches!(
            &a[1],
            Action::Report(Outcome::Committed { version: 42, .. })
        ));
    }

    #[test]
    fn health_failure_rolls_back_with_reason() {
        let mut m = machine();
        boot(&mut m, Slot::A, "1");
        to_trial(&mut m);
        let mut m = UpdateMachine::new(m.state().clone());
        boot(&mut m, Slot::B, "2");
        drain(&mut m);
        m.handle(Event::Health(Err("sshd down".into()))).unwrap();
        assert_eq!(drain(&mut m)[1], Action::AbortTrial(Slot::A));
        m.handle(Event::BootloaderDisarmed).unwrap();
        assert_eq!(drain(&mut m), [Action::Reboot]);
        let mut m = UpdateMachine::new(m.state().clone());
        boot(&mut m, Slot::A, "3");
        assert_eq!(drain(&mut m), [Action::AbortTrial(Slot::A)]);
        m.handle(Event::BootloaderDisarmed).unwrap();
        let a = drain(&mut m);
        let Action::Report(Outcome::RolledBack { reason, slot, .. }) = &a[1] else {
            panic!("{a:?}")
        };
        assert_eq!(*slot, Slot::A);
        assert!(reason.contains("sshd down"), "{reason}");
        assert_eq!(m.state().floor, 41);
        assert_eq!(m.state().committed.slot, Slot::A);
    }

    #[test]
    fn fallback_by_the_bootloader_is_a_rollback() {
        let mut m = machine();
        boot(&mut m, Slot::A, "1");
        to_trial(&mut m);
        // Same boot: the reboot did not happen yet.
        let mut again = UpdateMachine::new(m.state().clone());
        boot(&mut again, Slot::A, "1");
        assert_eq!(drain(&mut again), [Action::Reboot]);
        // New boot of the old slot: fell back.
        let mut m = UpdateMachine::new(m.state().clone());
        boot(&mut m, Slot::A, "2");
        assert_eq!(kinds(&drain(&mut m)), ["persist", "abort"]);
        m.handle(Event::BootloaderDisarmed).unwrap();
        let a = drain(&mut m);
        assert!(
            matches!(&a[1], Action::Report(Outcome::RolledBack { reason, .. }) if reason.contains("fell back")),
            "{a:?}"
        );
    }

    /// The operator's report: no `tugboot.slot=`, the slot inferred from an armed environment,
    /// and a second start before any reboot (same boot id as when it armed). Whatever slot the
    /// shell believes, the same boot is never the trial: reboot again, never commit.
    #[test]
    fn same_boot_as_arming_is_never_the_trial() {
        for evidence in [
            Evidence::KernelCmdline,
            Evidence::Firmware,
            Evidence::TrialCounter,
            Evidence::Default,
        ] {
            for slot in [Slot::A, Slot::B] {
                let mut m = machine();
                boot(&mut m, Slot::A, "1");
                to_trial(&mut m);
                let mut again = UpdateMachine::new(m.state().clone());
                boot_with(&mut again, slot, evidence, "1");
                assert_eq!(drain(&mut again), [Action::Reboot], "{slot} {evidence:?}");
                assert!(again.handle(Event::Health(Ok(()))).is_err());
                assert!(drain(&mut again).is_empty(), "{slot} {evidence:?}");
                assert_eq!(again.state().floor, 41);
            }
        }
    }

    #[test]
    fn installed_target_needs_more_than_the_default() {
        let mut m = machine();
        boot(&mut m, Slot::A, "1");
        verified(&mut m, 42).unwrap();
        m.handle(Event::ArtifactComplete).unwrap();
        m.handle(Event::SlotVerified).unwrap();
        drain(&mut m);
        // Only the bootloader's default names B: roll back, never run the checks.
        let mut r = UpdateMachine::new(m.state().clone());
        boot_with(&mut r, Slot::B, Evidence::Default, "2");
        let a = drain(&mut r);
        assert_eq!(kinds(&a), ["persist", "abort"]);
        // The trial counter moved: this is the trial; the arming boot is unknown, so a restart
        // of the agent in this same boot still runs the checks.
        let mut r = UpdateMachine::new(m.state().clone());
        boot_with(&mut r, Slot::B, Evidence::TrialCounter, "2");
        assert_eq!(kinds(&drain(&mut r)), ["persist", "health"]);
        assert_eq!(
            r.state().update.as_ref().unwrap().phase,
            Phase::Trying {
                boot_id: String::new()
            }
        );
        let mut again = UpdateMachine::new(r.state().clone());
        boot_with(&mut again, Slot::B, Evidence::TrialCounter, "2");
        assert_eq!(kinds(&drain(&mut again)), ["health"]);
    }

    #[test]
    fn interrupted_download_resumes_or_is_abandoned() {
        let mut m = machine();
        boot(&mut m, Slot::A, "1");
        verified(&mut m, 42).unwrap();
        drain(&mut m);
        m.handle(Event::ChunkWritten { len: 40 }).unwrap();
        m.handle(Event::Checkpoint { offset: 40 }).unwrap();
        let a = drain(&mut m);
        let [Action::Persist(s)] = a.as_slice() else {
            panic!("{a:?}")
        };
        assert_eq!(s.update.as_ref().unwrap().downloaded, 40);
        assert!(
            m.handle(Event::Checkpoint { offset: 101 }).is_err(),
            "past the size"
        );
        // Power lost: the next start waits; nothing is reported.
        let mut r = UpdateMachine::new(m.state().clone());
        boot(&mut r, Slot::A, "2");
        assert!(drain(&mut r).is_empty());
        // The same manifest again: resume at the checkpoint.
        verified(&mut r, 42).unwrap();
        assert_eq!(
            drain(&mut r),
            [Action::WriteSlot {
                slot: Slot::B,
                sha256: image(42).sha256,
                size: 100,
                from: 40
            }]
        );
        assert_eq!(r.progress().unwrap().written, 40);
        assert!(
            matches!(verified(&mut r, 42), Err(UpdateError::Busy(_))),
            "writing"
        );
        // Another manifest: the old download is interrupted, the new one starts from 0.
        let mut r = UpdateMachine::new(m.state().clone());
        boot(&mut r, Slot::A, "2");
        verified(&mut r, 43).unwrap();
        let a = drain(&mut r);
        assert_eq!(kinds(&a), ["persist", "report", "persist", "write"]);
        assert!(matches!(
            a[1],
            Action::Report(Outcome::Interrupted { version: 42, .. })
        ));
        assert!(matches!(a[3], Action::WriteSlot { from: 0, .. }));
        // Abandoned outright.
        let mut r = UpdateMachine::new(m.state().clone());
        boot(&mut r, Slot::A, "2");
        r.handle(Event::AbandonDownload).unwrap();
        let a = drain(&mut r);
        assert!(matches!(a[1], Action::Report(Outcome::Interrupted { .. })));
        assert!(r.state().update.is_none());
        // A bad artifact ends it as failed, never armed.
        m.handle(Event::ArtifactFailed {
            reason: "sha256 mismatch".into(),
        })
        .unwrap();
        let a = drain(&mut m);
        assert!(matches!(a[1], Action::Report(Outcome::Failed { .. })));
        assert!(!a.iter().any(|x| matches!(x, Action::ArmTrial(_))));
    }

    #[test]
    fn refuses_out_of_order_events() {
        let mut m = machine();
        assert!(verified(&mut m, 42).is_err(), "before boot");
        boot(&mut m, Slot::A, "1");
        assert_eq!(
            verified(&mut m, 40),
            Err(UpdateError::BelowFloor {
                version: 40,
                floor: 41
            })
        );
        for e in [
            Event::ArtifactComplete,
            Event::BootloaderArmed,
            Event::Health(Ok(())),
            Event::BootloaderCommitted,
        ] {
            assert!(m.handle(e).is_err());
        }
        verified(&mut m, 42).unwrap();
        drain(&mut m);
        assert!(matches!(verified(&mut m, 42), Err(UpdateError::Busy(_))));
        assert!(
            m.handle(Event::BootloaderArmed).is_err(),
            "not verified yet"
        );
        assert!(m.handle(Event::Health(Ok(()))).is_err());
        assert!(drain(&mut m).is_empty());
    }

    #[test]
    fn no_install_from_an_uncommitted_slot() {
        let mut m = machine();
        boot(&mut m, Slot::B, "1");
        assert_eq!(
            verified(&mut m, 42),
            Err(UpdateError::NotOnCommittedSlot {
                booted: Slot::B,
                committed: Slot::A
            })
        );
    }

    #[test]
    fn installed_then_power_loss() {
        let mut m = machine();
        boot(&mut m, Slot::A, "1");
        verified(&mut m, 42).unwrap();
        m.handle(Event::ArtifactComplete).unwrap();
        m.handle(Event::SlotVerified).unwrap();
        drain(&mut m);
        // Old slot: verify again, then arm.
        let mut r = UpdateMachine::new(m.state().clone());
        boot(&mut r, Slot::A, "2");
        assert_eq!(kinds(&drain(&mut r)), ["sync"]);
        // New slot (armed, record lost): treat as the trial.
        let mut r = UpdateMachine::new(m.state().clone());
        boot(&mut r, Slot::B, "2");
        assert_eq!(kinds(&drain(&mut r)), ["persist", "health"]);
    }
}
