//! The agent's network side against a real TLS server in the test: rustls with
//! `WebPkiClientVerifier` on 127.0.0.1, certificates made with rcgen. Covers mutual TLS (and its
//! refusals, where the server must see no request), the whole update over HTTPS with a dropped
//! connection resumed by `Range`, tampered and truncated artifacts, and report delivery across a
//! server outage.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use tugboot_agent::bootloader::{BootEnv, Slot, Vars};
use tugboot_agent::config::DeviceConfig;
use tugboot_agent::io::RealIo;
use tugboot_agent::net::client::Timeouts;
use tugboot_agent::net::daemon::{BootContext, Daemon, DaemonError, Step, open_bootloader};
use tugboot_agent::net::{HttpClient, NetError, Report, ReportQueue, TlsIdentity};
use tugboot_agent::update::{AgentState, Evidence, Image, Outcome, Phase, PlainFileEnv};
use tugboot_firmware::{
    Artifact, Document, Manifest, Role, SecretKey, Sha256Digest, Signed, Timestamp, TrustRoot,
};

// ---------------------------------------------------------------------------------------------
// Certificates

struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (p.self_signed(&key).unwrap(), key)
}

impl Pki {
    fn new(name: &str) -> Self {
        let (ca_cert, ca_key) = ca(name);
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
        Self {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            server_cert: server.der().clone(),
            server_key: key.serialize_der(),
            ca_cert,
            ca_key,
        }
    }

    /// A device certificate (PEM cert, PEM key), valid now unless `expired`.
    fn device(&self, expired: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["device-0001".to_owned()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "device-0001");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = p.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![self.server_cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone())),
            )
            .unwrap();
        Arc::new(config)
    }

    fn identity(&self) -> TlsIdentity {
        let (cert, key) = self.device(false);
        TlsIdentity::from_pem(self.ca_pem.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// A small HTTP/1.1 server (one connection at a time, `Connection: close`).

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    range: Option<String>,
    body: Vec<u8>,
}

#[derive(Clone)]
struct Route {
    status: u16,
    body: Vec<u8>,
    /// Serve only this many body bytes of the next full (non-range) response, then cut the
    /// connection without a TLS close_notify.
    cut_after: Option<usize>,
    /// Serve only this prefix, with a matching Content-Length (a truncated artifact).
    truncate_to: Option<usize>,
    /// Answer range requests with the whole body and `200`.
    ignore_range: bool,
    /// Send full (non-range) bodies in pieces of this many bytes with a pause after each.
    throttle: Option<(usize, Duration)>,
}

impl Route {
    fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self {
            status: 200,
            body: body.into(),
            cut_after: None,
            truncate_to: None,
            ignore_range: false,
            throttle: None,
        }
    }
}

#[derive(Default)]
struct Shared {
    routes: HashMap<String, Route>,
    seen: Vec<Seen>,
    handshake_failures: usize,
    /// Statuses for successive report POSTs (then 200).
    report_statuses: Vec<u16>,
    /// Reports acknowledged with 2xx.
    accepted: Vec<Vec<u8>>,
}

struct Server {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap(), tls, Arc::default())
    }

    fn start_at(
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        shared: Arc<Mutex<Shared>>,
    ) -> Self {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (shared.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(tcp) = conn else { continue };
                tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
                match &tls {
                    None => serve(tcp.try_clone().unwrap(), &tcp, &s),
                    Some(cfg) => {
                        let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
                        let mut stream = rustls::StreamOwned::new(conn, tcp.try_clone().unwrap());
                        let mut handshake_ok = true;
                        while stream.conn.is_handshaking() {
                            if stream.conn.complete_io(&mut stream.sock).is_err() {
                                handshake_ok = false;
                                break;
                            }
                        }
                        if handshake_ok {
                            serve(stream, &tcp, &s);
                        } else {
                            s.lock().unwrap().handshake_failures += 1;
                        }
                    }
                }
            }
        });
        Self {
            addr,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn route(&self, path: &str, route: Route) {
        self.shared
            .lock()
            .unwrap()
            .routes
            .insert(path.to_owned(), route);
    }

    fn seen(&self) -> Vec<Seen> {
        self.shared.lock().unwrap().seen.clone()
    }

    fn stop(mut self) -> Arc<Mutex<Shared>> {
        self.halt();
        self.shared.clone()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.halt();
    }
}

fn serve<S: Read + Write>(stream: S, tcp: &TcpStream, shared: &Mutex<Shared>) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let range = headers.get("range").cloned();
    let mut s = shared.lock().unwrap();
    s.seen.push(Seen {
        method: method.clone(),
        path: path.clone(),
        range: range.clone(),
        body: body.clone(),
    });
    let throttle = if range.is_none() {
        s.routes.get(&path).and_then(|r| r.throttle)
    } else {
        None
    };
    let (status, payload, extra, cut) = if method == "POST" {
        let status = if s.report_statuses.is_empty() {
            200
        } else {
            s.report_statuses.remove(0)
        };
        if status / 100 == 2 {
            s.accepted.push(body);
        }
        (status, b"{}".to_vec(), String::new(), None)
    } else {
        match s.routes.get_mut(&path) {
            None => (404, Vec::new(), String::new(), None),
            Some(route) => {
                let mut full = route.body.clone();
                if let Some(n) = route.truncate_to {
                    full.truncate(n);
                }
                let total = full.len();
                let range = range.filter(|_| !route.ignore_range);
                match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
                    Some(r) => {
                        let from: usize = r.trim_end_matches('-').parse().unwrap();
                        if from >= total {
                            (
                                416,
                                Vec::new(),
                                format!("Content-Range: bytes */{total}\r\n"),
                                None,
                            )
                        } else {
                            (
                                206,
                                full[from..].to_vec(),
                                format!("Content-Range: bytes {from}-{}/{total}\r\n", total - 1),
                                None,
                            )
                        }
                    }
                    None => {
                        let cut = route.cut_after.take();
                        (route.status, full, String::new(), cut)
                    }
                }
            }
        }
    };
    drop(s);
    let reason = match status {
        200 => "OK",
        204 => "No Content",
        206 => "Partial Content",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        payload.len()
    );
    let mut stream = reader.into_inner();
    let _ = stream.write_all(head.as_bytes());
    match cut {
        Some(n) => {
            let _ = stream.write_all(&payload[..n]);
            let _ = stream.flush();
            // An abrupt end: no close_notify, no more bytes.
            let _ = tcp.shutdown(Shutdown::Both);
        }
        None => {
            match throttle {
                Some((piece, pause)) => {
                    for chunk in payload.chunks(piece) {
                        if stream
                            .write_all(chunk)
                            .and_then(|()| stream.flush())
                            .is_err()
                        {
                            return; // the client went away
                        }
                        std::thread::sleep(pause);
                    }
                }
                None => {
                    let _ = stream.write_all(&payload);
                }
            }
            let _ = stream.flush();
            drop(stream);
            let _ = tcp.shutdown(Shutdown::Write);
        }
    }
}

