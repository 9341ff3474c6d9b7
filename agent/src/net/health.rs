//! Post-reboot health checks: commands that must exit 0 and HTTP probes that must answer 2xx,
//! each with its own timeout, all within the watchdog.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::HealthCheck;

/// How the checks went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthResult {
    /// Every check passed.
    Healthy,
    /// A check failed (the first one, with why).
    Unhealthy(String),
    /// The watchdog expired before the checks finished.
    WatchdogExpired,
}

/// Runs `checks` in order until one fails, giving up at `deadline` (the watchdog).
#[must_use]
pub fn run_checks(checks: &[HealthCheck], deadline: Instant) -> HealthResult {
    for check in checks {
        let now = Instant::now();
        if now >= deadline {
            return HealthResult::WatchdogExpired;
        }
        let left = deadline - now;
        let result = match check {
            HealthCheck::Command { argv, timeout, .. } => {
                run_command(argv, (*timeout).min(left), left < *timeout)
            }
            HealthCheck::Http { url, timeout, .. } => {
                probe(url, (*timeout).min(left), left < *timeout)
            }
        };
        match result {
            Ok(()) => {}
            Err(Failure::Watchdog) => return HealthResult::WatchdogExpired,
            Err(Failure::Failed(why)) => {
                return HealthResult::Unhealthy(format!("health check {}: {why}", check.name()));
            }
        }
    }
    HealthResult::Healthy
}

enum Failure {
    Failed(String),
    Watchdog,
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
        // The watchdog is shorter than the check's own timeout.
        let soon = Instant::now() + Duration::from_millis(300);
        assert_eq!(
            run_checks(&[cmd("s", &["sleep", "30"], 60)], soon),
            HealthResult::WatchdogExpired
        );
    }
}
