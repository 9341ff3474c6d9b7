//! "Nothing acknowledged is lost": the API server runs in a child process (this test binary
//! again, [`child_main`]), clients send a burst (reports, enrollments, publishes, rollout
//! outcomes and operator commands), the parent SIGKILLs the server in the middle of it, reopens
//! the store and checks it, then restarts the server and checks that it carries on.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tugboot_api::CertAuthority;
use tugboot_api::client::{ApiClient, ClientError, HttpResponse};
use tugboot_api::server::{ApiConfig, ApiParts, ApiServer, system_clock};
use tugboot_api::tokens::OperatorToken;
use tugboot_firmware::{BlobStore, Manifest, Role, Sha256Digest, Signed};
use tugboot_fleet::facts::Observer;
use tugboot_fleet::observe::observed;
use tugboot_store::{AnyStore, DeviceCert, MachineState, Sighting, Store};

use crate::harness::{
    Device, OPERATOR_TOKEN, SERVER_NAME, manifest_for, manifest_with, outcome_report, real_now,
    status_report, test_root,
};

/// Set (to the prepared directory) only in the child process.
const CHILD_VAR: &str = "TUGBOOT_API_SERVER_CHILD_DIR";
const DEVICES: u32 = 16;
const ACKS_BEFORE_KILL: usize = 200;

/// Approved machines with certificates issued directly by the CA (no enrollment round trip),
/// numbered from 1; the store is closed again before the server starts.
async fn enrolled_devices(url: &str, ca: &CertAuthority, count: u32, now: i64) -> Vec<Device> {
    let store = AnyStore::open(url).await.unwrap();
    let mut devices = Vec::new();
    for n in 0..count {
        let mut d = Device::new(n + 1);
        let id = store
            .observe(
                &[Sighting {
                    mac: d.mac.parse().unwrap(),
                    facts: observed(Observer::Dhcp, now, &[]),
                }],
                now,
            )
            .await
            .unwrap()[0];
        let m = store
            .set_machine_state(id, MachineState::Approved)
            .await
            .unwrap();
        let cert = ca.issue_device(&d.csr_pem, m.id, now, 86_400).unwrap();
        store
            .insert_device_cert(&DeviceCert {
                serial: cert.serial,
                device: m.id,
                issued_at: now,
                not_after: cert.not_after,
                revoked_at: None,
            })
            .await
            .unwrap();
        d.id = m.id.0;
        d.cert_pem = Some(cert.pem);
        devices.push(d);
    }
    store.close().await;
    devices
}

/// Starts the server on the prepared `dir` in a child process (this test binary running
/// `api_server_child`); returns it and where it listens.
fn spawn_child(dir: &std::path::Path) -> (std::process::Child, std::net::SocketAddr) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "api_server_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.split("PORT ").nth(1).map(|p| p.trim().parse().unwrap()))
        .expect("child printed its port");
    (child, std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

/// SIGKILLs the server and checks that it died of it.
fn kill9(child: &mut std::process::Child) {
    use std::os::unix::process::ExitStatusExt as _;
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "{status}");
}

/// Waits for the burst to reach the moment of the kill (bounded: a burst that stalls fails).
async fn kill_moment(rx: tokio::sync::oneshot::Receiver<()>, what: &str) {
    tokio::time::timeout(Duration::from_secs(120), rx)
        .await
        .unwrap_or_else(|_| panic!("the burst never reached the kill ({what})"))
        .unwrap();
}

