//! The agent's configuration file (`/etc/tugboot/agent.toml`).
//!
//! Two layers, as in firecracker and dora: [`RawConfig`] is exactly the TOML (serde,
//! `deny_unknown_fields`, named defaults), and [`DeviceConfig`] is the validated form the agent
//! runs on, made by `TryFrom`. Parsing takes a `&str` so tests need no files; the file is read
//! with a size cap first ([`load`]). Every error names the key it is about.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod installer;
mod toml;

pub use installer::{InstallerConfig, load_installer, partition_path};

use crate::bootloader::efi::EFIVARFS;
use crate::bootloader::rpi::{AUTOBOOT_FILE, PROC_DEVICE_TREE, REBOOT_ARG};
use crate::slot::SlotPaths;

/// Size cap of the configuration file, applied before parsing.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;
/// Where the agent looks for its configuration by default.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tugboot/agent.toml";
/// Default poll interval.
pub const DEFAULT_POLL_SECS: u64 = 300;
/// Default health-check watchdog.
pub const DEFAULT_WATCHDOG_SECS: u64 = 300;
/// Default bound of the report queue.
pub const DEFAULT_QUEUE_MAX: usize = 256;
/// Longest accepted poll interval / watchdog / check timeout (one day).
pub const MAX_SECS: u64 = 86_400;
/// Most health checks of each kind.
pub const MAX_CHECKS: usize = 32;
/// Default interval of status reports (and of the periodic health checks).
pub const DEFAULT_STATUS_SECS: u64 = 900;
/// Default renewal window: renew in the last 28 days of the certificate's life (inside the
/// server's 30, with room for clock skew).
pub const DEFAULT_RENEW_BEFORE_DAYS: u64 = 28;
/// Default distance between download checkpoints, MiB.
pub const DEFAULT_CHECKPOINT_MIB: u64 = 16;
/// Default interval at which a hardware watchdog is fed.
pub const DEFAULT_WATCHDOG_FEED_SECS: u64 = 10;

/// The boards of the catalogue (`boards/*.toml`, `tugboot_boards::Catalog::builtin()`): a
/// device's `board` must be one of them (or listed in `extra_boards`). Kept as a list of names
/// rather than linking the catalogue crate into the static agent; a test checks it against the
/// catalogue.
pub const KNOWN_BOARDS: &[&str] = &[
    "arm64-uefi",
    "qemu-arm64-uboot",
    "raspberrypi-3",
    "raspberrypi-4",
    "raspberrypi-5",
    "x86_64-bios",
    "x86_64-uefi",
];

/// The configuration is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("{path}: larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Not TOML of the expected shape (unknown key, wrong type, missing key).
    #[error("{0}")]
    Syntax(String),
    /// A value is out of range or contradicts another one, located in the file (the
    /// installer's configuration): `line 14, key `install.esp_mib`: …`.
    #[error("{at}: {reason}")]
    InvalidAt {
        /// Where: file, line and dotted key.
        at: String,
        /// The dotted key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A value is out of range or contradicts another one.
    #[error("{key}: {reason}")]
    Invalid {
        /// The dotted key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The TOML as written. See `docs/agent.md` ("CLI and config") for an example.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Base URL of the device API, `https://host[:port]`.
    pub server: String,
    /// The device's board name (checked against manifests).
    pub board: String,
    /// The persisted A/B state.
    pub state_file: PathBuf,
    /// The signed trust root manifests are verified against.
    pub trust_root: PathBuf,
    /// Directory of the durable report queue.
    pub report_queue: PathBuf,
    /// Bound of the report queue (files).
    #[serde(default = "default_queue_max")]
    pub report_queue_max: usize,
    /// Seconds between polls of the assignment.
    #[serde(default = "default_poll")]
    pub poll_interval_secs: u64,
    /// Seconds the post-reboot health checks may take in total.
    #[serde(default = "default_watchdog")]
    pub watchdog_secs: u64,
    /// The command that reboots the device (argv), into the committed slot.
    #[serde(default = "default_reboot")]
    pub reboot_command: Vec<String>,
    /// The command that reboots into an armed trial (argv). Default: `reboot "0 tryboot"`
    /// for `rpi-tryboot` (the firmware's one-shot flag), `reboot_command` otherwise.
    #[serde(default)]
    pub trial_reboot_command: Option<Vec<String>>,
    /// mutual TLS.
    pub tls: RawTls,
    /// The two slots.
    pub slots: RawSlots,
    /// The bootloader backend.
    pub bootloader: RawBootloader,
    /// Post-reboot health checks.
    #[serde(default)]
    pub health: RawHealth,
    /// Board names of a server-side catalogue beyond the built-in one (`boards_dir`).
    #[serde(default)]
    pub extra_boards: Vec<String>,
    /// Seconds between status reports (and periodic health checks).
    #[serde(default = "default_status")]
    pub status_interval_secs: u64,
    /// MiB of a download between checkpoints (slot synced, offset saved for a resume).
    #[serde(default = "default_checkpoint")]
    pub download_checkpoint_mib: u64,
    /// Enrollment and renewal.
    #[serde(default)]
    pub enroll: RawEnroll,
    /// A hardware watchdog fed while the device is healthy.
    #[serde(default)]
    pub watchdog: RawWatchdog,
}

fn default_status() -> u64 {
    DEFAULT_STATUS_SECS
}
fn default_checkpoint() -> u64 {
    DEFAULT_CHECKPOINT_MIB
}

/// `[enroll]`: everything optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnroll {
    /// File holding a one-time bootstrap token.
    pub token_file: Option<PathBuf>,
    /// Interface whose MAC identifies the machine (default: `BOOTIF=`, else the first wired
    /// interface).
    pub interface: Option<String>,
    /// The MAC to enroll with, instead of reading one.
    pub mac: Option<String>,
    /// Serial number to present (default: device tree or DMI).
    pub serial: Option<String>,
    /// SHA-256 fingerprint (64 hex digits, `:` allowed) a certificate in `tls.ca` must have.
    pub ca_sha256: Option<String>,
    /// Renew within this many days of the certificate's expiry.
    #[serde(default = "default_renew_days")]
    pub renew_before_days: u64,
}

impl Default for RawEnroll {
    fn default() -> Self {
        Self {
            token_file: None,
            interface: None,
            mac: None,
            serial: None,
            ca_sha256: None,
            renew_before_days: DEFAULT_RENEW_BEFORE_DAYS,
        }
    }
}

fn default_renew_days() -> u64 {
    DEFAULT_RENEW_BEFORE_DAYS
}

/// `[watchdog]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWatchdog {
    /// The watchdog device (`/dev/watchdog`); unset: none.
    pub device: Option<PathBuf>,
    /// Seconds between feeds (well below the device's timeout).
    pub feed_secs: Option<u64>,
}

fn default_queue_max() -> usize {
    DEFAULT_QUEUE_MAX
}
fn default_poll() -> u64 {
    DEFAULT_POLL_SECS
}
fn default_watchdog() -> u64 {
    DEFAULT_WATCHDOG_SECS
}
fn default_reboot() -> Vec<String> {
    vec!["reboot".to_owned()]
}

