//! Pool starvation (issue #11, item 7), end to end: while DISCOVERs from thousands of
//! rotating MACs flood both the server's own link and a relayed link, real clients on
//! both links still get addresses.
//!
//! Set-up (six namespaces): `tugboot-dhcpd` on bridge `br0` (10.93.0.1/24, pool of 20);
//! on that bridge a busybox `udhcpc`, a flooder (`tugboot-dhcp-flood`, 4 000 DISCOVERs at
//! 400/s, each carrying option 118 and option 82 link selection that point at the
//! *relayed* subnet), and dnsmasq as a relay (`--dhcp-relay`, upstream 10.93.0.2; it
//! sends from its giaddr 10.93.1.1, the only trusted relay); behind the relay, bridge `rb` (10.93.1.1/24, pool of 20) with a
//! second `udhcpc` and a second flooder (4 000 plain DISCOVERs at 400/s, relayed). Before
//! the fix, 20 DISCOVERs pinned each pool for 60 s and the local flood drained the
//! relayed pool through option 118. Root only.

mod netns_common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;

use netns_common::{Lab, read_pcap, require, sh, wait_until};
use tugboot_dhcp::server::read_records;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 93, 0, 1);
const RELAY_UP: Ipv4Addr = Ipv4Addr::new(10, 93, 0, 2);
const RELAY_DOWN: Ipv4Addr = Ipv4Addr::new(10, 93, 1, 1);
const LOCAL_FLOOD: [u8; 3] = [0x02, 0x66, 0x66];
const RELAYED_FLOOD: [u8; 3] = [0x02, 0x77, 0x77];

/// A veth from namespace `i` (named `inner`) to namespace `j`, where its peer `port`
/// joins bridge `bridge`.
fn wire(lab: &Lab, i: usize, inner: &str, j: usize, port: &str, bridge: &str) {
    let peer_ns = lab.ns(j).to_string();
    lab.ip(
        i,
        &[
            "link", "add", inner, "type", "veth", "peer", "name", port, "netns", &peer_ns,
        ],
    );
    lab.ip(j, &["link", "set", port, "master", bridge]);
    lab.ip(j, &["link", "set", port, "up"]);
    lab.ip(i, &["link", "set", inner, "up"]);
}

fn bridge(lab: &Lab, i: usize, name: &str, addr: &str) {
    lab.ip(i, &["link", "add", name, "type", "bridge"]);
    lab.ip(i, &["addr", "add", addr, "dev", name]);
    lab.ip(i, &["link", "set", name, "up"]);
}

fn udhcpc(lab: &mut Lab, i: usize, iface: &str, dir: &Path, tag: &str) -> std::path::PathBuf {
    let script = dir.join(format!("udhcpc-{tag}.sh"));
    let log = dir.join(format!("udhcpc-{tag}.log"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$1 ip=$ip router=$router serverid=$serverid\" >> {log}\n\
             case \"$1\" in bound|renew) ip addr replace $ip/24 dev $interface ;; \
             deconfig) ip addr flush dev $interface ;; esac\n",
            log = log.display()
        ),
    )
    .expect("script");
    sh(&["chmod", "+x", &script.to_string_lossy()]);
    let mut cmd = lab.exec(i, "busybox");
    cmd.args(["udhcpc", "-f", "-i", iface, "-t", "30", "-T", "1", "-s"])
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    lab.spawn(cmd, "udhcpc");
    log
}

fn bound_ip(log: &Path) -> Ipv4Addr {
    let text = wait_until(log, "a lease", |t| t.contains("bound ip="));
    text.lines()
        .find(|l| l.starts_with("bound ip="))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|f| f.strip_prefix("ip="))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {text}"))
}

fn flood(lab: &mut Lab, i: usize, iface: &str, prefix: [u8; 3], extra: &[&str], out: &Path) -> u32 {
    let mut cmd = lab.exec(i, env!("CARGO_BIN_EXE_tugboot-dhcp-flood"));
    let prefix = format!("{:02x}:{:02x}:{:02x}", prefix[0], prefix[1], prefix[2]);
    cmd.args(["--interface", iface, "--count", "4000", "--rate", "400"])
        .args(["--mac-prefix", &prefix])
        .args(extra)
        .stdout(std::fs::File::create(out).expect("flood log"))
        .stderr(Stdio::inherit());
    lab.spawn(cmd, "tugboot-dhcp-flood")
}

fn in_range(a: Ipv4Addr, lo: [u8; 4], hi: [u8; 4]) -> bool {
    (Ipv4Addr::from(lo)..=Ipv4Addr::from(hi)).contains(&a)
}

