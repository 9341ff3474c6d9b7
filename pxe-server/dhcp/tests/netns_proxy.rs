//! proxyDHCP beside the site's DHCP server, with real PXE firmware: QEMU's iPXE BIOS
//! ROM (SeaBIOS, virtio-net, TCG) boots from the network on a bridge shared by two
//! other namespaces, one running dnsmasq (addresses only, like a site's existing
//! server) and one running `tugboot-dhcpd` in proxy mode (boot files only). iPXE must
//! report the address from dnsmasq and the boot file from tugboot; the capture of the
//! bridge must show tugboot never offering an address. Root only.

mod netns_common;

use std::net::Ipv4Addr;
use std::process::Stdio;

use netns_common::{Lab, read_pcap, require, wait_until};

const BOOT: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 1);
const SITE: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 2);

#[test]
#[ignore = "root: network namespaces"]
fn ipxe_rom_gets_address_from_dnsmasq_and_boot_file_from_tugboot_proxy() {
    require(&["ip", "dnsmasq", "tcpdump", "qemu-system-x86_64", "timeout"]);
    // 0 = lab (bridge + QEMU tap), 1 = site DHCP server, 2 = tugboot.
    let mut lab = Lab::new("px", &["l", "s", "b"]);
    let dir = lab.dir.clone();
    lab.ip(0, &["link", "add", "br0", "type", "bridge"]);
    lab.ip(0, &["tuntap", "add", "tq0", "mode", "tap"]);
    lab.ip(0, &["link", "set", "tq0", "master", "br0"]);
    for (i, port) in [(1, "vsite"), (2, "vboot")] {
        let peer = lab.ns(i).to_string();
        lab.ip(
            0,
            &[
                "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &peer,
            ],
        );
        lab.ip(0, &["link", "set", port, "master", "br0"]);
        lab.ip(0, &["link", "set", port, "up"]);
    }
    for l in ["br0", "tq0"] {
        lab.ip(0, &["link", "set", l, "up"]);
    }
    lab.ip(1, &["addr", "add", &format!("{SITE}/24"), "dev", "eth0"]);
    lab.ip(1, &["link", "set", "eth0", "up"]);
    lab.ip(2, &["addr", "add", &format!("{BOOT}/24"), "dev", "eth0"]);
    lab.ip(2, &["link", "set", "eth0", "up"]);

    let pcap = dir.join("bridge.pcap");
    let tcpdump = lab.capture(0, "br0", &pcap);

    let dnsmasq_leases = dir.join("dnsmasq.leases");
    let mut dnsmasq = lab.exec(1, "dnsmasq");
    dnsmasq
        .args(["--conf-file=/dev/null", "--no-daemon", "--port=0"])
        .args(["--interface=eth0", "--bind-interfaces", "--no-ping"])
        .arg("--dhcp-range=10.97.0.150,10.97.0.160,1h")
        .arg(format!("--dhcp-leasefile={}", dnsmasq_leases.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    lab.spawn(dnsmasq, "dnsmasq");

    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!("mode = \"proxy\"\nserver_address = \"{BOOT}\"\nhttp_base_url = \"http://{BOOT}:8080\"\n"),
    )
    .expect("write config");
    let leases = dir.join("proxy-leases.jsonl");
    lab.start_tugboot(2, &config, &leases, &["--interface", "eth0"]);

    let console = dir.join("console.log");
    let out = std::fs::File::create(&console).expect("console file");
    let mut qemu = lab.exec(0, "timeout");
    qemu.args(["120", "qemu-system-x86_64", "-accel", "tcg", "-M", "pc"])
        .args([
            "-m",
            "128",
            "-nographic",
            "-display",
            "none",
            "-monitor",
            "none",
        ])
        .args(["-serial", "stdio", "-boot", "n", "-no-reboot"])
        .args(["-netdev", "tap,id=n0,ifname=tq0,script=no,downscript=no"])
        .args(["-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:01"])
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out);
    let qemu_pid = lab.spawn(qemu, "qemu");
    let script = format!("http://{BOOT}:8080/boot/52-54-00-12-34-01.ipxe");
    // iPXE prints its DHCP result, then tries the script URL (nothing serves it here).
    let text = wait_until(&console, "iPXE fetching the boot script", |t| {
        t.matches(script.as_str()).count() >= 2
    });
    lab.stop(qemu_pid, "-TERM");
    lab.stop(tcpdump, "-INT");
    let text = text.replace('\u{1b}', "");
    eprintln!("{text}");

    let net0 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("net0: 10.97.0."))
        .unwrap_or_else(|| panic!("no IPv4 address line from iPXE:\n{text}"));
    let last: u8 = net0
        .split('/')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("address");
    assert!(
        (150..=160).contains(&last),
        "address must come from dnsmasq's range: 10.97.0.{net0}"
    );
    assert!(
        text.contains(&format!("Next server: {BOOT}")),
        "next server from tugboot"
    );
    assert!(
        text.contains(&format!("Filename: {script}")),
        "boot file from tugboot"
    );

    // On the wire: dnsmasq offered and acknowledged the address; tugboot answered
    // the DISCOVER with a proxy OFFER carrying its siaddr (and, if iPXE asks on port
    // 4011, an ACK there), never with an address.
    let seen = read_pcap(&pcap);
    let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x01];
    let from = |server: Ipv4Addr| -> Vec<_> {
        seen.iter()
            .filter(|s| s.src == server && s.op == 2 && s.mac == mac)
            .collect()
    };
    let site = from(SITE);
    let address = Ipv4Addr::new(10, 97, 0, last);
    assert!(
        site.iter()
            .any(|s| s.msg_type == Some(5) && s.yiaddr == address),
        "dnsmasq ACKed {address}: {site:#?}"
    );
    let boot = from(BOOT);
    assert!(
        boot.iter()
            .any(|s| s.msg_type == Some(2) && s.sport == 67 && s.siaddr == BOOT),
        "tugboot sent a proxy OFFER on port 67: {boot:#?}"
    );
    assert!(
        boot.iter()
            .all(|s| s.msg_type == Some(2) || s.sport == 4011),
        "tugboot answers only with proxy OFFERs on 67 and ACKs on 4011: {boot:#?}"
    );
    assert!(
        boot.iter().all(|s| s.yiaddr.is_unspecified()),
        "tugboot offered an address: {boot:#?}"
    );
    eprintln!(
        "tugboot replies: {:?}",
        boot.iter()
            .map(|s| (s.msg_type, s.sport))
            .collect::<Vec<_>>()
    );
    let leases = std::fs::read_to_string(&leases).unwrap_or_default();
    assert!(leases.is_empty(), "proxy mode persisted leases: {leases}");
    let dnsmasq_leases = std::fs::read_to_string(&dnsmasq_leases).expect("dnsmasq leases");
    assert!(
        dnsmasq_leases.contains(&format!("52:54:00:12:34:01 {address}")),
        "{dnsmasq_leases}"
    );
}
