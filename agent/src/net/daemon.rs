//! The `run` loop, one cycle at a time: start the update shell from the persisted state, finish
//! whatever the last boot left (health checks after a trial reboot, rollback), queue and send
//! reports, ask for the assignment, and install it.
//!
//! Every cycle starts the [`Agent`] afresh from the state file (cheap: one small read), as the
//! update core requires after any error; nothing in memory carries over between cycles except
//! the configuration, the HTTP client and the trust root.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tugboot_firmware::{
    MAX_MANIFEST_BYTES, MAX_ROOT_BYTES, Manifest, Policy, Sha256Digest, Signed, Timestamp,
    TrustedRoot, verify_manifest,
};
use tugboot_wire::{CheckResult, Inventory, Rejection, UpdateStatus};

use crate::bootloader::efi::{EfiBootNext, EfiError, EfiSlot, Efivarfs};
use crate::bootloader::grub::GrubEnvFile;
use crate::bootloader::rpi::{RpiPartitions, RpiTryboot};
use crate::bootloader::uboot::UbootEnvFile;
use crate::bootloader::{BootEnv, Slot};
use crate::config::{BootloaderConfig, Contract, DeviceConfig, EfiSlotConfig, read_capped};
use crate::io::RealIo;
use crate::net::client::Timeouts;
use crate::net::enroll::{
    EnrollError, EnrollFacts, EnrollStep, certificate_not_after, enroll_once, pending_backoff,
    renew_once, renewal_due, unix_now,
};
use crate::net::health::{HealthReport, HealthResult, Liveness, evaluate};
use crate::net::inventory::{self, SysRoot};
use crate::net::memory::{MemoryError, Refusal, Revocation};
use crate::net::{
    ArtifactDownload, Assignment, HttpClient, NetError, QueueError, Report, ReportQueue,
    TlsIdentity,
};
use crate::slot::DEFAULT_CHUNK;
use crate::update::state::clip;
use crate::update::{
    AbBootloader, Agent, AgentConfig, AgentError, AgentState, BootError, Booted, Evidence, Grub,
    Next, Outcome, Phase, PlainFileEnv, SlotKernels, Uboot, UpdateError, image_of,
};

/// The update shell on a real device.
pub type DeviceAgent = Agent<RealIo, Box<dyn AbBootloader>>;

/// Streaming chunk for slots (also the read size from the network).
pub const CHUNK: usize = 4 * DEFAULT_CHUNK;

/// A cycle failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The trust root file is unusable.
    #[error("trust root {path}: {reason}")]
    Root {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The update shell failed (state file, I/O, bootloader, rejected manifest).
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// Opening the bootloader environment failed.
    #[error("bootloader: {0}")]
    Boot(#[from] BootError),
    /// The server could not be asked.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The report queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The assignment does not say where the manifest's slot artifact is.
    #[error("the assignment has no URL for artifact {0}")]
    NoArtifactUrl(String),
    /// The kernel gave no boot id.
    #[error("cannot read /proc/sys/kernel/random/boot_id")]
    BootId,
    /// The TLS identity is unusable.
    #[error("tls: {0}")]
    Tls(String),
    /// Enrollment or renewal failed.
    #[error("enrollment: {0}")]
    Enroll(#[from] EnrollError),
    /// A memory file could not be written.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The server revoked this device: no more updates or reports until it is enrolled again.
    #[error(
        "the server revoked this device ({0}): updates and reports have stopped; once the          operator admits it again, enroll with `tugboot-agent enroll`"
    )]
    Revoked(String),
}

/// Which boot this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootContext {
    /// The slot running now.
    pub slot: Slot,
    /// How that is known.
    pub evidence: Evidence,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
}

impl BootContext {
    /// A context whose slot is known for certain (as from the kernel command line).
    #[must_use]
    pub fn new(slot: Slot, boot_id: &str) -> Self {
        Self {
            slot,
            evidence: Evidence::KernelCmdline,
            boot_id: boot_id.to_owned(),
        }
    }

    /// The slot and its evidence, for [`Agent::start`].
    #[must_use]
    pub fn booted(&self) -> Booted {
        Booted {
            slot: self.slot,
            evidence: self.evidence,
        }
    }

    /// From `/proc`: the slot from `tugboot.slot=` on the kernel command line, else from the
    /// bootloader's own records ([`AbBootloader::booted`]: the Raspberry Pi device tree, EFI
    /// `BootCurrent`, the U-Boot or GRUB trial counter, else its default), and the boot id.
    ///
    /// The answer is remembered for the boot in `remember` (a small file next to the state
    /// file, keyed by boot id): the running slot cannot change within a boot, but the agent
    /// rewrites the environment during it (arming, aborting a trial), after which the
    /// environment no longer says what booted. A later start in the same boot (a crash, `run
    /// --once` again, `mark-good`) reuses the first answer.
    ///
    /// # Errors
    /// No boot id, or an unreadable bootloader when the command line does not say.
    pub fn detect(boot: &mut dyn AbBootloader, remember: &Path) -> Result<Self, DaemonError> {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        if let Some(known) = Self::remembered(remember, &boot_id) {
            return Ok(known);
        }
        let ctx = Self::from_sources(&cmdline, &boot_id, boot)?;
        ctx.remember(remember);
        Ok(ctx)
    }

    /// The context remembered for boot `boot_id` in `path`, if any.
    #[must_use]
    pub fn remembered(path: &Path, boot_id: &str) -> Option<Self> {
        let bytes = read_capped(path, 4096).ok()?;
        let r: Remembered = serde_json::from_slice(&bytes).ok()?;
        let evidence = match r.evidence.as_str() {
            "kernel-cmdline" => Evidence::KernelCmdline,
            "firmware" => Evidence::Firmware,
            "trial-counter" => Evidence::TrialCounter,
            "default" => Evidence::Default,
            _ => return None,
        };
        let same_boot = !boot_id.is_empty() && r.boot_id == boot_id;
        same_boot.then_some(Self {
            slot: r.slot,
            evidence,
            boot_id: r.boot_id,
        })
    }

