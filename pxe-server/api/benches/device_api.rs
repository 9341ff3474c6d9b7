//! Device API benchmark: N simulated devices (10,000 by default), each with its own client
//! certificate issued up front, report concurrently over mutual TLS to a real server on
//! 127.0.0.1. Prints certificate issuance rate, reports/s and latency percentiles, for SQLite
//! and (when `TUGBOOT_TEST_PG_URL` is set) PostgreSQL.
//!
//! ```sh
//! eval "$(tests/postgres)"
//! cargo bench -p tugboot-api --bench device_api            # 10,000 devices, 64 in flight
//! TUGBOOT_BENCH_DEVICES=2000 TUGBOOT_BENCH_CONCURRENCY=32 cargo bench -p tugboot-api --bench device_api
//! ```
//!
//! Every report is a new TLS connection (full handshake with client authentication), as a
//! device reporting every few minutes would make; the server stores each report durably
//! before answering.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use tugboot_api::CertAuthority;
use tugboot_api::client::ApiClient;
use tugboot_api::server::{ApiConfig, ApiParts, ApiServer, system_clock};
use tugboot_api::tokens::OperatorToken;
use tugboot_firmware::{BlobStore, SecretKey, Signed, Timestamp, TrustRoot, TrustedRoot};
use tugboot_fleet::observe::observed;
use tugboot_store::{AnyStore, DeviceCert, Mac, MachineState, Sighting, Store};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

