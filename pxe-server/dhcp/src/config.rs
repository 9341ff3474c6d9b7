//! DHCP server configuration: a serde layer ([`RawConfig`], `deny_unknown_fields`)
//! parsed from TOML and converted by `TryFrom` into the validated [`Config`] the core
//! runs on. Everything the core later relies on (pools inside their subnet, boot file
//! names that fit the 128-byte `file` field with a NUL, reservations inside a subnet)
//! is checked here once, so the core has no failure paths for configuration.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Deserialize;

use crate::classify::{Mac, Platform};

/// Largest configuration text accepted.
pub const MAX_CONFIG_LEN: usize = 1 << 20;

/// Why a configuration was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The text is not valid TOML for this schema.
    #[error("DHCP config is not valid: {0}")]
    Syntax(String),
    /// Larger than [`MAX_CONFIG_LEN`].
    #[error("DHCP config is {len} bytes, more than the {MAX_CONFIG_LEN}-byte cap")]
    TooLarge {
        /// Length of the text.
        len: usize,
    },
    /// A semantic rule is broken; the message names the field.
    #[error("DHCP config: {0}")]
    Invalid(String),
}

/// How the server participates in DHCP on its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Owns the address pools: leases, renewals, NAKs.
    Authoritative,
    /// Beside another DHCP server: answers only netboot clients, never offers addresses.
    Proxy,
    /// Like authoritative, but answers only machines with a reservation.
    ReservationOnly,
}

/// What to do with netboot clients that have no reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnknownPolicy {
    /// Answer them with the default boot files (and report them).
    BootDefault,
    /// Report them but send no boot parameters (authoritative mode still leases an
    /// address; proxy and reservation-only modes stay silent).
    Ignore,
}

/// Serde layer of the configuration. See `docs/dhcp.md` for an example.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Server mode.
    pub mode: Mode,
    /// Address of the interface the server answers on (server identifier).
    pub server_address: Ipv4Addr,
    /// TFTP server (siaddr, option 66); defaults to `server_address`.
    #[serde(default)]
    pub tftp_server: Option<Ipv4Addr>,
    /// Base URL for HTTP (iPXE scripts, UEFI HTTP boot), e.g. `http://10.0.0.1:8080`.
    pub http_base_url: String,
    /// Unknown-machine policy.
    #[serde(default = "default_unknown")]
    pub unknown_machines: UnknownPolicy,
    /// Boot files.
    #[serde(default)]
    pub boot: RawBoot,
    /// Subnets (required in authoritative and reservation-only modes).
    #[serde(default)]
    pub subnets: Vec<RawSubnet>,
    /// Known machines.
    #[serde(default)]
    pub reservations: Vec<RawReservation>,
    /// Relay agents whose relay options are honoured: addresses or CIDR networks they
    /// send from (the UDP source of relayed datagrams). See [`Config::trusted_relays`].
    #[serde(default)]
    pub trusted_relays: Vec<String>,
    /// Limits.
    #[serde(default)]
    pub limits: RawLimits,
}

fn default_unknown() -> UnknownPolicy {
    UnknownPolicy::BootDefault
}

/// Boot file names per firmware kind (TFTP paths) and HTTP paths.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBoot {
    /// iPXE for BIOS PXE ROMs.
    pub bios: String,
    /// iPXE for 32-bit x86 UEFI.
    pub uefi_ia32: String,
    /// iPXE for x86-64 UEFI.
    pub uefi_x64: String,
    /// iPXE for 32-bit ARM UEFI.
    pub uefi_arm32: String,
    /// iPXE for 64-bit ARM UEFI.
    pub uefi_arm64: String,
    /// iPXE for 64-bit RISC-V UEFI.
    pub uefi_riscv64: String,
    /// File U-Boot loads after `dhcp` (its PXELINUX-style config is fetched by `pxe get`).
    pub uboot_arm32: String,
    /// As `uboot_arm32`, for 64-bit ARM.
    pub uboot_arm64: String,
    /// File named to a Raspberry Pi (Pi 3 ROM loads it; Pi 4/5 ignore it).
    pub rpi: String,
    /// Path (under `http_base_url`) of the per-machine iPXE script; `{mac}` (hyphenated),
    /// `{uuid}` and `{arch}` are substituted.
    pub ipxe_script: String,
    /// Path (under `http_base_url`) of the EFI binary for UEFI HTTP boot; `{arch}` is substituted.
    pub http_boot: String,
}