/// kill -9 of the server in the middle of a burst of status reports (16 devices, each posting
/// as fast as it is answered): every report that got a 200 is stored.
pub async fn kill9_during_report_burst(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let now = real_now();
    let ca = CertAuthority::init(&dir.path().join("ca"), "kill9 CA", now, 86_400 * 30).unwrap();
    std::fs::write(dir.path().join("store-url"), url).unwrap();
    let devices = enrolled_devices(url, &ca, DEVICES, now).await;
    let (mut child, addr) = spawn_child(dir.path());

    let acked = Arc::new(Mutex::new(Vec::<(i64, String)>::new()));
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let kill_tx = Arc::new(Mutex::new(Some(kill_tx)));
    let mut tasks = Vec::new();
    for d in &devices {
        let client = ApiClient::new(
            addr,
            SERVER_NAME,
            ca.cert_pem(),
            Some((d.cert_pem.as_deref().unwrap(), &d.key_pem)),
        )
        .unwrap();
        let (acked, kill_tx, id) = (acked.clone(), kill_tx.clone(), d.id);
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let rid = format!("d{id}-r{i}");
                match client
                    .post_json("/api/v1/device/reports", &status_report(&rid))
                    .await
                {
                    Ok(r) if r.status == 200 => {
                        let mut a = acked.lock().unwrap();
                        a.push((id, rid));
                        if a.len() >= ACKS_BEFORE_KILL
                            && let Some(tx) = kill_tx.lock().unwrap().take()
                        {
                            let _ = tx.send(());
                        }
                    }
                    Ok(r) => panic!("unexpected status {}", r.status),
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    kill_moment(kill_rx, "reports").await;
    kill9(&mut child);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= ACKS_BEFORE_KILL);
    let store = AnyStore::open(url).await.unwrap();
    for (device, rid) in &acked {
        assert!(
            store
                .get_report(tugboot_store::MachineId(*device), rid)
                .await
                .unwrap()
                .is_some(),
            "acknowledged report {rid} of device {device} lost"
        );
    }
    store.close().await;
}

/// The server process of the kill -9 test.
pub fn child_main() {
    let Some(dir) = std::env::var_os(CHILD_VAR) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let now = real_now();
        let ca = CertAuthority::load(&dir.join("ca")).unwrap();
        let server = ca.issue_server(&[SERVER_NAME.into()], now, 86_400).unwrap();
        let url = std::fs::read_to_string(dir.join("store-url")).unwrap();
        let (_, trusted_root) = test_root(now);
        let api = ApiServer::new(ApiParts {
            store: AnyStore::open(&url).await.unwrap(),
            live: std::sync::Arc::new(tugboot_fleet::Live::new(tugboot_fleet::Fleet::default())),
            ca,
            state_dir: dir.join("state"),
            operator: OperatorToken::new(OPERATOR_TOKEN).unwrap(),
            blobs: BlobStore::open(dir.join("blobs")).unwrap(),
            trusted_root,
            server_cert_pem: server.cert_pem,
            server_key_pem: server.key_pem,
            config: ApiConfig::default(),
            clock: system_clock(),
        })
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // libtest may have written "test api_server_child ... " on the same line.
        println!("\nPORT {}", listener.local_addr().unwrap().port());
        api.serve(listener).await.unwrap();
    });
}

const ENROLL_TOKENS: u32 = 400;
const ENROLLS_BEFORE_KILL: usize = 40;

/// kill -9 of the server in the middle of a burst of token enrollments (8 at a time, each
/// device asking twice, the second a replay): every certificate a device received is on record
/// for it, no machine has two, every spent token has its certificate (one transaction), and the
/// restarted server answers a replay with the same certificate and enrolls a new device.
pub async fn kill9_during_enrollment_burst(url: &str) {
    use tugboot_api::tokens::token_hash;
    let dir = tempfile::tempdir().unwrap();
    let now = real_now();
    let ca = CertAuthority::init(&dir.path().join("ca"), "kill9 CA", now, 86_400 * 30).unwrap();
    std::fs::write(dir.path().join("store-url"), url).unwrap();
    let store = AnyStore::open(url).await.unwrap();
    for n in 0..=ENROLL_TOKENS {
        store
            .create_enrollment_token(&tugboot_store::NewEnrollmentToken {
                hash: token_hash(&format!("kill9-token-{n}")),
                created_at: now,
                expires_at: now + 3600,
                bound_mac: None,
                bound_serial: None,
            })
            .await
            .unwrap();
    }
    store.close().await;
    let (mut child, addr) = spawn_child(dir.path());
    let anon = ApiClient::new(addr, SERVER_NAME, ca.cert_pem(), None).unwrap();
    // (device number, device id, certificate PEM) of every 200.
    let acked = Arc::new(Mutex::new(Vec::<(u32, i64, String)>::new()));
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let kill_tx = Arc::new(Mutex::new(Some(kill_tx)));
    let mut tasks = Vec::new();
    for lane in 0..8u32 {
        let (anon, acked, kill_tx) = (anon.clone(), acked.clone(), kill_tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut devices = Vec::new();
            for n in (lane..ENROLL_TOKENS).step_by(8) {
                let d = Device::new(1000 + n);
                let body = serde_json::json!({"csr": d.csr_pem, "mac": d.mac,
                    "token": format!("kill9-token-{n}")});
                for _ in 0..2 {
                    match anon.post_json("/api/v1/enroll", &body).await {
                        Ok(r) if r.status == 200 => {
                            let v = r.json().unwrap();
                            let mut a = acked.lock().unwrap();
                            a.push((
                                n,
                                v["device_id"].as_i64().unwrap(),
                                v["certificate"].as_str().unwrap().to_owned(),
                            ));
                            if a.len() >= ENROLLS_BEFORE_KILL
                                && let Some(tx) = kill_tx.lock().unwrap().take()
                            {
                                let _ = tx.send(());
                            }
                        }
                        Ok(r) => panic!(
                            "unexpected {} {}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        ),
                        Err(_) => return devices, // the server is gone
                    }
                }
                devices.push((n, d));
            }
            devices
        }));
    }
    kill_moment(kill_rx, "enrollments").await;
    kill9(&mut child);
    let mut devices = Vec::new();
    for t in tasks {
        devices.extend(t.await.unwrap());
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= ENROLLS_BEFORE_KILL);

    let store = AnyStore::open(url).await.unwrap();
    let serial_of = |pem: &str| {
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
            .unwrap();
        tugboot_api::ca::peer_identity(&der).unwrap()
    };
    for (n, id, pem) in &acked {
        let ident = serial_of(pem);
        assert_eq!(ident.device.0, *id);
        let certs = store
            .list_device_certs(tugboot_store::MachineId(*id))
            .await
            .unwrap();
        assert!(
            certs.iter().any(|c| c.serial == ident.serial),
            "certificate of device {n} lost"
        );
    }
    let machines = store.list_machines().await.unwrap();
    let mut certs = 0;
    for m in &machines {
        let c = store.list_device_certs(m.id).await.unwrap();
        assert!(
            c.len() <= 1,
            "machine {} has {} certificates",
            m.id,
            c.len()
        );
        certs += c.len();
    }
    let spent = store
        .list_enrollment_tokens()
        .await
        .unwrap()
        .iter()
        .filter(|t| t.used_at.is_some())
        .count();
    assert_eq!(
        spent, certs,
        "a token spent without its certificate, or the reverse"
    );
    store.close().await;

    // The restarted server: a replay gets the same certificate; a new device enrolls.
    let (mut child, addr) = spawn_child(dir.path());
    let anon = ApiClient::new(addr, SERVER_NAME, ca.cert_pem(), None).unwrap();
    let (n, d) = devices.first().expect("a device enrolled before the kill");
    let body =
        serde_json::json!({"csr": d.csr_pem, "mac": d.mac, "token": format!("kill9-token-{n}")});
    let r = anon.post_json("/api/v1/enroll", &body).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let again = r.json().unwrap()["certificate"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        acked.iter().any(|(m, _, pem)| m == n && *pem == again),
        "the replay after the restart got another certificate"
    );
    let fresh = Device::new(5000);
    let body = serde_json::json!({"csr": fresh.csr_pem, "mac": fresh.mac,
        "token": format!("kill9-token-{ENROLL_TOKENS}")});
    let r = anon.post_json("/api/v1/enroll", &body).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    child.kill().unwrap();
    let _ = child.wait();
}

