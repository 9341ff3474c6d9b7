//! A real device API server on 127.0.0.1:0 over a fresh store, with a CA, a trust root, one
//! published image and clients that speak mTLS to it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use sqlx::Connection as _;
use tugboot_api::client::{ApiClient, HttpResponse};
use tugboot_api::server::{ApiConfig, ApiParts, ApiServer, ApiState, ServerHandle};
use tugboot_api::tokens::OperatorToken;
use tugboot_api::{CertAuthority, ca};
use tugboot_firmware::{
    Artifact, BlobStore, Document, Manifest, Role, SecretKey, Signed, Timestamp, TrustRoot,
    TrustedRoot,
};
use tugboot_store::AnyStore;

pub const PG_URL_VAR: &str = "TUGBOOT_TEST_PG_URL";
pub const OPERATOR_TOKEN: &str = "operator-token-for-tests-0123456789";
pub const IMAGE: &str = "edge";
pub const SERVER_NAME: &str = "localhost";

#[derive(Debug, Clone, Copy)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A fresh, empty database.
pub struct Location {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

static SCHEMA_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

pub async fn fresh(db: Db) -> Option<Location> {
    match db {
        Db::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            Some(Location {
                url: format!("sqlite://{}", dir.path().join("fleet.db").display()),
                _dir: Some(dir),
            })
        }
        Db::Postgres => {
            let Ok(base) = std::env::var(PG_URL_VAR) else {
                assert!(
                    std::env::var_os("TUGBOOT_REQUIRE_PG").is_none(),
                    "TUGBOOT_REQUIRE_PG is set but {PG_URL_VAR} is not: PostgreSQL was not started"
                );
                eprintln!("tugboot-api: PostgreSQL case skipped: {PG_URL_VAR} is not set");
                return None;
            };
            let schema = format!(
                "api{}_{}",
                std::process::id(),
                SCHEMA_SEQ.fetch_add(1, Ordering::Relaxed)
            );
            let mut conn = sqlx::PgConnection::connect(&base)
                .await
                .expect("connect to TUGBOOT_TEST_PG_URL");
            sqlx::raw_sql(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
            ))
            .execute(&mut conn)
            .await
            .expect("create schema");
            conn.close().await.expect("close");
            let sep = if base.contains('?') { '&' } else { '?' };
            Some(Location {
                url: format!("{base}{sep}options[search_path]={schema}"),
                _dir: None,
            })
        }
    }
}

pub fn real_now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn signer(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

fn sign<T: Document>(value: T) -> Vec<u8> {
    let mut signed = Signed::new(value).unwrap();
    signed.sign(&signer(1));
    signed.to_bytes()
}

/// A device key and its CSR; the certificate once enrolled.
#[derive(Debug, Clone)]
pub struct Device {
    pub mac: String,
    pub key_pem: String,
    pub csr_pem: String,
    pub cert_pem: Option<String>,
    pub id: i64,
}

impl Device {
    pub fn new(n: u32) -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr_pem = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let b = n.to_be_bytes();
        Self {
            mac: format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3]),
            key_pem: key.serialize_pem(),
            csr_pem,
            cert_pem: None,
            id: 0,
        }
    }
}

/// Everything a test needs on disk, in the store and in a running server.
pub struct Fleet {
    pub _dir: tempfile::TempDir,
    pub ca: CertAuthority,
    pub ca_pem: String,
    pub handle: ServerHandle,
    pub state: Arc<ApiState>,
    pub clock: Arc<AtomicI64>,
    pub store: AnyStore,
    pub manifest: Vec<u8>,
    pub artifact: Vec<u8>,
    pub artifact_sha256: String,
}

pub fn test_root(now: i64) -> (Vec<u8>, TrustedRoot) {
    let bytes = sign(TrustRoot {
        version: 1,
        expires: Timestamp::from_unix(u64::try_from(now).unwrap() + 10 * 365 * 86_400),
        threshold: 1,
        keys: vec![signer(1).public()],
        revoked: vec![],
    });
    let root =
        TrustedRoot::bootstrap(&bytes, Timestamp::from_unix(u64::try_from(now).unwrap())).unwrap();
    (bytes, root)
}

pub fn manifest_for(artifact: &[u8], version: u64, now: i64) -> Vec<u8> {
    manifest_with(IMAGE, version, &[(Role::Slot, "rootfs.img", artifact)], now)
}

/// A manifest of image `name@version` with these artifacts, signed by the test root's key.
pub fn manifest_with(
    name: &str,
    version: u64,
    artifacts: &[(Role, &str, &[u8])],
    now: i64,
) -> Vec<u8> {
    let now = u64::try_from(now).unwrap();
    sign(Manifest {
        name: name.into(),
        version,
        boards: vec!["rpi4".into()],
        artifacts: artifacts
            .iter()
            .map(|(role, name, bytes)| Artifact {
                role: *role,
                name: (*name).into(),
                sha256: tugboot_firmware::Sha256Digest::of(bytes),
                size: u64::try_from(bytes.len()).unwrap(),
            })
            .collect(),
        created: Timestamp::from_unix(now),
        expires: Timestamp::from_unix(now + 365 * 86_400),
        min_version: None,
        labels: Default::default(),
    })
}

impl Fleet {
    pub async fn start(db_url: &str) -> Self {
        Self::start_with(db_url, ApiConfig::default()).await
    }

