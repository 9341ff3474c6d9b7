//! Hostile LAN (issue #11), root only: `tugboot serve` (HTTP and the device API) in a network
//! namespace, an attacker and a real client in two more on the same bridge. During each flood
//! the real client (curl) is served correctly; the test prints its latency p50/p99 idle and
//! during the attack, and the server's RSS and open files, and asserts functional bounds only
//! (every request served, open files within the connection caps, the waiting list capped).
//!
//! - HTTP half-open flood: the attacker keeps up to 1000 connections open that send half a
//!   request header and nothing more (re-opening those the server closes).
//! - Enrollment flood: four attacker threads POST token-less enrollments with invented MACs
//!   as fast as they can; meanwhile a real client enrolls with a token.
//! - All of DHCP, TFTP and HTTP at once (the whole `tugboot serve` of `vm::fleet`, DHCP
//!   authoritative): DISCOVERs from rotating spoofed MACs, never-acknowledged TFTP RRQs and
//!   half-open HTTP connections from one attacker, while two QEMU machines the server never saw
//!   netboot (SeaBIOS + iPXE ROM; OVMF PXE → TFTP `snponly.efi` → iPXE), busybox `udhcpc` gets
//!   a lease, `atftp` downloads `snponly.efi` byte-identical and curl fetches `/boot.ipxe` —
//!   the same round first on an idle server, for comparison.

mod vm;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use vm::fleet::{FleetLab, X86_MARKER, assert_own_cmdline};
use vm::{Firmware, Netns, Serve, require_root_and_tools, run, tugboot};

const SERVER: &str = "10.77.0.1";
const PER_PEER_HTTP: usize = 32;
const PER_PEER_API: usize = 64;
const MAX_PENDING: usize = 50;

fn setup(dir: &Path) -> std::path::PathBuf {
    let t = |args: &[&str]| {
        run(Command::new(tugboot()).args(args).arg("--quiet"));
    };
    let p = |name: &str| dir.join(name).display().to_string();
    fs::create_dir_all(dir.join("data/manifests")).expect("mkdir");
    vm::signing_root(dir);
    t(&["ca", "init", "--dir", &p("data/ca")]);
    let config = dir.join("serve.toml");
    fs::write(
        &config,
        format!(
            r#"
data_dir = "data"
trust_root = "root.json"

[network]
interface = "br0"
address = "{SERVER}"

[http]
listen = "{SERVER}:8080"
max_connections_per_peer = {PER_PEER_HTTP}

[api]
listen = "{SERVER}:8443"
max_connections_per_peer = {PER_PEER_API}
max_pending_enrollments = {MAX_PENDING}
"#
        ),
    )
    .expect("write config");
    config
}

/// `n` requests from the client namespace with curl, one after another; returns each one's
/// total time in milliseconds. Every one must succeed (curl `--fail`, exit 0).
fn curl_times(ns: &str, args: &[&str], n: usize) -> Vec<f64> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "curl",
                "--silent",
                "--show-error",
                "--fail",
            ])
            .args(["--max-time", "10", "-o", "/dev/null", "-w", "%{time_total}"])
            .args(args)
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "request {i} of the real client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let secs: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("curl time");
        times.push(secs * 1000.0);
    }
    times
}

/// The `permille`-th per-mille value (nearest rank).
fn pct(times: &[f64], permille: usize) -> f64 {
    let mut v = times.to_vec();
    v.sort_by(f64::total_cmp);
    v[(v.len() - 1) * permille / 1000]
}

