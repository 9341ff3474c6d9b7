//! The `run` loop, one cycle at a time: start the update shell from the persisted state, finish
//! whatever the last boot left (health checks after a trial reboot, rollback), queue and send
//! reports, ask for the assignment, and install it.
//!
//! Every cycle starts the [`Agent`] afresh from the state file (cheap: one small read), as the
//! update core requires after any error; nothing in memory carries over between cycles except
//! the configuration, the HTTP client and the trust root.

use std::path::Path;
use std::time::{Duration, Instant};

use tugboot_firmware::{
    MAX_MANIFEST_BYTES, MAX_ROOT_BYTES, Policy, Timestamp, TrustedRoot, verify_manifest,
};

use crate::bootloader::grub::GrubEnvFile;
use crate::bootloader::uboot::UbootEnvFile;
use crate::bootloader::{BootEnv, Slot};
use crate::config::{BootloaderConfig, Contract, DeviceConfig, read_capped};
use crate::io::RealIo;
use crate::net::health::{HealthResult, run_checks};
use crate::net::{HttpClient, NetError, QueueError, ReportQueue, ResumableDownload, TlsIdentity};
use crate::slot::DEFAULT_CHUNK;
use crate::update::{
    AbBootloader, Agent, AgentConfig, AgentError, BootError, Grub, Next, Outcome, PlainFileEnv,
    Uboot, image_of,
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
}

/// Which boot this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootContext {
    /// The slot running now.
    pub slot: Slot,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
}

impl BootContext {
    /// From `/proc`: the slot from `tugboot.slot=` on the kernel command line (else what the
    /// bootloader says it booted: the armed trial if any, else its default), and the boot id.
    ///
    /// # Errors
    /// No boot id, or no slot from either source.
    pub fn detect(boot: &mut dyn AbBootloader) -> Result<Self, DaemonError> {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let slot = match crate::slot::booted_slot_from_cmdline(&cmdline) {
            Some(s) => s,
            None => {
                let status = boot.status()?;
                status.trial.unwrap_or(status.default)
            }
        };
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        if boot_id.is_empty() {
            return Err(DaemonError::BootId);
        }
        Ok(Self { slot, boot_id })
    }
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
        } => Box::new(Uboot::new(
            UbootEnvFile::from_config_file(fw_env_config)?,
            *bootlimit,
        )),
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
    })
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
    /// Nothing until the next poll.
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
    client: HttpClient,
    root: TrustedRoot,
    queue: ReportQueue,
    ctx: BootContext,
    retry_delay: Duration,
    /// Log of the last cycle.
    pub log: CycleLog,
}

impl Daemon {
    /// From the configuration: loads the TLS identity and the trust root, opens the queue.
    ///
    /// # Errors
    /// Unusable TLS files, trust root or queue directory.
    pub fn new(config: DeviceConfig, ctx: BootContext) -> Result<Self, DaemonError> {
        let identity =
            TlsIdentity::load(&config.tls).map_err(|e| DaemonError::Tls(e.to_string()))?;
        let client = HttpClient::new(&config.server, Some(&identity), Default::default());
        Self::with_client(config, client, ctx)
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
        let root = load_root(&config.trust_root)?;
        let queue = ReportQueue::open(&config.report_queue, config.report_queue_max)?;
        Ok(Self {
            config,
            client,
            root,
            queue,
            ctx,
            retry_delay: Duration::from_secs(1),
            log: CycleLog::default(),
        })
    }

