//! Shared helpers: a fixed clock, configs, a synthetic packet builder and option lookup.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tugboot_dhcp::core::{DHCP_CLIENT_PORT, DHCP_SERVER_PORT};
use tugboot_dhcp::wire::find_option;
use tugboot_dhcp::{Config, Ingress, Outcome, Reply, ServerPort};

pub const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

pub fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/dhcp")
}

pub fn fixture(name: &str) -> Vec<u8> {
    let p = fixtures_dir().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

pub const AUTH: &str = r#"
mode = "authoritative"
server_address = "10.77.0.1"
http_base_url = "http://10.77.0.1:8080"
[[subnets]]
network = "10.77.0.0/24"
pools = [{ start = "10.77.0.100", end = "10.77.0.200" }]
router = "10.77.0.1"
dns = ["10.77.0.1"]
lease_time_secs = 3600
[[subnets]]
network = "10.88.0.0/24"
pools = [{ start = "10.88.0.10", end = "10.88.0.11" }]
router = "10.88.0.1"
lease_time_secs = 600
[[reservations]]
mac = "52:54:00:12:34:01"
address = "10.77.0.173"
hostname = "ipxe-bios"
[[reservations]]
mac = "52:54:00:12:34:02"
address = "10.77.0.174"
[[reservations]]
mac = "52:54:00:12:34:03"
address = "10.77.0.175"
[[reservations]]
mac = "52:54:00:12:34:04"
address = "10.77.0.176"
[[reservations]]
mac = "b8:27:eb:12:34:56"
[[reservations]]
mac = "dc:a6:32:ab:cd:ef"
"#;

pub fn auth_config() -> Config {
    Config::from_toml(AUTH).expect("test config is valid")
}

pub fn config_with_mode(mode: &str) -> Config {
    Config::from_toml(&AUTH.replace("mode = \"authoritative\"", &format!("mode = \"{mode}\"")))
        .expect("valid")
}

pub fn local() -> Ingress {
    Ingress {
        interface: SERVER,
        port: ServerPort::Dhcp,
        src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, DHCP_CLIENT_PORT),
    }
}

pub fn pxe_port(src: SocketAddrV4) -> Ingress {
    Ingress {
        interface: SERVER,
        port: ServerPort::Pxe,
        src,
    }
}

pub fn relayed(giaddr: Ipv4Addr) -> Ingress {
    Ingress {
        interface: SERVER,
        port: ServerPort::Dhcp,
        src: SocketAddrV4::new(giaddr, DHCP_SERVER_PORT),
    }
}

pub fn only_reply(out: &Outcome) -> &Reply {
    assert_eq!(
        out.replies.len(),
        1,
        "expected exactly one reply, got {out:#?}"
    );
    &out.replies[0]
}

pub fn opt(reply: &Reply, code: u8) -> Option<Vec<u8>> {
    find_option(&reply.bytes, code)
}

pub fn yiaddr(reply: &Reply) -> Ipv4Addr {
    Ipv4Addr::new(
        reply.bytes[16],
        reply.bytes[17],
        reply.bytes[18],
        reply.bytes[19],
    )
}

pub fn siaddr(reply: &Reply) -> Ipv4Addr {
    Ipv4Addr::new(
        reply.bytes[20],
        reply.bytes[21],
        reply.bytes[22],
        reply.bytes[23],
    )
}

pub fn file_field(reply: &Reply) -> &[u8] {
    let f = &reply.bytes[108..236];
    let end = f
        .iter()
        .position(|b| *b == 0)
        .expect("file field is NUL-terminated");
    &f[..end]
}

/// Builds a synthetic request (smoltcp-style: every byte explicit).
#[derive(Debug, Clone)]
pub struct Pkt {
    pub xid: u32,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub mac: [u8; 6],
    pub opts: Vec<(u8, Vec<u8>)>,
}

impl Pkt {
    pub fn new(msg_type: u8, mac: [u8; 6]) -> Self {
        Self {
            xid: 0x1234_5678,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            mac,
            opts: vec![(53, vec![msg_type])],
        }
    }
    pub fn opt(mut self, code: u8, v: &[u8]) -> Self {
        self.opts.push((code, v.to_vec()));
        self
    }
    pub fn ciaddr(mut self, a: Ipv4Addr) -> Self {
        self.ciaddr = a;
        self
    }
    pub fn giaddr(mut self, a: Ipv4Addr) -> Self {
        self.giaddr = a;
        self
    }
    pub fn broadcast(mut self) -> Self {
        self.flags = 0x8000;
        self
    }
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = vec![1u8, 1, 6, 0];
        b.extend_from_slice(&self.xid.to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&self.flags.to_be_bytes());
        b.extend_from_slice(&self.ciaddr.octets());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&self.giaddr.octets());
        b.extend_from_slice(&self.mac);
        b.extend_from_slice(&[0; 10 + 64 + 128]);
        b.extend_from_slice(&[99, 130, 83, 99]);
        for (c, v) in &self.opts {
            b.push(*c);
            b.push(u8::try_from(v.len()).expect("short option"));
            b.extend_from_slice(v);
        }
        b.push(255);
        b
    }
}

pub const PXE_X64: &[u8] = b"PXEClient:Arch:00007:UNDI:003001";
pub const PLAIN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const PXE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
