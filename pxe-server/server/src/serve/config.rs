//! The `tugboot serve` configuration: one TOML file for DHCP, TFTP and HTTP.
//!
//! Two layers, as everywhere in tugboot: [`RawServeConfig`] is what serde reads (unknown keys
//! refused, defaults named), [`ServeConfig`] is the validated form the server runs on. Parsing
//! takes a `&str` plus the directory relative paths are resolved against, so tests need no files.
//! The DHCP section reuses `tugboot_dhcp`'s own schema for boot files, subnets, reservations
//! and limits; the addresses it shares with the rest of the server (server identifier, TFTP
//! server, HTTP base URL) are filled in from `[network]` and `[http]`, so they are written once.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tugboot_dhcp::config::{RawBoot, RawConfig, RawLimits, RawReservation, RawSubnet};
use tugboot_dhcp::{Mode, UnknownPolicy};
use tugboot_http::{BaseUrl, ErrorAction};
use tugboot_tftp::Limits;

/// Largest configuration file accepted (checked before parsing).
pub const MAX_SERVE_CONFIG_LEN: usize = 1 << 20;

/// iPXE script path handed out by DHCP unless the file says otherwise: the HTTP server's
/// bootstrap, which chains to `/ipxe` with the facts iPXE knows itself.
pub const DEFAULT_IPXE_SCRIPT: &str = "/boot.ipxe";
/// UEFI HTTP boot path unless the file says otherwise: a file of the boot-files directory.
pub const DEFAULT_HTTP_BOOT: &str = "/boot/ipxe-{arch}.efi";
/// arm64 UEFI PXE boot file unless the file says otherwise: Debian has no arm64 iPXE, so GRUB's
/// network image, whose configuration `serve` generates per machine (docs/netboot.md).
pub const DEFAULT_UEFI_ARM64: &str = "grubnetaa64.efi";

/// Why a configuration was rejected. Messages name the key (`http.public_url: ...`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeConfigError {
    /// Larger than [`MAX_SERVE_CONFIG_LEN`].
    #[error("config is {len} bytes, more than the {MAX_SERVE_CONFIG_LEN}-byte cap")]
    TooLarge {
        /// Length of the text.
        len: usize,
    },
    /// Not TOML, or not this schema (unknown key, wrong type); the message has line and column.
    #[error("config syntax: {0}")]
    Syntax(String),
    /// A value breaks a rule; `key` is its dotted path.
    #[error("{key}: {reason}")]
    Invalid {
        /// Dotted key path.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(key: &str, reason: impl Into<String>) -> ServeConfigError {
    ServeConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// Serde layer: the file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServeConfig {
    /// State directory: SQLite store, blobs, manifests, DHCP lease log.
    pub data_dir: PathBuf,
    /// Store location (`postgres://...`, `sqlite:PATH`); default `<data_dir>/tugboot.sqlite`.
    #[serde(default)]
    pub store: Option<String>,
    /// Trust root file manifests are verified against.
    pub trust_root: PathBuf,
    /// Profiles and machines (`tugboot_http::profiles`); absent = no machine has a profile.
    #[serde(default)]
    pub profiles: Option<PathBuf>,
    /// Board catalog directory; absent = the built-in catalog.
    #[serde(default)]
    pub boards_dir: Option<PathBuf>,
    /// The link the server sits on.
    pub network: RawNetwork,
    /// DHCP; absent = no DHCP server (another server hands out the boot parameters).
    #[serde(default)]
    pub dhcp: Option<RawDhcp>,
    /// TFTP; absent = no TFTP server.
    #[serde(default)]
    pub tftp: Option<RawTftp>,
    /// HTTP(S).
    #[serde(default)]
    pub http: RawHttp,
    /// Device API; absent = no device API.
    #[serde(default)]
    pub api: Option<RawApi>,
}

/// `[network]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    /// Interface DHCP binds to (`SO_BINDTODEVICE`).
    #[serde(default)]
    pub interface: Option<String>,
    /// Address of that interface: DHCP server identifier, TFTP server, default listen address.
    pub address: Ipv4Addr,
    /// Link MTU: caps the TFTP block size so no datagram is fragmented.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
}

fn default_mtu() -> u16 {
    1500
}

/// `[dhcp]`: `tugboot_dhcp`'s schema minus the addresses `[network]`/`[http]` provide.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDhcp {
    /// `authoritative`, `proxy` or `reservation-only`.
    pub mode: Mode,
    /// UDP port (67; tests use others).
    #[serde(default = "default_dhcp_port")]
    pub port: u16,
    /// Also answer PXE boot-server requests on port 4011.
    #[serde(default = "default_true")]
    pub pxe_port: bool,
    /// siaddr / option 66 when TFTP runs elsewhere; default `network.address`.
    #[serde(default)]
    pub tftp_server: Option<Ipv4Addr>,
    /// `boot-default` or `ignore`.
    #[serde(default)]
    pub unknown_machines: Option<UnknownPolicy>,
    /// Boot file names (see `docs/dhcp.md`); `ipxe_script`, `http_boot` and `uefi_arm64`
    /// default to [`DEFAULT_IPXE_SCRIPT`], [`DEFAULT_HTTP_BOOT`] and [`DEFAULT_UEFI_ARM64`] here.
    /// Kept as a table so the serve defaults apply to the keys it leaves out.
    #[serde(default)]
    pub boot: toml::Table,
    /// Subnets.
    #[serde(default)]
    pub subnets: Vec<RawSubnet>,
    /// Reservations.
    #[serde(default)]
    pub reservations: Vec<RawReservation>,
    /// Relay agents (addresses or CIDR networks they send from) whose relay options —
    /// link selection, subnet selection, server identifier override — are honoured; when
    /// not empty, relayed datagrams from elsewhere are dropped (docs/dhcp.md, "Relays").
    #[serde(default)]
    pub trusted_relays: Vec<String>,
    /// Rate limits and table sizes.
    #[serde(default)]
    pub limits: RawLimits,
}

fn default_dhcp_port() -> u16 {
    tugboot_dhcp::core::DHCP_SERVER_PORT
}

fn default_true() -> bool {
    true
}

