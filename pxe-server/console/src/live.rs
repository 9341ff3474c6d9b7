//! The live view's memory, sans-IO: the latest fleet events as rows people read, and netboot
//! durations measured from them.
//!
//! Every event gets a sequence number (the SSE `id`, so a reconnecting browser resumes where
//! it was) and the time it arrived. A **netboot duration** is the time from the first DHCP
//! packet of a machine that is netbooting to the boot plan served to it (iPXE script or loader
//! configuration): what the firmware and the network cost before the kernel download starts.
//! A DHCP packet more than [`BOOT_WINDOW_MS`] before the plan starts a new measurement (a
//! running OS renewing its lease is not a boot).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::Serialize;
use tugboot_api::server::events::FleetEvent;

/// Rows kept for the page and for reconnecting browsers.
pub const RECENT: usize = 500;
/// Netboot durations kept.
pub const BOOTS: usize = 200;
/// A DHCP packet older than this when the plan is served started another boot.
pub const BOOT_WINDOW_MS: i64 = 10 * 60 * 1000;
/// Machines with a boot in progress tracked at most.
const IN_PROGRESS: usize = 4096;

/// One event as a row: what the page shows and what SSE sends (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    /// Sequence number.
    pub seq: u64,
    /// Arrival, unix milliseconds.
    pub at_ms: i64,
    /// `observed`, `booted`, `reported`, `rollout`.
    pub kind: &'static str,
    /// CSS class: `good`, `warn`, `bad`, `muted`.
    pub tone: &'static str,
    /// Who: a MAC, a machine, a rollout.
    pub who: String,
    /// Where `who` links to (a console path), if anywhere.
    pub href: Option<String>,
    /// What happened.
    pub text: String,
}

/// One measured netboot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootTiming {
    /// The machine's MAC.
    pub mac: String,
    /// The registry machine, if known.
    pub machine: Option<i64>,
    /// What it boots.
    pub image: String,
    /// First DHCP packet to boot plan, milliseconds.
    pub millis: i64,
    /// When the plan was served, unix milliseconds.
    pub at_ms: i64,
}

/// The memory (see the module documentation).
#[derive(Debug, Default)]
pub struct EventLog {
    recent: VecDeque<Arc<Row>>,
    boots: VecDeque<BootTiming>,
    dhcp_first: HashMap<String, i64>,
    next_seq: u64,
    /// Events this log missed because it fell behind the fleet's channel.
    pub skipped: u64,
}

fn machine_href(id: i64) -> String {
    format!("/console/machines/{id}")
}

/// The row for `event` (sequence and time left 0).
#[must_use]
pub fn describe(event: &FleetEvent) -> Row {
    let (kind, tone, who, href, text) = match event {
        FleetEvent::Observed { mac, by, facts } => {
            let shown: Vec<String> = facts
                .iter()
                .filter(|(k, _)| {
                    matches!(
                        k.as_str(),
                        "firmware" | "arch" | "netboot" | "address" | "hostname" | "user_class"
                    )
                })
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            (
                "observed",
                "muted",
                mac.clone(),
                None,
                format!("{} request: {}", by.to_uppercase(), shown.join(" ")),
            )
        }
        FleetEvent::Booted {
            machine,
            mac,
            image,
            profile,
        } => (
            "booted",
            "good",
            mac.clone()
                .or_else(|| machine.map(|m| format!("machine {m}")))
                .unwrap_or_else(|| "?".into()),
            machine.map(machine_href),
            format!("boot plan served: {image} (profile {profile})"),
        ),
        FleetEvent::Reported {
            device,
            outcome,
            image,
            slot,
            failed_checks,
            last_error,
        } => {
            let trouble =
                crate::health::problem(outcome.as_deref(), failed_checks, last_error.as_deref());
            let mut text = match outcome {
                Some(o) => format!("update {o}"),
                None => "status".to_owned(),
            };
            if let Some(i) = image {
                text.push_str(&format!(" · running {i}"));
            }
            if let Some(s) = slot {
                text.push_str(&format!(" · slot {s}"));
            }
            if let Some(t) = trouble.as_ref().filter(|t| !t.starts_with("update ")) {
                text.push_str(&format!(" · {t}"));
            }
            (
                "reported",
                if trouble.is_some() { "bad" } else { "good" },
                format!("machine {device}"),
                Some(machine_href(*device)),
                text,
            )
        }
        FleetEvent::Rollout {
            id,
            image,
            from_state,
            to_state,
            stage,
            by,
            reason,
        } => {
            let mut text = match from_state {
                None => format!("created ({image}) by {by}"),
                Some(f) => format!("{f} → {to_state}, stage {} ({image}) by {by}", stage + 1),
            };
            if let Some(r) = reason {
                text.push_str(&format!(": {r}"));
            }
            (
                "rollout",
                match *to_state {
                    "paused" | "aborted" => "warn",
                    _ => "good",
                },
                format!("rollout {id}"),
                Some(format!("/console/rollouts/{id}")),
                text,
            )
        }
        _ => ("other", "muted", String::new(), None, format!("{event:?}")),
    };
    Row {
        seq: 0,
        at_ms: 0,
        kind,
        tone,
        who,
        href,
        text,
    }
}

