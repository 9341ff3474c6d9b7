//! "Nothing acknowledged is lost": the API server runs in a child process (this test binary
//! again), devices send a burst of reports over mTLS, the parent SIGKILLs the server in the
//! middle of it, reopens the store and checks that every report that got a 200 is stored.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use tugboot_api::CertAuthority;
use tugboot_api::client::ApiClient;
use tugboot_api::server::{ApiConfig, ApiParts, ApiServer, system_clock};
use tugboot_api::tokens::OperatorToken;
use tugboot_firmware::BlobStore;
use tugboot_fleet::facts::Observer;
use tugboot_fleet::observe::observed;
use tugboot_store::{AnyStore, DeviceCert, MachineState, Sighting, Store};

use crate::harness::{Device, OPERATOR_TOKEN, SERVER_NAME, real_now, status_report, test_root};

/// Set (to the prepared directory) only in the child process.
const CHILD_VAR: &str = "TUGBOOT_API_SERVER_CHILD_DIR";
const DEVICES: u32 = 16;
const ACKS_BEFORE_KILL: usize = 200;

pub async fn kill9_during_report_burst(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let now = real_now();
    let ca = CertAuthority::init(&dir.path().join("ca"), "kill9 CA", now, 86_400 * 30).unwrap();
    std::fs::write(dir.path().join("store-url"), url).unwrap();
    let store = AnyStore::open(url).await.unwrap();
    let mut devices = Vec::new();
    for n in 0..DEVICES {
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

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "api_server_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, dir.path())
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
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));

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
    kill_rx.await.unwrap();
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(9));
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
    kill_rx.await.unwrap();
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(9));
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
