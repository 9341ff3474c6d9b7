//! Streaming-verification throughput: `sha256sum` against `VerifyingReader` (1 MiB reads) over the
//! same file, alternating, 3 rounds each. Prints a table; asserts nothing about speed.
//!
//!     cargo bench -p tugboot-firmware --bench stream
//!
//! Environment: `TUGBOOT_BENCH_FILE` (default: `<tmp>/tugboot-bench-stream.bin`, created once and
//! reused), `TUGBOOT_BENCH_MIB` (default 1024).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use tugboot_firmware::{Sha256Digest, VerifyingReader};

const MIB: u64 = 1 << 20;
const BUF: usize = 1 << 20;
const ROUNDS: usize = 3;

fn main() -> io::Result<()> {
    let mib: u64 = std::env::var("TUGBOOT_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    let path = std::env::var_os("TUGBOOT_BENCH_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("tugboot-bench-stream.bin"));
    let size = mib * MIB;
    ensure_file(&path, size)?;

    // Warm the page cache so both contenders read from memory.
    drain(File::open(&path)?)?;

    println!("file: {} ({mib} MiB)", path.display());
    println!(
        "{:<6} {:>16} {:>22} {:>8}",
        "round", "sha256sum MiB/s", "VerifyingReader MiB/s", "ratio"
    );
    let mut ratios = Vec::new();
    let mut expected = None;
    for round in 1..=ROUNDS {
        let (digest, t_tool) = time(|| sha256sum(&path))?;
        let digest = digest?;
        if let Some(prev) = expected {
            assert_eq!(prev, digest, "sha256sum gave different digests");
        }
        expected = Some(digest);

        let (n, t_ours) = time(|| drain(VerifyingReader::with(File::open(&path)?, digest, size)))?;
        let n = n?;
        assert_eq!(n, size);
        let (a, b) = (mib as f64 / t_tool, mib as f64 / t_ours);
        ratios.push(b / a);
        println!("{round:<6} {a:>16.0} {b:>22.0} {:>7.3}x", b / a);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "median ratio (VerifyingReader / sha256sum): {:.3}x",
        ratios[ROUNDS / 2]
    );
    Ok(())
}

fn time<T>(f: impl FnOnce() -> T) -> io::Result<(T, f64)> {
    let start = Instant::now();
    let out = f();
    Ok((out, start.elapsed().as_secs_f64()))
}

/// Reads to the end with a 1 MiB buffer; a verification failure surfaces as the read error.
fn drain(mut r: impl Read) -> io::Result<u64> {
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        match r.read(&mut buf)? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

fn sha256sum(path: &Path) -> io::Result<Sha256Digest> {
    let out = Command::new("sha256sum").arg(path).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "sha256sum failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().unwrap_or_default();
    hex.parse()
        .map_err(|e| io::Error::other(format!("sha256sum output {hex:?}: {e}")))
}

/// Pseudo-random content (xorshift64), so nothing can shortcut the hashing.
fn ensure_file(path: &Path, size: u64) -> io::Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == size) {
        return Ok(());
    }
    eprintln!("writing {} ...", path.display());
    let mut w = BufWriter::with_capacity(BUF, File::create(path)?);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; BUF];
    for _ in 0..size / MIB {
        for chunk in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        w.write_all(&block)?;
    }
    w.flush()
}
