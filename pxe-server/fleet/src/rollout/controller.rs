//! Staged rollouts, sans-IO: what a rollout should do next, given what its devices reported.
//!
//! A rollout moves a group of machines (its selector) to one image in stages. Each stage is a
//! *cumulative* share of the group (percent, rounded up: 10 % of 15 devices is 2 devices, and
//! never 0 of a non-empty group). The members are in a fixed order (the shell sorts them by a
//! hash of rollout and device id, so the first stages are a stable, unbiased sample); stage `k`
//! admits the first [`Rollout::target_count`] of them.
//!
//! A device counts as *updated* only once its agent reported `committed` for the target image
//! (the agent sends that only after the post-reboot health checks passed and the slot was
//! committed). `rolled-back` and `failed` count as failures, and so does a device that stays
//! silent longer than the report timeout after its stage started (or was resumed).
//!
//! [`Rollout::evaluate`] is a pure function of the rollout, `now` and the [`MemberOutcomes`]: calling it
//! again with the same input gives the same [`Decision`], and the shell applies a decision with
//! a compare-and-set on `(state, stage)`, so evaluating twice (or on two servers) cannot advance
//! twice.

use super::{
    RolloutId, RolloutRecord, RolloutStage, RolloutState, RolloutThresholds, RolloutTransition,
};

/// Default time a device of the current stage has to report an outcome: 2 hours.
pub const DEFAULT_REPORT_TIMEOUT_SECS: u64 = 2 * 3600;

/// What the rollout should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Stay as it is.
    Nothing,
    /// A pending rollout starts with its first stage.
    Start,
    /// The stage is done and healthy: move to `to_stage`.
    Advance {
        /// The next stage's index.
        to_stage: u32,
    },
    /// The last stage is done and healthy.
    Complete,
    /// Too many failures: stop admitting devices until an operator resumes.
    Pause {
        /// Why, for the log and the status endpoint.
        reason: String,
    },
}

/// An operator command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Stop admitting devices.
    Pause,
    /// Continue a paused rollout (its report timeouts start again).
    Resume,
    /// Abandon the rollout: devices not yet updated are no longer offered the image.
    Abort,
}

/// A command that does not fit the rollout's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutError {
    /// E.g. resuming a running rollout, or anything on an aborted one.
    #[error("cannot {command:?} a rollout that is {state}")]
    InvalidCommand {
        /// The command.
        command: Command,
        /// The state it was refused in.
        state: RolloutState,
    },
}

/// Where one member device stands with the rollout's target image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceOutcome {
    /// No outcome for the target image yet (or only `interrupted`, which the agent retries).
    Pending,
    /// Committed the target image at `at` (unix seconds, when the report was received).
    Committed {
        /// Report time.
        at: i64,
    },
    /// Rolled back or failed to install.
    Failed {
        /// Report time.
        at: i64,
    },
}

/// What the shell learned about the group: one entry per member, in rollout order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberOutcomes {
    /// Outcome per member; index `i` is the `i`-th device admitted.
    pub members: Vec<DeviceOutcome>,
}

/// Counts over the devices admitted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StageSummary {
    /// Group size.
    pub group: usize,
    /// Devices admitted (cumulative over stages).
    pub admitted: usize,
    /// Of those, committed.
    pub committed: usize,
    /// Rolled back or failed.
    pub failed: usize,
    /// Silent past the report timeout.
    pub timed_out: usize,
    /// Still expected to report.
    pub pending: usize,
    /// Time of the newest commit among the admitted devices.
    #[serde(skip)]
    pub last_commit_at: Option<i64>,
}

impl StageSummary {
    /// Failed + timed out.
    #[must_use]
    pub fn failures(&self) -> usize {
        self.failed + self.timed_out
    }

    /// Devices with a verdict (committed, failed or timed out).
    #[must_use]
    pub fn judged(&self) -> usize {
        self.committed + self.failures()
    }
}

/// The rollout as the decision logic sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    /// Store id.
    pub id: RolloutId,
    /// Stages (validated by the store: 1..=64, percentages rising within 1..=100).
    pub stages: Vec<RolloutStage>,
    /// Health guard.
    pub thresholds: RolloutThresholds,
    /// Lifecycle state.
    pub state: RolloutState,
    /// Current stage index.
    pub stage: u32,
    /// When the current state/stage began (the store's `updated_at`): report timeouts count
    /// from here.
    pub since: i64,
    /// How long an admitted device may stay silent.
    pub report_timeout_secs: u64,
}

