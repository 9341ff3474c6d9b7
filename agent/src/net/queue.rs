//! The durable report queue: one file per report, so that no outcome is lost while the server is
//! unreachable or the device loses power.
//!
//! - A report is written atomically (`NNNNNNNNNNNNNNNNNNNN.json.tmp`, `fsync`, rename, `fsync`
//!   of the directory) before anyone tries to send it.
//! - Reports are sent oldest first (the file name is a sequence number) and each is deleted
//!   only after the server acknowledged it with a `2xx`; sending stops at the first failure,
//!   so order is kept. A crash between the acknowledgement and the deletion sends that report
//!   again: delivery is at least once, and each report carries an `id` the server uses to
//!   drop the repeat (exactly once as seen by the server).
//! - The queue is bounded ([`ReportQueue::open`]'s `max`): when full, the oldest report is
//!   dropped to make room, status reports before outcomes (outcomes are rare: one per update
//!   attempt, and they decide rollouts).
//! - Status reports ([`ReportQueue::push_status`], `NNN.status.json`) replace each other: only
//!   the newest one waits, so a device offline for a week queues one status, not thousands
//!   (an inventory in a status it replaces is carried over).
//! - `last-outcome.json` remembers the last outcome queued, so that an outcome persisted in the
//!   state file but lost to a crash before it was queued is queued at the next start
//!   ([`ReportQueue::recover`]), and not twice.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::io::{RealIo, write_atomic};
use crate::net::NetError;
use crate::update::Outcome;

/// Size cap of one queued report file: what the server takes.
pub use tugboot_wire::device::MAX_REPORT_BYTES;
const SUFFIX: &str = ".json";
const STATUS_SUFFIX: &str = ".status.json";
const MARKER: &str = "last-outcome.json";

/// What is POSTed to the server: the device API's report (`tugboot_wire::DeviceReport`).
pub use tugboot_wire::DeviceReport as Report;

/// The queue failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// A file operation failed.
    #[error("report queue {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Which file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The report would be refused by the server (a bug, or a value out of bounds).
    #[error("report not queued: {0}")]
    Invalid(tugboot_wire::WireError),
}

/// The queue in one directory.
#[derive(Debug)]
pub struct ReportQueue {
    dir: PathBuf,
    max: usize,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> QueueError + 'a {
    move |source| QueueError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Sequence number and kind (status or not) of a queued report file.
fn seq_of(name: &str) -> Option<(u64, bool)> {
    let (digits, status) = match name.strip_suffix(STATUS_SUFFIX) {
        Some(d) => (d, true),
        None => (name.strip_suffix(SUFFIX)?, false),
    };
    if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok().map(|s| (s, status))
    } else {
        None
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl ReportQueue {
    /// Opens (creating) the queue in `dir`, holding at most `max` reports (at least 1), and
    /// removes temporary files a crash left behind.
    ///
    /// # Errors
    /// File errors.
    pub fn open(dir: &Path, max: usize) -> Result<Self, QueueError> {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let entry = entry.map_err(io_err("list", dir))?;
            if entry.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            max: max.max(1),
        })
    }

    /// Pending reports, oldest first: (sequence, file).
    ///
    /// # Errors
    /// File errors.
    pub fn pending(&self) -> Result<Vec<(u64, PathBuf)>, QueueError> {
        Ok(self
            .pending_kinds()?
            .into_iter()
            .map(|(seq, _, path)| (seq, path))
            .collect())
    }

