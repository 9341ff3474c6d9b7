//! `tugboot init --interface IF`: a first working configuration for one link.
//!
//! Reads the interface's address, subnet and MTU (`ip -j addr`), asks the link whether a DHCP
//! server already answers there (one DHCPDISCOVER from port 68 bound to the interface, offers
//! collected for a few seconds), then writes `serve.toml`, `profiles.toml`, a signing key and
//! the trust root it anchors, the device API's CA and the boot files Debian ships, and runs
//! `tugboot check-config` on the result. It never answers a DHCP request itself, and it never
//! proposes a second authoritative DHCP server: when another one offers addresses, the
//! configuration is proxyDHCP, and `--mode authoritative` is refused.
//!
//! The decisions (parsing `ip`'s JSON, the mode, the pool, the rendered files) are pure
//! functions below; the DISCOVER bytes and reading offers are `tugboot_dhcp::probe` (fuzzed);
//! both are tested with byte fixtures. `run` is the shell.
//! See docs/packages.md.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::Value;
use tugboot_api::CertAuthority;
use tugboot_api::ca::DEFAULT_CA_VALIDITY_SECS;
use tugboot_dhcp::probe::{Offer, OfferKind, discover, parse_offer};
use tugboot_firmware::{SecretKey, Signed, Timestamp, TrustRoot, TrustedRoot};

use super::Global;
use super::output::print_json;
use super::util::{parse_expiry, write_atomic};

/// What `init` writes into the data directory's boot-files directory, from Debian packages when
/// they are installed: `(source, name served)`. iPXE for BIOS and x86-64 UEFI (PXE and HTTP
/// boot), GRUB's network image for arm64 UEFI (docs/serve.md, "Boot files").
const BOOT_FILES: [(&str, &str); 5] = [
    ("/usr/lib/ipxe/undionly.kpxe", "undionly.kpxe"),
    ("/usr/lib/ipxe/ipxe.efi", "ipxe.efi"),
    ("/usr/lib/ipxe/snponly.efi", "snponly.efi"),
    ("/usr/lib/ipxe/snponly.efi", "ipxe-uefi-x64.efi"),
    (
        "/usr/lib/grub/arm64-efi/monolithic/grubnetaa64.efi",
        "grubnetaa64.efi",
    ),
];

/// `ip -j` output larger than this is not one interface.
const MAX_IP_JSON: usize = 1 << 20;

/// DHCP ports (RFC 2131).
const CLIENT_PORT: u16 = 68;
const SERVER_PORT: u16 = 67;

/// The DHCP mode `init` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitMode {
    /// This server leases addresses (a link with no other DHCP server).
    Authoritative,
    /// proxyDHCP beside the site's DHCP server: boot parameters only, never addresses.
    Proxy,
}

impl InitMode {
    fn as_str(self) -> &'static str {
        match self {
            InitMode::Authoritative => "authoritative",
            InitMode::Proxy => "proxy",
        }
    }
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The interface machines netboot on; its IPv4 address, subnet and MTU are read from it.
    #[arg(long)]
    interface: String,
    /// DHCP mode. Default: authoritative, or proxy when another DHCP server answers on the
    /// link (authoritative is then refused).
    #[arg(long, value_enum)]
    mode: Option<InitMode>,
    /// Shorthand for `--mode proxy`: boot parameters only, beside the site's DHCP server.
    #[arg(long, conflicts_with = "mode")]
    proxy: bool,
    /// Where serve.toml, profiles.toml, root.json and keys/ are written.
    #[arg(long, default_value = "/etc/tugboot")]
    dir: PathBuf,
    /// The server's state directory (`data_dir`): store, blobs, manifests, CA, boot files.
    #[arg(long, default_value = "/var/lib/tugboot")]
    data_dir: PathBuf,
    /// Seconds to listen for DHCP offers on the link; 0 skips the probe (then --mode is needed).
    /// dnsmasq pings an address for 3 s before offering it, so less can miss it.
    #[arg(long, default_value_t = 5)]
    probe_secs: u64,
    /// Rewrite serve.toml and profiles.toml if they exist (keys, trust root and CA are kept).
    #[arg(long)]
    force: bool,
}

