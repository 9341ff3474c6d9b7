//! The command line. Deliberately small and hand-written: the agent is a static binary with a
//! size budget, so it does without clap. [`parse`] turns arguments into a [`Invocation`]
//! (pure, unit-tested); [`execute`] runs it.

use std::fs::File;
use std::io::{IsTerminal as _, Read, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;
use tugboot_firmware::{MAX_MANIFEST_BYTES, MAX_ROOT_BYTES, Policy, Timestamp, TrustedRoot};

use crate::bootloader::Slot;
use crate::config::{self, ConfigError, DEFAULT_CONFIG_PATH, DeviceConfig};
use crate::io::{RealIo, read_file, write_atomic};
use crate::net::daemon::{
    self, BootContext, CHUNK, Daemon, DaemonError, DeviceAgent, Step, agent_config,
    describe_outcome, open_bootloader,
};
use crate::net::{HttpClient, NetError, ReportQueue, ResumableDownload, TlsIdentity, health};
use crate::slot::{self, SlotError};
use crate::update::{
    AbBootloader, Agent, AgentError, AgentState, BootError, Next, Phase, image_of,
};

const USAGE: &str = "usage: tugboot-agent [--config FILE] <command>

commands:
  run [--once]            poll the server, install updates, confirm or roll back after reboots
  status [--json]         show slots, update phase, last result, queued reports
  install (--manifest FILE --artifacts DIR | --manifest-url URL) [--slot A|B]
                          provision a slot from local files or a URL and make it the default
  install-disk [--wipe]   installer: partition the config's [install] disk, enroll, write slot A,
                          the ESP, the data partition and a boot entry; report `installed`
  enroll [--once]         get the device certificate: key made here, CSR to the server, wait for approval
  retry                   try a refused assignment again (it is otherwise skipped until it changes)
  mark-good               commit the slot on trial without running the health checks
  rollback                abandon the slot on trial and reboot into the committed one
  check-config            print the configuration as the agent understands it
  verify --root ROOT.json --manifest MANIFEST.json [--board NAME] [--floor N] [--current-version N]
                          check a manifest the way the device does before installing it
  version                 print the agent version

--config defaults to /etc/tugboot/agent.toml";

/// A command failed; `main` prints it on one line and exits non-zero.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CliError {
    /// Bad command line.
    #[error("{0} (see `tugboot-agent help`)")]
    Usage(String),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file is larger than its cap.
    #[error("{path} is larger than {limit} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap.
        limit: usize,
    },
    /// The trust root is unusable.
    #[error("trust root {path}: {source}")]
    Root {
        /// The file.
        path: PathBuf,
        /// Why.
        source: tugboot_firmware::VerifyError,
    },
    /// The manifest was rejected.
    #[error("manifest {path} rejected ({code}): {source}", code = source.code())]
    Manifest {
        /// Where it came from.
        path: String,
        /// Why.
        source: tugboot_firmware::VerifyError,
    },
    /// The configuration is unusable.
    #[error("config: {0}")]
    Config(#[from] ConfigError),
    /// A network operation failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The agent loop failed.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// The update shell failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The bootloader failed.
    #[error("bootloader: {0}")]
    Boot(#[from] BootError),
    /// Installing into the slot failed.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The request does not fit the device's situation.
    #[error("{0}")]
    Refused(String),
    /// The reboot command failed.
    #[error("reboot command {command:?}: {reason}")]
    Reboot {
        /// argv.
        command: Vec<String>,
        /// Why.
        reason: String,
    },
    /// Installing to a disk failed.
    #[error("install-disk: {0}")]
    InstallDisk(#[from] crate::install::InstallDiskError),
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Where `install` gets the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallSource {
    /// A manifest file and the directory holding its artifacts (by artifact name).
    Files {
        /// The manifest.
        manifest: PathBuf,
        /// The artifact directory.
        artifacts: PathBuf,
    },
    /// A manifest URL; artifacts are fetched from beside it (`<dir of URL>/<artifact name>`).
    Url(String),
}

/// Options of `verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyArgs {
    /// Trust root file.
    pub root: PathBuf,
    /// Manifest file.
    pub manifest: PathBuf,
    /// Board to check.
    pub board: Option<String>,
    /// Rollback floor.
    pub floor: u64,
    /// Installed version.
    pub current: Option<u64>,
}

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// The agent loop.
    Run {
        /// One cycle, then exit (with the cycle's error, if any).
        once: bool,
    },
    /// Show the device's state.
    Status {
        /// Machine-readable.
        json: bool,
    },
    /// Install to a whole disk (installer configuration).
    InstallDisk {
        /// Erase a disk that already holds data.
        wipe: bool,
    },
    /// Installer mode.
    Install {
        /// Where the image comes from.
        source: InstallSource,
        /// The slot to install into.
        slot: Slot,
    },
    /// Enroll (make the key, get the certificate).
    Enroll {
        /// One attempt only.
        once: bool,
    },
    /// Forget a refused assignment.
    Retry,
    /// Commit the trial slot.
    MarkGood,
    /// Abandon the trial slot.
    Rollback,
    /// Print the resolved configuration.
    CheckConfig,
    /// Check a manifest.
    Verify(VerifyArgs),
    /// Print the version.
    Version,
    /// Print the usage.
    Help,
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The configuration file.
    pub config: PathBuf,
    /// What to do.
    pub command: Command,
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

/// Parses the arguments (without the program name). `--config FILE` (or `--config=FILE`, `-c
/// FILE`) may appear anywhere.
///
/// # Errors
/// [`CliError::Usage`] with the reason.
pub fn parse(args: &[String]) -> Result<Invocation, CliError> {
    let mut config = PathBuf::from(DEFAULT_CONFIG_PATH);
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--config" || a == "-c" {
            let v = it
                .next()
                .ok_or_else(|| usage(format!("{a} needs a value")))?;
            config = PathBuf::from(v);
        } else if let Some(v) = a.strip_prefix("--config=") {
            config = PathBuf::from(v);
        } else {
            rest.push(a.as_str());
        }
    }
    let (cmd, opts) = rest.split_first().ok_or_else(|| usage("missing command"))?;
    let mut opts = Opts::new(opts)?;
    let command = match *cmd {
        "run" => Command::Run {
            once: opts.flag("--once"),
        },
        "status" => Command::Status {
            json: opts.flag("--json"),
        },
        "install" => {
            let manifest = opts.value("--manifest");
            let artifacts = opts.value("--artifacts");
            let url = opts.value("--manifest-url");
            let slot = match opts.value("--slot") {
                None => Slot::A,
                Some(s) => s
                    .parse()
                    .map_err(|_| usage(format!("--slot takes A or B, not {s:?}")))?,
            };
            let source = match (manifest, artifacts, url) {
                (Some(m), Some(a), None) => InstallSource::Files {
                    manifest: m.into(),
                    artifacts: a.into(),
                },
                (None, None, Some(u)) => InstallSource::Url(u),
                (Some(_), None, None) => return Err(usage("--manifest needs --artifacts DIR")),
                (None, Some(_), None) => return Err(usage("--artifacts needs --manifest FILE")),
                (None, None, None) => {
                    return Err(usage(
                        "install needs --manifest and --artifacts, or --manifest-url",
                    ));
                }
                _ => return Err(usage("use either --manifest/--artifacts or --manifest-url")),
            };
            Command::Install { source, slot }
        }
        "install-disk" => Command::InstallDisk {
            wipe: opts.flag("--wipe"),
        },
        "enroll" => Command::Enroll {
            once: opts.flag("--once"),
        },
        "retry" => Command::Retry,
        "mark-good" => Command::MarkGood,
        "rollback" => Command::Rollback,
        "check-config" => Command::CheckConfig,
        "verify" => {
            let root = opts.value("--root");
            let manifest = opts.value("--manifest");
            let board = opts.value("--board");
            let floor = opts.number("--floor")?.unwrap_or(0);
            let current = opts.number("--current-version")?;
            Command::Verify(VerifyArgs {
                root: root.ok_or_else(|| usage("--root is required"))?.into(),
                manifest: manifest
                    .ok_or_else(|| usage("--manifest is required"))?
                    .into(),
                board,
                floor,
                current,
            })
        }
        "version" | "--version" | "-V" => Command::Version,
        "help" | "--help" | "-h" => Command::Help,
        other => return Err(usage(format!("unknown command {other:?}"))),
    };
    opts.finish()?;
    Ok(Invocation { config, command })
}