    /// Writes this context to `path` (atomically; a failure only costs the memory).
    pub fn remember(&self, path: &Path) {
        let evidence = match self.evidence {
            Evidence::KernelCmdline => "kernel-cmdline",
            Evidence::Firmware => "firmware",
            Evidence::TrialCounter => "trial-counter",
            Evidence::Default => "default",
        };
        let r = Remembered {
            boot_id: self.boot_id.clone(),
            slot: self.slot,
            evidence: evidence.to_owned(),
        };
        let bytes = serde_json::to_vec(&r).unwrap_or_default();
        let _ = crate::io::write_atomic(&mut RealIo::new(), path, &bytes);
    }

    /// [`BootContext::detect`] from given texts (tests).
    ///
    /// # Errors
    /// An empty boot id, or an unreadable bootloader when the command line does not say.
    pub fn from_sources(
        cmdline: &str,
        boot_id: &str,
        boot: &mut dyn AbBootloader,
    ) -> Result<Self, DaemonError> {
        if boot_id.is_empty() || boot_id.len() > 128 {
            return Err(DaemonError::BootId);
        }
        let booted = match crate::slot::booted_slot_from_cmdline(cmdline) {
            Some(slot) => Booted::from(slot),
            None => boot.booted()?,
        };
        Ok(Self {
            slot: booted.slot,
            evidence: booted.evidence,
            boot_id: boot_id.to_owned(),
        })
    }
}

/// What [`BootContext::remember`] writes.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Remembered {
    boot_id: String,
    slot: Slot,
    evidence: String,
}

/// Where the running slot is remembered for the boot: `boot.json` beside the state file.
#[must_use]
pub fn boot_memory(config: &DeviceConfig) -> std::path::PathBuf {
    config
        .state_file
        .parent()
        .unwrap_or_else(|| Path::new("/"))
        .join("boot.json")
}

/// Opens the configured bootloader environment.
///
/// # Errors
/// An unreadable `fw_env.config`.
pub fn open_bootloader(config: &DeviceConfig) -> Result<Box<dyn AbBootloader>, BootError> {
    Ok(match &config.bootloader {
        BootloaderConfig::Uboot {
            fw_env_config,
            bootlimit,
            kernel_dir,
        } => {
            let uboot = Uboot::new(UbootEnvFile::from_config_file(fw_env_config)?, *bootlimit);
            match kernel_dir {
                Some(dir) => Box::new(SlotKernels::new(
                    uboot,
                    config.slots.clone(),
                    dir.clone(),
                    PathBuf::from(crate::update::kernels::SLOT_MOUNT),
                )),
                None => Box::new(uboot),
            }
        }
        BootloaderConfig::Grub { env_file, tries } => {
            Box::new(Grub::new(GrubEnvFile::new(env_file.clone()), *tries))
        }
        BootloaderConfig::File {
            path,
            contract,
            tries,
        } => {
            let env = PlainFileEnv::new(RealIo::new(), path.clone());
            match contract {
                Contract::Uboot => Box::new(Uboot::new(env, *tries)),
                Contract::Grub => Box::new(Grub::new(env, *tries)),
            }
        }
        BootloaderConfig::RpiTryboot {
            autoboot_txt,
            boot_partition_a,
            boot_partition_b,
            device_tree,
        } => Box::new(open_rpi(
            autoboot_txt,
            *boot_partition_a,
            *boot_partition_b,
            device_tree,
        )?),
        BootloaderConfig::EfiBootnext {
            efivars,
            slot_a,
            slot_b,
        } => Box::new(open_efi(efivars, slot_a, slot_b)?),
    })
}

/// The two backends that can also ask the firmware which slot is running.
enum FirmwareBackend {
    Rpi(RpiTryboot<RealIo>),
    Efi(EfiBootNext),
}

fn efi_slot(c: &EfiSlotConfig) -> EfiSlot {
    EfiSlot {
        loader: c.loader.clone(),
        description: c.description.clone(),
    }
}

fn open_rpi(
    autoboot_txt: &Path,
    a: u32,
    b: u32,
    device_tree: &Path,
) -> Result<RpiTryboot<RealIo>, BootError> {
    Ok(
        RpiTryboot::new(RealIo::new(), autoboot_txt, RpiPartitions { a, b })?
            .with_device_tree(device_tree),
    )
}

fn open_efi(
    efivars: &Path,
    a: &EfiSlotConfig,
    b: &EfiSlotConfig,
) -> Result<EfiBootNext, BootError> {
    let vars = Efivarfs::open(efivars).map_err(EfiError::from)?;
    Ok(EfiBootNext::new(vars, efi_slot(a), efi_slot(b))?)
}

fn open_firmware_backend(config: &DeviceConfig) -> Result<Option<FirmwareBackend>, BootError> {
    Ok(match &config.bootloader {
        BootloaderConfig::RpiTryboot {
            autoboot_txt,
            boot_partition_a,
            boot_partition_b,
            device_tree,
        } => Some(FirmwareBackend::Rpi(open_rpi(
            autoboot_txt,
            *boot_partition_a,
            *boot_partition_b,
            device_tree,
        )?)),
        BootloaderConfig::EfiBootnext {
            efivars,
            slot_a,
            slot_b,
        } => Some(FirmwareBackend::Efi(open_efi(efivars, slot_a, slot_b)?)),
        BootloaderConfig::Uboot { .. }
        | BootloaderConfig::Grub { .. }
        | BootloaderConfig::File { .. } => None,
    })
}

/// The slot the firmware says it booted: the Raspberry Pi device tree's `partition`, or EFI
/// `BootCurrent`. `None` for backends whose firmware does not say (U-Boot, GRUB, file) and
/// for an EFI `BootCurrent` that is neither slot's entry (a PXE or shell boot).
///
/// # Errors
/// An unreadable device tree or efivarfs, a booted partition that is neither slot's.
pub fn firmware_booted_slot(config: &DeviceConfig) -> Result<Option<Slot>, BootError> {
    Ok(match open_firmware_backend(config)? {
        Some(FirmwareBackend::Rpi(b)) => b.booted_slot()?,
        Some(FirmwareBackend::Efi(b)) => b.state()?.booted_slot(),
        None => None,
    })
}