impl Default for RawBoot {
    fn default() -> Self {
        Self {
            bios: "undionly.kpxe".into(),
            uefi_ia32: "ipxe-i386.efi".into(),
            uefi_x64: "ipxe.efi".into(),
            uefi_arm32: "ipxe-arm32.efi".into(),
            uefi_arm64: "ipxe-arm64.efi".into(),
            uefi_riscv64: "ipxe-riscv64.efi".into(),
            uboot_arm32: "boot.scr.uimg".into(),
            uboot_arm64: "boot.scr.uimg".into(),
            rpi: "bootcode.bin".into(),
            ipxe_script: "/boot/{mac}.ipxe".into(),
            http_boot: "/efi/{arch}/ipxe.efi".into(),
        }
    }
}

/// One subnet.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubnet {
    /// CIDR, e.g. `10.0.0.0/24`.
    pub network: String,
    /// Dynamic ranges (inclusive).
    #[serde(default)]
    pub pools: Vec<RawPool>,
    /// Default gateway (option 3).
    #[serde(default)]
    pub router: Option<Ipv4Addr>,
    /// DNS servers (option 6).
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// Domain name (option 15).
    #[serde(default)]
    pub domain: Option<String>,
    /// Lease time in seconds.
    #[serde(default = "default_lease_secs")]
    pub lease_time_secs: u32,
}

fn default_lease_secs() -> u32 {
    3600
}

/// An inclusive address range.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// First address.
    pub start: Ipv4Addr,
    /// Last address.
    pub end: Ipv4Addr,
}

/// A known machine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReservation {
    /// MAC address.
    #[serde(default)]
    pub mac: Option<String>,
    /// Client identifier (option 61) as hex.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Fixed address (optional: a reservation without one marks a known machine).
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// Host name (option 12).
    #[serde(default)]
    pub hostname: Option<String>,
}

/// Abuse limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Token bucket size per MAC.
    pub per_mac_burst: u32,
    /// Tokens refilled per second per MAC.
    pub per_mac_per_second: u32,
    /// Most clients tracked by the rate limiter (oldest forgotten beyond).
    pub max_tracked_clients: usize,
    /// Most offers remembered at once (offered, not yet requested); beyond it offers are
    /// still sent but reserve nothing.
    pub max_pending_offers: usize,
    /// Seconds an offer keeps its address from being offered to someone else (while other
    /// addresses are free; a REQUEST for it is honoured after that too, if it is still free).
    pub offer_ttl_secs: u32,
    /// Seconds a declined address stays out of the pool.
    pub decline_hold_secs: u32,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            per_mac_burst: 10,
            per_mac_per_second: 2,
            max_tracked_clients: 4096,
            max_pending_offers: 1024,
            offer_ttl_secs: 10,
            decline_hold_secs: 600,
        }
    }
}

/// An IPv4 network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address (host bits zero).
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Cidr {
    /// The netmask.
    pub fn mask(self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask_u32())
    }

    fn mask_u32(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// Whether `ip` is inside.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask_u32() == u32::from(self.addr)
    }

    /// The directed broadcast address.
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask_u32())
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not CIDR"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| format!("{s:?}: bad address"))?;
        let prefix: u8 = p.parse().map_err(|_| format!("{s:?}: bad prefix"))?;
        if prefix > 32 {
            return Err(format!("{s:?}: prefix above 32"));
        }
        let c = Cidr { addr, prefix };
        if u32::from(addr) & !c.mask_u32() != 0 {
            return Err(format!("{s:?}: host bits set"));
        }
        Ok(c)
    }
}

