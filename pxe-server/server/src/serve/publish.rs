//! The manifest directory, imported into the catalogue at start-up and on SIGHUP.
//!
//! There is one catalogue: the store's published images (`tugboot images push/publish` add to
//! it through the operator API). `<data>/manifests/*.json` is a convenient way to publish too:
//! every file is verified against the trust root, its artifacts checked in the blob store, and
//! only then stored as a published image — exactly what `POST /api/v1/admin/images` does. A
//! file that fails is skipped with an error in the log and in the returned report; the others
//! are still imported. Deleting a file does not unpublish (use `tugboot images yank`).

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tugboot_firmware::{BlobStore, MAX_MANIFEST_BYTES, Timestamp, TrustedRoot};
use tugboot_store::{AnyStore, Image, Store};

/// What happened to one manifest file.
#[derive(Debug)]
pub struct PublishOutcome {
    /// The file.
    pub path: PathBuf,
    /// `name vVERSION` when published, the reason otherwise.
    pub result: Result<String, String>,
}

/// Largest directory listing considered (a manifest directory is a few hundred files at most).
const MAX_MANIFEST_FILES: usize = 10_000;

/// The `*.json` files of `dir`, sorted by name. A missing directory is empty.
pub fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries.take(MAX_MANIFEST_FILES) {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn read_manifest(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    let cap = u64::try_from(MAX_MANIFEST_BYTES).unwrap_or(u64::MAX);
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(format!("larger than {MAX_MANIFEST_BYTES} bytes"));
    }
    Ok(bytes)
}

/// Imports every manifest of `dir` into the store's catalogue; returns one outcome per file.
///
/// # Errors
/// The directory cannot be listed (a missing directory is empty).
pub async fn import_dir(
    store: &AnyStore,
    blobs: &BlobStore,
    root: &TrustedRoot,
    dir: &Path,
    now: Timestamp,
) -> std::io::Result<Vec<PublishOutcome>> {
    let mut out = Vec::new();
    for path in manifest_files(dir)? {
        let result = import_one(store, blobs, root, &path, now).await;
        match &result {
            Ok(image) => tracing::info!(file = %path.display(), %image, "manifest published"),
            Err(reason) => {
                tracing::error!(file = %path.display(), %reason, "manifest NOT published");
            }
        }
        out.push(PublishOutcome { path, result });
    }
    Ok(out)
}

async fn import_one(
    store: &AnyStore,
    blobs: &BlobStore,
    root: &TrustedRoot,
    path: &Path,
    now: Timestamp,
) -> Result<String, String> {
    let bytes = read_manifest(path)?;
    let (manifest, _) =
        tugboot_store::prepare_image(&bytes, blobs, root, now).map_err(|e| e.to_string())?;
    let image = Image {
        name: manifest.name.clone(),
        version: manifest.version,
        manifest_digest: hex::encode(Sha256::digest(&bytes)),
        manifest: bytes,
        published: true,
        created_at: i64::try_from(now.unix()).unwrap_or(i64::MAX),
    };
    store.put_image(&image).await.map_err(|e| e.to_string())?;
    Ok(format!("{} v{}", image.name, image.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_json_files_are_listed_in_name_order_and_a_missing_dir_is_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(
            manifest_files(&dir.path().join("absent"))
                .expect("missing is fine")
                .is_empty()
        );
        for name in ["b.json", "a.json", "notes.txt", "c.json.tmp"] {
            std::fs::write(dir.path().join(name), b"{}").expect("write");
        }
        std::fs::create_dir(dir.path().join("d.json")).expect("mkdir");
        let names: Vec<String> = manifest_files(dir.path())
            .expect("list")
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        assert_eq!(names, ["a.json", "b.json"]);
    }

    #[test]
    fn oversized_manifest_is_refused_before_parsing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("big.json");
        std::fs::write(&p, vec![b' '; MAX_MANIFEST_BYTES + 1]).expect("write");
        let e = read_manifest(&p).expect_err("too big");
        assert!(e.contains("larger than"), "{e}");
    }
}
