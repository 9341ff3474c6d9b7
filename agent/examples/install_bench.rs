//! Installs a large artifact over HTTP from a local server into a slot file with the real agent
//! binary (`tugboot-agent install --manifest-url`), side by side with
//! `curl -s URL | tee >(sha256sum) | dd of=TARGET bs=1M`, and prints a table: seconds, MiB/s,
//! and peak RSS (from `/usr/bin/time -v`).
//!
//! ```text
//! cargo build --profile release-agent -p tugboot-agent --target x86_64-unknown-linux-musl
//! cargo run --release -p tugboot-agent --example install_bench -- \
//!     target/x86_64-unknown-linux-musl/release-agent/tugboot-agent [MiB] [runs] [plain|tls]
//! ```
//!
//! With `tls`, the server is rustls requiring a client certificate (made with rcgen), and both
//! curl and the agent present the device certificate. `BENCH_DIR` chooses where the artifact and
//! the slot file go (default: the temp directory).
//!
//! The agent's time includes what curl's pipeline does not do: `fsync` of the slot and reading
//! the whole slot back through SHA-256 before it is accepted. The table also shows the agent's
//! streaming phase alone (from the timing line `install` prints).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};

use sha2::Digest as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use tugboot_firmware::{
    Artifact, Document, Manifest, Role, SecretKey, Sha256Digest, Signed, Timestamp, TrustRoot,
};

fn sign<T: Document>(value: T) -> Vec<u8> {
    let mut s = Signed::new(value).expect("sign");
    s.sign(&SecretKey::from_seed(&[7; 32]));
    s.to_bytes()
}

/// Serves files from `dir` over HTTP/1.1 (plain, or TLS requiring a client certificate) with
/// `Range: bytes=N-`, one thread per connection. Plain bodies go out with `std::io::copy`
/// (sendfile on Linux).
fn serve(dir: PathBuf, tls: Option<Arc<rustls::ServerConfig>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let dir = dir.clone();
            let tls = tls.clone();
            std::thread::spawn(move || match tls {
                None => handle(conn, &dir),
                Some(cfg) => {
                    let tls = rustls::ServerConnection::new(cfg).expect("tls");
                    handle(rustls::StreamOwned::new(tls, conn), &dir);
                }
            });
        }
    });
    port
}

fn handle<S: Read + Write>(conn: S, dir: &Path) {
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut from = 0u64;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return;
        }
        let h = h.trim_end().to_ascii_lowercase();
        if h.is_empty() {
            break;
        }
        if let Some(r) = h.strip_prefix("range: bytes=") {
            from = r.trim_end_matches('-').parse().unwrap_or(0);
        }
    }
    let name = path.trim_start_matches('/');
    let mut out = reader.into_inner();
    let Ok(mut file) = std::fs::File::open(dir.join(name)) else {
        let _ = out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        return;
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let head = if from > 0 {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{len}\r\nConnection: close\r\n\r\n",
            len - from,
            len - 1
        )
    } else {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
    };
    let _ = out.write_all(head.as_bytes());
    let _ = file.seek(SeekFrom::Start(from));
    let _ = std::io::copy(&mut file, &mut out);
    let _ = out.flush();
}

/// A CA, a server certificate for 127.0.0.1 and a device certificate, written as PEM files into
/// `dir` (`ca.pem`, `device.pem`, `device.key`); returns the server's TLS configuration, which
/// requires a client certificate from the CA.
fn pki(dir: &Path) -> Arc<rustls::ServerConfig> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL (curl) takes a leaf whose issuer equals its subject for
    // self-signed.
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "bench CA");
    let ca = p.self_signed(&ca_key).expect("ca");
    let server_key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&server_key, &ca, &ca_key)
        .expect("server");
    let device_key = KeyPair::generate().expect("key");
    let device = CertificateParams::new(vec!["bench-device".to_owned()])
        .expect("params")
        .signed_by(&device_key, &ca, &ca_key)
        .expect("device");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    std::fs::write(dir.join("device.pem"), device.pem()).expect("write");
    std::fs::write(dir.join("device.key"), device_key.serialize_pem()).expect("write");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).expect("root");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .expect("config");
    Arc::new(config)
}

/// Writes `mib` MiB of pseudo-random bytes and returns their digest.
fn make_artifact(path: &Path, mib: usize) -> Sha256Digest {
    let mut f =
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).expect("create"));
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = vec![0u8; 1 << 20];
    let mut hash = sha2::Sha256::new();
    for _ in 0..mib {
        for chunk in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block).expect("write");
        hash.update(&block);
    }
    f.flush().expect("flush");
    Sha256Digest(hash.finalize().into())
}

struct Run {
    secs: f64,
    rss_kib: Option<u64>,
    stderr: String,
}