/// Why `init` cannot propose a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// `ip -j addr` did not describe the interface.
    #[error("interface {interface}: {reason}")]
    Interface {
        /// Interface name.
        interface: String,
        /// What is missing or wrong.
        reason: String,
    },
    /// The subnet has no room for a pool.
    #[error(
        "{network}/{prefix} has no room for an address pool beside {address}: authoritative mode needs a subnet of /30 or larger"
    )]
    SubnetTooSmall {
        /// Network address.
        network: Ipv4Addr,
        /// Prefix length.
        prefix: u8,
        /// The server's own address.
        address: Ipv4Addr,
    },
    /// Authoritative asked for where another DHCP server offers addresses.
    #[error(
        "a DHCP server already offers addresses on {interface} ({servers}): a second authoritative server would hand out conflicting leases; use --mode proxy (the default here)"
    )]
    SecondAuthoritative {
        /// Interface name.
        interface: String,
        /// Who answered.
        servers: String,
    },
    /// No probe and no mode.
    #[error("--probe-secs 0 skips the DHCP probe: say which mode with --mode authoritative|proxy")]
    ModeNeeded,
}

/// The link as `ip -j addr show dev IF` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    /// Interface name.
    pub name: String,
    /// Hardware address (the DISCOVER's chaddr).
    #[serde(serialize_with = "ser_mac")]
    pub mac: [u8; 6],
    /// Its first global IPv4 address.
    pub address: Ipv4Addr,
    /// Prefix length of that address.
    pub prefix: u8,
    /// Link MTU (caps the TFTP block size).
    pub mtu: u16,
    /// `operstate` (`UP`, `DOWN`, `UNKNOWN`, ...).
    pub operstate: String,
    /// Further IPv4 addresses, `a.b.c.d/p`, not used.
    pub other_addresses: Vec<String>,
}

fn ser_mac<S: serde::Serializer>(mac: &[u8; 6], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&mac_text(mac))
}

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Link {
    /// The network address of the subnet.
    #[must_use]
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.address) & mask(self.prefix))
    }
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => u32::MAX << (32 - u32::from(p.min(32))),
    }
}

