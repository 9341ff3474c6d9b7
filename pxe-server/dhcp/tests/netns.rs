//! Conformance over a real network stack: busybox `udhcpc` and ISC `dhclient` get,
//! renew / reboot and release leases from `tugboot-dhcpd`, each test inside two
//! network namespaces it creates (a veth pair between them) and always deletes.
//! Needs root, `ip` and the client: `#[ignore]`d in a plain `cargo test`, run by `tests/run`
//! as root with `--ignored` (and fail loudly there if anything is missing).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Netns {
    names: Vec<String>,
    children: Vec<Child>,
    /// Daemons that detach (dhclient): killed through their pid files.
    pid_files: Vec<PathBuf>,
    dir: PathBuf,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for p in &self.pid_files {
            if let Ok(pid) = std::fs::read_to_string(p) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("spawn");
    assert!(st.success(), "command failed: {args:?}");
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Polls `path` until it contains `needle` (a wait with a generous deadline, not a
/// timing assertion).
fn wait_for(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two namespaces joined by a veth pair, `tugboot-dhcpd` serving in the first.
/// Returns the guard, the client namespace, the work directory and the lease file.
fn lab(tag: &str) -> (Netns, String, PathBuf, PathBuf) {
    let id = std::process::id();
    let (srv, cli) = (format!("tb{tag}-s-{id}"), format!("tb{tag}-c-{id}"));
    let dir = std::env::temp_dir().join(format!("tbdhcp-{tag}-{id}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut ns = Netns {
        names: vec![srv.clone(), cli.clone()],
        children: Vec::new(),
        pid_files: Vec::new(),
        dir: dir.clone(),
    };
    sh(&["ip", "netns", "add", &srv]);
    sh(&["ip", "netns", "add", &cli]);
    sh(&[
        "ip", "-n", &srv, "link", "add", "vs", "type", "veth", "peer", "name", "vc", "netns", &cli,
    ]);
    sh(&["ip", "-n", &srv, "addr", "add", "10.99.0.1/24", "dev", "vs"]);
    sh(&["ip", "-n", &srv, "link", "set", "vs", "up"]);
    sh(&["ip", "-n", &srv, "link", "set", "lo", "up"]);
    sh(&["ip", "-n", &cli, "link", "set", "vc", "up"]);
    sh(&["ip", "-n", &cli, "link", "set", "lo", "up"]);

    let config = dir.join("dhcp.toml");
    std::fs::write(
        &config,
        r#"
mode = "authoritative"
server_address = "10.99.0.1"
http_base_url = "http://10.99.0.1:8080"
[[subnets]]
network = "10.99.0.0/24"
pools = [{ start = "10.99.0.100", end = "10.99.0.110" }]
router = "10.99.0.1"
lease_time_secs = 120
"#,
    )
    .expect("write config");
    let leases = dir.join("leases.jsonl");
    let mut server = Command::new("ip")
        .args(["netns", "exec", &srv, env!("CARGO_BIN_EXE_tugboot-dhcpd")])
        .arg("--config")
        .arg(&config)
        .arg("--leases")
        .arg(&leases)
        .args(["--interface", "vs", "--no-pxe-port"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tugboot-dhcpd");
    let stderr = server.stderr.take().expect("stderr");
    ns.children.push(server);
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let line = lines.next().expect("server exited early").expect("read");
        if line.contains("serving") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (ns, cli, dir, leases)
}

/// The `state` fields of the lease file, once its last record is `last` (or the
/// deadline passed).
fn lease_states(leases: &Path, last: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(leases).unwrap_or_default();
        let states: Vec<String> = text
            .lines()
            .filter_map(|l| l.split("\"state\":\"").nth(1))
            .filter_map(|s| s.split('"').next())
            .map(str::to_string)
            .collect();
        if states.last().is_some_and(|s| s == last) || Instant::now() > deadline {
            return states;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "root: network namespaces"]
fn udhcpc_gets_renews_and_releases_a_lease() {
    if !is_root() || !have("ip") || !have("busybox") {
        panic!("needs root, iproute2 and busybox (tests/setup installs them; run as root)");
    }
    let (mut ns, cli, dir, leases) = lab("u");
    let script = dir.join("udhcpc.sh");
    let log = dir.join("udhcpc.log");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$1 ip=$ip router=$router lease=$lease serverid=$serverid\" >> {log}\n\
             case \"$1\" in bound|renew) ip addr replace $ip/24 dev $interface ;; deconfig) ip addr flush dev $interface ;; esac\n",
            log = log.display()
        ),
    )
    .expect("script");
    sh(&["chmod", "+x", &script.to_string_lossy()]);
    let client = Command::new("ip")
        .args([
            "netns", "exec", &cli, "busybox", "udhcpc", "-f", "-i", "vc", "-t", "10", "-T", "1",
            "-s",
        ])
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start udhcpc");
    let pid = client.id().to_string();
    ns.children.push(client);

    let text = wait_for(&log, "bound ip=");
    assert!(
        text.contains("bound ip=10.99.0.100 router=10.99.0.1 lease=120 serverid=10.99.0.1"),
        "{text}"
    );
    // RENEWING: unicast REQUEST with ciaddr.
    sh(&["kill", "-USR1", &pid]);
    wait_for(&log, "renew ip=10.99.0.100");
    // RELEASE.
    sh(&["kill", "-USR2", &pid]);
    wait_for(&log, "deconfig");
    let states = lease_states(&leases, "released");
    eprintln!(
        "udhcpc log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(states, ["bound", "bound", "released"], "lease file records");
}

#[test]
#[ignore = "root: network namespaces"]
fn dhclient_gets_reboots_and_releases_a_lease() {
    if !is_root() || !have("ip") || !have("dhclient") {
        panic!("needs root, iproute2 and dhclient (tests/setup installs them; run as root)");
    }
    let (mut ns, cli, dir, leases) = lab("d");
    let script = dir.join("dhclient.sh");
    let log = dir.join("dhclient.log");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$reason ip=$new_ip_address lease=$new_dhcp_lease_time\" >> {log}\n\
             case \"$reason\" in BOUND|RENEW|REBIND|REBOOT) ip addr replace $new_ip_address/24 dev $interface ;; RELEASE|STOP|EXPIRE) ip addr flush dev $interface ;; esac\n",
            log = log.display()
        ),
    )
    .expect("script");
    sh(&["chmod", "+x", &script.to_string_lossy()]);
    let lf = dir.join("dhclient.leases");
    let pf = dir.join("dhclient.pid");
    ns.pid_files.push(pf.clone());
    let dhclient = |extra: &[&str]| {
        let st = Command::new("ip")
            .args(["netns", "exec", &cli, "dhclient", "-1", "-sf"])
            .arg(&script)
            .arg("-lf")
            .arg(&lf)
            .arg("-pf")
            .arg(&pf)
            .args(extra)
            .arg("vc")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run dhclient");
        assert!(st.success(), "dhclient {extra:?} failed");
    };
    // INIT: DISCOVER/OFFER/REQUEST/ACK; dhclient daemonises once bound.
    dhclient(&[]);
    wait_for(&log, "BOUND ip=10.99.0.100 lease=120");
    // Stop without releasing, start again: INIT-REBOOT (REQUEST with option 50).
    dhclient(&["-x"]);
    dhclient(&[]);
    wait_for(&log, "REBOOT ip=10.99.0.100");
    // RELEASE (and the daemon exits).
    dhclient(&["-r"]);
    wait_for(&log, "RELEASE");
    let states = lease_states(&leases, "released");
    eprintln!(
        "dhclient log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    eprintln!(
        "lease file:\n{}",
        std::fs::read_to_string(&leases).unwrap_or_default()
    );
    // INIT and INIT-REBOOT each bind (dhclient may retransmit its REBOOT REQUEST,
    // which is ACKed and recorded again), then the release.
    let (last, binds) = states.split_last().expect("records");
    assert_eq!(last, "released", "{states:?}");
    assert!(
        binds.len() >= 2 && binds.iter().all(|s| s == "bound"),
        "{states:?}"
    );
}
