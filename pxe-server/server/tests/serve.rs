//! `tugboot serve` and `tugboot check-config` end to end on loopback, no privileges needed:
//! the real binary, a signed image built with the real CLI, HTTP and TFTP spoken over sockets,
//! a DHCP DISCOVER whose unknown machine must land in the store, SIGHUP publishing a manifest
//! added after start, SIGTERM stopping everything cleanly.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

fn tugboot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tugboot"))
        .args(args)
        .output()
        .expect("run tugboot")
}

fn ok(args: &[&str]) -> String {
    let out = tugboot(args);
    assert!(
        out.status.success(),
        "tugboot {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(dhcp_port: u16) -> Self {
        let s = Setup {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        for d in ["data/manifests", "staging", "tftp"] {
            fs::create_dir_all(s.path(d)).expect("mkdir");
        }
        ok(&["keys", "generate", "--out", &s.p("signer")]);
        ok(&[
            "keys",
            "root",
            "init",
            "--key",
            &s.p("signer.pub"),
            "--sign",
            &s.p("signer.key"),
            "--out",
            &s.p("root.json"),
        ]);
        fs::write(s.path("tftp/hello.bin"), bytes(1300, 9)).expect("write");
        fs::write(
            s.path("profiles.toml"),
            "default_profile = \"demo\"\n[profiles.demo]\nimage = \"demo\"\ncmdline = \"console=ttyS0\"\n",
        )
        .expect("write");
        fs::write(
            s.path("serve.toml"),
            format!(
                r#"
data_dir = "data"
trust_root = "root.json"
profiles = "profiles.toml"

[network]
address = "127.0.0.1"

[dhcp]
mode = "authoritative"
port = {dhcp_port}
pxe_port = false
[[dhcp.subnets]]
network = "127.0.0.0/8"
pools = [{{ start = "127.0.0.100", end = "127.0.0.200" }}]

[tftp]
root = "tftp"
listen = "127.0.0.1:0"

[http]
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:8080"
"#
            ),
        )
        .expect("write");
        s
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Builds and signs image `demo` version `version`; returns the kernel bytes and digest.
    fn image(&self, version: u64, out: &str) -> (Vec<u8>, String) {
        let kernel = bytes(
            70_000 + usize::try_from(version).expect("small"),
            100 + u32::try_from(version).expect("small"),
        );
        let kpath = self.path(&format!("staging/kernel-{version}"));
        fs::write(&kpath, &kernel).expect("write kernel");
        ok(&[
            "image",
            "build",
            "--kernel",
            &kpath.display().to_string(),
            "--cmdline",
            "quiet",
            "--name",
            "demo",
            "--version",
            &version.to_string(),
            "--board",
            "x86_64-bios",
            "--sign",
            &self.p("signer.key"),
            "--store",
            &self.p("data/blobs"),
            "--out",
            &self.p(out),
            "--quiet",
        ]);
        let inspect: Value =
            serde_json::from_str(&ok(&["image", "inspect", "--json", &self.p(out)])).expect("json");
        let digest = inspect["manifest"]["artifacts"]
            .as_array()
            .expect("artifacts")
            .iter()
            .find(|a| a["role"] == "kernel")
            .and_then(|a| a["sha256"].as_str())
            .expect("kernel digest")
            .to_owned();
        (kernel, digest)
    }
}

/// The running server; killed on drop if the test fails before stopping it.
struct Serve {
    child: Child,
    log: mpsc::Receiver<String>,
    lines: Vec<String>,
    http: SocketAddr,
    tftp: SocketAddr,
}

impl Serve {
    fn start(config: &Path) -> Self {
        let common::Started {
            child,
            log,
            lines,
            ready,
        } = common::start_serve(config);
        let addr = |k: &str| -> SocketAddr {
            ready["fields"][k]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no {k} address in {ready}"))
        };
        Serve {
            http: addr("http"),
            tftp: addr("tftp"),
            child,
            log,
            lines,
        }
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
    }

    fn drain(&mut self) {
        self.lines.extend(self.log.try_iter());
    }

    fn stop(mut self) -> String {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Ok(l) = self
            .log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.lines.push(l);
        }
        let status = self.child.wait().expect("wait");
        let log = self.lines.join("\n");
        assert!(status.success(), "serve exited with {status}:\n{log}");
        log
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One HTTP/1.1 GET; returns the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read");
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "expected a Content-Length body: {head}"
    );
    (status, resp[split + 4..].to_vec())
}

/// A whole TFTP read (RFC 1350, 512-byte blocks, no options).
fn tftp_get(server: SocketAddr, name: &str) -> Vec<u8> {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut rrq = vec![0, 1];
    rrq.extend_from_slice(name.as_bytes());
    rrq.push(0);
    rrq.extend_from_slice(b"octet\0");
    sock.send_to(&rrq, server).expect("send rrq");
    let mut out = Vec::new();
    let mut buf = [0u8; 600];
    let mut expect: u16 = 1;
    loop {
        let (n, from) = sock.recv_from(&mut buf).expect("tftp data");
        assert_eq!(&buf[..2], &[0, 3], "not DATA: {:?}", &buf[..n]);
        assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), expect);
        out.extend_from_slice(&buf[4..n]);
        sock.send_to(&[0, 4, buf[2], buf[3]], from).expect("ack");
        if n < 4 + 512 {
            return out;
        }
        expect += 1;
    }
}