/// Reads `ip -j addr show dev IF`: one interface, an Ethernet MAC, a global IPv4 address.
///
/// # Errors
/// [`InitError::Interface`] naming what is missing.
pub fn parse_link(json: &str, interface: &str) -> Result<Link, InitError> {
    let err = |reason: String| InitError::Interface {
        interface: interface.to_owned(),
        reason,
    };
    let v: Value =
        serde_json::from_str(json).map_err(|e| err(format!("`ip -j addr` output: {e}")))?;
    let entry = v
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|e| e.get("ifname").and_then(Value::as_str) == Some(interface))
        })
        .ok_or_else(|| err("no such interface".into()))?;
    let flags: Vec<&str> = entry
        .get("flags")
        .and_then(Value::as_array)
        .map(|f| f.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !flags.contains(&"UP") {
        return Err(err(format!(
            "is down: bring it up first (ip link set {interface} up)"
        )));
    }
    let link_type = entry.get("link_type").and_then(Value::as_str).unwrap_or("");
    if link_type != "ether" {
        return Err(err(format!(
            "is not an Ethernet interface (link type {link_type:?}): machines cannot netboot on it"
        )));
    }
    let mac = entry
        .get("address")
        .and_then(Value::as_str)
        .and_then(parse_mac)
        .ok_or_else(|| err("has no Ethernet address".into()))?;
    let mtu = entry
        .get("mtu")
        .and_then(Value::as_u64)
        .and_then(|m| u16::try_from(m).ok())
        .ok_or_else(|| err("has no MTU".into()))?;
    let mut v4 = entry
        .get("addr_info")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|i| i.get("family").and_then(Value::as_str) == Some("inet"))
                .filter(|i| i.get("scope").and_then(Value::as_str) == Some("global"))
                .filter_map(|i| {
                    let addr = i.get("local")?.as_str()?.parse::<Ipv4Addr>().ok()?;
                    let prefix = u8::try_from(i.get("prefixlen")?.as_u64()?).ok()?;
                    (prefix <= 32).then_some((addr, prefix))
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter();
    let (address, prefix) = v4.next().ok_or_else(|| {
        err(format!(
            "has no global IPv4 address: give it the server's address first (ip addr add 10.0.0.1/24 dev {interface})"
        ))
    })?;
    Ok(Link {
        name: interface.to_owned(),
        mac,
        address,
        prefix,
        mtu,
        operstate: entry
            .get("operstate")
            .and_then(Value::as_str)
            .unwrap_or("UNKNOWN")
            .to_owned(),
        other_addresses: v4.map(|(a, p)| format!("{a}/{p}")).collect(),
    })
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The gateway of a default route through the interface (`ip -j route show default dev IF`),
/// handed to clients as their router in authoritative mode.
#[must_use]
pub fn parse_default_router(json: &str) -> Option<Ipv4Addr> {
    let v: Value = serde_json::from_str(json).ok()?;
    v.as_array()?
        .iter()
        .filter(|r| r.get("dst").and_then(Value::as_str) == Some("default"))
        .find_map(|r| r.get("gateway")?.as_str()?.parse().ok())
}

/// The mode to write: what was asked for, or what the link calls for. Never authoritative where
/// another server offers addresses.
///
/// # Errors
/// [`InitError::SecondAuthoritative`], [`InitError::ModeNeeded`].
pub fn choose_mode(
    requested: Option<InitMode>,
    offers: &[Offer],
    probed: bool,
    interface: &str,
) -> Result<InitMode, InitError> {
    let servers: Vec<String> = offers
        .iter()
        .filter(|o| o.kind == OfferKind::Address)
        .map(|o| format!("{} offered {}", o.server, o.yiaddr))
        .collect();
    match (requested, servers.is_empty()) {
        (Some(InitMode::Authoritative), false) => Err(InitError::SecondAuthoritative {
            interface: interface.to_owned(),
            servers: servers.join(", "),
        }),
        (Some(mode), _) => Ok(mode),
        (None, _) if !probed => Err(InitError::ModeNeeded),
        (None, true) => Ok(InitMode::Authoritative),
        (None, false) => Ok(InitMode::Proxy),
    }
}

/// The authoritative pool: the half of the subnet's host addresses that does not hold the
/// server's own address (the upper half when it can), so hosts configured by hand at the
/// bottom of the range, as the server usually is, keep theirs.
///
/// # Errors
/// [`InitError::SubnetTooSmall`] below /30.
pub fn pool(link: &Link) -> Result<(Ipv4Addr, Ipv4Addr), InitError> {
    let too_small = || InitError::SubnetTooSmall {
        network: link.network(),
        prefix: link.prefix,
        address: link.address,
    };
    if link.prefix > 30 {
        return Err(too_small());
    }
    let net = u32::from(link.network());
    let hosts = !mask(link.prefix) - 1; // without network and broadcast addresses
    let first = net + 1;
    let last = net + hosts;
    let half = hosts / 2;
    let upper = (first + half, last);
    let lower = (first, first + half - 1);
    let me = u32::from(link.address);
    let (a, b) = if (upper.0..=upper.1).contains(&me) {
        lower
    } else {
        upper
    };
    if a > b {
        return Err(too_small());
    }
    Ok((Ipv4Addr::from(a), Ipv4Addr::from(b)))
}

/// Everything `serve.toml` depends on.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The link.
    pub link: Link,
    /// DHCP mode.
    pub mode: InitMode,
    /// Why that mode, one line (a comment in the file).
    pub reason: String,
    /// Authoritative: the pool.
    pub pool: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Authoritative: the router handed out.
    pub router: Option<Ipv4Addr>,
    /// `data_dir` (absolute).
    pub data_dir: PathBuf,
    /// Whether `snponly.efi` is among the boot files (then x86-64 UEFI PXE gets it).
    pub snponly: bool,
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The `serve.toml` for `plan`: paths beside it relative (`root.json`, `profiles.toml`), state
/// under `data_dir`, boot files in `<data_dir>/boot` for TFTP and HTTP alike, the device API on.
#[must_use]
pub fn render_serve_toml(plan: &Plan) -> String {
    let l = &plan.link;
    let data = plan.data_dir.display().to_string();
    let boot = plan.data_dir.join("boot").display().to_string();
    let mut s = format!(
        "# Written by `tugboot init --interface {iface}`: a first working configuration for this\n\
         # link. Schema: docs/serve.md (man tugboot-serve). After a change:\n\
         #   tugboot check-config --config <this file>; systemctl reload tugboot (SIGHUP)\n\
         data_dir = {data}\n\
         trust_root = \"root.json\"         # signed by keys/release.key (tugboot keys root ...)\n\
         profiles = \"profiles.toml\"       # who boots what\n\
         \n\
         [network]\n\
         interface = {iface_q}\n\
         address = \"{addr}\"             # {iface}: {addr}/{prefix}\n\
         mtu = {mtu}\n\
         \n\
         [dhcp]\n\
         # {reason}\n\
         mode = \"{mode}\"\n",
        iface = l.name,
        iface_q = toml_str(&l.name),
        data = toml_str(&data),
        addr = l.address,
        prefix = l.prefix,
        mtu = l.mtu,
        reason = plan.reason,
        mode = plan.mode.as_str(),
    );
    if plan.snponly {
        s.push_str(
            "[dhcp.boot]\nuefi_x64 = \"snponly.efi\"         # iPXE on the firmware's own NIC driver\n",
        );
    }
    if let Some((a, b)) = plan.pool {
        s.push_str(&format!(
            "\n[[dhcp.subnets]]\nnetwork = \"{}/{}\"\npools = [{{ start = \"{a}\", end = \"{b}\" }}]\n",
            l.network(),
            l.prefix
        ));
        match plan.router {
            Some(r) => s.push_str(&format!("router = \"{r}\"\n")),
            None => s.push_str(
                "# router = \"...\"                 # no default route via this interface\n",
            ),
        }
    }
    s.push_str(&format!(
        "\n[tftp]\nroot = {boot_q}           # iPXE and GRUB images; generated files come on top\n\
         \n[http]\n# listen = \"{addr}:8080\"   # the default\n\
         boot_dir = {boot_q}       # UEFI HTTP boot files under /boot/\n\
         \n# The device API for agents (mutual TLS) and the operator CLI; CA in {ca}.\n[api]\n\
         # listen = \"{addr}:8443\"   # the default\n",
        boot_q = toml_str(&boot),
        addr = l.address,
        ca = plan.data_dir.join("ca").display(),
    ));
    s
}

/// The profiles file `init` writes: valid and empty (every machine gets the unknown-machine
/// answer until an image is published and a profile names it).
pub const PROFILES_TOML: &str = "\
# Who boots what (schema: docs/http.md, `tugboot profiles --help`). Nothing is declared yet:
# machines that netboot get the unknown-machine script (they retry) until a profile names a
# published image. For example, after `tugboot image build ... --sign keys/release.key` and
# `tugboot images push`:
#
# default_profile = \"netboot\"
#
# [profiles.netboot]
# image = \"my-image\"            # highest published version of this image
# cmdline = \"console=ttyS0\"
#
# [[machines]]
# name = \"node1\"
# mac = \"52:54:00:12:34:01\"
# board = \"x86_64-bios\"
# profile = \"netboot\"
";

/// What `init` did, for `--json` and the summary.
#[derive(Debug, Serialize)]
struct Report {
    ok: bool,
    link: Link,
    router: Option<Ipv4Addr>,
    probe_secs: u64,
    offers: Vec<Offer>,
    mode: InitMode,
    reason: String,
    pool: Option<String>,
    written: Vec<PathBuf>,
    kept: Vec<PathBuf>,
    boot_files: Vec<String>,
    missing_boot_files: Vec<String>,
    check: Value,
}

fn ip_json(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if out.stdout.len() > MAX_IP_JSON {
        bail!(
            "`ip {}` printed more than {MAX_IP_JSON} bytes",
            args.join(" ")
        );
    }
    String::from_utf8(out.stdout).context("`ip` printed non-UTF-8")
}

/// Sends the DISCOVER on `link` (twice, half the wait apart, in case one is lost) and collects
/// offers for it until `wait` has passed. A DHCP client, never a server.
fn probe(link: &Link, wait: Duration) -> anyhow::Result<Vec<Offer>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let ctx = |what: &str| {
        format!(
            "DHCP probe on {}: {what} (needs root or CAP_NET_BIND_SERVICE for port {CLIENT_PORT}; \
             --probe-secs 0 --mode ... skips the probe)",
            link.name
        )
    };
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .with_context(|| ctx("socket"))?;
    // A DHCP client of the host may hold port 68 with SO_REUSEADDR too; broadcasts reach both.
    sock.set_reuse_address(true)
        .with_context(|| ctx("SO_REUSEADDR"))?;
    sock.bind_device(Some(link.name.as_bytes()))
        .with_context(|| ctx("SO_BINDTODEVICE"))?;
    sock.set_broadcast(true)
        .with_context(|| ctx("SO_BROADCAST"))?;
    sock.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT).into())
        .with_context(|| ctx("bind 0.0.0.0:68"))?;
    let sock: std::net::UdpSocket = sock.into();
    let mut x = [0u8; 4];
    getrandom::getrandom(&mut x).map_err(|e| anyhow::anyhow!("random xid: {e}"))?;
    let xid = u32::from_be_bytes(x);
    let packet = discover(link.mac, xid);
    let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, SERVER_PORT);
    let start = Instant::now();
    let deadline = start + wait;
    let resend = start + wait / 2;
    sock.send_to(&packet, to).with_context(|| ctx("send"))?;
    let mut resent = false;
    let mut offers: Vec<Offer> = Vec::new();
    let mut buf = [0u8; 1500];
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if !resent && now >= resend {
            sock.send_to(&packet, to).with_context(|| ctx("send"))?;
            resent = true;
        }
        let until = if resent { deadline } else { resend };
        sock.set_read_timeout(Some(
            until
                .saturating_duration_since(now)
                .max(Duration::from_millis(1)),
        ))
        .with_context(|| ctx("timeout"))?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let from = match from.ip() {
                    std::net::IpAddr::V4(a) => a,
                    std::net::IpAddr::V6(_) => continue,
                };
                if let Some(o) = buf.get(..n).and_then(|b| parse_offer(b, xid, from))
                    && !offers
                        .iter()
                        .any(|p| p.server == o.server && p.kind == o.kind)
                {
                    offers.push(o);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).with_context(|| ctx("receive")),
        }
    }
    Ok(offers)
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("{}", p.display()))
}

