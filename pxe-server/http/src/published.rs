//! The set of published images: the only artifacts the server hands out.
//!
//! An image gets here only through [`publish`]: its manifest verified against the trust root,
//! every artifact present in the blob store with the right size (and, with
//! [`BlobCheck::Rehash`], the right digest). A blob that is in the store but in no published
//! manifest is never served: the store may hold uploads in progress, images that failed
//! verification, or anything an operator copied there.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::Arc;

use tugboot_firmware::{
    BlobError, BlobStore, Policy, Role, Sha256Digest, Timestamp, TrustedRoot, VerifiedManifest,
    VerifyError, verify_manifest,
};

use crate::ipxe::{KernelCmdline, RenderError};
use crate::profiles::ImageRef;

/// Largest cmdline artifact accepted (read whole at publish time).
pub const MAX_CMDLINE_ARTIFACT: u64 = 4096;

/// Why an image was not published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    #[error("manifest not trusted ({code}): {source}", code = .source.code())]
    Verify {
        #[from]
        source: VerifyError,
    },
    #[error("artifact {name:?}: {source}")]
    Blob {
        name: String,
        #[source]
        source: BlobError,
    },
    #[error("cmdline artifact {name:?}: {reason}")]
    Cmdline { name: String, reason: String },
    #[error("{name} v{version} is already published with another manifest (sha256:{existing})")]
    Conflict {
        name: String,
        version: u64,
        existing: Sha256Digest,
    },
    #[error("artifact sha256:{digest} is already published with size {existing}, not {size}")]
    SizeConflict {
        digest: Sha256Digest,
        existing: u64,
        size: u64,
    },
}

/// How much to check the blob store at publish time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobCheck {
    /// Re-hash every artifact (reads them all once).
    Rehash,
    /// Presence and size only: for blobs that the store hashed on the way in (`BlobStore::put`).
    Size,
}

/// One published image.
#[derive(Debug)]
pub struct PublishedImage {
    pub manifest: VerifiedManifest,
    /// SHA-256 of the manifest envelope bytes.
    pub digest: Sha256Digest,
    /// The content of the image's cmdline artifact (empty when it has none).
    pub cmdline: KernelCmdline,
}

impl PublishedImage {
    pub fn artifact_digest(&self, role: Role) -> Option<Sha256Digest> {
        self.manifest.artifact(role).map(|a| a.sha256)
    }
}

/// Published images by name/version and manifest digest, and the artifact digests they list.
#[derive(Debug, Default)]
pub struct Published {
    images: BTreeMap<(String, u64), Arc<PublishedImage>>,
    by_digest: HashMap<Sha256Digest, Arc<PublishedImage>>,
    artifacts: HashMap<Sha256Digest, u64>,
}

impl Published {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a verified manifest. Images are immutable: the same name and version with another
    /// manifest is refused; publishing the same manifest again is a no-op.
    pub fn insert(
        &mut self,
        manifest: VerifiedManifest,
        cmdline: KernelCmdline,
    ) -> Result<Arc<PublishedImage>, PublishError> {
        let digest = Sha256Digest::of(manifest.envelope_bytes());
        let key = (manifest.name.clone(), manifest.version);
        if let Some(existing) = self.images.get(&key) {
            if existing.digest == digest {
                return Ok(Arc::clone(existing));
            }
            return Err(PublishError::Conflict {
                name: key.0,
                version: key.1,
                existing: existing.digest,
            });
        }
        for a in &manifest.artifacts {
            if let Some(&existing) = self.artifacts.get(&a.sha256)
                && existing != a.size
            {
                return Err(PublishError::SizeConflict {
                    digest: a.sha256,
                    existing,
                    size: a.size,
                });
            }
        }
        for a in &manifest.artifacts {
            self.artifacts.insert(a.sha256, a.size);
        }
        let image = Arc::new(PublishedImage {
            manifest,
            digest,
            cmdline,
        });
        self.images.insert(key, Arc::clone(&image));
        self.by_digest.insert(digest, Arc::clone(&image));
        Ok(image)
    }

    /// The size of a published artifact; `None` means "not published", whatever the store holds.
    pub fn artifact_size(&self, digest: &Sha256Digest) -> Option<u64> {
        self.artifacts.get(digest).copied()
    }

    /// The image a profile refers to, if published.
    pub fn image(&self, r: &ImageRef) -> Option<&Arc<PublishedImage>> {
        match r {
            ImageRef::Manifest(d) => self.by_digest.get(d),
            ImageRef::Version { name, version } => self.images.get(&(name.clone(), *version)),
            ImageRef::Latest { name } => self
                .images
                .range((name.clone(), 0)..=(name.clone(), u64::MAX))
                .next_back()
                .map(|(_, v)| v),
        }
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
}

/// Verifies `envelope` against `root` at `now`, checks every artifact in `store`, reads the
/// cmdline artifact, and adds the image to `published`.
pub fn publish(
    store: &BlobStore,
    published: &mut Published,
    envelope: &[u8],
    root: &TrustedRoot,
    now: Timestamp,
    check: BlobCheck,
) -> Result<Arc<PublishedImage>, PublishError> {
    let (manifest, cmdline) = prepare(store, envelope, root, now, check)?;
    published.insert(manifest, cmdline)
}

/// Everything [`publish`] does except the insertion: the slow part (hashing), which a server
/// runs without holding the lock on its [`Published`] set.
pub fn prepare(
    store: &BlobStore,
    envelope: &[u8],
    root: &TrustedRoot,
    now: Timestamp,
    check: BlobCheck,
) -> Result<(VerifiedManifest, KernelCmdline), PublishError> {
    let manifest = verify_manifest(envelope, root, &Policy::at(now))?;
    for a in &manifest.artifacts {
        let blob = |source| PublishError::Blob {
            name: a.name.clone(),
            source,
        };
        match check {
            BlobCheck::Rehash => store.verify(a).map_err(blob)?,
            // open_verified checks presence and size without reading.
            BlobCheck::Size => drop(store.open_verified(a).map_err(blob)?),
        }
    }
    let cmdline = match manifest.artifact(Role::Cmdline) {
        None => KernelCmdline::default(),
        Some(a) => {
            let bad = |reason: String| PublishError::Cmdline {
                name: a.name.clone(),
                reason,
            };
            if a.size > MAX_CMDLINE_ARTIFACT {
                return Err(bad(format!(
                    "{} bytes, the limit is {MAX_CMDLINE_ARTIFACT}",
                    a.size
                )));
            }
            let mut bytes = Vec::new();
            store
                .open_verified(a)
                .map_err(|source| PublishError::Blob {
                    name: a.name.clone(),
                    source,
                })?
                .take(MAX_CMDLINE_ARTIFACT + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| bad(e.to_string()))?;
            let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
            // A trailing newline is how files end; any other line break is refused.
            let text = text.strip_suffix('\n').unwrap_or(&text);
            KernelCmdline::parse(text).map_err(|e: RenderError| bad(e.to_string()))?
        }
    };
    Ok((manifest, cmdline))
}
