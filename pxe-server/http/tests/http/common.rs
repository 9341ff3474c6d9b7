//! A signed image in a temporary blob store, and a server over it.

use std::collections::BTreeMap;
use std::sync::Arc;

use tugboot_boards::Catalog;
use tugboot_firmware::{
    Artifact, BlobStore, Manifest, Role, SecretKey, Sha256Digest, Signed, Timestamp, TrustRoot,
    TrustedRoot,
};
use tugboot_fleet::plan::declared_registry;
use tugboot_fleet::{Fleet, Live, ProfileSet};
use tugboot_http::{BaseUrl, BootServer, HttpConfig};

pub const NOW: Timestamp = Timestamp::from_unix(1_800_000_000);

pub const PROFILES: &str = r#"
[profiles.edge]
image = "edge-gw"
cmdline = "tugboot.host={{hostname}}"

[profiles.serial]
image = "edge-gw"
version = 42
cmdline = "sn={{serial}} {{serial}}"

[profiles.ghost]
image = "never-published"

[[machines]]
name = "gw-1"
mac = "52:54:00:00:00:01"
board = "x86_64-uefi"
hostname = "gw-1"
profile = "edge"

[[machines]]
mac = "52:54:00:00:00:02"
profile = "ghost"

[[groups]]
name = "by-serial-prefix-less"
profile = "serial"
selector = { arch = "arm64" }
"#;

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: BlobStore,
    pub key: SecretKey,
    pub root: TrustedRoot,
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
    pub kernel_digest: Sha256Digest,
    pub initrd_digest: Sha256Digest,
    /// In the store but in no manifest.
    pub stray_digest: Sha256Digest,
}

/// Pseudo-random bytes (xorshift), so ranges at different offsets differ.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

pub fn trusted_root(key: &SecretKey) -> TrustedRoot {
    let mut root = Signed::new(TrustRoot {
        version: 1,
        expires: Timestamp::from_unix(1_900_000_000),
        threshold: 1,
        keys: vec![key.public()],
        revoked: vec![],
    })
    .unwrap();
    root.sign(key);
    TrustedRoot::bootstrap(&root.to_bytes(), NOW).unwrap()
}

pub fn manifest(name: &str, version: u64, artifacts: Vec<Artifact>, key: &SecretKey) -> Vec<u8> {
    let mut m = Signed::new(Manifest {
        name: name.into(),
        version,
        boards: vec!["x86_64-uefi".into()],
        artifacts,
        created: Timestamp::from_unix(1_700_000_000),
        expires: Timestamp::from_unix(1_850_000_000),
        min_version: None,
        labels: BTreeMap::new(),
    })
    .unwrap();
    m.sign(key);
    m.to_bytes()
}

pub fn artifact(role: Role, name: &str, data: &[u8]) -> Artifact {
    Artifact {
        role,
        name: name.into(),
        sha256: Sha256Digest::of(data),
        size: data.len() as u64,
    }
}

impl Fixture {
    pub fn new(kernel_len: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        let key = SecretKey::from_seed(&[7; 32]);
        let root = trusted_root(&key);
        let kernel = bytes(kernel_len, 1);
        let initrd = bytes(100_000, 2);
        let cmdline = b"console=ttyS0,115200n8 quiet\n".to_vec();
        let stray = b"not published".to_vec();
        for data in [&kernel, &initrd, &cmdline, &stray] {
            store.put(&data[..], None).unwrap();
        }
        Fixture {
            kernel_digest: Sha256Digest::of(&kernel),
            initrd_digest: Sha256Digest::of(&initrd),
            stray_digest: Sha256Digest::of(&stray),
            dir,
            store,
            key,
            root,
            kernel,
            initrd,
        }
    }

    pub fn envelope(&self, version: u64) -> Vec<u8> {
        manifest(
            "edge-gw",
            version,
            vec![
                artifact(Role::Kernel, "vmlinuz", &self.kernel),
                artifact(Role::Initrd, "initrd.img", &self.initrd),
                artifact(Role::Cmdline, "cmdline", b"console=ttyS0,115200n8 quiet\n"),
            ],
            &self.key,
        )
    }

    /// A server with image edge-gw v42 published, the built-in board catalog, a fixed base URL
    /// and a boot-files directory holding `snponly.efi`.
    pub fn server(&self) -> Arc<BootServer> {
        self.server_with(Some(BaseUrl::parse("http://192.0.2.1:8080").unwrap()))
    }

    pub fn server_with(&self, base_url: Option<BaseUrl>) -> Arc<BootServer> {
        self.server_tuned(base_url, |_| {})
    }

    /// [`Fixture::server_with`] with the configuration changed by `tune`.
    pub fn server_tuned(
        &self,
        base_url: Option<BaseUrl>,
        tune: impl FnOnce(&mut HttpConfig),
    ) -> Arc<BootServer> {
        let boot = self.dir.path().join("boot");
        std::fs::create_dir_all(&boot).unwrap();
        std::fs::write(boot.join("snponly.efi"), bytes(70_000, 3)).unwrap();
        std::fs::write(self.dir.path().join("secret"), b"secret").unwrap();
        let mut config = HttpConfig {
            base_url,
            boot_dir: Some(boot),
            chunk_size: 64 << 10,
            ..HttpConfig::default()
        };
        tune(&mut config);
        let profiles = ProfileSet::from_toml(PROFILES).unwrap();
        let live = Arc::new(Live::new(Fleet {
            registry: declared_registry(&profiles, 1),
            profiles,
            boards: Catalog::builtin(),
            ..Fleet::default()
        }));
        let now = i64::try_from(NOW.unix()).unwrap();
        let server =
            BootServer::with_clock(self.store.clone(), live, config, Arc::new(move || now));
        self.publish(&server, &self.envelope(42), NOW).unwrap();
        server
    }

    /// Publishes like `serve` builds its catalogue: verified against the root at `now`, every
    /// artifact in the blob store with its size, the cmdline artifact read and checked.
    pub fn publish(
        &self,
        server: &BootServer,
        envelope: &[u8],
        now: Timestamp,
    ) -> Result<(), String> {
        let (manifest, cmdline) =
            tugboot_store::prepare_image(envelope, &self.store, &self.root, now)
                .map_err(|e| e.to_string())?;
        let mut result = Ok(());
        server.live().update(|fleet| {
            let mut next = fleet.clone();
            result = next
                .catalogue
                .insert(manifest, cmdline)
                .map(drop)
                .map_err(|e| e.to_string());
            next
        });
        result
    }
}
