//! Console page times with a large fleet in the store (10,000 machines by default).
//!
//! The store (SQLite in a temporary directory) is filled with N machines seen on the network
//! (arch, firmware), each attesting the image it runs (five versions) and holding a device
//! certificate; every second one has a report (2 % of them failing). The live fleet is
//! refreshed from it and the console's health table built, as `tugboot serve` does at start.
//!
//! Then, per page, the **server time** — the router answering an in-process request with a
//! logged-in session, no network — as median and p95 over the samples; and, side by side, the
//! same over HTTPS to the real listener (a new TLS connection per request, as a browser's
//! first load) for the overview and for what an operator would otherwise use,
//! `GET /api/v1/admin/machines` (`tugboot machines list --json`).
//!
//! ```sh
//! cargo bench -p tugboot-console --bench console_load
//! TUGBOOT_BENCH_MACHINES=1000 TUGBOOT_BENCH_SAMPLES=50 cargo bench -p tugboot-console --bench console_load
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tower::ServiceExt as _;
use tugboot_api::CertAuthority;
use tugboot_api::client::ApiClient;
use tugboot_api::server::{ApiConfig, ApiParts, ApiServer, system_clock};
use tugboot_api::tokens::OperatorToken;
use tugboot_firmware::{BlobStore, SecretKey, Signed, Timestamp, TrustRoot, TrustedRoot};
use tugboot_fleet::facts::{FactKey, Source, keys};
use tugboot_fleet::observe::observed;
use tugboot_store::{AnyStore, DeviceCert, Mac, MachineState, Report, Sighting, Store};

const TOKEN: &str = "bench-operator-token-0123456789abcdef0123456789abcdef";

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

fn trusted_root(now: i64) -> TrustedRoot {
    let key = SecretKey::from_seed(&[7; 32]);
    let root = TrustRoot {
        version: 1,
        expires: Timestamp::from_unix(u64::try_from(now).unwrap() + 86_400 * 365),
        threshold: 1,
        keys: vec![key.public()],
        revoked: vec![],
    };
    let mut signed = Signed::new(root).unwrap();
    signed.sign(&key);
    let bytes = signed.to_bytes();
    TrustedRoot::bootstrap(&bytes, Timestamp::from_unix(u64::try_from(now).unwrap())).unwrap()
}

async fn seed(store: &AnyStore, machines: usize, t0: i64) -> Vec<i64> {
    let mut ids = Vec::with_capacity(machines);
    let all: Vec<usize> = (0..machines).collect();
    for chunk in all.chunks(4000) {
        let sightings: Vec<Sighting> = chunk
            .iter()
            .map(|&i| {
                let n = u32::try_from(i).unwrap().to_be_bytes();
                let (arch, firmware) = if i % 3 == 0 {
                    ("arm64", "uefi")
                } else {
                    ("x86_64", "bios")
                };
                Sighting {
                    mac: Mac([2, 0xc0, n[0], n[1], n[2], n[3]]),
                    facts: observed(
                        tugboot_fleet::Observer::Dhcp,
                        t0,
                        &[(keys::ARCH, arch), (keys::FIRMWARE, firmware)],
                    ),
                }
            })
            .collect();
        ids.extend(
            store
                .observe(&sightings, t0)
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.0),
        );
    }
    let image = FactKey::new(keys::IMAGE).unwrap();
    let board = FactKey::new(keys::BOARD).unwrap();
    for (i, &id) in ids.iter().enumerate() {
        let m = tugboot_store::MachineId(id);
        store
            .set_machine_state(m, MachineState::Approved)
            .await
            .unwrap();
        let board_name = if i % 3 == 0 { "rpi4" } else { "x86_64-uefi" };
        store
            .set_facts(
                m,
                &[
                    (image.clone(), format!("os@{}", 1 + i % 5)),
                    (board.clone(), board_name.into()),
                ],
                Source::Attested,
                t0 - i64::try_from(i % 5000).unwrap(),
            )
            .await
            .unwrap();
        store
            .insert_device_cert(&DeviceCert {
                serial: format!("{id:016x}"),
                device: m,
                issued_at: t0,
                not_after: t0 + 86_400 * 30,
                revoked_at: None,
            })
            .await
            .unwrap();
        if i % 2 == 0 {
            store
                .insert_report(&Report {
                    device: m,
                    report_id: format!("r{id}"),
                    boot_id: format!("b{id}"),
                    slot: Some(tugboot_store::Slot::A),
                    image_version: u64::try_from(1 + i % 5).unwrap(),
                    checks: serde_json::json!({"checks": {"disk": {"ok": i % 100 != 0}}}),
                    uptime_secs: 60,
                    last_error: None,
                    outcome: None,
                    received_at: t0 - 30,
                })
                .await
                .unwrap();
        }
    }
    ids
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let p = |q: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i]
    };
    (p(0.5), p(0.95))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// The `Set-Cookie` value named `name` in `resp`.
fn set_cookie(resp: &axum::response::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.to_owned())
}

async fn body_text(resp: axum::response::Response) -> String {
    let b = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .unwrap();
    String::from_utf8_lossy(&b).into_owned()
}