impl Rollout {
    /// From the stored record.
    #[must_use]
    pub fn from_record(r: &RolloutRecord, report_timeout_secs: u64) -> Self {
        Self {
            id: r.id,
            stages: r.stages.clone(),
            thresholds: r.thresholds,
            state: r.state,
            stage: r.current_stage,
            since: r.updated_at,
            report_timeout_secs,
        }
    }

    /// Devices of a group of `group` admitted once stage `stage` is reached: the stage's
    /// percentage rounded up (at least one device of a non-empty group).
    #[must_use]
    pub fn target_count(&self, stage: u32, group: usize) -> usize {
        let Some(s) = usize::try_from(stage).ok().and_then(|i| self.stages.get(i)) else {
            return group;
        };
        let percent = usize::from(s.percent.min(100));
        (percent.saturating_mul(group).div_ceil(100)).min(group)
    }

    /// Devices admitted now: none before the start or after an abort; the current stage's
    /// count while running or paused (a pause stops the *next* stage, it does not take the
    /// image away from devices already told to install it); everyone once completed.
    #[must_use]
    pub fn admitted(&self, group: usize) -> usize {
        match self.state {
            RolloutState::Pending | RolloutState::Aborted => 0,
            RolloutState::Running | RolloutState::Paused => self.target_count(self.stage, group),
            RolloutState::Completed => group,
        }
    }

    /// Counts the admitted members' outcomes at `now`.
    #[must_use]
    pub fn summary(&self, now: i64, facts: &MemberOutcomes) -> StageSummary {
        let group = facts.members.len();
        let admitted = self.admitted(group);
        let deadline = self
            .since
            .saturating_add(i64::try_from(self.report_timeout_secs).unwrap_or(i64::MAX));
        let mut s = StageSummary {
            group,
            admitted,
            ..StageSummary::default()
        };
        for outcome in facts.members.iter().take(admitted) {
            match *outcome {
                DeviceOutcome::Committed { at } => {
                    s.committed += 1;
                    s.last_commit_at = Some(s.last_commit_at.map_or(at, |t| t.max(at)));
                }
                DeviceOutcome::Failed { .. } => s.failed += 1,
                DeviceOutcome::Pending if now >= deadline => s.timed_out += 1,
                DeviceOutcome::Pending => s.pending += 1,
            }
        }
        s
    }

    fn over_threshold(&self, s: &StageSummary) -> bool {
        let judged = s.judged();
        judged > 0
            && s.failures().saturating_mul(1000)
                > usize::from(self.thresholds.max_failure_permille).saturating_mul(judged)
    }

    /// The next step of the rollout at `now`.
    ///
    /// - pending → [`Decision::Start`];
    /// - running, failure rate above the threshold once `min_reports` devices were judged (or
    ///   every admitted device was) → [`Decision::Pause`];
    /// - running, every admitted device judged, rate within the threshold, and the stage's soak
    ///   time passed since the newest commit → [`Decision::Advance`] or, after the last stage,
    ///   [`Decision::Complete`];
    /// - anything else (paused, completed, aborted, an empty group) → [`Decision::Nothing`].
    #[must_use]
    pub fn evaluate(&self, now: i64, facts: &MemberOutcomes) -> Decision {
        match self.state {
            RolloutState::Pending => return Decision::Start,
            RolloutState::Running => {}
            RolloutState::Paused | RolloutState::Completed | RolloutState::Aborted => {
                return Decision::Nothing;
            }
        }
        let s = self.summary(now, facts);
        if s.group == 0 {
            return Decision::Nothing;
        }
        let all_judged = s.pending == 0;
        let enough =
            s.judged() >= usize::try_from(self.thresholds.min_reports).unwrap_or(usize::MAX);
        if self.over_threshold(&s) && (enough || all_judged) {
            return Decision::Pause {
                reason: format!(
                    "{} of {} judged devices failed ({} rolled back or failed, {} silent), above {}‰",
                    s.failures(),
                    s.judged(),
                    s.failed,
                    s.timed_out,
                    self.thresholds.max_failure_permille
                ),
            };
        }
        if !all_judged {
            return Decision::Nothing;
        }
        let soak = usize::try_from(self.stage)
            .ok()
            .and_then(|i| self.stages.get(i))
            .map_or(0, |st| st.soak_secs);
        let soak = i64::try_from(soak).unwrap_or(i64::MAX);
        let soaked_from = s.last_commit_at.unwrap_or(self.since).max(self.since);
        if now < soaked_from.saturating_add(soak) {
            return Decision::Nothing;
        }
        let next = self.stage.saturating_add(1);
        if usize::try_from(next).is_ok_and(|n| n < self.stages.len()) {
            Decision::Advance { to_stage: next }
        } else {
            Decision::Complete
        }
    }

