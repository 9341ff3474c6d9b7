//! The lease log on disk (feature `shell`): an append-only JSON-lines file that is
//! recovered at open and compacted when it has grown much larger than the live leases.
//!
//! Guarantees, whatever moment the process dies:
//!
//! - **Acknowledged means durable.** [`LeaseLog::append`] returns after `fdatasync`; the
//!   shell sends an ACK only after that.
//! - **A torn append is cut, durably, before anything is appended.** [`LeaseLog::open`]
//!   scans the file ([`crate::lease::LogScanner`]): whatever follows the last valid line
//!   was never acknowledged and is truncated (`ftruncate` + `fsync`). Before, the next
//!   append joined the torn line, and the restart after that refused the whole file.
//! - **Damage is refused, not guessed around.** A bad line with valid records after it is
//!   [`LeaseLogError::Damaged`]: the caller stops DHCP with that message and leaves the
//!   file alone (cutting there would lose acknowledged leases).
//! - **Compaction is atomic.** The live leases go to `<log>.compact`, which is
//!   `fsync`ed, renamed over the log, and the directory `fsync`ed. Before the rename the
//!   old log is intact (a leftover temporary file is deleted at the next open); after it
//!   the new log holds every live lease, acknowledged or about to be.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::lease::{LeaseRecord, LeaseTable, LogDamaged, LogScanner, ScanEnd, encode_record};

/// Errors of the lease log. Every one names the file; the DHCP server stops on them
/// (the rest of `tugboot serve` need not).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseLogError {
    /// A file operation failed.
    #[error("lease log {path}: cannot {action}: {source}")]
    Io {
        /// The file (or its directory).
        path: PathBuf,
        /// What was attempted ("open", "fsync", "rename over the log", ...).
        action: &'static str,
        /// Cause.
        source: io::Error,
    },
    /// Damaged in the middle: left untouched. Move it aside (or repair the line) to start.
    #[error("lease log {path}: {source}; left untouched — repair that line or move the file aside")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Where and why.
        source: LogDamaged,
    },
}

/// When to compact: once the log holds at least `min_records` lines *and* more than
/// `ratio` lines per live lease. Each compaction rewrites the live set, so with ratio
/// `r` its cost is at most `1/(r-1)` of the appends since the previous one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    /// Smallest log (in lines) worth compacting.
    pub min_records: u64,
    /// Lines per live lease beyond which the log is compacted (at least 1).
    pub ratio: u64,
}

impl Default for Compaction {
    /// 16 384 lines (~2.5 MiB) and 4 lines per live lease.
    fn default() -> Self {
        Self {
            min_records: 16_384,
            ratio: 4,
        }
    }
}

/// What [`LeaseLog::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The live leases (bindings and decline holds), to hand to `Server::restore`.
    pub live: Vec<LeaseRecord>,
    /// Valid record lines the file held.
    pub records: u64,
    /// Bytes of torn tail cut off (0 for a clean log).
    pub torn_bytes: u64,
    /// Whether the log was compacted right away (it was much larger than `live`).
    pub compacted: bool,
}

/// How a compaction ended when it did not fail fatally.
#[derive(Debug)]
#[non_exhaustive]
pub enum Compacted {
    /// The log now holds exactly the snapshot.
    Done {
        /// Lines before.
        lines_before: u64,
        /// Records after.
        records: u64,
    },
    /// Nothing changed (the temporary file could not be written, synced or renamed); the
    /// old log is intact and still appended to. Retried once the log has doubled.
    Skipped(LeaseLogError),
}

/// The open, recovered lease log.
#[derive(Debug)]
pub struct LeaseLog {
    path: PathBuf,
    tmp: PathBuf,
    file: File,
    lines: u64,
    policy: Compaction,
    /// After a skipped compaction, no new attempt before the log has this many lines.
    retry_at: u64,
}

/// 64 KiB reads while scanning.
const READ_CHUNK: usize = 64 << 10;

fn io_err<'a>(path: &'a Path, action: &'static str) -> impl Fn(io::Error) -> LeaseLogError + 'a {
    move |source| LeaseLogError::Io {
        path: path.into(),
        action,
        source,
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".compact");
    path.with_file_name(name)
}

fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `fsync` of the directory holding `path`: makes a create or rename in it durable.
fn sync_dir(path: &Path) -> Result<(), LeaseLogError> {
    let dir = dir_of(path);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync the directory"))
}

/// Scans `file` from its start; `record` receives each valid record.
fn scan(
    path: &Path,
    mut file: &File,
    record: &mut impl FnMut(LeaseRecord),
) -> Result<ScanEnd, LeaseLogError> {
    let mut scanner = LogScanner::new();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path, "read")(e)),
        };
        scanner
            .feed(&buf[..n], record)
            .map_err(|source| LeaseLogError::Damaged {
                path: path.into(),
                source,
            })?;
    }
    Ok(scanner.finish())
}