/// A BIOS PXE ROM's DHCPDISCOVER (broadcast flag, option 60 PXEClient, option 93 = 0).
fn discover(mac: [u8; 6]) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    p[10] = 0x80; // broadcast flag
    p[28..34].copy_from_slice(&mac);
    p.extend_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(&[53, 1, 1]);
    let vc = b"PXEClient:Arch:00000:UNDI:002001";
    p.extend_from_slice(&[60, u8::try_from(vc.len()).expect("short")]);
    p.extend_from_slice(vc);
    p.extend_from_slice(&[93, 2, 0, 0, 255]);
    p
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

#[test]
fn serve_answers_http_tftp_and_dhcp_then_publishes_on_sighup_and_stops_on_sigterm() {
    let dhcp_port = free_udp_port();
    let s = Setup::new(dhcp_port);
    let (kernel1, digest1) = s.image(1, "data/manifests/demo-1.json");
    let (kernel2, digest2) = s.image(2, "staging/demo-2.json");

    let mut serve = Serve::start(&s.path("serve.toml"));

    // HTTP: bootstrap, per-machine script, a published artifact; an unpublished one is 404.
    let (st, body) = get(serve.http, "/boot.ipxe");
    assert_eq!(st, 200);
    assert!(
        body.starts_with(b"#!ipxe"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (st, script) = get(serve.http, "/ipxe?mac=52-54-00-00-00-07");
    let script = String::from_utf8_lossy(&script).into_owned();
    assert_eq!(st, 200, "{script}");
    assert!(
        script.contains(&format!("http://127.0.0.1:8080/artifacts/sha256/{digest1}")),
        "{script}"
    );
    assert_eq!(
        get(serve.http, &format!("/artifacts/sha256/{digest1}")),
        (200, kernel1)
    );
    assert_eq!(
        get(serve.http, &format!("/artifacts/sha256/{digest2}")).0,
        404
    );

    // TFTP.
    assert_eq!(tftp_get(serve.tftp, "hello.bin"), bytes(1300, 9));

    // DHCP: a PXE ROM nobody knows; it must be recorded in the store.
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    client
        .send_to(
            &discover([0x52, 0x54, 0, 0xab, 0xcd, 0xef]),
            ("127.0.0.1", dhcp_port),
        )
        .expect("send discover");

    // SIGHUP publishes a manifest added after start; the latest version then wins.
    fs::copy(
        s.path("staging/demo-2.json"),
        s.path("data/manifests/demo-2.json"),
    )
    .expect("copy");
    serve.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, body) = get(serve.http, &format!("/artifacts/sha256/{digest2}"));
        if st == 200 {
            assert_eq!(body, kernel2);
            break;
        }
        serve.drain();
        assert!(
            Instant::now() < deadline,
            "v2 never published after SIGHUP:\n{}",
            serve.lines.join("\n")
        );
        thread::sleep(Duration::from_millis(50));
    }
    let (_, script) = get(serve.http, "/ipxe?mac=52-54-00-00-00-07");
    assert!(String::from_utf8_lossy(&script).contains(&digest2));

    // Wait for the boot record before stopping (asynchronous to us; observations of the
    // DHCP client are written at the latest when the server stops).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !serve
        .lines
        .iter()
        .any(|l| l.contains("boot recorded") && l.contains("demo@2"))
    {
        assert!(
            Instant::now() < deadline,
            "no sighting:\n{}",
            serve.lines.join("\n")
        );
        if let Ok(l) = serve.log.recv_timeout(Duration::from_millis(200)) {
            serve.lines.push(l);
        }
    }
    // One scrape target: HTTP, TFTP and DHCP counters on the HTTP server's /metrics. A
    // malformed DHCP packet is dropped and counted.
    client
        .send_to(b"\x01\x01\x06", ("127.0.0.1", dhcp_port))
        .expect("send garbage");
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (st, body) = get(serve.http, "/metrics");
        assert_eq!(st, 200);
        let text = String::from_utf8_lossy(&body).into_owned();
        if text.contains("tugboot_dhcp_packets_malformed_total 1\n") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "malformed packet not counted:\n{text}"
        );
        thread::sleep(Duration::from_millis(50));
    };
    for line in [
        "tugboot_dhcp_packets_received_total 2\n",
        "tugboot_tftp_transfers_completed_total 1\n",
        "tugboot_tftp_bytes_sent_total 1300\n",
        "tugboot_tftp_active_transfers 0\n",
    ] {
        assert!(metrics.contains(line), "{line:?} missing:\n{metrics}");
    }
    assert!(
        metrics.contains("tugboot_http_requests_total "),
        "{metrics}"
    );

    let log = serve.stop();
    assert!(log.contains("tugboot serve: stopped"), "{log}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let machine = rt.block_on(async {
        use tugboot_store::Store;
        let store = tugboot_store::AnyStore::open(&s.p("data/tugboot.sqlite"))
            .await
            .expect("store");
        let m = store
            .find_machine_by_mac("52:54:00:ab:cd:ef".parse().expect("mac"))
            .await
            .expect("query");
        // The machine that fetched its iPXE script: who booted what.
        let booted = store
            .find_machine_by_mac("52:54:00:00:00:07".parse().expect("mac"))
            .await
            .expect("query");
        store.close().await;
        (m, booted)
    });
    let (machine, booted) = machine;
    let machine = machine.unwrap_or_else(|| panic!("unknown machine not recorded:\n{log}"));
    // What DHCP observed, with its provenance.
    let arch = machine.facts.get("arch").expect("arch observed by DHCP");
    assert_eq!(arch.source.as_str(), "observed:dhcp");
    let booted = booted.unwrap_or_else(|| panic!("booting machine not recorded:\n{log}"));
    assert_eq!(booted.last_booted_image.as_deref(), Some("demo@2"), "{log}");
}