/// What `status` shows about the firmware's view of the running boot, one line; `None` for
/// backends without one.
#[must_use]
pub fn firmware_boot_line(config: &DeviceConfig) -> Option<String> {
    let backend = match open_firmware_backend(config) {
        Ok(Some(b)) => b,
        Ok(None) => return None,
        Err(e) => return Some(format!("unreadable: {e}")),
    };
    Some(match backend {
        FirmwareBackend::Rpi(b) => match b.boot_info() {
            Ok(Some(info)) => format!(
                "booted partition {} ({}){}",
                info.partition,
                b.booted_slot()
                    .ok()
                    .flatten()
                    .map_or("neither slot".to_owned(), |s| format!("slot {s}")),
                if info.tryboot { ", tryboot" } else { "" }
            ),
            Ok(None) => "no device tree".to_owned(),
            Err(e) => format!("device tree unreadable: {e}"),
        },
        FirmwareBackend::Efi(b) => match b.state() {
            Ok(st) => format!(
                "BootCurrent {} ({}), BootNext {}, slot entries Boot{:04X} (A) Boot{:04X} (B)",
                st.boot_current
                    .map_or("unset".to_owned(), |n| format!("{n:04X}")),
                st.booted_slot()
                    .map_or("neither slot".to_owned(), |s| format!("slot {s}")),
                st.boot_next
                    .map_or("unset".to_owned(), |n| format!("{n:04X}")),
                st.entries[0],
                st.entries[1]
            ),
            Err(e) => format!("unreadable: {e}"),
        },
    })
}

/// The reboot command for the situation `state` describes: [`DeviceConfig::trial_reboot_command`]
/// while a trial is armed (phase `trying`), [`DeviceConfig::reboot_command`] otherwise (a
/// rollback reboots into the committed slot, which must never be a tryboot).
#[must_use]
pub fn reboot_command<'a>(config: &'a DeviceConfig, state: &AgentState) -> &'a [String] {
    match state.update.as_ref().map(|u| &u.phase) {
        Some(Phase::Trying { .. }) => &config.trial_reboot_command,
        _ => &config.reboot_command,
    }
}

/// The property the `assignment` fuzz target checks, also run over its seeds by a plain test:
/// [`Assignment::parse`] of untrusted server bytes never panics, and every URL of an
/// assignment that parses resolves against `server` to an absolute `http(s)://` URL with a
/// host and no whitespace or control characters (what [`HttpClient::resolve`] does before a
/// GET). Returns the parsed assignment, or why it was refused.
///
/// # Errors
/// The parse error, or [`AssignmentPropertyError`] if a parsed URL does not resolve.
pub fn check_assignment(server: &str, body: &[u8]) -> Result<Assignment, AssignmentCheck> {
    let a = crate::net::parse_assignment(server, body).map_err(AssignmentCheck::Refused)?;
    let base = server.trim_end_matches('/');
    for url in std::iter::once(&a.manifest_url).chain(a.artifacts.values()) {
        let resolved = if url.starts_with('/') {
            format!("{base}{url}")
        } else {
            url.clone()
        };
        let rest = resolved
            .strip_prefix("https://")
            .or_else(|| resolved.strip_prefix("http://"));
        let ok = rest.is_some_and(|r| !r.starts_with('/'))
            && (!url.starts_with('/') || resolved.starts_with(base))
            && !resolved
                .chars()
                .any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            return Err(AssignmentCheck::Unresolvable(AssignmentPropertyError {
                url: url.clone(),
                resolved,
            }));
        }
    }
    Ok(a)
}

/// Result of [`check_assignment`] other than success.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AssignmentCheck {
    /// The body was refused with a clear error (the expected outcome for bad input).
    #[error(transparent)]
    Refused(NetError),
    /// A bug: an accepted URL does not resolve.
    #[error(transparent)]
    Unresolvable(AssignmentPropertyError),
}

/// An accepted assignment URL does not resolve to an absolute `http(s)` URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("assignment URL {url:?} resolves to {resolved:?}")]
pub struct AssignmentPropertyError {
    /// As in the assignment.
    pub url: String,
    /// After resolving.
    pub resolved: String,
}

/// Makes sure `env` can be loaded (used by `status`).
///
/// # Errors
/// Environment errors.
pub fn probe_env(env: &mut dyn BootEnv) -> Result<(), BootError> {
    env.load().map(|_| ()).map_err(BootError::from)
}

/// The update shell's view of the configuration.
#[must_use]
pub fn agent_config(config: &DeviceConfig) -> AgentConfig {
    AgentConfig {
        state_path: config.state_file.clone(),
        slots: config.slots.clone(),
        board: Some(config.board.clone()),
        chunk: CHUNK,
        checkpoint: 0,
    }
}

/// Reads and bootstraps the trust root (capped).
///
/// # Errors
/// [`DaemonError::Root`].
pub fn load_root(path: &Path) -> Result<TrustedRoot, DaemonError> {
    let err = |reason: String| DaemonError::Root {
        path: path.display().to_string(),
        reason,
    };
    let bytes = read_capped(path, MAX_ROOT_BYTES).map_err(|e| match e {
        crate::config::CappedReadError::TooLarge => {
            err(format!("larger than {MAX_ROOT_BYTES} bytes"))
        }
        crate::config::CappedReadError::Io(e) => err(e.to_string()),
    })?;
    TrustedRoot::bootstrap(&bytes, Timestamp::now()).map_err(|e| err(e.to_string()))
}

/// What the device must do after a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing until the next poll ([`Daemon::next_delay`]).
    Idle,
    /// Reboot (into the trial, or back to the committed slot).
    Reboot,
}