fn timed(cmd: &mut Command) -> Run {
    let start = Instant::now();
    let out = cmd.output().expect("spawn");
    let secs = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "command failed: {stderr}");
    let rss_kib = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok());
    Run {
        secs,
        rss_kib,
        stderr,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let agent_bin = args
        .first()
        .cloned()
        .unwrap_or_else(|| "target/x86_64-unknown-linux-musl/release-agent/tugboot-agent".into());
    let mib: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(1024);
    let runs: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(3);
    let tls = args.get(3).is_some_and(|m| m == "tls");
    let dir = tempfile::Builder::new()
        .prefix("tugboot-install-bench")
        .tempdir_in(std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from))
        .expect("tempdir");
    let d = dir.path();
    let serve_dir = d.join("srv");
    std::fs::create_dir(&serve_dir).expect("mkdir");
    eprintln!("writing a {mib} MiB artifact ...");
    let digest = make_artifact(&serve_dir.join("rootfs.img"), mib);
    let size = u64::try_from(mib << 20).expect("size");
    let root = sign(TrustRoot {
        version: 1,
        expires: Timestamp::from_unix(1_956_528_000),
        threshold: 1,
        keys: vec![SecretKey::from_seed(&[7; 32]).public()],
        revoked: vec![],
    });
    std::fs::write(d.join("root.json"), root).expect("root");
    let manifest = sign(Manifest {
        name: "bench".into(),
        version: 1,
        boards: vec!["x86_64-uefi".into()],
        artifacts: vec![Artifact {
            role: Role::Slot,
            name: "rootfs.img".into(),
            sha256: digest,
            size,
        }],
        created: Timestamp::from_unix(1_767_225_600),
        expires: Timestamp::from_unix(1_956_528_000),
        min_version: None,
        labels: BTreeMap::new(),
    });
    std::fs::write(serve_dir.join("m.json"), manifest).expect("manifest");
    std::fs::write(d.join("slotA"), b"").expect("slot");
    std::fs::write(
        d.join("boot.env"),
        b"# tugboot plain boot environment v1\ntugboot_slot=A\n",
    )
    .expect("env");
    let p = d.display();
    std::fs::write(
        d.join("agent.toml"),
        format!(
            r#"server = "https://127.0.0.1:1"
board = "x86_64-uefi"
state_file = "{p}/state.json"
trust_root = "{p}/root.json"
report_queue = "{p}/reports"
[tls]
ca = "{p}/ca.pem"
cert = "{p}/device.pem"
key = "{p}/device.key"
[slots]
a = "{p}/slotA"
b = "{p}/slotB"
[bootloader]
kind = "file"
path = "{p}/boot.env"
"#
        ),
    )
    .expect("config");
    let server_tls = tls.then(|| pki(d));
    let port = serve(serve_dir.clone(), server_tls);
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{port}/rootfs.img");
    let curl_tls = if tls {
        format!("--cacert {p}/ca.pem --cert {p}/device.pem --key {p}/device.key")
    } else {
        String::new()
    };
    println!("transport: {scheme} on loopback, {mib} MiB, {runs} runs");
    let target = d.join("slotB");

    println!("| run | tool | seconds | MiB/s | peak RSS (MiB) |");
    println!("|---|---|---|---|---|");
    let mut best = (f64::MAX, f64::MAX, f64::MAX);
    let mut rss_max = 0u64;
    #[allow(clippy::cast_precision_loss)]
    let mibs = mib as f64;
    for run in 1..=runs {
        // Same target file for both, recreated empty each time.
        std::fs::write(&target, b"").expect("truncate");
        let curl = timed(Command::new("/usr/bin/time").args([
            "-v",
            "bash",
            "-c",
            &format!(
                "set -o pipefail; curl -s {curl_tls} {url} | tee >(sha256sum >/dev/null) | dd of={} bs=1M status=none",
                target.display()
            ),
        ]));
        std::fs::write(&target, b"").expect("truncate");
        let agent = timed(Command::new("/usr/bin/time").args([
            "-v",
            &agent_bin,
            "--config",
            &d.join("agent.toml").display().to_string(),
            "install",
            "--manifest-url",
            &format!("{scheme}://127.0.0.1:{port}/m.json"),
            "--slot",
            "B",
        ]));
        assert_eq!(
            std::fs::metadata(&target).expect("slot").len(),
            size,
            "agent wrote the slot"
        );
        let stream_secs = agent
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("streamed "))
            .and_then(|l| l.split(" in ").nth(1))
            .and_then(|l| l.split(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        #[allow(clippy::cast_precision_loss)]
        let kib = |k: Option<u64>| k.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0));
        println!(
            "| {run} | curl \\| tee >(sha256sum) \\| dd | {:.2} | {:.0} | {} (largest process) |",
            curl.secs,
            mibs / curl.secs,
            kib(curl.rss_kib)
        );
        println!(
            "| {run} | tugboot-agent install (stream + fsync + read-back) | {:.2} | {:.0} | {} |",
            agent.secs,
            mibs / agent.secs,
            kib(agent.rss_kib)
        );
        println!(
            "| {run} | tugboot-agent, streaming phase only | {stream_secs:.2} | {:.0} | |",
            mibs / stream_secs
        );
        best.2 = best.2.min(stream_secs);
        best.0 = best.0.min(curl.secs);
        best.1 = best.1.min(agent.secs);
        rss_max = rss_max.max(agent.rss_kib.unwrap_or(0));
    }
    println!();
    println!(
        "best of {runs}: curl pipeline {:.0} MiB/s; agent {:.0} MiB/s in total ({:.2}x), {:.0} MiB/s streaming ({:.2}x); agent peak RSS {:.1} MiB",
        mibs / best.0,
        mibs / best.1,
        best.0 / best.1,
        mibs / best.2,
        best.0 / best.2,
        {
            #[allow(clippy::cast_precision_loss)]
            let r = rss_max as f64 / 1024.0;
            r
        }
    );
}