/// A validated subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    /// The network.
    pub network: Cidr,
    /// Inclusive ranges, inside `network`, excluding network/broadcast addresses.
    pub pools: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// Option 3.
    pub router: Option<Ipv4Addr>,
    /// Option 6.
    pub dns: Vec<Ipv4Addr>,
    /// Option 15.
    pub domain: Option<String>,
    /// Lease duration.
    pub lease_time: Duration,
}

/// A validated reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// MAC, if matched by MAC.
    pub mac: Option<Mac>,
    /// Client identifier, if matched by option 61.
    pub client_id: Option<Vec<u8>>,
    /// Fixed address.
    pub address: Option<Ipv4Addr>,
    /// Host name.
    pub hostname: Option<String>,
}

/// Validated boot file table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boot {
    /// TFTP file per platform (each fits the `file` field with its NUL).
    pub tftp: BTreeMap<Platform, String>,
    /// iPXE script path template.
    pub ipxe_script: String,
    /// HTTP boot path template.
    pub http_boot: String,
}

/// Validated limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bucket size.
    pub per_mac_burst: u32,
    /// Refill per second.
    pub per_mac_per_second: u32,
    /// Rate limiter capacity.
    pub max_tracked_clients: usize,
    /// Most offers remembered (beyond: offers reserve nothing).
    pub max_pending_offers: usize,
    /// How long an offer keeps its address from other DISCOVERs.
    pub offer_ttl: Duration,
    /// Declined address hold time.
    pub decline_hold: Duration,
}

/// The validated configuration the core runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Mode.
    pub mode: Mode,
    /// Server identifier.
    pub server_address: Ipv4Addr,
    /// TFTP server.
    pub tftp_server: Ipv4Addr,
    /// HTTP base URL without trailing slash.
    pub http_base_url: String,
    /// Unknown-machine policy.
    pub unknown_machines: UnknownPolicy,
    /// Boot files.
    pub boot: Boot,
    /// Subnets.
    pub subnets: Vec<Subnet>,
    /// Reservations.
    pub reservations: Vec<Reservation>,
    /// Relay agents trusted with relay options (by the source address of their datagrams).
    ///
    /// Only a datagram with giaddr set that comes from one of these may select a subnet
    /// by RFC 3527 link selection (option 82.5) or RFC 3011 subnet selection (option
    /// 118), or override the server identifier (RFC 5107, option 82.11); from anyone
    /// else — above all a client on the local link — those options are ignored, or a
    /// single host could drain every subnet's pool. When the list is not empty, relayed
    /// datagrams (giaddr set) from other sources are dropped as well. Empty (the default):
    /// giaddr still selects the subnet (RFC 2131), relay options are never honoured.
    pub trusted_relays: Vec<Cidr>,
    /// Limits.
    pub limits: Limits,
}

impl Config {
    /// Whether `source` is a configured relay agent.
    pub fn is_trusted_relay(&self, source: Ipv4Addr) -> bool {
        self.trusted_relays.iter().any(|c| c.contains(source))
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        if text.len() > MAX_CONFIG_LEN {
            return Err(ConfigError::TooLarge { len: text.len() });
        }
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        Self::try_from(raw)
    }

