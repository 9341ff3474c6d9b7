//! Health checks and watchdogs.
//!
//! Checks (`[[health.*]]`): a command that must exit 0, an HTTP probe that must answer 2xx, a
//! file that must exist, a systemd unit that must be active (`systemctl is-active`). Each has
//! its own timeout; all of them together must finish within the deadline (`watchdog_secs`).
//! They run after a trial reboot (the commit depends on them) and every
//! `status_interval_secs` (their results go into the status report).
//!
//! Watchdogs keep a board alive only while it is healthy:
//!
//! - hardware (`[watchdog] device = "/dev/watchdog"`): a thread writes to the device every
//!   `feed_secs` while the last checks passed and the agent's loop showed a sign of life
//!   recently ([`Liveness`]); when it stops, the watchdog resets the board. In a trial boot
//!   the reset counts as a failed try, so the bootloader falls back.
//! - software (systemd `WatchdogSec=`): when `NOTIFY_SOCKET` and `WATCHDOG_USEC` are set, the
//!   same thread sends `WATCHDOG=1` on the same condition.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::HealthCheck;

/// How the checks went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthResult {
    /// Every check passed.
    Healthy,
    /// A check failed (the first one, with why).
    Unhealthy(String),
    /// The deadline passed before the checks finished.
    WatchdogExpired,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    /// The check's name.
    pub name: String,
    /// `command`, `http`, `file`, `service`.
    pub kind: &'static str,
    /// Passed.
    pub ok: bool,
    /// Why it failed.
    pub detail: Option<String>,
    /// How long it took.
    pub millis: u64,
}

/// All checks' results and the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// The verdict.
    pub result: HealthResult,
    /// Each check run, in order.
    pub checks: Vec<CheckOutcome>,
}

/// Runs `checks` in order until one fails, giving up at `deadline`.
#[must_use]
pub fn run_checks(checks: &[HealthCheck], deadline: Instant) -> HealthResult {
    evaluate(checks, deadline, true).result
}

/// Runs `checks` in order within `deadline`, all of them unless `stop_at_failure`; the
/// verdict names the first failure.
#[must_use]
pub fn evaluate(checks: &[HealthCheck], deadline: Instant, stop_at_failure: bool) -> HealthReport {
    let mut out = Vec::with_capacity(checks.len());
    let mut result = HealthResult::Healthy;
    for check in checks {
        let start = Instant::now();
        if start >= deadline {
            return HealthReport {
                result: HealthResult::WatchdogExpired,
                checks: out,
            };
        }
        let left = deadline - start;
        let verdict = match check {
            HealthCheck::Command { argv, timeout, .. } => {
                run_command(argv, (*timeout).min(left), left < *timeout)
            }
            HealthCheck::Http { url, timeout, .. } => {
                probe(url, (*timeout).min(left), left < *timeout)
            }
            HealthCheck::File {
                path, non_empty, ..
            } => file(path, *non_empty),
            HealthCheck::Service { unit, timeout, .. } => {
                let argv = [
                    "systemctl".to_owned(),
                    "is-active".to_owned(),
                    "--quiet".to_owned(),
                    unit.clone(),
                ];
                run_command(&argv, (*timeout).min(left), left < *timeout)
            }
        };
        let millis = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let detail = match &verdict {
            Ok(()) => None,
            Err(Failure::Failed(why)) => Some(why.clone()),
            Err(Failure::Watchdog) => Some("deadline reached".to_owned()),
        };
        out.push(CheckOutcome {
            name: check.name().to_owned(),
            kind: check.kind(),
            ok: verdict.is_ok(),
            detail,
            millis,
        });
        match verdict {
            Ok(()) => {}
            Err(Failure::Watchdog) => {
                return HealthReport {
                    result: HealthResult::WatchdogExpired,
                    checks: out,
                };
            }
            Err(Failure::Failed(why)) => {
                if result == HealthResult::Healthy {
                    result =
                        HealthResult::Unhealthy(format!("health check {}: {why}", check.name()));
                }
                if stop_at_failure {
                    break;
                }
            }
        }
    }
    HealthReport {
        result,
        checks: out,
    }
}

enum Failure {
    Failed(String),
    Watchdog,
}

