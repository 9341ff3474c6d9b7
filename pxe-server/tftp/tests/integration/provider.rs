//! Files a `FileProvider` names: streamed from outside the root, with their size enforced.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Command;
use tugboot_tftp::{FileProvider, MAX_GENERATED_LEN, Provided};

use crate::harness::{
    Raw, RawOutcome, TestServer, client, is_pattern, raw_download, rrq, write_pattern,
};
use crate::real_clients::atftp_get;

/// Like a blob store: `blobs/<name>` is a file in a directory outside the TFTP root, served
/// with the size the provider was told (which may be wrong on purpose).
struct Blobs {
    files: HashMap<String, Provided>,
}

impl Blobs {
    fn new(entries: &[(&str, &Path, u64)]) -> Arc<Self> {
        let files = entries
            .iter()
            .map(|(name, path, size)| ((*name).to_owned(), Provided::file(*path, *size)))
            .chain([
                (
                    "gen/at-cap".to_owned(),
                    Provided::generated(vec![b'x'; MAX_GENERATED_LEN]),
                ),
                (
                    "gen/over-cap".to_owned(),
                    Provided::generated(vec![b'x'; MAX_GENERATED_LEN + 1]),
                ),
            ])
            .collect();
        Arc::new(Self { files })
    }
}

impl FileProvider for Blobs {
    fn lookup(&self, _peer: SocketAddr, path: &str) -> Option<Provided> {
        self.files.get(path.strip_prefix("blobs/")?).cloned()
    }
}

/// A blob directory outside the root with one pattern file per `(name, len, seed)`.
fn blob_dir(files: &[(&str, u64, u64)]) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let paths = files
        .iter()
        .map(|(name, len, seed)| {
            let p = dir.path().join(name);
            write_pattern(&p, *len, *seed);
            p
        })
        .collect();
    (dir, paths)
}