fn status_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn open_files(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Half-open HTTP connections: `target n secs`; SIGTERM ends it early (with its report).
const HALF_OPEN: &str = r#"
import signal, socket, sys, time
target, n, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
held, opened, refused = [], 0, 0
end = time.time() + secs
signal.signal(signal.SIGTERM, lambda *a: globals().update(end=0))
while time.time() < end:
    while len(held) < n and time.time() < end:
        s = socket.socket()
        s.settimeout(0.2)
        try:
            s.connect((target, 8080))
            s.sendall(b"GET /boot.ipxe HTTP/1.1\r\nHost: x\r\n")
            held.append(s)
            opened += 1
        except OSError:
            s.close()
            refused += 1
    alive = []
    for s in held:
        s.settimeout(0.0)
        try:
            if s.recv(1) == b"":
                s.close(); refused += 1
                continue
        except BlockingIOError:
            pass
        except OSError:
            s.close(); refused += 1
            continue
        alive.append(s)
    held = alive
    time.sleep(0.05)
print(f"opened={opened} closed_by_server={refused} held_at_end={len(held)}")
"#;

const ENROLL_FLOOD: &str = r#"
import json, random, socket, ssl, sys, threading, time
target, csr_file, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
csr = open(csr_file).read()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
counts = {}
lock = threading.Lock()
def worker():
    end = time.time() + secs
    while time.time() < end:
        mac = "02:%02x:%02x:%02x:%02x:%02x" % tuple(random.randrange(256) for _ in range(5))
        body = json.dumps({"csr": csr, "mac": mac}).encode()
        req = (b"POST /api/v1/enroll HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
        try:
            with socket.create_connection((target, 8443), timeout=5) as raw:
                with ctx.wrap_socket(raw) as s:
                    s.sendall(req)
                    status = s.recv(64).split(b" ")[1].decode()
        except Exception as e:
            status = type(e).__name__
        with lock:
            counts[status] = counts.get(status, 0) + 1
threads = [threading.Thread(target=worker) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())))
"#;

fn csr(dir: &Path, tag: &str) -> String {
    let key = dir.join(format!("{tag}.key"));
    let out = dir.join(format!("{tag}.csr"));
    run(Command::new("openssl")
        .args([
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
        ])
        .arg(&key));
    run(Command::new("openssl")
        .args(["req", "-new", "-subj", "/CN=x", "-key"])
        .arg(&key)
        .arg("-out")
        .arg(&out));
    out.display().to_string()
}

