//! `tugboot init` on a real link (root: network namespaces).
//!
//! In a private namespace (a bridge 10.77.0.1/24, nothing else) `tugboot init --interface br0`
//! probes the link with a DHCPDISCOVER. With Debian's dnsmasq answering DHCP from another
//! namespace on the same bridge, init proposes proxy mode and refuses authoritative; without
//! it, init writes an authoritative configuration. Either way the written configuration passed
//! `check-config` (init runs it) and `tugboot serve` starts with it; in authoritative mode a
//! real DHCP client (busybox udhcpc) then leases an address from the pool init chose.
//!
//! `cargo test -p tugboot --test init -- --ignored --test-threads=1` (as root).

mod vm;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vm::{Netns, Serve, require_root_and_tools, tugboot};

fn init(ns: &Netns, dir: &Path, extra: &[&str]) -> std::process::Output {
    ns.command(tugboot())
        .args(["init", "--interface", "br0", "--json", "--dir"])
        .arg(dir.join("etc"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(extra)
        .output()
        .expect("run tugboot init")
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "tugboot init failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("init --json: {e}\n{}", String::from_utf8_lossy(&out.stdout)))
}

/// The written configuration serves: `tugboot serve` becomes ready and stops cleanly.
fn serves(ns: &mut Netns, dir: &Path) -> Serve {
    Serve::start(ns, &dir.join("etc/serve.toml"))
}

#[test]
#[ignore = "root: network namespaces"]
fn an_existing_dhcp_server_on_the_link_makes_init_propose_proxy_mode() {
    require_root_and_tools(&["ip", "dnsmasq"], &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ns = Netns::new("init-proxy");
    // The site's DHCP server: Debian's dnsmasq on another machine on the same link.
    let site = ns.add_neighbour("site", "10.77.0.2/24");
    let dnsmasq = Command::new("ip")
        .args(["netns", "exec", &site, "dnsmasq"])
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--no-resolv",
            "--no-hosts",
            "--interface=eth0",
            "--bind-interfaces",
            "--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,1h",
            "--log-facility=-",
            "--user=root",
        ])
        .arg(format!(
            "--dhcp-leasefile={}",
            dir.path().join("site.leases").display()
        ))
        .arg(format!(
            "--pid-file={}",
            dir.path().join("site.pid").display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dnsmasq");
    ns.children.push(dnsmasq);
    std::thread::sleep(Duration::from_millis(500));

    // dnsmasq pings an address for 3 s before offering it: init's default probe waits 5 s.
    let started = Instant::now();
    let report = json_of(&init(&ns, dir.path(), &[]));
    println!(
        "init probe with dnsmasq on the link: {:?}",
        started.elapsed()
    );
    assert_eq!(report["mode"], "proxy", "{report:#}");
    let offers = report["offers"].as_array().expect("offers");
    assert!(
        offers
            .iter()
            .any(|o| o["server"] == "10.77.0.2" && o["kind"] == "address"),
        "{report:#}"
    );
    assert_eq!(report["check"]["ok"], true, "{report:#}");
    let toml = fs::read_to_string(dir.path().join("etc/serve.toml")).expect("serve.toml");
    assert!(toml.contains("mode = \"proxy\""), "{toml}");
    assert!(
        toml.contains("The DHCP server 10.77.0.2 answers on br0"),
        "{toml}"
    );
    assert!(!toml.contains("[[dhcp.subnets]]"), "{toml}");

    // A second authoritative server is refused, naming who already answers.
    let refused = init(
        &ns,
        dir.path(),
        &["--mode", "authoritative", "--force", "--probe-secs", "5"],
    );
    assert!(!refused.status.success());
    let text = String::from_utf8_lossy(&refused.stdout).into_owned()
        + &String::from_utf8_lossy(&refused.stderr);
    assert!(
        text.contains("10.77.0.2 offered") && text.contains("--mode proxy"),
        "{text}"
    );

    let serve = serves(&mut ns, dir.path());
    let log = serve.stop(&mut ns);
    assert!(log.contains("dhcp: serving"), "{log}");
}

#[test]
#[ignore = "root: network namespaces"]
fn a_quiet_link_gets_an_authoritative_configuration_that_leases_addresses() {
    require_root_and_tools(&["ip", "udhcpc"], &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ns = Netns::new("init-auth");
    let report = json_of(&init(&ns, dir.path(), &["--probe-secs", "2"]));
    assert_eq!(report["mode"], "authoritative", "{report:#}");
    assert_eq!(report["offers"], serde_json::json!([]), "{report:#}");
    assert_eq!(report["link"]["address"], "10.77.0.1", "{report:#}");
    assert_eq!(report["link"]["prefix"], 24, "{report:#}");
    assert_eq!(report["pool"], "10.77.0.128-10.77.0.254", "{report:#}");
    assert_eq!(report["check"]["ok"], true, "{report:#}");
    // Keys, trust root and CA are there; the secret key is private.
    let etc = dir.path().join("etc");
    for f in ["root.json", "profiles.toml", "keys/release.pub"] {
        assert!(etc.join(f).is_file(), "{f}");
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &fs::metadata(etc.join("keys/release.key"))
            .expect("key")
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "release.key is {mode:o}");
    assert!(dir.path().join("data/ca/ca.pem").is_file());

    // Run again: refused without --force; with it, keys and trust root are kept.
    let again = init(&ns, dir.path(), &["--probe-secs", "1"]);
    assert!(!again.status.success());
    let root_before = fs::read(etc.join("root.json")).expect("root.json");
    let forced = json_of(&init(&ns, dir.path(), &["--probe-secs", "1", "--force"]));
    assert_eq!(
        fs::read(etc.join("root.json")).expect("root.json"),
        root_before
    );
    assert!(
        forced["kept"].to_string().contains("release.key"),
        "{forced:#}"
    );

    let serve = serves(&mut ns, dir.path());
    // A real DHCP client on the link gets an address from init's pool.
    let client = ns.add_neighbour("client", "10.77.0.3/24");
    let out = Command::new("ip")
        .args(["netns", "exec", &client])
        .args([
            "udhcpc",
            "-i",
            "eth0",
            "-n",
            "-q",
            "-f",
            "-t",
            "5",
            "-T",
            "2",
            "-s",
            "/bin/true",
        ])
        .output()
        .expect("run udhcpc");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "udhcpc: {text}");
    let leased = text
        .split_whitespace()
        .skip_while(|w| *w != "of")
        .nth(1)
        .and_then(|a| a.parse::<std::net::Ipv4Addr>().ok())
        .unwrap_or_else(|| panic!("no lease in: {text}"));
    assert!(
        (u32::from(std::net::Ipv4Addr::new(10, 77, 0, 128))
            ..=u32::from(std::net::Ipv4Addr::new(10, 77, 0, 254)))
            .contains(&u32::from(leased)),
        "{leased} outside the pool: {text}"
    );
    serve.stop(&mut ns);
}