fn file(path: &Path, non_empty: bool) -> Result<(), Failure> {
    match std::fs::metadata(path) {
        Ok(m) if non_empty && m.len() == 0 => {
            Err(Failure::Failed(format!("{} is empty", path.display())))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(Failure::Failed(format!("{}: {e}", path.display()))),
    }
}

fn run_command(argv: &[String], limit: Duration, watchdog_bound: bool) -> Result<(), Failure> {
    let Some((program, args)) = argv.split_first() else {
        return Err(Failure::Failed("empty command".into()));
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Failure::Failed(format!("cannot run {program}: {e}")))?;
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(Failure::Failed(format!("{program} {status}"))),
            Ok(None) => {}
            Err(e) => return Err(Failure::Failed(format!("waiting for {program}: {e}"))),
        }
        if start.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(if watchdog_bound {
                Failure::Watchdog
            } else {
                Failure::Failed(format!(
                    "{program} did not finish within {}s",
                    limit.as_secs()
                ))
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

fn probe(url: &str, limit: Duration, watchdog_bound: bool) -> Result<(), Failure> {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(limit))
        .build();
    let agent = ureq::Agent::new_with_config(config);
    match agent.get(url).call() {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(resp) => Err(Failure::Failed(format!(
            "{url}: HTTP {}",
            resp.status().as_u16()
        ))),
        Err(ureq::Error::Timeout(_)) if watchdog_bound => Err(Failure::Watchdog),
        Err(e) => Err(Failure::Failed(format!("{url}: {e}"))),
    }
}

/// Whether the device is healthy and its agent alive, shared with the watchdog feeder.
#[derive(Debug)]
pub struct Liveness {
    start: Instant,
    healthy: AtomicBool,
    last_beat_ms: AtomicU64,
    hang: Duration,
}

impl Liveness {
    /// Healthy until told otherwise; the agent counts as hung when it shows no sign of life
    /// for `hang`.
    #[must_use]
    pub fn new(hang: Duration) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            healthy: AtomicBool::new(true),
            last_beat_ms: AtomicU64::new(0),
            hang,
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A sign of life (the loop runs, a download makes progress).
    pub fn beat(&self) {
        self.last_beat_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The verdict of the last checks.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
        self.beat();
    }

    /// Whether a watchdog should be fed now.
    #[must_use]
    pub fn feed_now(&self) -> bool {
        let hang = u64::try_from(self.hang.as_millis()).unwrap_or(u64::MAX);
        self.healthy.load(Ordering::Relaxed)
            && self
                .now_ms()
                .saturating_sub(self.last_beat_ms.load(Ordering::Relaxed))
                < hang
    }
}

/// Where the feeder writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchdogTarget {
    /// A hardware watchdog device (a write of one byte feeds it).
    Device(PathBuf),
    /// systemd's service watchdog over `$NOTIFY_SOCKET`.
    Systemd(String),
}

/// The systemd watchdog, when the service manager asked for one (`WatchdogSec=`): the notify
/// socket and half the interval it expects (as `sd_watchdog_enabled` advises).
#[must_use]
pub fn systemd_watchdog() -> Option<(String, Duration)> {
    let socket = std::env::var("NOTIFY_SOCKET").ok()?;
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| (socket, Duration::from_micros(usec / 2)))
}

fn notify(socket: &str, message: &str) -> std::io::Result<()> {
    use std::os::unix::net::UnixDatagram;
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt as _;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(message.as_bytes(), &addr)?;
    } else {
        sock.send_to(message.as_bytes(), socket)?;
    }
    Ok(())
}

/// Feeds `target` every `every` while `live.feed_now()`, from a thread, until the process
/// ends. A hardware device is opened once (opening it starts it); when feeding stops the
/// board resets after the device's timeout.
///
/// # Errors
/// The device cannot be opened.
pub fn spawn_feeder(
    target: WatchdogTarget,
    every: Duration,
    live: Arc<Liveness>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let mut device = match &target {
        WatchdogTarget::Device(path) => Some(std::fs::OpenOptions::new().write(true).open(path)?),
        WatchdogTarget::Systemd(_) => None,
    };
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            loop {
                if live.feed_now() {
                    match (&mut device, &target) {
                        (Some(f), _) => {
                            let _ = f.write_all(b"1");
                        }
                        (None, WatchdogTarget::Systemd(socket)) => {
                            let _ = notify(socket, "WATCHDOG=1");
                        }
                        (None, WatchdogTarget::Device(_)) => {}
                    }
                }
                std::thread::sleep(every);
            }
        })
}