/// `[tftp]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTftp {
    /// Directory served read-only (iPXE binaries).
    pub root: PathBuf,
    /// Listen address; default `<network.address>:69`.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Serve every transfer from port 69 (firewalls that pass only 69).
    #[serde(default)]
    pub single_port: bool,
    /// Concurrent transfers.
    #[serde(default = "default_max_transfers")]
    pub max_transfers: u64,
    /// Concurrent transfers from one client address (IPv4, or IPv6 /64); default 8.
    #[serde(default = "default_max_transfers_per_peer")]
    pub max_transfers_per_peer: u64,
    /// Buffer memory of all transfers together, MiB (docs/tftp.md: the memory bound); default 16.
    #[serde(default = "default_buffer_budget_mib")]
    pub buffer_budget_mib: u64,
    /// Block size cap; default derived from `network.mtu`, never above it.
    #[serde(default)]
    pub max_blksize: Option<u16>,
    /// The Raspberry Pi boot firmware (`start4.elf`, `fixup4.dat`, `overlays/`, ...) served in
    /// every Pi's tree; absent: Pis get no firmware from this server.
    #[serde(default)]
    pub rpi_firmware: Option<PathBuf>,
}

fn default_max_transfers() -> u64 {
    tugboot_tftp::DEFAULT_MAX_TRANSFERS
}

fn default_max_transfers_per_peer() -> u64 {
    8
}

fn default_buffer_budget_mib() -> u64 {
    16
}

/// `[http]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Listen address; default `<network.address>:8080`.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// URL prefix written into DHCP answers and iPXE scripts; default from `listen`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Directory served under `/boot/` (iPXE binaries for UEFI HTTP boot).
    #[serde(default)]
    pub boot_dir: Option<PathBuf>,
    /// Seconds a failed machine waits before asking again.
    #[serde(default)]
    pub retry_secs: Option<u32>,
    /// Machines no profile covers: `retry` (every 60 s) or `exit` (back to the firmware).
    #[serde(default)]
    pub unknown_machine: Option<UnknownMachineAction>,
    /// HTTPS instead of HTTP.
    #[serde(default)]
    pub tls: Option<RawTls>,
    /// Most connections open at once from one client address (default 32; docs/security.md).
    #[serde(default)]
    pub max_connections_per_peer: Option<usize>,
    /// How plain HTTP sends artifact bodies (default `auto`; docs/http.md).
    #[serde(default)]
    pub file_send: Option<tugboot_http::FileSend>,
}

/// What the iPXE script of an unknown machine does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownMachineAction {
    /// Wait 60 s and ask again.
    Retry,
    /// Return to the firmware.
    Exit,
}

/// `[http.tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// State directory.
    pub data_dir: PathBuf,
    /// Store location for `AnyStore::open`.
    pub store: String,
    /// `<data_dir>/blobs`.
    pub blob_dir: PathBuf,
    /// `<data_dir>/manifests`: every `*.json` is verified and published at start and on SIGHUP.
    pub manifest_dir: PathBuf,
    /// `<data_dir>/dhcp-leases.jsonl`.
    pub lease_file: PathBuf,
    /// Trust root file.
    pub trust_root: PathBuf,
    /// Profiles file.
    pub profiles: Option<PathBuf>,
    /// Board catalog directory.
    pub boards_dir: Option<PathBuf>,
    /// `[network]`.
    pub network: Network,
    /// DHCP, if enabled.
    pub dhcp: Option<DhcpSettings>,
    /// TFTP, if enabled.
    pub tftp: Option<TftpSettings>,
    /// HTTP.
    pub http: HttpSettings,
    /// Device API, if enabled.
    pub api: Option<ApiSettings>,
}

/// Validated `[network]`.
#[derive(Debug, Clone)]
pub struct Network {
    /// Interface name for `SO_BINDTODEVICE`.
    pub interface: Option<String>,
    /// Interface address.
    pub address: Ipv4Addr,
    /// MTU.
    pub mtu: u16,
}

/// Validated `[dhcp]`.
#[derive(Debug, Clone)]
pub struct DhcpSettings {
    /// The core's configuration (addresses filled in).
    pub config: tugboot_dhcp::Config,
    /// DHCP port.
    pub port: u16,
    /// Port 4011 too.
    pub pxe_port: bool,
}

/// Validated `[tftp]`.
#[derive(Debug, Clone)]
pub struct TftpSettings {
    /// Root directory.
    pub root: PathBuf,
    /// Listen address.
    pub listen: SocketAddr,
    /// Single-port mode.
    pub single_port: bool,
    /// Concurrent transfers.
    pub max_transfers: u64,
    /// Concurrent transfers per client address.
    pub max_transfers_per_peer: u64,
    /// Buffer budget, bytes.
    pub buffer_budget: usize,
    /// Option caps.
    pub limits: Limits,
    /// Raspberry Pi boot firmware directory.
    pub rpi_firmware: Option<PathBuf>,
}

/// Validated `[http]`.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Public base URL.
    pub public_url: BaseUrl,
    /// `/boot/` directory.
    pub boot_dir: Option<PathBuf>,
    /// Retry delay of failed machines.
    pub retry_secs: u32,
    /// Unknown machines.
    pub unknown_machine: ErrorAction,
    /// `(cert, key)` for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Connection cap per client address.
    pub max_connections_per_peer: usize,
    /// How plain HTTP sends artifact bodies.
    pub file_send: tugboot_http::FileSend,
}

impl ServeConfig {
    /// Parses and validates `text`; relative paths are taken relative to `base` (the config
    /// file's directory).
    pub fn from_toml(text: &str, base: &Path) -> Result<Self, ServeConfigError> {
        if text.len() > MAX_SERVE_CONFIG_LEN {
            return Err(ServeConfigError::TooLarge { len: text.len() });
        }
        let raw: RawServeConfig =
            toml::from_str(text).map_err(|e| ServeConfigError::Syntax(e.to_string()))?;
        Self::try_from((raw, base))
    }
}

fn resolve(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() { p } else { base.join(p) }
}

fn nonempty_path(key: &str, p: &Path) -> Result<(), ServeConfigError> {
    if p.as_os_str().is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    Ok(())
}

