//! Building the fleet core's snapshot from what the store holds: the catalogue of published
//! images (verified against this server's trust root, artifacts present in its blob store) and
//! the machine registry.

use std::io::Read as _;

use tugboot_firmware::{
    BlobError, BlobStore, Policy, Role, Timestamp, TrustedRoot, VerifyError, verify_manifest,
};
use tugboot_fleet::catalogue::{Catalogue, MAX_CMDLINE_ARTIFACT};
use tugboot_fleet::{Fleet, KernelCmdline, ProfileSet, Registry};

use crate::{Store, StoreError};

/// A published image this server leaves out of its catalogue, and why (a signature that no
/// longer verifies, an expired manifest, an artifact missing from this server's blob store —
/// another server on the same database may have it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueProblem {
    /// Image name.
    pub name: String,
    /// Version.
    pub version: u64,
    /// Why.
    pub reason: String,
}

/// Why an image cannot join this server's catalogue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The manifest does not verify against the trust root now.
    #[error("manifest not trusted ({code}): {source}", code = .source.code())]
    Untrusted {
        /// Why.
        #[from]
        source: VerifyError,
    },
    /// An artifact is missing from the blob store or has another size.
    #[error("artifact {name:?}: {source}")]
    Artifact {
        /// Artifact name.
        name: String,
        /// Why.
        #[source]
        source: BlobError,
    },
    /// The cmdline artifact is not a usable kernel command line.
    #[error("cmdline artifact {name:?}: {reason}")]
    Cmdline {
        /// Artifact name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// Checks one published manifest for this server: verified against `root` at `now`, every
/// artifact in `blobs` with its signed size (the blob store hashed it on the way in; devices
/// verify every byte again), the cmdline artifact read and validated.
///
/// # Errors
/// [`PublishError`], for the log and the operator.
pub fn prepare(
    envelope: &[u8],
    blobs: &BlobStore,
    root: &TrustedRoot,
    now: Timestamp,
) -> Result<(tugboot_firmware::VerifiedManifest, KernelCmdline), PublishError> {
    let manifest = verify_manifest(envelope, root, &Policy::at(now))?;
    for a in &manifest.artifacts {
        drop(
            blobs
                .open_verified(a)
                .map_err(|source| PublishError::Artifact {
                    name: a.name.clone(),
                    source,
                })?,
        );
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
            blobs
                .open_verified(a)
                .map_err(|e| bad(e.to_string()))?
                .take(MAX_CMDLINE_ARTIFACT + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| bad(e.to_string()))?;
            let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
            // A trailing newline is how files end; any other line break is refused.
            let text = text.strip_suffix('\n').unwrap_or(&text);
            KernelCmdline::parse(text).map_err(|e| bad(e.to_string()))?
        }
    };
    Ok((manifest, cmdline))
}

/// The catalogue of the store's published images, as this server can serve them, and the
/// images it had to leave out. Reads a few bytes of blob metadata per artifact.
///
/// # Errors
/// Store errors.
pub async fn load_catalogue<S: Store>(
    store: &S,
    blobs: &BlobStore,
    root: &TrustedRoot,
    now: Timestamp,
) -> Result<(Catalogue, Vec<CatalogueProblem>), StoreError> {
    let mut catalogue = Catalogue::new();
    let mut problems = Vec::new();
    for image in store.list_images(None).await? {
        if !image.published {
            continue;
        }
        let problem = |reason: String| CatalogueProblem {
            name: image.name.clone(),
            version: image.version,
            reason,
        };
        match prepare(&image.manifest, blobs, root, now) {
            Ok((manifest, cmdline)) => {
                if let Err(e) = catalogue.insert(manifest, cmdline) {
                    problems.push(problem(e.to_string()));
                }
            }
            Err(e) => problems.push(problem(e.to_string())),
        }
    }
    Ok((catalogue, problems))
}

/// A whole fleet snapshot: the catalogue, the registry, and the given profiles and boards.
///
/// # Errors
/// Store errors.
pub async fn load_fleet<S: Store>(
    store: &S,
    blobs: &BlobStore,
    root: &TrustedRoot,
    profiles: ProfileSet,
    boards: tugboot_boards::Catalog,
    now: Timestamp,
) -> Result<(Fleet, Vec<CatalogueProblem>), StoreError> {
    let (catalogue, problems) = load_catalogue(store, blobs, root, now).await?;
    let registry = Registry::new(store.list_machines().await?);
    Ok((
        Fleet {
            catalogue,
            profiles,
            registry,
            boards,
        },
        problems,
    ))
}

/// Rebuilds the catalogue and the registry of `live` from the store, keeping its profiles and
/// boards: what every front end of a server reads after a publish, a yank, a label, an
/// enrollment, or (periodically) whatever other servers on the same database changed. Returns
/// the published images this server cannot serve.
///
/// Concurrent refreshes are ordered by when they started reading ([`Live::refresh_ticket`]):
/// one that read before another was swapped in is dropped, so what a refresh started after a
/// change (a publish) sees is never replaced by an older read.
///
/// [`Live::refresh_ticket`]: tugboot_fleet::Live::refresh_ticket
///
/// # Errors
/// Store errors (the live fleet is then left as it was).
pub async fn refresh_live<S: Store>(
    live: &tugboot_fleet::Live,
    store: &S,
    blobs: &BlobStore,
    root: &TrustedRoot,
    now: Timestamp,
) -> Result<Vec<CatalogueProblem>, StoreError> {
    let ticket = live.refresh_ticket();
    let (catalogue, problems) = load_catalogue(store, blobs, root, now).await?;
    let registry = Registry::new(store.list_machines().await?);
    live.update_refreshed(ticket, |current| Fleet {
        catalogue,
        registry,
        profiles: current.profiles.clone(),
        boards: current.boards.clone(),
    });
    Ok(problems)
}