/// The options after the command: `--flag` or `--name value` (or `--name=value`), each at most
/// once. Commands take what they know; anything left over is an error.
struct Opts<'a> {
    items: Vec<(&'a str, Option<String>)>,
}

const VALUED: &[&str] = &[
    "--manifest",
    "--artifacts",
    "--manifest-url",
    "--slot",
    "--root",
    "--board",
    "--floor",
    "--current-version",
];

impl<'a> Opts<'a> {
    fn new(args: &[&'a str]) -> Result<Self, CliError> {
        let mut items: Vec<(&'a str, Option<String>)> = Vec::new();
        let mut it = args.iter();
        while let Some(&a) = it.next() {
            if !a.starts_with("--") {
                return Err(usage(format!("unexpected argument {a:?}")));
            }
            let (name, value) = match a.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None if VALUED.contains(&a) => {
                    let v = it
                        .next()
                        .ok_or_else(|| usage(format!("{a} needs a value")))?;
                    (a, Some((*v).to_owned()))
                }
                None => (a, None),
            };
            if items.iter().any(|(n, _)| *n == name) {
                return Err(usage(format!("{name} given twice")));
            }
            items.push((name, value));
        }
        Ok(Self { items })
    }

    fn take(&mut self, name: &str) -> Option<Option<String>> {
        let i = self.items.iter().position(|(n, _)| *n == name)?;
        Some(self.items.remove(i).1)
    }

    fn flag(&mut self, name: &str) -> bool {
        self.take(name).is_some()
    }

    fn value(&mut self, name: &str) -> Option<String> {
        self.take(name).flatten()
    }

    fn number(&mut self, name: &str) -> Result<Option<u64>, CliError> {
        self.value(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| usage(format!("{name} takes a whole number, not {v:?}")))
            })
            .transpose()
    }

    fn finish(self) -> Result<(), CliError> {
        match self.items.first() {
            None => Ok(()),
            Some((name, _)) => Err(usage(format!("unknown option {name:?}"))),
        }
    }
}