/// What happened in a cycle, for the log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CycleLog {
    /// Human-readable lines.
    pub lines: Vec<String>,
}

/// One device's agent loop.
#[derive(Debug)]
pub struct Daemon {
    config: DeviceConfig,
    client: Option<HttpClient>,
    timeouts: Timeouts,
    root: TrustedRoot,
    queue: ReportQueue,
    ctx: BootContext,
    retry_delay: Duration,
    reboot_argv: Vec<String>,
    sys: SysRoot,
    cmdline: String,
    live: Option<Arc<Liveness>>,
    last_status: Option<Instant>,
    inventory_sent: Option<Inventory>,
    /// Queued in a status report not yet delivered.
    inventory_unsent: Option<Inventory>,
    last_error: Option<String>,
    pending_attempts: u32,
    delay: Duration,
    /// Log of the last cycle.
    pub log: CycleLog,
}

impl Daemon {
    /// From the configuration: loads the trust root and opens the queue. The TLS identity is
    /// loaded at the first cycle that needs the server (after enrolling, if there is none).
    ///
    /// # Errors
    /// Unusable trust root or queue directory.
    pub fn new(config: DeviceConfig, ctx: BootContext) -> Result<Self, DaemonError> {
        let root = load_root(&config.trust_root)?;
        let queue = ReportQueue::open(&config.report_queue, config.report_queue_max)?;
        Ok(Self {
            delay: config.poll_interval,
            config,
            client: None,
            timeouts: Timeouts::default(),
            root,
            queue,
            ctx,
            retry_delay: Duration::from_secs(1),
            reboot_argv: Vec::new(),
            sys: SysRoot::default(),
            cmdline: std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
            live: None,
            last_status: None,
            inventory_sent: None,
            inventory_unsent: None,
            last_error: None,
            pending_attempts: 0,
            log: CycleLog::default(),
        })
    }

    /// With a given client (tests, benchmarks).
    ///
    /// # Errors
    /// Unusable trust root or queue directory.
    pub fn with_client(
        config: DeviceConfig,
        client: HttpClient,
        ctx: BootContext,
    ) -> Result<Self, DaemonError> {
        let mut d = Self::new(config, ctx)?;
        d.client = Some(client);
        Ok(d)
    }

    /// Pause between download retries (tests use zero).
    pub fn set_retry_delay(&mut self, delay: Duration) {
        self.retry_delay = delay;
    }

