//! The operator's side of the API state for in-process front ends (the web console,
//! `tugboot-console`): read access to the store, the live fleet and the settings, the operator
//! credential check, and the rollout operations the operator routes perform. One
//! implementation of each rule: the JSON routes in [`super::admin`] call these too.

use std::collections::HashMap;
use std::sync::Arc;

use tugboot_firmware::TrustedRoot;
use tugboot_fleet::rollout::{Command, Rollout, RolloutRecord, StageSummary};
use tugboot_fleet::{Live, Selector};
use tugboot_store::{AnyStore, NewRollout, RolloutId, RolloutThresholds, Store, StoreError};

use super::events::Events;
use super::{ApiConfig, ApiState};
use crate::wire::CreateRollout;

pub use super::admin::{HealthView, health_view};

/// An operator action refused, or the store failing under it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorError {
    /// The request is malformed (a selector that does not parse, ...).
    #[error("{0}")]
    BadRequest(String),
    /// What it names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// It does not fit the current state (an unpublished image, a finished rollout, a
    /// rollout another server moved meanwhile).
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiState {
    /// The fleet store.
    #[must_use]
    pub fn store(&self) -> &AnyStore {
        &self.store
    }

    /// The live fleet this server answers from.
    #[must_use]
    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &ApiConfig {
        &self.config
    }

    /// The root published manifests verify against (its threshold is the one every image needs).
    #[must_use]
    pub fn trusted_root(&self) -> &TrustedRoot {
        &self.trusted_root
    }

    /// Unix seconds from the server's clock.
    #[must_use]
    pub fn unix_now(&self) -> i64 {
        self.now()
    }

    /// The fleet's event channel.
    #[must_use]
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Whether `presented` is the operator's token (constant time).
    #[must_use]
    pub fn is_operator_token(&self, presented: &str) -> bool {
        self.operator.matches(presented)
    }

    /// Each rollout's device counts as of the last evaluation, by rollout id.
    pub async fn rollout_summaries(&self) -> HashMap<i64, StageSummary> {
        self.assignments.read().await.summaries.clone()
    }

    /// Creates a rollout of a published image (the selector in its canonical text form), then
    /// evaluates rollouts at once so it starts. Returns it as stored after that evaluation.
    ///
    /// # Errors
    /// [`OperatorError`]: bad selector, unknown or unpublished image, store errors.
    pub async fn create_rollout(&self, req: CreateRollout) -> Result<RolloutRecord, OperatorError> {
        // One grammar for netboot groups and rollouts; stored in its canonical text form.
        let selector = Selector::parse(&req.selector)
            .map_err(|e| OperatorError::BadRequest(format!("selector: {e}")))?;
        let image = self
            .store
            .get_image(&req.image_name, req.image_version)
            .await?
            .ok_or_else(|| OperatorError::NotFound("no such image".into()))?;
        if !image.published {
            return Err(OperatorError::Conflict("image is not published".into()));
        }
        let r = self
            .store
            .create_rollout(
                &NewRollout {
                    image_name: req.image_name,
                    image_version: req.image_version,
                    group_selector: selector.to_string(),
                    stages: req.stages,
                    thresholds: RolloutThresholds {
                        max_failure_permille: req.max_failure_permille,
                        min_reports: req.min_reports,
                    },
                },
                self.now(),
            )
            .await?;
        tracing::info!(rollout = %r.id, image = %r.image_name, version = r.image_version, "rollout created");
        self.events.rollout(None, &r, "operator", None);
        self.evaluate_logged().await;
        Ok(self.store.get_rollout(r.id).await?.unwrap_or(r))
    }

    /// Pauses, resumes or aborts a rollout (compare-and-set: refused when another server moved
    /// it meanwhile), then re-evaluates. Returns it as stored after that evaluation.
    ///
    /// # Errors
    /// [`OperatorError`]: unknown rollout, a command its state does not allow, a concurrent
    /// change, store errors.
    pub async fn command_rollout(
        &self,
        id: RolloutId,
        command: Command,
    ) -> Result<RolloutRecord, OperatorError> {
        let r = self
            .store
            .get_rollout(id)
            .await?
            .ok_or_else(|| OperatorError::NotFound("no such rollout".into()))?;
        let model = Rollout::from_record(&r, self.config.report_timeout_secs);
        let t = model
            .command(command)
            .map_err(|e| OperatorError::Conflict(e.to_string()))?;
        let Some(next) = self.store.transition_rollout(&t, self.now()).await? else {
            return Err(OperatorError::Conflict(
                "rollout changed meanwhile; read it again".into(),
            ));
        };
        tracing::info!(rollout = id.0, ?command, "rollout command by operator");
        self.events.rollout(Some(&r), &next, "operator", None);
        self.evaluate_logged().await;
        Ok(self.store.get_rollout(next.id).await?.unwrap_or(next))
    }
}