impl TryFrom<(RawServeConfig, &Path)> for ServeConfig {
    type Error = ServeConfigError;

    fn try_from((raw, base): (RawServeConfig, &Path)) -> Result<Self, ServeConfigError> {
        nonempty_path("data_dir", &raw.data_dir)?;
        nonempty_path("trust_root", &raw.trust_root)?;
        let data_dir = resolve(base, raw.data_dir);
        let network = Network {
            interface: raw.network.interface,
            address: raw.network.address,
            mtu: raw.network.mtu,
        };
        if let Some(dev) = &network.interface {
            // IFNAMSIZ is 16 including the NUL.
            if dev.is_empty() || dev.len() > 15 || dev.contains(['/', ' ', '\0']) {
                return Err(invalid(
                    "network.interface",
                    "must be a Linux interface name (1..=15 bytes, no '/', space or NUL)",
                ));
            }
        }
        let a = network.address;
        if a.is_unspecified() || a.is_broadcast() || a.is_multicast() {
            return Err(invalid(
                "network.address",
                "must be the unicast address of the interface",
            ));
        }
        if network.mtu < 576 {
            return Err(invalid(
                "network.mtu",
                "must be at least 576 (IPv4 minimum)",
            ));
        }

        let http = http_settings(raw.http, &network, base)?;
        let tftp = match raw.tftp {
            None => None,
            Some(t) => Some(tftp_settings(t, &network, base)?),
        };
        let dhcp = match raw.dhcp {
            None => None,
            Some(d) => Some(dhcp_settings(d, &network, &http)?),
        };
        let api = match raw.api {
            None => None,
            Some(a) => Some(api_settings(a, &network, &data_dir, base)?),
        };
        if let Some(store) = &raw.store
            && store.trim().is_empty()
        {
            return Err(invalid("store", "must not be empty"));
        }
        let store = raw
            .store
            .unwrap_or_else(|| data_dir.join("tugboot.sqlite").display().to_string());
        Ok(ServeConfig {
            blob_dir: data_dir.join("blobs"),
            manifest_dir: data_dir.join("manifests"),
            lease_file: data_dir.join("dhcp-leases.jsonl"),
            data_dir,
            store,
            trust_root: resolve(base, raw.trust_root),
            profiles: raw.profiles.map(|p| resolve(base, p)),
            boards_dir: raw.boards_dir.map(|p| resolve(base, p)),
            network,
            dhcp,
            tftp,
            http,
            api,
        })
    }
}

fn http_settings(
    raw: RawHttp,
    network: &Network,
    base: &Path,
) -> Result<HttpSettings, ServeConfigError> {
    let listen = raw
        .listen
        .unwrap_or_else(|| SocketAddr::new(IpAddr::V4(network.address), 8080));
    let tls = raw
        .tls
        .map(|t| (resolve(base, t.cert), resolve(base, t.key)));
    let scheme = if tls.is_some() { "https" } else { "http" };
    let text = match raw.public_url {
        Some(u) => u,
        None => {
            // A wildcard listen address is not reachable: clients get the interface address.
            let host = match listen.ip() {
                IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(network.address),
                ip => ip,
            };
            format!("{scheme}://{}", SocketAddr::new(host, listen.port()))
        }
    };
    let public_url =
        BaseUrl::parse(&text).map_err(|e| invalid("http.public_url", e.to_string()))?;
    if !public_url.as_str().starts_with(&format!("{scheme}://")) {
        return Err(invalid(
            "http.public_url",
            format!(
                "must start with {scheme}:// (TLS is {})",
                if tls.is_some() { "on" } else { "off" }
            ),
        ));
    }
    let retry_secs = raw.retry_secs.unwrap_or(10);
    if !(1..=3600).contains(&retry_secs) {
        return Err(invalid("http.retry_secs", "must be 1..=3600"));
    }
    let unknown_machine = match raw.unknown_machine.unwrap_or(UnknownMachineAction::Retry) {
        UnknownMachineAction::Retry => ErrorAction::Retry { after_secs: 60 },
        UnknownMachineAction::Exit => ErrorAction::Exit,
    };
    let max_connections_per_peer = raw
        .max_connections_per_peer
        .unwrap_or(tugboot_http::DEFAULT_MAX_CONNECTIONS_PER_PEER);
    if !(1..=4096).contains(&max_connections_per_peer) {
        return Err(invalid("http.max_connections_per_peer", "must be 1..=4096"));
    }
    Ok(HttpSettings {
        listen,
        public_url,
        boot_dir: raw.boot_dir.map(|p| resolve(base, p)),
        retry_secs,
        unknown_machine,
        tls,
        max_connections_per_peer,
        file_send: raw.file_send.unwrap_or_default(),
    })
}

fn tftp_settings(
    raw: RawTftp,
    network: &Network,
    base: &Path,
) -> Result<TftpSettings, ServeConfigError> {
    nonempty_path("tftp.root", &raw.root)?;
    let mut limits = Limits::for_mtu(network.mtu, false);
    if let Some(b) = raw.max_blksize {
        if !(512..=limits.max_blksize).contains(&b) {
            return Err(invalid(
                "tftp.max_blksize",
                format!(
                    "must be 512..={} (network.mtu {} minus IPv4, UDP and TFTP headers)",
                    limits.max_blksize, network.mtu
                ),
            ));
        }
        limits.max_blksize = b;
    }
    if raw.max_transfers == 0 {
        return Err(invalid("tftp.max_transfers", "must be at least 1"));
    }
    if raw.max_transfers_per_peer == 0 {
        return Err(invalid("tftp.max_transfers_per_peer", "must be at least 1"));
    }
    let buffer_budget = usize::try_from(raw.buffer_budget_mib)
        .ok()
        .filter(|&m| m <= 4096)
        .map(|m| m << 20)
        .ok_or_else(|| invalid("tftp.buffer_budget_mib", "must be 0..=4096"))?;
    Ok(TftpSettings {
        root: resolve(base, raw.root),
        listen: raw
            .listen
            .unwrap_or_else(|| SocketAddr::new(IpAddr::V4(network.address), 69)),
        single_port: raw.single_port,
        max_transfers: raw.max_transfers,
        max_transfers_per_peer: raw.max_transfers_per_peer,
        buffer_budget,
        limits,
        rpi_firmware: raw.rpi_firmware.map(|p| resolve(base, p)),
    })
}

