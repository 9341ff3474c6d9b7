//! The console's routes in-process over a real API state (SQLite store in a temporary
//! directory, a signed and published image): the login gate, sessions, CSRF, escaping, and a
//! rollout created and paused through the forms. No privileges, no browser (the browser test
//! is `pxe-server/server/tests/console.rs`, root-only).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use tower::ServiceExt as _;
use tugboot_api::CertAuthority;
use tugboot_api::server::{ApiConfig, ApiParts, ApiServer, ApiState, system_clock};
use tugboot_api::tokens::OperatorToken;
use tugboot_console::auth::{LOGIN_COOKIE, SESSION_COOKIE};
use tugboot_firmware::{
    Artifact, BlobStore, Manifest, Role, SecretKey, Sha256Digest, Signed, Timestamp, TrustRoot,
    TrustedRoot,
};
use tugboot_fleet::facts::{Declarer, FactKey, Source};
use tugboot_fleet::observe::observed;
use tugboot_store::{AnyStore, Image, Mac, RolloutId, RolloutState, Sighting, Store};

const TOKEN: &str = "console-test-operator-token-0123456789abcdef0123456789";
const INJECTED: &str = "<script>alert(1)</script>";

struct Env {
    _dir: tempfile::TempDir,
    api: Arc<ApiState>,
    app: Router,
    machine: i64,
}

fn now() -> i64 {
    (system_clock())()
}

fn signed<T: tugboot_firmware::Document>(value: T, key: &SecretKey) -> Vec<u8> {
    let mut s = Signed::new(value).unwrap();
    s.sign(key);
    s.to_bytes()
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let t0 = now();
    let t = Timestamp::from_unix(u64::try_from(t0).unwrap());
    let key = SecretKey::from_seed(&[9; 32]);
    let root = signed(
        TrustRoot {
            version: 1,
            expires: Timestamp::from_unix(u64::try_from(t0).unwrap() + 86_400 * 365),
            threshold: 1,
            keys: vec![key.public()],
            revoked: vec![],
        },
        &key,
    );
    let trusted_root = TrustedRoot::bootstrap(&root, t).unwrap();
    let ca = CertAuthority::init(&dir.path().join("ca"), "test CA", t0, 86_400 * 30).unwrap();
    let server = ca.issue_server(&["127.0.0.1".into()], t0, 86_400).unwrap();
    let store = AnyStore::open(&dir.path().join("fleet.db").display().to_string())
        .await
        .unwrap();

    let artifact = b"kernel bytes".to_vec();
    let manifest = signed(
        Manifest {
            name: "demo".into(),
            version: 2,
            boards: vec!["x86_64-bios".into()],
            artifacts: vec![Artifact {
                role: Role::Kernel,
                name: "vmlinuz".into(),
                sha256: Sha256Digest::of(&artifact),
                size: u64::try_from(artifact.len()).unwrap(),
            }],
            created: t,
            expires: Timestamp::from_unix(u64::try_from(t0).unwrap() + 86_400 * 365),
            min_version: None,
            labels: Default::default(),
        },
        &key,
    );
    let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
    blobs.put(&artifact[..], None).unwrap();
    store
        .put_image(&Image {
            name: "demo".into(),
            version: 2,
            manifest_digest: Sha256Digest::of(&manifest).to_hex(),
            manifest,
            published: true,
            created_at: t0,
        })
        .await
        .unwrap();
    let machine = store
        .observe(
            &[Sighting {
                mac: Mac([2, 0, 0, 0x77, 0, 1]),
                facts: observed(tugboot_fleet::Observer::Dhcp, t0, &[("arch", "x86_64")]),
            }],
            t0,
        )
        .await
        .unwrap()[0];
    store
        .set_facts(
            machine,
            &[(FactKey::new("label.note").unwrap(), INJECTED.into())],
            Source::Declared(Declarer::Operator),
            t0,
        )
        .await
        .unwrap();

    let api = ApiServer::new(ApiParts {
        store,
        live: Arc::new(tugboot_fleet::Live::new(tugboot_fleet::Fleet::default())),
        ca,
        state_dir: dir.path().join("state"),
        operator: OperatorToken::new(TOKEN).unwrap(),
        blobs,
        trusted_root,
        server_cert_pem: server.cert_pem,
        server_key_pem: server.key_pem,
        config: ApiConfig::default(),
        clock: system_clock(),
    })
    .unwrap();
    let api = api.state();
    api.refresh_fleet().await.unwrap();
    let console = tugboot_console::Console::new(api.clone());
    console.rebuild_health().await.unwrap();
    Env {
        _dir: dir,
        api,
        app: tugboot_console::routes(console),
        machine: machine.0,
    }
}