    /// The subnet containing `ip`.
    pub fn subnet_for(&self, ip: Ipv4Addr) -> Option<&Subnet> {
        self.subnets.iter().find(|s| s.network.contains(ip))
    }
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

fn check_file(field: &str, name: &str) -> Result<(), ConfigError> {
    // 127 bytes + NUL fill the 128-byte BOOTP `file` field; option 67 repeats it.
    if name.is_empty() || name.len() > 127 || name.bytes().any(|b| b == 0) {
        return Err(invalid(format!(
            "boot.{field}: must be 1..=127 bytes without NUL (BOOTP file field)"
        )));
    }
    Ok(())
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let http_base_url = raw.http_base_url.trim_end_matches('/').to_string();
        if !(http_base_url.starts_with("http://") || http_base_url.starts_with("https://")) {
            return Err(invalid(
                "http_base_url: must start with http:// or https://",
            ));
        }
        if raw.server_address.is_unspecified() || raw.server_address.is_broadcast() {
            return Err(invalid(
                "server_address: must be a unicast interface address",
            ));
        }

        let b = raw.boot;
        let mut tftp = BTreeMap::new();
        for (field, platform, name) in [
            ("bios", Platform::Bios, b.bios),
            ("uefi_ia32", Platform::UefiIa32, b.uefi_ia32),
            ("uefi_x64", Platform::UefiX64, b.uefi_x64),
            ("uefi_arm32", Platform::UefiArm32, b.uefi_arm32),
            ("uefi_arm64", Platform::UefiArm64, b.uefi_arm64),
            ("uefi_riscv64", Platform::UefiRiscV64, b.uefi_riscv64),
            ("uboot_arm32", Platform::UBootArm32, b.uboot_arm32),
            ("uboot_arm64", Platform::UBootArm64, b.uboot_arm64),
            ("rpi", Platform::RaspberryPi, b.rpi),
        ] {
            check_file(field, &name)?;
            tftp.insert(platform, name);
        }
        for (field, path) in [("ipxe_script", &b.ipxe_script), ("http_boot", &b.http_boot)] {
            if !path.starts_with('/') {
                return Err(invalid(format!("boot.{field}: must start with '/'")));
            }
            // Longest substitution: {uuid} (36) / {mac} (17) / {arch} (12).
            if http_base_url.len() + path.len() + 36 > 127 {
                return Err(invalid(format!(
                    "boot.{field}: URL may exceed the 127 bytes of the BOOTP file field"
                )));
            }
        }

        let mut subnets = Vec::new();
        for (i, s) in raw.subnets.into_iter().enumerate() {
            let network: Cidr = s
                .network
                .parse()
                .map_err(|e| invalid(format!("subnets[{i}].network: {e}")))?;
            if s.lease_time_secs < 60 {
                return Err(invalid(format!(
                    "subnets[{i}].lease_time_secs: at least 60"
                )));
            }
            let mut pools = Vec::new();
            for (j, p) in s.pools.iter().enumerate() {
                let ok = network.contains(p.start)
                    && network.contains(p.end)
                    && u32::from(p.start) <= u32::from(p.end)
                    && p.start != network.addr
                    && p.end != network.broadcast();
                if !ok {
                    return Err(invalid(format!(
                        "subnets[{i}].pools[{j}]: {}..{} must be an ordered range of host addresses in {}",
                        p.start, p.end, s.network
                    )));
                }
                pools.push((p.start, p.end));
            }
            if subnets.iter().any(|o: &Subnet| {
                o.network.contains(network.addr) || network.contains(o.network.addr)
            }) {
                return Err(invalid(format!(
                    "subnets[{i}].network: overlaps another subnet"
                )));
            }
            subnets.push(Subnet {
                network,
                pools,
                router: s.router,
                dns: s.dns,
                domain: s.domain,
                lease_time: Duration::from_secs(u64::from(s.lease_time_secs)),
            });
        }
        if raw.mode != Mode::Proxy && subnets.is_empty() {
            return Err(invalid(
                "subnets: at least one is required unless mode = \"proxy\"",
            ));
        }

        let mut reservations: Vec<Reservation> = Vec::new();
        for (i, r) in raw.reservations.into_iter().enumerate() {
            let mac = r
                .mac
                .as_deref()
                .map(str::parse::<Mac>)
                .transpose()
                .map_err(|e| invalid(format!("reservations[{i}].mac: {e}")))?;
            let client_id = r
                .client_id
                .as_deref()
                .map(parse_hex)
                .transpose()
                .map_err(|e| invalid(format!("reservations[{i}].client_id: {e}")))?;
            if mac.is_none() && client_id.is_none() {
                return Err(invalid(format!(
                    "reservations[{i}]: needs mac or client_id"
                )));
            }
            if let Some(a) = r.address {
                if raw.mode != Mode::Proxy && !subnets.iter().any(|s| s.network.contains(a)) {
                    return Err(invalid(format!(
                        "reservations[{i}].address: {a} is in no subnet"
                    )));
                }
                if reservations.iter().any(|o| o.address == Some(a)) {
                    return Err(invalid(format!(
                        "reservations[{i}].address: {a} reserved twice"
                    )));
                }
            }
            if mac.is_some() && reservations.iter().any(|o| o.mac == mac) {
                return Err(invalid(format!("reservations[{i}].mac: duplicate")));
            }
            reservations.push(Reservation {
                mac,
                client_id,
                address: r.address,
                hostname: r.hostname,
            });
        }

        let mut trusted_relays = Vec::new();
        for (i, text) in raw.trusted_relays.iter().enumerate() {
            let cidr = match text.parse::<Ipv4Addr>() {
                Ok(addr) => Cidr { addr, prefix: 32 },
                Err(_) => text
                    .parse::<Cidr>()
                    .map_err(|e| invalid(format!("trusted_relays[{i}]: {e}")))?,
            };
            if cidr.prefix == 0 || cidr.addr.is_unspecified() {
                return Err(invalid(format!(
                    "trusted_relays[{i}]: {text:?} would trust every host"
                )));
            }
            trusted_relays.push(cidr);
        }

        let l = raw.limits;
        if l.per_mac_burst == 0 || l.per_mac_per_second == 0 {
            return Err(invalid(
                "limits: per_mac_burst and per_mac_per_second must be positive",
            ));
        }
        if l.max_tracked_clients == 0 || l.max_pending_offers == 0 {
            return Err(invalid(
                "limits: max_tracked_clients and max_pending_offers must be positive",
            ));
        }
        if l.offer_ttl_secs == 0 {
            return Err(invalid("limits: offer_ttl_secs must be positive"));
        }

        Ok(Self {
            mode: raw.mode,
            server_address: raw.server_address,
            tftp_server: raw.tftp_server.unwrap_or(raw.server_address),
            http_base_url,
            unknown_machines: raw.unknown_machines,
            boot: Boot {
                tftp,
                ipxe_script: b.ipxe_script,
                http_boot: b.http_boot,
            },
            subnets,
            reservations,
            trusted_relays,
            limits: Limits {
                per_mac_burst: l.per_mac_burst,
                per_mac_per_second: l.per_mac_per_second,
                max_tracked_clients: l.max_tracked_clients,
                max_pending_offers: l.max_pending_offers,
                offer_ttl: Duration::from_secs(u64::from(l.offer_ttl_secs)),
                decline_hold: Duration::from_secs(u64::from(l.decline_hold_secs)),
            },
        })
    }
}

fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let s: String = s.chars().filter(|c| *c != ':' && *c != '-').collect();
    if s.is_empty() || !s.len().is_multiple_of(2) || s.len() > 510 {
        return Err("expected an even number of hex digits (at most 255 bytes)".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| format!("bad hex at {i}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        mode = "authoritative"
        server_address = "10.0.0.1"
        http_base_url = "http://10.0.0.1:8080/"
        [[subnets]]
        network = "10.0.0.0/24"
        pools = [{ start = "10.0.0.100", end = "10.0.0.200" }]
        router = "10.0.0.1"
        dns = ["10.0.0.1"]
        [[reservations]]
        mac = "52:54:00:12:34:56"
        address = "10.0.0.50"
        hostname = "node1"
    "#;

    #[test]
    fn parses_and_defaults() {
        let c = Config::from_toml(GOOD).expect("valid");
        assert_eq!(c.mode, Mode::Authoritative);
        assert_eq!(c.tftp_server, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(c.http_base_url, "http://10.0.0.1:8080");
        assert_eq!(c.boot.tftp[&Platform::UefiX64], "ipxe.efi");
        assert_eq!(c.subnets[0].lease_time, Duration::from_secs(3600));
        assert_eq!(c.subnets[0].network.mask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.reservations[0].address, Some(Ipv4Addr::new(10, 0, 0, 50)));
        assert_eq!(c.unknown_machines, UnknownPolicy::BootDefault);
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values() {
        let bad = GOOD.replace("router =", "routr =");
        assert!(matches!(
            Config::from_toml(&bad),
            Err(ConfigError::Syntax(_))
        ));
        let bad = GOOD.replace("10.0.0.200", "10.0.1.200");
        assert!(
            matches!(Config::from_toml(&bad), Err(ConfigError::Invalid(m)) if m.contains("pools[0]"))
        );
        let bad = GOOD.replace("10.0.0.0/24", "10.0.0.1/24");
        assert!(
            matches!(Config::from_toml(&bad), Err(ConfigError::Invalid(m)) if m.contains("host bits"))
        );
        let bad = GOOD.replace("10.0.0.50", "10.9.0.50");
        assert!(
            matches!(Config::from_toml(&bad), Err(ConfigError::Invalid(m)) if m.contains("in no subnet"))
        );
        let long = format!("{GOOD}\n[boot]\nbios = \"{}\"\n", "a".repeat(128));
        assert!(
            matches!(Config::from_toml(&long), Err(ConfigError::Invalid(m)) if m.contains("boot.bios"))
        );
        let no_subnet = "mode = \"authoritative\"\nserver_address = \"10.0.0.1\"\nhttp_base_url = \"http://x\"\n";
        assert!(
            matches!(Config::from_toml(no_subnet), Err(ConfigError::Invalid(m)) if m.contains("subnets"))
        );
    }

    #[test]
    fn proxy_needs_no_subnets() {
        let c = Config::from_toml(
            "mode = \"proxy\"\nserver_address = \"10.0.0.1\"\nhttp_base_url = \"http://10.0.0.1\"\nunknown_machines = \"ignore\"\n",
        )
        .expect("valid");
        assert_eq!(c.mode, Mode::Proxy);
        assert_eq!(c.unknown_machines, UnknownPolicy::Ignore);
    }

    #[test]
    fn trusted_relays_take_addresses_and_networks() {
        let c = Config::from_toml(&format!(
            "trusted_relays = [\"10.0.9.2\", \"10.1.0.0/16\"]\n{GOOD}"
        ))
        .expect("valid");
        assert!(c.is_trusted_relay(Ipv4Addr::new(10, 0, 9, 2)));
        assert!(!c.is_trusted_relay(Ipv4Addr::new(10, 0, 9, 3)));
        assert!(c.is_trusted_relay(Ipv4Addr::new(10, 1, 200, 3)));
        assert!(
            !Config::from_toml(GOOD)
                .expect("valid")
                .is_trusted_relay(Ipv4Addr::new(10, 0, 9, 2))
        );
        for bad in ["0.0.0.0/0", "0.0.0.0", "10.0.0.1/33", "relay"] {
            let text = format!("trusted_relays = [\"{bad}\"]\n{GOOD}");
            assert!(
                matches!(Config::from_toml(&text), Err(ConfigError::Invalid(m)) if m.contains("trusted_relays[0]")),
                "{bad}"
            );
        }
    }

    #[test]
    fn cidr_math() {
        let c: Cidr = "192.168.4.0/22".parse().expect("cidr");
        assert!(c.contains(Ipv4Addr::new(192, 168, 7, 255)));
        assert!(!c.contains(Ipv4Addr::new(192, 168, 8, 0)));
        assert_eq!(c.broadcast(), Ipv4Addr::new(192, 168, 7, 255));
        let all: Cidr = "0.0.0.0/0".parse().expect("cidr");
        assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)));
        assert!("1.2.3.0/33".parse::<Cidr>().is_err());
    }
}