/// Parses and runs.
///
/// # Errors
/// See [`CliError`].
pub fn run(args: &[String]) -> Result<(), CliError> {
    execute(&parse(args)?)
}

/// Runs a parsed command.
///
/// # Errors
/// See [`CliError`].
pub fn execute(inv: &Invocation) -> Result<(), CliError> {
    match &inv.command {
        Command::Version => {
            println!("tugboot-agent {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Help => {
            println!("{USAGE}");
            Ok(())
        }
        Command::Verify(v) => verify(v),
        Command::CheckConfig => {
            print!("{}", config::load(&inv.config)?.describe());
            Ok(())
        }
        Command::Status { json } => status(&config::load(&inv.config)?, *json),
        Command::Run { once } => run_daemon(config::load(&inv.config)?, *once),
        Command::Enroll { once } => enroll(config::load(&inv.config)?, *once),
        Command::Retry => retry(&config::load(&inv.config)?),
        Command::MarkGood => mark_good(&config::load(&inv.config)?),
        Command::Rollback => rollback(&config::load(&inv.config)?),
        Command::Install { source, slot } => install(&config::load(&inv.config)?, source, *slot),
        Command::InstallDisk { wipe } => {
            crate::install::install_disk(&config::load_installer(&inv.config)?, *wipe)?;
            Ok(())
        }
    }
}

fn verify(v: &VerifyArgs) -> Result<(), CliError> {
    let now = Timestamp::now();
    let trusted =
        TrustedRoot::bootstrap(&read(&v.root, MAX_ROOT_BYTES)?, now).map_err(|source| {
            CliError::Root {
                path: v.root.clone(),
                source,
            }
        })?;
    let policy = Policy {
        now,
        board: v.board.as_deref(),
        floor: v.floor,
        current_version: v.current,
    };
    let verified = tugboot_firmware::verify_manifest(
        &read(&v.manifest, MAX_MANIFEST_BYTES)?,
        &trusted,
        &policy,
    )
    .map_err(|source| CliError::Manifest {
        path: v.manifest.display().to_string(),
        source,
    })?;
    println!("{} version {} verified", verified.name, verified.version);
    Ok(())
}

fn read(path: &Path, limit: usize) -> Result<Vec<u8>, CliError> {
    config::read_capped(path, limit).map_err(|e| match e {
        config::CappedReadError::TooLarge => CliError::TooLarge {
            path: path.to_path_buf(),
            limit,
        },
        config::CappedReadError::Io(source) => CliError::Read {
            path: path.to_path_buf(),
            source,
        },
    })
}

fn read_state(config: &DeviceConfig) -> Result<Option<AgentState>, CliError> {
    let path = &config.state_file;
    let bytes = read_file(
        &mut RealIo::new(),
        path,
        crate::update::state::MAX_STATE_BYTES,
    )
    .map_err(|source| CliError::Read {
        path: path.clone(),
        source,
    })?;
    bytes
        .map(|b| {
            AgentState::parse(&b).map_err(|source| {
                CliError::Agent(AgentError::State {
                    path: path.clone(),
                    source,
                })
            })
        })
        .transpose()
}

fn phase_name(p: &Phase, downloaded: u64, size: u64) -> String {
    match p {
        Phase::Downloading => {
            format!("downloading ({downloaded} of {size} bytes safely in the slot)")
        }
        Phase::Installed => "installed".into(),
        Phase::Trying { .. } => "trying (waiting for the trial boot)".into(),
        Phase::RollingBack { reason } => format!("rolling back ({reason})"),
    }
}

/// `status --json`.
#[derive(serde::Serialize)]
struct StatusJson<'a> {
    state: Option<&'a AgentState>,
    bootloader: BootJson<'a>,
    queued_reports: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_error: Option<&'a str>,
    /// Expiry of the device certificate (unix), if there is one.
    certificate_not_after: Option<i64>,
    /// An assignment not tried again.
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<&'a crate::net::memory::Refusal>,
    /// Why the server revoked the device.
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct BootJson<'a> {
    backend: &'a str,
    default: Option<&'a str>,
    trial: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    firmware: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

fn status(config: &DeviceConfig, json: bool) -> Result<(), CliError> {
    let state = read_state(config)?;
    let boot = open_bootloader(config)
        .and_then(|mut b| b.status())
        .map_err(|e| e.to_string());
    let firmware = daemon::firmware_boot_line(config);
    let queued = ReportQueue::open(&config.report_queue, config.report_queue_max)
        .and_then(|q| q.len())
        .map_err(|e| e.to_string());
    let not_after = crate::net::enroll::certificate_not_after(&config.tls.cert);
    let refused = crate::net::memory::Refusal::load(config);
    let revoked = crate::net::memory::Revocation::load(config);
    if json {
        let report = StatusJson {
            state: state.as_ref(),
            bootloader: BootJson {
                backend: config.bootloader.kind(),
                firmware: firmware.as_deref(),
                default: boot.as_ref().ok().map(|s| s.default.as_str()),
                trial: boot.as_ref().ok().and_then(|s| s.trial.map(Slot::as_str)),
                error: boot.as_ref().err().map(String::as_str),
            },
            queued_reports: queued.as_ref().ok().copied(),
            queue_error: queued.as_ref().err().map(String::as_str),
            certificate_not_after: not_after,
            refused: refused.as_ref(),
            revoked: revoked.as_ref().map(|r| r.reason.as_str()),
        };
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
        return Ok(());
    }
    match &state {
        None => println!(
            "state: none yet ({} does not exist)",
            config.state_file.display()
        ),
        Some(s) => {
            match &s.committed.image {
                Some(i) => println!(
                    "committed: slot {} {} {} (sha256 {})",
                    s.committed.slot,
                    i.name,
                    i.version,
                    i.sha256.to_hex()
                ),
                None => println!("committed: slot {} (image unknown)", s.committed.slot),
            }
            println!("floor: {}", s.floor);
            match &s.update {
                Some(u) => println!(
                    "update: {} {} into slot {}, {}",
                    u.image.name,
                    u.image.version,
                    u.slot,
                    phase_name(&u.phase, u.downloaded, u.image.size)
                ),
                None => println!("update: none"),
            }
            match &s.last_result {
                Some(o) => println!("last result: {}", describe_outcome(o)),
                None => println!("last result: none"),
            }
        }
    }
    let kind = config.bootloader.kind();
    match boot {
        Ok(b) => println!(
            "bootloader: {kind}, default slot {}, trial {}",
            b.default,
            b.trial.map_or("none".to_owned(), |t| t.to_string())
        ),
        Err(e) => println!("bootloader: {kind}, unreadable: {e}"),
    }
    if let Some(line) = firmware {
        println!("firmware: {line}");
    }
    match queued {
        Ok(n) => println!("queued reports: {n}"),
        Err(e) => println!("queued reports: unreadable: {e}"),
    }
    match not_after {
        Some(t) => println!("certificate: valid until {t} (unix)"),
        None => println!("certificate: none (`run` or `enroll` gets one)"),
    }
    if let Some(r) = &refused {
        println!(
            "refused: {} ({}); not tried again until the assignment changes or `retry`",
            r.manifest_url,
            describe_outcome(&r.outcome)
        );
    }
    if let Some(r) = &revoked {
        println!("revoked by the server: {}", r.reason);
    }
    Ok(())
}

fn reboot(argv: &[String]) -> Result<(), CliError> {
    let err = |reason: String| CliError::Reboot {
        command: argv.to_vec(),
        reason,
    };
    let (program, args) = argv.split_first().ok_or_else(|| err("empty".into()))?;
    // Data written through RealIo is already synced; this is belt and braces.
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .map_err(|e| err(e.to_string()))?;
    if status.success() {
        Ok(())
    } else {
        Err(err(status.to_string()))
    }
}

fn run_daemon(config: DeviceConfig, once: bool) -> Result<(), CliError> {
    let ctx = BootContext::detect(
        &mut *open_bootloader(&config)?,
        &daemon::boot_memory(&config),
    )?;
    eprintln!(
        "tugboot-agent: running slot {} ({})",
        ctx.slot,
        ctx.evidence.as_str()
    );
    // Counted as hung without a sign of life for two of the longest waits plus the checks.
    let hang = 2 * config.poll_interval.max(config.status_interval) + config.watchdog;
    let live = health::Liveness::new(hang);
    if let Some((device, every)) = &config.watchdog_device {
        health::spawn_feeder(
            health::WatchdogTarget::Device(device.clone()),
            *every,
            live.clone(),
        )
        .map_err(|e| CliError::Refused(format!("watchdog.device {}: {e}", device.display())))?;
    }
    if let Some((socket, every)) = health::systemd_watchdog() {
        let _ = health::spawn_feeder(health::WatchdogTarget::Systemd(socket), every, live.clone());
    }
    let mut d = Daemon::new(config, ctx)?;
    d.set_liveness(live);
    health::notify_ready();
    loop {
        let result = d.cycle();
        for line in &d.log.lines {
            eprintln!("tugboot-agent: {line}");
        }
        match result {
            Ok(Step::Reboot) => {
                let argv = d.reboot_command().to_vec();
                eprintln!(
                    "tugboot-agent: rebooting: {argv:?}{}",
                    crate::io::peak_rss_kib()
                        .map(|k| format!(" (peak RSS {k} KiB)"))
                        .unwrap_or_default()
                );
                reboot(&argv)?;
                if once {
                    return Ok(());
                }
                // The reboot is under way; nothing more to do in this boot.
                std::thread::sleep(Duration::from_secs(3600));
            }
            Ok(Step::Idle) if once => return Ok(()),
            Ok(Step::Idle) => {}
            Err(e) if once => return Err(e.into()),
            Err(e) => eprintln!("tugboot-agent: error: {}", one_line(&e.to_string())),
        }
        std::thread::sleep(d.next_delay());
    }
}

/// `enroll`: attempts until a certificate is issued (waiting for approval with backoff), or
/// one attempt with `--once`.
fn enroll(config: DeviceConfig, once: bool) -> Result<(), CliError> {
    if config.tls.cert.exists() && config.tls.key.exists() {
        let not_after = crate::net::enroll::certificate_not_after(&config.tls.cert);
        let now = i64::try_from(crate::net::enroll::unix_now()).unwrap_or(i64::MAX);
        if not_after.is_some_and(|t| t > now) {
            return Err(CliError::Refused(format!(
                "{} already holds a valid certificate (until {} unix); it is renewed by `run`",
                config.tls.cert.display(),
                not_after.unwrap_or_default()
            )));
        }
    }
    let ctx = BootContext::new(crate::bootloader::Slot::A, "enroll");
    let poll = config.poll_interval;
    let mut d = Daemon::new(config, ctx)?;
    let mut attempt = 0;
    loop {
        match d.enroll()? {
            crate::net::enroll::EnrollStep::Issued {
                device_id,
                not_after,
            } => {
                crate::net::memory::Revocation::clear(d.config()).map_err(DaemonError::from)?;
                println!(
                    "enrolled as device {device_id}; certificate valid until {not_after} (unix)"
                );
                return Ok(());
            }
            crate::net::enroll::EnrollStep::Pending { device_id } => {
                if once {
                    return Err(CliError::Refused(format!(
                        "enrollment pending: device {device_id} waits for an operator's approval"
                    )));
                }
                let wait = crate::net::enroll::pending_backoff(attempt, poll);
                attempt += 1;
                eprintln!(
                    "enrollment pending: device {device_id} waits for an operator's approval;                      asking again in {}s",
                    wait.as_secs()
                );
                std::thread::sleep(wait);
            }
        }
    }
}

/// `retry`: forget a refused assignment so the next cycle tries it again.
fn retry(config: &DeviceConfig) -> Result<(), CliError> {
    match crate::net::memory::Refusal::load(config) {
        Some(r) => {
            crate::net::memory::Refusal::clear(config).map_err(DaemonError::from)?;
            println!(
                "forgot {}: {}; the next cycle tries it again",
                r.manifest_url,
                describe_outcome(&r.outcome)
            );
        }
        None => println!("nothing refused; nothing to retry"),
    }
    Ok(())
}

/// Starts the shell for an operator command that acts on a trial boot.
fn trial_agent(config: &DeviceConfig, what: &str) -> Result<(DeviceAgent, BootContext), CliError> {
    let mut boot = open_bootloader(config)?;
    let ctx = BootContext::detect(&mut *boot, &daemon::boot_memory(config))?;
    let (agent, next) = Agent::start(
        RealIo::new(),
        boot,
        agent_config(config),
        ctx.booted(),
        &ctx.boot_id,
    )?;
    match next {
        Next::HealthCheck => Ok((agent, ctx)),
        Next::Reboot => Err(CliError::Refused(format!(
            "cannot {what}: a reboot is pending (run `tugboot-agent run` or reboot)"
        ))),
        Next::Idle => Err(CliError::Refused(format!(
            "cannot {what}: no slot is on trial (booted slot {}, committed slot {})",
            ctx.slot,
            agent.state().committed.slot
        ))),
    }
}

fn queue_outcomes(
    config: &DeviceConfig,
    agent: &mut DeviceAgent,
    boot_id: &str,
) -> Result<(), CliError> {
    let queue = ReportQueue::open(&config.report_queue, config.report_queue_max)
        .map_err(DaemonError::from)?;
    for o in agent.take_reports() {
        println!("{}", describe_outcome(&o));
        queue.push(&o, boot_id).map_err(DaemonError::from)?;
    }
    Ok(())
}

fn mark_good(config: &DeviceConfig) -> Result<(), CliError> {
    let (mut agent, ctx) = trial_agent(config, "mark the slot good")?;
    let next = agent.health(Ok(()))?;
    queue_outcomes(config, &mut agent, &ctx.boot_id)?;
    if next == Next::Reboot {
        return Err(CliError::Refused(
            "the commit did not complete; reboot".into(),
        ));
    }
    Ok(())
}

fn rollback(config: &DeviceConfig) -> Result<(), CliError> {
    let (mut agent, ctx) = trial_agent(config, "roll back")?;
    let next = agent.health(Err("rollback requested by the operator".into()))?;
    queue_outcomes(config, &mut agent, &ctx.boot_id)?;
    if next == Next::Reboot {
        println!("rebooting into slot {}", agent.state().committed.slot);
        reboot(daemon::reboot_command(config, agent.state()))?;
    }
    Ok(())
}

/// `\r` progress on a terminal: a bar, percent, MiB done and rate. Silent elsewhere.
pub(crate) struct ProgressBar {
    total: u64,
    done: u64,
    start: Instant,
    last: Option<Instant>,
    tty: bool,
}

impl ProgressBar {
    pub(crate) fn new(total: u64) -> Self {
        Self {
            total,
            done: 0,
            start: Instant::now(),
            last: None,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn advance(&mut self, n: u64) {
        self.done += n;
        if !self.tty {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < Duration::from_millis(100))
            && self.done < self.total
        {
            return;
        }
        self.last = Some(now);
        let _ = write!(
            std::io::stderr(),
            "\r{}",
            render_progress(self.done, self.total, self.start.elapsed())
        );
    }

    pub(crate) fn finish(&self) {
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// One progress line: `[#####-----]  50%  512.0/1024.0 MiB  95.3 MiB/s`.
#[must_use]
pub fn render_progress(done: u64, total: u64, elapsed: Duration) -> String {
    const WIDTH: u64 = 30;
    let done = done.min(total);
    let filled = done
        .saturating_mul(WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH);
    let pct = done.saturating_mul(100).checked_div(total).unwrap_or(100);
    let bar: String = (0..WIDTH)
        .map(|i| if i < filled { '#' } else { '-' })
        .collect();
    #[allow(clippy::cast_precision_loss)]
    let mib = |b: u64| b as f64 / 1_048_576.0;
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { mib(done) / secs } else { 0.0 };
    format!(
        "[{bar}] {pct:3}% {:.1}/{:.1} MiB {rate:.1} MiB/s",
        mib(done),
        mib(total)
    )
}

/// A reader that advances a progress bar.
pub(crate) struct Counting<'a, R> {
    pub(crate) inner: R,
    pub(crate) bar: &'a mut ProgressBar,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.advance(u64::try_from(n).unwrap_or(u64::MAX));
        Ok(n)
    }
}

/// Installer mode. The same steps as `update::install_from_files` (verify, stream through the
/// verifier into the slot, sync and read back, write the state with floor = version, point the
/// bootloader at the slot), with the artifact from a file or a URL and a progress bar.
fn install(config: &DeviceConfig, source: &InstallSource, target: Slot) -> Result<(), CliError> {
    let root = daemon::load_root(&config.trust_root)?;
    let (manifest, origin, client) = match source {
        InstallSource::Files { manifest, .. } => (
            read(manifest, MAX_MANIFEST_BYTES)?,
            manifest.display().to_string(),
            None,
        ),
        InstallSource::Url(url) => {
            let identity = if url.starts_with("https://") {
                Some(TlsIdentity::load(&config.tls)?)
            } else {
                None
            };
            let client = HttpClient::new(&config.server, identity.as_ref(), Default::default());
            (
                client.get_capped(url, MAX_MANIFEST_BYTES)?,
                url.clone(),
                Some(client),
            )
        }
    };
    let policy = Policy {
        now: Timestamp::now(),
        board: Some(&config.board),
        floor: 0,
        current_version: None,
    };
    let verified =
        tugboot_firmware::verify_manifest(&manifest, &root, &policy).map_err(|source| {
            CliError::Manifest {
                path: origin.clone(),
                source,
            }
        })?;
    let (image, _) = image_of(&verified).map_err(AgentError::from)?;
    let name = verified
        .artifacts
        .iter()
        .find(|a| a.role == tugboot_firmware::Role::Slot)
        .map(|a| a.name.clone())
        .unwrap_or_default();
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(CliError::Refused(format!(
            "artifact name {name:?} is not a plain file name"
        )));
    }
    let slot_path = config.slots.path(target).to_path_buf();
    eprintln!(
        "installing {} {} ({} bytes) into slot {target} ({})",
        image.name,
        image.version,
        image.size,
        slot_path.display()
    );
    let mut bar = ProgressBar::new(image.size);
    let started = Instant::now();
    let mut io = RealIo::new();
    let written = match (source, &client) {
        (InstallSource::Files { artifacts, .. }, _) => {
            let path = artifacts.join(&name);
            let file = File::open(&path).map_err(|source| CliError::Read { path, source })?;
            let mut src = Counting {
                inner: file,
                bar: &mut bar,
            };
            slot::write_slot(
                &mut io,
                &slot_path,
                image.sha256,
                image.size,
                &mut src,
                CHUNK,
                &mut |_| {},
            )
        }
        (InstallSource::Url(url), Some(client)) => {
            let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
            let download =
                ResumableDownload::new(client, &format!("{base}/{name}")).expect_len(image.size);
            let mut src = Counting {
                inner: download,
                bar: &mut bar,
            };
            slot::write_slot(
                &mut io,
                &slot_path,
                image.sha256,
                image.size,
                &mut src,
                CHUNK,
                &mut |_| {},
            )
        }
        (InstallSource::Url(_), None) => Err(SlotError::Missing(slot_path.clone())),
    };
    bar.finish();
    written?;
    let streamed = started.elapsed();
    slot::sync_and_verify(&mut io, &slot_path, image.sha256, image.size, CHUNK)?;
    eprintln!(
        "streamed {} bytes in {:.3} s; synced and read back in {:.3} s",
        image.size,
        streamed.as_secs_f64(),
        (started.elapsed() - streamed).as_secs_f64()
    );
    let floor = image.version;
    let state = AgentState::provisioned(target, Some(image.clone()), floor);
    write_atomic(&mut io, &config.state_file, &state.to_bytes()).map_err(|source| {
        CliError::Write {
            path: config.state_file.clone(),
            source,
        }
    })?;
    open_bootloader(config)?.abort_trial(target)?;
    println!(
        "installed {} {} into slot {target}; the bootloader now boots slot {target}",
        image.name, image.version
    );
    Ok(())
}

/// Joins the lines of a message (error chains from TLS libraries can span lines).
#[must_use]
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Invocation, CliError> {
        parse(&args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    }

    fn cmd(args: &[&str]) -> Command {
        p(args).unwrap().command
    }

    fn err(args: &[&str]) -> String {
        p(args).unwrap_err().to_string()
    }

    #[test]
    fn commands_and_options() {
        assert_eq!(cmd(&["run"]), Command::Run { once: false });
        assert_eq!(cmd(&["run", "--once"]), Command::Run { once: true });
        assert_eq!(cmd(&["status", "--json"]), Command::Status { json: true });
        assert_eq!(cmd(&["mark-good"]), Command::MarkGood);
        assert_eq!(cmd(&["rollback"]), Command::Rollback);
        assert_eq!(cmd(&["install-disk"]), Command::InstallDisk { wipe: false });
        assert_eq!(
            cmd(&[
                "-c",
                "/etc/tugboot/installer.toml",
                "install-disk",
                "--wipe"
            ]),
            Command::InstallDisk { wipe: true }
        );
        assert_eq!(cmd(&["-V"]), Command::Version);
        assert_eq!(cmd(&["help"]), Command::Help);
        assert_eq!(
            cmd(&[
                "install",
                "--manifest",
                "m.json",
                "--artifacts=dir",
                "--slot",
                "B"
            ]),
            Command::Install {
                source: InstallSource::Files {
                    manifest: "m.json".into(),
                    artifacts: "dir".into()
                },
                slot: Slot::B
            }
        );
        assert_eq!(
            cmd(&["install", "--manifest-url", "https://s/m"]),
            Command::Install {
                source: InstallSource::Url("https://s/m".into()),
                slot: Slot::A
            }
        );
        assert_eq!(
            cmd(&["verify", "--root", "r", "--manifest", "m", "--floor", "4"]),
            Command::Verify(VerifyArgs {
                root: "r".into(),
                manifest: "m".into(),
                board: None,
                floor: 4,
                current: None
            })
        );
    }

    #[test]
    fn config_anywhere() {
        let i = p(&["status", "--config", "/x.toml"]).unwrap();
        assert_eq!(i.config, PathBuf::from("/x.toml"));
        let i = p(&["-c", "/y.toml", "run"]).unwrap();
        assert_eq!(i.config, PathBuf::from("/y.toml"));
        let i = p(&["--config=/z.toml", "run"]).unwrap();
        assert_eq!(i.config, PathBuf::from("/z.toml"));
        assert_eq!(
            p(&["run"]).unwrap().config,
            PathBuf::from(DEFAULT_CONFIG_PATH)
        );
    }

    #[test]
    fn usage_errors_are_one_line_and_specific() {
        for (args, want) in [
            (&[][..], "missing command"),
            (&["frobnicate"][..], "unknown command \"frobnicate\""),
            (&["run", "--twice"][..], "unknown option \"--twice\""),
            (&["run", "x"][..], "unexpected argument \"x\""),
            (&["run", "--once", "--once"][..], "--once given twice"),
            (
                &["install-disk", "--force"][..],
                "unknown option \"--force\"",
            ),
            (
                &["install-disk", "/dev/vda"][..],
                "unexpected argument \"/dev/vda\"",
            ),
            (&["install"][..], "install needs --manifest and --artifacts"),
            (
                &["install", "--manifest", "m"][..],
                "--manifest needs --artifacts",
            ),
            (
                &["install", "--artifacts", "d"][..],
                "--artifacts needs --manifest",
            ),
            (
                &[
                    "install",
                    "--manifest",
                    "m",
                    "--artifacts",
                    "d",
                    "--manifest-url",
                    "u",
                ][..],
                "either",
            ),
            (
                &["install", "--manifest-url", "u", "--slot", "C"][..],
                "A or B",
            ),
            (&["install", "--manifest"][..], "--manifest needs a value"),
            (&["verify", "--manifest", "m"][..], "--root is required"),
            (
                &["verify", "--root", "r", "--manifest", "m", "--floor", "x"][..],
                "whole number",
            ),
            (&["--config"][..], "--config needs a value"),
        ] {
            let e = err(args);
            assert!(e.contains(want), "{args:?}: {e}");
            assert!(!e.contains('\n'), "{args:?}: {e}");
        }
    }

    #[test]
    fn progress_line() {
        let l = render_progress(512 << 20, 1024 << 20, Duration::from_secs(4));
        assert_eq!(
            l,
            "[###############---------------]  50% 512.0/1024.0 MiB 128.0 MiB/s"
        );
        assert!(render_progress(0, 0, Duration::ZERO).contains("100%"));
        assert!(render_progress(5, 3, Duration::ZERO).contains("100%"));
    }
}