fn set_cookies(resp: &Response) -> Vec<String> {
    resp.headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

fn cookie_value(resp: &Response, name: &str) -> Option<String> {
    set_cookies(resp)
        .iter()
        .filter_map(|c| {
            c.split(';')
                .next()?
                .split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v)
}

async fn text(resp: Response) -> String {
    let b = axum::body::to_bytes(resp.into_body(), 8 << 20)
        .await
        .unwrap();
    String::from_utf8(b.to_vec()).unwrap()
}

fn field<'a>(page: &'a str, name: &str) -> &'a str {
    let marker = format!("name=\"{name}\" value=\"");
    let at = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {page}"))
        + marker.len();
    &page[at..at + page[at..].find('"').unwrap()]
}

fn location(resp: &Response) -> &str {
    resp.headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_default()
}

impl Env {
    async fn send(&self, req: Request<Body>) -> Response {
        self.app.clone().oneshot(req).await.unwrap()
    }

    async fn get(&self, path: &str, session: Option<&str>) -> Response {
        let mut r = Request::get(path);
        if let Some(s) = session {
            r = r.header(header::COOKIE, format!("{SESSION_COOKIE}={s}"));
        }
        self.send(r.body(Body::empty()).unwrap()).await
    }

    async fn post(&self, path: &str, cookie: &str, form: &str, origin: Option<&str>) -> Response {
        let mut r = Request::post(path)
            .header(header::HOST, "10.77.0.1:8443")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, cookie);
        if let Some(o) = origin {
            r = r.header(header::ORIGIN, o);
        }
        self.send(r.body(Body::from(form.to_owned())).unwrap())
            .await
    }

    /// Login form → (login cookie, its one-time value).
    async fn login_form(&self) -> (String, String) {
        let resp = self.get("/console/login", None).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let cookie = cookie_value(&resp, LOGIN_COOKIE).expect("login cookie");
        let page = text(resp).await;
        (cookie, field(&page, "login_csrf").to_owned())
    }

    async fn login(&self) -> String {
        let (cookie, csrf) = self.login_form().await;
        let resp = self
            .post(
                "/console/login",
                &format!("{LOGIN_COOKIE}={cookie}"),
                &format!("token={TOKEN}&login_csrf={csrf}&next=%2Fconsole%2F"),
                Some("https://10.77.0.1:8443"),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        assert_eq!(location(&resp), "/console/");
        cookie_value(&resp, SESSION_COOKIE).expect("session cookie")
    }

    /// The session's CSRF token (from any page's logout form).
    async fn csrf(&self, session: &str) -> String {
        let page = text(self.get("/console/", Some(session)).await).await;
        field(&page, "csrf").to_owned()
    }
}