#[test]
#[ignore = "root: network namespaces"]
fn real_clients_get_addresses_during_a_discover_flood_on_both_links() {
    require(&["ip", "dnsmasq", "busybox", "tcpdump"]);
    // 0 server, 1 local client, 2 local flooder, 3 relay, 4 relayed client, 5 relayed flooder.
    let mut lab = Lab::new("fl", &["s", "c", "a", "r", "d", "b"]);
    let dir = lab.dir.clone();
    bridge(&lab, 0, "br0", &format!("{SERVER}/24"));
    wire(&lab, 1, "vc", 0, "p1", "br0");
    wire(&lab, 2, "va", 0, "p2", "br0");
    lab.ip(2, &["addr", "add", "10.93.0.250/24", "dev", "va"]);
    wire(&lab, 3, "ru", 0, "p3", "br0");
    lab.ip(3, &["addr", "add", &format!("{RELAY_UP}/24"), "dev", "ru"]);
    bridge(&lab, 3, "rb", &format!("{RELAY_DOWN}/24"));
    wire(&lab, 4, "vd", 3, "q1", "rb");
    wire(&lab, 5, "vb", 3, "q2", "rb");
    lab.ip(5, &["addr", "add", "10.93.1.250/24", "dev", "vb"]);
    lab.ip(
        0,
        &["route", "add", "10.93.1.0/24", "via", &RELAY_UP.to_string()],
    );

    let pcap = dir.join("server.pcap");
    let tcpdump = lab.capture(0, "br0", &pcap);
    let config = dir.join("dhcp.toml");
    std::fs::write(
        &config,
        format!(
            r#"
mode = "authoritative"
server_address = "{SERVER}"
http_base_url = "http://{SERVER}:8080"
trusted_relays = ["{RELAY_DOWN}"]
[[subnets]]
network = "10.93.0.0/24"
pools = [{{ start = "10.93.0.100", end = "10.93.0.119" }}]
router = "{SERVER}"
lease_time_secs = 300
[[subnets]]
network = "10.93.1.0/24"
pools = [{{ start = "10.93.1.50", end = "10.93.1.69" }}]
router = "{RELAY_DOWN}"
lease_time_secs = 300
"#
        ),
    )
    .expect("write config");
    let leases = dir.join("leases.jsonl");
    let server = lab.start_tugboot(
        0,
        &config,
        &leases,
        &["--interface", "br0", "--no-pxe-port"],
    );

    let mut relay = lab.exec(3, "dnsmasq");
    relay
        .args(["--conf-file=/dev/null", "--no-daemon", "--port=0"])
        .arg(format!("--dhcp-relay={RELAY_DOWN},{SERVER}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("relay.log")).expect("log"));
    lab.spawn(relay, "dnsmasq relay");
    wait_until(&dir.join("relay.log"), "dnsmasq start-up", |t| {
        t.contains("started")
    });

    // Both floods, until each has sent far more DISCOVERs than its pool has addresses.
    let local_log = dir.join("flood-local.log");
    let relayed_log = dir.join("flood-relayed.log");
    let steer = [
        "--subnet-selection",
        "10.93.1.0",
        "--link-selection",
        "10.93.1.0",
    ];
    let local_flood = flood(&mut lab, 2, "va", LOCAL_FLOOD, &steer, &local_log);
    let relayed_flood = flood(&mut lab, 5, "vb", RELAYED_FLOOD, &[], &relayed_log);
    for log in [&local_log, &relayed_log] {
        wait_until(log, "1 000 DISCOVERs sent", |t| t.contains("sent 1000"));
    }

    // The real clients, in the middle of the floods.
    let local_ip = bound_ip(&udhcpc(&mut lab, 1, "vc", &dir, "local"));
    let relayed_ip = bound_ip(&udhcpc(&mut lab, 4, "vd", &dir, "relayed"));
    assert!(
        in_range(local_ip, [10, 93, 0, 100], [10, 93, 0, 119]),
        "local client: {local_ip}"
    );
    assert!(
        in_range(relayed_ip, [10, 93, 1, 50], [10, 93, 1, 69]),
        "relayed client: {relayed_ip}"
    );
    let floods_running = [&local_log, &relayed_log].iter().all(|l| {
        !std::fs::read_to_string(l)
            .unwrap_or_default()
            .contains("done")
    });
    lab.wait_exit(local_flood);
    lab.wait_exit(relayed_flood);
    lab.stop(server, "-TERM");
    lab.stop(tcpdump, "-INT");

    // What crossed the server's link: the floods reached the server and were answered
    // (offers, from the right pools), yet never bound anything.
    let seen = read_pcap(&pcap);
    let count = |prefix: [u8; 3], op: u8, t: u8| {
        seen.iter()
            .filter(|s| s.mac[..3] == prefix && s.op == op && s.msg_type == Some(t))
            .collect::<Vec<_>>()
    };
    let local_discovers = count(LOCAL_FLOOD, 1, 1).len();
    let relayed_discovers = count(RELAYED_FLOOD, 1, 1).len();
    let local_offers = count(LOCAL_FLOOD, 2, 2);
    let relayed_offers = count(RELAYED_FLOOD, 2, 2);
    eprintln!(
        "floods still running when both clients were bound: {floods_running}; \
         DISCOVERs seen local {local_discovers} relayed {relayed_discovers}, \
         OFFERs local {} relayed {}; clients {local_ip} {relayed_ip}",
        local_offers.len(),
        relayed_offers.len()
    );
    assert!(
        local_discovers >= 3000 && relayed_discovers >= 3000,
        "floods reached the server: {local_discovers} / {relayed_discovers}"
    );
    assert!(
        local_offers.len() >= 3000 && relayed_offers.len() >= 3000,
        "floods were answered: {} / {}",
        local_offers.len(),
        relayed_offers.len()
    );
    assert!(
        local_offers
            .iter()
            .all(|s| in_range(s.yiaddr, [10, 93, 0, 100], [10, 93, 0, 119])),
        "option 118 / 82.5 from the local link selected another subnet"
    );
    assert!(
        relayed_offers
            .iter()
            .all(|s| in_range(s.yiaddr, [10, 93, 1, 50], [10, 93, 1, 69])),
        "relayed offers come from the relayed pool"
    );
    // Only the two real clients were ever bound.
    let bound: BTreeSet<Ipv4Addr> = read_records(&leases)
        .expect("lease log")
        .iter()
        .map(|r| {
            let mac = r.mac.expect("ethernet").0;
            assert!(
                mac[..3] != LOCAL_FLOOD && mac[..3] != RELAYED_FLOOD,
                "a flood MAC was bound: {r:?}"
            );
            r.address
        })
        .collect();
    assert_eq!(bound, BTreeSet::from([local_ip, relayed_ip]));
}
