//! The catalogue: published, verified images, the only ones anything is served from.
//!
//! An image enters a [`Catalogue`] only as a [`VerifiedManifest`] (signatures, threshold and
//! expiry checked against the trust root by the caller) whose artifacts the caller found in its
//! blob store with their signed sizes. The catalogue is rebuilt from the store's published
//! images (one catalogue for netboot, rollouts and the device API, shared by every server on one
//! PostgreSQL) at start, on SIGHUP, after a publish and periodically. A blob in the store that is
//! in no published manifest is never served: uploads in progress, yanked images and anything an
//! operator copied there stay dark.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use tugboot_firmware::{Role, Sha256Digest, VerifiedManifest};

use crate::cmdline::KernelCmdline;

/// Largest cmdline artifact accepted (read whole when the catalogue is built).
pub const MAX_CMDLINE_ARTIFACT: u64 = 4096;

/// Why an image cannot join the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogueError {
    /// Images are immutable: the same name and version with another manifest.
    #[error("{name} v{version} is already published with another manifest (sha256:{existing})")]
    Conflict {
        /// Image name.
        name: String,
        /// Version.
        version: u64,
        /// The manifest already in.
        existing: Sha256Digest,
    },
    /// One digest, two sizes: one of the manifests is wrong.
    #[error("artifact sha256:{digest} is already published with size {existing}, not {size}")]
    SizeConflict {
        /// Artifact digest.
        digest: Sha256Digest,
        /// Size already known.
        existing: u64,
        /// Size in the new manifest.
        size: u64,
    },
}

/// Which image a profile boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// The highest published version of this image.
    Latest {
        /// Image name.
        name: String,
    },
    /// Exactly this version.
    Version {
        /// Image name.
        name: String,
        /// Version.
        version: u64,
    },
    /// Exactly this manifest (SHA-256 of the envelope bytes).
    Manifest(Sha256Digest),
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Latest { name } => write!(f, "{name} (latest)"),
            ImageRef::Version { name, version } => write!(f, "{name} v{version}"),
            ImageRef::Manifest(d) => write!(f, "manifest sha256:{d}"),
        }
    }
}

/// One published image.
#[derive(Debug)]
pub struct CatalogueImage {
    /// The verified manifest.
    pub manifest: VerifiedManifest,
    /// SHA-256 of the manifest envelope bytes.
    pub digest: Sha256Digest,
    /// The content of the image's cmdline artifact (empty when it has none).
    pub cmdline: KernelCmdline,
}

impl CatalogueImage {
    /// The digest of the artifact with this role (the first one).
    #[must_use]
    pub fn artifact_digest(&self, role: Role) -> Option<Sha256Digest> {
        self.manifest.artifact(role).map(|a| a.sha256)
    }

    /// `name@version`, as recorded for "who booted what".
    #[must_use]
    pub fn label(&self) -> String {
        format!("{}@{}", self.manifest.name, self.manifest.version)
    }
}

/// Published images by name/version and manifest digest, and the artifact digests they list.
#[derive(Debug, Default, Clone)]
pub struct Catalogue {
    images: BTreeMap<(String, u64), Arc<CatalogueImage>>,
    by_digest: HashMap<Sha256Digest, Arc<CatalogueImage>>,
    artifacts: HashMap<Sha256Digest, u64>,
}

impl Catalogue {
    /// Empty.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a verified manifest whose artifacts the caller found in its blob store. Images are
    /// immutable: the same name and version with another manifest is refused; the same manifest
    /// again is a no-op.
    ///
    /// # Errors
    /// [`CatalogueError`].
    pub fn insert(
        &mut self,
        manifest: VerifiedManifest,
        cmdline: KernelCmdline,
    ) -> Result<Arc<CatalogueImage>, CatalogueError> {
        let digest = Sha256Digest::of(manifest.envelope_bytes());
        let key = (manifest.name.clone(), manifest.version);
        if let Some(existing) = self.images.get(&key) {
            if existing.digest == digest {
                return Ok(Arc::clone(existing));
            }
            return Err(CatalogueError::Conflict {
                name: key.0,
                version: key.1,
                existing: existing.digest,
            });
        }
        for a in &manifest.artifacts {
            if let Some(&existing) = self.artifacts.get(&a.sha256)
                && existing != a.size
            {
                return Err(CatalogueError::SizeConflict {
                    digest: a.sha256,
                    existing,
                    size: a.size,
                });
            }
        }
        for a in &manifest.artifacts {
            self.artifacts.insert(a.sha256, a.size);
        }
        let image = Arc::new(CatalogueImage {
            manifest,
            digest,
            cmdline,
        });
        self.images.insert(key, Arc::clone(&image));
        self.by_digest.insert(digest, Arc::clone(&image));
        Ok(image)
    }

    /// The size of a published artifact; `None` means "not published", whatever a store holds.
    #[must_use]
    pub fn artifact_size(&self, digest: &Sha256Digest) -> Option<u64> {
        self.artifacts.get(digest).copied()
    }

    /// The image a reference names, if published.
    #[must_use]
    pub fn image(&self, r: &ImageRef) -> Option<&Arc<CatalogueImage>> {
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

    /// The image with this manifest digest.
    #[must_use]
    pub fn by_manifest(&self, digest: &Sha256Digest) -> Option<&Arc<CatalogueImage>> {
        self.by_digest.get(digest)
    }

    /// Every image, by name then version.
    pub fn images(&self) -> impl Iterator<Item = &Arc<CatalogueImage>> {
        self.images.values()
    }

    /// Number of images.
    #[must_use]
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// No image.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
}
