//! Publishing at start-up and on SIGHUP: every `<data>/manifests/*.json` is verified against the
//! trust root, its artifacts checked in the blob store, and only then served.
//!
//! Rule: the manifest directory is the list of what the server publishes. A manifest that does
//! not verify (bad signature, expired, missing or wrong-size blob, conflicting version) is
//! skipped with an error in the log and in the returned report; the others are still published.
//! Publishing is additive: removing a file does not unpublish an image until the next restart.

use std::io::Read;
use std::path::{Path, PathBuf};

use tugboot_firmware::{MAX_MANIFEST_BYTES, Timestamp, TrustedRoot};
use tugboot_http::{BlobCheck, BootServer};

use super::netboot::NetbootFiles;

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

/// Publishes every manifest of `dir` on `server` (and on the TFTP boot files, when given: both
/// serve the same images); returns one outcome per file.
pub fn publish_dir(
    server: &BootServer,
    tftp: Option<&NetbootFiles>,
    root: &TrustedRoot,
    dir: &Path,
    now: Timestamp,
) -> std::io::Result<Vec<PublishOutcome>> {
    let mut out = Vec::new();
    for path in manifest_files(dir)? {
        let result = read_manifest(&path).and_then(|bytes| {
            server
                .publish(&bytes, root, now, BlobCheck::Size)
                .map_err(|e| e.to_string())
                .and_then(|img| match tftp {
                    None => Ok(img),
                    Some(t) => t
                        .publish(&img)
                        .map(|()| img)
                        .map_err(|e| format!("tftp: {e}")),
                })
                .map(|img| format!("{} v{}", img.manifest.name, img.manifest.version))
        });
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