    /// Client timeouts (tests use short ones).
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.timeouts = timeouts;
        self.client = None;
    }

    /// Where `/proc` and `/sys` are read (tests use a fixture tree), and the kernel command
    /// line the enrollment reads (`BOOTIF=`, `tugboot.enroll_token=`, `tugboot.ca_sha256=`).
    pub fn set_system(&mut self, sys: SysRoot, cmdline: &str) {
        self.sys = sys;
        cmdline.clone_into(&mut self.cmdline);
    }

    /// Shares the health verdict and signs of life with a watchdog feeder.
    pub fn set_liveness(&mut self, live: Arc<Liveness>) {
        self.live = Some(live);
    }

    /// The report queue.
    #[must_use]
    pub fn queue(&self) -> &ReportQueue {
        &self.queue
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }

    /// How long to wait before the next cycle: the poll interval, shorter while a status report
    /// is due sooner, and the enrollment backoff while an approval is pending.
    #[must_use]
    pub fn next_delay(&self) -> Duration {
        self.delay
    }

    /// The command to run after a cycle returned [`Step::Reboot`] (see [`reboot_command`]):
    /// the trial reboot after arming, the plain one after a rollback.
    #[must_use]
    pub fn reboot_command(&self) -> &[String] {
        if self.reboot_argv.is_empty() {
            &self.config.reboot_command
        } else {
            &self.reboot_argv
        }
    }

    fn reboot_step(&mut self, agent: &DeviceAgent) -> Step {
        self.reboot_argv = reboot_command(&self.config, agent.state()).to_vec();
        Step::Reboot
    }

    fn note(&mut self, line: String) {
        self.log.lines.push(line);
    }

    fn beat(&self) {
        if let Some(l) = &self.live {
            l.beat();
        }
    }

    fn start(&mut self) -> Result<(DeviceAgent, Next), DaemonError> {
        let boot = open_bootloader(&self.config)?;
        let mut config = agent_config(&self.config);
        config.checkpoint = self.config.checkpoint;
        let (agent, next) = Agent::start(
            RealIo::new(),
            boot,
            config,
            self.ctx.booted(),
            &self.ctx.boot_id,
        )?;
        Ok((agent, next))
    }

    fn queue_reports(&mut self, agent: &mut DeviceAgent) -> Result<(), DaemonError> {
        for outcome in agent.take_reports() {
            self.note(format!("outcome: {}", describe_outcome(&outcome)));
            self.queue.push(&outcome, &self.ctx.boot_id)?;
        }
        // An outcome persisted just before a crash that kept it from being queued.
        if self
            .queue
            .recover(agent.state().last_result.as_ref(), &self.ctx.boot_id)?
        {
            self.note("queued the last outcome recorded in the state file".into());
        }
        Ok(())
    }

    /// The client with the device's certificate, enrolling first (or again, after the
    /// certificate expired) when there is none. `Ok(None)`: waiting for approval.
    fn client(&mut self) -> Result<Option<HttpClient>, DaemonError> {
        let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
        let not_after = certificate_not_after(&self.config.tls.cert);
        let expired = not_after.is_some_and(|t| now > t);
        if not_after.is_none() || expired || !self.config.tls.key.exists() {
            self.client = None;
            match self.enroll()? {
                EnrollStep::Pending { device_id } => {
                    self.delay = pending_backoff(self.pending_attempts, self.config.poll_interval);
                    self.pending_attempts = self.pending_attempts.saturating_add(1);
                    self.note(format!(
                        "enrollment pending: device {device_id} waits for an operator's approval; \
                         asking again in {}s",
                        self.delay.as_secs()
                    ));
                    return Ok(None);
                }
                EnrollStep::Issued {
                    device_id,
                    not_after,
                } => {
                    self.pending_attempts = 0;
                    self.note(format!(
                        "enrolled as device {device_id}; certificate valid until {not_after} (unix)"
                    ));
                    Revocation::clear(&self.config)?;
                }
            }
        }
        if self.client.is_none() {
            let identity =
                TlsIdentity::load(&self.config.tls).map_err(|e| DaemonError::Tls(e.to_string()))?;
            self.client = Some(HttpClient::new(
                &self.config.server,
                Some(&identity),
                self.timeouts,
            ));
        }
        Ok(self.client.clone())
    }

    /// One enrollment attempt with what the configuration and the device say.
    ///
    /// # Errors
    /// See [`EnrollError`].
    pub fn enroll(&mut self) -> Result<EnrollStep, DaemonError> {
        let facts = enroll_facts(&self.config, &self.sys, &self.cmdline)?;
        let pin = enroll_pin(&self.config, &self.cmdline)?;
        let step = enroll_once(&self.config, &facts, pin.as_ref(), self.timeouts)
            .map_err(|e| self.refusal(e))?;
        Ok(step)
    }

    /// A refusal that says the device is revoked is recorded; everything else passes through.
    fn refusal(&mut self, e: EnrollError) -> DaemonError {
        match e {
            EnrollError::Refused(n) | EnrollError::Net(n) => self.net_error(n),
            other => DaemonError::Enroll(other),
        }
    }

    /// A `403` that says the certificate or the machine is revoked stops the agent's talk with
    /// the server for good (until it enrolls again): recorded, and returned as
    /// [`DaemonError::Revoked`].
    fn net_error(&mut self, e: NetError) -> DaemonError {
        if e.status() == Some(403)
            && let Some(reason) = e.reason().filter(|r| r.contains("revoked"))
        {
            let reason = reason.to_owned();
            if let Err(w) = Revocation::store(&self.config, &reason, unix_now()) {
                self.note(format!("cannot record the revocation: {w}"));
            }
            return DaemonError::Revoked(reason);
        }
        DaemonError::Net(e)
    }

    /// Sends queued reports; a server that cannot be reached is not an error (they stay
    /// queued). Returns how many were delivered.
    ///
    /// # Errors
    /// Queue file errors; [`DaemonError::Revoked`].
    pub fn send_reports(&mut self) -> Result<usize, DaemonError> {
        let Some(client) = self.client.clone() else {
            return Ok(0);
        };
        let (sent, err) = self.queue.flush(&mut |body| client.post_report(body))?;
        if self.inventory_unsent.is_some() && !self.queue.status_pending()? {
            // The status report carrying it was delivered.
            self.inventory_sent = self.inventory_unsent.take();
        }
        if let Some(e) = err {
            if e.status() == Some(403) {
                return Err(self.net_error(e));
            }
            self.note(format!("reports stay queued: {e}"));
        }
        Ok(sent)
    }

    /// Runs the health checks for the status report and the watchdog: all of them, within
    /// the deadline.
    fn periodic_checks(&mut self) -> HealthReport {
        let report = evaluate(
            &self.config.health,
            Instant::now() + self.config.watchdog,
            false,
        );
        if let Some(l) = &self.live {
            l.set_healthy(report.result == HealthResult::Healthy);
        }
        report
    }

    /// Queues a status report when one is due (and the inventory with the first one of the
    /// process, or when it changed).
    fn status_report(&mut self, agent: &DeviceAgent) -> Result<(), DaemonError> {
        if self
            .last_status
            .is_some_and(|t| t.elapsed() < self.config.status_interval)
        {
            return Ok(());
        }
        self.last_status = Some(Instant::now());
        let health = self.periodic_checks();
        let state = agent.state();
        let checks: std::collections::BTreeMap<String, CheckResult> = health
            .checks
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    CheckResult {
                        ok: c.ok,
                        kind: c.kind.to_owned(),
                        detail: c.detail.as_deref().map(clip_line),
                        millis: Some(c.millis),
                    },
                )
            })
            .collect();
        let inventory = inventory::collect(&self.sys, &self.config.board);
        let send_inventory = self.inventory_sent.as_ref() != Some(&inventory);
        let report = Report {
            boot_id: self.ctx.boot_id.clone(),
            slot: Some(self.ctx.slot),
            image_name: state.committed.image.as_ref().map(|i| i.name.clone()),
            image_version: state.committed.image.as_ref().map(|i| i.version),
            checks: serde_json::to_value(&checks).ok(),
            uptime_secs: inventory::uptime(&self.sys),
            last_error: self.last_error.clone(),
            update: state.update.as_ref().map(|u| UpdateStatus {
                name: u.image.name.clone(),
                version: u.image.version,
                phase: phase_word(&u.phase).to_owned(),
                downloaded: (u.phase == Phase::Downloading).then_some(u.downloaded),
                size: Some(u.image.size),
            }),
            inventory: send_inventory.then(|| inventory.clone()),
            ..Report::default()
        };
        match self.queue.push_status(report) {
            Ok(_) => {}
            Err(QueueError::Invalid(e)) => {
                self.note(format!("status report not queued: {e}"));
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        if send_inventory {
            self.inventory_unsent = Some(inventory);
        }
        Ok(())
    }

    /// One cycle. Network failures end the cycle with an error after the reports were queued.
    ///
    /// # Errors
    /// See [`DaemonError`].
    pub fn cycle(&mut self) -> Result<Step, DaemonError> {
        self.log = CycleLog::default();
        self.reboot_argv.clear();
        self.delay = self.config.poll_interval.min(self.config.status_interval);
        self.beat();
        let result = self.cycle_inner();
        self.beat();
        self.last_error = match &result {
            Ok(_) => None,
            Err(e) => Some(clip_line(&e.to_string())),
        };
        result
    }

    fn cycle_inner(&mut self) -> Result<Step, DaemonError> {
        // The local part first: whatever the server says, a trial is judged and committed or
        // rolled back, and outcomes are queued durably.
        let (mut agent, mut next) = self.start()?;
        if next == Next::HealthCheck {
            let deadline = Instant::now() + self.config.watchdog;
            let report = evaluate(&self.config.health, deadline, true);
            if let Some(l) = &self.live {
                l.set_healthy(report.result == HealthResult::Healthy);
            }
            next = match report.result {
                HealthResult::Healthy => agent.health(Ok(()))?,
                HealthResult::Unhealthy(why) => agent.health(Err(why))?,
                HealthResult::WatchdogExpired => agent.watchdog_timeout()?,
            };
        }
        self.queue_reports(&mut agent)?;
        if let Some(r) = Revocation::load(&self.config) {
            return Err(DaemonError::Revoked(r.reason));
        }
        if next != Next::Reboot {
            self.status_report(&agent)?;
        }
        let Some(client) = self.client()? else {
            return Ok(if next == Next::Reboot {
                self.reboot_step(&agent)
            } else {
                Step::Idle
            });
        };
        self.send_reports()?;
        if next == Next::Reboot {
            return Ok(self.reboot_step(&agent));
        }
        self.renew_if_due(&client)?;
        let assignment = match client.assignment() {
            Ok(a) => a,
            Err(e) => return Err(self.net_error(e)),
        };
        let Some(assignment) = assignment else {
            self.note("nothing assigned".into());
            Refusal::clear(&self.config)?;
            return Ok(Step::Idle);
        };
        match Refusal::load(&self.config) {
            Some(r) if r.is_for(&assignment) => {
                self.note(format!(
                    "not trying {} again: {} (reported; waiting for another assignment, or \
                     `tugboot-agent retry`)",
                    assignment.manifest_url,
                    describe_outcome(&r.outcome)
                ));
                return Ok(Step::Idle);
            }
            Some(_) => Refusal::clear(&self.config)?,
            None => {}
        }
        let next = self.install(&client, &mut agent, &assignment)?;
        self.queue_reports(&mut agent)?;
        self.send_reports()?;
        Ok(if next == Next::Reboot {
            self.reboot_step(&agent)
        } else {
            Step::Idle
        })
    }

    /// Renews the certificate when it is within the renewal window; a refusal is logged, not
    /// fatal (the certificate is still valid).
    fn renew_if_due(&mut self, client: &HttpClient) -> Result<(), DaemonError> {
        let Some(not_after) = certificate_not_after(&self.config.tls.cert) else {
            return Ok(());
        };
        let now = i64::try_from(unix_now()).unwrap_or(i64::MAX);
        if !renewal_due(not_after, now, self.config.enroll.renew_before.as_secs()) {
            return Ok(());
        }
        match renew_once(&self.config, client) {
            Ok(EnrollStep::Issued { not_after, .. }) => {
                self.client = None;
                self.note(format!(
                    "certificate renewed; valid until {not_after} (unix)"
                ));
                Ok(())
            }
            Ok(EnrollStep::Pending { .. }) => {
                self.note("certificate renewal pending".into());
                Ok(())
            }
            Err(e) => match self.refusal(e) {
                DaemonError::Revoked(r) => Err(DaemonError::Revoked(r)),
                other => {
                    self.note(format!("certificate renewal failed: {other}"));
                    Ok(())
                }
            },
        }
    }

    /// The assignment's manifest: refused on the device (reported once, remembered), already
    /// running, rolled back before, or installed (resuming an interrupted download of it).
    fn install(
        &mut self,
        client: &HttpClient,
        agent: &mut DeviceAgent,
        assignment: &Assignment,
    ) -> Result<Next, DaemonError> {
        let manifest = client
            .get_capped(&assignment.manifest_url, MAX_MANIFEST_BYTES)
            .map_err(|e| self.net_error(e))?;
        let manifest_sha256 = Sha256Digest::of(&manifest);
        let state = agent.state().clone();
        if let Some(update) = &state.update
            && update.phase != Phase::Downloading
        {
            self.note(format!(
                "update of version {} still in progress",
                update.image.version
            ));
            return Ok(Next::Idle);
        }
        // Check first (cheap, no write) whether this is something to install at all.
        let policy = Policy {
            now: Timestamp::now(),
            board: Some(&self.config.board),
            floor: state.floor,
            current_version: state.committed.image.as_ref().map(|i| i.version),
        };
        let verified = match verify_manifest(&manifest, &self.root, &policy) {
            Ok(v) => v,
            Err(e) => return self.reject(assignment, &manifest, e.code(), &e.to_string()),
        };
        let image = match image_of(&verified) {
            Ok((image, _)) => image,
            Err(e) => {
                let code = match e {
                    UpdateError::SeveralSlotArtifacts(_) => "several-slot-artifacts",
                    _ => "no-slot-artifact",
                };
                return self.reject(assignment, &manifest, code, &e.to_string());
            }
        };
        if state.committed.image.as_ref() == Some(&image) {
            self.note(format!(
                "running the assigned {} {}",
                image.name, image.version
            ));
            if state.update.is_some() {
                // A download of something else was under way: it is no longer wanted.
                let next = agent.abandon_download()?;
                return Ok(next);
            }
            return Ok(Next::Idle);
        }
        if let Some(Outcome::RolledBack { name, version, .. }) = &state.last_result
            && *name == image.name
            && *version == image.version
        {
            self.note(format!(
                "not retrying {name} {version}: it was rolled back on this device"
            ));
            return Ok(Next::Idle);
        }
        let url = assignment
            .artifact_url(&image.sha256.to_hex())
            .ok_or_else(|| DaemonError::NoArtifactUrl(image.sha256.to_hex()))?
            .to_owned();
        let resuming = state
            .update
            .as_ref()
            .filter(|u| u.manifest_sha256 == manifest_sha256)
            .map(|u| u.downloaded);
        self.note(match resuming {
            Some(from) => format!(
                "resuming {} {} from {url} at byte {from}",
                image.name, image.version
            ),
            None => format!("installing {} {} from {url}", image.name, image.version),
        });
        let mut source = ArtifactDownload::new(client, &url, image.size)
            .retry_delay(self.retry_delay)
            .liveness(self.live.clone());
        let result = agent.update(&manifest, &self.root, Timestamp::now(), &mut source);
        if !source.resumes.is_empty() {
            let resumes = source.resumes.clone();
            self.note(format!("download resumed at bytes {resumes:?}"));
        }
        let next = match result {
            Ok(next) => next,
            Err(e) => {
                // Outcomes of this attempt (an abandoned download) are queued either way.
                self.queue_reports(agent)?;
                return Err(e.into());
            }
        };
        let reports = agent.take_reports();
        for outcome in &reports {
            if matches!(outcome, Outcome::Failed { .. }) {
                Refusal::store(&self.config, assignment, outcome)?;
            }
            self.note(format!("outcome: {}", describe_outcome(outcome)));
            self.queue.push(outcome, &self.ctx.boot_id)?;
        }
        Ok(next)
    }

    /// A manifest refused on the device: reported once (`rejected`, with the firmware's error
    /// code), remembered so the same assignment is not fetched again, never written anywhere
    /// else (the update's state does not change).
    fn reject(
        &mut self,
        assignment: &Assignment,
        manifest: &[u8],
        code: &str,
        reason: &str,
    ) -> Result<Next, DaemonError> {
        // Name and version as the manifest states them, when it can be read at all; they are
        // not trusted for anything but the report.
        let (name, version) = Signed::<Manifest>::from_bytes(manifest)
            .ok()
            .map(|m| (m.value().name.clone(), m.value().version))
            .filter(|(n, v)| !n.is_empty() && n.len() <= 255 && i64::try_from(*v).is_ok())
            .unwrap_or_default();
        let outcome = Outcome::Failed {
            name,
            version,
            reason: clip(reason),
            rejected: Some(Rejection {
                code: code.to_owned(),
                manifest_sha256: Sha256Digest::of(manifest).to_hex(),
            }),
        };
        self.note(format!("outcome: {}", describe_outcome(&outcome)));
        self.queue.push_unrecorded(&outcome, &self.ctx.boot_id)?;
        Refusal::store(&self.config, assignment, &outcome)?;
        self.send_reports()?;
        Ok(Next::Idle)
    }
}