/// `[tls]`: the device's identity and the one CA it trusts for the server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM of the CA that issued the server's certificate (the only CA trusted).
    pub ca: PathBuf,
    /// PEM of the device certificate (chain).
    pub cert: PathBuf,
    /// PEM of the device's private key.
    pub key: PathBuf,
}

/// `[slots]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlots {
    /// Slot A (block device or file).
    pub a: PathBuf,
    /// Slot B.
    pub b: PathBuf,
}

/// `[bootloader]`, selected by `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RawBootloader {
    /// U-Boot environment described by a `fw_env.config`.
    Uboot {
        /// The `fw_env.config` file.
        fw_env_config: PathBuf,
        /// Trial boots before `altbootcmd` (1..=16).
        #[serde(default = "one")]
        bootlimit: u32,
        /// For boot scripts that load each slot's kernel from the boot partition
        /// (`firmware/boot/uboot-ab.cmd`): the mounted boot partition; the slot's `/boot/vmlinuz`
        /// and `/boot/initrd.img` are copied to `<kernel_dir>/<slot>/` before it is armed.
        kernel_dir: Option<PathBuf>,
    },
    /// GRUB environment block.
    Grub {
        /// The `grubenv` file.
        env_file: PathBuf,
        /// Trial boots (1..=3).
        #[serde(default = "one")]
        tries: u32,
    },
    /// Plain text environment read by the board's boot script (and by tests).
    File {
        /// The file.
        path: PathBuf,
        /// The A/B contract the boot script follows: `uboot` or `grub`.
        #[serde(default = "default_contract")]
        contract: String,
        /// Trial boots.
        #[serde(default = "one")]
        tries: u32,
    },
    /// Raspberry Pi `autoboot.txt` with `tryboot_a_b=1` (board backend `rpi-tryboot`).
    RpiTryboot {
        /// The mounted `autoboot.txt` (exclusive with `autoboot_mount`).
        autoboot_txt: Option<PathBuf>,
        /// Where the autoboot partition is mounted; the file is `autoboot.txt` in it.
        autoboot_mount: Option<PathBuf>,
        /// Slot A's boot partition number (board `[[slots]] boot_partition`).
        boot_partition_a: u32,
        /// Slot B's boot partition number.
        boot_partition_b: u32,
        /// Root of the firmware's device tree (`chosen/bootloader/{partition,tryboot}` below).
        #[serde(default = "default_device_tree")]
        device_tree: PathBuf,
    },
    /// UEFI `BootNext`/`BootOrder` (board backend `efi-bootnext`).
    EfiBootnext {
        /// The efivarfs mount.
        #[serde(default = "default_efivars")]
        efivars: PathBuf,
        /// Slot A's loader on the ESP (board `[[slots]] efi_loader`).
        loader_a: String,
        /// Slot B's loader on the ESP.
        loader_b: String,
        /// If set, slot A's `Boot####` description must also match.
        description_a: Option<String>,
        /// If set, slot B's `Boot####` description must also match.
        description_b: Option<String>,
    },
}

fn default_device_tree() -> PathBuf {
    PathBuf::from(PROC_DEVICE_TREE)
}
fn default_efivars() -> PathBuf {
    PathBuf::from(EFIVARFS)
}

fn one() -> u32 {
    1
}
fn default_contract() -> String {
    "uboot".to_owned()
}

/// `[health]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// `[[health.command]]`: commands that must exit 0.
    #[serde(default)]
    pub command: Vec<RawCommandCheck>,
    /// `[[health.http]]`: URLs that must answer 2xx.
    #[serde(default)]
    pub http: Vec<RawHttpCheck>,
    /// `[[health.file]]`: files that must exist.
    #[serde(default)]
    pub file: Vec<RawFileCheck>,
    /// `[[health.service]]`: systemd units that must be active.
    #[serde(default)]
    pub service: Vec<RawServiceCheck>,
}

/// One `[[health.file]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFileCheck {
    /// Name in reports.
    pub name: String,
    /// Absolute path that must exist.
    pub path: PathBuf,
    /// Also refuse an empty file.
    #[serde(default)]
    pub non_empty: bool,
}

/// One `[[health.service]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServiceCheck {
    /// Name in reports.
    pub name: String,
    /// The unit (`nginx.service`, `nginx`).
    pub unit: String,
    /// Seconds before the check counts as failed.
    #[serde(default = "default_check_timeout")]
    pub timeout_secs: u64,
}

/// One `[[health.command]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCommandCheck {
    /// Name in reports.
    pub name: String,
    /// argv.
    pub run: Vec<String>,
    /// Seconds before the check counts as failed.
    #[serde(default = "default_check_timeout")]
    pub timeout_secs: u64,
}

/// One `[[health.http]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpCheck {
    /// Name in reports.
    pub name: String,
    /// `http://` URL (usually loopback).
    pub url: String,
    /// Seconds before the check counts as failed.
    #[serde(default = "default_check_timeout")]
    pub timeout_secs: u64,
}

fn default_check_timeout() -> u64 {
    30
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Base URL of the device API, without a trailing `/`.
    pub server: String,
    /// The device's board.
    pub board: String,
    /// State file.
    pub state_file: PathBuf,
    /// Trust root file.
    pub trust_root: PathBuf,
    /// Report queue directory.
    pub report_queue: PathBuf,
    /// Report queue bound.
    pub report_queue_max: usize,
    /// Between polls.
    pub poll_interval: Duration,
    /// For the health checks in total.
    pub watchdog: Duration,
    /// argv of the reboot command (back into the committed slot).
    pub reboot_command: Vec<String>,
    /// argv of the reboot into an armed trial.
    pub trial_reboot_command: Vec<String>,
    /// TLS files.
    pub tls: TlsFiles,
    /// Slots.
    pub slots: SlotPaths,
    /// Bootloader backend.
    pub bootloader: BootloaderConfig,
    /// Health checks: commands, HTTP probes, files, services, in that order.
    pub health: Vec<HealthCheck>,
    /// Between status reports and periodic health checks.
    pub status_interval: Duration,
    /// Enrollment and renewal.
    pub enroll: EnrollConfig,
    /// A hardware watchdog: the device and the feeding interval.
    pub watchdog_device: Option<(PathBuf, Duration)>,
    /// Bytes of a download between checkpoints.
    pub checkpoint: u64,
}

/// Validated `[enroll]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollConfig {
    /// Token file.
    pub token_file: Option<PathBuf>,
    /// Interface for the MAC.
    pub interface: Option<String>,
    /// Fixed MAC.
    pub mac: Option<tugboot_wire::Mac>,
    /// Fixed serial.
    pub serial: Option<String>,
    /// Pinned CA fingerprint.
    pub ca_sha256: Option<[u8; 32]>,
    /// Renewal window.
    pub renew_before: Duration,
}

/// TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Server CA (PEM).
    pub ca: PathBuf,
    /// Device certificate (PEM).
    pub cert: PathBuf,
    /// Device key (PEM).
    pub key: PathBuf,
}