/// A signal the first of many tasks fires when the burst reaches the kill.
type KillSwitch = Arc<Mutex<Option<tokio::sync::oneshot::Sender<()>>>>;

fn kill_switch() -> (KillSwitch, tokio::sync::oneshot::Receiver<()>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    (Arc::new(Mutex::new(Some(tx))), rx)
}

fn fire(switch: &KillSwitch) {
    if let Some(tx) = switch.lock().unwrap().take() {
        let _ = tx.send(());
    }
}

/// An operator request (bearer token) on a new connection.
async fn operator(
    c: &ApiClient,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<HttpResponse, ClientError> {
    let auth = format!("Bearer {OPERATOR_TOKEN}");
    c.request(
        method,
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body,
    )
    .await
}

/// Deterministic bytes (xorshift), different per seed.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// A number in `range`, different from run to run (the moment of a kill; printed by the tests).
fn random_in(range: std::ops::RangeInclusive<usize>) -> usize {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as usize;
    range.start() + nanos % (range.end() - range.start() + 1)
}

/// Size of one upload request of [`push_blob`]: artifacts take several, so kills land mid-upload.
const UPLOAD_CHUNK: usize = 16 * 1024;

/// Pushes one artifact the way `tugboot images push` does: ask where its upload stands
/// (`GET /api/v1/admin/blobs/{sha256}?size=N`), send the rest in chunks (`PATCH`, each durable
/// before its answer). Resumes an upload a killed server left behind.
async fn push_blob(c: &ApiClient, blob: &[u8]) -> Result<(), ClientError> {
    let size = blob.len();
    let path = format!(
        "/api/v1/admin/blobs/{}?size={size}",
        Sha256Digest::of(blob).to_hex()
    );
    let offset_of = |r: &HttpResponse| -> usize {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        usize::try_from(r.json().unwrap()["offset"].as_u64().unwrap()).unwrap()
    };
    let mut offset = offset_of(&operator(c, "GET", &path, b"").await?);
    while offset < size {
        let end = (offset + UPLOAD_CHUNK).min(size);
        let r = operator(
            c,
            "PATCH",
            &format!("{path}&offset={offset}"),
            &blob[offset..end],
        )
        .await?;
        offset = offset_of(&r);
    }
    Ok(())
}

/// One image an operator publishes: its signed manifest and its two artifacts.
#[derive(Debug, Clone)]
struct Release {
    name: &'static str,
    version: u64,
    manifest: Vec<u8>,
    blobs: Vec<Vec<u8>>,
}

fn release(n: u32, now: i64) -> Release {
    let name = if n.is_multiple_of(2) {
        "gateway"
    } else {
        "sensor"
    };
    let version = u64::from(n) + 1;
    let n64 = u64::from(n);
    let blobs = vec![
        noise(48 * 1024 + 517 * n as usize, 2 * n64 + 1),
        noise(8 * 1024 + n as usize, 2 * n64 + 2),
    ];
    let manifest = manifest_with(
        name,
        version,
        &[
            (Role::Slot, "rootfs.img", &blobs[0]),
            (Role::File, "boot.bin", &blobs[1]),
        ],
        now,
    );
    Release {
        name,
        version,
        manifest,
        blobs,
    }
}

/// Pushes the artifacts of `r`, then its manifest; the publish's answer (201 new, 200 already
/// there with the same bytes).
async fn publish(c: &ApiClient, r: &Release) -> Result<HttpResponse, ClientError> {
    for b in &r.blobs {
        push_blob(c, b).await?;
    }
    operator(c, "POST", "/api/v1/admin/images", &r.manifest).await
}

const RELEASES: u32 = 16;
const PUBLISH_LANES: u32 = 4;
/// The kill comes after between 3 and 9 acknowledged publishes (a different moment each run).
const PUBLISHES_BEFORE_KILL: std::ops::RangeInclusive<usize> = 3..=9;

/// kill -9 of the server while 4 operators publish 16 signed images (two names, distinct
/// versions, two artifacts each, pushed in 16 KiB resumable chunks, then the manifest), after
/// 3 to 9 publishes (a random number) answered 201. Then, in the store and the blob directory as the killed server
/// left them:
/// - every acknowledged image is in the catalogue exactly once, published, with the manifest
///   bytes that were sent;
/// - no catalogue entry (acknowledged or not) refers to a missing, truncated or corrupt
///   artifact (each re-hashed against its manifest).
///
/// The restarted server lists every acknowledged image as serving; publishing one again answers
/// 200 and adds nothing; every unacknowledged one (its upload resumed where the killed server
/// left it) can be published and is served, and the catalogue ends with each image once.
pub async fn kill9_during_publish_burst(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let now = real_now();
    let ca = CertAuthority::init(&dir.path().join("ca"), "kill9 CA", now, 86_400 * 30).unwrap();
    std::fs::write(dir.path().join("store-url"), url).unwrap();
    let releases: Arc<Vec<Release>> = Arc::new((0..RELEASES).map(|n| release(n, now)).collect());
    let kill_after = random_in(PUBLISHES_BEFORE_KILL);
    let (mut child, addr) = spawn_child(dir.path());
    let c = ApiClient::new(addr, SERVER_NAME, ca.cert_pem(), None).unwrap();
    let acked = Arc::new(Mutex::new(Vec::<usize>::new()));
    let (switch, kill_rx) = kill_switch();
    let mut tasks = Vec::new();
    for lane in 0..PUBLISH_LANES {
        let (c, acked, switch, releases) =
            (c.clone(), acked.clone(), switch.clone(), releases.clone());
        tasks.push(tokio::spawn(async move {
            for n in (lane as usize..releases.len()).step_by(PUBLISH_LANES as usize) {
                match publish(&c, &releases[n]).await {
                    Ok(r) if r.status == 201 => {
                        let mut a = acked.lock().unwrap();
                        a.push(n);
                        if a.len() >= kill_after {
                            fire(&switch);
                        }
                    }
                    Ok(r) => panic!(
                        "publish answered {} {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    ),
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    kill_moment(kill_rx, "publishes").await;
    kill9(&mut child);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= kill_after);
    assert!(
        acked.len() < releases.len(),
        "the kill came after the burst"
    );

    let store = AnyStore::open(url).await.unwrap();
    let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
    let images = store.list_images(None).await.unwrap();
    for &n in &acked {
        let r = &releases[n];
        let copies: Vec<_> = images
            .iter()
            .filter(|i| i.name == r.name && i.version == r.version)
            .collect();
        assert_eq!(
            copies.len(),
            1,
            "acknowledged {}@{} is in the catalogue {} times",
            r.name,
            r.version,
            copies.len()
        );
        assert!(
            copies[0].published,
            "{}@{} not published",
            r.name, r.version
        );
        assert_eq!(copies[0].manifest, r.manifest, "{}@{}", r.name, r.version);
    }
    for i in &images {
        assert!(
            releases
                .iter()
                .any(|r| r.name == i.name && r.version == i.version && r.manifest == i.manifest),
            "{}@{} in the catalogue was never sent",
            i.name,
            i.version
        );
        let signed = Signed::<Manifest>::from_bytes(&i.manifest).unwrap();
        for a in &signed.value().artifacts {
            blobs.verify(a).unwrap_or_else(|e| {
                panic!(
                    "{}@{} refers to artifact {} that is not whole: {e}",
                    i.name, i.version, a.name
                )
            });
        }
    }
    eprintln!(
        "kill9 publish: killed after {kill_after}: {} of {} publishes answered, {} images in the catalogue after the kill",
        acked.len(),
        releases.len(),
        images.len()
    );
    store.close().await;

    // The restarted server serves what was acknowledged and takes the rest.
    let (mut child, addr) = spawn_child(dir.path());
    let c = ApiClient::new(addr, SERVER_NAME, ca.cert_pem(), None).unwrap();
    let listed = |r: HttpResponse| -> Vec<(String, u64, bool)> {
        assert_eq!(r.status, 200);
        r.json()
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().unwrap().to_owned(),
                    v["version"].as_u64().unwrap(),
                    v["serving"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    let before = listed(
        operator(&c, "GET", "/api/v1/admin/images", b"")
            .await
            .unwrap(),
    );
    for &n in &acked {
        let r = &releases[n];
        assert!(
            before.contains(&(r.name.to_owned(), r.version, true)),
            "{}@{} not served after the restart: {before:?}",
            r.name,
            r.version
        );
    }
    let again = publish(&c, &releases[acked[0]]).await.unwrap();
    assert_eq!(
        again.status,
        200,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    let after = listed(
        operator(&c, "GET", "/api/v1/admin/images", b"")
            .await
            .unwrap(),
    );
    assert_eq!(
        after, before,
        "re-publishing an acknowledged image changed the catalogue"
    );
    // The unacknowledged ones, by 4 operators again.
    let mut lanes = Vec::new();
    for lane in 0..PUBLISH_LANES as usize {
        let (c, releases, acked) = (c.clone(), releases.clone(), acked.clone());
        lanes.push(tokio::spawn(async move {
            for n in (lane..releases.len()).step_by(PUBLISH_LANES as usize) {
                if acked.contains(&n) {
                    continue;
                }
                let r = &releases[n];
                let answer = publish(&c, r).await.unwrap();
                assert!(
                    answer.status == 201 || answer.status == 200,
                    "unacknowledged {}@{}: {} {}",
                    r.name,
                    r.version,
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                );
            }
        }));
    }
    for l in lanes {
        l.await.unwrap();
    }
    let all = listed(
        operator(&c, "GET", "/api/v1/admin/images", b"")
            .await
            .unwrap(),
    );
    assert_eq!(all.len(), releases.len(), "{all:?}");
    for r in releases.iter() {
        assert!(
            all.contains(&(r.name.to_owned(), r.version, true)),
            "{}@{} not served: {all:?}",
            r.name,
            r.version
        );
    }
    kill9(&mut child);
}

const ROLLOUT_DEVICES: u32 = 20;
const ROLLOUT_VERSION: u64 = 2;
/// Stages of 10, 25, 50, 75 and 100 % of 20 devices: 2, 5, 10, 15, 20 admitted.
const ROLLOUT_STAGES: [u8; 5] = [10, 25, 50, 75, 100];
/// Positions (in the rollout's order) of the devices whose update rolls back: both in the third
/// stage, so the rollout runs two stages before the first rollback can pause it.
const FAILING_POSITIONS: [usize; 2] = [6, 8];
/// The kill comes after between 3 and 9 acknowledged outcomes (a different moment each run:
/// in the first two stages, or once the rollbacks of the third are in).
const OUTCOMES_BEFORE_KILL: std::ops::RangeInclusive<usize> = 3..=9;
const COMMANDS_BEFORE_KILL: usize = 2;

/// An operator command that was answered 200, with the rollout as the answer showed it (after
/// the server's own evaluation).
#[derive(Debug, Clone)]
struct CommandAck {
    command: &'static str,
    state: String,
    stage: u64,
}

fn device_client(addr: std::net::SocketAddr, ca: &CertAuthority, d: &Device) -> ApiClient {
    ApiClient::new(
        addr,
        SERVER_NAME,
        ca.cert_pem(),
        Some((d.cert_pem.as_deref().unwrap(), &d.key_pem)),
    )
    .unwrap()
}

/// kill -9 of the server in the middle of a staged rollout: 20 enrolled devices, one image,
/// stages of 10/25/50/75/100 %, `max_failure_permille` 0 and `min_reports` 1 (one rollback
/// among the admitted devices pauses it). Each device polls its assignment and, once admitted,
/// reports its outcome (two devices of the third stage roll back, the rest commit) while an
/// operator task pauses a running rollout and resumes a paused one every 30 ms. The server is
/// killed once 3 to 9 outcomes (a random number) and 2 commands were answered 200.
///
/// Afterwards, in the store: every acknowledged report is stored and is its device's verdict
/// for the image (one per device). The restarted server has evaluated the rollout before it
/// answers, and then:
/// - counters: its `devices` summary equals a recount from the per-device rows (the rollout's
///   order of the approved machines, the stage's share of it admitted, each admitted device's
///   latest outcome); no device counted twice;
/// - stages never go back: the stage is at least that of every acknowledged answer;
/// - operator transitions are not undone. Let `last` be the last command answered 200 (its
///   answer shows the rollout after the server's evaluation) and `unanswered` the command in
///   flight at the kill, if any (applied or not). Then: `last` answered `paused` (and
///   `unanswered` is not a resume) ⇒ still `paused` at the same stage (only a resume leaves
///   `paused`); `paused` now ⇒ `last` answered `paused`, or `unanswered` is a pause, or the
///   controller's rule holds on the stored rows (a failure among the admitted devices: with a
///   0 ‰ threshold the rule, once true, stays true, so it can be checked after the fact);
///   `running` now ⇒ the rule does not hold (the restarted controller paused it otherwise) and
///   `last` did not answer `paused` unless `unanswered` is a resume;
/// - the controller continues: the devices retry unanswered reports (same id: a duplicate when
///   stored), the rolled-back ones commit on a second try, the operator resumes whenever it is
///   paused, admitted devices commit, and the rollout completes with all 20 counted once and
///   each machine recorded as running the image.
pub async fn kill9_during_rollout(url: &str) {
    use std::collections::{HashMap, HashSet};
    use tugboot_fleet::rollout::{Rollout, members};
    use tugboot_store::{MachineId, RolloutId};

    let dir = tempfile::tempdir().unwrap();
    let now = real_now();
    let ca = CertAuthority::init(&dir.path().join("ca"), "kill9 CA", now, 86_400 * 30).unwrap();
    std::fs::write(dir.path().join("store-url"), url).unwrap();
    let devices = enrolled_devices(url, &ca, ROLLOUT_DEVICES, now).await;
    let kill_after = random_in(OUTCOMES_BEFORE_KILL);
    let (mut child, addr) = spawn_child(dir.path());
    let op = ApiClient::new(addr, SERVER_NAME, ca.cert_pem(), None).unwrap();
    let artifact = noise(64 * 1024, 99);
    push_blob(&op, &artifact).await.unwrap();
    let manifest = manifest_for(&artifact, ROLLOUT_VERSION, now);
    let r = operator(&op, "POST", "/api/v1/admin/images", &manifest)
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let stages: Vec<_> = ROLLOUT_STAGES
        .iter()
        .map(|p| serde_json::json!({"percent": p, "soak_secs": 0}))
        .collect();
    let body = serde_json::json!({
        "image_name": crate::harness::IMAGE, "image_version": ROLLOUT_VERSION, "selector": "",
        "stages": stages, "max_failure_permille": 0, "min_reports": 1
    });
    let r = operator(
        &op,
        "POST",
        "/api/v1/admin/rollouts",
        &serde_json::to_vec(&body).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json().unwrap()["id"].as_i64().unwrap();
    let rollout_path = format!("/api/v1/admin/rollouts/{id}");
    // The rollout's order (as the server computes it: every device is approved and matches).
    let mut order: Vec<i64> = devices.iter().map(|d| d.id).collect();
    order.sort_by_cached_key(|d| (members::order(RolloutId(id), MachineId(*d)), *d));
    let failing: Vec<i64> = FAILING_POSITIONS.iter().map(|&p| order[p]).collect();
    let outcome_of = |d: i64| {
        if failing.contains(&d) {
            "rolled-back"
        } else {
            "committed"
        }
    };

    // (device, report id, outcome) of every report sent, and of every one answered 200.
    type Sent = Arc<Mutex<Vec<(i64, String, &'static str)>>>;
    let sent: Sent = Arc::default();
    let acked: Sent = Arc::default();
    let answered = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let kill_when_due = move |answered: &(AtomicUsize, AtomicUsize), switch: &KillSwitch| {
        if answered.0.load(Ordering::SeqCst) >= kill_after
            && answered.1.load(Ordering::SeqCst) >= COMMANDS_BEFORE_KILL
        {
            fire(switch);
        }
    };
    let (switch, kill_rx) = kill_switch();
    let mut tasks = Vec::new();
    for d in &devices {
        let client = device_client(addr, &ca, d);
        let (sent, acked, answered, switch) = (
            sent.clone(),
            acked.clone(),
            answered.clone(),
            switch.clone(),
        );
        let (id, outcome) = (d.id, outcome_of(d.id));
        tasks.push(tokio::spawn(async move {
            loop {
                match client.get("/api/v1/device/assignment").await {
                    Ok(r) if r.status == 200 => break,
                    Ok(r) if r.status == 204 => tokio::time::sleep(Duration::from_millis(40)).await,
                    Ok(r) => panic!("assignment answered {}", r.status),
                    Err(_) => return, // the server is gone
                }
            }
            let rid = format!("outcome-{id}");
            sent.lock().unwrap().push((id, rid.clone(), outcome));
            let report = outcome_report(&rid, outcome, ROLLOUT_VERSION);
            match client.post_json("/api/v1/device/reports", &report).await {
                Ok(r) if r.status == 200 => {
                    acked.lock().unwrap().push((id, rid, outcome));
                    answered.0.fetch_add(1, Ordering::SeqCst);
                    kill_when_due(&answered, &switch);
                }
                Ok(r) => panic!("report answered {}", r.status),
                Err(_) => {} // the server is gone
            }
        }));
    }
    let operator_task = {
        let (op, answered, switch, path) = (
            op.clone(),
            answered.clone(),
            switch.clone(),
            rollout_path.clone(),
        );
        tokio::spawn(async move {
            let mut acks = Vec::<CommandAck>::new();
            let mut unanswered = None;
            loop {
                tokio::time::sleep(Duration::from_millis(30)).await;
                let Ok(r) = operator(&op, "GET", &path, b"").await else {
                    break;
                };
                let command = match r.json().unwrap()["state"].as_str().unwrap() {
                    "running" => "pause",
                    "paused" => "resume",
                    other => panic!("rollout {other} before the kill"),
                };
                unanswered = Some(command);
                match operator(&op, "POST", &format!("{path}/{command}"), b"").await {
                    Ok(r) if r.status == 200 => {
                        let v = r.json().unwrap();
                        acks.push(CommandAck {
                            command,
                            state: v["state"].as_str().unwrap().to_owned(),
                            stage: v["stage"].as_u64().unwrap(),
                        });
                        unanswered = None;
                        answered.1.fetch_add(1, Ordering::SeqCst);
                        kill_when_due(&answered, &switch);
                    }
                    // Refused (the controller moved it meanwhile): nothing applied.
                    Ok(r) if r.status == 409 => unanswered = None,
                    Ok(r) => panic!("{command} answered {}", r.status),
                    Err(_) => break, // the server is gone
                }
            }
            (acks, unanswered)
        })
    };
    kill_moment(kill_rx, "rollout").await;
    kill9(&mut child);
    for t in tasks {
        t.await.unwrap();
    }
    let (acks, unanswered) = operator_task.await.unwrap();
    let sent = sent.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= kill_after && acks.len() >= COMMANDS_BEFORE_KILL);
    for a in &acks {
        // Only a resume leaves `paused`: a pause is answered `paused` whatever ran meanwhile.
        assert!(a.command != "pause" || a.state == "paused", "{acks:?}");
    }

    // The store as the killed server left it.
    let store = AnyStore::open(url).await.unwrap();
    let record = store.get_rollout(RolloutId(id)).await.unwrap().unwrap();
    let registry = tugboot_fleet::Registry::new(store.list_machines().await.unwrap());
    let group = members::members(&record, &registry).unwrap();
    assert_eq!(
        group.iter().map(|m| m.0).collect::<Vec<_>>(),
        order,
        "rollout order"
    );
    let mut verdicts = HashMap::new();
    for v in store
        .image_outcomes(crate::harness::IMAGE, ROLLOUT_VERSION)
        .await
        .unwrap()
    {
        assert!(
            verdicts.insert(v.device.0, v.kind.as_str()).is_none(),
            "device {} has two verdicts",
            v.device
        );
    }
    for (device, rid, outcome) in &acked {
        assert!(
            store
                .get_report(MachineId(*device), rid)
                .await
                .unwrap()
                .is_some(),
            "acknowledged report {rid} of device {device} lost"
        );
        assert_eq!(
            verdicts.get(device),
            Some(outcome),
            "verdict of device {device}"
        );
    }
    for device in verdicts.keys() {
        assert!(
            sent.iter().any(|(d, _, _)| d == device),
            "a verdict for device {device}, which never reported"
        );
    }
    store.close().await;

    // The restarted server evaluated the rollout before answering.
    let (mut child, addr) = spawn_child(dir.path());
    let op = ApiClient::new(addr, SERVER_NAME, ca.cert_pem(), None).unwrap();
    let v = operator(&op, "GET", &rollout_path, b"")
        .await
        .unwrap()
        .json()
        .unwrap();
    let state = v["state"].as_str().unwrap().to_owned();
    let stage = v["stage"].as_u64().unwrap();
    let admitted = match state.as_str() {
        "running" | "paused" => Rollout::from_record(&record, 0)
            .target_count(u32::try_from(stage).unwrap(), group.len()),
        "completed" => group.len(),
        other => panic!("rollout {other} after the restart: {v}"),
    };
    let count = |kind: &str| {
        order[..admitted]
            .iter()
            .filter(|d| verdicts.get(*d).copied() == Some(kind))
            .count()
    };
    let (committed, failed) = (count("committed"), count("rolled-back"));
    let d = &v["devices"];
    assert_eq!(
        (
            d["group"].as_u64(),
            d["admitted"].as_u64(),
            d["committed"].as_u64(),
            d["failed"].as_u64(),
            d["timed_out"].as_u64(),
            d["pending"].as_u64(),
        ),
        (
            Some(group.len() as u64),
            Some(admitted as u64),
            Some(committed as u64),
            Some(failed as u64),
            Some(0),
            Some((admitted - committed - failed) as u64),
        ),
        "stage counters differ from the per-device rows: {v}"
    );
    let max_acked_stage = acks.iter().map(|a| a.stage).max().unwrap_or(0);
    assert!(
        stage >= max_acked_stage,
        "stage went back: {v} after {acks:?}"
    );
    let last = acks.last().unwrap();
    let rule_holds = failed > 0;
    eprintln!(
        "kill9 rollout: killed after {kill_after}: {} outcomes and {} commands answered, {} reports sent; last answer {} \
         at stage {}, unanswered {unanswered:?}; restarted {state} at stage {stage} \
         ({committed} committed, {failed} failed of {admitted} admitted)",
        acked.len(),
        acks.len(),
        sent.len(),
        last.state,
        last.stage,
    );
    let context = format!("{v}; acknowledged {acks:?}; unanswered {unanswered:?}");
    if last.state == "paused" && unanswered != Some("resume") {
        assert_eq!(
            (state.as_str(), stage),
            ("paused", last.stage),
            "an acknowledged pause was undone: {context}"
        );
    }
    match state.as_str() {
        "paused" => assert!(
            last.state == "paused" || unanswered == Some("pause") || rule_holds,
            "paused without an operator or the controller's rule to explain it: {context}"
        ),
        "running" => assert!(
            !rule_holds,
            "the restarted controller left a failing rollout running: {context}"
        ),
        _ => panic!("completed although two devices rolled back or never reported: {context}"),
    }

    // The controller continues: unanswered reports retried (same id), then every device
    // commits once admitted, the operator resuming whenever the rollout is paused.
    for (device, rid, outcome) in &sent {
        if acked.iter().any(|(_, r, _)| r == rid) {
            continue;
        }
        let d = devices.iter().find(|d| d.id == *device).unwrap();
        let r = device_client(addr, &ca, d)
            .post_json(
                "/api/v1/device/reports",
                &outcome_report(rid, outcome, ROLLOUT_VERSION),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let mut done: HashSet<i64> = sent
        .iter()
        .filter(|(_, _, o)| *o == "committed")
        .map(|(d, _, _)| *d)
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let v = operator(&op, "GET", &rollout_path, b"")
            .await
            .unwrap()
            .json()
            .unwrap();
        match v["state"].as_str().unwrap() {
            "completed" => {
                assert_eq!(v["devices"]["committed"], ROLLOUT_DEVICES, "{v}");
                assert_eq!(v["devices"]["failed"], 0, "{v}");
                break;
            }
            "paused" => {
                let r = operator(&op, "POST", &format!("{rollout_path}/resume"), b"")
                    .await
                    .unwrap();
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            }
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rollout did not complete after the restart: {v}"
        );
        for d in &devices {
            if done.contains(&d.id) {
                continue;
            }
            let c = device_client(addr, &ca, d);
            if c.get("/api/v1/device/assignment").await.unwrap().status == 200 {
                let rid = format!("after-restart-{}", d.id);
                let report = outcome_report(&rid, "committed", ROLLOUT_VERSION);
                let r = c
                    .post_json("/api/v1/device/reports", &report)
                    .await
                    .unwrap();
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                done.insert(d.id);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let image = format!("{}@{ROLLOUT_VERSION}", crate::harness::IMAGE);
    for d in &devices {
        let m = operator(&op, "GET", &format!("/api/v1/admin/machines/{}", d.id), b"")
            .await
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(
            m["machine"]["last_booted_image"], image,
            "device {} committed {image} but is not recorded as running it",
            d.id
        );
    }
    kill9(&mut child);
}
