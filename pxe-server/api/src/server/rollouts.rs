//! The shell around the fleet core's rollout controller: read rows, apply its compare-and-set
//! steps, and keep the table of which device is told to run which image.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tugboot_fleet::catalogue::{CatalogueImage, ImageRef};
use tugboot_fleet::rollout::{DeviceOutcome, RolloutRecord, StageSummary, members};
use tugboot_fleet::{MachineId, Registry};
use tugboot_store::{DeviceVerdict, OutcomeKind, RolloutState, Store, StoreError};

use super::ApiState;

/// Default time a device of the current stage has to report an outcome.
pub const DEFAULT_OUTCOME_TIMEOUT: u64 =
    tugboot_fleet::rollout::controller::DEFAULT_REPORT_TIMEOUT_SECS;

/// A rollout's admitted devices and image, as of the last evaluation.
#[derive(Debug, Clone)]
pub(super) struct ActiveRollout {
    pub(super) id: i64,
    pub(super) image: Arc<CatalogueImage>,
    pub(super) admitted: HashSet<MachineId>,
}

/// What devices are told, and each rollout's counts.
#[derive(Debug, Default)]
pub(super) struct Assignments {
    /// Newest rollout first: a device in two rollouts runs the newer one's image.
    pub(super) rollouts: Vec<ActiveRollout>,
    pub(super) summaries: HashMap<i64, StageSummary>,
}

impl Assignments {
    /// The rollout that assigns `device` an image, if any.
    pub(super) fn for_device(&self, device: MachineId) -> Option<&ActiveRollout> {
        self.rollouts.iter().find(|r| r.admitted.contains(&device))
    }
}

/// What a rollout needs to know of each device's reports: `committed` counts as updated;
/// rolled back, failed or rejected on the device count as failures; an interrupted download is
/// retried by the agent, so it is still pending.
fn outcomes(verdicts: Vec<DeviceVerdict>) -> HashMap<MachineId, DeviceOutcome> {
    verdicts
        .into_iter()
        .map(|v| {
            let o = match v.kind {
                OutcomeKind::Committed => DeviceOutcome::Committed { at: v.at },
                OutcomeKind::RolledBack | OutcomeKind::Failed | OutcomeKind::Rejected => {
                    DeviceOutcome::Failed { at: v.at }
                }
                // An install is not an update of a rollout's image.
                OutcomeKind::Interrupted | OutcomeKind::Installed => DeviceOutcome::Pending,
            };
            (v.device, o)
        })
        .collect()
}

impl ApiState {
    /// Evaluates every rollout, applies the controller's steps (compare-and-set: another
    /// server's step wins and is read back), and rebuilds the assignment table. Serialised: one
    /// evaluation at a time per server.
    ///
    /// # Errors
    /// Store errors.
    pub async fn evaluate_rollouts(&self) -> Result<(), StoreError> {
        let _guard = self.evaluating.lock().await;
        let now = self.now();
        let timeout = self.config.report_timeout_secs;
        let registry = Registry::new(self.store.list_machines().await?);
        let catalogue = self.live.snapshot();
        let mut records = self.store.list_rollouts().await?;
        records.sort_by_key(|r| std::cmp::Reverse(r.id));
        let mut table = Assignments::default();
        for mut record in records {
            if record.state == RolloutState::Aborted {
                continue;
            }
            let group = match members::members(&record, &registry) {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(rollout = %record.id, error = %e, "rollout selector does not parse; skipped");
                    continue;
                }
            };
            let seen = outcomes(
                self.store
                    .image_outcomes(&record.image_name, record.image_version)
                    .await?,
            );
            // A rollout can move several steps at once (start, then advance through stages
            // whose devices already committed); each step is one compare-and-set.
            for _ in 0..=record.stages.len() + 1 {
                let Some((t, decision)) = members::next_step(&record, &group, &seen, now, timeout)
                else {
                    break;
                };
                match self.store.transition_rollout(&t, now).await? {
                    Some(next) => {
                        let reason = match &decision {
                            tugboot_fleet::rollout::Decision::Pause { reason } => {
                                tracing::warn!(rollout = %record.id, %reason, "rollout paused");
                                Some(reason.to_string())
                            }
                            other => {
                                tracing::info!(rollout = %record.id, decision = ?other, "rollout moved");
                                None
                            }
                        };
                        self.events
                            .rollout(Some(&record), &next, "controller", reason);
                        record = next;
                    }
                    None => {
                        // Another server moved it first: take its view.
                        if let Some(r) = self.store.get_rollout(record.id).await? {
                            record = r;
                        }
                        break;
                    }
                }
            }
            let model = tugboot_fleet::rollout::Rollout::from_record(&record, timeout);
            let summary = model.summary(now, &members::member_outcomes(&model, &group, &seen));
            self.metrics.rollout(
                record.id.0,
                record.state.as_str(),
                record.current_stage,
                summary,
            );
            table.summaries.insert(record.id.0, summary);
            let admitted = members::admitted(&record, &group, timeout);
            if admitted.is_empty() {
                continue;
            }
            let Some(image) = image_of(&catalogue.catalogue, &record) else {
                tracing::warn!(
                    rollout = %record.id,
                    image = %record.image_name,
                    version = record.image_version,
                    "rollout image is not in this server's catalogue (yanked, or its artifacts are missing here): nothing assigned"
                );
                continue;
            };
            table.rollouts.push(ActiveRollout {
                id: record.id.0,
                image,
                admitted: admitted.iter().copied().collect(),
            });
        }
        *self.assignments.write().await = Arc::new(table);
        Ok(())
    }

    pub(super) async fn evaluate_logged(&self) {
        if let Err(e) = self.evaluate_rollouts().await {
            tracing::error!(error = %e, "rollout evaluation failed");
        }
    }
}

fn image_of(
    catalogue: &tugboot_fleet::Catalogue,
    record: &RolloutRecord,
) -> Option<Arc<CatalogueImage>> {
    catalogue
        .image(&ImageRef::Version {
            name: record.image_name.clone(),
            version: record.image_version,
        })
        .cloned()
}

/// A rollout as the operator API shows it.
pub(super) fn rollout_view(r: &RolloutRecord, summary: Option<&StageSummary>) -> serde_json::Value {
    serde_json::json!({
        "id": r.id.0,
        "image_name": r.image_name,
        "image_version": r.image_version,
        "selector": r.group_selector,
        "stages": r.stages,
        "max_failure_permille": r.thresholds.max_failure_permille,
        "min_reports": r.thresholds.min_reports,
        "state": r.state.as_str(),
        "stage": r.current_stage,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "devices": summary,
    })
}