/// Which A/B contract a plain file environment follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `bootcount`/`bootlimit`/`upgrade_available`.
    Uboot,
    /// `tugboot_try`/`tugboot_tries`.
    Grub,
}

/// Validated bootloader settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootloaderConfig {
    /// U-Boot.
    Uboot {
        /// `fw_env.config`.
        fw_env_config: PathBuf,
        /// 1..=16.
        bootlimit: u32,
        /// Where slot kernels are copied before arming (see [`crate::update::kernels`]).
        kernel_dir: Option<PathBuf>,
    },
    /// GRUB.
    Grub {
        /// `grubenv`.
        env_file: PathBuf,
        /// 1..=3.
        tries: u32,
    },
    /// Plain file.
    File {
        /// The file.
        path: PathBuf,
        /// Contract.
        contract: Contract,
        /// Trial boots.
        tries: u32,
    },
    /// Raspberry Pi tryboot.
    RpiTryboot {
        /// The `autoboot.txt` file.
        autoboot_txt: PathBuf,
        /// Slot A's boot partition (1..=63, differs from B's).
        boot_partition_a: u32,
        /// Slot B's boot partition.
        boot_partition_b: u32,
        /// Device-tree root.
        device_tree: PathBuf,
    },
    /// UEFI `BootNext`.
    EfiBootnext {
        /// The efivarfs directory.
        efivars: PathBuf,
        /// Slot A's loader and optional description.
        slot_a: EfiSlotConfig,
        /// Slot B's.
        slot_b: EfiSlotConfig,
    },
}

/// How one slot's `Boot####` entry is recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EfiSlotConfig {
    /// Loader path on the ESP (`EFI/tugboot/slot-a.efi`).
    pub loader: String,
    /// Exact description, if required.
    pub description: Option<String>,
}

impl BootloaderConfig {
    /// The backend's name as in the `kind` key.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            BootloaderConfig::Uboot { .. } => "uboot",
            BootloaderConfig::Grub { .. } => "grub",
            BootloaderConfig::File { .. } => "file",
            BootloaderConfig::RpiTryboot { .. } => "rpi-tryboot",
            BootloaderConfig::EfiBootnext { .. } => "efi-bootnext",
        }
    }
}

/// A validated health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheck {
    /// Run a command; exit status 0 is healthy.
    Command {
        /// Name.
        name: String,
        /// argv (non-empty).
        argv: Vec<String>,
        /// Deadline.
        timeout: Duration,
    },
    /// GET a URL; 2xx is healthy.
    Http {
        /// Name.
        name: String,
        /// URL.
        url: String,
        /// Deadline.
        timeout: Duration,
    },
    /// A file must exist (and not be empty, if asked).
    File {
        /// Name.
        name: String,
        /// The file.
        path: PathBuf,
        /// Refuse an empty file.
        non_empty: bool,
    },
    /// A systemd unit must be active (`systemctl is-active --quiet <unit>`).
    Service {
        /// Name.
        name: String,
        /// The unit.
        unit: String,
        /// Deadline.
        timeout: Duration,
    },
}

impl HealthCheck {
    /// The check's name.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            HealthCheck::Command { name, .. }
            | HealthCheck::Http { name, .. }
            | HealthCheck::File { name, .. }
            | HealthCheck::Service { name, .. } => name,
        }
    }

    /// `command`, `http`, `file`, `service`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            HealthCheck::Command { .. } => "command",
            HealthCheck::Http { .. } => "http",
            HealthCheck::File { .. } => "file",
            HealthCheck::Service { .. } => "service",
        }
    }
}

fn absolute(key: &str, path: &Path) -> Result<PathBuf, ConfigError> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Err(invalid(
            key,
            format!(
                "must be an absolute path, not {:?}",
                path.display().to_string()
            ),
        ))
    }
}

fn secs(key: &str, v: u64) -> Result<Duration, ConfigError> {
    if (1..=MAX_SECS).contains(&v) {
        Ok(Duration::from_secs(v))
    } else {
        Err(invalid(
            key,
            format!("must be 1..={MAX_SECS} seconds, not {v}"),
        ))
    }
}

/// Checks `url` is `scheme://host...` with a non-empty host and no whitespace.
fn url(key: &str, value: &str, schemes: &[&str]) -> Result<String, ConfigError> {
    let ok = schemes.iter().any(|s| {
        value
            .strip_prefix(s)
            .and_then(|r| r.strip_prefix("://"))
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
    }) && !value.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(value.trim_end_matches('/').to_owned())
    } else {
        Err(invalid(
            key,
            format!("must be a {} URL, not {value:?}", schemes.join(" or ")),
        ))
    }
}

fn name(key: &str, value: &str) -> Result<String, ConfigError> {
    if value.is_empty() || value.len() > 64 || value.chars().any(char::is_control) {
        Err(invalid(key, "must be 1..=64 printable characters"))
    } else {
        Ok(value.to_owned())
    }
}

