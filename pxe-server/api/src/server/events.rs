//! What happens in the fleet as it happens: what the network front ends observe, which boot
//! plans are served, which device reports are stored, how rollouts move.
//!
//! A broadcast channel with a bounded backlog: senders never wait, a subscriber that falls
//! behind skips events and is told how many (`RecvError::Lagged`). With no subscriber an event
//! costs one atomic load. The web console's live view is the subscriber today; the events are
//! a view for people, not a record (the store is the record).

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;
use tugboot_fleet::facts::Source;
use tugboot_fleet::rollout::RolloutRecord;
use tugboot_fleet::{BootPlan, Facts, Mac, Observer};

/// Events kept for a subscriber that is behind before it skips.
pub const EVENT_BACKLOG: usize = 1024;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum FleetEvent {
    /// A front end saw a machine on the network (unauthenticated facts).
    Observed {
        /// The machine's MAC.
        mac: String,
        /// Who saw it: `dhcp`, `http` or `tftp`.
        by: &'static str,
        /// What it saw, fact name and value.
        facts: Vec<(String, String)>,
    },
    /// A boot plan was served (an iPXE script or a loader configuration).
    Booted {
        /// The registry machine, if the request identified one.
        machine: Option<i64>,
        /// Its MAC.
        mac: Option<String>,
        /// What it boots: `name@version` or `local`.
        image: String,
        /// The profile.
        profile: String,
    },
    /// A device report was stored (not a retried duplicate).
    Reported {
        /// The device (from its certificate).
        device: i64,
        /// The update outcome it carries (`committed`, `rolled-back`, ...).
        outcome: Option<String>,
        /// The image it runs or the outcome is about (`name@version`).
        image: Option<String>,
        /// The slot it runs from.
        slot: Option<String>,
        /// Names of the health checks that failed.
        failed_checks: Vec<String>,
        /// The agent's last error.
        last_error: Option<String>,
    },
    /// A rollout was created or changed state or stage.
    Rollout {
        /// The rollout.
        id: i64,
        /// Its image, `name@version`.
        image: String,
        /// State before (`None`: created).
        from_state: Option<&'static str>,
        /// State after.
        to_state: &'static str,
        /// Stage after.
        stage: u32,
        /// `operator` or `controller`.
        by: &'static str,
        /// Why, when the controller paused it.
        reason: Option<String>,
    },
}

/// The sending side, cheap to clone; every clone feeds the same subscribers.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Arc<FleetEvent>>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new(EVENT_BACKLOG)
    }
}

impl Events {
    /// A channel keeping `backlog` events for subscribers that are behind.
    #[must_use]
    pub fn new(backlog: usize) -> Self {
        let (tx, _) = broadcast::channel(backlog.max(1));
        Self { tx }
    }

    /// Sends `event` to every subscriber; dropped when there is none.
    pub fn send(&self, event: FleetEvent) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::new(event));
        }
    }

    /// Whether anyone listens (lets callers skip building an event).
    #[must_use]
    pub fn wanted(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// A new subscriber: every event sent from now on.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FleetEvent>> {
        self.tx.subscribe()
    }

    /// What a front end observed of `mac` (the observation sink of `tugboot_fleet::Live`).
    pub fn observed(&self, mac: Mac, facts: &Facts) {
        if !self.wanted() {
            return;
        }
        let by = facts
            .iter()
            .find_map(|(_, f)| match f.source {
                Source::Observed(Observer::Dhcp) => Some("dhcp"),
                Source::Observed(Observer::Http) => Some("http"),
                Source::Observed(Observer::Tftp) => Some("tftp"),
                _ => None,
            })
            .unwrap_or("network");
        self.send(FleetEvent::Observed {
            mac: mac.to_string(),
            by,
            facts: facts
                .iter()
                .map(|(k, f)| (k.as_str().to_owned(), f.value.clone()))
                .collect(),
        });
    }

    /// A boot plan served by HTTP or TFTP.
    pub fn booted(&self, plan: &BootPlan) {
        if !self.wanted() {
            return;
        }
        self.send(FleetEvent::Booted {
            machine: plan.machine.map(|m| m.0),
            mac: plan.mac.map(|m| m.to_string()),
            image: plan.booted(),
            profile: plan.profile.clone(),
        });
    }

    /// A rollout moved from `before` (`None`: created) to `after`.
    pub fn rollout(
        &self,
        before: Option<&RolloutRecord>,
        after: &RolloutRecord,
        by: &'static str,
        reason: Option<String>,
    ) {
        self.send(FleetEvent::Rollout {
            id: after.id.0,
            image: format!("{}@{}", after.image_name, after.image_version),
            from_state: before.map(|b| b.state.as_str()),
            to_state: after.state.as_str(),
            stage: after.current_stage,
            by,
            reason,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_get_events_and_nobody_listening_costs_nothing() {
        let events = Events::new(2);
        // No subscriber: dropped, no error.
        events.send(FleetEvent::Booted {
            machine: None,
            mac: None,
            image: "local".into(),
            profile: "p".into(),
        });
        let mut rx = events.subscribe();
        let mut facts = Facts::new();
        facts
            .offer_value("arch", "x86_64", Source::Observed(Observer::Dhcp), 5)
            .unwrap();
        events.observed(Mac([2, 0, 0, 0, 0, 9]), &facts);
        let got = rx.recv().await.unwrap();
        assert_eq!(
            *got,
            FleetEvent::Observed {
                mac: "02:00:00:00:00:09".into(),
                by: "dhcp",
                facts: vec![("arch".into(), "x86_64".into())],
            }
        );
        let json = serde_json::to_value(&*got).unwrap();
        assert_eq!(json["kind"], "observed");
        // A subscriber that is behind skips and is told.
        for _ in 0..3 {
            events.observed(Mac([2, 0, 0, 0, 0, 9]), &facts);
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(1))
        ));
    }
}