fn dhcp_settings(
    raw: RawDhcp,
    network: &Network,
    http: &HttpSettings,
) -> Result<DhcpSettings, ServeConfigError> {
    let mut table = raw.boot;
    for (key, default) in [
        ("ipxe_script", DEFAULT_IPXE_SCRIPT),
        ("http_boot", DEFAULT_HTTP_BOOT),
        ("uefi_arm64", DEFAULT_UEFI_ARM64),
    ] {
        table
            .entry(key)
            .or_insert_with(|| toml::Value::String(default.into()));
    }
    let boot = RawBoot::deserialize(toml::Value::Table(table))
        .map_err(|e| invalid("dhcp.boot", e.to_string().trim_end()))?;
    let core = RawConfig {
        mode: raw.mode,
        server_address: network.address,
        tftp_server: raw.tftp_server,
        http_base_url: http.public_url.as_str().to_owned(),
        unknown_machines: raw.unknown_machines.unwrap_or(UnknownPolicy::BootDefault),
        boot,
        subnets: raw.subnets,
        reservations: raw.reservations,
        trusted_relays: raw.trusted_relays,
        limits: raw.limits,
    };
    let config = tugboot_dhcp::Config::try_from(core).map_err(|e| match e {
        tugboot_dhcp::ConfigError::Invalid(m) => invalid("dhcp", m),
        other => invalid("dhcp", other.to_string()),
    })?;
    if raw.port == 0 {
        return Err(invalid("dhcp.port", "must not be 0"));
    }
    Ok(DhcpSettings {
        config,
        port: raw.port,
        pxe_port: raw.pxe_port,
    })
}

/// The resolved configuration as `check-config` prints it (paths absolute, defaults filled).
#[derive(Debug, Serialize)]
pub struct Resolved {
    data_dir: String,
    store: String,
    blob_dir: String,
    manifest_dir: String,
    lease_file: String,
    trust_root: String,
    profiles: Option<String>,
    boards_dir: Option<String>,
    network: ResolvedNetwork,
    dhcp: Option<ResolvedDhcp>,
    tftp: Option<ResolvedTftp>,
    http: ResolvedHttp,
    api: Option<ResolvedApi>,
}

#[derive(Debug, Serialize)]
struct ResolvedNetwork {
    interface: Option<String>,
    address: Ipv4Addr,
    mtu: u16,
}

#[derive(Debug, Serialize)]
struct ResolvedDhcp {
    mode: String,
    port: u16,
    pxe_port: bool,
    server_address: Ipv4Addr,
    tftp_server: Ipv4Addr,
    http_base_url: String,
    unknown_machines: String,
    boot_files: std::collections::BTreeMap<String, String>,
    ipxe_script: String,
    http_boot: String,
    subnets: Vec<ResolvedSubnet>,
    reservations: usize,
    trusted_relays: Vec<String>,
    offer_ttl_secs: u64,
}

#[derive(Debug, Serialize)]
struct ResolvedSubnet {
    network: String,
    pools: Vec<String>,
    router: Option<Ipv4Addr>,
    dns: Vec<Ipv4Addr>,
    lease_time_secs: u64,
}

#[derive(Debug, Serialize)]
struct ResolvedTftp {
    root: String,
    listen: SocketAddr,
    single_port: bool,
    max_transfers: u64,
    max_transfers_per_peer: u64,
    buffer_budget_mib: usize,
    max_blksize: u16,
    max_windowsize: u16,
    rpi_firmware: Option<String>,
}