impl TryFrom<RawConfig> for DeviceConfig {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let server = url("server", &raw.server, &["https"])?;
        let mut extra_boards = Vec::with_capacity(raw.extra_boards.len());
        for (i, b) in raw.extra_boards.iter().enumerate() {
            extra_boards.push(board_name(&format!("extra_boards[{i}]"), b)?);
        }
        let board = board_name("board", &raw.board)?;
        if !KNOWN_BOARDS.contains(&board.as_str()) && !extra_boards.contains(&board) {
            return Err(invalid(
                "board",
                format!(
                    "{board:?} is not a board of the catalogue{}; known: {} (a board of your \
                     own catalogue goes in extra_boards)",
                    suggest_board(&board)
                        .map(|b| format!(" (did you mean {b:?}?)"))
                        .unwrap_or_default(),
                    KNOWN_BOARDS.join(", ")
                ),
            ));
        }
        let slots = SlotPaths {
            a: absolute("slots.a", &raw.slots.a)?,
            b: absolute("slots.b", &raw.slots.b)?,
        };
        if slots.a == slots.b {
            return Err(invalid("slots.b", "must differ from slots.a"));
        }
        if !(1..=100_000).contains(&raw.report_queue_max) {
            return Err(invalid("report_queue_max", "must be 1..=100000"));
        }
        if raw.reboot_command.first().is_none_or(String::is_empty) {
            return Err(invalid("reboot_command", "must name a program"));
        }
        let bootloader = match raw.bootloader {
            RawBootloader::Uboot {
                fw_env_config,
                bootlimit,
                kernel_dir,
            } => {
                if !(1..=crate::bootloader::uboot::ab::MAX_BOOTLIMIT).contains(&bootlimit) {
                    return Err(invalid("bootloader.bootlimit", "must be 1..=16"));
                }
                BootloaderConfig::Uboot {
                    fw_env_config: absolute("bootloader.fw_env_config", &fw_env_config)?,
                    bootlimit,
                    kernel_dir: kernel_dir
                        .map(|d| absolute("bootloader.kernel_dir", &d))
                        .transpose()?,
                }
            }
            RawBootloader::Grub { env_file, tries } => {
                if !(1..=3).contains(&tries) {
                    return Err(invalid("bootloader.tries", "must be 1..=3"));
                }
                BootloaderConfig::Grub {
                    env_file: absolute("bootloader.env_file", &env_file)?,
                    tries,
                }
            }
            RawBootloader::File {
                path,
                contract,
                tries,
            } => {
                let (contract, max) = match contract.as_str() {
                    "uboot" => (Contract::Uboot, crate::bootloader::uboot::ab::MAX_BOOTLIMIT),
                    "grub" => (Contract::Grub, 3),
                    other => {
                        return Err(invalid(
                            "bootloader.contract",
                            format!("must be \"uboot\" or \"grub\", not {other:?}"),
                        ));
                    }
                };
                if !(1..=max).contains(&tries) {
                    return Err(invalid("bootloader.tries", format!("must be 1..={max}")));
                }
                BootloaderConfig::File {
                    path: absolute("bootloader.path", &path)?,
                    contract,
                    tries,
                }
            }
            RawBootloader::RpiTryboot {
                autoboot_txt,
                autoboot_mount,
                boot_partition_a,
                boot_partition_b,
                device_tree,
            } => rpi_tryboot(
                autoboot_txt,
                autoboot_mount,
                boot_partition_a,
                boot_partition_b,
                &device_tree,
            )?,
            RawBootloader::EfiBootnext {
                efivars,
                loader_a,
                loader_b,
                description_a,
                description_b,
            } => {
                let slot_a = efi_slot("a", loader_a, description_a)?;
                let slot_b = efi_slot("b", loader_b, description_b)?;
                if slot_a == slot_b
                    || (slot_a.description == slot_b.description
                        && normalized_loader(&slot_a.loader)
                            .eq_ignore_ascii_case(&normalized_loader(&slot_b.loader)))
                {
                    return Err(invalid(
                        "bootloader.loader_b",
                        "must differ from bootloader.loader_a",
                    ));
                }
                BootloaderConfig::EfiBootnext {
                    efivars: absolute("bootloader.efivars", &efivars)?,
                    slot_a,
                    slot_b,
                }
            }
        };
        let trial_reboot_command = match raw.trial_reboot_command {
            Some(argv) => {
                if argv.first().is_none_or(String::is_empty) {
                    return Err(invalid("trial_reboot_command", "must name a program"));
                }
                if matches!(bootloader, BootloaderConfig::RpiTryboot { .. })
                    && !argv.iter().any(|a| a.contains("tryboot"))
                {
                    return Err(invalid(
                        "trial_reboot_command",
                        format!(
                            "must set the firmware's tryboot flag for rpi-tryboot, e.g. \
                             [\"reboot\", \"{REBOOT_ARG}\"]"
                        ),
                    ));
                }
                argv
            }
            None if matches!(bootloader, BootloaderConfig::RpiTryboot { .. }) => {
                vec!["reboot".to_owned(), REBOOT_ARG.to_owned()]
            }
            None => raw.reboot_command.clone(),
        };
        let checks = raw.health.command.len()
            + raw.health.http.len()
            + raw.health.file.len()
            + raw.health.service.len();
        if checks > MAX_CHECKS {
            return Err(invalid(
                "health",
                format!("{checks} checks, at most {MAX_CHECKS}"),
            ));
        }
        let mut health = Vec::with_capacity(checks);
        for (i, c) in raw.health.command.iter().enumerate() {
            let key = format!("health.command[{i}]");
            if c.run.first().is_none_or(String::is_empty) {
                return Err(invalid(format!("{key}.run"), "must name a program"));
            }
            health.push(HealthCheck::Command {
                name: name(&format!("{key}.name"), &c.name)?,
                argv: c.run.clone(),
                timeout: secs(&format!("{key}.timeout_secs"), c.timeout_secs)?,
            });
        }
        for (i, c) in raw.health.http.iter().enumerate() {
            let key = format!("health.http[{i}]");
            // Plain HTTP only: the probe has no roots to check a local service's certificate
            // with (the pinned CA is the device API's, not the service's).
            health.push(HealthCheck::Http {
                name: name(&format!("{key}.name"), &c.name)?,
                url: url(&format!("{key}.url"), &c.url, &["http"])?,
                timeout: secs(&format!("{key}.timeout_secs"), c.timeout_secs)?,
            });
        }
        for (i, c) in raw.health.file.iter().enumerate() {
            let key = format!("health.file[{i}]");
            health.push(HealthCheck::File {
                name: name(&format!("{key}.name"), &c.name)?,
                path: absolute(&format!("{key}.path"), &c.path)?,
                non_empty: c.non_empty,
            });
        }
        for (i, c) in raw.health.service.iter().enumerate() {
            let key = format!("health.service[{i}]");
            let unit_ok = !c.unit.is_empty()
                && c.unit.len() <= 255
                && !c.unit.starts_with('-')
                && c.unit.chars().all(|ch| {
                    ch.is_ascii_alphanumeric() || matches!(ch, ':' | '-' | '_' | '.' | '@' | '\\')
                });
            if !unit_ok {
                return Err(invalid(
                    format!("{key}.unit"),
                    format!(
                        "must be a systemd unit name such as nginx.service, not {:?}",
                        c.unit
                    ),
                ));
            }
            health.push(HealthCheck::Service {
                name: name(&format!("{key}.name"), &c.name)?,
                unit: c.unit.clone(),
                timeout: secs(&format!("{key}.timeout_secs"), c.timeout_secs)?,
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &health {
            if !seen.insert(c.name()) {
                return Err(invalid(
                    "health",
                    format!("two checks are named {:?}", c.name()),
                ));
            }
        }
        let enroll = enroll_config(&raw.enroll)?;
        let watchdog_device = match (&raw.watchdog.device, raw.watchdog.feed_secs) {
            (Some(d), feed) => Some((
                absolute("watchdog.device", d)?,
                secs(
                    "watchdog.feed_secs",
                    feed.unwrap_or(DEFAULT_WATCHDOG_FEED_SECS),
                )?,
            )),
            (None, Some(_)) => {
                return Err(invalid("watchdog.feed_secs", "needs watchdog.device"));
            }
            (None, None) => None,
        };
        Ok(Self {
            server,
            board,
            state_file: absolute("state_file", &raw.state_file)?,
            trust_root: absolute("trust_root", &raw.trust_root)?,
            report_queue: absolute("report_queue", &raw.report_queue)?,
            report_queue_max: raw.report_queue_max,
            poll_interval: secs("poll_interval_secs", raw.poll_interval_secs)?,
            watchdog: secs("watchdog_secs", raw.watchdog_secs)?,
            reboot_command: raw.reboot_command,
            trial_reboot_command,
            tls: TlsFiles {
                ca: absolute("tls.ca", &raw.tls.ca)?,
                cert: absolute("tls.cert", &raw.tls.cert)?,
                key: absolute("tls.key", &raw.tls.key)?,
            },
            slots,
            bootloader,
            health,
            status_interval: secs("status_interval_secs", raw.status_interval_secs)?,
            enroll,
            watchdog_device,
            checkpoint: if (1..=4096).contains(&raw.download_checkpoint_mib) {
                raw.download_checkpoint_mib << 20
            } else {
                return Err(invalid("download_checkpoint_mib", "must be 1..=4096"));
            },
        })
    }
}

/// A board name as the catalogue spells them: 1–64 of `a-z 0-9 - _`, starting with a letter
/// or digit.
fn board_name(key: &str, value: &str) -> Result<String, ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(value.to_owned())
    } else {
        Err(invalid(
            key,
            format!("{value:?} is not a board name (1..=64 of a-z 0-9 - _)"),
        ))
    }
}

