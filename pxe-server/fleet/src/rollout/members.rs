//! Who takes part in a rollout, in which order, and who is admitted now.
//!
//! Members are the **approved** machines whose **attested or declared** facts match the
//! rollout's selector (an observed fact, which anyone on the network can claim, never puts a
//! machine into or out of a rollout). They are ordered by a hash of rollout id and machine id,
//! so each rollout's first stages are a stable, unbiased sample, and machines added later do not
//! reshuffle those already ordered.

use std::collections::HashMap;

use sha2::{Digest as _, Sha256};

use super::controller::{Decision, DeviceOutcome, MemberOutcomes, Rollout};
use super::{RolloutId, RolloutRecord, RolloutTransition};
use crate::machine::{MachineId, MachineState};
use crate::registry::Registry;
use crate::selector::{Selector, SelectorError, Subject, Trust};

/// Position of a machine in a rollout.
#[must_use]
pub fn order(rollout: RolloutId, machine: MachineId) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(rollout.0.to_le_bytes());
    h.update(machine.0.to_le_bytes());
    h.finalize().into()
}

/// The rollout's group, in rollout order.
///
/// # Errors
/// The stored selector does not parse (a record written by hand or by an older server).
pub fn members(
    record: &RolloutRecord,
    registry: &Registry,
) -> Result<Vec<MachineId>, SelectorError> {
    let selector = Selector::parse(&record.group_selector)?;
    let mut out: Vec<MachineId> = registry
        .iter()
        .filter(|m| m.state == MachineState::Approved)
        .filter(|m| selector.matches(&Subject::machine(m, &m.facts), Trust::Authenticated))
        .map(|m| m.id)
        .collect();
    out.sort_by_cached_key(|d| (order(record.id, *d), *d));
    Ok(out)
}

/// The outcomes of the members the rollout admits (the rest are pending), from what the store
/// knows for the rollout's image (`outcomes`; absent = no verdict yet).
#[must_use]
pub fn member_outcomes(
    model: &Rollout,
    members: &[MachineId],
    outcomes: &HashMap<MachineId, DeviceOutcome>,
) -> MemberOutcomes {
    let admitted = model.admitted(members.len());
    MemberOutcomes {
        members: members
            .iter()
            .enumerate()
            .map(|(i, d)| {
                if i < admitted {
                    outcomes.get(d).copied().unwrap_or(DeviceOutcome::Pending)
                } else {
                    DeviceOutcome::Pending
                }
            })
            .collect(),
    }
}

/// The next compare-and-set to apply to `record`, with the decision behind it; `None` when the
/// rollout stays as it is. Apply it, then ask again with the updated record: a rollout may move
/// several steps at once (start, then advance through stages whose devices already committed).
#[must_use]
pub fn next_step(
    record: &RolloutRecord,
    members: &[MachineId],
    outcomes: &HashMap<MachineId, DeviceOutcome>,
    now: i64,
    report_timeout_secs: u64,
) -> Option<(RolloutTransition, Decision)> {
    let model = Rollout::from_record(record, report_timeout_secs);
    let facts = member_outcomes(&model, members, outcomes);
    let decision = model.evaluate(now, &facts);
    model.transition(&decision).map(|t| (t, decision))
}

