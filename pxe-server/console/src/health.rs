//! Which machines are failing or silent, for the whole fleet at once.
//!
//! The store answers per machine (its reports, its certificates); the overview needs every
//! machine's latest report on each page load. So the console keeps a table, sans-IO here:
//! built by a background task from the store ([`crate::state`]), then kept current by the
//! fleet's report events and rebuilt every [`RESYNC_SECS`] (other servers sharing PostgreSQL
//! store reports this server never sees as events). Silence is decided at read time from the
//! last report's age, so it needs no event.
//!
//! A machine is **failing** when its latest report says so: an update that rolled back, failed
//! or was rejected, a health check that did not pass, or an error the agent saw. It is
//! **silent** when it holds a certificate (enrolled) and has not reported for
//! `silent_after_secs` (the same rule as `tugboot machines show`,
//! [`tugboot_api::server::operator::health_view`]).

use std::collections::HashMap;

use tugboot_fleet::MachineId;
use tugboot_store::Report;

/// The table is rebuilt from the store this often.
pub const RESYNC_SECS: u64 = 300;

/// What the table knows of one machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// It holds a certificate that is neither revoked nor expired.
    pub enrolled: bool,
    /// When its latest report arrived.
    pub last_report_at: Option<i64>,
    /// Why its latest report says it is failing.
    pub problem: Option<String>,
}

/// A machine's standing, as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Its latest report says something is wrong.
    Failing(String),
    /// Enrolled, and no report for longer than allowed (`None`: never reported).
    Silent(Option<i64>),
    /// Enrolled and reporting well.
    Healthy,
    /// No certificate: a netbooted machine without the agent, or not enrolled yet.
    NotEnrolled,
    /// The table is still being built.
    Loading,
}

impl Standing {
    /// Sort key: failing, silent, loading, healthy, not enrolled.
    #[must_use]
    pub fn rank(&self) -> u8 {
        match self {
            Self::Failing(_) => 0,
            Self::Silent(_) => 1,
            Self::Loading => 2,
            Self::Healthy => 3,
            Self::NotEnrolled => 4,
        }
    }

    /// One word for tables and filters.
    #[must_use]
    pub fn word(&self) -> &'static str {
        match self {
            Self::Failing(_) => "failing",
            Self::Silent(_) => "silent",
            Self::Healthy => "healthy",
            Self::NotEnrolled => "not enrolled",
            Self::Loading => "loading",
        }
    }

    /// CSS class.
    #[must_use]
    pub fn class(&self) -> &'static str {
        match self {
            Self::Failing(_) => "bad",
            Self::Silent(_) => "warn",
            Self::Healthy => "good",
            Self::NotEnrolled | Self::Loading => "muted",
        }
    }
}

/// Why a report with these parts says the device is failing, if it does.
#[must_use]
pub fn problem(
    outcome: Option<&str>,
    failed_checks: &[String],
    last_error: Option<&str>,
) -> Option<String> {
    if let Some(o) = outcome.filter(|o| matches!(*o, "rolled-back" | "failed" | "rejected")) {
        return Some(format!("update {o}"));
    }
    if !failed_checks.is_empty() {
        return Some(format!("check failing: {}", failed_checks.join(", ")));
    }
    last_error
        .filter(|e| !e.trim().is_empty())
        .map(|e| format!("agent error: {e}"))
}

