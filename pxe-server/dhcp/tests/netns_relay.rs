//! A relay between client and server: busybox `udhcpc` in a client namespace, dnsmasq
//! as a DHCP relay (`--dhcp-relay`) in a router namespace, `tugboot-dhcpd` in a server
//! namespace on another subnet. The client must get an address from the subnet its
//! relay's giaddr selects, the server's replies must go to the relay (not to the
//! client), and the client's RENEW (unicast, routed, no relay) must be ACKed from the
//! same subnet. dnsmasq adds no option 82; its verbatim echo is covered by the
//! sans-IO tests. Root only.

mod netns_common;

use std::net::Ipv4Addr;
use std::process::Stdio;

use netns_common::{Lab, read_pcap, require, sh, signal, wait_until};
use tugboot_dhcp::LeaseState;
use tugboot_dhcp::server::read_records;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 95, 0, 1);
const RELAY_UP: Ipv4Addr = Ipv4Addr::new(10, 95, 0, 2);
const RELAY_DOWN: Ipv4Addr = Ipv4Addr::new(10, 95, 1, 1);

#[test]
#[ignore = "root: network namespaces"]
fn udhcpc_behind_dnsmasq_relay_gets_and_renews_a_lease_of_the_giaddr_subnet() {
    require(&["ip", "dnsmasq", "busybox", "tcpdump"]);
    // 0 = server, 1 = relay (router), 2 = client.
    let mut lab = Lab::new("rl", &["s", "r", "c"]);
    let dir = lab.dir.clone();
    let (relay, client) = (lab.ns(1).to_string(), lab.ns(2).to_string());
    lab.ip(
        0,
        &[
            "link", "add", "vs", "type", "veth", "peer", "name", "rup", "netns", &relay,
        ],
    );
    lab.ip(
        1,
        &[
            "link", "add", "rdown", "type", "veth", "peer", "name", "vc", "netns", &client,
        ],
    );
    lab.ip(0, &["addr", "add", &format!("{SERVER}/24"), "dev", "vs"]);
    lab.ip(0, &["link", "set", "vs", "up"]);
    lab.ip(
        0,
        &["route", "add", "10.95.1.0/24", "via", &RELAY_UP.to_string()],
    );
    lab.ip(1, &["addr", "add", &format!("{RELAY_UP}/24"), "dev", "rup"]);
    lab.ip(
        1,
        &["addr", "add", &format!("{RELAY_DOWN}/24"), "dev", "rdown"],
    );
    lab.ip(1, &["link", "set", "rup", "up"]);
    lab.ip(1, &["link", "set", "rdown", "up"]);
    lab.ip(2, &["link", "set", "vc", "up"]);
    // Forwarding inside the relay namespace only (routed RENEW and its ACK).
    sh(&[
        "ip",
        "netns",
        "exec",
        &relay,
        "sysctl",
        "-q",
        "-w",
        "net.ipv4.ip_forward=1",
    ]);

    let pcap = dir.join("server.pcap");
    let tcpdump = lab.capture(0, "vs", &pcap);

    let config = dir.join("dhcp.toml");
    std::fs::write(
        &config,
        format!(
            r#"
mode = "authoritative"
server_address = "{SERVER}"
http_base_url = "http://{SERVER}:8080"
[[subnets]]
network = "10.95.0.0/24"
pools = [{{ start = "10.95.0.100", end = "10.95.0.110" }}]
router = "{SERVER}"
[[subnets]]
network = "10.95.1.0/24"
pools = [{{ start = "10.95.1.50", end = "10.95.1.60" }}]
router = "{RELAY_DOWN}"
lease_time_secs = 300
"#
        ),
    )
    .expect("write config");
    let leases = dir.join("leases.jsonl");
    lab.start_tugboot(0, &config, &leases, &["--interface", "vs", "--no-pxe-port"]);

    let mut dnsmasq = lab.exec(1, "dnsmasq");
    dnsmasq
        .args(["--conf-file=/dev/null", "--no-daemon", "--port=0"])
        .arg(format!("--dhcp-relay={RELAY_DOWN},{SERVER}"))
        .arg("--log-dhcp")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("relay.log")).expect("log"));
    lab.spawn(dnsmasq, "dnsmasq relay");
    // The relay is ready once its DHCP socket exists; it logs nothing for that, so
    // wait for the banner and let udhcpc's retransmissions cover the rest.
    wait_until(&dir.join("relay.log"), "dnsmasq start-up", |t| {
        t.contains("started")
    });

    let script = dir.join("udhcpc.sh");
    let log = dir.join("udhcpc.log");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$1 ip=$ip router=$router lease=$lease serverid=$serverid\" >> {log}\n\
             case \"$1\" in bound|renew) ip addr replace $ip/24 dev $interface; \
             ip route replace default via $router ;; deconfig) ip addr flush dev $interface ;; esac\n",
            log = log.display()
        ),
    )
    .expect("script");
    sh(&["chmod", "+x", &script.to_string_lossy()]);
    let mut udhcpc = lab.exec(2, "busybox");
    udhcpc
        .args(["udhcpc", "-f", "-i", "vc", "-t", "20", "-T", "1", "-s"])
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let pid = lab.spawn(udhcpc, "udhcpc");

    let text = wait_until(&log, "a lease", |t| t.contains("bound ip="));
    let bound = format!("router={RELAY_DOWN} lease=300 serverid={SERVER}");
    let ip: Ipv4Addr = text
        .lines()
        .find(|l| l.starts_with("bound ip="))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|f| f.strip_prefix("ip="))
        .and_then(|a| a.parse().ok())
        .expect("bound ip");
    assert!(
        (Ipv4Addr::new(10, 95, 1, 50)..=Ipv4Addr::new(10, 95, 1, 60)).contains(&ip),
        "address from the giaddr subnet: {text}"
    );
    assert!(text.contains(&bound), "{text}");

    // RENEWING: unicast from 10.95.1.x to the server, routed by the relay namespace.
    signal(pid, "-USR1");
    wait_until(&log, "the renewal", |t| {
        t.contains(&format!("renew ip={ip}"))
    });

    lab.stop(tcpdump, "-INT");
    let seen = read_pcap(&pcap);
    let replies: Vec<_> = seen.iter().filter(|s| s.op == 2).collect();
    let relayed: Vec<_> = replies
        .iter()
        .filter(|s| s.msg_type == Some(2) || (s.msg_type == Some(5) && s.ciaddr.is_unspecified()))
        .collect();
    assert!(
        relayed.iter().any(|s| s.msg_type == Some(2))
            && relayed.iter().any(|s| s.msg_type == Some(5)),
        "OFFER and ACK through the relay: {replies:#?}"
    );
    for s in &relayed {
        assert_eq!(
            (s.dst, s.dport),
            (RELAY_DOWN, 67),
            "reply goes to giaddr:67: {s:?}"
        );
        assert_eq!(s.giaddr, RELAY_DOWN, "{s:?}");
        assert_eq!(s.yiaddr, ip, "{s:?}");
    }
    let renew_ack = replies
        .iter()
        .find(|s| s.msg_type == Some(5) && s.ciaddr == ip)
        .unwrap_or_else(|| panic!("no ACK to the RENEW: {replies:#?}"));
    assert_eq!((renew_ack.dst, renew_ack.dport), (ip, 68), "{renew_ack:?}");
    assert!(
        replies.iter().all(|s| s.msg_type != Some(6)),
        "no NAK: {replies:#?}"
    );
    let records = read_records(&leases).expect("lease log");
    assert!(records.len() >= 2, "bind + renew recorded: {records:?}");
    assert!(
        records
            .iter()
            .all(|r| r.address == ip && r.state == LeaseState::Bound),
        "{records:?}"
    );
}