#[derive(Debug, Serialize)]
struct ResolvedHttp {
    listen: SocketAddr,
    public_url: String,
    boot_dir: Option<String>,
    retry_secs: u32,
    unknown_machine: String,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    max_connections_per_peer: usize,
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

impl ServeConfig {
    /// The form `check-config` prints.
    pub fn resolved(&self) -> Resolved {
        Resolved {
            data_dir: show(&self.data_dir),
            store: self.store.clone(),
            blob_dir: show(&self.blob_dir),
            manifest_dir: show(&self.manifest_dir),
            lease_file: show(&self.lease_file),
            trust_root: show(&self.trust_root),
            profiles: self.profiles.as_deref().map(show),
            boards_dir: self.boards_dir.as_deref().map(show),
            network: ResolvedNetwork {
                interface: self.network.interface.clone(),
                address: self.network.address,
                mtu: self.network.mtu,
            },
            dhcp: self.dhcp.as_ref().map(|d| {
                let c = &d.config;
                ResolvedDhcp {
                    mode: match c.mode {
                        Mode::Authoritative => "authoritative",
                        Mode::Proxy => "proxy",
                        Mode::ReservationOnly => "reservation-only",
                    }
                    .into(),
                    port: d.port,
                    pxe_port: d.pxe_port,
                    server_address: c.server_address,
                    tftp_server: c.tftp_server,
                    http_base_url: c.http_base_url.clone(),
                    unknown_machines: match c.unknown_machines {
                        UnknownPolicy::BootDefault => "boot-default",
                        UnknownPolicy::Ignore => "ignore",
                    }
                    .into(),
                    boot_files: c
                        .boot
                        .tftp
                        .iter()
                        .map(|(p, f)| (p.as_str().to_owned(), f.clone()))
                        .collect(),
                    ipxe_script: c.boot.ipxe_script.clone(),
                    http_boot: c.boot.http_boot.clone(),
                    subnets: c
                        .subnets
                        .iter()
                        .map(|s| ResolvedSubnet {
                            network: format!("{}/{}", s.network.addr, s.network.prefix),
                            pools: s.pools.iter().map(|(a, b)| format!("{a}-{b}")).collect(),
                            router: s.router,
                            dns: s.dns.clone(),
                            lease_time_secs: s.lease_time.as_secs(),
                        })
                        .collect(),
                    reservations: c.reservations.len(),
                    trusted_relays: c
                        .trusted_relays
                        .iter()
                        .map(|r| format!("{}/{}", r.addr, r.prefix))
                        .collect(),
                    offer_ttl_secs: c.limits.offer_ttl.as_secs(),
                }
            }),
            tftp: self.tftp.as_ref().map(|t| ResolvedTftp {
                root: show(&t.root),
                listen: t.listen,
                single_port: t.single_port,
                max_transfers: t.max_transfers,
                max_transfers_per_peer: t.max_transfers_per_peer,
                buffer_budget_mib: t.buffer_budget >> 20,
                max_blksize: t.limits.max_blksize,
                max_windowsize: t.limits.max_windowsize,
                rpi_firmware: t.rpi_firmware.as_deref().map(show),
            }),
            http: ResolvedHttp {
                listen: self.http.listen,
                public_url: self.http.public_url.as_str().to_owned(),
                boot_dir: self.http.boot_dir.as_deref().map(show),
                retry_secs: self.http.retry_secs,
                unknown_machine: match self.http.unknown_machine {
                    ErrorAction::Exit => "exit".into(),
                    ErrorAction::Retry { after_secs } => format!("retry after {after_secs}s"),
                },
                tls_cert: self.http.tls.as_ref().map(|(c, _)| show(c)),
                tls_key: self.http.tls.as_ref().map(|(_, k)| show(k)),
                max_connections_per_peer: self.http.max_connections_per_peer,
            },
            api: self.api.as_ref().map(ApiSettings::resolved),
        }
    }
}

/// `[api]`: the device API (mutual TLS for agents, bearer token for operators;
/// docs/device-api.md), served beside HTTP on the same runtime, store and blob store.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    /// Listen address; default `<network.address>:8443`.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Enrollment tokens, the server certificate and (by default) the operator token;
    /// default `<data_dir>/api`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// The CA made by `tugboot ca init --dir`; default `<data_dir>/ca`.
    #[serde(default)]
    pub ca_dir: Option<PathBuf>,
    /// DNS names and IP addresses of the server certificate; default `network.address` (and
    /// the listen address when it is a specific one).
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Operator bearer token file; default `<state_dir>/operator-token`, created (random,
    /// mode 0600) when absent.
    #[serde(default)]
    pub operator_token_file: Option<PathBuf>,
    /// If set, assignments send devices to `{artifact_base_url}/{sha256}` for artifacts (e.g.
    /// `http://10.77.0.1:8080/artifacts/sha256`, the HTTP server, which serves the artifacts
    /// of images in the manifest directory); default: this API serves them over mTLS.
    #[serde(default)]
    pub artifact_base_url: Option<String>,
    /// Seconds an admitted device may stay silent before it counts as failed (default 7200).
    #[serde(default)]
    pub report_timeout_secs: Option<u64>,
    /// Seconds without a report after which an enrolled machine is shown as silent (default
    /// 3600).
    #[serde(default)]
    pub silent_after_secs: Option<u64>,
    /// Most connections open at once from one client address (default 64).
    #[serde(default)]
    pub max_connections_per_peer: Option<usize>,
    /// Seconds a client has to send a request body (default 20).
    #[serde(default)]
    pub body_timeout_secs: Option<u64>,
    /// Most machines that may wait for approval after a token-less enrollment request
    /// (default 1024).
    #[serde(default)]
    pub max_pending_enrollments: Option<u64>,
    /// Lifetime of an enrollment token when `enroll token create` gives none (default 86400).
    #[serde(default)]
    pub token_ttl_secs: Option<u64>,
    /// The web console under `/console/` on this listener (docs/console.md); default true.
    #[serde(default)]
    pub console: Option<bool>,
}

/// Validated `[api]`.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// State directory.
    pub state_dir: PathBuf,
    /// CA directory.
    pub ca_dir: PathBuf,
    /// Server certificate names.
    pub server_names: Vec<String>,
    /// Operator token file.
    pub operator_token_file: PathBuf,
    /// Artifact URL prefix, without a trailing slash.
    pub artifact_base_url: Option<String>,
    /// Report timeout.
    pub report_timeout_secs: u64,
    /// Silence deadline.
    pub silent_after_secs: u64,
    /// Connection cap per client address.
    pub max_connections_per_peer: usize,
    /// Body deadline, seconds.
    pub body_timeout_secs: u64,
    /// Cap on machines waiting for approval.
    pub max_pending_enrollments: u64,
    /// Default token lifetime.
    pub token_ttl_secs: u64,
    /// The web console is served.
    pub console: bool,
}

/// Default `[api]` report timeout (docs/rollouts.md).
pub const DEFAULT_API_REPORT_TIMEOUT_SECS: u64 = 7200;