/// `downloading`, `installed`, `trying`, `rolling-back`.
#[must_use]
pub fn phase_word(p: &Phase) -> &'static str {
    match p {
        Phase::Downloading => "downloading",
        Phase::Installed => "installed",
        Phase::Trying { .. } => "trying",
        Phase::RollingBack { .. } => "rolling-back",
    }
}

/// One line of at most 1024 bytes.
fn clip_line(text: &str) -> String {
    clip(&crate::cli::one_line(text))
}

/// What the device presents at enrollment: the configured or detected MAC (`BOOTIF=` first),
/// the serial, and the token (`[enroll] token_file`, else `tugboot.enroll_token=`).
///
/// # Errors
/// No MAC; an unreadable token file.
pub fn enroll_facts(
    config: &DeviceConfig,
    sys: &SysRoot,
    cmdline: &str,
) -> Result<EnrollFacts, DaemonError> {
    let mac = match config.enroll.mac {
        Some(m) => m,
        None => inventory::enroll_mac(sys, cmdline, config.enroll.interface.as_deref())
            .map_err(|r| DaemonError::Enroll(EnrollError::NoMac(r)))?,
    };
    let token = match &config.enroll.token_file {
        Some(path) => {
            let bytes = read_capped(path, 4096).map_err(|_| {
                DaemonError::Enroll(EnrollError::Key {
                    path: path.display().to_string(),
                    reason: "the token file cannot be read".into(),
                })
            })?;
            inventory::clean(&String::from_utf8_lossy(&bytes))
        }
        None => inventory::cmdline_value(cmdline, "tugboot.enroll_token").map(str::to_owned),
    };
    Ok(EnrollFacts {
        mac,
        serial: config
            .enroll
            .serial
            .clone()
            .or_else(|| inventory::serial(sys)),
        token,
    })
}

