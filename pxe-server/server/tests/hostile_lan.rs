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

mod vm;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use vm::{Netns, Serve, require_root_and_tools, run, tugboot};

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
    t(&["keys", "generate", "--out", &p("signer")]);
    t(&[
        "keys",
        "root",
        "init",
        "--key",
        &p("signer.pub"),
        "--sign",
        &p("signer.key"),
        "--out",
        &p("root.json"),
    ]);
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

const HALF_OPEN: &str = r#"
import socket, sys, time
target, n, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
held, opened, refused = [], 0, 0
end = time.time() + secs
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