/// Every valid record of the log in file order, read-only (a torn tail is skipped, not
/// cut). For tools and tests that want the history rather than the live state.
pub fn read_records(path: &Path) -> Result<Vec<LeaseRecord>, LeaseLogError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path, "open")(e)),
    };
    let mut out = Vec::new();
    scan(path, &file, &mut |r| out.push(r))?;
    Ok(out)
}

/// The live leases of the log (what `Server::restore` needs), read-only: a torn tail is
/// skipped but not cut, a missing file is an empty log. Memory is proportional to the
/// live set, not to the file.
pub fn load_live(path: &Path) -> Result<Vec<LeaseRecord>, LeaseLogError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path, "open")(e)),
    };
    let mut table = LeaseTable::default();
    scan(path, &file, &mut |r| table.apply(&r))?;
    Ok(table.snapshot())
}

impl LeaseLog {
    /// Opens (creating) the log, deletes a leftover compaction file, cuts a torn tail
    /// durably, and compacts at once if the log is already much larger than its live set.
    pub fn open(path: &Path, policy: Compaction) -> Result<(Self, Recovered), LeaseLogError> {
        let tmp = temp_path(path);
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&tmp, "delete the unfinished compaction")(e)),
        }
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io_err(path, "open"))?;
        if !existed {
            // The first append's fdatasync does not cover the new directory entry.
            sync_dir(path)?;
        }
        let mut table = LeaseTable::default();
        let end = scan(path, &file, &mut |r| table.apply(&r))?;
        if end.torn_bytes() > 0 {
            file.set_len(end.valid_len)
                .map_err(io_err(path, "truncate the torn tail"))?;
            file.sync_all()
                .map_err(io_err(path, "fsync after cutting the torn tail"))?;
        }
        let mut log = Self {
            path: path.into(),
            tmp,
            file,
            lines: end.records,
            policy: Compaction {
                min_records: policy.min_records,
                ratio: policy.ratio.max(1),
            },
            retry_at: 0,
        };
        let live = table.snapshot();
        let mut compacted = false;
        if log.wants_compaction(live.len()) {
            match log.compact(&live)? {
                Compacted::Done { .. } => compacted = true,
                // Not fatal: the old log is intact; the loop retries later.
                Compacted::Skipped(_) => {}
            }
        }
        Ok((
            log,
            Recovered {
                live,
                records: end.records,
                torn_bytes: end.torn_bytes(),
                compacted,
            },
        ))
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record lines in the log now.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Appends and syncs (`fdatasync`); returns only once the records are on disk.
    pub fn append(&mut self, records: &[LeaseRecord]) -> Result<(), LeaseLogError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(records.len() * 160);
        for r in records {
            encode_record(r, &mut buf);
        }
        self.file
            .write_all(&buf)
            .map_err(io_err(&self.path, "append"))?;
        self.file
            .sync_data()
            .map_err(io_err(&self.path, "fdatasync"))?;
        self.lines += u64::try_from(records.len()).unwrap_or(u64::MAX);
        Ok(())
    }

    /// Whether the log should be compacted, given `live` live leases.
    pub fn wants_compaction(&self, live: usize) -> bool {
        let live = u64::try_from(live).unwrap_or(u64::MAX).max(1);
        self.lines >= self.policy.min_records
            && self.lines >= self.retry_at
            && self.lines > live.saturating_mul(self.policy.ratio)
    }

    /// Replaces the log by `live` (a `LeaseTable::snapshot` that includes every record
    /// appended or about to be acknowledged): temporary file, `fsync`, rename, directory
    /// `fsync`. An error before the rename leaves the old log in use
    /// ([`Compacted::Skipped`]); an error after it (the directory `fsync`) is fatal, since
    /// the rename may not be durable.
    pub fn compact(&mut self, live: &[LeaseRecord]) -> Result<Compacted, LeaseLogError> {
        let lines_before = self.lines;
        let file = match self.write_snapshot(live) {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&self.tmp);
                self.retry_at = self.lines.saturating_mul(2);
                return Ok(Compacted::Skipped(e));
            }
        };
        if let Err(e) = std::fs::rename(&self.tmp, &self.path) {
            let _ = std::fs::remove_file(&self.tmp);
            self.retry_at = self.lines.saturating_mul(2);
            return Ok(Compacted::Skipped(io_err(
                &self.path,
                "rename the compacted log over the log",
            )(e)));
        }
        self.file = file;
        self.lines = u64::try_from(live.len()).unwrap_or(u64::MAX);
        self.retry_at = 0;
        sync_dir(&self.path)?;
        Ok(Compacted::Done {
            lines_before,
            records: self.lines,
        })
    }

    fn write_snapshot(&self, live: &[LeaseRecord]) -> Result<File, LeaseLogError> {
        let tmp = &self.tmp;
        let _ = std::fs::remove_file(tmp);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(tmp)
            .map_err(io_err(tmp, "create the compaction file"))?;
        let mut buf = Vec::with_capacity(live.len().min(1 << 20) * 160);
        for r in live {
            encode_record(r, &mut buf);
            if buf.len() >= 1 << 20 {
                file.write_all(&buf)
                    .map_err(io_err(tmp, "write the compaction file"))?;
                buf.clear();
            }
        }
        file.write_all(&buf)
            .map_err(io_err(tmp, "write the compaction file"))?;
        file.sync_all()
            .map_err(io_err(tmp, "fsync the compaction file"))?;
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{ClientKey, LeaseState};
    use crate::{Mac, lease};
    use std::net::Ipv4Addr;
    use std::time::{Duration, SystemTime};

    fn rec(n: u8, state: LeaseState) -> LeaseRecord {
        LeaseRecord {
            address: Ipv4Addr::new(10, 0, 0, n),
            client: ClientKey::Hardware(vec![1, 2, 0, 0, 0, 0, n]),
            mac: Some(Mac([2, 0, 0, 0, 0, n])),
            state,
            expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    fn bytes_of(recs: &[LeaseRecord]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in recs {
            lease::encode_record(r, &mut out);
        }
        out
    }

    /// A fresh directory under the system temp dir, deleted on drop.
    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir()
                .join(format!("tugboot-lease-log-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("mkdir");
            Self(p)
        }
        fn log(&self) -> PathBuf {
            self.0.join("leases.jsonl")
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const NEVER: Compaction = Compaction {
        min_records: u64::MAX,
        ratio: 4,
    };

    #[test]
    fn append_then_reopen() {
        let d = Dir::new("append");
        let (mut log, rec0) = LeaseLog::open(&d.log(), NEVER).expect("open");
        assert_eq!(rec0.live, vec![]);
        let recs = vec![rec(1, LeaseState::Bound), rec(2, LeaseState::Bound)];
        log.append(&recs).expect("append");
        log.append(&[rec(2, LeaseState::Released)]).expect("append");
        drop(log);
        assert_eq!(read_records(&d.log()).expect("read").len(), 3);
        assert_eq!(
            load_live(&d.log()).expect("live"),
            vec![rec(1, LeaseState::Bound)]
        );
        let (_, again) = LeaseLog::open(&d.log(), NEVER).expect("reopen");
        assert_eq!(again.live, vec![rec(1, LeaseState::Bound)]);
        assert_eq!((again.records, again.torn_bytes), (3, 0));
    }

    /// A crash mid-append at every byte of the last two records: the reopened log keeps
    /// every complete line, cuts the rest durably, and the next append does not join the
    /// torn line — so the restart after that loads too (the bug of issue #11, item 6).
    #[test]
    fn every_torn_tail_is_cut_and_the_next_append_stands_alone() {
        let d = Dir::new("torn");
        let recs: Vec<_> = (1..=5).map(|n| rec(n, LeaseState::Bound)).collect();
        let full = bytes_of(&recs);
        let acked = bytes_of(&recs[..3]).len();
        let next = rec(9, LeaseState::Bound);
        for cut in acked..=full.len() {
            std::fs::write(d.log(), &full[..cut]).expect("write");
            let (mut log, got) = LeaseLog::open(&d.log(), NEVER).expect("torn tail recovers");
            let whole = (3..=5)
                .rev()
                .find(|n| bytes_of(&recs[..*n]).len() <= cut)
                .expect("at least the acknowledged three");
            assert_eq!(got.live, recs[..whole], "cut at {cut}");
            assert_eq!(
                got.torn_bytes,
                (cut - bytes_of(&recs[..whole]).len()) as u64
            );
            assert_eq!(
                std::fs::metadata(d.log()).expect("stat").len(),
                bytes_of(&recs[..whole]).len() as u64,
                "cut on disk before anything is appended"
            );
            log.append(std::slice::from_ref(&next)).expect("append");
            drop(log);
            let mut want = recs[..whole].to_vec();
            want.push(next.clone());
            assert_eq!(
                read_records(&d.log()).expect("reload"),
                want,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn damage_in_the_middle_is_refused_and_left_alone() {
        let d = Dir::new("damaged");
        let mut bytes = bytes_of(&[rec(1, LeaseState::Bound)]);
        bytes.extend_from_slice(b"{\"address\":\"10.0\n");
        bytes.extend_from_slice(&bytes_of(&[rec(2, LeaseState::Bound)]));
        std::fs::write(d.log(), &bytes).expect("write");
        let err = LeaseLog::open(&d.log(), NEVER).expect_err("damaged");
        let msg = err.to_string();
        assert!(
            matches!(&err, LeaseLogError::Damaged { source, .. } if source.line == 2),
            "{msg}"
        );
        assert!(
            msg.contains("leases.jsonl") && msg.contains("line 2"),
            "{msg}"
        );
        assert_eq!(std::fs::read(d.log()).expect("read"), bytes, "untouched");
        assert!(matches!(
            load_live(&d.log()),
            Err(LeaseLogError::Damaged { .. })
        ));
    }

    #[test]
    fn compaction_keeps_the_live_leases_only() {
        let d = Dir::new("compact");
        let policy = Compaction {
            min_records: 10,
            ratio: 2,
        };
        let (mut log, _) = LeaseLog::open(&d.log(), policy).expect("open");
        let mut table = LeaseTable::default();
        // Renew the same three leases over and over.
        for round in 0..10u64 {
            let batch: Vec<_> = (1..=3)
                .map(|n| LeaseRecord {
                    expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1000 + round),
                    ..rec(n, LeaseState::Bound)
                })
                .collect();
            table.restore(&batch);
            if log.wants_compaction(table.live_count()) {
                assert!(matches!(
                    log.compact(&table.snapshot()).expect("compact"),
                    Compacted::Done { .. }
                ));
            } else {
                log.append(&batch).expect("append");
            }
        }
        assert!(log.lines() < 12, "{}", log.lines());
        drop(log);
        assert_eq!(load_live(&d.log()).expect("live"), table.snapshot());
        assert!(!temp_path(&d.log()).exists());
    }

    #[test]
    fn open_compacts_a_bloated_log() {
        let d = Dir::new("bloated");
        let mut recs = Vec::new();
        for _ in 0..50 {
            recs.push(rec(1, LeaseState::Bound));
            recs.push(rec(1, LeaseState::Released));
        }
        recs.push(rec(2, LeaseState::Bound));
        std::fs::write(d.log(), bytes_of(&recs)).expect("write");
        let policy = Compaction {
            min_records: 10,
            ratio: 4,
        };
        let (log, got) = LeaseLog::open(&d.log(), policy).expect("open");
        assert!(got.compacted);
        assert_eq!(got.live, vec![rec(2, LeaseState::Bound)]);
        assert_eq!(log.lines(), 1);
        assert_eq!(read_records(&d.log()).expect("read"), got.live);
    }

    /// The file states a crash can leave at each step of a compaction, including a
    /// compaction file cut at every byte: each reopens to every acknowledged lease.
    #[test]
    fn a_crash_at_any_step_of_compaction_keeps_every_acknowledged_lease() {
        let d = Dir::new("crashsteps");
        let mut history = Vec::new();
        for n in 1..=6 {
            history.push(rec(n, LeaseState::Bound));
        }
        history.push(rec(3, LeaseState::Released));
        let old = bytes_of(&history);
        let mut table = LeaseTable::default();
        table.restore(&history);
        let live = table.snapshot();
        let snapshot = bytes_of(&live);
        let tmp = temp_path(&d.log());
        // 1. Crash while writing or before syncing the compaction file (any length), or
        //    after syncing it but before the rename: the old log is the log.
        for cut in 0..=snapshot.len() {
            std::fs::write(d.log(), &old).expect("old");
            std::fs::write(&tmp, &snapshot[..cut]).expect("tmp");
            let (_, got) = LeaseLog::open(&d.log(), NEVER).expect("open");
            assert_eq!(got.live, live, "tmp cut at {cut}");
            assert!(!tmp.exists(), "leftover compaction file deleted");
        }
        // 2. Crash after the rename (directory synced or not): the new log is complete.
        std::fs::write(d.log(), &snapshot).expect("new");
        let (_, got) = LeaseLog::open(&d.log(), NEVER).expect("open");
        assert_eq!(got.live, live);
    }

    #[test]
    fn a_failed_compaction_leaves_the_log_in_use() {
        let d = Dir::new("skip");
        let (mut log, _) = LeaseLog::open(&d.log(), NEVER).expect("open");
        log.append(&[rec(1, LeaseState::Bound)]).expect("append");
        // A directory where the compaction file must go: create_new fails.
        std::fs::create_dir(&log.tmp).expect("mkdir");
        std::fs::write(log.tmp.join("x"), b"x").expect("block removal");
        let live = vec![rec(1, LeaseState::Bound)];
        assert!(matches!(
            log.compact(&live).expect("not fatal"),
            Compacted::Skipped(LeaseLogError::Io { .. })
        ));
        log.append(&[rec(2, LeaseState::Bound)])
            .expect("still appends");
        drop(log);
        assert_eq!(read_records(&d.log()).expect("read").len(), 2);
    }
}