#[tokio::test]
async fn pages_need_a_session_and_login_takes_only_the_operator_token() {
    let e = env().await;
    let resp = e.get("/console/machines?q=a", None).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        location(&resp),
        "/console/login?next=%2Fconsole%2Fmachines%3Fq%3Da"
    );
    let resp = e
        .get("/console/", Some("00112233445566778899aabbccddeeff"))
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "an unknown session");

    // Wrong token: 401, no session.
    let (cookie, csrf) = e.login_form().await;
    let resp = e
        .post(
            "/console/login",
            &format!("{LOGIN_COOKIE}={cookie}"),
            &format!("token=wrong&login_csrf={csrf}"),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(cookie_value(&resp, SESSION_COOKIE).is_none());
    assert!(text(resp).await.contains("Wrong operator token."));
    // The right token without the login form's cookie (login CSRF): refused.
    let resp = e
        .post(
            "/console/login",
            "",
            &format!("token={TOKEN}&login_csrf={csrf}"),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert!(cookie_value(&resp, SESSION_COOKIE).is_none());
    // From another site: refused.
    let resp = e
        .post(
            "/console/login",
            &format!("{LOGIN_COOKIE}={cookie}"),
            &format!("token={TOKEN}&login_csrf={csrf}"),
            Some("https://evil.example"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    let session = e.login().await;
    let resp = e.get("/console/", Some(&session)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let csp = resp.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let page = text(resp).await;
    assert!(page.contains("<h1>Fleet</h1>"), "{page}");
    assert!(!page.contains(TOKEN));

    // Logout ends the session (with its CSRF token).
    let csrf = e.csrf(&session).await;
    let resp = e
        .post(
            "/console/logout",
            &format!("{SESSION_COOKIE}={session}"),
            &format!("csrf={csrf}"),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        e.get("/console/", Some(&session)).await.status(),
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn session_cookies_are_host_only_secure_and_strict() {
    let e = env().await;
    let (cookie, csrf) = e.login_form().await;
    let resp = e
        .post(
            "/console/login",
            &format!("{LOGIN_COOKIE}={cookie}"),
            &format!("token={TOKEN}&login_csrf={csrf}&next=https%3A%2F%2Fevil.example%2F"),
            None,
        )
        .await;
    assert_eq!(location(&resp), "/console/", "no open redirect");
    let set = set_cookies(&resp);
    let session = set
        .iter()
        .find(|c| c.starts_with(&format!("{SESSION_COOKIE}=")))
        .expect("session cookie");
    for attr in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(session.contains(attr), "{session}");
    }
    assert!(!session.contains("Domain"), "{session}");
}

#[tokio::test]
async fn a_label_value_is_text_not_markup() {
    let e = env().await;
    let session = e.login().await;
    for path in [
        format!("/console/machines/{}", e.machine),
        "/console/machines?label=note".to_owned(),
    ] {
        let resp = e.get(&path, Some(&session)).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let page = text(resp).await;
        assert!(!page.contains(INJECTED), "{path}: {page}");
        if path.contains("/machines/") {
            assert!(
                page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
                "{page}"
            );
        }
        assert!(
            !page.contains("<script>"),
            "no inline script at all: {page}"
        );
    }
}

#[tokio::test]
async fn rollouts_are_created_and_paused_through_confirmed_forms_with_the_csrf_token() {
    let e = env().await;
    let session = e.login().await;
    let cookie = format!("{SESSION_COOKIE}={session}");
    let csrf = e.csrf(&session).await;
    // The session's token with its first digit changed.
    let forged = format!(
        "{}{}",
        if csrf.starts_with('0') { '1' } else { '0' },
        &csrf[1..]
    );
    let form = "image=demo%402&selector=*&stages=50%3A3600%2C+100%3A0&max_failure_permille=50&min_reports=1";

    // Without the token, with a wrong one, or from another site: refused, nothing created.
    for (body, origin) in [
        (form.to_owned(), None),
        (format!("csrf={forged}&{form}"), None),
        (format!("csrf={csrf}&{form}"), Some("https://evil.example")),
    ] {
        let resp = e.post("/console/rollouts", &cookie, &body, origin).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{body} {origin:?}");
    }
    assert!(e.api.store().list_rollouts().await.unwrap().is_empty());

    // The review page names what it would do and carries the form on; nothing is created yet.
    let resp = e
        .post(
            "/console/rollouts/new",
            &cookie,
            &format!("csrf={csrf}&{form}"),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let page = text(resp).await;
    assert!(page.contains("id=\"confirm\""), "{page}");
    assert!(page.contains("demo@2"), "{page}");
    assert!(e.api.store().list_rollouts().await.unwrap().is_empty());

    let resp = e
        .post(
            "/console/rollouts",
            &cookie,
            &format!("csrf={csrf}&{form}"),
            Some("https://10.77.0.1:8443"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let at = location(&resp).to_owned();
    let id: i64 = at.rsplit('/').next().unwrap().parse().unwrap();
    let r = e
        .api
        .store()
        .get_rollout(RolloutId(id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.state, RolloutState::Running);
    assert_eq!(r.group_selector, "*");
    let page = text(e.get(&at, Some(&session)).await).await;
    assert!(page.contains("id=\"rollout-state\">running<"), "{page}");
    assert!(page.contains("id=\"pause\""), "{page}");

    // Pause: a confirmation page (GET changes nothing), then the POST.
    let confirm = e.get(&format!("{at}/pause"), Some(&session)).await;
    assert_eq!(confirm.status(), StatusCode::OK);
    let r = e
        .api
        .store()
        .get_rollout(RolloutId(id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.state, RolloutState::Running);
    let resp = e
        .post(
            &format!("{at}/pause"),
            &cookie,
            &format!("csrf={csrf}"),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let r = e
        .api
        .store()
        .get_rollout(RolloutId(id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.state, RolloutState::Paused);
    let page = text(e.get(&at, Some(&session)).await).await;
    assert!(page.contains("id=\"rollout-state\">paused<"), "{page}");
    assert!(
        page.contains("id=\"resume\"") && !page.contains("id=\"pause\""),
        "{page}"
    );

    // A command the state does not allow is refused with the reason, not applied.
    let resp = e
        .post(
            &format!("{at}/pause"),
            &cookie,
            &format!("csrf={csrf}"),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn assets_are_embedded_and_cacheable() {
    let e = env().await;
    for (file, kind) in [("console.css", "text/css"), ("console.js", "javascript")] {
        let resp = e.get(&format!("/console/assets/{file}"), None).await;
        assert_eq!(resp.status(), StatusCode::OK, "{file}");
        let ct = resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(ct.contains(kind), "{ct}");
        assert!(!text(resp).await.is_empty());
    }
    let resp = e.get("/console/assets/..%2Fsecret", None).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

/// Every seed of the fuzz corpus (`tests/fixtures/console/`) through the fuzz entry point, so
/// that `cargo test` covers it.
#[test]
fn fuzz_seeds_do_not_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/console");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/fixtures/console") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "txt") {
            tugboot_console::fuzz_inputs(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n >= 5, "expected the seed corpus in {}", dir.display());
}