/// [`problem`] of a stored report (its `checks` column holds the report as the agent sent it).
#[must_use]
pub fn report_problem(r: &Report) -> Option<String> {
    let failed: Vec<String> = r
        .checks
        .get("checks")
        .and_then(|c| c.as_object())
        .map(|o| {
            o.iter()
                .filter(|(_, v)| v.get("ok") == Some(&serde_json::Value::Bool(false)))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default();
    problem(
        r.outcome.as_ref().map(|o| o.kind.as_str()),
        &failed,
        r.last_error.as_deref(),
    )
}

/// The table.
#[derive(Debug, Default)]
pub struct HealthIndex {
    machines: HashMap<MachineId, Health>,
    /// When the last rebuild from the store finished (`None`: never).
    pub loaded_at: Option<i64>,
}

impl HealthIndex {
    /// Replaces the table with a rebuild that started at `started` and finished at `now`;
    /// reports that events brought in after `started` win over the rebuild's older view.
    pub fn replace(&mut self, mut rebuilt: HashMap<MachineId, Health>, started: i64, now: i64) {
        for (id, h) in &self.machines {
            if h.last_report_at.is_some_and(|t| t >= started) {
                let e = rebuilt.entry(*id).or_default();
                e.enrolled = true;
                e.last_report_at = h.last_report_at;
                e.problem.clone_from(&h.problem);
            }
        }
        self.machines = rebuilt;
        self.loaded_at = Some(now);
    }

    /// A report was stored for `device` at `at` (a report needs a valid certificate, so the
    /// device is enrolled).
    pub fn reported(&mut self, device: MachineId, at: i64, problem: Option<String>) {
        let e = self.machines.entry(device).or_default();
        e.enrolled = true;
        e.last_report_at = Some(at);
        e.problem = problem;
    }

    /// What the table knows of `id`.
    #[must_use]
    pub fn get(&self, id: MachineId) -> Option<&Health> {
        self.machines.get(&id)
    }

    /// `id`'s standing at `now`.
    #[must_use]
    pub fn standing(&self, id: MachineId, now: i64, silent_after_secs: u64) -> Standing {
        if self.loaded_at.is_none() && !self.machines.contains_key(&id) {
            return Standing::Loading;
        }
        match self.machines.get(&id) {
            None => Standing::NotEnrolled,
            Some(h) => standing_of(h, now, silent_after_secs),
        }
    }
}

/// The standing of one table entry at `now`.
#[must_use]
pub fn standing_of(h: &Health, now: i64, silent_after_secs: u64) -> Standing {
    if let Some(p) = &h.problem {
        return Standing::Failing(p.clone());
    }
    if !h.enrolled {
        return Standing::NotEnrolled;
    }
    let limit = i64::try_from(silent_after_secs).unwrap_or(i64::MAX);
    match h.last_report_at {
        None => Standing::Silent(None),
        Some(t) if now.saturating_sub(t) > limit => Standing::Silent(Some(t)),
        Some(_) => Standing::Healthy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tugboot_store::{OutcomeKind, ReportOutcome};

    fn report(
        checks: serde_json::Value,
        outcome: Option<OutcomeKind>,
        err: Option<&str>,
    ) -> Report {
        Report {
            device: MachineId(1),
            report_id: "r".into(),
            boot_id: "b".into(),
            slot: None,
            image_version: 0,
            checks,
            uptime_secs: 0,
            last_error: err.map(str::to_owned),
            outcome: outcome.map(|kind| ReportOutcome {
                kind,
                image_name: "os".into(),
                image_version: 2,
            }),
            received_at: 10,
        }
    }

    #[test]
    fn a_report_is_failing_for_a_bad_outcome_a_failed_check_or_an_error() {
        let ok = serde_json::json!({"checks": {"ssh": {"ok": true, "kind": "command"}}});
        assert_eq!(report_problem(&report(ok.clone(), None, None)), None);
        assert_eq!(
            report_problem(&report(ok.clone(), Some(OutcomeKind::Committed), None)),
            None
        );
        assert_eq!(
            report_problem(&report(ok.clone(), Some(OutcomeKind::RolledBack), None)).as_deref(),
            Some("update rolled-back")
        );
        let bad = serde_json::json!({"checks": {"ssh": {"ok": true}, "web": {"ok": false}}});
        assert_eq!(
            report_problem(&report(bad, None, None)).as_deref(),
            Some("check failing: web")
        );
        assert_eq!(
            report_problem(&report(ok.clone(), None, Some("disk full"))).as_deref(),
            Some("agent error: disk full")
        );
        assert_eq!(report_problem(&report(ok, None, Some("  "))), None);
        // Older senders' free-form checks are not misread.
        assert_eq!(
            report_problem(&report(serde_json::json!({"checks": [1, 2]}), None, None)),
            None
        );
    }

    #[test]
    fn standing_follows_the_latest_report_and_its_age() {
        let mut t = HealthIndex::default();
        assert_eq!(t.standing(MachineId(1), 0, 60), Standing::Loading);
        let mut rebuilt = HashMap::new();
        rebuilt.insert(
            MachineId(1),
            Health {
                enrolled: true,
                last_report_at: Some(100),
                problem: None,
            },
        );
        rebuilt.insert(
            MachineId(2),
            Health {
                enrolled: true,
                last_report_at: None,
                problem: None,
            },
        );
        t.replace(rebuilt, 150, 160);
        assert_eq!(t.standing(MachineId(1), 160, 60), Standing::Healthy);
        assert_eq!(
            t.standing(MachineId(1), 161, 60),
            Standing::Silent(Some(100))
        );
        assert_eq!(t.standing(MachineId(2), 161, 60), Standing::Silent(None));
        assert_eq!(t.standing(MachineId(3), 161, 60), Standing::NotEnrolled);
        t.reported(MachineId(1), 200, Some("update failed".into()));
        assert_eq!(
            t.standing(MachineId(1), 200, 60),
            Standing::Failing("update failed".into())
        );
        // A rebuild that started before that report does not undo it.
        let mut stale = HashMap::new();
        stale.insert(
            MachineId(1),
            Health {
                enrolled: true,
                last_report_at: Some(100),
                problem: None,
            },
        );
        t.replace(stale, 190, 210);
        assert_eq!(
            t.standing(MachineId(1), 210, 60),
            Standing::Failing("update failed".into())
        );
        t.reported(MachineId(1), 220, None);
        assert_eq!(t.standing(MachineId(1), 220, 60), Standing::Healthy);
        assert!(
            Standing::Failing(String::new()).rank() < Standing::Silent(None).rank()
                && Standing::Silent(None).rank() < Standing::Healthy.rank()
        );
    }
}
