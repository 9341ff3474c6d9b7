//! Crash safety: `tugboot-dhcpd` is killed with SIGKILL in the middle of a burst of
//! DISCOVER/REQUEST exchanges from hundreds of clients (Kea's `perfdhcp`, acting as a
//! relay from its own namespace), restarted each time on the same lease log, then serves
//! a second burst from the same clients. Every ACK that reached the clients is read back
//! from a capture on their side and checked against the lease log: each ACKed address
//! has a `bound` record for that MAC, no address was ever ACKed to two MACs, and no MAC
//! was ever ACKed two addresses. The first test kills during appends; the second runs
//! with a compaction at almost every commit and kills while a compaction file is being
//! written. Root only.

mod netns_common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use netns_common::{Lab, Seen, read_pcap, require, signal, wait_until};
use tugboot_dhcp::server::{load_leases, read_records};
use tugboot_dhcp::{LeaseState, Mac};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 94, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 94, 0, 2);
/// Distinct MACs per burst: enough that each stays under the default per-MAC rate
/// limit (2 datagrams/s after a burst of 10) at 1000 exchanges/s.
const CLIENTS: &str = "1500";

fn now_us() -> u64 {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(d.as_micros()).expect("fits")
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Starts a perfdhcp burst: `rate` exchanges/s for `secs` seconds from `CLIENTS`
/// distinct MACs (the same MACs every time: same base, same range).
fn burst(lab: &mut Lab, rate: &str, secs: &str) -> u32 {
    let mut cmd = lab.exec(1, "perfdhcp");
    cmd.args(["-4", "-l", &CLIENT.to_string(), "-r", rate, "-R", CLIENTS])
        .args(["-b", "mac=02:00:5e:00:00:00", "-p", secs])
        .arg(SERVER.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    lab.spawn(cmd, "perfdhcp")
}

/// The two namespaces, the capture on the clients' side, the config and the log.
struct Rig {
    lab: Lab,
    config: std::path::PathBuf,
    leases: std::path::PathBuf,
    pcap: std::path::PathBuf,
    tcpdump: u32,
}

fn rig(tag: &str) -> Rig {
    // 0 = server, 1 = clients.
    let mut lab = Lab::new(tag, &["s", "c"]);
    let dir = lab.dir.clone();
    let client_ns = lab.ns(1).to_string();
    lab.ip(
        0,
        &[
            "link", "add", "vs", "type", "veth", "peer", "name", "vc", "netns", &client_ns,
        ],
    );
    lab.ip(0, &["addr", "add", &format!("{SERVER}/16"), "dev", "vs"]);
    lab.ip(0, &["link", "set", "vs", "up"]);
    lab.ip(1, &["addr", "add", &format!("{CLIENT}/16"), "dev", "vc"]);
    lab.ip(1, &["link", "set", "vc", "up"]);

    let pcap = dir.join("clients.pcap");
    let tcpdump = lab.capture(1, "vc", &pcap);
    let config = dir.join("dhcp.toml");
    std::fs::write(
        &config,
        format!(
            r#"
mode = "authoritative"
server_address = "{SERVER}"
http_base_url = "http://{SERVER}:8080"
[[subnets]]
network = "10.94.0.0/16"
pools = [{{ start = "10.94.1.0", end = "10.94.8.255" }}]
lease_time_secs = 3600
[limits]
max_pending_offers = 4096
"#
        ),
    )
    .expect("write config");
    Rig {
        lab,
        config,
        leases: dir.join("leases.jsonl"),
        pcap,
        tcpdump,
    }
}

/// ACKs the clients received, from the capture.
fn acks(pcap: &Path) -> Vec<Seen> {
    read_pcap(pcap)
        .into_iter()
        .filter(|s| s.src == SERVER && s.op == 2 && s.msg_type == Some(5))
        .collect()
}

/// No address ACKed to two MACs, no MAC ACKed two addresses, and each ACK is bound to
/// its MAC in `bound` (address, MAC) pairs.
fn check_acks(acks: &[Seen], bound: &BTreeMap<(Ipv4Addr, [u8; 6]), usize>, what: &str) {
    let mut holder: BTreeMap<Ipv4Addr, [u8; 6]> = BTreeMap::new();
    let mut address: BTreeMap<[u8; 6], Ipv4Addr> = BTreeMap::new();
    for a in acks {
        assert!(
            bound.contains_key(&(a.yiaddr, a.mac)),
            "ACK of {} to {:02x?} has no bound record in the {what}",
            a.yiaddr,
            a.mac
        );
        let h = holder.entry(a.yiaddr).or_insert(a.mac);
        assert_eq!(*h, a.mac, "{} ACKed to two MACs", a.yiaddr);
        let ad = address.entry(a.mac).or_insert(a.yiaddr);
        assert_eq!(*ad, a.yiaddr, "{:02x?} ACKed two addresses", a.mac);
    }
}

fn bound_pairs(records: &[tugboot_dhcp::LeaseRecord]) -> BTreeMap<(Ipv4Addr, [u8; 6]), usize> {
    let mut bound: BTreeMap<(Ipv4Addr, [u8; 6]), usize> = BTreeMap::new();
    for r in records {
        assert_eq!(r.state, LeaseState::Bound, "{r:?}");
        let Some(Mac(mac)) = r.mac else {
            panic!("record without MAC: {r:?}")
        };
        *bound.entry((r.address, mac)).or_default() += 1;
    }
    bound
}

#[test]
#[ignore = "root: network namespaces"]
fn acked_leases_survive_sigkill_during_a_burst_and_are_never_shared() {
    require(&["ip", "perfdhcp", "tcpdump"]);
    let Rig {
        mut lab,
        config,
        leases,
        pcap,
        tcpdump,
    } = rig("cr");
    let args = ["--interface", "vs", "--no-pxe-port"];

    // Burst 1, with two SIGKILLs in the middle, each after the server has made real
    // progress (lease records appended since it started).
    let mut server = lab.start_tugboot(0, &config, &leases, &args);
    let first = burst(&mut lab, "1000", "8");
    let mut kills = Vec::new();
    for _ in 0..2 {
        let start = lines(&leases);
        wait_until(&leases, "lease records", |t| {
            t.lines().count() >= start + 500
        });
        signal(server, "-KILL");
        kills.push(now_us());
        server = lab.start_tugboot(0, &config, &leases, &args);
    }
    lab.wait_exit(first);
    let before_second = now_us();
    // Burst 2: the same clients come back to the restarted server.
    let second = burst(&mut lab, "1000", "4");
    lab.wait_exit(second);
    std::thread::sleep(Duration::from_millis(500));
    lab.stop(server, "-TERM");
    lab.stop(tcpdump, "-INT");

    // The whole history (no compaction in this run: far below 16 384 records).
    let records = read_records(&leases).expect("lease log loads after SIGKILLs");
    let bound = bound_pairs(&records);
    let acks = acks(&pcap);
    check_acks(&acks, &bound, "lease log");
    // The lease log on its own is consistent too: one MAC per address.
    let mut file_holder: BTreeMap<Ipv4Addr, [u8; 6]> = BTreeMap::new();
    for (addr, mac) in bound.keys() {
        let h = file_holder.entry(*addr).or_insert(*mac);
        assert_eq!(h, mac, "lease log binds {addr} to two MACs");
    }
    // The run exercised what it claims: ACKs before the first kill, between the
    // kills, after the last restart in burst 1, and in burst 2.
    let count = |from: u64, to: u64| {
        acks.iter()
            .filter(|a| (from..to).contains(&a.at_us))
            .count()
    };
    let phases = [
        count(0, kills[0]),
        count(kills[0], kills[1]),
        count(kills[1], before_second),
        count(before_second, u64::MAX),
    ];
    eprintln!(
        "{} ACKs seen (per phase {phases:?}), {} records",
        acks.len(),
        records.len(),
    );
    assert!(
        phases.iter().all(|n| *n >= 50),
        "ACKs per phase: {phases:?}"
    );
}

/// Compaction on (almost) every commit (`--compact-min-records 64 --compact-ratio 1`:
/// every renewal makes the log longer than the live set), and SIGKILL the moment a
/// compaction file appears, several times; at least one kill must land while the
/// compaction file is still there (before its rename). After every restart and a second
/// burst, every ACK the clients received is bound to its MAC in the *live* lease set.
#[test]
#[ignore = "root: network namespaces"]
fn acked_leases_survive_sigkill_during_compaction() {
    require(&["ip", "perfdhcp", "tcpdump"]);
    let Rig {
        mut lab,
        config,
        leases,
        pcap,
        tcpdump,
    } = rig("cc");
    let args = [
        "--interface",
        "vs",
        "--no-pxe-port",
        "--compact-min-records",
        "64",
        "--compact-ratio",
        "1",
    ];
    let tmp = leases.with_file_name("leases.jsonl.compact");
    let mut server = lab.start_tugboot(0, &config, &leases, &args);
    let first = burst(&mut lab, "1000", "10");
    let (mut kills, mut mid_compaction) = (0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while kills < 40 && mid_compaction < 3 && std::time::Instant::now() < deadline {
        // Let the restarted server make progress, then catch a compaction in the act.
        std::thread::sleep(Duration::from_millis(150));
        let watch = std::time::Instant::now() + Duration::from_secs(5);
        while !tmp.exists() {
            assert!(
                std::time::Instant::now() < watch,
                "no compaction within 5 s"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        signal(server, "-KILL");
        lab.wait_exit(server);
        kills += 1;
        if tmp.exists() {
            mid_compaction += 1;
        }
        server = lab.start_tugboot(0, &config, &leases, &args);
    }
    lab.wait_exit(first);
    let second = burst(&mut lab, "1000", "3");
    lab.wait_exit(second);
    std::thread::sleep(Duration::from_millis(500));
    lab.stop(server, "-TERM");
    lab.stop(tcpdump, "-INT");

    let live = load_leases(&leases).expect("lease log loads after SIGKILLs");
    let history = read_records(&leases).expect("records");
    let acks = acks(&pcap);
    eprintln!(
        "{kills} kills, {mid_compaction} mid-compaction; {} ACKs seen, {} live leases, {} log lines",
        acks.len(),
        live.len(),
        history.len()
    );
    assert!(
        mid_compaction >= 1,
        "no kill landed mid-compaction in {kills} tries"
    );
    assert!(acks.len() >= 1000, "the bursts ran: {} ACKs", acks.len());
    check_acks(&acks, &bound_pairs(&live), "live lease set");
    // Compaction kept the log near the live set (ratio 1 plus what arrived since).
    assert!(
        history.len() < 3 * live.len(),
        "{} lines for {} leases",
        history.len(),
        live.len()
    );
}
