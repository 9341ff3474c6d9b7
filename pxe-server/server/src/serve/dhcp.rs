//! DHCP inside `tugboot serve`: the crate's own socket loop (`tugboot_dhcp::server::run`,
//! the one `tugboot-dhcpd` runs and the benchmark measures) with a sink that logs through
//! `tracing` and hands events to the rest of the server over a channel.
//!
//! The sink never waits: when the channel is full (its consumer fell behind) the event is
//! dropped and counted (`tugboot_dhcp_events_dropped_total`); DHCP answers never wait for
//! the fleet side.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;
use tugboot_dhcp::server::{Counters, EventSink, Notice, ShellConfig, ShellError};
use tugboot_dhcp::{Event, Server};

/// What the DHCP loop has seen and done, for `/metrics` (the crate's counters, rendered in
/// Prometheus text).
#[derive(Debug, Default)]
pub struct DhcpCounters {
    inner: Counters,
}

impl DhcpCounters {
    /// Prometheus text format.
    pub fn render(&self, out: &mut String) {
        super::metrics::counters(out, "dhcp", &self.inner.snapshot().fields());
    }
}

/// Logs, and forwards every event but dropped requests to the channel without waiting.
struct ChannelSink {
    events: mpsc::Sender<Event>,
    warned: bool,
}

fn mac_text(mac: Option<tugboot_dhcp::Mac>) -> Option<String> {
    mac.map(|m| m.to_string())
}

impl EventSink for ChannelSink {
    fn event(&mut self, event: Event) -> bool {
        match &event {
            Event::Ignored { mac, reason } => {
                tracing::debug!(mac = ?mac_text(*mac), ?reason, "dhcp: ignored");
                // Counted by the loop; nothing for the rest of the server.
                return true;
            }
            Event::Leased {
                address,
                mac,
                expires_at,
            } => {
                let secs = expires_at
                    .duration_since(SystemTime::now())
                    .map_or(0, |d| d.as_secs());
                tracing::info!(%address, mac = ?mac_text(*mac), expires_in_secs = secs, "dhcp: leased");
            }
            Event::Observed(o) => {
                // The first sight of a machine nobody declared, once per DISCOVER: what an
                // operator watches for when a new machine is racked.
                if !o.known
                    && o.msg_type == tugboot_dhcp::MessageType::Discover
                    && o.port == tugboot_dhcp::ServerPort::Dhcp
                {
                    tracing::info!(mac = ?mac_text(o.mac), firmware = %o.firmware.label(), "dhcp: unknown machine");
                } else {
                    tracing::debug!(
                        mac = ?mac_text(o.mac),
                        firmware = %o.firmware.label(),
                        known = o.known,
                        address = ?o.address,
                        "dhcp: netboot request"
                    );
                }
            }
            other => tracing::info!(event = ?other, "dhcp"),
        }
        match self.events.try_send(event) {
            Ok(()) => {
                self.warned = false;
                true
            }
            Err(_) => {
                if !self.warned {
                    // Once per run of drops, not once per event.
                    tracing::warn!("dhcp: event consumer behind, events dropped");
                    self.warned = true;
                }
                false
            }
        }
    }

    fn notice(&mut self, notice: Notice) {
        match notice {
            Notice::Serving {
                port,
                pxe_port,
                device,
                address,
                log_records,
                recv_buffer,
            } => tracing::info!(
                port,
                pxe_port,
                ?device,
                %address,
                log_records,
                recv_buffer,
                "dhcp: serving"
            ),
            Notice::Compacted {
                lines_before,
                records,
            } => tracing::info!(lines_before, records, "dhcp: lease log compacted"),
            Notice::CompactionSkipped(e) => {
                tracing::warn!(error = %e, "dhcp: lease log compaction skipped; still appending");
            }
            Notice::SendFailed { dest, error } => {
                tracing::warn!(%dest, %error, "dhcp: send failed");
            }
            other => tracing::info!(notice = ?other, "dhcp"),
        }
    }
}

/// Runs DHCP until `shutdown` completes. `server` already holds the restored leases. Events
/// other than dropped requests go to `events` (see the module documentation).
pub async fn run(
    server: Server,
    shell: ShellConfig,
    events: mpsc::Sender<Event>,
    counters: Arc<DhcpCounters>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ShellError> {
    let mut sink = ChannelSink {
        events,
        warned: false,
    };
    tugboot_dhcp::server::run(server, shell, &counters.inner, &mut sink, shutdown).await
}