    /// The operator's command as a decision-like state change, or why it does not apply.
    ///
    /// # Errors
    /// [`RolloutError::InvalidCommand`].
    pub fn command(&self, command: Command) -> Result<RolloutTransition, RolloutError> {
        use RolloutState::{Aborted, Paused, Pending, Running};
        let to_state = match (command, self.state) {
            (Command::Pause, Pending | Running) => Paused,
            (Command::Resume, Paused) => Running,
            (Command::Abort, Pending | Running | Paused) => Aborted,
            (command, state) => return Err(RolloutError::InvalidCommand { command, state }),
        };
        Ok(self.cas(to_state, self.stage))
    }

    fn cas(&self, to_state: RolloutState, to_stage: u32) -> RolloutTransition {
        RolloutTransition {
            id: self.id,
            from_state: self.state,
            from_stage: self.stage,
            to_state,
            to_stage,
        }
    }

    /// The compare-and-set that applies `decision`, `None` for [`Decision::Nothing`].
    #[must_use]
    pub fn transition(&self, decision: &Decision) -> Option<RolloutTransition> {
        match decision {
            Decision::Nothing => None,
            Decision::Start => Some(self.cas(RolloutState::Running, 0)),
            Decision::Advance { to_stage } => Some(self.cas(RolloutState::Running, *to_stage)),
            Decision::Complete => Some(self.cas(RolloutState::Completed, self.stage)),
            Decision::Pause { .. } => Some(self.cas(RolloutState::Paused, self.stage)),
        }
    }