/// The known board a mistyped name most likely means: one that contains its digits and
/// shares its first letter (`rpi4` → `raspberrypi-4`), if exactly one does.
fn suggest_board(name: &str) -> Option<&'static str> {
    let digits: String = name.chars().filter(char::is_ascii_digit).collect();
    let first = name.chars().next()?;
    let mut hits = KNOWN_BOARDS.iter().filter(|b| {
        b.starts_with(first) && b.chars().filter(char::is_ascii_digit).collect::<String>() == digits
    });
    match (hits.next(), hits.next()) {
        (Some(b), None) => Some(b),
        _ => None,
    }
}

fn enroll_config(raw: &RawEnroll) -> Result<EnrollConfig, ConfigError> {
    let mac = raw
        .mac
        .as_deref()
        .map(|m| {
            m.parse::<tugboot_wire::Mac>()
                .map_err(|e| invalid("enroll.mac", e.to_string()))
        })
        .transpose()?;
    let ca_sha256 = raw
        .ca_sha256
        .as_deref()
        .map(|f| {
            parse_fingerprint(f).ok_or_else(|| {
                invalid(
                    "enroll.ca_sha256",
                    "must be 64 hex digits (colons allowed), the CA's SHA-256 fingerprint",
                )
            })
        })
        .transpose()?;
    if let Some(i) = &raw.interface
        && (i.is_empty() || i.len() > 15 || i.contains(['/', ' ']) || i == "." || i == "..")
    {
        return Err(invalid(
            "enroll.interface",
            "must be an interface name such as eth0",
        ));
    }
    if let Some(s) = &raw.serial {
        name("enroll.serial", s)?;
    }
    if !(1..=365).contains(&raw.renew_before_days) {
        return Err(invalid("enroll.renew_before_days", "must be 1..=365"));
    }
    Ok(EnrollConfig {
        token_file: raw
            .token_file
            .as_deref()
            .map(|p| absolute("enroll.token_file", p))
            .transpose()?,
        interface: raw.interface.clone(),
        mac,
        serial: raw.serial.clone(),
        ca_sha256,
        renew_before: Duration::from_secs(raw.renew_before_days * 86_400),
    })
}

/// A SHA-256 fingerprint: 64 hex digits, optionally `sha256:`-prefixed and `:`-separated
/// (as `tugboot ca init` and `openssl x509 -fingerprint` print it).
#[must_use]
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let hex: Vec<u8> = text
        .strip_prefix("sha256:")
        .unwrap_or(text)
        .bytes()
        .filter(|&b| b != b':')
        .collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

fn rpi_tryboot(
    autoboot_txt: Option<PathBuf>,
    autoboot_mount: Option<PathBuf>,
    a: u32,
    b: u32,
    device_tree: &Path,
) -> Result<BootloaderConfig, ConfigError> {
    let autoboot_txt = match (autoboot_txt, autoboot_mount) {
        (Some(file), None) => absolute("bootloader.autoboot_txt", &file)?,
        (None, Some(dir)) => absolute("bootloader.autoboot_mount", &dir)?.join(AUTOBOOT_FILE),
        (Some(_), Some(_)) => {
            return Err(invalid(
                "bootloader.autoboot_mount",
                "give either autoboot_txt or autoboot_mount, not both",
            ));
        }
        (None, None) => {
            return Err(invalid(
                "bootloader.autoboot_txt",
                "rpi-tryboot needs autoboot_txt (the file) or autoboot_mount (its partition)",
            ));
        }
    };
    let max = crate::bootloader::rpi::autoboot::MAX_PARTITION;
    for (key, p) in [
        ("bootloader.boot_partition_a", a),
        ("bootloader.boot_partition_b", b),
    ] {
        if !(1..=max).contains(&p) {
            return Err(invalid(key, format!("must be 1..={max}, not {p}")));
        }
    }
    if a == b {
        return Err(invalid(
            "bootloader.boot_partition_b",
            "must differ from bootloader.boot_partition_a",
        ));
    }
    Ok(BootloaderConfig::RpiTryboot {
        autoboot_txt,
        boot_partition_a: a,
        boot_partition_b: b,
        device_tree: absolute("bootloader.device_tree", device_tree)?,
    })
}

/// Longest accepted loader path or description.
const MAX_EFI_STRING: usize = 255;

fn efi_slot(
    which: &str,
    loader: String,
    description: Option<String>,
) -> Result<EfiSlotConfig, ConfigError> {
    let key = format!("bootloader.loader_{which}");
    let plain =
        |s: &str| !s.is_empty() && s.len() <= MAX_EFI_STRING && !s.chars().any(char::is_control);
    if !plain(&loader) || loader.ends_with(['/', '\\']) {
        return Err(invalid(
            key,
            format!(
                "must be a file path on the ESP such as EFI/tugboot/slot-{which}.efi, not {loader:?}"
            ),
        ));
    }
    if let Some(d) = &description
        && !plain(d)
    {
        return Err(invalid(
            format!("bootloader.description_{which}"),
            format!("must be 1..={MAX_EFI_STRING} printable characters"),
        ));
    }
    Ok(EfiSlotConfig {
        loader,
        description,
    })
}

/// As the EFI backend compares loaders: `/` and `\` alike, leading separator optional.
fn normalized_loader(p: &str) -> String {
    p.trim_start_matches(['/', '\\']).replace('\\', "/")
}

