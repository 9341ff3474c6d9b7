//! tugboot's DHCP decision core: authoritative DHCP, proxyDHCP and reservation-only
//! modes for PXE, iPXE, UEFI HTTP boot, U-Boot and Raspberry Pi clients.
//!
//! Sans-IO: [`Server::handle`] takes `now`, the datagram and where it came from, and
//! returns an [`Outcome`] (lease records to persist first, replies to send, events).
//! The lease log's line format and its recovery scan ([`lease`]) are sans-IO too. The
//! tokio shell that owns sockets, the lease file and the clock is [`server`] (feature
//! `shell`): the one socket loop that both `tugboot-dhcpd` and `tugboot serve` run; see
//! `docs/dhcp.md`.

pub mod boot;
pub mod classify;
pub mod config;
pub mod core;
pub mod lease;
#[cfg(feature = "shell")]
pub mod lease_log;
pub mod probe;
pub mod ratelimit;
#[cfg(feature = "shell")]
pub mod server;

pub mod wire;

pub use crate::classify::{
    ArchCode, Classification, Firmware, Mac, PiModel, Platform, Uuid, classify,
};
pub use crate::config::{Config, ConfigError, Mode, UnknownPolicy};
pub use crate::core::{
    Event, Ignored, Ingress, Observation, ObservedAddress, ObservedRelay, Outcome, Reply, Server,
    ServerPort,
};
pub use crate::lease::{ClientKey, LeaseRecord, LeaseState, fuzz_lease_log};
pub use crate::wire::{Request, WireError};
pub use dhcproto::v4::MessageType;

/// The whole receive path (parse, classify, decide, encode) on a fixed server:
/// the entry point of the `receive` fuzz target and of the seed-corpus test.
pub fn receive(
    server: &mut Server,
    now: std::time::SystemTime,
    bytes: &[u8],
    ingress: Ingress,
) -> Outcome {
    let out = server.handle(now, bytes, ingress);
    // Invariants the fuzzer checks on every input: replies are padded BOOTP
    // replies, and nothing is persisted without a lease-changing message.
    for r in &out.replies {
        assert!(
            r.bytes.len() >= wire::BOOTP_MIN_LEN,
            "reply shorter than 300 bytes"
        );
        assert_eq!(r.bytes[0], 2, "reply is not BOOTREPLY");
    }
    out
}

/// Fixed configuration used by the fuzz target and the seed test: two subnets,
/// reservations, every boot file kind, and the fuzzed datagrams' source as a trusted
/// relay (so relayed inputs reach the relay options).
pub const FUZZ_CONFIG: &str = r#"
mode = "authoritative"
server_address = "10.77.0.1"
http_base_url = "http://10.77.0.1:8080"
trusted_relays = ["10.77.0.9"]
[[subnets]]
network = "10.77.0.0/24"
pools = [{ start = "10.77.0.100", end = "10.77.0.200" }]
router = "10.77.0.1"
dns = ["10.77.0.1"]
[[subnets]]
network = "10.88.0.0/24"
pools = [{ start = "10.88.0.10", end = "10.88.0.20" }]
[[reservations]]
mac = "52:54:00:12:34:01"
address = "10.77.0.173"
[[reservations]]
client_id = "01525400123402"
address = "10.77.0.174"
"#;

/// Feeds one datagram to an authoritative server on port 67, a proxy on port 67
/// and a proxy on port 4011, twice each (so a REQUEST can meet its own OFFER
/// state). Returns the number of replies. Panics only on a broken invariant.
pub fn fuzz_receive(bytes: &[u8]) -> usize {
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::sync::OnceLock;
    static CONFIGS: OnceLock<(Config, Config)> = OnceLock::new();
    let (auth, proxy) = CONFIGS.get_or_init(|| {
        let auth = Config::from_toml(FUZZ_CONFIG).expect("fuzz config is valid");
        let mut proxy = auth.clone();
        proxy.mode = Mode::Proxy;
        (auth, proxy)
    });
    let now = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let iface = Ipv4Addr::new(10, 77, 0, 1);
    let mut replies = 0;
    for (config, port) in [
        (auth, ServerPort::Dhcp),
        (proxy, ServerPort::Dhcp),
        (proxy, ServerPort::Pxe),
    ] {
        let mut server = Server::new(config.clone());
        let ingress = Ingress {
            interface: iface,
            port,
            src: SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 9), 68),
        };
        for step in 0..2u64 {
            let at = now + std::time::Duration::from_secs(step);
            replies += receive(&mut server, at, bytes, ingress).replies.len();
        }
    }
    replies
}
