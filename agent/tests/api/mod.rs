//! The real device API in the test process, shared by the tests that run the agent against
//! it (`device_api.rs`, `install_disk.rs`): `tugboot-api`'s `ApiServer` on 127.0.0.1:0 over a
//! fresh SQLite store, with its real CA (rcgen, ECDSA P-256), operator token and blob store,
//! and a threshold-1 trust root of test key 1.
#![allow(dead_code)] // each test binary uses its own subset

use serde_json::{Value, json};
use tugboot_api::client::ApiClient;
use tugboot_api::server::{ApiConfig, ApiParts, ApiServer, ServerHandle};
use tugboot_api::tokens::OperatorToken;
use tugboot_api::{CertAuthority, ca};
use tugboot_firmware::{
    Artifact, BlobStore, Document, Manifest, Role, SecretKey, Sha256Digest, Signed, Timestamp,
    TrustRoot, TrustedRoot,
};

pub const TOKEN: &str = "operator-token-for-the-agent-tests";

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

pub fn sign<T: Document>(value: T) -> Vec<u8> {
    let mut s = Signed::new(value).unwrap();
    s.sign(&key(1));
    s.to_bytes()
}

pub fn root_bytes() -> Vec<u8> {
    sign(TrustRoot {
        version: 1,
        expires: Timestamp::from_unix(now() + 10 * 365 * 86_400),
        threshold: 1,
        keys: vec![key(1).public()],
        revoked: vec![],
    })
}

/// A manifest of `name` `version` for `board` with one `slot` artifact `rootfs.img`.
pub fn manifest_named(name: &str, version: u64, board: &str, content: &[u8]) -> Vec<u8> {
    sign(Manifest {
        name: name.into(),
        version,
        boards: vec![board.into()],
        artifacts: vec![Artifact {
            role: Role::Slot,
            name: "rootfs.img".into(),
            sha256: Sha256Digest::of(content),
            size: content.len() as u64,
        }],
        created: Timestamp::from_unix(now() - 60),
        expires: Timestamp::from_unix(now() + 86_400),
        min_version: None,
        labels: Default::default(),
    })
}

pub fn noise(len: usize, seed: u64) -> Vec<u8> {
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

/// The real device API on 127.0.0.1:0.
pub struct Api {
    pub rt: tokio::runtime::Runtime,
    pub handle: Option<ServerHandle>,
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
}

impl Api {
    pub fn start(config: ApiConfig) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let unix = now();
        let now = i64::try_from(unix).unwrap();
        let ca_dir = dir.path().join("ca");
        let ca = CertAuthority::init(&ca_dir, "agent test CA", now, ca::DEFAULT_CA_VALIDITY_SECS)
            .unwrap();
        let server = ca.issue_server(&["127.0.0.1".into()], now, 86_400).unwrap();
        let root = TrustedRoot::bootstrap(&root_bytes(), Timestamp::from_unix(unix)).unwrap();
        let db = format!("sqlite://{}", dir.path().join("fleet.db").display());
        let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
        let handle = rt.block_on(async {
            let store = tugboot_store::AnyStore::open(&db).await.unwrap();
            let api = ApiServer::new(ApiParts {
                store,
                ca: CertAuthority::load(&ca_dir).unwrap(),
                state_dir: dir.path().join("state"),
                operator: OperatorToken::new(TOKEN).unwrap(),
                blobs,
                trusted_root: root,
                server_cert_pem: server.cert_pem,
                server_key_pem: server.key_pem,
                config,
                clock: tugboot_api::server::system_clock(),
                live: std::sync::Arc::new(
                    tugboot_fleet::Live::new(tugboot_fleet::Fleet::default()),
                ),
            })
            .unwrap();
            api.spawn("127.0.0.1:0".parse().unwrap()).await.unwrap()
        });
        Self {
            rt,
            handle: Some(handle),
            ca_pem: ca.cert_pem().to_owned(),
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.handle.as_ref().unwrap().addr)
    }

    /// An operator request; answers (status, JSON or null).
    pub fn op(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        let c = ApiClient::new(
            self.handle.as_ref().unwrap().addr,
            "127.0.0.1",
            &self.ca_pem,
            None,
        )
        .unwrap();
        let auth = format!("Bearer {TOKEN}");
        let body = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(body).unwrap()
        };
        let r = self
            .rt
            .block_on(c.request(
                method,
                path,
                &[
                    ("Authorization", &auth),
                    ("Content-Type", "application/json"),
                ],
                &body,
            ))
            .unwrap();
        (r.status, r.json().unwrap_or(Value::Null))
    }

    pub fn publish(&self, manifest: &[u8], artifact: &[u8]) {
        BlobStore::open(self.dir.path().join("blobs"))
            .unwrap()
            .put(artifact, None)
            .unwrap();
        let c = ApiClient::new(
            self.handle.as_ref().unwrap().addr,
            "127.0.0.1",
            &self.ca_pem,
            None,
        )
        .unwrap();
        let auth = format!("Bearer {TOKEN}");
        let r = self
            .rt
            .block_on(c.request(
                "POST",
                "/api/v1/admin/images",
                &[("Authorization", &auth)],
                manifest,
            ))
            .unwrap();
        assert!(r.status == 201 || r.status == 200, "{}", r.status);
    }

    /// A one-stage rollout of `name` `version` to every machine (`*`).
    pub fn rollout(&self, name: &str, version: u64, max_failure_permille: u16) -> i64 {
        let (status, v) = self.op(
            "POST",
            "/api/v1/admin/rollouts",
            &json!({"image_name": name, "image_version": version, "selector": "*",
                "stages": [{"percent": 100, "soak_secs": 0}],
                "max_failure_permille": max_failure_permille, "min_reports": 1}),
        );
        assert_eq!(status, 201, "{v}");
        v["id"].as_i64().unwrap()
    }
}