/// Logs in through the real login form; returns the session cookie header value.
async fn login(app: &axum::Router) -> String {
    let resp = app
        .clone()
        .oneshot(Request::get("/console/login").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let login_cookie = set_cookie(&resp, tugboot_console::auth::LOGIN_COOKIE).unwrap();
    let page = body_text(resp).await;
    let marker = "name=\"login_csrf\" value=\"";
    let at = page.find(marker).expect("login_csrf field") + marker.len();
    let csrf = &page[at..at + page[at..].find('"').unwrap()];
    let form = format!("token={TOKEN}&login_csrf={csrf}&next=%2Fconsole%2F");
    let resp = app
        .clone()
        .oneshot(
            Request::post("/console/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(
                    header::COOKIE,
                    format!("{}={login_cookie}", tugboot_console::auth::LOGIN_COOKIE),
                )
                .body(Body::from(form))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let session = set_cookie(&resp, tugboot_console::auth::SESSION_COOKIE).unwrap();
    format!("{}={session}", tugboot_console::auth::SESSION_COOKIE)
}

fn main() {
    let machines = env_usize("TUGBOOT_BENCH_MACHINES", 10_000);
    let samples = env_usize("TUGBOOT_BENCH_SAMPLES", 30).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let t0 = now();
        let ca = CertAuthority::init(&dir.path().join("ca"), "bench CA", t0, 86_400 * 30).unwrap();
        let server = ca.issue_server(&["127.0.0.1".into()], t0, 86_400).unwrap();
        let store = AnyStore::open(&dir.path().join("fleet.db").display().to_string())
            .await
            .unwrap();
        let started = Instant::now();
        let ids = seed(&store, machines, t0).await;
        eprintln!("seeded {machines} machines in {:?}", started.elapsed());

        let api = ApiServer::new(ApiParts {
            store,
            live: Arc::new(tugboot_fleet::Live::new(tugboot_fleet::Fleet::default())),
            ca: CertAuthority::load(&dir.path().join("ca")).unwrap(),
            state_dir: dir.path().join("state"),
            operator: OperatorToken::new(TOKEN).unwrap(),
            blobs: BlobStore::open(dir.path().join("blobs")).unwrap(),
            trusted_root: trusted_root(t0),
            server_cert_pem: server.cert_pem,
            server_key_pem: server.key_pem,
            config: ApiConfig::default(),
            clock: system_clock(),
        })
        .unwrap();
        let state = api.state();
        let t = Instant::now();
        state.refresh_fleet().await.unwrap();
        let refresh = t.elapsed();
        let console = tugboot_console::Console::new(state.clone());
        let t = Instant::now();
        let enrolled = console.rebuild_health().await.unwrap();
        let rebuild = t.elapsed();
        assert_eq!(enrolled, machines);
        let app = tugboot_console::routes(console.clone());
        let cookie = login(&app).await;

        println!("console with {machines} machines in the store (SQLite), {samples} samples each");
        println!(
            "  start-up, once: fleet refresh {}, health table {}",
            ms(refresh),
            ms(rebuild)
        );
        println!("  server time (in-process router, logged in), median / p95:");
        let one = ids[ids.len() / 2];
        // Each page with something it must show (the benchmark measures real pages).
        let pages = [
            ("/console/".to_owned(), "disk"),
            ("/console/machines".to_owned(), "02:c0:"),
            ("/console/machines?health=failing".to_owned(), "disk"),
            (
                "/console/machines?board=rpi4&state=approved".to_owned(),
                "rpi4",
            ),
            (format!("/console/machines/{one}"), "os@"),
            ("/console/images".to_owned(), "<h1>"),
            ("/console/rollouts".to_owned(), "<h1>"),
            ("/console/events".to_owned(), "<h1>"),
        ];
        for (path, must) in &pages {
            let mut times = Vec::with_capacity(samples);
            let mut bytes = 0;
            for _ in 0..samples {
                let t = Instant::now();
                let resp = app
                    .clone()
                    .oneshot(
                        Request::get(path.as_str())
                            .header(header::COOKIE, &cookie)
                            .body(Body::empty())
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                let status = resp.status();
                let body = body_text(resp).await;
                times.push(t.elapsed());
                assert_eq!(status, StatusCode::OK, "{path}");
                assert!(body.contains(must), "{path} lacks {must:?}:\n{body}");
                bytes = body.len();
            }
            let (p50, p95) = stats(times);
            println!(
                "    {path:<45} {:>9} / {:>9}  ({} KiB)",
                ms(p50),
                ms(p95),
                bytes / 1024
            );
        }

        // The same server over HTTPS, a new TLS connection per request.
        let api = api.with_routes(app.clone());
        let handle = api.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let client = ApiClient::new(handle.addr, "127.0.0.1", ca.cert_pem(), None).unwrap();
        let bearer = format!("Bearer {TOKEN}");
        println!("  over HTTPS (new TLS connection each), median / p95:");
        for (what, path, headers) in [
            (
                "console overview",
                "/console/",
                [("Cookie", cookie.as_str())],
            ),
            (
                "JSON API machines list",
                "/api/v1/admin/machines",
                [("Authorization", bearer.as_str())],
            ),
        ] {
            let mut times = Vec::with_capacity(samples);
            let mut bytes = 0;
            for _ in 0..samples {
                let t = Instant::now();
                let r = client.request("GET", path, &headers, &[]).await.unwrap();
                times.push(t.elapsed());
                assert_eq!(r.status, 200, "{path}");
                bytes = r.body.len();
            }
            let (p50, p95) = stats(times);
            println!(
                "    {what:<24} {path:<24} {:>9} / {:>9}  ({} KiB)",
                ms(p50),
                ms(p95),
                bytes / 1024
            );
        }
        drop(handle);
    });
}
