//! The DHCP socket loop of `tugboot serve`.
//!
//! `tugboot_dhcp::server::run` writes the core's events to stderr and offers no hook, but the
//! server must record unknown machines in the store. This adapter is the same thin loop over
//! the same public pieces (`Server::handle`, `LeaseLog`, group commit: every lease record of a
//! batch is durable before any reply of the batch is sent) that hands events to a channel and
//! logs through `tracing` instead.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tugboot_dhcp::core::Ignored;
use tugboot_dhcp::core::{DHCP_CLIENT_PORT, PXE_PORT};
use tugboot_dhcp::server::{LeaseLog, MAX_BATCH, ShellConfig, ShellError};
use tugboot_dhcp::wire::MAX_REQUEST_LEN;
use tugboot_dhcp::{Event, Ingress, Reply, Server, ServerPort};

fn udp(addr: SocketAddrV4, device: Option<&str>) -> Result<UdpSocket, ShellError> {
    let port = addr.port();
    let e = |source| ShellError::Socket { port, source };
    let std = std::net::UdpSocket::bind(addr).map_err(e)?;
    std.set_broadcast(true).map_err(e)?;
    std.set_nonblocking(true).map_err(e)?;
    let sock = UdpSocket::from_std(std).map_err(e)?;
    if let Some(dev) = device {
        sock.bind_device(Some(dev.as_bytes())).map_err(e)?;
    }
    Ok(sock)
}

fn log_event(e: &Event) {
    match e {
        Event::Ignored { mac, reason } => {
            tracing::debug!(mac = ?mac.map(|m| m.to_string()), ?reason, "dhcp: ignored");
        }
        Event::Leased {
            address,
            mac,
            expires_at,
        } => {
            let secs = expires_at
                .duration_since(SystemTime::now())
                .map_or(0, |d| d.as_secs());
            tracing::info!(%address, mac = ?mac.map(|m| m.to_string()), expires_in_secs = secs, "dhcp: leased");
        }
        Event::UnknownMachine { mac, firmware, .. } => {
            tracing::info!(mac = ?mac.map(|m| m.to_string()), %firmware, "dhcp: unknown machine");
        }
        other => tracing::info!(event = ?other, "dhcp"),
    }
}

/// What the DHCP loop has seen and done, for `/metrics`. A malformed packet is dropped and
/// counted here (and logged at debug level), never answered.
#[derive(Debug, Default)]
pub struct DhcpCounters {
    received: AtomicU64,
    malformed: AtomicU64,
    ignored: AtomicU64,
    replies: AtomicU64,
    send_errors: AtomicU64,
    leases_persisted: AtomicU64,
    batches: AtomicU64,
}

impl DhcpCounters {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        super::metrics::counters(
            out,
            "dhcp",
            &[
                (
                    "packets_received",
                    "DHCP packets received",
                    g(&self.received),
                ),
                (
                    "packets_malformed",
                    "malformed DHCP packets dropped",
                    g(&self.malformed),
                ),
                (
                    "packets_ignored",
                    "well-formed packets not answered (policy, rate limit, not for us)",
                    g(&self.ignored),
                ),
                ("replies_sent", "DHCP replies sent", g(&self.replies)),
                (
                    "send_errors",
                    "DHCP replies that failed to send",
                    g(&self.send_errors),
                ),
                (
                    "lease_records_persisted",
                    "lease records made durable",
                    g(&self.leases_persisted),
                ),
                (
                    "commit_batches",
                    "durable lease-log writes (group commits)",
                    g(&self.batches),
                ),
            ],
        );
    }
}