    pub async fn start_with(db_url: &str, config: ApiConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let now = real_now();
        let clock = Arc::new(AtomicI64::new(now));
        let ca_dir = dir.path().join("ca");
        let ca = CertAuthority::init(&ca_dir, "test fleet CA", now, ca::DEFAULT_CA_VALIDITY_SECS)
            .unwrap();
        let server = ca
            .issue_server(&[SERVER_NAME.into(), "127.0.0.1".into()], now, 86_400)
            .unwrap();
        let store = AnyStore::open(db_url).await.unwrap();
        let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
        let artifact: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (digest, _) = blobs.put(&artifact[..], None).unwrap();
        let manifest = manifest_for(&artifact, 2, now);
        let (_, trusted_root) = test_root(now);
        let c = clock.clone();
        let api = ApiServer::new(ApiParts {
            store: store.clone(),
            live: Arc::new(tugboot_fleet::Live::new(tugboot_fleet::Fleet::default())),
            ca: CertAuthority::load(&ca_dir).unwrap(),
            state_dir: dir.path().join("state"),
            operator: OperatorToken::new(OPERATOR_TOKEN).unwrap(),
            blobs,
            trusted_root,
            server_cert_pem: server.cert_pem,
            server_key_pem: server.key_pem,
            config,
            clock: Arc::new(move || c.load(Ordering::SeqCst)),
        })
        .unwrap();
        let state = api.state();
        let handle = api.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let ca_pem = ca.cert_pem().to_owned();
        Self {
            _dir: dir,
            ca,
            ca_pem,
            handle,
            state,
            clock,
            store,
            manifest,
            artifact,
            artifact_sha256: digest.to_hex(),
        }
    }

    pub fn advance(&self, secs: i64) {
        self.clock.fetch_add(secs, Ordering::SeqCst);
    }

    pub fn anonymous(&self) -> ApiClient {
        ApiClient::new(self.handle.addr, SERVER_NAME, &self.ca_pem, None).unwrap()
    }

    pub fn client(&self, d: &Device) -> ApiClient {
        let cert = d.cert_pem.as_deref().expect("device enrolled");
        ApiClient::new(
            self.handle.addr,
            SERVER_NAME,
            &self.ca_pem,
            Some((cert, &d.key_pem)),
        )
        .unwrap()
    }

    pub async fn op(&self, method: &str, path: &str, body: &[u8]) -> HttpResponse {
        let auth = format!("Bearer {OPERATOR_TOKEN}");
        self.anonymous()
            .request(
                method,
                path,
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                ],
                body,
            )
            .await
            .unwrap()
    }

    pub async fn enroll(&self, d: &mut Device, token: Option<&str>) -> HttpResponse {
        self.enroll_with(d, token, None).await
    }

    pub async fn enroll_with(
        &self,
        d: &mut Device,
        token: Option<&str>,
        serial: Option<&str>,
    ) -> HttpResponse {
        let mut body = serde_json::json!({"csr": d.csr_pem, "mac": d.mac});
        if let Some(t) = token {
            body["token"] = t.into();
        }
        if let Some(s) = serial {
            body["serial"] = s.into();
        }
        let r = self
            .anonymous()
            .post_json("/api/v1/enroll", &body)
            .await
            .unwrap();
        if let Ok(v) = r.json() {
            if let Some(id) = v["device_id"].as_i64() {
                d.id = id;
            }
            if let Some(c) = v["certificate"].as_str() {
                d.cert_pem = Some(c.to_owned());
            }
        }
        r
    }

    pub async fn new_token(&self) -> String {
        self.new_token_with(&serde_json::json!({})).await
    }

    /// A token with these options (`expires_in_secs`, `mac`, `serial`).
    pub async fn new_token_with(&self, options: &serde_json::Value) -> String {
        let r = self
            .op(
                "POST",
                "/api/v1/admin/enrollment-tokens",
                &serde_json::to_vec(options).unwrap(),
            )
            .await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        r.json().unwrap()["token"].as_str().unwrap().to_owned()
    }

    /// Enrolls with a fresh token: a device with a certificate.
    pub async fn enrolled(&self, n: u32) -> Device {
        let token = self.new_token().await;
        let mut d = Device::new(n);
        let r = self.enroll(&mut d, Some(&token)).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        d
    }

    pub async fn publish(&self) {
        let r = self
            .op("POST", "/api/v1/admin/images", &self.manifest)
            .await;
        assert!(
            r.status == 201 || r.status == 200,
            "{} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
}

pub fn outcome_report(id: &str, outcome: &str, version: u64) -> serde_json::Value {
    let o = match outcome {
        "committed" => {
            serde_json::json!({"outcome": "committed", "name": IMAGE, "version": version, "slot": "B"})
        }
        "rolled-back" => {
            serde_json::json!({"outcome": "rolled-back", "name": IMAGE, "version": version, "slot": "A", "reason": "health check failed"})
        }
        other => panic!("{other}"),
    };
    serde_json::json!({"id": id, "seq": 1, "boot_id": format!("boot-{id}"), "agent": "0.1.0", "outcome": o})
}

pub fn status_report(id: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "boot_id": "b0", "slot": "A", "image_version": 1,
        "checks": {"api": "ok"}, "uptime_secs": 12})
}