#[test]
#[ignore = "root: network namespaces"]
fn real_clients_are_served_during_http_and_enrollment_floods() {
    require_root_and_tools(&["ip", "curl", "python3", "openssl"], &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = setup(dir.path());
    let mut ns = Netns::new("hostile");
    let attacker = ns.add_neighbour("atk", "10.77.0.66/24");
    let client = ns.add_neighbour("cli", "10.77.0.20/24");
    let mut serve = Serve::start(&mut ns, &config);
    let pid = serve.pid;
    let url = format!("http://{SERVER}:8080/boot.ipxe");

    // ---- HTTP: half-open connection flood ----
    let idle = curl_times(&client, &[&url], 60);
    let (rss_idle, fds_idle) = (status_kib(pid, "VmRSS:"), open_files(pid));
    let flood = Command::new("ip")
        .args([
            "netns", "exec", &attacker, "python3", "-c", HALF_OPEN, SERVER, "1000", "25",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("attacker");
    std::thread::sleep(Duration::from_secs(3));
    let during = curl_times(&client, &[&url], 60);
    let (rss_flood, fds_flood) = (status_kib(pid, "VmRSS:"), open_files(pid));
    let out = flood.wait_with_output().expect("attacker");
    let report = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    eprintln!(
        "HTTP half-open flood ({report}): /boot.ipxe p50 {:.1} ms p99 {:.1} ms idle, \
         p50 {:.1} ms p99 {:.1} ms during; RSS {rss_idle} → {rss_flood} KiB; \
         open files {fds_idle} → {fds_flood}",
        pct(&idle, 500),
        pct(&idle, 990),
        pct(&during, 500),
        pct(&during, 990),
    );
    assert!(
        fds_flood <= fds_idle + PER_PEER_HTTP + 8,
        "open files {fds_idle} → {fds_flood}: more than the attacker's cap"
    );
    assert!(report.contains("closed_by_server="), "{report}");

    // ---- Device API: enrollment flood ----
    let ca = dir.path().join("data/ca/ca.pem").display().to_string();
    let op_token = fs::read_to_string(dir.path().join("data/api/operator-token"))
        .expect("operator token")
        .trim()
        .to_owned();
    let auth = format!("Authorization: Bearer {op_token}");
    let api = format!("https://{SERVER}:8443");
    let token_out = Command::new("ip")
        .args([
            "netns", "exec", &client, "curl", "--silent", "--fail", "--cacert", &ca,
        ])
        .args([
            "-H",
            &auth,
            "-X",
            "POST",
            &format!("{api}/api/v1/admin/enrollment-tokens"),
        ])
        .output()
        .expect("curl");
    assert!(token_out.status.success(), "token: {token_out:?}");
    let token: serde_json::Value = serde_json::from_slice(&token_out.stdout).expect("json");
    let token = token["token"].as_str().expect("token").to_owned();
    let attacker_csr = csr(dir.path(), "attacker");
    let client_csr = fs::read_to_string(csr(dir.path(), "client")).expect("csr");
    let health = format!("{api}/healthz");
    let idle = curl_times(&client, &["--cacert", &ca, &health], 30);
    let rss_idle = status_kib(pid, "VmRSS:");
    let flood = Command::new("ip")
        .args([
            "netns",
            "exec",
            &attacker,
            "python3",
            "-c",
            ENROLL_FLOOD,
            SERVER,
            &attacker_csr,
            "20",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("attacker");
    std::thread::sleep(Duration::from_secs(3));
    let during = curl_times(&client, &["--cacert", &ca, &health], 30);
    let body = serde_json::json!({"csr": client_csr, "mac": "02:00:00:00:00:20", "token": token})
        .to_string();
    let enrolled = Command::new("ip")
        .args([
            "netns",
            "exec",
            &client,
            "curl",
            "--silent",
            "--show-error",
            "--cacert",
            &ca,
        ])
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
        ])
        .arg(format!("{api}/api/v1/enroll"))
        .output()
        .expect("curl");
    let rss_flood = status_kib(pid, "VmRSS:");
    let out = flood.wait_with_output().expect("attacker");
    let report = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let answer: serde_json::Value =
        serde_json::from_slice(&enrolled.stdout).unwrap_or(serde_json::Value::Null);
    assert_eq!(
        answer["status"],
        "issued",
        "the real client's enrollment during the flood: {}",
        String::from_utf8_lossy(&enrolled.stdout)
    );
    eprintln!(
        "enrollment flood ({report}): /healthz p50 {:.1} ms p99 {:.1} ms idle, \
         p50 {:.1} ms p99 {:.1} ms during; RSS {rss_idle} → {rss_flood} KiB",
        pct(&idle, 500),
        pct(&idle, 990),
        pct(&during, 500),
        pct(&during, 990),
    );
    assert!(
        report.contains("503="),
        "the waiting list never filled: {report}"
    );
    let machines = Command::new("ip")
        .args([
            "netns", "exec", &client, "curl", "--silent", "--fail", "--cacert", &ca,
        ])
        .args(["-H", &auth, &format!("{api}/api/v1/admin/machines")])
        .output()
        .expect("curl");
    let list: serde_json::Value = serde_json::from_slice(&machines.stdout).expect("json");
    let n = list.as_array().map_or(0, Vec::len);
    assert!(
        n <= MAX_PENDING + 1,
        "{n} machines: the flood got past the waiting-list cap of {MAX_PENDING}"
    );
    serve.drain();
    serve.stop(&mut ns);
}

/// Never-acknowledged TFTP read requests: `target file rate`, from 64 source ports of one
/// host, each RRQ asking for the largest block size and the longest timeout; answers are
/// counted, never acknowledged. Runs until SIGTERM, then prints its report.
const TFTP_FLOOD: &str = r#"
import signal, socket, sys, time
target, name, rate = sys.argv[1], sys.argv[2].encode(), float(sys.argv[3])
stop = [False]
signal.signal(signal.SIGTERM, lambda *a: stop.__setitem__(0, True))
socks = []
for _ in range(64):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    socks.append(s)
rrq = b"\x00\x01" + name + b"\x00octet\x00blksize\x001468\x00timeout\x00255\x00tsize\x000\x00"
sent, answers = 0, {}
start = time.time()
def drain():
    for s in socks:
        while True:
            try:
                data = s.recv(2048)
            except BlockingIOError:
                break
            op = {3: "data", 5: "error", 6: "oack"}.get(data[1] if len(data) > 1 else 0, "other")
            answers[op] = answers.get(op, 0) + 1
while not stop[0]:
    socks[sent % len(socks)].sendto(rrq, (target, 69))
    sent += 1
    if sent % 50 == 0:
        drain()
    time.sleep(max(0.0, start + sent / rate - time.time()))
drain()
secs = time.time() - start
print(f"rrqs={sent} in {secs:.0f}s ({sent / secs:.0f}/s) answers: " +
      " ".join(f"{k}={v}" for k, v in sorted(answers.items())))
"#;

/// What one real client saw in a round: the two VMs' boot times, the other clients' times.
#[derive(Debug)]
struct Round {
    bios_s: f64,
    uefi_s: f64,
    udhcpc_ms: f64,
    atftp_ms: f64,
    curl_ms: Vec<f64>,
}

fn timed(cmd: &mut Command, what: &str) -> (f64, String) {
    let t = std::time::Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed: {text}");
    (ms, text)
}

/// One round of real clients: a BIOS and a UEFI machine (new MACs) powered on together; while
/// they boot, udhcpc, atftp and 30 × curl from the client namespace.
fn real_clients_round(lab: &mut FleetLab, client: &str, n: u8) -> Round {
    let bios_mac = format!("52:54:00:f5:00:{:02x}", 2 * n + 1);
    let uefi_mac = format!("52:54:00:f5:00:{:02x}", 2 * n + 2);
    let mut bios = lab.power_on(Firmware::Bios, &bios_mac, &format!("tap{}", 2 * n + 1));
    let mut uefi = lab.power_on(Firmware::Uefi, &uefi_mac, &format!("tap{}", 2 * n + 2));
    let in_client = |program: &str| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", client, program]);
        c
    };
    let (udhcpc_ms, out) = timed(
        in_client("busybox").args([
            "udhcpc",
            "-i",
            "eth0",
            "-f",
            "-q",
            "-n",
            "-t",
            "10",
            "-T",
            "1",
            "-s",
            "/bin/true",
        ]),
        "udhcpc",
    );
    assert!(out.contains("lease of 10.77.0."), "udhcpc: {out}");
    let got = lab.path(&format!("atftp-{n}.efi"));
    let (atftp_ms, _) = timed(
        in_client("atftp").args(["--get", "-r", "snponly.efi", "-l", &got, SERVER]),
        "atftp",
    );
    assert!(
        fs::read(&got).expect("atftp's file") == fs::read(lab.path("tftp/snponly.efi")).unwrap(),
        "atftp got other bytes than the server's snponly.efi"
    );
    let curl_ms = curl_times(client, &[&format!("http://{SERVER}:8080/boot.ipxe")], 30);
    let bios_t = bios.wait_for(X86_MARKER, &mut lab.serve);
    assert_own_cmdline(&bios, &bios_mac);
    let uefi_t = uefi.wait_for(X86_MARKER, &mut lab.serve);
    assert_own_cmdline(&uefi, &uefi_mac);
    bios.stop(&mut lab.ns);
    uefi.stop(&mut lab.ns);
    Round {
        bios_s: bios_t.marker.as_secs_f64(),
        uefi_s: uefi_t.marker.as_secs_f64(),
        udhcpc_ms,
        atftp_ms,
        curl_ms,
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); after the command name, state is the first.
    fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
}

#[test]
#[ignore = "root: network namespaces + QEMU"]
fn machines_netboot_during_dhcp_tftp_and_http_floods() {
    require_root_and_tools(&["ip", "curl", "python3", "atftp", "busybox"], &[]);
    let flooder = std::path::Path::new(tugboot()).with_file_name("tugboot-dhcp-flood");
    assert!(
        flooder.exists(),
        "{} is missing: `cargo build -p tugboot-dhcp --features shell --bin tugboot-dhcp-flood` (cargo test \
         --workspace --all-features builds it)",
        flooder.display()
    );
    let mut lab = FleetLab::start("authoritative", "hostvm");
    let attacker = lab.ns.add_neighbour("atk", "10.77.0.66/24");
    let client = lab.ns.add_neighbour("cli", "10.77.0.20/24");
    let pid = lab.serve.pid;

    let idle = real_clients_round(&mut lab, &client, 0);
    let (rss_idle, fds_idle) = (status_kib(pid, "VmRSS:"), open_files(pid));

    let in_attacker = |program: &str| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &attacker, program]);
        c.stdout(Stdio::piped()).stderr(Stdio::null());
        c
    };
    let mut dhcp = in_attacker(flooder.to_str().expect("path"))
        .args([
            "--interface",
            "eth0",
            "--count",
            "1000000",
            "--rate",
            "1000",
        ])
        .args(["--mac-prefix", "02:66:00"])
        .spawn()
        .expect("DHCP flood");
    let tftp = in_attacker("python3")
        .args(["-c", TFTP_FLOOD, SERVER, "snponly.efi", "500"])
        .spawn()
        .expect("TFTP flood");
    let http = in_attacker("python3")
        .args(["-c", HALF_OPEN, SERVER, "1000", "600"])
        .spawn()
        .expect("HTTP flood");
    std::thread::sleep(Duration::from_secs(3));
    let (cpu_before, wall) = (cpu_ticks(pid), std::time::Instant::now());
    let during = real_clients_round(&mut lab, &client, 1);
    let cpu = (cpu_ticks(pid) - cpu_before) as f64 / 100.0 / wall.elapsed().as_secs_f64();
    let (rss_flood, fds_flood, hwm) = (
        status_kib(pid, "VmRSS:"),
        open_files(pid),
        status_kib(pid, "VmHWM:"),
    );
    for child in [&tftp, &http] {
        run(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    }
    let _ = dhcp.kill();
    let dhcp_out = dhcp.wait_with_output().expect("DHCP flood");
    let sent = String::from_utf8_lossy(&dhcp_out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    let tftp_report = String::from_utf8_lossy(&tftp.wait_with_output().expect("tftp").stdout)
        .trim()
        .to_owned();
    let http_report = String::from_utf8_lossy(&http.wait_with_output().expect("http").stdout)
        .trim()
        .to_owned();
    let bound = lab.bound_addresses();
    let flood_bound = bound.keys().filter(|m| m.starts_with("02:66:00")).count();
    println!(
        "floods at once: DHCP {sent} DISCOVERs from rotating MACs (1,000/s); TFTP {tftp_report}; \
         HTTP half-open {http_report}\n\
         | | idle | during the floods |\n|---|---|---|\n\
         | BIOS iPXE boot to userspace | {:.1} s | {:.1} s |\n\
         | UEFI PXE → iPXE boot to userspace | {:.1} s | {:.1} s |\n\
         | udhcpc lease | {:.0} ms | {:.0} ms |\n\
         | atftp snponly.efi (1 MiB) | {:.0} ms | {:.0} ms |\n\
         | curl /boot.ipxe p50 / p99 | {:.1} / {:.1} ms | {:.1} / {:.1} ms |\n\
         server RSS {rss_idle} → {rss_flood} KiB (peak {hwm} KiB), open files {fds_idle} → \
         {fds_flood}, CPU {:.0} % of one core during the round; {} addresses bound ({flood_bound} \
         to flood MACs)",
        idle.bios_s,
        during.bios_s,
        idle.uefi_s,
        during.uefi_s,
        idle.udhcpc_ms,
        during.udhcpc_ms,
        idle.atftp_ms,
        during.atftp_ms,
        pct(&idle.curl_ms, 500),
        pct(&idle.curl_ms, 990),
        pct(&during.curl_ms, 500),
        pct(&during.curl_ms, 990),
        cpu * 100.0,
        bound.len(),
    );
    assert_eq!(flood_bound, 0, "DISCOVERs alone bound addresses: {bound:?}");
    assert!(
        fds_flood <= fds_idle + 32 + 8 + 32,
        "open files {fds_idle} → {fds_flood}: the attacker's HTTP (32) and TFTP (8) caps and the real clients' (32) exceeded"
    );
    assert!(
        tftp_report.contains("error="),
        "the TFTP flood was never refused: {tftp_report}"
    );
    lab.stop();
}
