//! Rollouts: moving a group of machines to one image in stages, guarded by health.
//!
//! - [`controller`]: what a rollout does next, from its record and its members' outcomes;
//! - [`members`]: who takes part, in which order, and who is admitted — pure functions of the
//!   registry, the rollout record and the outcomes the shell read from the store.
//!
//! The record types live here (the store persists them): [`RolloutRecord`] and the
//! compare-and-set [`RolloutTransition`] that makes evaluating twice, or on two servers, safe.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub mod controller;
pub mod members;

pub use controller::{
    Command, Decision, DeviceOutcome, MemberOutcomes, Rollout, RolloutError, StageSummary,
};

/// Most stages in one rollout.
pub const MAX_ROLLOUT_STAGES: usize = 64;

/// Database id of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RolloutId(pub i64);

impl fmt::Display for RolloutId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Lifecycle of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    /// Created, not started.
    Pending,
    /// Advancing stage by stage.
    Running,
    /// Stopped by the failure threshold or the operator.
    Paused,
    /// Every stage done.
    Completed,
    /// Abandoned by the operator.
    Aborted,
}

impl RolloutState {
    /// Every state.
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Running,
        Self::Paused,
        Self::Completed,
        Self::Aborted,
    ];

    /// The stored text.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Aborted => "aborted",
        }
    }
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RolloutState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("unknown rollout state {s:?}"))
    }
}

/// One stage of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutStage {
    /// Cumulative share of the group (percent, 1..=100) running the image once the stage is done.
    pub percent: u8,
    /// How long the stage must stay healthy before the next one starts, seconds.
    pub soak_secs: u64,
}

/// Health guard of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutThresholds {
    /// Failure rate (per mille of judged devices) above which the rollout pauses.
    pub max_failure_permille: u16,
    /// Verdicts needed before the rate is judged at all.
    pub min_reports: u32,
}

/// A rollout as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRecord {
    /// Database id.
    pub id: RolloutId,
    /// Target image name.
    pub image_name: String,
    /// Target image version.
    pub image_version: u64,
    /// Which machines take part: a [`crate::Selector`] in its text form.
    pub group_selector: String,
    /// Stages, in order.
    pub stages: Vec<RolloutStage>,
    /// Health guard.
    pub thresholds: RolloutThresholds,
    /// Lifecycle state.
    pub state: RolloutState,
    /// Index into `stages` of the stage in progress.
    pub current_stage: u32,
    /// Creation time.
    pub created_at: i64,
    /// Last transition.
    pub updated_at: i64,
}

/// Input of a new rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRollout {
    /// Target image name (must be stored).
    pub image_name: String,
    /// Target image version (must be stored).
    pub image_version: u64,
    /// Which machines take part (a selector's text form).
    pub group_selector: String,
    /// Stages, in order (1..=[`MAX_ROLLOUT_STAGES`]).
    pub stages: Vec<RolloutStage>,
    /// Health guard.
    pub thresholds: RolloutThresholds,
}

/// A rollout definition that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidRollout {
    /// Which field.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

impl NewRollout {
    /// Checks stages (1..=64, percentages rising within 1..=100), the threshold (≤ 1000 ‰) and
    /// the selector's grammar.
    ///
    /// # Errors
    /// [`InvalidRollout`].
    pub fn validate(&self) -> Result<(), InvalidRollout> {
        let bad = |field, reason: &str| InvalidRollout {
            field,
            reason: reason.to_owned(),
        };
        if self.stages.is_empty() || self.stages.len() > MAX_ROLLOUT_STAGES {
            return Err(bad("stages", "expected 1..=64 stages"));
        }
        let mut previous = 0;
        for stage in &self.stages {
            if stage.percent == 0 || stage.percent > 100 || stage.percent < previous {
                return Err(bad("stages", "percentages must rise within 1..=100"));
            }
            previous = stage.percent;
        }
        if self.thresholds.max_failure_permille > 1000 {
            return Err(bad("max_failure_permille", "above 1000"));
        }
        crate::Selector::parse(&self.group_selector).map_err(|e| InvalidRollout {
            field: "selector",
            reason: e.to_string(),
        })?;
        Ok(())
    }
}

/// A compare-and-set transition of a rollout: applied only if the rollout is still in `from`,
/// so two servers evaluating the same rollout cannot both advance it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutTransition {
    /// Which rollout.
    pub id: RolloutId,
    /// Expected current state.
    pub from_state: RolloutState,
    /// Expected current stage.
    pub from_stage: u32,
    /// New state.
    pub to_state: RolloutState,
    /// New stage (must index the rollout's stages).
    pub to_stage: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_rollouts_are_validated() {
        let mut r = NewRollout {
            image_name: "img".into(),
            image_version: 3,
            group_selector: "site=lab".into(),
            stages: vec![
                RolloutStage {
                    percent: 10,
                    soak_secs: 60,
                },
                RolloutStage {
                    percent: 100,
                    soak_secs: 0,
                },
            ],
            thresholds: RolloutThresholds {
                max_failure_permille: 50,
                min_reports: 3,
            },
        };
        assert!(r.validate().is_ok());
        r.group_selector = "site".into();
        assert_eq!(r.validate().unwrap_err().field, "selector");
        r.group_selector = "*".into();
        r.stages.reverse();
        assert!(r.validate().is_err());
        r.stages.clear();
        assert!(r.validate().is_err());
        r.stages.push(RolloutStage {
            percent: 101,
            soak_secs: 0,
        });
        assert!(r.validate().is_err());
        r.stages[0].percent = 100;
        assert!(r.validate().is_ok());
        r.thresholds.max_failure_permille = 1001;
        assert!(r.validate().is_err());
        for s in RolloutState::ALL {
            assert_eq!(s.as_str().parse::<RolloutState>(), Ok(s));
        }
    }
}
