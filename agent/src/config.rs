//! The agent's configuration file (`/etc/tugboot/agent.toml`).
//!
//! Two layers, as in firecracker and dora: [`RawConfig`] is exactly the TOML (serde,
//! `deny_unknown_fields`, named defaults), and [`DeviceConfig`] is the validated form the agent
//! runs on, made by `TryFrom`. Parsing takes a `&str` so tests need no files; the file is read
//! with a size cap first ([`load`]). Every error names the key it is about.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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
    /// The command that reboots the device (argv).
    #[serde(default = "default_reboot")]
    pub reboot_command: Vec<String>,
    /// mutual TLS.
    pub tls: RawTls,
    /// The two slots.
    pub slots: RawSlots,
    /// The bootloader backend.
    pub bootloader: RawBootloader,
    /// Post-reboot health checks.
    #[serde(default)]
    pub health: RawHealth,
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
    /// argv of the reboot command.
    pub reboot_command: Vec<String>,
    /// TLS files.
    pub tls: TlsFiles,
    /// Slots.
    pub slots: SlotPaths,
    /// Bootloader backend.
    pub bootloader: BootloaderConfig,
    /// Health checks, commands first.
    pub health: Vec<HealthCheck>,
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
}

impl HealthCheck {
    /// The check's name.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            HealthCheck::Command { name, .. } | HealthCheck::Http { name, .. } => name,
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
        let board = name("board", &raw.board)?;
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
            } => {
                if !(1..=crate::bootloader::uboot::ab::MAX_BOOTLIMIT).contains(&bootlimit) {
                    return Err(invalid("bootloader.bootlimit", "must be 1..=16"));
                }
                BootloaderConfig::Uboot {
                    fw_env_config: absolute("bootloader.fw_env_config", &fw_env_config)?,
                    bootlimit,
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
        };
        let checks = raw.health.command.len() + raw.health.http.len();
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
            health.push(HealthCheck::Http {
                name: name(&format!("{key}.name"), &c.name)?,
                url: url(&format!("{key}.url"), &c.url, &["http", "https"])?,
                timeout: secs(&format!("{key}.timeout_secs"), c.timeout_secs)?,
            });
        }
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
            tls: TlsFiles {
                ca: absolute("tls.ca", &raw.tls.ca)?,
                cert: absolute("tls.cert", &raw.tls.cert)?,
                key: absolute("tls.key", &raw.tls.key)?,
            },
            slots,
            bootloader,
            health,
        })
    }
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
        let _ = writeln!(s, "tls.ca = {}", self.tls.ca.display());
        let _ = writeln!(s, "tls.cert = {}", self.tls.cert.display());
        let _ = writeln!(s, "tls.key = {}", self.tls.key.display());
        let _ = writeln!(s, "slots.a = {}", self.slots.a.display());
        let _ = writeln!(s, "slots.b = {}", self.slots.b.display());
        let _ = match &self.bootloader {
            BootloaderConfig::Uboot {
                fw_env_config,
                bootlimit,
            } => writeln!(
                s,
                "bootloader = uboot (fw_env.config {}, bootlimit {bootlimit})",
                fw_env_config.display()
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
        };
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
board = "rpi4"
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
                bootlimit: 3
            }
        );
        assert_eq!(c.health.len(), 2);
        assert_eq!(c.health[1].name(), "api");
        assert!(
            matches!(&c.health[1], HealthCheck::Http { timeout, .. } if timeout.as_secs() == 30)
        );
        assert!(c.describe().contains("bootlimit 3"));
    }
}