/// Runs DHCP until `shutdown` completes. `server` already holds the restored leases. Events
/// other than dropped requests go to `events`; if its consumer falls behind they are dropped
/// (and counted in the log), never the DHCP answers.
pub async fn run(
    mut server: Server,
    shell: ShellConfig,
    events: mpsc::Sender<Event>,
    counters: Arc<DhcpCounters>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ShellError> {
    let any = Ipv4Addr::UNSPECIFIED;
    let dev = shell.device.as_deref();
    let s67 = udp(SocketAddrV4::new(any, shell.dhcp_port), dev)?;
    let s4011 = if shell.pxe_port {
        Some(udp(SocketAddrV4::new(any, PXE_PORT), dev)?)
    } else {
        None
    };
    let max_batch = shell.max_batch.clamp(1, MAX_BATCH);
    let mut log = LeaseLog::open(&shell.lease_file)?;
    let mut buf = vec![0u8; MAX_REQUEST_LEN + 1];
    let mut persist = Vec::new();
    let mut outgoing: Vec<(ServerPort, Reply)> = Vec::new();
    tracing::info!(
        port = shell.dhcp_port,
        pxe_port = shell.pxe_port,
        device = ?shell.device,
        address = %shell.interface_address,
        "dhcp: serving"
    );
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            r = s67.readable() => r.map_err(|source| ShellError::Io { port: shell.dhcp_port, source })?,
            r = async {
                match &s4011 {
                    Some(s) => s.readable().await,
                    None => std::future::pending().await,
                }
            } => r.map_err(|source| ShellError::Io { port: PXE_PORT, source })?,
        }
        persist.clear();
        outgoing.clear();
        let mut handled = 0;
        loop {
            let before = handled;
            for (port, sock, number) in [
                (ServerPort::Dhcp, Some(&s67), shell.dhcp_port),
                (ServerPort::Pxe, s4011.as_ref(), PXE_PORT),
            ] {
                let Some(sock) = sock else { continue };
                if handled >= max_batch {
                    break;
                }
                let (n, src) = match sock.try_recv_from(&mut buf) {
                    Ok(r) => r,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(source) => {
                        return Err(ShellError::Io {
                            port: number,
                            source,
                        });
                    }
                };
                handled += 1;
                let SocketAddr::V4(src) = src else { continue };
                let ingress = Ingress {
                    interface: shell.interface_address,
                    port,
                    src,
                };
                let data = buf.get(..n).unwrap_or_default();
                let out = server.handle(SystemTime::now(), data, ingress);
                DhcpCounters::add(&counters.received, 1);
                for e in out.events {
                    if let Event::Ignored { reason, .. } = &e {
                        let malformed = matches!(reason, Ignored::Malformed(_));
                        let c = if malformed {
                            &counters.malformed
                        } else {
                            &counters.ignored
                        };
                        DhcpCounters::add(c, 1);
                    }
                    log_event(&e);
                    if !matches!(e, Event::Ignored { .. }) && events.try_send(e).is_err() {
                        tracing::warn!("dhcp: event consumer behind, event dropped");
                    }
                }
                persist.extend(out.persist);
                outgoing.extend(out.replies.into_iter().map(|r| (port, r)));
            }
            if handled == before || handled >= max_batch {
                break;
            }
        }
        // Durable before acknowledged: one write + fsync for the whole batch.
        log.append(&persist)?;
        if !persist.is_empty() {
            DhcpCounters::add(&counters.batches, 1);
            DhcpCounters::add(&counters.leases_persisted, persist.len() as u64);
        }
        for (port, r) in &outgoing {
            let sock = match (port, &s4011) {
                (ServerPort::Pxe, Some(s)) => s,
                _ => &s67,
            };
            // No ARP injection: a reply for a not-yet-configured client's new address is
            // broadcast on the bound interface instead (every client accepts that).
            let dest = if r.link_layer.is_some() {
                SocketAddrV4::new(Ipv4Addr::BROADCAST, DHCP_CLIENT_PORT)
            } else {
                r.dest
            };
            if let Err(source) = sock.send_to(&r.bytes, dest).await {
                DhcpCounters::add(&counters.send_errors, 1);
                tracing::warn!(%dest, error = %source, "dhcp: send failed");
            } else {
                DhcpCounters::add(&counters.replies, 1);
                tracing::debug!(%dest, kind = ?r.msg_type, "dhcp: sent");
            }
        }
    }
}