/// The members admitted now (they are told to install the image).
#[must_use]
pub fn admitted<'a>(
    record: &RolloutRecord,
    members: &'a [MachineId],
    report_timeout_secs: u64,
) -> &'a [MachineId] {
    let n = Rollout::from_record(record, report_timeout_secs).admitted(members.len());
    members.get(..n).unwrap_or(members)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{Declarer, Facts, Observer, Source};
    use crate::machine::Machine;
    use crate::rollout::{RolloutStage, RolloutState, RolloutThresholds};

    fn machine(id: i64, state: MachineState, facts: &[(&str, &str, Source)]) -> Machine {
        let mut f = Facts::new();
        for (k, v, s) in facts {
            f.offer_value(k, v, *s, 1).unwrap();
        }
        Machine {
            id: MachineId(id),
            name: None,
            mac: Some(tugboot_wire::Mac([
                2,
                0,
                0,
                0,
                0,
                u8::try_from(id).unwrap(),
            ])),
            uuid: None,
            serial: None,
            state,
            facts: f,
            first_seen: 0,
            last_seen: 0,
            last_booted_image: None,
        }
    }

    fn record(selector: &str, state: RolloutState) -> RolloutRecord {
        RolloutRecord {
            id: RolloutId(9),
            image_name: "edge".into(),
            image_version: 2,
            group_selector: selector.into(),
            stages: vec![
                RolloutStage {
                    percent: 50,
                    soak_secs: 0,
                },
                RolloutStage {
                    percent: 100,
                    soak_secs: 0,
                },
            ],
            thresholds: RolloutThresholds {
                max_failure_permille: 0,
                min_reports: 1,
            },
            state,
            current_stage: 0,
            created_at: 0,
            updated_at: 0,
        }
    }

    const OP: Source = Source::Declared(Declarer::Operator);
    const ATT: Source = Source::Attested;
    const HTTP: Source = Source::Observed(Observer::Http);

    #[test]
    fn only_approved_machines_with_trusted_facts_are_members() {
        let reg = Registry::new(vec![
            machine(1, MachineState::Approved, &[("label.site", "lab", OP)]),
            machine(
                2,
                MachineState::Approved,
                &[("label.site", "lab", OP), ("board", "raspberrypi-4", ATT)],
            ),
            machine(3, MachineState::Unknown, &[("label.site", "lab", OP)]),
            machine(
                4,
                MachineState::Approved,
                &[("board", "raspberrypi-4", HTTP)],
            ),
            machine(5, MachineState::Revoked, &[("label.site", "lab", OP)]),
        ]);
        let mut ids = members(&record("site=lab", RolloutState::Pending), &reg).unwrap();
        ids.sort();
        assert_eq!(ids, [MachineId(1), MachineId(2)]);
        let ids = members(&record("board=raspberrypi-4", RolloutState::Pending), &reg).unwrap();
        assert_eq!(ids, [MachineId(2)], "a forged board (observed) never joins");
        assert_eq!(
            members(&record("*", RolloutState::Pending), &reg)
                .unwrap()
                .len(),
            3
        );
        assert!(members(&record("site", RolloutState::Pending), &reg).is_err());
    }

    #[test]
    fn steps_start_admit_and_advance() {
        let reg = Registry::new(
            (1..=4)
                .map(|i| machine(i, MachineState::Approved, &[]))
                .collect(),
        );
        let mut rec = record("*", RolloutState::Pending);
        let m = members(&rec, &reg).unwrap();
        let mut outcomes = HashMap::new();
        let (t, d) = next_step(&rec, &m, &outcomes, 10, 3600).unwrap();
        assert_eq!(d, Decision::Start);
        assert_eq!((t.to_state, t.to_stage), (RolloutState::Running, 0));
        rec.state = t.to_state;
        rec.updated_at = 10;
        let first = admitted(&rec, &m, 3600).to_vec();
        assert_eq!(first.len(), 2);
        assert_eq!(
            next_step(&rec, &m, &outcomes, 11, 3600),
            None,
            "waiting for verdicts"
        );
        for d in &first {
            outcomes.insert(*d, DeviceOutcome::Committed { at: 12 });
        }
        let (t, d) = next_step(&rec, &m, &outcomes, 13, 3600).unwrap();
        assert_eq!(d, Decision::Advance { to_stage: 1 });
        rec.current_stage = t.to_stage;
        assert_eq!(admitted(&rec, &m, 3600).len(), 4);
        // A failure of the second stage pauses (threshold 0 ‰).
        outcomes.insert(m[2], DeviceOutcome::Failed { at: 14 });
        let (t, d) = next_step(&rec, &m, &outcomes, 15, 3600).unwrap();
        assert!(matches!(d, Decision::Pause { .. }), "{d:?}");
        assert_eq!(t.to_state, RolloutState::Paused);
        // The order is stable and differs between rollouts.
        let mut other = rec.clone();
        other.id = RolloutId(10);
        assert_eq!(members(&rec, &reg).unwrap(), m);
        assert_ne!(members(&other, &reg).unwrap(), m);
    }
}