impl EventLog {
    /// Records `event`, arrived at `now_ms`; returns its row.
    pub fn push(&mut self, event: &FleetEvent, now_ms: i64) -> Arc<Row> {
        self.time_boot(event, now_ms);
        self.next_seq += 1;
        let row = Arc::new(Row {
            seq: self.next_seq,
            at_ms: now_ms,
            ..describe(event)
        });
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(Arc::clone(&row));
        row
    }

    fn time_boot(&mut self, event: &FleetEvent, now_ms: i64) {
        match event {
            FleetEvent::Observed {
                mac, by: "dhcp", ..
            } => {
                let fresh = self
                    .dhcp_first
                    .get(mac)
                    .is_some_and(|t| now_ms - t <= BOOT_WINDOW_MS);
                if !fresh {
                    if self.dhcp_first.len() >= IN_PROGRESS {
                        self.dhcp_first.retain(|_, t| now_ms - *t <= BOOT_WINDOW_MS);
                        if self.dhcp_first.len() >= IN_PROGRESS {
                            return;
                        }
                    }
                    self.dhcp_first.insert(mac.clone(), now_ms);
                }
            }
            FleetEvent::Booted {
                machine,
                mac: Some(mac),
                image,
                ..
            } => {
                if let Some(start) = self.dhcp_first.remove(mac)
                    && now_ms - start <= BOOT_WINDOW_MS
                {
                    if self.boots.len() == BOOTS {
                        self.boots.pop_front();
                    }
                    self.boots.push_back(BootTiming {
                        mac: mac.clone(),
                        machine: *machine,
                        image: image.clone(),
                        millis: now_ms - start,
                        at_ms: now_ms,
                    });
                }
            }
            _ => {}
        }
    }

    /// Rows, newest first.
    pub fn recent(&self) -> impl Iterator<Item = &Arc<Row>> {
        self.recent.iter().rev()
    }

    /// Rows after sequence number `seq`, oldest first (a reconnecting browser).
    #[must_use]
    pub fn since(&self, seq: u64) -> Vec<Arc<Row>> {
        self.recent
            .iter()
            .filter(|r| r.seq > seq)
            .cloned()
            .collect()
    }

    /// Measured netboots, oldest first.
    pub fn boots(&self) -> impl Iterator<Item = &BootTiming> {
        self.boots.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dhcp(mac: &str) -> FleetEvent {
        FleetEvent::Observed {
            mac: mac.into(),
            by: "dhcp",
            facts: vec![
                ("arch".into(), "x86_64".into()),
                ("vendor_class".into(), "x".into()),
            ],
        }
    }

    fn booted(mac: &str) -> FleetEvent {
        FleetEvent::Booted {
            machine: Some(7),
            mac: Some(mac.into()),
            image: "os@3".into(),
            profile: "p".into(),
        }
    }

    #[test]
    fn netboot_duration_runs_from_the_first_dhcp_packet_to_the_plan() {
        let mut log = EventLog::default();
        log.push(&dhcp("m1"), 1_000);
        log.push(&dhcp("m1"), 4_000); // iPXE asks again: same boot
        log.push(&booted("m1"), 9_500);
        // A plan with no DHCP before it (HTTP boot straight to the script): not timed.
        log.push(&booted("m2"), 10_000);
        // A lease renewal long ago does not start a boot that ends now.
        log.push(&dhcp("m3"), 0);
        log.push(&dhcp("m3"), BOOT_WINDOW_MS + 1);
        log.push(&booted("m3"), BOOT_WINDOW_MS + 501);
        let boots: Vec<(String, i64)> = log.boots().map(|b| (b.mac.clone(), b.millis)).collect();
        assert_eq!(boots, [("m1".into(), 8_500), ("m3".into(), 500)]);
    }

    #[test]
    fn rows_are_numbered_bounded_and_resumable() {
        let mut log = EventLog::default();
        for i in 0..(RECENT + 5) {
            log.push(&dhcp("m"), i64::try_from(i).unwrap());
        }
        assert_eq!(log.recent().count(), RECENT);
        assert_eq!(log.recent().next().map(|r| r.seq), Some(505));
        let tail = log.since(503);
        assert_eq!(tail.iter().map(|r| r.seq).collect::<Vec<_>>(), [504, 505]);
        let row = &log.recent().next().unwrap();
        assert_eq!(row.kind, "observed");
        assert_eq!(row.text, "DHCP request: arch=x86_64");
    }

    #[test]
    fn reports_and_rollouts_read_as_sentences() {
        let r = describe(&FleetEvent::Reported {
            device: 4,
            outcome: Some("rolled-back".into()),
            image: Some("os@2".into()),
            slot: Some("A".into()),
            failed_checks: vec![],
            last_error: None,
        });
        assert_eq!(
            (r.kind, r.tone, r.who.as_str()),
            ("reported", "bad", "machine 4")
        );
        assert_eq!(r.href.as_deref(), Some("/console/machines/4"));
        assert_eq!(r.text, "update rolled-back · running os@2 · slot A");
        let r = describe(&FleetEvent::Rollout {
            id: 3,
            image: "os@2".into(),
            from_state: Some("running"),
            to_state: "paused",
            stage: 0,
            by: "operator",
            reason: None,
        });
        assert_eq!(r.tone, "warn");
        assert_eq!(r.text, "running → paused, stage 1 (os@2) by operator");
    }
}