fn api_settings(
    raw: RawApi,
    network: &Network,
    data_dir: &Path,
    base: &Path,
) -> Result<ApiSettings, ServeConfigError> {
    let listen = raw
        .listen
        .unwrap_or_else(|| SocketAddr::new(IpAddr::V4(network.address), 8443));
    let state_dir = raw
        .state_dir
        .map_or_else(|| data_dir.join("api"), |p| resolve(base, p));
    let ca_dir = raw
        .ca_dir
        .map_or_else(|| data_dir.join("ca"), |p| resolve(base, p));
    let server_names = if raw.server_names.is_empty() {
        let mut names = vec![network.address.to_string()];
        let ip = listen.ip();
        if !ip.is_unspecified() && ip != IpAddr::V4(network.address) {
            names.push(ip.to_string());
        }
        names
    } else {
        raw.server_names
    };
    for name in &server_names {
        let ok = name.parse::<IpAddr>().is_ok()
            || (!name.is_empty()
                && name.len() <= 253
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'));
        if !ok {
            return Err(invalid(
                "api.server_names",
                format!("{name:?} is neither an IP address nor a DNS name"),
            ));
        }
    }
    let operator_token_file = raw
        .operator_token_file
        .map_or_else(|| state_dir.join("operator-token"), |p| resolve(base, p));
    let artifact_base_url = match raw.artifact_base_url {
        None => None,
        Some(u) => {
            let u = u.trim_end_matches('/').to_owned();
            let rest = u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(['?', '#', ' '])) {
                return Err(invalid(
                    "api.artifact_base_url",
                    "must be an http:// or https:// URL without query or fragment",
                ));
            }
            Some(u)
        }
    };
    let report_timeout_secs = raw
        .report_timeout_secs
        .unwrap_or(DEFAULT_API_REPORT_TIMEOUT_SECS);
    if !(60..=30 * 86_400).contains(&report_timeout_secs) {
        return Err(invalid(
            "api.report_timeout_secs",
            "must be 60..=2592000 (one minute to 30 days)",
        ));
    }
    let silent_after_secs = raw
        .silent_after_secs
        .unwrap_or(tugboot_api::server::DEFAULT_SILENT_AFTER_SECS);
    if !(60..=30 * 86_400).contains(&silent_after_secs) {
        return Err(invalid(
            "api.silent_after_secs",
            "must be 60..=2592000 (one minute to 30 days)",
        ));
    }
    let max_connections_per_peer = raw
        .max_connections_per_peer
        .unwrap_or(tugboot_api::server::DEFAULT_MAX_CONNECTIONS_PER_PEER);
    if !(1..=4096).contains(&max_connections_per_peer) {
        return Err(invalid("api.max_connections_per_peer", "must be 1..=4096"));
    }
    let body_timeout_secs = raw
        .body_timeout_secs
        .unwrap_or(tugboot_api::server::DEFAULT_BODY_TIMEOUT.as_secs());
    if !(1..=3600).contains(&body_timeout_secs) {
        return Err(invalid("api.body_timeout_secs", "must be 1..=3600"));
    }
    let max_pending_enrollments = raw
        .max_pending_enrollments
        .unwrap_or(tugboot_api::server::DEFAULT_MAX_PENDING_ENROLLMENTS);
    if !(1..=1_000_000).contains(&max_pending_enrollments) {
        return Err(invalid(
            "api.max_pending_enrollments",
            "must be 1..=1000000",
        ));
    }
    let token_ttl_secs = raw
        .token_ttl_secs
        .unwrap_or(tugboot_api::tokens::DEFAULT_TOKEN_TTL_SECS);
    if !(60..=tugboot_api::tokens::MAX_TOKEN_TTL_SECS).contains(&token_ttl_secs) {
        return Err(invalid(
            "api.token_ttl_secs",
            "must be 60..=31536000 (one minute to one year)",
        ));
    }
    Ok(ApiSettings {
        listen,
        state_dir,
        ca_dir,
        server_names,
        operator_token_file,
        artifact_base_url,
        report_timeout_secs,
        silent_after_secs,
        max_connections_per_peer,
        body_timeout_secs,
        max_pending_enrollments,
        token_ttl_secs,
        console: raw.console.unwrap_or(true),
    })
}

/// `[api]` as `check-config` prints it.
#[derive(Debug, Serialize)]
pub struct ResolvedApi {
    listen: SocketAddr,
    state_dir: String,
    ca_dir: String,
    server_names: Vec<String>,
    operator_token_file: String,
    artifact_base_url: Option<String>,
    report_timeout_secs: u64,
    silent_after_secs: u64,
    max_connections_per_peer: usize,
    body_timeout_secs: u64,
    max_pending_enrollments: u64,
    token_ttl_secs: u64,
    console: bool,
}

impl ApiSettings {
    fn resolved(&self) -> ResolvedApi {
        ResolvedApi {
            listen: self.listen,
            state_dir: show(&self.state_dir),
            ca_dir: show(&self.ca_dir),
            server_names: self.server_names.clone(),
            operator_token_file: show(&self.operator_token_file),
            artifact_base_url: self.artifact_base_url.clone(),
            report_timeout_secs: self.report_timeout_secs,
            silent_after_secs: self.silent_after_secs,
            max_connections_per_peer: self.max_connections_per_peer,
            body_timeout_secs: self.body_timeout_secs,
            max_pending_enrollments: self.max_pending_enrollments,
            token_ttl_secs: self.token_ttl_secs,
            console: self.console,
        }
    }
}

#[cfg(test)]
mod api_tests {
    use super::*;

    const HEAD: &str = "data_dir = \"/var/lib/tugboot\"\ntrust_root = \"r.json\"\n\
                        [network]\naddress = \"10.77.0.1\"\n";

    fn parse(text: &str) -> Result<ServeConfig, ServeConfigError> {
        ServeConfig::from_toml(text, Path::new("/etc/tugboot"))
    }

    #[test]
    fn api_is_off_unless_configured_and_defaults_follow_the_data_dir() {
        assert!(parse(HEAD).expect("valid").api.is_none());
        let c = parse(&format!("{HEAD}[api]\n")).expect("valid");
        let a = c.api.expect("api on");
        assert_eq!(a.listen, "10.77.0.1:8443".parse().expect("addr"));
        assert_eq!(a.state_dir, Path::new("/var/lib/tugboot/api"));
        assert_eq!(a.ca_dir, Path::new("/var/lib/tugboot/ca"));
        assert_eq!(a.server_names, ["10.77.0.1"]);
        assert_eq!(
            a.operator_token_file,
            Path::new("/var/lib/tugboot/api/operator-token")
        );
        assert_eq!(a.artifact_base_url, None);
        assert_eq!(a.report_timeout_secs, DEFAULT_API_REPORT_TIMEOUT_SECS);
    }

    #[test]
    fn api_values_resolve_relative_paths_and_show_in_check_config() {
        let c = parse(&format!(
            "{HEAD}[api]\nlisten = \"127.0.0.1:9443\"\nca_dir = \"ca\"\n\
             operator_token_file = \"op.token\"\nserver_names = [\"boot.example\", \"10.77.0.1\"]\n\
             artifact_base_url = \"http://10.77.0.1:8080/artifacts/sha256/\"\nreport_timeout_secs = 600\n"
        ))
        .expect("valid");
        let a = c.api.as_ref().expect("api on");
        assert_eq!(a.ca_dir, Path::new("/etc/tugboot/ca"));
        assert_eq!(a.operator_token_file, Path::new("/etc/tugboot/op.token"));
        assert_eq!(
            a.artifact_base_url.as_deref(),
            Some("http://10.77.0.1:8080/artifacts/sha256")
        );
        let v = serde_json::to_value(c.resolved()).expect("json");
        assert_eq!(v["api"]["listen"], "127.0.0.1:9443");
        assert_eq!(v["api"]["server_names"][0], "boot.example");
        assert_eq!(v["api"]["report_timeout_secs"], 600);
        // A specific listen address joins the default names.
        let c = parse(&format!("{HEAD}[api]\nlisten = \"127.0.0.1:0\"\n")).expect("valid");
        assert_eq!(c.api.expect("api").server_names, ["10.77.0.1", "127.0.0.1"]);
    }