impl DeviceConfig {
    /// Parses and validates a configuration.
    ///
    /// # Errors
    /// [`ConfigError::TooLarge`], [`ConfigError::Syntax`] (with line, column and key) or
    /// [`ConfigError::Invalid`].
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: PathBuf::from("<config>"),
            });
        }
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(one_line(&e.to_string())))?;
        Self::try_from(raw)
    }

    /// [`DeviceConfig::parse`] over raw bytes (size cap first, then UTF-8): the entry of the
    /// `agent_config` fuzz target and of its seed test. Never panics.
    ///
    /// # Errors
    /// As for [`DeviceConfig::parse`]; bytes that are not UTF-8 are a [`ConfigError::Syntax`].
    pub fn parse_bytes(data: &[u8]) -> Result<Self, ConfigError> {
        if data.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: PathBuf::from("<config>"),
            });
        }
        let text = std::str::from_utf8(data)
            .map_err(|e| ConfigError::Syntax(format!("not UTF-8: {e}")))?;
        Self::parse(text)
    }

    /// The resolved configuration, one `key = value` per line (for `check-config`).
    #[must_use]
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "server = {}", self.server);
        let _ = writeln!(s, "board = {}", self.board);
        let _ = writeln!(s, "state_file = {}", self.state_file.display());
        let _ = writeln!(s, "trust_root = {}", self.trust_root.display());
        let _ = writeln!(
            s,
            "report_queue = {} (at most {} reports)",
            self.report_queue.display(),
            self.report_queue_max
        );
        let _ = writeln!(s, "poll_interval = {}s", self.poll_interval.as_secs());
        let _ = writeln!(s, "watchdog = {}s", self.watchdog.as_secs());
        let _ = writeln!(s, "reboot_command = {:?}", self.reboot_command);
        let _ = writeln!(s, "trial_reboot_command = {:?}", self.trial_reboot_command);
        let _ = writeln!(s, "tls.ca = {}", self.tls.ca.display());
        let _ = writeln!(s, "tls.cert = {}", self.tls.cert.display());
        let _ = writeln!(s, "tls.key = {}", self.tls.key.display());
        let _ = writeln!(s, "slots.a = {}", self.slots.a.display());
        let _ = writeln!(s, "slots.b = {}", self.slots.b.display());
        let _ = match &self.bootloader {
            BootloaderConfig::Uboot {
                fw_env_config,
                bootlimit,
                kernel_dir,
            } => writeln!(
                s,
                "bootloader = uboot (fw_env.config {}, bootlimit {bootlimit}{})",
                fw_env_config.display(),
                kernel_dir
                    .as_ref()
                    .map(|d| format!(", slot kernels in {}", d.display()))
                    .unwrap_or_default()
            ),
            BootloaderConfig::Grub { env_file, tries } => writeln!(
                s,
                "bootloader = grub (env {}, tries {tries})",
                env_file.display()
            ),
            BootloaderConfig::File {
                path,
                contract,
                tries,
            } => writeln!(
                s,
                "bootloader = file ({}, {contract:?} contract, tries {tries})",
                path.display()
            ),
            BootloaderConfig::RpiTryboot {
                autoboot_txt,
                boot_partition_a,
                boot_partition_b,
                device_tree,
            } => writeln!(
                s,
                "bootloader = rpi-tryboot ({}, slot A partition {boot_partition_a}, slot B \
                 partition {boot_partition_b}, device tree {})",
                autoboot_txt.display(),
                device_tree.display()
            ),
            BootloaderConfig::EfiBootnext {
                efivars,
                slot_a,
                slot_b,
            } => writeln!(
                s,
                "bootloader = efi-bootnext ({}, slot A {}{}, slot B {}{})",
                efivars.display(),
                slot_a.loader,
                slot_a
                    .description
                    .as_ref()
                    .map_or(String::new(), |d| format!(" {d:?}")),
                slot_b.loader,
                slot_b
                    .description
                    .as_ref()
                    .map_or(String::new(), |d| format!(" {d:?}")),
            ),
        };
        let _ = writeln!(s, "status_interval = {}s", self.status_interval.as_secs());
        let _ = writeln!(s, "download_checkpoint = {} MiB", self.checkpoint >> 20);
        let _ = writeln!(
            s,
            "enroll = token {}, MAC {}, serial {}, CA {}, renew {} days before expiry",
            self.enroll
                .token_file
                .as_ref()
                .map_or("none (or tugboot.enroll_token=)".to_owned(), |p| p
                    .display()
                    .to_string()),
            self.enroll.mac.map_or_else(
                || {
                    self.enroll
                        .interface
                        .as_ref()
                        .map_or("BOOTIF= or the first wired interface".to_owned(), |i| {
                            format!("of {i}")
                        })
                },
                |m| m.to_string()
            ),
            self.enroll.serial.as_deref().unwrap_or("from the device"),
            self.enroll
                .ca_sha256
                .map_or("tls.ca as is".to_owned(), |f| format!(
                    "tls.ca pinned to sha256:{}",
                    f.iter().map(|b| format!("{b:02x}")).collect::<String>()
                )),
            self.enroll.renew_before.as_secs() / 86_400
        );
        if let Some((dev, feed)) = &self.watchdog_device {
            let _ = writeln!(
                s,
                "watchdog = {} fed every {}s while healthy",
                dev.display(),
                feed.as_secs()
            );
        }
        for c in &self.health {
            let _ = match c {
                HealthCheck::Command {
                    name,
                    argv,
                    timeout,
                } => writeln!(
                    s,
                    "health {name}: command {argv:?} within {}s",
                    timeout.as_secs()
                ),
                HealthCheck::Http { name, url, timeout } => {
                    writeln!(s, "health {name}: GET {url} within {}s", timeout.as_secs())
                }
                HealthCheck::File {
                    name,
                    path,
                    non_empty,
                } => writeln!(
                    s,
                    "health {name}: file {} exists{}",
                    path.display(),
                    if *non_empty { " and is not empty" } else { "" }
                ),
                HealthCheck::Service {
                    name,
                    unit,
                    timeout,
                } => writeln!(
                    s,
                    "health {name}: systemd unit {unit} active within {}s",
                    timeout.as_secs()
                ),
            };
        }
        s
    }
}