struct Dev {
    id: i64,
    cert_pem: String,
    key_pem: String,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(label: &str, url: &str, devices: usize, concurrency: usize) -> String {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now();
    let ca = CertAuthority::init(&dir.path().join("ca"), "bench CA", t0, 86_400 * 30).unwrap();
    let store = AnyStore::open(url).await.unwrap();

    // Device side: key pairs and CSRs (what each device does once).
    let start = Instant::now();
    let mut csrs = Vec::with_capacity(devices);
    for _ in 0..devices {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        csrs.push((key.serialize_pem(), csr));
    }
    let keygen = start.elapsed();

    // Server side: register the machines (not timed: enrollment bookkeeping, 2 writes each).
    let store_arc = Arc::new(store.clone());
    let mut ids = vec![0i64; devices];
    {
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = Vec::new();
        for i in 0..devices {
            let (store, sem) = (store_arc.clone(), sem.clone());
            tasks.push(tokio::spawn(async move {
                let _p = sem.acquire().await.unwrap();
                let n = u32::try_from(i).unwrap().to_be_bytes();
                let id = store
                    .observe(
                        &[Sighting {
                            mac: Mac([2, 0xbe, n[0], n[1], n[2], n[3]]),
                            facts: observed(tugboot_fleet::Observer::Dhcp, t0, &[]),
                        }],
                        t0,
                    )
                    .await
                    .unwrap()[0];
                store
                    .set_machine_state(id, MachineState::Approved)
                    .await
                    .unwrap();
                id.0
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            ids[i] = t.await.unwrap();
        }
    }

    // Issuance: verify CSR, sign certificate (timed alone), then record it in the store.
    let start = Instant::now();
    let mut issued = Vec::with_capacity(devices);
    for (i, (_, csr)) in csrs.iter().enumerate() {
        issued.push(
            ca.issue_device(csr, tugboot_store::MachineId(ids[i]), t0, 86_400)
                .unwrap(),
        );
    }
    let issue_time = start.elapsed();
    let start = Instant::now();
    {
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = Vec::new();
        for (i, c) in issued.iter().enumerate() {
            let (store, sem) = (store_arc.clone(), sem.clone());
            let rec = DeviceCert {
                serial: c.serial.clone(),
                device: tugboot_store::MachineId(ids[i]),
                issued_at: t0,
                not_after: c.not_after,
                revoked_at: None,
            };
            tasks.push(tokio::spawn(async move {
                let _p = sem.acquire().await.unwrap();
                store.insert_device_cert(&rec).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    let record_time = start.elapsed();
    let devs: Vec<Dev> = issued
        .into_iter()
        .zip(csrs)
        .enumerate()
        .map(|(i, (c, (key_pem, _)))| Dev {
            id: ids[i],
            cert_pem: c.pem,
            key_pem,
        })
        .collect();

    let server = ca.issue_server(&["localhost".into()], t0, 86_400).unwrap();
    let sk = SecretKey::from_seed(&[1; 32]);
    let mut root = Signed::new(TrustRoot {
        version: 1,
        expires: Timestamp::from_unix(u64::try_from(t0).unwrap() + 86_400),
        threshold: 1,
        keys: vec![sk.public()],
        revoked: vec![],
    })
    .unwrap();
    root.sign(&sk);
    let trusted_root = TrustedRoot::bootstrap(
        &root.to_bytes(),
        Timestamp::from_unix(u64::try_from(t0).unwrap()),
    )
    .unwrap();
    let api = ApiServer::new(ApiParts {
        live: Arc::new(tugboot_fleet::Live::new(tugboot_fleet::Fleet::default())),
        store: store.clone(),
        ca: CertAuthority::load(&dir.path().join("ca")).unwrap(),
        state_dir: dir.path().join("state"),
        operator: OperatorToken::new("bench-operator-token-0123456789").unwrap(),
        blobs: BlobStore::open(dir.path().join("blobs")).unwrap(),
        trusted_root,
        server_cert_pem: server.cert_pem,
        server_key_pem: server.key_pem,
        // Every simulated device connects from 127.0.0.1: no per-address cap here.
        config: ApiConfig {
            max_connections_per_peer: usize::MAX,
            ..ApiConfig::default()
        },
        clock: system_clock(),
    })
    .unwrap();
    let handle = api.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();

    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(devices);
    for d in &devs {
        let client = ApiClient::new(
            handle.addr,
            "localhost",
            ca.cert_pem(),
            Some((&d.cert_pem, &d.key_pem)),
        )
        .unwrap();
        let sem = sem.clone();
        let id = d.id;
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let body = serde_json::json!({
                "id": format!("bench-{id}"), "boot_id": "b", "slot": "A", "image_version": 1,
                "checks": {"api": "ok"}, "uptime_secs": 100
            });
            let t = Instant::now();
            let r = client
                .post_json("/api/v1/device/reports", &body)
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            t.elapsed()
        }));
    }
    let mut lat = Vec::with_capacity(devices);
    for t in tasks {
        lat.push(t.await.unwrap());
    }
    let total = start.elapsed();
    assert_eq!(
        store.count_reports().await.unwrap(),
        u64::try_from(devices).unwrap()
    );
    lat.sort();
    drop(handle);
    store.close().await;
    #[allow(clippy::cast_precision_loss)]
    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    format!(
        "| {label} | {devices} | {concurrency} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} |",
        rate(devices, keygen),
        rate(devices, issue_time),
        rate(devices, record_time),
        rate(devices, total),
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    )
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let devices = env_usize("TUGBOOT_BENCH_DEVICES", 10_000);
    let concurrency = env_usize("TUGBOOT_BENCH_CONCURRENCY", 64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("bench.db").display());
    rows.push(rt.block_on(run("SQLite", &sqlite, devices, concurrency)));
    match std::env::var("TUGBOOT_TEST_PG_URL") {
        Ok(base) => {
            let schema = format!("apibench{}", std::process::id());
            rt.block_on(async {
                use sqlx::Connection as _;
                let mut c = sqlx::PgConnection::connect(&base).await.unwrap();
                sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
                    .execute(&mut c)
                    .await
                    .unwrap();
            });
            let sep = if base.contains('?') { '&' } else { '?' };
            let url = format!("{base}{sep}options[search_path]={schema}");
            rows.push(rt.block_on(run("PostgreSQL", &url, devices, concurrency)));
            rt.block_on(async {
                use sqlx::Connection as _;
                let mut c = sqlx::PgConnection::connect(&base).await.unwrap();
                sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
                    .execute(&mut c)
                    .await
                    .unwrap();
            });
        }
        Err(_) => eprintln!("PostgreSQL skipped: TUGBOOT_TEST_PG_URL is not set"),
    }
    println!(
        "| store | devices | in flight | keygen+CSR/s | certs issued/s | certs recorded/s | reports/s | p50 ms | p99 ms | max ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}