/// Secret-key directory: owner only.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Hands `paths` (recursively) to the owner of `top` when that is not who wrote them.
fn give_to_owner_of(top: &Path, paths: &[PathBuf]) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(top).with_context(|| format!("{}", top.display()))?;
    let (uid, gid) = (meta.uid(), meta.gid());
    fn walk(p: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
        let m = std::fs::symlink_metadata(p).with_context(|| format!("{}", p.display()))?;
        if m.uid() != uid || m.gid() != gid {
            std::os::unix::fs::lchown(p, Some(uid), Some(gid))
                .with_context(|| format!("cannot hand {} to uid {uid}", p.display()))?;
        }
        if m.is_dir() {
            for e in std::fs::read_dir(p).with_context(|| format!("{}", p.display()))? {
                walk(&e?.path(), uid, gid)?;
            }
        }
        Ok(())
    }
    for p in paths {
        walk(p, uid, gid)?;
    }
    Ok(())
}

pub fn run(mut args: InitArgs, global: Global) -> anyhow::Result<()> {
    if args.proxy {
        args.mode = Some(InitMode::Proxy);
    }
    let dir = absolute(&args.dir)?;
    let data_dir = absolute(&args.data_dir)?;
    let serve_path = dir.join("serve.toml");
    let profiles_path = dir.join("profiles.toml");
    for p in [&serve_path, &profiles_path] {
        if p.exists() && !args.force {
            bail!(
                "{} already exists (tugboot init was run before; --force rewrites serve.toml and profiles.toml and keeps keys, trust root and CA)",
                p.display()
            );
        }
    }
    if args.probe_secs == 0 && args.mode.is_none() {
        return Err(InitError::ModeNeeded.into());
    }
    if args.probe_secs > 60 {
        bail!("--probe-secs {}: at most 60", args.probe_secs);
    }

    // 1. The link.
    let link = parse_link(
        &ip_json(&["-j", "addr", "show", "dev", &args.interface])?,
        &args.interface,
    )?;
    let router = ip_json(&["-j", "route", "show", "default", "dev", &args.interface])
        .ok()
        .and_then(|j| parse_default_router(&j));

    // 2. Who else answers DHCP there.
    let probed = args.probe_secs > 0;
    if probed && !global.json && !global.quiet {
        eprintln!(
            "init: asking {} for DHCP offers ({} s) ...",
            link.name, args.probe_secs
        );
    }
    let offers = if probed {
        probe(&link, Duration::from_secs(args.probe_secs))?
    } else {
        Vec::new()
    };
    let mode = choose_mode(args.mode, &offers, probed, &link.name)?;
    let addr_servers: Vec<String> = offers
        .iter()
        .filter(|o| o.kind == OfferKind::Address)
        .map(|o| o.server.to_string())
        .collect();
    let reason = match (mode, args.mode.is_some(), addr_servers.is_empty()) {
        (InitMode::Proxy, false, _) => format!(
            "The DHCP server {} answers on {}: tugboot sends boot parameters only (proxyDHCP).",
            addr_servers.join(", "),
            link.name
        ),
        (InitMode::Authoritative, false, _) => format!(
            "No DHCP server answered on {} within {} s: tugboot leases the addresses.",
            link.name, args.probe_secs
        ),
        (_, true, true) if probed => format!(
            "Chosen with --mode; no DHCP server answered on {} within {} s.",
            link.name, args.probe_secs
        ),
        (_, true, true) => "Chosen with --mode; the link was not probed.".to_owned(),
        (_, true, false) => format!(
            "Chosen with --mode; the DHCP server {} answers on {}.",
            addr_servers.join(", "),
            link.name
        ),
    };
    let pool = match mode {
        InitMode::Authoritative => Some(pool(&link)?),
        InitMode::Proxy => None,
    };

    // 3. Files.
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let boot_dir = data_dir.join("boot");
    std::fs::create_dir_all(&boot_dir)
        .with_context(|| format!("cannot create {}", boot_dir.display()))?;
    let mut written = Vec::new();
    let mut kept = Vec::new();

    let mut boot_files = Vec::new();
    let mut missing_boot_files = Vec::new();
    for (from, name) in BOOT_FILES {
        let to = boot_dir.join(name);
        // Copies, not links: the TFTP server refuses links that leave its root.
        match std::fs::copy(from, &to) {
            Ok(_) => boot_files.push(name.to_owned()),
            Err(_) => missing_boot_files.push(format!("{name} ({from})")),
        }
    }

    let keys_dir = dir.join("keys");
    let key_path = keys_dir.join("release.key");
    let pub_path = keys_dir.join("release.pub");
    let root_path = dir.join("root.json");
    if key_path.exists() && root_path.exists() {
        kept.extend([key_path.clone(), root_path.clone()]);
    } else {
        if key_path.exists() || root_path.exists() {
            bail!(
                "{} or {} exists without the other: move it away or finish it with `tugboot keys`",
                key_path.display(),
                root_path.display()
            );
        }
        private_dir(&keys_dir)?;
        let secret = SecretKey::generate().context("cannot generate a key")?;
        write_atomic(&key_path, secret.to_pkcs8_pem().as_bytes(), true)?;
        write_atomic(&pub_path, secret.public().to_pem().as_bytes(), false)?;
        let now = Timestamp::now();
        let root = TrustRoot {
            version: 1,
            expires: parse_expiry("365d", now)?,
            threshold: 1,
            keys: vec![secret.public()],
            revoked: Vec::new(),
        };
        let mut signed = Signed::new(root).context("invalid trust root")?;
        signed.sign(&secret);
        TrustedRoot::bootstrap(&signed.to_bytes(), now).context("the new trust root")?;
        write_atomic(&root_path, &signed.to_bytes(), false)?;
        written.extend([key_path, pub_path, root_path]);
    }

    let ca_dir = data_dir.join("ca");
    if ca_dir.join("ca.pem").exists() {
        kept.push(ca_dir);
    } else {
        let now = i64::try_from(Timestamp::now().unix()).unwrap_or(i64::MAX);
        CertAuthority::init(&ca_dir, "tugboot device CA", now, DEFAULT_CA_VALIDITY_SECS)
            .with_context(|| format!("device API CA in {}", ca_dir.display()))?;
        written.push(ca_dir);
    }
    // The package's postinst makes /var/lib/tugboot the service user's (the unit runs as
    // User=tugboot): what init writes there becomes that user's too, or the server could not
    // read its CA key.
    // `tugboot image build --out <data_dir>/manifests/...` and the server's import look there.
    let manifests = data_dir.join("manifests");
    std::fs::create_dir_all(&manifests)
        .with_context(|| format!("cannot create {}", manifests.display()))?;
    give_to_owner_of(
        &data_dir,
        &[boot_dir.clone(), data_dir.join("ca"), manifests],
    )?;

    let plan = Plan {
        link: link.clone(),
        mode,
        reason: reason.clone(),
        pool,
        router: if mode == InitMode::Authoritative {
            router
        } else {
            None
        },
        data_dir: data_dir.clone(),
        snponly: boot_files.iter().any(|f| f == "snponly.efi"),
    };
    write_atomic(&serve_path, render_serve_toml(&plan).as_bytes(), false)?;
    write_atomic(&profiles_path, PROFILES_TOML.as_bytes(), false)?;
    written.extend([serve_path.clone(), profiles_path]);

    // 4. The same checks as `tugboot check-config`: the command itself, on the written file.
    let exe = std::env::current_exe().context("cannot find the tugboot binary")?;
    let out = std::process::Command::new(exe)
        .args(["check-config", "--json", "--config"])
        .arg(&serve_path)
        .env_remove("TUGBOOT_CONFIG")
        .output()
        .context("cannot run tugboot check-config")?;
    let check: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if !out.status.success() {
        let why = check.get("error").and_then(Value::as_str).map_or_else(
            || String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            str::to_owned,
        );
        bail!(
            "the written configuration fails check-config: {why} ({} is left for inspection)",
            serve_path.display()
        );
    }

    let report = Report {
        ok: true,
        link,
        router: plan.router,
        probe_secs: args.probe_secs,
        offers,
        mode,
        reason,
        pool: pool.map(|(a, b)| format!("{a}-{b}")),
        written,
        kept,
        boot_files,
        missing_boot_files,
        check,
    };
    if global.json {
        return print_json(&report);
    }
    print_summary(&report, &serve_path);
    Ok(())
}