#[test]
fn a_manifest_that_does_not_verify_is_skipped_and_the_rest_is_served() {
    let s = Setup::new(free_udp_port());
    let (_, good) = s.image(1, "data/manifests/a-good.json");
    // A manifest signed by a key the trust root does not know.
    ok(&["keys", "generate", "--out", &s.p("stranger")]);
    fs::write(s.path("staging/k"), bytes(5000, 3)).expect("write");
    ok(&[
        "image",
        "build",
        "--kernel",
        &s.p("staging/k"),
        "--name",
        "evil",
        "--version",
        "9",
        "--board",
        "x86_64-bios",
        "--sign",
        &s.p("stranger.key"),
        "--store",
        &s.p("data/blobs"),
        "--out",
        &s.p("data/manifests/b-evil.json"),
        "--quiet",
    ]);
    let evil: Value = serde_json::from_str(&ok(&[
        "image",
        "inspect",
        "--json",
        &s.p("data/manifests/b-evil.json"),
    ]))
    .expect("json");
    let evil = evil["manifest"]["artifacts"][0]["sha256"]
        .as_str()
        .expect("digest")
        .to_owned();
    let serve = Serve::start(&s.path("serve.toml"));
    assert_eq!(get(serve.http, &format!("/artifacts/sha256/{good}")).0, 200);
    assert_eq!(get(serve.http, &format!("/artifacts/sha256/{evil}")).0, 404);
    let log = serve.stop();
    assert!(
        log.contains("manifest NOT published") && log.contains("b-evil.json"),
        "{log}"
    );
}

#[test]
fn check_config_prints_the_resolved_form_and_refuses_bad_files() {
    let s = Setup::new(6767);
    let json: Value = serde_json::from_str(&ok(&[
        "check-config",
        "--json",
        "--config",
        &s.p("serve.toml"),
    ]))
    .expect("json");
    assert_eq!(json["ok"], true);
    assert_eq!(json["dhcp"]["port"], 6767);
    assert_eq!(json["dhcp"]["ipxe_script"], "/boot.ipxe");
    assert_eq!(json["store"], s.p("data/tugboot.sqlite"));
    assert_eq!(json["tftp"]["max_blksize"], 1468);
    let human = ok(&["check-config", "--config", &s.p("serve.toml")]);
    assert!(
        human.contains("http.public_url = http://127.0.0.1:8080"),
        "{human}"
    );
    assert!(
        human.contains("dhcp.subnets[0].network = 127.0.0.0/8"),
        "{human}"
    );

    // Unknown key: non-zero exit, one line naming it.
    let text = fs::read_to_string(s.path("serve.toml")).expect("read");
    fs::write(
        s.path("bad.toml"),
        text.replace("[tftp]", "[tftp]\nroot_dir = \"x\""),
    )
    .expect("write");
    let out = tugboot(&["check-config", "--config", &s.p("bad.toml")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `root_dir`"), "{err}");
    // A trust root that is not one.
    fs::write(s.path("root.json"), b"{}").expect("write");
    let out = tugboot(&["check-config", "--config", &s.p("serve.toml")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("trust root"));
    // serve refuses to start on the same file.
    let out = tugboot(&["serve", "--config", &s.p("serve.toml")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("trust root"));
}