/// Tells systemd the service is up (`READY=1`), if it runs under `Type=notify`.
pub fn notify_ready() {
    if let Ok(socket) = std::env::var("NOTIFY_SOCKET") {
        let _ = notify(&socket, "READY=1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(name: &str, argv: &[&str], secs: u64) -> HealthCheck {
        HealthCheck::Command {
            name: name.into(),
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            timeout: Duration::from_secs(secs),
        }
    }

    #[test]
    fn commands_pass_fail_and_time_out() {
        let far = Instant::now() + Duration::from_secs(600);
        assert_eq!(
            run_checks(&[cmd("t", &["true"], 5)], far),
            HealthResult::Healthy
        );
        let r = run_checks(&[cmd("t", &["true"], 5), cmd("f", &["false"], 5)], far);
        assert!(
            matches!(&r, HealthResult::Unhealthy(w) if w.contains("health check f")),
            "{r:?}"
        );
        let r = run_checks(&[cmd("s", &["sleep", "30"], 1)], far);
        assert!(
            matches!(&r, HealthResult::Unhealthy(w) if w.contains("within 1s")),
            "{r:?}"
        );
        let r = run_checks(&[cmd("m", &["/nonexistent/x"], 1)], far);
        assert!(
            matches!(&r, HealthResult::Unhealthy(w) if w.contains("cannot run")),
            "{r:?}"
        );
        // The deadline is shorter than the check's own timeout.
        let soon = Instant::now() + Duration::from_millis(300);
        assert_eq!(
            run_checks(&[cmd("s", &["sleep", "30"], 60)], soon),
            HealthResult::WatchdogExpired
        );
    }

    #[test]
    fn files_and_every_result_for_the_status() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        let file = |name: &str, path: PathBuf, non_empty| HealthCheck::File {
            name: name.into(),
            path,
            non_empty,
        };
        let checks = [
            file("exists", empty.clone(), false),
            file("missing", dir.path().join("nope"), false),
            file("empty", empty, true),
            cmd("t", &["true"], 5),
        ];
        let far = Instant::now() + Duration::from_secs(600);
        let all = evaluate(&checks, far, false);
        let oks: Vec<bool> = all.checks.iter().map(|c| c.ok).collect();
        assert_eq!(oks, [true, false, false, true]);
        assert!(
            matches!(&all.result, HealthResult::Unhealthy(w) if w.contains("health check missing")),
            "{:?}",
            all.result
        );
        assert!(all.checks[2].detail.as_deref().unwrap().contains("empty"));
        assert_eq!(all.checks[3].kind, "command");
        let first = evaluate(&checks, far, true);
        assert_eq!(first.checks.len(), 2, "stops at the first failure");
    }

    #[test]
    fn a_unit_that_does_not_exist_is_not_active() {
        // With systemd this is `systemctl is-active` saying inactive; without it, systemctl
        // cannot be run. Either way the check fails, with a reason.
        let check = HealthCheck::Service {
            name: "ghost".into(),
            unit: "tugboot-test-no-such-unit.service".into(),
            timeout: Duration::from_secs(20),
        };
        let r = evaluate(&[check], Instant::now() + Duration::from_secs(60), true);
        assert!(!r.checks[0].ok, "{r:?}");
        assert_eq!(r.checks[0].kind, "service");
        assert!(matches!(r.result, HealthResult::Unhealthy(_)));
    }

    /// Waits (bounded) until `f` holds.
    fn eventually(f: impl Fn() -> bool) -> bool {
        (0..500).any(|_| {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
            false
        })
    }

    #[test]
    fn the_feeder_writes_only_while_healthy() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("watchdog");
        std::fs::write(&device, b"").unwrap();
        let live = Liveness::new(Duration::from_secs(3600));
        live.beat();
        spawn_feeder(
            WatchdogTarget::Device(device.clone()),
            Duration::from_millis(5),
            live.clone(),
        )
        .unwrap();
        let len = || std::fs::metadata(&device).unwrap().len();
        assert!(eventually(|| len() >= 3), "fed while healthy");
        live.set_healthy(false);
        std::thread::sleep(Duration::from_millis(30)); // a feed in flight lands
        let stopped = len();
        std::thread::sleep(Duration::from_millis(100)); // twenty feed intervals
        assert_eq!(len(), stopped, "no feed while unhealthy");
        live.set_healthy(true);
        assert!(eventually(|| len() > stopped), "fed again");
        assert!(
            spawn_feeder(
                WatchdogTarget::Device(dir.path().join("missing/watchdog")),
                Duration::from_secs(1),
                live
            )
            .is_err()
        );
    }

    #[test]
    fn systemd_is_notified_while_healthy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let live = Liveness::new(Duration::from_secs(3600));
        live.beat();
        spawn_feeder(
            WatchdogTarget::Systemd(path.display().to_string()),
            Duration::from_millis(5),
            live,
        )
        .unwrap();
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn liveness_gates_feeding() {
        let live = Liveness::new(Duration::from_secs(3600));
        live.beat();
        assert!(live.feed_now());
        live.set_healthy(false);
        assert!(!live.feed_now());
        live.set_healthy(true);
        assert!(live.feed_now());
        let hung = Liveness::new(Duration::ZERO);
        hung.beat();
        assert!(!hung.feed_now(), "no sign of life within zero seconds");
    }
}