    /// Applies a transition in memory (what the store does on a successful compare-and-set):
    /// the simulation in the tests and the shell's view after the write.
    pub fn apply(&mut self, t: &RolloutTransition, now: i64) {
        if t.from_state == self.state && t.from_stage == self.stage {
            self.state = t.to_state;
            self.stage = t.to_stage;
            self.since = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_000_000;

    fn rollout(stages: &[(u8, u64)], max_permille: u16, min_reports: u32) -> Rollout {
        Rollout {
            id: RolloutId(1),
            stages: stages
                .iter()
                .map(|&(percent, soak_secs)| RolloutStage { percent, soak_secs })
                .collect(),
            thresholds: RolloutThresholds {
                max_failure_permille: max_permille,
                min_reports,
            },
            state: RolloutState::Pending,
            stage: 0,
            since: T0,
            report_timeout_secs: 3600,
        }
    }

    /// A simulated fleet: devices report when told, the rollout is evaluated and its decisions
    /// applied like the shell does (compare-and-set).
    struct Sim {
        rollout: Rollout,
        facts: MemberOutcomes,
        now: i64,
    }

    impl Sim {
        fn new(rollout: Rollout, devices: usize) -> Self {
            Self {
                rollout,
                facts: MemberOutcomes {
                    members: vec![DeviceOutcome::Pending; devices],
                },
                now: T0,
            }
        }

        fn step(&mut self) -> Decision {
            let d = self.rollout.evaluate(self.now, &self.facts);
            if let Some(t) = self.rollout.transition(&d) {
                self.rollout.apply(&t, self.now);
            }
            d
        }

        /// Every admitted device still pending reports `outcome(i)`.
        fn admitted_report(&mut self, outcome: impl Fn(usize) -> Option<bool>) {
            let n = self.rollout.admitted(self.facts.members.len());
            for (i, m) in self.facts.members.iter_mut().enumerate().take(n) {
                if *m == DeviceOutcome::Pending {
                    match outcome(i) {
                        Some(true) => *m = DeviceOutcome::Committed { at: self.now },
                        Some(false) => *m = DeviceOutcome::Failed { at: self.now },
                        None => {}
                    }
                }
            }
        }
    }

    #[test]
    fn advances_stage_by_stage_only_after_commits() {
        let mut sim = Sim::new(rollout(&[(10, 0), (50, 0), (100, 0)], 100, 1), 20);
        assert_eq!(sim.step(), Decision::Start);
        assert_eq!(sim.rollout.admitted(20), 2);
        // Nobody reported: hold.
        assert_eq!(sim.step(), Decision::Nothing);
        // One of two committed: still hold.
        sim.admitted_report(|i| (i == 0).then_some(true));
        assert_eq!(sim.step(), Decision::Nothing);
        sim.admitted_report(|_| Some(true));
        assert_eq!(sim.step(), Decision::Advance { to_stage: 1 });
        assert_eq!(sim.rollout.admitted(20), 10);
        sim.admitted_report(|_| Some(true));
        assert_eq!(sim.step(), Decision::Advance { to_stage: 2 });
        assert_eq!(sim.rollout.admitted(20), 20);
        sim.admitted_report(|_| Some(true));
        assert_eq!(sim.step(), Decision::Complete);
        assert_eq!(sim.rollout.state, RolloutState::Completed);
        assert_eq!(sim.step(), Decision::Nothing);
    }

    #[test]
    fn soak_time_counts_from_the_newest_commit() {
        let mut sim = Sim::new(rollout(&[(50, 600), (100, 0)], 0, 1), 2);
        sim.step();
        sim.now += 100;
        sim.admitted_report(|_| Some(true));
        sim.now += 599;
        assert_eq!(sim.step(), Decision::Nothing);
        sim.now += 1;
        assert_eq!(sim.step(), Decision::Advance { to_stage: 1 });
    }

    #[test]
    fn pauses_at_the_error_threshold_and_resumes() {
        // 10 % allowed, judged after 4 reports.
        let mut sim = Sim::new(rollout(&[(50, 0), (100, 0)], 100, 4), 20);
        sim.step();
        // 3 reports, 1 failure (33 %): not enough reports to judge yet.
        sim.admitted_report(|i| match i {
            0 => Some(false),
            1 | 2 => Some(true),
            _ => None,
        });
        assert_eq!(sim.step(), Decision::Nothing);
        // 4th report: 1 of 4 failed = 250 ‰ > 100 ‰.
        sim.admitted_report(|i| (i == 3).then_some(true));
        let d = sim.step();
        assert!(
            matches!(&d, Decision::Pause { reason } if reason.contains("1 of 4")),
            "{d:?}"
        );
        assert_eq!(sim.rollout.state, RolloutState::Paused);
        // Paused: nothing happens on its own, and the admitted set stays.
        sim.admitted_report(|_| Some(true));
        assert_eq!(sim.step(), Decision::Nothing);
        assert_eq!(sim.rollout.admitted(20), 10);
        // The failed device retries and commits; the operator resumes.
        sim.facts.members[0] = DeviceOutcome::Committed { at: sim.now };
        let t = sim.rollout.command(Command::Resume).unwrap();
        sim.rollout.apply(&t, sim.now);
        assert_eq!(sim.rollout.state, RolloutState::Running);
        assert_eq!(sim.step(), Decision::Advance { to_stage: 1 });
    }

    #[test]
    fn failures_below_threshold_do_not_block() {
        let mut sim = Sim::new(rollout(&[(100, 0)], 100, 1), 20);
        sim.step();
        sim.admitted_report(|i| Some(i != 7));
        // 1 of 20 = 50 ‰ ≤ 100 ‰.
        assert_eq!(sim.step(), Decision::Complete);
    }

    #[test]
    fn all_judged_with_too_few_reports_still_pauses() {
        let mut sim = Sim::new(rollout(&[(50, 0), (100, 0)], 100, 10), 2);
        sim.step();
        sim.admitted_report(|_| Some(false));
        assert!(matches!(sim.step(), Decision::Pause { .. }));
    }

    #[test]
    fn silent_devices_time_out_as_failures() {
        let mut sim = Sim::new(rollout(&[(50, 0), (100, 0)], 200, 1), 10);
        sim.step();
        // 4 of 5 commit, one never reports.
        sim.admitted_report(|i| (i != 2).then_some(true));
        sim.now += 3599;
        assert_eq!(sim.step(), Decision::Nothing);
        sim.now += 1;
        // 1 of 5 = 200 ‰: at the threshold, not above: the stage is done.
        assert_eq!(sim.step(), Decision::Advance { to_stage: 1 });
        // In stage 2 two more stay silent: 3 of 10 = 300 ‰ > 200 ‰ once they time out.
        sim.admitted_report(|i| (i < 8 && i != 2).then_some(true));
        let s = sim.rollout.summary(sim.now, &sim.facts);
        assert_eq!(
            (s.pending, s.timed_out),
            (3, 0),
            "timeouts restart with the stage"
        );
        sim.now += 3600;
        let s = sim.rollout.summary(sim.now, &sim.facts);
        assert_eq!((s.committed, s.timed_out, s.pending), (7, 3, 0));
        assert!(matches!(sim.step(), Decision::Pause { .. }));
    }

    #[test]
    fn percentages_round_up() {
        let r = rollout(&[(1, 0), (10, 0), (33, 0), (100, 0)], 0, 0);
        assert_eq!(r.target_count(0, 15), 1);
        assert_eq!(r.target_count(1, 15), 2);
        assert_eq!(r.target_count(2, 15), 5);
        assert_eq!(r.target_count(3, 15), 15);
        assert_eq!(r.target_count(0, 0), 0);
        assert_eq!(r.target_count(0, 1), 1);
        assert_eq!(r.target_count(2, 3), 1);
        assert_eq!(r.target_count(2, 100), 33);
        assert_eq!(r.target_count(2, 101), 34);
        assert_eq!(r.target_count(9, 7), 7, "out-of-range stage admits all");
    }

    #[test]
    fn manual_pause_resume_abort() {
        let mut r = rollout(&[(100, 0)], 0, 0);
        assert!(r.command(Command::Resume).is_err());
        let t = r.command(Command::Pause).unwrap();
        assert_eq!(
            (t.from_state, t.to_state),
            (RolloutState::Pending, RolloutState::Paused)
        );
        r.apply(&t, T0 + 5);
        assert_eq!(r.since, T0 + 5);
        assert_eq!(
            r.evaluate(T0 + 10, &MemberOutcomes::default()),
            Decision::Nothing
        );
        let t = r.command(Command::Resume).unwrap();
        r.apply(&t, T0 + 6);
        assert_eq!(r.state, RolloutState::Running);
        let t = r.command(Command::Abort).unwrap();
        r.apply(&t, T0 + 7);
        assert_eq!(r.state, RolloutState::Aborted);
        assert_eq!(
            r.admitted(10),
            0,
            "an aborted rollout offers the image to nobody"
        );
        for c in [Command::Pause, Command::Resume, Command::Abort] {
            assert!(matches!(
                r.command(c),
                Err(RolloutError::InvalidCommand { .. })
            ));
        }
        let facts = MemberOutcomes {
            members: vec![DeviceOutcome::Pending; 3],
        };
        assert_eq!(r.evaluate(T0 + 10_000, &facts), Decision::Nothing);
    }

    #[test]
    fn re_evaluation_is_idempotent() {
        let mut sim = Sim::new(rollout(&[(50, 0), (100, 0)], 100, 1), 4);
        sim.step();
        sim.admitted_report(|_| Some(true));
        let before = sim.rollout.clone();
        let d1 = before.evaluate(sim.now, &sim.facts);
        let d2 = before.evaluate(sim.now, &sim.facts);
        assert_eq!(d1, d2);
        let t = before.transition(&d1).unwrap();
        sim.rollout.apply(&t, sim.now);
        // The same (stale) transition again does nothing: compare-and-set.
        let after = sim.rollout.clone();
        sim.rollout.apply(&t, sim.now + 1);
        assert_eq!(sim.rollout, after);
        // Re-evaluating the new stage with the same facts waits for the new devices.
        assert_eq!(sim.step(), Decision::Nothing);
        assert_eq!(sim.step(), Decision::Nothing);
        assert_eq!(sim.rollout.stage, 1);
    }

    #[test]
    fn empty_group_holds() {
        let mut sim = Sim::new(rollout(&[(100, 0)], 0, 0), 0);
        assert_eq!(sim.step(), Decision::Start);
        sim.now += 100_000;
        assert_eq!(sim.step(), Decision::Nothing);
    }
}