    /// Pause between download retries (tests use zero).
    pub fn set_retry_delay(&mut self, delay: Duration) {
        self.retry_delay = delay;
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

    fn note(&mut self, line: String) {
        self.log.lines.push(line);
    }

    fn start(&mut self) -> Result<(DeviceAgent, Next), DaemonError> {
        let boot = open_bootloader(&self.config)?;
        let (agent, next) = Agent::start(
            RealIo::new(),
            boot,
            agent_config(&self.config),
            self.ctx.slot,
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

    /// Sends queued reports; a server that cannot be reached is not an error (they stay
    /// queued). Returns how many were delivered.
    ///
    /// # Errors
    /// Queue file errors.
    pub fn send_reports(&mut self) -> Result<usize, DaemonError> {
        let client = self.client.clone();
        let (sent, err) = self.queue.flush(&mut |body| client.post_report(body))?;
        if let Some(e) = err {
            self.note(format!("reports stay queued: {e}"));
        }
        Ok(sent)
    }

    /// One cycle. Network failures end the cycle with an error after the reports were queued.
    ///
    /// # Errors
    /// See [`DaemonError`].
    pub fn cycle(&mut self) -> Result<Step, DaemonError> {
        self.log = CycleLog::default();
        let (mut agent, mut next) = self.start()?;
        if next == Next::HealthCheck {
            let deadline = Instant::now() + self.config.watchdog;
            next = match run_checks(&self.config.health, deadline) {
                HealthResult::Healthy => agent.health(Ok(()))?,
                HealthResult::Unhealthy(why) => agent.health(Err(why))?,
                HealthResult::WatchdogExpired => agent.watchdog_timeout()?,
            };
        }
        self.queue_reports(&mut agent)?;
        self.send_reports()?;
        if next == Next::Reboot {
            return Ok(Step::Reboot);
        }
        let Some(assignment) = self.client.assignment()? else {
            self.note("nothing assigned".into());
            return Ok(Step::Idle);
        };
        let manifest = self
            .client
            .get_capped(&assignment.manifest_url, MAX_MANIFEST_BYTES)?;
        let state = agent.state().clone();
        if let Some(update) = &state.update {
            self.note(format!(
                "update of version {} still in progress",
                update.image.version
            ));
            return Ok(Step::Idle);
        }
        // Check first (cheap, no write) whether this is something to install at all.
        let policy = Policy {
            now: Timestamp::now(),
            board: Some(&self.config.board),
            floor: state.floor,
            current_version: state.committed.image.as_ref().map(|i| i.version),
        };
        let verified = verify_manifest(&manifest, &self.root, &policy)
            .map_err(|e| DaemonError::Agent(AgentError::Manifest(e)))?;
        let (image, _) = image_of(&verified).map_err(|e| DaemonError::Agent(e.into()))?;
        if state.committed.image.as_ref() == Some(&image) {
            self.note(format!(
                "running the assigned {} {}",
                image.name, image.version
            ));
            return Ok(Step::Idle);
        }
        if let Some(Outcome::RolledBack { name, version, .. }) = &state.last_result
            && *name == image.name
            && *version == image.version
        {
            self.note(format!(
                "not retrying {name} {version}: it was rolled back on this device"
            ));
            return Ok(Step::Idle);
        }
        let url = assignment
            .artifact_url(&image.sha256)
            .ok_or_else(|| DaemonError::NoArtifactUrl(image.sha256.to_hex()))?
            .to_owned();
        self.note(format!(
            "installing {} {} from {url}",
            image.name, image.version
        ));
        let mut download = ResumableDownload::new(&self.client, &url)
            .expect_len(image.size)
            .retry_delay(self.retry_delay);
        let result = agent.update(&manifest, &self.root, Timestamp::now(), &mut download);
        if !download.resumes().is_empty() {
            let resumes = download.resumes().to_vec();
            self.note(format!("download resumed at bytes {resumes:?}"));
        }
        let next = result?;
        self.queue_reports(&mut agent)?;
        self.send_reports()?;
        Ok(if next == Next::Reboot {
            Step::Reboot
        } else {
            Step::Idle
        })
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
        } => format!("failed to install {name} {version}: {reason}"),
        Outcome::Interrupted { name, version } => {
            format!("installation of {name} {version} was interrupted")
        }
    }
}