/// The CA fingerprint the first enrollment pins `tls.ca` to: `[enroll] ca_sha256`, else
/// `tugboot.ca_sha256=` on the kernel command line.
///
/// # Errors
/// A malformed fingerprint on the command line.
pub fn enroll_pin(config: &DeviceConfig, cmdline: &str) -> Result<Option<[u8; 32]>, DaemonError> {
    if let Some(p) = config.enroll.ca_sha256 {
        return Ok(Some(p));
    }
    match inventory::cmdline_value(cmdline, "tugboot.ca_sha256") {
        None => Ok(None),
        Some(text) => crate::config::parse_fingerprint(text)
            .map(Some)
            .ok_or_else(|| {
                DaemonError::Enroll(EnrollError::Ca {
                    path: "tugboot.ca_sha256=".into(),
                    reason: "not a SHA-256 fingerprint".into(),
                })
            }),
    }
}

/// One line for an outcome.
#[must_use]
pub fn describe_outcome(o: &Outcome) -> String {
    match o {
        Outcome::Committed {
            name,
            version,
            slot,
        } => format!("committed {name} {version} in slot {slot}"),
        Outcome::RolledBack {
            name,
            version,
            slot,
            reason,
        } => format!("rolled back from {name} {version} to slot {slot}: {reason}"),
        Outcome::Failed {
            name,
            version,
            reason,
            rejected: None,
        } => format!("failed to install {name} {version}: {reason}"),
        Outcome::Failed {
            name,
            version,
            reason,
            rejected: Some(r),
        } => format!(
            "refused the manifest of {name} {version} ({}): {reason}",
            r.code
        ),
        Outcome::Interrupted { name, version } => {
            format!("installation of {name} {version} was interrupted")
        }
        Outcome::Installed {
            name,
            version,
            slot,
        } => format!("installed {name} {version} into slot {slot} of a new disk"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::{Image, UpdateRecord};
    use tugboot_firmware::Sha256Digest;

    const BASE: &str = r#"
server = "https://s.example"
board = "raspberrypi-4"
state_file = "/d/state.json"
trust_root = "/d/root.json"
report_queue = "/d/reports"
[tls]
ca = "/d/ca.pem"
cert = "/d/c.pem"
key = "/d/k.pem"
[slots]
a = "/dev/mmcblk0p5"
b = "/dev/mmcblk0p6"
[bootloader]
"#;

    fn config(table: &str) -> DeviceConfig {
        DeviceConfig::parse(&format!("{BASE}{table}")).unwrap()
    }

    fn state(phase: Option<Phase>) -> AgentState {
        let mut s = AgentState::provisioned(Slot::A, None, 0);
        s.update = phase.map(|phase| UpdateRecord {
            slot: Slot::B,
            image: Image {
                name: "x".into(),
                version: 2,
                sha256: Sha256Digest::of(b"x"),
                size: 1,
            },
            manifest_sha256: Sha256Digest::of(b"m"),
            phase,
            downloaded: 0,
        });
        s
    }

    #[test]
    fn trial_reboots_only_while_a_trial_is_armed() {
        let rpi = config(
            "kind = \"rpi-tryboot\"\nautoboot_txt = \"/a/autoboot.txt\"\n\
             boot_partition_a = 2\nboot_partition_b = 3",
        );
        let trying = state(Some(Phase::Trying {
            boot_id: "b".into(),
        }));
        assert_eq!(reboot_command(&rpi, &trying), ["reboot", "0 tryboot"]);
        for other in [
            state(None),
            state(Some(Phase::Installed)),
            state(Some(Phase::Downloading)),
            state(Some(Phase::RollingBack {
                reason: "unhealthy".into(),
            })),
        ] {
            assert_eq!(reboot_command(&rpi, &other), ["reboot"], "{other:?}");
        }
        let grub = config("kind = \"grub\"\nenv_file = \"/boot/grubenv\"");
        assert_eq!(reboot_command(&grub, &trying), ["reboot"]);
    }

    #[test]
    fn backends_open_from_their_configuration() {
        // The kinds that need the firmware's files fail clearly when they are absent.
        let efi = config(
            "kind = \"efi-bootnext\"\nefivars = \"/nonexistent/efivars\"\n\
             loader_a = \"a.efi\"\nloader_b = \"b.efi\"",
        );
        let e = open_bootloader(&efi).err().unwrap().to_string();
        assert!(e.contains("/nonexistent/efivars"), "{e}");
        assert!(firmware_boot_line(&efi).unwrap().starts_with("unreadable"));
        let grub = config("kind = \"grub\"\nenv_file = \"/boot/grubenv\"");
        assert!(firmware_boot_line(&grub).is_none());
        assert_eq!(firmware_booted_slot(&grub).unwrap(), None);
    }

    const D: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn the_slot_is_remembered_per_boot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boot.json");
        assert_eq!(BootContext::remembered(&path, "b1"), None);
        let ctx = BootContext {
            slot: Slot::B,
            evidence: Evidence::TrialCounter,
            boot_id: "b1".into(),
        };
        ctx.remember(&path);
        assert_eq!(BootContext::remembered(&path, "b1"), Some(ctx));
        assert_eq!(BootContext::remembered(&path, "b2"), None, "another boot");
        assert_eq!(BootContext::remembered(&path, ""), None);
        std::fs::write(
            &path,
            b"{\"boot_id\":\"b1\",\"slot\":\"B\",\"evidence\":\"guess\"}",
        )
        .unwrap();
        assert_eq!(
            BootContext::remembered(&path, "b1"),
            None,
            "unknown evidence"
        );
        std::fs::write(&path, b"garbage").unwrap();
        assert_eq!(BootContext::remembered(&path, "b1"), None);
    }

    #[test]
    fn detection_prefers_the_kernel_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join("env");
        let mut vars = crate::bootloader::Vars::new();
        vars.set("tugboot_slot", "B").unwrap();
        vars.set("upgrade_available", "1").unwrap();
        vars.set("bootcount", "0").unwrap();
        PlainFileEnv::new(RealIo::new(), &env)
            .initialize(&vars)
            .unwrap();
        let mut boot = Uboot::new(PlainFileEnv::new(RealIo::new(), &env), 1);
        let ctx = BootContext::from_sources("quiet tugboot.slot=B", "b", &mut boot).unwrap();
        assert_eq!((ctx.slot, ctx.evidence), (Slot::B, Evidence::KernelCmdline));
        // Without it: armed but not counted, so A runs.
        let ctx = BootContext::from_sources("quiet", "b", &mut boot).unwrap();
        assert_eq!((ctx.slot, ctx.evidence), (Slot::A, Evidence::Default));
        assert!(matches!(
            BootContext::from_sources("quiet", "", &mut boot),
            Err(DaemonError::BootId)
        ));
    }

    #[test]
    fn assignment_urls_resolve_against_the_server() {
        let body = format!(r#"{{"manifest_url":"/m/1","artifacts":{{"{D}":"http://cdn/a"}}}}"#);
        let a = check_assignment("https://s.example:8443/", body.as_bytes()).unwrap();
        assert_eq!(a.manifest_url, "/m/1");
        for bad in [
            "{}".to_owned(),
            r#"{"manifest_url":"//evil"}"#.to_owned(),
            r#"{"manifest_url":"/m","artifacts":{"x":"/a"}}"#.to_owned(),
            "\u{0}".to_owned(),
        ] {
            assert!(
                matches!(
                    check_assignment("https://s", bad.as_bytes()),
                    Err(AssignmentCheck::Refused(_))
                ),
                "{bad}"
            );
        }
        // A URL without a host is refused by the parser itself.
        assert!(matches!(
            check_assignment("https://s", br#"{"manifest_url":"https:///x"}"#),
            Err(AssignmentCheck::Refused(_))
        ));
    }
}