/// Folds toml's multi-line diagnostics (which quote the offending line) into one line.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && *l != "|" && !l.chars().all(|c| c == '^' || c == '|' || c == ' ')
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads (at most [`MAX_CONFIG_BYTES`]) and parses the configuration at `path`.
///
/// # Errors
/// As for [`DeviceConfig::parse`], plus read errors.
pub fn load(path: &Path) -> Result<DeviceConfig, ConfigError> {
    let text = read_capped(path, MAX_CONFIG_BYTES).map_err(|e| match e {
        CappedReadError::TooLarge => ConfigError::TooLarge {
            path: path.to_path_buf(),
        },
        CappedReadError::Io(source) => ConfigError::Read {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let text = String::from_utf8(text)
        .map_err(|_| ConfigError::Syntax(format!("{}: not UTF-8", path.display())))?;
    DeviceConfig::parse(&text).map_err(|e| match e {
        ConfigError::Syntax(m) => ConfigError::Syntax(format!("{}: {m}", path.display())),
        ConfigError::Invalid { key, reason } => ConfigError::Invalid {
            key: format!("{}: {key}", path.display()),
            reason,
        },
        other => other,
    })
}

/// Why [`read_capped`] failed.
#[derive(Debug)]
pub(crate) enum CappedReadError {
    TooLarge,
    Io(std::io::Error),
}

/// Reads a whole file of at most `cap` bytes, never reading more than `cap + 1`.
pub(crate) fn read_capped(path: &Path, cap: usize) -> Result<Vec<u8>, CappedReadError> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(CappedReadError::Io)?;
    let mut out = Vec::new();
    file.take(u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut out)
        .map_err(CappedReadError::Io)?;
    if out.len() > cap {
        return Err(CappedReadError::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = r#"
server = "https://tugboot.example:8443/"
board = "raspberrypi-4"
state_file = "/data/tugboot/state.json"
trust_root = "/etc/tugboot/root.json"
report_queue = "/data/tugboot/reports"
poll_interval_secs = 60

[tls]
ca = "/etc/tugboot/server-ca.pem"
cert = "/etc/tugboot/device.pem"
key = "/etc/tugboot/device.key"

[slots]
a = "/dev/mmcblk0p2"
b = "/dev/mmcblk0p3"

[bootloader]
kind = "uboot"
fw_env_config = "/etc/fw_env.config"
bootlimit = 3

[[health.command]]
name = "nginx"
run = ["/bin/systemctl", "is-active", "nginx"]
timeout_secs = 20

[[health.http]]
name = "api"
url = "http://127.0.0.1:8080/healthz"
"#;

    #[test]
    fn example_parses_with_defaults() {
        let c = DeviceConfig::parse(EXAMPLE).unwrap();
        assert_eq!(c.server, "https://tugboot.example:8443");
        assert_eq!(c.poll_interval, Duration::from_secs(60));
        assert_eq!(c.watchdog, Duration::from_secs(DEFAULT_WATCHDOG_SECS));
        assert_eq!(c.reboot_command, vec!["reboot".to_owned()]);
        assert_eq!(c.report_queue_max, DEFAULT_QUEUE_MAX);
        assert_eq!(
            c.bootloader,
            BootloaderConfig::Uboot {
                fw_env_config: "/etc/fw_env.config".into(),
                bootlimit: 3,
                kernel_dir: None,
            }
        );
        assert_eq!(c.health.len(), 2);
        assert_eq!(c.health[1].name(), "api");
        assert!(
            matches!(&c.health[1], HealthCheck::Http { timeout, .. } if timeout.as_secs() == 30)
        );
        assert!(c.describe().contains("bootlimit 3"));
    }

    /// `EXAMPLE` with its `[bootloader]` table replaced by `table` (and `extra` top-level keys).
    fn with_bootloader(extra: &str, table: &str) -> String {
        let start = EXAMPLE.find("[bootloader]").unwrap();
        let end = EXAMPLE.find("[[health.command]]").unwrap();
        format!(
            "{extra}\n{}[bootloader]\n{table}\n{}",
            &EXAMPLE[..start],
            &EXAMPLE[end..]
        )
    }

    const RPI: &str = "kind = \"rpi-tryboot\"\nautoboot_txt = \"/boot/autoboot/autoboot.txt\"\n\
                       boot_partition_a = 2\nboot_partition_b = 3";
    const EFI: &str = "kind = \"efi-bootnext\"\nloader_a = \"EFI/tugboot/slot-a.efi\"\n\
                       loader_b = \"EFI/tugboot/slot-b.efi\"";

    fn err(text: &str) -> String {
        let e = DeviceConfig::parse(text).unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
        e
    }

    #[test]
    fn rpi_tryboot_parses_with_defaults() {
        let c = DeviceConfig::parse(&with_bootloader("", RPI)).unwrap();
        assert_eq!(
            c.bootloader,
            BootloaderConfig::RpiTryboot {
                autoboot_txt: "/boot/autoboot/autoboot.txt".into(),
                boot_partition_a: 2,
                boot_partition_b: 3,
                device_tree: PROC_DEVICE_TREE.into(),
            }
        );
        assert_eq!(c.reboot_command, vec!["reboot".to_owned()]);
        assert_eq!(c.trial_reboot_command, vec!["reboot", "0 tryboot"]);
        assert_eq!(c.bootloader.kind(), "rpi-tryboot");
        let d = c.describe();
        assert!(d.contains("bootloader = rpi-tryboot (/boot/autoboot/autoboot.txt, slot A partition 2, slot B partition 3, device tree /proc/device-tree)"), "{d}");
        assert!(
            d.contains("trial_reboot_command = [\"reboot\", \"0 tryboot\"]"),
            "{d}"
        );

        // The partition's mount point instead of the file; another device tree; own commands.
        let table = "kind = \"rpi-tryboot\"\nautoboot_mount = \"/boot/autoboot\"\n\
                     boot_partition_a = 3\nboot_partition_b = 2\ndevice_tree = \"/tmp/dt\"";
        let extra = "reboot_command = [\"systemctl\", \"reboot\"]\n\
                     trial_reboot_command = [\"systemctl\", \"reboot\", \"0 tryboot\"]";
        let c = DeviceConfig::parse(&with_bootloader(extra, table)).unwrap();
        assert_eq!(
            c.bootloader,
            BootloaderConfig::RpiTryboot {
                autoboot_txt: "/boot/autoboot/autoboot.txt".into(),
                boot_partition_a: 3,
                boot_partition_b: 2,
                device_tree: "/tmp/dt".into(),
            }
        );
        assert_eq!(c.reboot_command, vec!["systemctl", "reboot"]);
        assert_eq!(
            c.trial_reboot_command,
            vec!["systemctl", "reboot", "0 tryboot"]
        );
    }

    #[test]
    fn rpi_tryboot_errors_name_the_key() {
        let swap = |from: &str, to: &str| {
            let t = RPI.replacen(from, to, 1);
            assert_ne!(t, RPI, "{from}");
            with_bootloader("", &t)
        };
        for (text, want) in [
            (
                swap("autoboot_txt = \"/boot/autoboot/autoboot.txt\"\n", ""),
                "bootloader.autoboot_txt: rpi-tryboot needs autoboot_txt",
            ),
            (
                swap("\"/boot/autoboot/autoboot.txt\"", "\"autoboot.txt\""),
                "bootloader.autoboot_txt: must be an absolute path",
            ),
            (
                swap(
                    "boot_partition_a",
                    "autoboot_mount = \"/boot/autoboot\"\nboot_partition_a",
                ),
                "bootloader.autoboot_mount: give either",
            ),
            (
                with_bootloader(
                    "",
                    "kind = \"rpi-tryboot\"\nautoboot_mount = \"boot\"\n\
                     boot_partition_a = 2\nboot_partition_b = 3",
                ),
                "bootloader.autoboot_mount: must be an absolute path",
            ),
            (
                swap("boot_partition_a = 2", "boot_partition_a = 0"),
                "bootloader.boot_partition_a: must be 1..=63, not 0",
            ),
            (
                swap("boot_partition_b = 3", "boot_partition_b = 64"),
                "bootloader.boot_partition_b: must be 1..=63, not 64",
            ),
            (
                swap("boot_partition_b = 3", "boot_partition_b = 2"),
                "bootloader.boot_partition_b: must differ",
            ),
            (
                swap("boot_partition_b = 3", "boot_partition_b = -1"),
                // Type errors inside the tagged table are found after its variant is known:
                // reported for the table, not the key.
                "key `bootloader`: invalid value: integer `-1`, expected u32",
            ),
            (swap("\nboot_partition_b = 3", ""), "boot_partition_b"),
            (
                swap(
                    "boot_partition_b = 3",
                    "boot_partition_b = 3\ndevice_tree = \"dt\"",
                ),
                "bootloader.device_tree: must be an absolute path",
            ),
            (
                swap(
                    "boot_partition_b = 3",
                    "boot_partition_b = 3\ndisk = \"/dev/mmcblk0\"",
                ),
                "unknown field `disk`",
            ),
            (
                with_bootloader("trial_reboot_command = [\"reboot\"]", RPI),
                "trial_reboot_command: must set the firmware's tryboot flag",
            ),
            (
                with_bootloader("trial_reboot_command = []", RPI),
                "trial_reboot_command: must name a program",
            ),
            (
                with_bootloader("trial_reboot_command = [\"\", \"0 tryboot\"]", RPI),
                "trial_reboot_command: must name a program",
            ),
        ] {
            let e = err(&text);
            assert!(e.contains(want), "wanted {want:?} in {e}");
        }
    }

    #[test]
    fn efi_bootnext_parses_with_defaults() {
        let c = DeviceConfig::parse(&with_bootloader("", EFI)).unwrap();
        assert_eq!(
            c.bootloader,
            BootloaderConfig::EfiBootnext {
                efivars: EFIVARFS.into(),
                slot_a: EfiSlotConfig {
                    loader: "EFI/tugboot/slot-a.efi".into(),
                    description: None
                },
                slot_b: EfiSlotConfig {
                    loader: "EFI/tugboot/slot-b.efi".into(),
                    description: None
                },
            }
        );
        // BootNext needs no special reboot.
        assert_eq!(c.trial_reboot_command, c.reboot_command);
        assert_eq!(c.bootloader.kind(), "efi-bootnext");
        let d = c.describe();
        assert!(d.contains("bootloader = efi-bootnext (/sys/firmware/efi/efivars, slot A EFI/tugboot/slot-a.efi, slot B EFI/tugboot/slot-b.efi)"), "{d}");

        // Same loader for both, told apart by description; own efivars directory.
        let table = "kind = \"efi-bootnext\"\nefivars = \"/tmp/efivars\"\n\
                     loader_a = \"\\\\EFI\\\\tugboot\\\\os.efi\"\nloader_b = \"EFI/tugboot/os.efi\"\n\
                     description_a = \"tugboot A\"\ndescription_b = \"tugboot B\"";
        let c = DeviceConfig::parse(&with_bootloader("", table)).unwrap();
        let BootloaderConfig::EfiBootnext {
            efivars,
            slot_a,
            slot_b,
        } = &c.bootloader
        else {
            panic!("{:?}", c.bootloader)
        };
        assert_eq!(efivars, Path::new("/tmp/efivars"));
        assert_eq!(slot_a.loader, "\\EFI\\tugboot\\os.efi");
        assert_eq!(slot_b.description.as_deref(), Some("tugboot B"));
        assert!(
            c.describe()
                .contains("slot A \\EFI\\tugboot\\os.efi \"tugboot A\"")
        );
    }

    #[test]
    fn efi_bootnext_errors_name_the_key() {
        let swap = |from: &str, to: &str| {
            let t = EFI.replacen(from, to, 1);
            assert_ne!(t, EFI, "{from}");
            with_bootloader("", &t)
        };
        for (text, want) in [
            (
                swap("loader_a = \"EFI/tugboot/slot-a.efi\"\n", ""),
                "loader_a",
            ),
            (
                swap("\"EFI/tugboot/slot-a.efi\"", "\"\""),
                "bootloader.loader_a: must be a file path on the ESP",
            ),
            (
                swap("\"EFI/tugboot/slot-b.efi\"", "\"EFI/tugboot/\""),
                "bootloader.loader_b: must be a file path on the ESP",
            ),
            (
                swap("\"EFI/tugboot/slot-b.efi\"", "\"EFI/x\\u0000.efi\""),
                "bootloader.loader_b: must be a file path",
            ),
            (
                swap(
                    "\"EFI/tugboot/slot-b.efi\"",
                    &format!("\"{}\"", "x".repeat(256)),
                ),
                "bootloader.loader_b: must be a file path",
            ),
            (
                swap("\"EFI/tugboot/slot-b.efi\"", "\"/efi/TUGBOOT/slot-a.efi\""),
                "bootloader.loader_b: must differ from bootloader.loader_a",
            ),
            (
                swap(
                    "kind = \"efi-bootnext\"",
                    "kind = \"efi-bootnext\"\ndescription_a = \"\"",
                ),
                "bootloader.description_a: must be 1..=255 printable characters",
            ),
            (
                swap(
                    "kind = \"efi-bootnext\"",
                    "kind = \"efi-bootnext\"\ndescription_b = \"a\\tb\"",
                ),
                "bootloader.description_b: must be 1..=255",
            ),
            (
                swap(
                    "kind = \"efi-bootnext\"",
                    "kind = \"efi-bootnext\"\nefivars = \"efivars\"",
                ),
                "bootloader.efivars: must be an absolute path",
            ),
            (
                swap(
                    "kind = \"efi-bootnext\"",
                    "kind = \"efi-bootnext\"\nesp_device = \"/dev/sda1\"",
                ),
                "unknown field `esp_device`",
            ),
            (
                with_bootloader("trial_reboot_command = []", EFI),
                "trial_reboot_command: must name a program",
            ),
        ] {
            let e = err(&text);
            assert!(e.contains(want), "wanted {want:?} in {e}");
        }
        // A custom trial reboot is allowed for EFI (no tryboot word required).
        let c = DeviceConfig::parse(&with_bootloader(
            "trial_reboot_command = [\"kexec-reboot\"]",
            EFI,
        ))
        .unwrap();
        assert_eq!(c.trial_reboot_command, vec!["kexec-reboot"]);
    }

    /// The list of board names compiled into the agent is the catalogue's (`boards/*.toml`).
    #[test]
    fn known_boards_are_the_catalogue() {
        let catalogue: Vec<String> = tugboot_boards::Catalog::builtin()
            .iter()
            .map(|b| b.name.clone())
            .collect();
        let mut known: Vec<String> = KNOWN_BOARDS.iter().map(|s| (*s).to_owned()).collect();
        known.sort();
        let mut catalogue_sorted = catalogue.clone();
        catalogue_sorted.sort();
        assert_eq!(known, catalogue_sorted, "update config::KNOWN_BOARDS");
    }

    #[test]
    fn board_suggestions() {
        assert_eq!(suggest_board("rpi4"), Some("raspberrypi-4"));
        assert_eq!(suggest_board("rpi5"), Some("raspberrypi-5"));
        assert_eq!(suggest_board("x86"), None, "two x86_64 boards");
        assert_eq!(suggest_board("zzz"), None);
        assert_eq!(
            parse_fingerprint("sha256:00:11").map(|f| f[0]),
            None,
            "too short"
        );
        let full = "ab".repeat(32);
        assert_eq!(parse_fingerprint(&full), Some([0xab; 32]));
        assert_eq!(parse_fingerprint(&full.replacen('a', "g", 1)), None);
    }

    #[test]
    fn parse_bytes_caps_and_checks_utf8_first() {
        assert!(matches!(
            DeviceConfig::parse_bytes(&[0xff, 0xfe]),
            Err(ConfigError::Syntax(m)) if m.contains("UTF-8")
        ));
        assert!(matches!(
            DeviceConfig::parse_bytes(&vec![b'#'; MAX_CONFIG_BYTES + 1]),
            Err(ConfigError::TooLarge { .. })
        ));
        assert_eq!(
            DeviceConfig::parse_bytes(EXAMPLE.as_bytes()).unwrap(),
            DeviceConfig::parse(EXAMPLE).unwrap()
        );
    }
}
