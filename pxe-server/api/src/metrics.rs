//! Prometheus metrics in the text exposition format, written by hand (a few counters and
//! gauges do not justify a metrics crate).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use tugboot_fleet::rollout::StageSummary;

/// Counters and gauges of the device API.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    reports: BTreeMap<&'static str, u64>,
    enrollments: BTreeMap<&'static str, u64>,
    refusals: BTreeMap<&'static str, u64>,
    rollouts: BTreeMap<i64, RolloutGauge>,
}

#[derive(Debug, Clone)]
struct RolloutGauge {
    state: &'static str,
    stage: u32,
    summary: StageSummary,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // A poisoned lock only means another thread panicked while counting: keep counting.
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }

    /// One API request answered.
    pub fn request(&self, route: &str, status: u16) {
        self.with(|m| *m.requests.entry((route.to_owned(), status)).or_default() += 1);
    }

    /// One report handled: `stored` or `duplicate`.
    pub fn report(&self, result: &'static str) {
        self.with(|m| *m.reports.entry(result).or_default() += 1);
    }

    /// One enrollment handled: `issued`, `pending`, `refused`, `renewed`.
    pub fn enrollment(&self, result: &'static str) {
        self.with(|m| *m.enrollments.entry(result).or_default() += 1);
    }

    /// One request refused by the identity checks, by reason.
    pub fn refusal(&self, reason: &'static str) {
        self.with(|m| *m.refusals.entry(reason).or_default() += 1);
    }

    /// The latest evaluation of a rollout.
    pub fn rollout(&self, id: i64, state: &'static str, stage: u32, summary: StageSummary) {
        self.with(|m| {
            m.rollouts.insert(
                id,
                RolloutGauge {
                    state,
                    stage,
                    summary,
                },
            );
        });
    }

    /// The text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        self.with(|m| {
            let mut out = String::new();
            let _ = writeln!(
                out,
                "# HELP tugboot_api_requests_total Device API requests by route and status."
            );
            let _ = writeln!(out, "# TYPE tugboot_api_requests_total counter");
            for ((route, status), n) in &m.requests {
                let _ = writeln!(
                    out,
                    "tugboot_api_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                    escape(route)
                );
            }
            let _ = writeln!(
                out,
                "# HELP tugboot_api_reports_total Device reports by result."
            );
            let _ = writeln!(out, "# TYPE tugboot_api_reports_total counter");
            for (k, n) in &m.reports {
                let _ = writeln!(out, "tugboot_api_reports_total{{result=\"{k}\"}} {n}");
            }
            let _ = writeln!(
                out,
                "# HELP tugboot_api_enrollments_total Enrollments by result."
            );
            let _ = writeln!(out, "# TYPE tugboot_api_enrollments_total counter");
            for (k, n) in &m.enrollments {
                let _ = writeln!(out, "tugboot_api_enrollments_total{{result=\"{k}\"}} {n}");
            }
            let _ = writeln!(
                out,
                "# HELP tugboot_api_refusals_total Requests refused by the identity checks."
            );
            let _ = writeln!(out, "# TYPE tugboot_api_refusals_total counter");
            for (k, n) in &m.refusals {
                let _ = writeln!(out, "tugboot_api_refusals_total{{reason=\"{k}\"}} {n}");
            }
            let _ = writeln!(
                out,
                "# HELP tugboot_rollout_stage Current stage index of each rollout."
            );
            let _ = writeln!(out, "# TYPE tugboot_rollout_stage gauge");
            for (id, g) in &m.rollouts {
                let _ = writeln!(
                    out,
                    "tugboot_rollout_stage{{rollout=\"{id}\",state=\"{}\"}} {}",
                    g.state, g.stage
                );
            }
            let _ = writeln!(
                out,
                "# HELP tugboot_rollout_devices Devices of each rollout by status."
            );
            let _ = writeln!(out, "# TYPE tugboot_rollout_devices gauge");
            for (id, g) in &m.rollouts {
                let s = &g.summary;
                for (k, v) in [
                    ("group", s.group),
                    ("admitted", s.admitted),
                    ("committed", s.committed),
                    ("failed", s.failed),
                    ("timed_out", s.timed_out),
                    ("pending", s.pending),
                ] {
                    let _ = writeln!(
                        out,
                        "tugboot_rollout_devices{{rollout=\"{id}\",status=\"{k}\"}} {v}"
                    );
                }
            }
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::default();
        m.request("/api/v1/device/reports", 200);
        m.request("/api/v1/device/reports", 200);
        m.request("/x\"y", 403);
        m.report("stored");
        m.rollout(
            3,
            "running",
            1,
            StageSummary {
                group: 10,
                admitted: 5,
                committed: 4,
                ..Default::default()
            },
        );
        let text = m.render();
        assert!(text.contains(
            "tugboot_api_requests_total{route=\"/api/v1/device/reports\",status=\"200\"} 2\n"
        ));
        assert!(text.contains("route=\"/x\\\"y\""));
        assert!(text.contains("tugboot_api_reports_total{result=\"stored\"} 1\n"));
        assert!(text.contains("tugboot_rollout_devices{rollout=\"3\",status=\"committed\"} 4\n"));
        assert!(text.contains("tugboot_rollout_stage{rollout=\"3\",state=\"running\"} 1\n"));
    }
}