    /// Pending reports, oldest first: (sequence, is a status report, file).
    fn pending_kinds(&self) -> Result<Vec<(u64, bool, PathBuf)>, QueueError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err("list", &self.dir))? {
            let entry = entry.map_err(io_err("list", &self.dir))?;
            if let Some((seq, status)) = seq_of(&entry.file_name().to_string_lossy()) {
                out.push((seq, status, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Number of pending reports.
    ///
    /// # Errors
    /// File errors.
    pub fn len(&self) -> Result<usize, QueueError> {
        self.pending().map(|p| p.len())
    }

    /// Whether nothing is pending.
    ///
    /// # Errors
    /// File errors.
    pub fn is_empty(&self) -> Result<bool, QueueError> {
        self.len().map(|n| n == 0)
    }

    /// Queues an outcome report durably (returns once it is on disk) and records it as the last
    /// outcome queued. Returns the report.
    ///
    /// # Errors
    /// File errors; the report is then not queued.
    pub fn push(&self, outcome: &Outcome, boot_id: &str) -> Result<Report, QueueError> {
        let report = Report {
            boot_id: boot_id.to_owned(),
            outcome: Some(outcome.clone()),
            ..Report::default()
        };
        let report = self.write(report, false)?;
        self.set_marker(outcome)?;
        Ok(report)
    }

    /// Queues an outcome that is not the state file's `last_result` (a manifest refused
    /// before any update started), leaving the last-outcome record alone so that
    /// [`ReportQueue::recover`] keeps comparing with the state.
    ///
    /// # Errors
    /// File errors.
    pub fn push_unrecorded(&self, outcome: &Outcome, boot_id: &str) -> Result<Report, QueueError> {
        self.write(
            Report {
                boot_id: boot_id.to_owned(),
                outcome: Some(outcome.clone()),
                ..Report::default()
            },
            false,
        )
    }

    /// Queues a status report durably (its `id`, `seq` and `agent` are filled in here),
    /// replacing any status report still waiting. (The caller keeps sending the inventory
    /// until [`ReportQueue::status_pending`] says a status report went out.) Returns the
    /// report.
    ///
    /// # Errors
    /// File errors.
    pub fn push_status(&self, report: Report) -> Result<Report, QueueError> {
        let older: Vec<PathBuf> = self
            .pending_kinds()?
            .into_iter()
            .filter(|(_, status, _)| *status)
            .map(|(_, _, p)| p)
            .collect();
        let report = self.write(report, true)?;
        for p in older {
            fs::remove_file(&p).map_err(io_err("replace", &p))?;
        }
        Ok(report)
    }

    /// Whether a status report waits to be sent.
    ///
    /// # Errors
    /// File errors.
    pub fn status_pending(&self) -> Result<bool, QueueError> {
        Ok(self.pending_kinds()?.iter().any(|(_, status, _)| *status))
    }

    fn write(&self, mut report: Report, status: bool) -> Result<Report, QueueError> {
        let mut pending = self.pending_kinds()?;
        // Strictly after every queued report, and after reports of earlier runs that were
        // already delivered (the clock, when it is right; sequences stay ordered either way).
        let seq = pending
            .last()
            .map_or(0, |(s, _, _)| s.saturating_add(1))
            .max(now_micros());
        report.id = format!("{}-{seq}", report.boot_id);
        report.seq = Some(seq);
        report.agent = Some(env!("CARGO_PKG_VERSION").to_owned());
        report.validate().map_err(QueueError::Invalid)?;
        let bytes = serde_json::to_vec(&report).unwrap_or_default();
        let suffix = if status { STATUS_SUFFIX } else { SUFFIX };
        let path = self.dir.join(format!("{seq:020}{suffix}"));
        write_atomic(&mut RealIo::new(), &path, &bytes).map_err(io_err("write", &path))?;
        // Make room: status reports go first, then the oldest outcomes.
        while pending.len() >= self.max {
            let i = pending.iter().position(|(_, s, _)| *s).unwrap_or(0);
            let (_, _, victim) = pending.remove(i);
            fs::remove_file(&victim).map_err(io_err("drop", &victim))?;
        }
        Ok(report)
    }

    /// Queues `last` (the state file's `last_result`) unless it is the outcome queued last:
    /// catches an outcome persisted just before a crash that kept it from being queued.
    /// Returns whether it was queued.
    ///
    /// # Errors
    /// File errors.
    pub fn recover(&self, last: Option<&Outcome>, boot_id: &str) -> Result<bool, QueueError> {
        let Some(last) = last else {
            return Ok(false);
        };
        let marker = self.dir.join(MARKER);
        let known = match fs::read(&marker) {
            Ok(bytes) => serde_json::from_slice::<Outcome>(&bytes).ok(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("read", &marker)(e)),
        };
        if known.as_ref() == Some(last) {
            return Ok(false);
        }
        self.push(last, boot_id)?;
        Ok(true)
    }

    fn set_marker(&self, outcome: &Outcome) -> Result<(), QueueError> {
        let marker = self.dir.join(MARKER);
        let bytes = serde_json::to_vec(outcome).unwrap_or_default();
        write_atomic(&mut RealIo::new(), &marker, &bytes).map_err(io_err("write", &marker))
    }

    /// Sends pending reports oldest first with `send`, deleting each one after `send` succeeded,
    /// and stops at the first failure (returned with the count sent before it). A file that
    /// is unreadable, too large or not JSON is dropped, and so is a report the server refuses
    /// as malformed (`400`, `413`, `422`): neither could ever be delivered, and keeping them
    /// would hold back every report behind them.
    ///
    /// # Errors
    /// File errors.
    pub fn flush(
        &self,
        send: &mut dyn FnMut(&[u8]) -> Result<(), NetError>,
    ) -> Result<(usize, Option<NetError>), QueueError> {
        let mut sent = 0;
        for (_, path) in self.pending()? {
            let bytes = match crate::config::read_capped(&path, MAX_REPORT_BYTES) {
                // The agent wrote it; a cut or garbled file is not JSON any more.
                Ok(b) if serde_json::from_slice::<serde::de::IgnoredAny>(&b).is_ok() => b,
                _ => {
                    fs::remove_file(&path).map_err(io_err("drop", &path))?;
                    continue;
                }
            };
            match send(&bytes) {
                Ok(()) => {}
                Err(e) if matches!(e.status(), Some(400 | 413 | 422)) => {
                    fs::remove_file(&path).map_err(io_err("drop", &path))?;
                    continue;
                }
                Err(e) => return Ok((sent, Some(e))),
            }
            fs::remove_file(&path).map_err(io_err("delete", &path))?;
            sent += 1;
        }
        if sent > 0 {
            fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err("sync", &self.dir))?;
        }
        Ok((sent, None))
    }
}