fn client(server: &str, id: &TlsIdentity) -> HttpClient {
    HttpClient::new(
        server,
        Some(id),
        Timeouts {
            connect: Duration::from_secs(5),
            response: Duration::from_secs(10),
            read: Duration::from_secs(10),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// mutual TLS

#[test]
fn mtls_happy_path() {
    let pki = Pki::new("tugboot test CA");
    let server = Server::start(Some(pki.server_config()));
    let d = Sha256Digest::of(b"x").to_hex();
    server.route(
        "/api/v1/device/assignment",
        Route::ok(format!(
            r#"{{"manifest_url":"/m/1","artifacts":{{"{d}":"/blobs/{d}"}}}}"#
        )),
    );
    let c = client(&server.url(), &pki.identity());
    let a = c.assignment().unwrap().unwrap();
    assert_eq!(a.manifest_url, "/m/1");
    c.post_report(br#"{"hello":1}"#).unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("GET", "/api/v1/device/assignment")
    );
    assert_eq!(seen[1].path, "/api/v1/device/reports");
    assert_eq!(seen[1].body, br#"{"hello":1}"#);
    assert_eq!(server.shared.lock().unwrap().handshake_failures, 0);
}

#[test]
fn nothing_assigned_is_none() {
    let pki = Pki::new("tugboot test CA");
    let server = Server::start(Some(pki.server_config()));
    let mut r = Route::ok(Vec::new());
    r.status = 204;
    server.route("/api/v1/device/assignment", r);
    assert_eq!(
        client(&server.url(), &pki.identity()).assignment().unwrap(),
        None
    );
}

fn assert_refused(
    server: &Server,
    result: Result<Option<tugboot_agent::net::Assignment>, NetError>,
) {
    let err = result.unwrap_err();
    assert!(matches!(err, NetError::Transport { .. }), "{err}");
    // Give the server thread a moment to record the failed handshake (not an assertion on time).
    for _ in 0..100 {
        if server.shared.lock().unwrap().handshake_failures > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(server.seen().is_empty(), "the server saw a request");
    assert_eq!(server.shared.lock().unwrap().handshake_failures, 1);
}

#[test]
fn server_from_another_ca_is_refused() {
    let pki = Pki::new("tugboot test CA");
    let other = Pki::new("some other CA");
    // The server presents a certificate from `other`; the device pins `pki`'s CA.
    let server = Server::start(Some(other.server_config()));
    server.route("/api/v1/device/assignment", Route::ok("{}"));
    assert_refused(&server, client(&server.url(), &pki.identity()).assignment());
}

#[test]
fn missing_client_certificate_is_refused() {
    let pki = Pki::new("tugboot test CA");
    let server = Server::start(Some(pki.server_config()));
    server.route("/api/v1/device/assignment", Route::ok("{}"));
    let id = TlsIdentity::ca_only(pki.ca_pem.as_bytes()).unwrap();
    assert_refused(&server, client(&server.url(), &id).assignment());
}

#[test]
fn expired_client_certificate_is_refused() {
    let pki = Pki::new("tugboot test CA");
    let server = Server::start(Some(pki.server_config()));
    server.route("/api/v1/device/assignment", Route::ok("{}"));
    let (cert, key) = pki.device(true);
    let id = TlsIdentity::from_pem(pki.ca_pem.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap();
    assert_refused(&server, client(&server.url(), &id).assignment());
}

#[test]
fn client_certificate_from_another_ca_is_refused() {
    let pki = Pki::new("tugboot test CA");
    let other = Pki::new("some other CA");
    let server = Server::start(Some(pki.server_config()));
    server.route("/api/v1/device/assignment", Route::ok("{}"));
    let (cert, key) = other.device(false);
    let id = TlsIdentity::from_pem(pki.ca_pem.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap();
    assert_refused(&server, client(&server.url(), &id).assignment());
}

#[test]
fn unusable_pem_files_are_named() {
    let pki = Pki::new("tugboot test CA");
    let (cert, key) = pki.device(false);
    type Case<'a> = (&'a [u8], &'a [u8], &'a [u8], &'a str);
    let cases: [Case<'_>; 4] = [
        (b"junk", cert.as_bytes(), key.as_bytes(), "tls.ca"),
        (pki.ca_pem.as_bytes(), b"", key.as_bytes(), "tls.cert"),
        (pki.ca_pem.as_bytes(), cert.as_bytes(), b"", "tls.key"),
        (
            pki.ca_pem.as_bytes(),
            cert.as_bytes(),
            cert.as_bytes(),
            "tls.key",
        ),
    ];
    for (ca, cert, key, what) in cases {
        let err = TlsIdentity::from_pem(ca, cert, key).unwrap_err();
        assert!(err.to_string().starts_with(what), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// A device on disk: slots, state, plain boot environment, config.

const NOW_ISH: Timestamp = Timestamp::from_unix(1_767_225_600); // 2026-01-01
const EXPIRES: Timestamp = Timestamp::from_unix(1_956_528_000); // 2032-01-01

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

fn sign<T: Document>(value: T, signers: &[u8]) -> Vec<u8> {
    let mut signed = Signed::new(value).unwrap();
    for &n in signers {
        signed.sign(&key(n));
    }
    signed.to_bytes()
}

fn root_bytes() -> Vec<u8> {
    sign(
        TrustRoot {
            version: 1,
            expires: EXPIRES,
            threshold: 2,
            keys: vec![key(1).public(), key(2).public(), key(3).public()],
            revoked: vec![],
        },
        &[1, 2],
    )
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_be_bytes()[0]
        })
        .collect()
}

fn manifest(version: u64, content: &[u8]) -> Vec<u8> {
    sign(
        Manifest {
            name: "edge-gw".into(),
            version,
            boards: vec!["raspberrypi-4".into()],
            artifacts: vec![Artifact {
                role: Role::Slot,
                name: "rootfs.img".into(),
                sha256: Sha256Digest::of(content),
                size: content.len() as u64,
            }],
            created: NOW_ISH,
            expires: EXPIRES,
            min_version: None,
            labels: BTreeMap::new(),
        },
        &[1, 2],
    )
}

fn image(version: u64, content: &[u8]) -> Image {
    Image {
        name: "edge-gw".into(),
        version,
        sha256: Sha256Digest::of(content),
        size: content.len() as u64,
    }
}

struct Device {
    dir: tempfile::TempDir,
    config: DeviceConfig,
    v1: Vec<u8>,
}

impl Device {
    fn new(server: &str, pki: &Pki) -> Self {
        Self::with_extra(server, pki, "")
    }

    /// With `extra` top-level configuration keys; the configuration is also in `agent.toml`.
    fn with_extra(server: &str, pki: &Pki, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let v1 = noise(100_000, 0x11);
        std::fs::write(p("slotA"), &v1).unwrap();
        std::fs::write(p("slotB"), noise(50_000, 0x99)).unwrap();
        std::fs::write(
            p("state.json"),
            AgentState::provisioned(Slot::A, Some(image(41, &v1)), 41).to_bytes(),
        )
        .unwrap();
        let mut vars = Vars::new();
        vars.set("tugboot_slot", "A").unwrap();
        PlainFileEnv::new(RealIo::new(), p("boot.env"))
            .initialize(&vars)
            .unwrap();
        std::fs::write(p("root.json"), root_bytes()).unwrap();
        let (cert, key) = pki.device(false);
        std::fs::write(p("ca.pem"), &pki.ca_pem).unwrap();
        std::fs::write(p("device.pem"), cert).unwrap();
        std::fs::write(p("device.key"), key).unwrap();
        let d = dir.path().display();
        let toml = format!(
            r#"
server = "{server}"
board = "raspberrypi-4"
state_file = "{d}/state.json"
trust_root = "{d}/root.json"
report_queue = "{d}/reports"
watchdog_secs = 60
reboot_command = ["true"]
{extra}
[tls]
ca = "{d}/ca.pem"
cert = "{d}/device.pem"
key = "{d}/device.key"
[slots]
a = "{d}/slotA"
b = "{d}/slotB"
[bootloader]
kind = "file"
path = "{d}/boot.env"
contract = "uboot"
tries = 1
[[health.command]]
name = "true"
run = ["true"]
timeout_secs = 10
"#
        );
        let config = DeviceConfig::parse(&toml).unwrap();
        std::fs::write(p("agent.toml"), &toml).unwrap();
        Self { dir, config, v1 }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn daemon(&self, slot: Slot, boot_id: &str) -> Daemon {
        let mut d = Daemon::new(self.config.clone(), BootContext::new(slot, boot_id)).unwrap();
        d.set_retry_delay(Duration::ZERO);
        d
    }

    fn state(&self) -> AgentState {
        AgentState::parse(&std::fs::read(self.path("state.json")).unwrap()).unwrap()
    }

    /// The device reboots: the simulated U-Boot counts the trial and picks the slot.
    fn power_on(&self) -> Slot {
        let mut env = PlainFileEnv::new(RealIo::new(), self.path("boot.env"));
        tugboot_agent::update::sim::uboot_power_on(&mut env).unwrap()
    }

    fn env(&self) -> Vars {
        PlainFileEnv::new(RealIo::new(), self.path("boot.env"))
            .load()
            .unwrap()
    }
}

fn serve_update(server: &Server, content: &[u8], route: Route) -> String {
    let d = Sha256Digest::of(content).to_hex();
    server.route("/m/42", Route::ok(manifest(42, content)));
    server.route(&format!("/blobs/{d}"), route);
    server.route(
        "/api/v1/device/assignment",
        Route::ok(format!(
            r#"{{"manifest_url":"/m/42","artifacts":{{"{d}":"/blobs/{d}"}}}}"#
        )),
    );
    format!("/blobs/{d}")
}

fn accepted_outcomes(server: &Server) -> Vec<Outcome> {
    server
        .shared
        .lock()
        .unwrap()
        .accepted
        .iter()
        .filter_map(|b| serde_json::from_slice::<Report>(b).unwrap().outcome)
        .collect()
}

#[test]
fn update_resumes_with_range_after_a_dropped_connection_then_commits() {
    let pki = Pki::new("tugboot test CA");
    let server = Server::start(Some(pki.server_config()));
    let dev = Device::new(&server.url(), &pki);
    let v2 = noise(300_000, 0x23);
    const CUT: usize = 123_457;
    let blob = serve_update(
        &server,
        &v2,
        Route {
            cut_after: Some(CUT),
            ..Route::ok(v2.clone())
        },
    );

    let mut d = dev.daemon(Slot::A, "boot-1");
    assert_eq!(d.cycle().unwrap(), Step::Reboot, "{:?}", d.log);
    let gets: Vec<_> = server
        .seen()
        .into_iter()
        .filter(|s| s.path == blob)
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].range, None);
    assert_eq!(
        gets[1].range.as_deref(),
        Some(format!("bytes={CUT}-").as_str())
    );
    let slot_b = std::fs::read(dev.path("slotB")).unwrap();
    assert_eq!(&slot_b[..v2.len()], &v2[..], "slot B is byte-identical");
    assert_eq!(
        std::fs::read(dev.path("slotA")).unwrap(),
        dev.v1,
        "slot A untouched"
    );
    let state = dev.state();
    assert!(matches!(
        state.update.as_ref().map(|u| &u.phase),
        Some(Phase::Trying { .. })
    ));
    let env = dev.env();
    assert_eq!(env.get_str("tugboot_slot"), Some("B"));
    assert_eq!(env.get_str("upgrade_available"), Some("1"));

    // The trial boot of B: health checks pass, the agent commits and reports.
    assert_eq!(dev.power_on(), Slot::B);
    let mut d = dev.daemon(Slot::B, "boot-2");
    assert_eq!(d.cycle().unwrap(), Step::Idle, "{:?}", d.log);
    let state = dev.state();
    assert_eq!(state.committed.slot, Slot::B);
    assert_eq!(state.floor, 42);
    assert_eq!(dev.env().get_str("upgrade_available"), Some("0"));
    assert_eq!(
        accepted_outcomes(&server),
        vec![Outcome::Committed {
            name: "edge-gw".into(),
            version: 42,
            slot: Slot::B
        }]
    );
    // The assignment is what runs now: nothing more is downloaded.
    let before = server.seen().iter().filter(|s| s.path == blob).count();
    assert_eq!(d.cycle().unwrap(), Step::Idle);
    assert_eq!(
        server.seen().iter().filter(|s| s.path == blob).count(),
        before
    );
    assert!(d.queue().is_empty().unwrap());
}

/// Issue #10: without `tugboot.slot=` the agent took the booted slot from the environment,
/// where arming had already set `tugboot_slot=B`, and a second `run --once` before any reboot
/// committed v2, raised the floor and cleared `upgrade_available`. Now: in the boot that armed
/// the trial nothing is ever committed, however often the agent runs; after the reboot U-Boot's
/// counter proves the trial and the commit happens; a fallback is rolled back and reported.
#[test]
fn runs_before_the_reboot_never_commit_the_trial() {
    let pki = Pki::new("tugboot test CA");
    let server = Server::start(Some(pki.server_config()));
    let dev = Device::new(&server.url(), &pki);
    let v2 = noise(100_000, 0x23);
    serve_update(&server, &v2, Route::ok(v2.clone()));
    let detect = |boot_id: &str| {
        let mut boot = open_bootloader(&dev.config).unwrap();
        BootContext::from_sources("console=ttyS0 root=/dev/mmcblk0p2", boot_id, &mut *boot).unwrap()
    };
    let daemon = |ctx: BootContext| {
        let mut d = Daemon::new(dev.config.clone(), ctx).unwrap();
        d.set_retry_delay(Duration::ZERO);
        d
    };
    let ctx = detect("boot-1");
    assert_eq!((ctx.slot, ctx.evidence), (Slot::A, Evidence::Default));
    assert_eq!(daemon(ctx).cycle().unwrap(), Step::Reboot);
    assert_eq!(dev.env().get_str("tugboot_slot"), Some("B"), "armed");
    for _ in 0..3 {
        // The agent restarts (or `run --once` again) in the same boot.
        let ctx = detect("boot-1");
        assert_eq!(
            ctx.slot,
            Slot::A,
            "an armed, untouched trial is not running"
        );
        assert_eq!(daemon(ctx).cycle().unwrap(), Step::Reboot);
    }
    // Even a shell that wrongly believes B runs cannot commit in the arming boot.
    assert_eq!(
        daemon(BootContext::new(Slot::B, "boot-1")).cycle().unwrap(),
        Step::Reboot
    );
    let state = dev.state();
    assert_eq!((state.committed.slot, state.floor), (Slot::A, 41));
    assert!(matches!(
        state.update.map(|u| u.phase),
        Some(Phase::Trying { boot_id }) if boot_id == "boot-1"
    ));
    let env = dev.env();
    assert_eq!(
        env.get_str("upgrade_available"),
        Some("1"),
        "fallback intact"
    );
    assert_eq!(env.get_str("bootcount"), Some("0"));
    assert!(accepted_outcomes(&server).is_empty());

    // The reboot: U-Boot counts the trial; its counter is the proof.
    assert_eq!(dev.power_on(), Slot::B);
    let ctx = detect("boot-2");
    assert_eq!((ctx.slot, ctx.evidence), (Slot::B, Evidence::TrialCounter));
    assert_eq!(daemon(ctx).cycle().unwrap(), Step::Idle);
    let state = dev.state();
    assert_eq!((state.committed.slot, state.floor), (Slot::B, 42));
    assert_eq!(
        accepted_outcomes(&server),
        vec![Outcome::Committed {
            name: "edge-gw".into(),
            version: 42,
            slot: Slot::B
        }]
    );
}

#[test]
fn a_trial_that_falls_back_is_rolled_back_and_reported() {
    let pki = Pki::new("tugboot test CA");
    let server = Server::start(Some(pki.server_config()));
    let dev = Device::new(&server.url(), &pki);
    let v2 = noise(100_000, 0x23);
    serve_update(&server, &v2, Route::ok(v2.clone()));
    let detect = |boot_id: &str| {
        let mut boot = open_bootloader(&dev.config).unwrap();
        BootContext::from_sources("", boot_id, &mut *boot).unwrap()
    };
    let mut d = Daemon::new(dev.config.clone(), detect("boot-1")).unwrap();
    assert_eq!(d.cycle().unwrap(), Step::Reboot);
    // The trial boot hangs before the agent runs; the next boot exceeds bootlimit=1.
    assert_eq!(dev.power_on(), Slot::B);
    assert_eq!(dev.power_on(), Slot::A);
    let ctx = detect("boot-3");
    assert_eq!(ctx.slot, Slot::A);
    let mut d = Daemon::new(dev.config.clone(), ctx).unwrap();
    d.cycle().unwrap();
    let outcomes = accepted_outcomes(&server);
    assert!(
        matches!(outcomes.as_slice(), [Outcome::RolledBack { version: 42, slot: Slot::A, reason, .. }] if reason.contains("fell back")),
        "{outcomes:?}"
    );
    let state = dev.state();
    assert_eq!((state.committed.slot, state.floor), (Slot::A, 41));
}

fn assert_failed_and_untouched(route_for: impl Fn(&[u8]) -> Route, reason: &str) {
    let pki = Pki::new("tugboot test CA");
    let server = Server::start(Some(pki.server_config()));
    let dev = Device::new(&server.url(), &pki);
    let v2 = noise(200_000, 0x23);
    serve_update(&server, &v2, route_for(&v2));
    let env_before = std::fs::read(dev.path("boot.env")).unwrap();
    let mut d = dev.daemon(Slot::A, "boot-1");
    assert_eq!(d.cycle().unwrap(), Step::Idle, "{:?}", d.log);
    assert_eq!(
        std::fs::read(dev.path("slotA")).unwrap(),
        dev.v1,
        "slot A untouched"
    );
    assert_eq!(
        std::fs::read(dev.path("boot.env")).unwrap(),
        env_before,
        "bootloader untouched"
    );
    let state = dev.state();
    assert_eq!(state.committed.slot, Slot::A);
    assert_eq!(state.floor, 41);
    assert!(state.update.is_none());
    let outcomes = accepted_outcomes(&server);
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    match &outcomes[0] {
        Outcome::Failed {
            version, reason: r, ..
        } => {
            assert_eq!(*version, 42);
            assert!(r.contains(reason), "{r}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn tampered_artifact_leaves_slot_and_bootloader_untouched() {
    assert_failed_and_untouched(
        |v2| {
            let mut bad = v2.to_vec();
            bad[150_000] ^= 0x40;
            Route::ok(bad)
        },
        "sha256",
    );
}

#[test]
fn truncated_artifact_leaves_slot_and_bootloader_untouched() {
    assert_failed_and_untouched(
        |v2| Route {
            truncate_to: Some(150_000),
            ..Route::ok(v2.to_vec())
        },
        "416",
    );
}

#[test]
fn server_ignoring_the_range_request_is_refused() {
    assert_failed_and_untouched(
        |v2| Route {
            cut_after: Some(70_000),
            ignore_range: true,
            ..Route::ok(v2.to_vec())
        },
        "ignored the range request from byte 70000",
    );
}

#[test]
fn longer_artifact_is_refused() {
    assert_failed_and_untouched(
        |v2| {
            let mut long = v2.to_vec();
            long.extend_from_slice(b"extra");
            Route::ok(long)
        },
        "artifact rejected",
    );
}

// ---------------------------------------------------------------------------------------------
// Reports

fn outcome(version: u64) -> Outcome {
    Outcome::Failed {
        name: "edge-gw".into(),
        version,
        reason: format!("attempt {version}"),
        rejected: None,
    }
}

#[test]
fn reports_survive_an_outage_and_arrive_in_order_exactly_once() {
    let pki = Pki::new("tugboot test CA");
    let id = pki.identity();
    let dir = tempfile::tempdir().unwrap();
    // Learn a free port, then take the server down.
    let server = Server::start(Some(pki.server_config()));
    let addr = server.addr;
    let shared = server.stop();
    let c = client(&format!("https://{addr}"), &id);

    let queue = ReportQueue::open(dir.path(), 16).unwrap();
    for v in 1..=3 {
        queue.push(&outcome(v), "boot-1").unwrap();
    }
    let (sent, err) = queue.flush(&mut |b| c.post_report(b)).unwrap();
    assert_eq!(sent, 0);
    assert!(matches!(err, Some(NetError::Transport { .. })), "{err:?}");
    assert_eq!(queue.len().unwrap(), 3);

    // The agent restarts (new process, same directory) and queues one more.
    drop(queue);
    let queue = ReportQueue::open(dir.path(), 16).unwrap();
    queue.push(&outcome(4), "boot-1").unwrap();

    // Back up; it fails the second report once (not acknowledged, so it must be sent again).
    let server = Server::start_at(addr, Some(pki.server_config()), shared);
    server.shared.lock().unwrap().report_statuses = vec![200, 503];
    let (sent, err) = queue.flush(&mut |b| c.post_report(b)).unwrap();
    assert_eq!(sent, 1);
    assert!(
        matches!(err, Some(NetError::Status { status: 503, .. })),
        "{err:?}"
    );
    let (sent, err) = queue.flush(&mut |b| c.post_report(b)).unwrap();
    assert_eq!((sent, err.is_none()), (3, true));
    let (sent, _) = queue.flush(&mut |b| c.post_report(b)).unwrap();
    assert_eq!(sent, 0, "nothing left to send");

    let reports: Vec<Report> = server
        .shared
        .lock()
        .unwrap()
        .accepted
        .iter()
        .map(|b| serde_json::from_slice(b).unwrap())
        .collect();
    assert_eq!(
        reports
            .iter()
            .filter_map(|r| r.outcome.clone())
            .collect::<Vec<_>>(),
        (1..=4).map(outcome).collect::<Vec<_>>()
    );
    assert!(reports.windows(2).all(|w| w[0].seq < w[1].seq));
    let mut ids: Vec<_> = reports.iter().map(|r| r.id.clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 4);
}

#[test]
fn report_queue_is_bounded_and_recovers_lost_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let queue = ReportQueue::open(dir.path(), 3).unwrap();
    for v in 1..=5 {
        queue.push(&outcome(v), "b").unwrap();
    }
    let pending = queue.pending().unwrap();
    assert_eq!(pending.len(), 3);
    let kept: Vec<Outcome> = pending
        .iter()
        .map(|(_, p)| {
            serde_json::from_slice::<Report>(&std::fs::read(p).unwrap())
                .unwrap()
                .outcome
                .unwrap()
        })
        .collect();
    assert_eq!(
        kept,
        (3..=5).map(outcome).collect::<Vec<_>>(),
        "the oldest were dropped"
    );
    // The state's last outcome was queued already: not again.
    assert!(!queue.recover(Some(&outcome(5)), "b").unwrap());
    // One persisted but never queued (a crash in between): queued once.
    assert!(queue.recover(Some(&outcome(6)), "b").unwrap());
    assert!(!queue.recover(Some(&outcome(6)), "b").unwrap());
    // A stray temporary file from a crash is cleaned up; garbage is dropped, not sent.
    std::fs::write(dir.path().join("00000000000000000001.json.tmp"), b"x").unwrap();
    std::fs::write(dir.path().join("00000000000000000002.json"), b"not json").unwrap();
    let queue = ReportQueue::open(dir.path(), 3).unwrap();
    let mut got = Vec::new();
    let (sent, err) = queue
        .flush(&mut |b| {
            got.push(
                serde_json::from_slice::<Report>(b)
                    .unwrap()
                    .outcome
                    .unwrap(),
            );
            Ok(())
        })
        .unwrap();
    assert!(err.is_none());
    assert_eq!(sent, 3);
    assert_eq!(got, vec![outcome(4), outcome(5), outcome(6)]);
    assert!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .all(|e| e.unwrap().file_name() == "last-outcome.json")
    );
}

#[test]
fn daemon_queues_reports_while_the_server_is_down() {
    let pki = Pki::new("tugboot test CA");
    let server = Server::start(Some(pki.server_config()));
    let dev = Device::new(&server.url(), &pki);
    let v2 = noise(100_000, 0x23);
    serve_update(&server, &v2, Route::ok(v2.clone()));
    let mut d = dev.daemon(Slot::A, "boot-1");
    assert_eq!(d.cycle().unwrap(), Step::Reboot);
    let addr = server.addr;
    let shared = server.stop();

    // Trial boot with the server down: the commit happens, its report is queued.
    assert_eq!(dev.power_on(), Slot::B);
    let mut d = dev.daemon(Slot::B, "boot-2");
    let err = d.cycle().unwrap_err();
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
    assert_eq!(dev.state().committed.slot, Slot::B);
    assert_eq!(
        d.queue().len().unwrap(),
        2,
        "the outcome and a status report"
    );
    assert!(
        shared
            .lock()
            .unwrap()
            .accepted
            .iter()
            .all(|b| serde_json::from_slice::<Report>(b)
                .unwrap()
                .outcome
                .is_none()),
        "no outcome delivered yet"
    );

    // Back up: the next cycle delivers it, once.
    let server = Server::start_at(addr, Some(pki.server_config()), shared);
    let mut d = dev.daemon(Slot::B, "boot-2");
    assert_eq!(d.cycle().unwrap(), Step::Idle, "{:?}", d.log);
    assert_eq!(d.cycle().unwrap(), Step::Idle);
    assert_eq!(
        accepted_outcomes(&server),
        vec![Outcome::Committed {
            name: "edge-gw".into(),
            version: 42,
            slot: Slot::B
        }]
    );
    assert!(d.queue().is_empty().unwrap());
}

#[test]
fn plain_http_client_cannot_reach_a_tls_server_without_identity() {
    // No identity means an empty trust store: every TLS server is refused.
    let pki = Pki::new("tugboot test CA");
    let server = Server::start(Some(pki.server_config()));
    server.route("/api/v1/device/assignment", Route::ok("{}"));
    let c = HttpClient::new(&server.url(), None, Timeouts::default());
    assert_refused(&server, c.assignment());
}

// ---------------------------------------------------------------------------------------------
// Issue #10: refused assignments, rejections, the server's reasons, resuming across restarts.

/// The agent binary; under a cross-test runner (`CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER=
/// qemu-aarch64-static`) it runs through the same runner as this test.
fn agent_command() -> std::process::Command {
    let bin = env!("CARGO_BIN_EXE_tugboot-agent");
    let runner = if cfg!(all(target_arch = "aarch64", target_env = "musl")) {
        std::env::var("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUNNER").ok()
    } else {
        None
    };
    match runner {
        Some(r) => {
            let mut c = std::process::Command::new(r);
            c.arg(bin);
            c
        }
        None => std::process::Command::new(bin),
    }
}

fn gets(server: &Server, path: &str) -> usize {
    server
        .seen()
        .iter()
        .filter(|s| s.method == "GET" && s.path == path)
        .count()
}

fn route_assignment(server: &Server, content: &[u8], rollout: i64) {
    let d = Sha256Digest::of(content).to_hex();
    server.route(
        "/api/v1/device/assignment",
        Route::ok(format!(
            r#"{{"manifest_url":"/m/42","artifacts":{{"{d}":"/blobs/{d}"}},"rollout":{rollout}}}"#
        )),
    );
}

/// A failed update was downloaded in full and reported again on every poll while its rollout
/// was paused. Now: reported once, not fetched again until the assignment changes or the
/// operator says `retry`.
#[test]
fn a_failed_update_is_reported_once_and_not_fetched_again() {
    let pki = Pki::new("tugboot test CA");
    let server = Server::start(Some(pki.server_config()));
    let dev = Device::new(&server.url(), &pki);
    let v2 = noise(100_000, 0x23);
    let mut tampered = v2.clone();
    tampered[50_000] ^= 1;
    let blob = serve_update(&server, &v2, Route::ok(tampered));
    route_assignment(&server, &v2, 7);
    let mut d = dev.daemon(Slot::A, "boot-1");
    assert_eq!(d.cycle().unwrap(), Step::Idle);
    assert_eq!(gets(&server, &blob), 1);
    assert_eq!(accepted_outcomes(&server).len(), 1);
    for _ in 0..3 {
        assert_eq!(d.cycle().unwrap(), Step::Idle);
    }
    assert!(
        d.log
            .lines
            .iter()
            .any(|l| l.contains("not trying /m/42 again")),
        "{:?}",
        d.log
    );
    assert_eq!(gets(&server, &blob), 1, "never downloaded again");
    assert_eq!(gets(&server, "/m/42"), 1, "the manifest neither");
    assert_eq!(accepted_outcomes(&server).len(), 1, "reported once");
    // A new rollout of the same image is a new assignment: tried (and reported) again.
    route_assignment(&server, &v2, 8);
    d.cycle().unwrap();
    assert_eq!(gets(&server, &blob), 2);
    assert_eq!(accepted_outcomes(&server).len(), 2);
    d.cycle().unwrap();
    assert_eq!(gets(&server, &blob), 2);
    // `tugboot-agent retry`.
    let o = agent_command()
        .args([
            "--config",
            dev.path("agent.toml").to_str().unwrap(),
            "retry",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("forgot /m/42"));
    d.cycle().unwrap();
    assert_eq!(gets(&server, &blob), 3);
}

/// Manifests refused on the device were never reported; the server counted the device as
/// pending until its timeout. Now: outcome `rejected` with the firmware's code, once.
#[test]
fn rejected_manifests_are_reported_with_their_code() {
    let mk = |board: &str, created: u64, expires: u64, role: Role, signers: &[u8]| {
        sign(
            Manifest {
                name: "edge-gw".into(),
                version: 42,
                boards: vec![board.into()],
                artifacts: vec![Artifact {
                    role,
                    name: "rootfs.img".into(),
                    sha256: Sha256Digest::of(b"x"),
                    size: 1,
                }],
                created: Timestamp::from_unix(created),
                expires: Timestamp::from_unix(expires),
                min_version: None,
                labels: BTreeMap::new(),
            },
            signers,
        )
    };
    let (now, later) = (NOW_ISH.unix(), EXPIRES.unix());
    for (code, manifest_bytes) in [
        (
            "wrong-board",
            mk("raspberrypi-5", now, later, Role::Slot, &[1, 2]),
        ),
        (
            "expired",
            mk(
                "raspberrypi-4",
                1_600_000_000,
                1_700_000_000,
                Role::Slot,
                &[1, 2],
            ),
        ),
        ("rollback", manifest(40, &noise(10, 1))),
        (
            "below-threshold",
            mk("raspberrypi-4", now, later, Role::Slot, &[1]),
        ),
        (
            "no-slot-artifact",
            mk("raspberrypi-4", now, later, Role::Kernel, &[1, 2]),
        ),
        ("malformed", b"{not a manifest".to_vec()),
    ] {
        let pki = Pki::new("tugboot test CA");
        let server = Server::start(Some(pki.server_config()));
        let dev = Device::new(&server.url(), &pki);
        server.route("/m/42", Route::ok(manifest_bytes.clone()));
        route_assignment(&server, b"whatever", 3);
        let state_before = std::fs::read(dev.path("state.json")).unwrap();
        let slot_b = std::fs::read(dev.path("slotB")).unwrap();
        let mut d = dev.daemon(Slot::A, "boot-1");
        assert_eq!(d.cycle().unwrap(), Step::Idle, "{code}");
        d.cycle().unwrap();
        let outcomes = accepted_outcomes(&server);
        let [
            Outcome::Failed {
                rejected: Some(r),
                version,
                ..
            },
        ] = outcomes.as_slice()
        else {
            panic!("{code}: {outcomes:?}")
        };
        assert_eq!(r.code, code);
        assert_eq!(
            r.manifest_sha256,
            Sha256Digest::of(&manifest_bytes).to_hex()
        );
        assert_eq!(
            *version,
            if code == "malformed" {
                0
            } else if code == "rollback" {
                40
            } else {
                42
            }
        );
        // The JSON the server received says `rejected`.
        let raw = server.shared.lock().unwrap().accepted.clone();
        assert!(
            raw.iter()
                .any(|b| String::from_utf8_lossy(b).contains(r#""outcome":"rejected""#)),
            "{code}"
        );
        assert_eq!(gets(&server, "/m/42"), 1, "{code}: fetched once");
        assert_eq!(
            std::fs::read(dev.path("state.json")).unwrap(),
            state_before,
            "{code}"
        );
        assert_eq!(std::fs::read(dev.path("slotB")).unwrap(), slot_b, "{code}");
    }
}

/// `HTTP 403` used to drop the server's reason. A revocation now stops the agent: no more
/// requests, reports or updates, with the server's words.
#[test]
fn the_servers_reason_is_kept_and_a_revocation_stops_the_agent() {
    let pki = Pki::new("tugboot test CA");
    let server = Server::start(Some(pki.server_config()));
    let dev = Device::new(&server.url(), &pki);
    let refuse = |why: &str| Route {
        status: 403,
        ..Route::ok(format!(r#"{{"error":"{why}"}}"#))
    };
    server.route(
        "/api/v1/device/assignment",
        refuse("certificate 01ab is not on record"),
    );
    let mut d = dev.daemon(Slot::A, "boot-1");
    let e = d.cycle().unwrap_err().to_string();
    assert!(
        e.ends_with("/api/v1/device/assignment: HTTP 403: certificate 01ab is not on record"),
        "{e}"
    );
    server.route(
        "/api/v1/device/assignment",
        refuse("certificate 01ab is revoked"),
    );
    let e = d.cycle().unwrap_err();
    assert!(
        matches!(&e, DaemonError::Revoked(r) if r == "certificate 01ab is revoked"),
        "{e}"
    );
    assert!(
        e.to_string().contains("updates and reports have stopped"),
        "{e}"
    );
    assert!(dev.path("revoked.json").exists());
    let before = server.seen().len();
    for _ in 0..2 {
        assert!(matches!(d.cycle(), Err(DaemonError::Revoked(_))));
    }
    let mut d = dev.daemon(Slot::A, "boot-2");
    assert!(matches!(d.cycle(), Err(DaemonError::Revoked(_))));
    assert_eq!(server.seen().len(), before, "nothing more sent");
    // `status` says so.
    let o = agent_command()
        .args([
            "--config",
            dev.path("agent.toml").to_str().unwrap(),
            "status",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("revoked by the server: certificate 01ab is revoked")
    );
}

/// The agent is killed (SIGKILL) in the middle of a download; the restarted agent continues
/// with `Range` from the last checkpoint instead of starting over, and the slot ends up
/// byte-identical.
#[test]
fn a_download_resumes_after_the_agent_is_killed() {
    let pki = Pki::new("tugboot test CA");
    let server = Server::start(Some(pki.server_config()));
    let dev = Device::with_extra(&server.url(), &pki, "download_checkpoint_mib = 1");
    // slot B must hold the whole image.
    std::fs::write(dev.path("slotB"), vec![0u8; 6 << 20]).unwrap();
    let v2 = noise(5 << 20, 0x77);
    let blob = serve_update(
        &server,
        &v2,
        Route {
            throttle: Some((128 << 10, Duration::from_millis(40))),
            ..Route::ok(v2.clone())
        },
    );
    let config = dev.path("agent.toml");
    let run = || {
        agent_command()
            .args(["--config", config.to_str().unwrap(), "run", "--once"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut child = run();
    // Wait (bounded) until a checkpoint of at least 2 MiB is on disk, then kill.
    let mut checkpoint = 0;
    for _ in 0..600 {
        if let Ok(bytes) = std::fs::read(dev.path("state.json"))
            && let Ok(state) = AgentState::parse(&bytes)
            && let Some(u) = &state.update
        {
            checkpoint = u.downloaded;
            if checkpoint >= 2 << 20 {
                break;
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the agent finished before it was killed");
    assert!(checkpoint >= 2 << 20, "no checkpoint: {checkpoint}");
    let state = dev.state();
    let u = state.update.as_ref().unwrap();
    assert_eq!(u.phase, Phase::Downloading);
    let saved = u.downloaded;
    assert!(saved >= checkpoint && saved < v2.len() as u64, "{saved}");
    // Restarted, at full speed.
    server.route(&blob, Route::ok(v2.clone()));
    let out = run().wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requests: Vec<_> = server
        .seen()
        .into_iter()
        .filter(|s| s.path == blob)
        .collect();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].range, None);
    assert_eq!(
        requests[1].range.as_deref(),
        Some(format!("bytes={saved}-").as_str()),
        "resumed from the checkpoint"
    );
    let slot_b = std::fs::read(dev.path("slotB")).unwrap();
    assert_eq!(&slot_b[..v2.len()], &v2[..], "byte-identical");
    assert!(matches!(
        dev.state().update.map(|u| u.phase),
        Some(Phase::Trying { .. })
    ));
    assert!(
        accepted_outcomes(&server).is_empty(),
        "nothing to report before the trial: {:?}",
        accepted_outcomes(&server)
    );
}

/// Under systemd (`Type=notify`, `WatchdogSec=`, packaging/tugboot-agent/tugboot-agent.service):
/// the agent says READY=1 over `$NOTIFY_SOCKET` and then sends WATCHDOG=1 at half the interval
/// `$WATCHDOG_USEC` asks for, while it is healthy. The socket is a real unix datagram socket,
/// as systemd's.
#[test]
fn under_systemd_the_agent_says_ready_and_feeds_the_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let pki = Pki::new("tugboot test CA");
    let server = Server::start(Some(pki.server_config()));
    let dev = Device::new(&server.url(), &pki);
    let socket_path = dev.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = agent_command()
        .args(["--config", dev.path("agent.toml").to_str().unwrap(), "run"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut got: Vec<String> = Vec::new();
    let mut buf = [0u8; 256];
    while !(got.iter().any(|m| m == "READY=1")
        && got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3)
    {
        match socket.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{e}; received {got:?}");
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        got.iter().all(|m| m == "READY=1" || m == "WATCHDOG=1"),
        "{got:?}"
    );
}