const BIG: u64 = 24 * 1024 * 1024 + 77;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provided_file_streams_byte_identical_to_real_clients() {
    let (_dir, paths) = blob_dir(&[("big", BIG, 31), ("small", 700_001, 32)]);
    let provider = Blobs::new(&[("big", &paths[0], BIG), ("small", &paths[1], 700_001)]);
    let server = TestServer::start(|_| {}, Some(provider)).await;
    // The OACK announces the size the provider gave.
    let raw = Raw::new().await;
    let (oack, tid) = raw
        .request(server.addr, &rrq("blobs/big", &[("tsize", "0")]))
        .await;
    assert_eq!(oack, format!("\0\x06tsize\0{BIG}\0").as_bytes());
    raw.send(tid, b"\x00\x05\x00\x08probe only\x00").await;

    let out = server.path("out-atftp");
    for options in [&["blksize 1468", "windowsize 16", "tsize 0"][..], &[]] {
        if !atftp_get(server.addr, "blobs/big", &out, options).await {
            return;
        }
        assert!(is_pattern(&out, BIG, 31), "atftp {options:?}: bytes differ");
    }
    if let Some(curl) = client("curl") {
        let out = server.path("out-curl");
        let st = Command::new(curl)
            .args(["-sS", "--tftp-blksize", "1468", "-o"])
            .arg(&out)
            .arg(format!("tftp://{}/blobs/big", server.addr))
            .status()
            .await
            .unwrap();
        assert!(st.success());
        assert!(is_pattern(&out, BIG, 31), "curl: bytes differ");
    }
    if let Some(tftp) = client("tftp") {
        let out = server.path("out-hpa");
        let st = Command::new(tftp)
            .args(["-m", "binary"])
            .arg(server.addr.ip().to_string())
            .arg(server.addr.port().to_string())
            .args(["-c", "get", "blobs/small"])
            .arg(&out)
            .status()
            .await
            .unwrap();
        assert!(st.success());
        assert!(is_pattern(&out, 700_001, 32), "tftp-hpa: bytes differ");
    }
    assert_eq!(server.settle().await, 0);
    let s = server.stats.snapshot();
    assert_eq!(s.transfers_failed, 1, "only the tsize probe");
    assert_eq!(s.buffer_bytes, 0, "every buffer went back to the budget");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provided_file_of_the_wrong_size_is_refused() {
    let (_dir, paths) = blob_dir(&[("f", 100_000, 5)]);
    let provider = Blobs::new(&[
        ("larger", &paths[0], 100_001),
        ("smaller", &paths[0], 99_999),
        ("missing", Path::new("/nonexistent/tugboot/blob"), 10),
        ("dir", Path::new("/"), 10),
    ]);
    let server = TestServer::start(|_| {}, Some(provider)).await;
    let raw = Raw::new().await;
    for name in ["blobs/larger", "blobs/smaller"] {
        let (a, _) = raw
            .request(server.addr, &rrq(name, &[("tsize", "0")]))
            .await;
        assert_eq!(a, b"\x00\x05\x00\x00file size mismatch\x00", "{name}");
    }
    let (a, _) = raw.request(server.addr, &rrq("blobs/missing", &[])).await;
    assert_eq!(a, b"\x00\x05\x00\x01file not found\x00");
    let (a, _) = raw.request(server.addr, &rrq("blobs/dir", &[])).await;
    assert_eq!(a, b"\x00\x05\x00\x01file not found\x00");
    // A real client sees the failure too.
    if let Some(curl) = client("curl") {
        let st = Command::new(curl)
            .args(["-sS", "-o", "/dev/null"])
            .arg(format!("tftp://{}/blobs/larger", server.addr))
            .stderr(Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(!st.success());
    }
    assert_eq!(server.settle().await, 0);
    assert_eq!(server.stats.snapshot().transfers_started, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provided_file_removed_mid_transfer_is_still_served_whole() {
    // The file was opened before the first block: removing (or replacing) it afterwards does
    // not change what this transfer serves, as with a content-addressed blob being collected.
    let Some(_) = client("atftp") else { return };
    let (dir, paths) = blob_dir(&[("big", BIG, 41)]);
    let provider = Blobs::new(&[("big", &paths[0], BIG)]);
    let server = TestServer::start(|_| {}, Some(provider)).await;
    let out = server.path("out");
    let (addr, out2) = (server.addr, out.clone());
    // Lock step at 512 bytes: slow enough that the removal lands mid-transfer.
    let download = tokio::spawn(async move { atftp_get(addr, "blobs/big", &out2, &[]).await });
    for _ in 0..400 {
        if server.stats.snapshot().bytes_sent > 1_000_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent_before = server.stats.snapshot().bytes_sent;
    assert!(sent_before > 1_000_000);
    std::fs::remove_file(&paths[0]).unwrap();
    // Something else now lives at the same path: still not what this transfer serves.
    write_pattern(&paths[0], BIG, 42);
    assert!(download.await.unwrap());
    assert!(sent_before < BIG, "the removal happened mid-transfer");
    assert!(is_pattern(&out, BIG, 41), "bytes differ");
    drop(dir);
    assert_eq!(server.settle().await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provided_file_truncated_mid_transfer_ends_with_an_error() {
    let (_dir, paths) = blob_dir(&[("f", 2_000_000, 51)]);
    let provider = Blobs::new(&[("f", &paths[0], 2_000_000)]);
    let server = TestServer::start(|_| {}, Some(provider)).await;
    let raw = Raw::new().await;
    let path = paths[0].clone();
    let outcome = raw_download(&raw, server.addr, &rrq("blobs/f", &[]), 512, |block| {
        if block == 1 {
            // Shrinks under the server's feet: never served as if it were whole.
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(1000)
                .unwrap();
        }
    })
    .await;
    let RawOutcome::Error {
        code,
        message,
        received,
    } = outcome
    else {
        panic!("a truncated file was served as complete: {outcome:?}")
    };
    assert_eq!((code, message.as_str()), (0, "read error"));
    assert!(received < 2_000_000);
    assert_eq!(server.settle().await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_files_are_capped() {
    let provider = Blobs::new(&[]);
    let server = TestServer::start(|_| {}, Some(provider)).await;
    let raw = Raw::new().await;
    let RawOutcome::Complete(bytes) = raw_download(
        &raw,
        server.addr,
        &rrq("blobs/gen/at-cap", &[]),
        512,
        |_| {},
    )
    .await
    else {
        panic!("a generated file at the cap is served")
    };
    assert_eq!(bytes, vec![b'x'; MAX_GENERATED_LEN]);
    let (a, _) = raw
        .request(server.addr, &rrq("blobs/gen/over-cap", &[]))
        .await;
    assert_eq!(a, b"\x00\x05\x00\x00generated file too large\x00");
    assert_eq!(server.settle().await, 0);
    assert_eq!(server.stats.snapshot().buffer_bytes, 0);
    server.stop().await;
}

/// A generated file (a Pi's `config.txt`) when the buffer budget has no room: no answer, so the
/// client resends (an ERROR would end a Raspberry Pi's or a PXE ROM's boot attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_file_without_budget_room_is_left_unanswered() {
    let provider = Blobs::new(&[]);
    let server = TestServer::start(|c| c.buffer_budget = 0, Some(provider)).await;
    let raw = Raw::new().await;
    raw.send(server.addr, &rrq("blobs/gen/at-cap", &[])).await;
    let mut buf = [0u8; 600];
    let quiet =
        tokio::time::timeout(Duration::from_millis(500), raw.socket.recv_from(&mut buf)).await;
    assert!(quiet.is_err(), "no ERROR for a budget that is full");
    assert_eq!(server.settle().await, 0);
    let s = server.stats.snapshot();
    assert_eq!((s.requests_busy, s.transfers_started), (1, 0), "{s:?}");
    server.stop().await;
}