fn print_summary(r: &Report, serve_path: &Path) {
    let l = &r.link;
    println!(
        "interface   {} {} {}/{} mtu {} ({})",
        l.name,
        mac_text(&l.mac),
        l.address,
        l.prefix,
        l.mtu,
        l.operstate
    );
    if !l.other_addresses.is_empty() {
        println!(
            "            also {} (not used)",
            l.other_addresses.join(", ")
        );
    }
    for o in &r.offers {
        match o.kind {
            OfferKind::Address => println!("dhcp        {} offered {}", o.server, o.yiaddr),
            OfferKind::Proxy => println!(
                "dhcp        {} answered as a proxyDHCP/PXE server: another netboot server is on this link; run only one",
                o.server
            ),
        }
    }
    println!("mode        {} ({})", r.mode.as_str(), r.reason);
    if let Some(p) = &r.pool {
        println!("pool        {p}");
    }
    for w in &r.written {
        println!("wrote       {}", w.display());
    }
    for k in &r.kept {
        println!("kept        {}", k.display());
    }
    println!("boot files  {}", r.boot_files.join(", "));
    if !r.missing_boot_files.is_empty() {
        println!(
            "            not found: {} (Debian packages ipxe, grub-efi-arm64-bin)",
            r.missing_boot_files.join(", ")
        );
    }
    let warnings: Vec<&str> = r
        .check
        .get("warnings")
        .and_then(Value::as_array)
        .map(|w| w.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    println!(
        "check       tugboot check-config --config {}: ok, {} warning(s)",
        serve_path.display(),
        warnings.len()
    );
    for w in warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "secret key  keys/release.key signs images and the next trust root: keep a copy offline"
    );
    println!(
        "next        systemctl enable --now tugboot   (or: tugboot serve --config {})",
        serve_path.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP_ADDR: &str = r#"[{"ifindex":3,"ifname":"br0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"qdisc":"noqueue","operstate":"UP","group":"default","txqlen":1000,"link_type":"ether","address":"52:54:00:ab:cd:ef","broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[{"family":"inet6","local":"fd77::1","prefixlen":64,"scope":"global"},{"family":"inet","local":"10.77.0.1","prefixlen":24,"broadcast":"10.77.0.255","scope":"global","label":"br0","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet","local":"10.78.0.1","prefixlen":16,"scope":"global","label":"br0"}]}]"#;

    fn link() -> Link {
        parse_link(IP_ADDR, "br0").expect("link")
    }

    #[test]
    fn the_link_is_read_from_ip_json() {
        let l = link();
        assert_eq!(l.mac, [0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        assert_eq!(l.address, Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(l.prefix, 24);
        assert_eq!(l.mtu, 1500);
        assert_eq!(l.network(), Ipv4Addr::new(10, 77, 0, 0));
        assert_eq!(l.other_addresses, ["10.78.0.1/16"]);
    }

    #[test]
    fn unusable_interfaces_are_named_with_the_fix() {
        let e = |json: &str, ifname: &str| parse_link(json, ifname).unwrap_err().to_string();
        assert!(e(IP_ADDR, "eth9").contains("no such interface"));
        assert!(e("not json", "br0").contains("`ip -j addr` output"));
        let down = IP_ADDR.replace("\"MULTICAST\",\"UP\",", "\"MULTICAST\",");
        assert!(
            e(&down, "br0").contains("ip link set br0 up"),
            "{}",
            e(&down, "br0")
        );
        let lo = IP_ADDR.replace("\"ether\"", "\"loopback\"");
        assert!(e(&lo, "br0").contains("not an Ethernet interface"));
        let no_v4 = r#"[{"ifname":"br0","flags":["UP"],"mtu":1500,"link_type":"ether","address":"52:54:00:ab:cd:ef","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]}]"#;
        assert!(
            e(no_v4, "br0").contains("ip addr add"),
            "{}",
            e(no_v4, "br0")
        );
    }

    #[test]
    fn the_default_router_comes_from_a_default_route() {
        assert_eq!(
            parse_default_router(
                r#"[{"dst":"default","gateway":"10.77.0.254","dev":"br0","flags":[]}]"#
            ),
            Some(Ipv4Addr::new(10, 77, 0, 254))
        );
        assert_eq!(parse_default_router("[]"), None);
        assert_eq!(parse_default_router("{"), None);
    }

    #[test]
    fn never_a_second_authoritative_server() {
        let a = Offer {
            server: Ipv4Addr::new(10, 77, 0, 2),
            yiaddr: Ipv4Addr::new(10, 77, 0, 150),
            kind: OfferKind::Address,
        };
        let p = Offer {
            kind: OfferKind::Proxy,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            ..a
        };
        assert_eq!(
            choose_mode(None, &[], true, "br0").ok(),
            Some(InitMode::Authoritative)
        );
        assert_eq!(
            choose_mode(None, &[a], true, "br0").ok(),
            Some(InitMode::Proxy)
        );
        // A proxy alone does not lease addresses.
        assert_eq!(
            choose_mode(None, &[p], true, "br0").ok(),
            Some(InitMode::Authoritative)
        );
        let e = choose_mode(Some(InitMode::Authoritative), &[a], true, "br0").unwrap_err();
        assert!(
            e.to_string().contains("10.77.0.2 offered 10.77.0.150"),
            "{e}"
        );
        assert_eq!(
            choose_mode(Some(InitMode::Proxy), &[], true, "br0").ok(),
            Some(InitMode::Proxy)
        );
        assert!(matches!(
            choose_mode(None, &[], false, "br0"),
            Err(InitError::ModeNeeded)
        ));
    }

    #[test]
    fn the_pool_is_the_half_without_the_server() {
        let mut l = link();
        assert_eq!(
            pool(&l).expect("pool"),
            (Ipv4Addr::new(10, 77, 0, 128), Ipv4Addr::new(10, 77, 0, 254))
        );
        l.address = Ipv4Addr::new(10, 77, 0, 200);
        assert_eq!(
            pool(&l).expect("pool"),
            (Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(10, 77, 0, 127))
        );
        l.prefix = 30;
        l.address = Ipv4Addr::new(10, 77, 0, 1);
        assert_eq!(
            pool(&l).expect("pool"),
            (Ipv4Addr::new(10, 77, 0, 2), Ipv4Addr::new(10, 77, 0, 2))
        );
        l.prefix = 31;
        assert!(pool(&l).is_err());
    }

    #[test]
    fn the_rendered_config_loads_and_says_why() {
        let l = link();
        let mut plan = Plan {
            pool: Some(pool(&l).expect("pool")),
            link: l,
            mode: InitMode::Authoritative,
            reason: "No DHCP server answered on br0 within 3 s.".into(),
            router: Some(Ipv4Addr::new(10, 77, 0, 254)),
            data_dir: PathBuf::from("/var/lib/tugboot"),
            snponly: true,
        };
        let text = render_serve_toml(&plan);
        let c = crate::serve::ServeConfig::from_toml(&text, Path::new("/etc/tugboot"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.network.interface.as_deref(), Some("br0"));
        assert_eq!(c.trust_root, Path::new("/etc/tugboot/root.json"));
        let d = c.dhcp.expect("dhcp");
        assert_eq!(d.config.mode, tugboot_dhcp::Mode::Authoritative);
        assert_eq!(d.config.subnets.len(), 1);
        assert_eq!(
            d.config.subnets[0].router,
            Some(Ipv4Addr::new(10, 77, 0, 254))
        );
        assert!(c.api.is_some());
        assert_eq!(
            c.tftp.expect("tftp").root,
            Path::new("/var/lib/tugboot/boot")
        );
        assert!(text.contains("# No DHCP server answered"), "{text}");

        plan.mode = InitMode::Proxy;
        plan.pool = None;
        plan.snponly = false;
        let text = render_serve_toml(&plan);
        let c = crate::serve::ServeConfig::from_toml(&text, Path::new("/etc/tugboot"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let d = c.dhcp.expect("dhcp");
        assert_eq!(d.config.mode, tugboot_dhcp::Mode::Proxy);
        assert!(d.config.subnets.is_empty());
    }

    #[test]
    fn names_and_paths_are_quoted_for_toml() {
        let mut l = link();
        l.name = "we\"ird".into();
        let plan = Plan {
            pool: None,
            link: l,
            mode: InitMode::Proxy,
            reason: String::new(),
            router: None,
            data_dir: PathBuf::from("/srv/a \"b\""),
            snponly: false,
        };
        let text = render_serve_toml(&plan);
        let raw: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(raw["data_dir"].as_str(), Some("/srv/a \"b\""));
    }

    #[test]
    fn the_profiles_file_loads_and_declares_nothing() {
        let p = tugboot_fleet::ProfileSet::from_toml(PROFILES_TOML).expect("profiles");
        assert!(p.machines().is_empty());
    }
}