    #[test]
    fn bad_api_values_name_their_key() {
        for (extra, want) in [
            ("server_names = [\"a b\"]", "api.server_names:"),
            ("server_names = [\"\"]", "api.server_names:"),
            ("artifact_base_url = \"ftp://x\"", "api.artifact_base_url:"),
            ("artifact_base_url = \"http://\"", "api.artifact_base_url:"),
            ("report_timeout_secs = 5", "api.report_timeout_secs:"),
        ] {
            let e = parse(&format!("{HEAD}[api]\n{extra}\n"))
                .expect_err("must be refused")
                .to_string();
            assert!(e.starts_with(want), "want {want:?}, got {e:?}");
        }
        let e = parse(&format!("{HEAD}[api]\nlisen = \"1.2.3.4:1\"\n"))
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("unknown field `lisen`"), "{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "/etc/tugboot";

    const FULL: &str = r#"
data_dir = "/var/lib/tugboot"
trust_root = "root.json"
profiles = "profiles.toml"

[network]
interface = "br0"
address = "10.77.0.1"
mtu = 1400

[dhcp]
mode = "authoritative"
[[dhcp.subnets]]
network = "10.77.0.0/24"
pools = [{ start = "10.77.0.100", end = "10.77.0.200" }]
router = "10.77.0.1"

[tftp]
root = "/srv/tftp"

[http]
listen = "0.0.0.0:8080"
boot_dir = "/srv/tftp"
"#;

    fn parse(text: &str) -> Result<ServeConfig, ServeConfigError> {
        ServeConfig::from_toml(text, Path::new(BASE))
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("must be refused").to_string()
    }

    #[test]
    fn full_config_resolves_defaults_and_shared_addresses() {
        let c = parse(FULL).expect("valid");
        assert_eq!(c.store, "/var/lib/tugboot/tugboot.sqlite");
        assert_eq!(c.blob_dir, Path::new("/var/lib/tugboot/blobs"));
        assert_eq!(c.manifest_dir, Path::new("/var/lib/tugboot/manifests"));
        assert_eq!(
            c.lease_file,
            Path::new("/var/lib/tugboot/dhcp-leases.jsonl")
        );
        assert_eq!(c.trust_root, Path::new("/etc/tugboot/root.json"));
        assert_eq!(
            c.profiles.as_deref(),
            Some(Path::new("/etc/tugboot/profiles.toml"))
        );
        // A wildcard listen address is replaced by the interface address in the public URL.
        assert_eq!(c.http.public_url.as_str(), "http://10.77.0.1:8080");
        let d = c.dhcp.expect("dhcp on");
        assert_eq!(d.port, 67);
        assert!(d.pxe_port);
        assert_eq!(d.config.server_address, Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(d.config.tftp_server, Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(d.config.http_base_url, "http://10.77.0.1:8080");
        assert_eq!(d.config.boot.ipxe_script, DEFAULT_IPXE_SCRIPT);
        assert_eq!(d.config.boot.http_boot, DEFAULT_HTTP_BOOT);
        let tftp_file = |p| d.config.boot.tftp.get(&p).map(String::as_str);
        assert_eq!(
            tftp_file(tugboot_dhcp::Platform::UefiArm64),
            Some(DEFAULT_UEFI_ARM64)
        );
        assert_eq!(
            tftp_file(tugboot_dhcp::Platform::UBootArm64),
            Some("boot.scr.uimg")
        );
        let t = c.tftp.expect("tftp on");
        assert_eq!(t.listen, "10.77.0.1:69".parse().expect("addr"));
        // 1400 - 20 (IPv4) - 8 (UDP) - 4 (TFTP)
        assert_eq!(t.limits.max_blksize, 1368);
    }

    #[test]
    fn minimal_config_runs_http_only() {
        let c = parse(
            "data_dir = \"d\"\ntrust_root = \"r.json\"\n[network]\naddress = \"192.0.2.1\"\n",
        )
        .expect("valid");
        assert!(c.dhcp.is_none() && c.tftp.is_none());
        assert_eq!(c.data_dir, Path::new("/etc/tugboot/d"));
        assert_eq!(c.http.listen, "192.0.2.1:8080".parse().expect("addr"));
        assert_eq!(c.http.public_url.as_str(), "http://192.0.2.1:8080");
        assert_eq!(c.http.retry_secs, 10);
        assert_eq!(c.http.file_send, tugboot_http::FileSend::Auto);
    }

    #[test]
    fn file_send_takes_its_three_modes_and_nothing_else() {
        let base =
            "data_dir = \"d\"\ntrust_root = \"r\"\n[network]\naddress = \"192.0.2.1\"\n[http]\n";
        for (value, want) in [
            ("auto", tugboot_http::FileSend::Auto),
            ("sendfile", tugboot_http::FileSend::Sendfile),
            ("copy", tugboot_http::FileSend::Copy),
        ] {
            let c = parse(&format!("{base}file_send = \"{value}\"\n")).expect("valid");
            assert_eq!(c.http.file_send, want, "{value}");
        }
        let e = err(&format!("{base}file_send = \"mmap\"\n"));
        assert!(
            e.contains("file_send") && e.contains("unknown variant"),
            "{e}"
        );
    }

    #[test]
    fn tls_makes_the_default_url_https_and_refuses_http_urls() {
        let base = "data_dir = \"d\"\ntrust_root = \"r\"\n[network]\naddress = \"192.0.2.1\"\n\
                    [http]\nlisten = \"192.0.2.1:8443\"\n";
        let tls = "[http.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
        let c = parse(&format!("{base}{tls}")).expect("valid");
        assert_eq!(c.http.public_url.as_str(), "https://192.0.2.1:8443");
        assert_eq!(
            c.http.tls,
            Some((
                PathBuf::from("/etc/tugboot/c.pem"),
                "/etc/tugboot/k.pem".into()
            ))
        );
        let e = err(&format!(
            "{base}public_url = \"http://192.0.2.1:8443\"\n{tls}"
        ));
        assert!(
            e.starts_with("http.public_url: must start with https://"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_place() {
        let e = err(&FULL.replace("mtu = 1400", "mtu = 1400\nmtuu = 1"));
        assert!(e.contains("unknown field `mtuu`"), "{e}");
        assert!(e.contains("line"), "{e}");
        let e = err(&FULL.replace("[tftp]", "[tftp]\nwindow = 4"));
        assert!(e.contains("unknown field `window`"), "{e}");
        let e = err(&FULL.replace(
            "[[dhcp.subnets]]",
            "[dhcp.boot]\nbioss = \"x\"\n[[dhcp.subnets]]",
        ));
        assert!(e.starts_with("dhcp.boot: unknown field `bioss`"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                FULL.replace("10.77.0.1\"\nmtu", "0.0.0.0\"\nmtu"),
                "network.address:",
            ),
            (FULL.replace("mtu = 1400", "mtu = 500"), "network.mtu:"),
            (
                FULL.replace("\"br0\"", "\"a-very-long-interface-name\""),
                "network.interface:",
            ),
            (
                FULL.replace("[tftp]", "[tftp]\nmax_blksize = 1400"),
                "tftp.max_blksize: must be 512..=1368",
            ),
            (
                FULL.replace("boot_dir", "public_url = \"ftp://x\"\nboot_dir"),
                "http.public_url:",
            ),
            (FULL.replace("10.77.0.200", "10.78.0.200"), "dhcp: "),
            (
                FULL.replace("boot_dir", "retry_secs = 0\nboot_dir"),
                "http.retry_secs:",
            ),
            (format!("store = \" \"\n{FULL}"), "store:"),
        ];
        for (text, want) in cases {
            let e = err(&text);
            assert!(e.starts_with(want), "want {want:?}, got {e:?}");
        }
    }

    #[test]
    fn oversized_and_non_toml_input_is_refused_before_use() {
        let big = "#".repeat(MAX_SERVE_CONFIG_LEN + 1);
        assert!(matches!(
            parse(&big),
            Err(ServeConfigError::TooLarge { .. })
        ));
        assert!(matches!(
            parse("data_dir = "),
            Err(ServeConfigError::Syntax(_))
        ));
        assert!(matches!(parse("\u{0}"), Err(ServeConfigError::Syntax(_))));
    }

    #[test]
    fn dhcp_trusted_relays_reach_the_core() {
        let c = parse(&FULL.replace(
            "[[dhcp.subnets]]",
            "trusted_relays = [\"10.77.0.2\", \"10.80.0.0/16\"]\n[[dhcp.subnets]]",
        ))
        .expect("valid");
        let d = c.dhcp.as_ref().expect("dhcp");
        assert!(d.config.is_trusted_relay(Ipv4Addr::new(10, 77, 0, 2)));
        assert!(d.config.is_trusted_relay(Ipv4Addr::new(10, 80, 3, 4)));
        assert!(!d.config.is_trusted_relay(Ipv4Addr::new(10, 77, 0, 3)));
        let v = serde_json::to_value(c.resolved()).expect("json");
        assert_eq!(v["dhcp"]["trusted_relays"][1], "10.80.0.0/16");
        assert_eq!(v["dhcp"]["offer_ttl_secs"], 10);
        let e = err(&FULL.replace(
            "[[dhcp.subnets]]",
            "trusted_relays = [\"0.0.0.0/0\"]\n[[dhcp.subnets]]",
        ));
        assert!(e.starts_with("dhcp: trusted_relays[0]"), "{e}");
    }

    #[test]
    fn explicit_dhcp_boot_table_is_used_as_written() {
        let text = FULL.replace(
            "[[dhcp.subnets]]",
            "[dhcp.boot]\nbios = \"ipxe.pxe\"\nipxe_script = \"/ipxe?mac={mac}\"\n[[dhcp.subnets]]",
        );
        let c = parse(&text).expect("valid");
        let boot = c.dhcp.expect("dhcp").config.boot;
        assert_eq!(boot.ipxe_script, "/ipxe?mac={mac}");
        assert_eq!(boot.http_boot, DEFAULT_HTTP_BOOT);
        assert_eq!(
            boot.tftp
                .get(&tugboot_dhcp::Platform::Bios)
                .map(String::as_str),
            Some("ipxe.pxe")
        );
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../../../examples/serve.toml");
        let c =
            ServeConfig::from_toml(text, Path::new("/work/pxe-server/examples")).expect("valid");
        assert_eq!(
            c.profiles.as_deref(),
            Some(Path::new("/work/pxe-server/examples/profiles.toml"))
        );
        assert_eq!(c.network.interface.as_deref(), Some("eth1"));
        let d = c.dhcp.expect("dhcp");
        assert_eq!(d.config.reservations.len(), 1);
        assert_eq!(d.config.http_base_url, "http://10.77.0.1:8080");
        let profiles = include_str!("../../../examples/profiles.toml");
        tugboot_fleet::ProfileSet::from_toml(profiles).expect("example profiles are valid");
    }

    #[test]
    fn resolved_form_serialises_every_section() {
        let c = parse(FULL).expect("valid");
        let v = serde_json::to_value(c.resolved()).expect("json");
        assert_eq!(v["dhcp"]["mode"], "authoritative");
        assert_eq!(v["dhcp"]["boot_files"]["bios"], "undionly.kpxe");
        assert_eq!(
            v["dhcp"]["subnets"][0]["pools"][0],
            "10.77.0.100-10.77.0.200"
        );
        assert_eq!(v["tftp"]["max_blksize"], 1368);
        assert_eq!(v["http"]["public_url"], "http://10.77.0.1:8080");
        assert_eq!(v["http"]["unknown_machine"], "retry after 60s");
    }
}
