//! The thin tokio shell around the sans-IO core (feature `shell`): UDP sockets on
//! ports 67 and 4011 bound to one interface, the lease log ([`crate::lease_log`]), and
//! the clock. Everything it decides is decided by [`Server::handle`].
//!
//! This is the one DHCP socket loop: `tugboot-dhcpd` and `tugboot serve` both run
//! [`run`]; what differs is the [`EventSink`] (stderr lines, or a tokio channel plus
//! `tracing`) and who reads the [`Counters`]. The benchmarked loop is the shipped one.
//!
//! Order per batch of datagrams (see [`run_with_log`]): `handle` each → append all
//! `persist` records to the lease log and `fsync` once → send the replies that waited
//! for them. A crash between the two loses only unsent replies, never an acknowledged
//! lease.

use std::future::Future;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use tokio::net::UdpSocket;

use crate::core::{DHCP_CLIENT_PORT, Event, Ignored, Ingress, PXE_PORT, Reply, Server, ServerPort};
use crate::lease::LeaseRecord;
pub use crate::lease_log::{
    Compacted, Compaction, LeaseLog, LeaseLogError, Recovered, load_live, read_records,
};
use crate::wire::MAX_REQUEST_LEN;

/// Errors of the I/O shell.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShellError {
    /// A socket could not be set up.
    #[error("cannot set up UDP port {port}: {source}")]
    Socket {
        /// Port.
        port: u16,
        /// Cause.
        source: io::Error,
    },
    /// Receiving failed.
    #[error("UDP I/O on port {port}: {source}")]
    Io {
        /// Port.
        port: u16,
        /// Cause.
        source: io::Error,
    },
    /// The lease log cannot be opened, recovered, appended to or compacted. DHCP must
    /// stop (nothing may be acknowledged any more); nothing else has to.
    #[error(transparent)]
    LeaseLog(#[from] LeaseLogError),
    /// The blocking task writing the lease log panicked or was cancelled.
    #[error("lease log writer task failed: {0}")]
    Commit(#[source] tokio::task::JoinError),
}

/// Where and how the shell listens.
#[derive(Debug, Clone)]
pub struct ShellConfig {
    /// Interface name for `SO_BINDTODEVICE` (the server then sees only that link).
    pub device: Option<String>,
    /// Address of that interface (becomes `Ingress::interface`).
    pub interface_address: Ipv4Addr,
    /// Append-only JSON-lines lease log.
    pub lease_file: std::path::PathBuf,
    /// Also serve PXE boot-server requests on port 4011.
    pub pxe_port: bool,
    /// Port for DHCP (67 in production).
    pub dhcp_port: u16,
    /// Most datagrams per group commit (clamped to 1..=[`MAX_BATCH`]; 1 = one
    /// `fsync` per lease-changing datagram).
    pub max_batch: usize,
}

/// The live leases of the lease log at `path` (missing file = none), read-only: a torn
/// tail is skipped here and cut by [`run`] when it opens the log; a log damaged in the
/// middle is an error ([`LeaseLogError::Damaged`]).
pub fn load_leases(path: &Path) -> Result<Vec<LeaseRecord>, ShellError> {
    Ok(load_live(path)?)
}

/// What the loop has seen and done, as monotonic counters (readable from any thread
/// while it runs: `tugboot serve` renders them on `/metrics`). Updated once per wake-up.
#[derive(Debug, Default)]
pub struct Counters {
    received: AtomicU64,
    malformed: AtomicU64,
    ignored: AtomicU64,
    replies_sent: AtomicU64,
    send_errors: AtomicU64,
    lease_records_persisted: AtomicU64,
    commit_batches: AtomicU64,
    compactions: AtomicU64,
    events_dropped: AtomicU64,
}

/// A copy of the [`Counters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Datagrams received.
    pub received: u64,
    /// Datagrams dropped as malformed.
    pub malformed: u64,
    /// Well-formed datagrams not answered (policy, rate limit, not for us).
    pub ignored: u64,
    /// Replies sent.
    pub replies_sent: u64,
    /// Replies whose send failed.
    pub send_errors: u64,
    /// Lease records made durable.
    pub lease_records_persisted: u64,
    /// Durable lease-log writes (group commits, compactions included).
    pub commit_batches: u64,
    /// Lease-log compactions done.
    pub compactions: u64,
    /// Events the sink could not take (its consumer fell behind).
    pub events_dropped: u64,
}

impl CounterSnapshot {
    /// `(name, help, value)` for each counter; names are Prometheus-style
    /// (`tugboot serve` prefixes `tugboot_dhcp_` and suffixes `_total`).
    pub fn fields(&self) -> [(&'static str, &'static str, u64); 9] {
        [
            ("packets_received", "DHCP packets received", self.received),
            (
                "packets_malformed",
                "malformed DHCP packets dropped",
                self.malformed,
            ),
            (
                "packets_ignored",
                "well-formed packets not answered (policy, rate limit, not for us)",
                self.ignored,
            ),
            ("replies_sent", "DHCP replies sent", self.replies_sent),
            (
                "send_errors",
                "DHCP replies that failed to send",
                self.send_errors,
            ),
            (
                "lease_records_persisted",
                "lease records made durable",
                self.lease_records_persisted,
            ),
            (
                "commit_batches",
                "durable lease-log writes (group commits)",
                self.commit_batches,
            ),
            (
                "lease_log_compactions",
                "lease-log compactions",
                self.compactions,
            ),
            (
                "events_dropped",
                "DHCP events dropped because their consumer fell behind",
                self.events_dropped,
            ),
        ]
    }
}

impl Counters {
    /// The current values.
    pub fn snapshot(&self) -> CounterSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            received: g(&self.received),
            malformed: g(&self.malformed),
            ignored: g(&self.ignored),
            replies_sent: g(&self.replies_sent),
            send_errors: g(&self.send_errors),
            lease_records_persisted: g(&self.lease_records_persisted),
            commit_batches: g(&self.commit_batches),
            compactions: g(&self.compactions),
            events_dropped: g(&self.events_dropped),
        }
    }

    fn add(&self, t: &CounterSnapshot) {
        for (c, v) in [
            (&self.received, t.received),
            (&self.malformed, t.malformed),
            (&self.ignored, t.ignored),
            (&self.replies_sent, t.replies_sent),
            (&self.send_errors, t.send_errors),
            (&self.lease_records_persisted, t.lease_records_persisted),
            (&self.commit_batches, t.commit_batches),
            (&self.compactions, t.compactions),
            (&self.events_dropped, t.events_dropped),
        ] {
            if v != 0 {
                c.fetch_add(v, Ordering::Relaxed);
            }
        }
    }
}

/// Something the shell itself did or met (as opposed to the core's [`Event`]s).
#[derive(Debug)]
#[non_exhaustive]
pub enum Notice {
    /// Sockets are bound; the loop runs.
    Serving {
        /// DHCP port.
        port: u16,
        /// Whether port 4011 is served too.
        pxe_port: bool,
        /// `SO_BINDTODEVICE` interface.
        device: Option<String>,
        /// Interface address.
        address: Ipv4Addr,
        /// Lease records in the log.
        log_records: u64,
        /// Receive buffer of the DHCP socket as the kernel granted it (bytes).
        recv_buffer: usize,
    },
    /// The lease log was compacted.
    Compacted {
        /// Lines before.
        lines_before: u64,
        /// Records after.
        records: u64,
    },
    /// A compaction failed before its rename; the old log is still used and the
    /// attempt is repeated once the log has doubled.
    CompactionSkipped(LeaseLogError),
    /// A reply could not be sent (the loop goes on).
    SendFailed {
        /// Destination.
        dest: SocketAddrV4,
        /// Cause.
        error: io::Error,
    },
}

/// Receives the core's events and the shell's notices. Called on the loop's task, so it
/// must never block or wait: a sink that cannot keep up drops events (returning
/// `false`, counted in `events_dropped`) — DHCP answers never wait for it.
pub trait EventSink {
    /// One event of the core. `false` = dropped.
    fn event(&mut self, event: Event) -> bool;
    /// One notice of the shell.
    fn notice(&mut self, notice: Notice);
    /// End of a wake-up (e.g. write what was buffered).
    fn flush(&mut self) {}
}

/// The stand-alone daemon's sink: one line per event or notice on stderr, written once
/// per wake-up (a closed stderr does not stop the server).
#[derive(Debug, Default)]
pub struct StderrSink {
    buf: String,
}

impl EventSink for StderrSink {
    fn event(&mut self, event: Event) -> bool {
        use std::fmt::Write as _;
        let _ = writeln!(self.buf, "dhcp: {event:?}");
        true
    }

    fn notice(&mut self, notice: Notice) {
        use std::fmt::Write as _;
        let _ = match &notice {
            Notice::Serving { .. } => writeln!(self.buf, "dhcp: serving ({notice:?})"),
            _ => writeln!(self.buf, "dhcp: {notice:?}"),
        };
        self.flush();
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() {
            let _ = io::stderr().lock().write_all(self.buf.as_bytes());
            self.buf.clear();
        }
    }
}

/// Receive buffer asked for: a boot storm (or a commit that takes a few milliseconds
/// while the host is busy) must queue in the kernel, not be dropped by it. The kernel caps
/// it at `net.core.rmem_max` (often 208 KiB; raise it for large fleets).
pub const RECV_BUFFER: usize = 4 << 20;
/// Send buffer asked for: the replies a group commit releases at once.
pub const SEND_BUFFER: usize = 1 << 20;

fn udp(addr: SocketAddrV4, device: Option<&str>) -> Result<UdpSocket, ShellError> {
    let port = addr.port();
    let e = |source| ShellError::Socket { port, source };
    let std = std::net::UdpSocket::bind(addr).map_err(e)?;
    std.set_broadcast(true).map_err(e)?;
    std.set_nonblocking(true).map_err(e)?;
    // Best effort: a smaller buffer still works, it only absorbs less.
    let s2 = socket2::SockRef::from(&std);
    let _ = s2.set_recv_buffer_size(RECV_BUFFER);
    let _ = s2.set_send_buffer_size(SEND_BUFFER);
    let sock = UdpSocket::from_std(std).map_err(e)?;
    if let Some(dev) = device {
        sock.bind_device(Some(dev.as_bytes())).map_err(e)?;
    }
    Ok(sock)
}

/// Largest group commit: most datagrams whose lease records share one write and one
/// `fsync`. While a commit is on its way to disk, at most this many further
/// datagrams are read and decided; then the shell stops reading (the kernel queues
/// or drops) until the commit is done.
pub const MAX_BATCH: usize = 4096;

/// What a commit task hands back: the log, and how the write went.
struct Done {
    log: LeaseLog,
    result: Result<Option<Notice>, LeaseLogError>,
}

/// A commit on its way to disk: the task, the replies waiting for it, its record count.
type Commit = (
    tokio::task::JoinHandle<Done>,
    Vec<(ServerPort, Reply)>,
    usize,
);

/// Makes `records` durable: by compacting to `snapshot` when given (it contains them),
/// else — or if the compaction is skipped — by appending them.
fn commit(mut log: LeaseLog, records: &[LeaseRecord], snapshot: Option<Vec<LeaseRecord>>) -> Done {
    let mut notice = None;
    if let Some(live) = snapshot {
        match log.compact(&live) {
            Ok(Compacted::Done {
                lines_before,
                records,
            }) => {
                return Done {
                    log,
                    result: Ok(Some(Notice::Compacted {
                        lines_before,
                        records,
                    })),
                };
            }
            Ok(Compacted::Skipped(e)) => notice = Some(Notice::CompactionSkipped(e)),
            Err(e) => {
                return Done {
                    log,
                    result: Err(e),
                };
            }
        }
    }
    let result = log.append(records).map(|()| notice);
    Done { log, result }
}

/// Opens the lease log at `shell.lease_file` with the default [`Compaction`] (cutting a
/// torn tail, see [`LeaseLog::open`]) and runs [`run_with_log`]. `server` should already
/// hold the leases of [`load_leases`] (see [`Server::restore`]).
pub async fn run<S: EventSink + Send>(
    server: Server,
    shell: ShellConfig,
    counters: &Counters,
    sink: &mut S,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ShellError> {
    let path = shell.lease_file.clone();
    let (log, _) =
        tokio::task::spawn_blocking(move || LeaseLog::open(&path, Compaction::default()))
            .await
            .map_err(ShellError::Commit)??;
    run_with_log(server, shell, log, counters, sink, shutdown).await
}

/// Runs the server on an open lease log until `shutdown` completes.
///
/// Group commit, pipelined: the shell keeps reading and deciding datagrams while the
/// previous batch's lease records are being written and `fsync`ed on the blocking
/// pool. A reply whose datagram produced lease records (an ACK that binds or renews)
/// is held until the commit holding those records has finished; a reply that
/// acknowledges nothing durable (OFFER, NAK, INFORM's ACK, proxy replies) is sent at
/// once. When a commit finishes, its held replies are sent and everything decided
/// meanwhile (at most [`ShellConfig::max_batch`] datagrams) becomes the next commit:
/// one write + one `fsync` for all of it. When the log has grown much larger than the
/// live lease set ([`Compaction`]), that commit is a compaction instead: the snapshot
/// of the lease table, which already contains the batch's records. "Persisted before
/// acknowledged" holds for every datagram. A lease-log error stops the loop without
/// sending the replies of that commit. On `shutdown`, what was decided is committed
/// and its replies sent before returning.
pub async fn run_with_log<S: EventSink + Send>(
    mut server: Server,
    shell: ShellConfig,
    log: LeaseLog,
    counters: &Counters,
    sink: &mut S,
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
    sink.notice(Notice::Serving {
        port: shell.dhcp_port,
        pxe_port: shell.pxe_port,
        device: shell.device.clone(),
        address: shell.interface_address,
        log_records: log.lines(),
        recv_buffer: socket2::SockRef::from(&s67)
            .recv_buffer_size()
            .unwrap_or_default(),
    });
    let sockets = Sockets {
        s67: &s67,
        s4011: s4011.as_ref(),
    };
    let mut log = Some(log);
    let max_batch = shell.max_batch.clamp(1, MAX_BATCH);
    let mut buf = vec![0u8; MAX_REQUEST_LEN + 1];
    // Decided but not yet committed: records, the replies waiting for them, and how
    // many datagrams they came from.
    let mut persist: Vec<LeaseRecord> = Vec::new();
    let mut held: Vec<(ServerPort, Reply)> = Vec::new();
    let mut pending = 0usize;
    let mut immediate: Vec<(ServerPort, Reply)> = Vec::new();
    let mut in_flight: Option<Commit> = None;
    let mut tally = CounterSnapshot::default();
    tokio::pin!(shutdown);
    loop {
        let room = pending < max_batch;
        tokio::select! {
            () = &mut shutdown => {
                // Finish the commit on its way, then commit what was decided since, so
                // no decided ACK is lost.
                if let Some((task, replies, n)) = in_flight.take() {
                    let done = task.await.map_err(ShellError::Commit)?;
                    log = Some(done.log);
                    finish(done.result, n, &mut tally, sink)?;
                    sockets.send_all(&replies, &mut tally, sink).await;
                }
                if !persist.is_empty() && let Some(l) = log.take() {
                    let records = std::mem::take(&mut persist);
                    let n = records.len();
                    let done = tokio::task::spawn_blocking(move || commit(l, &records, None))
                        .await
                        .map_err(ShellError::Commit)?;
                    finish(done.result, n, &mut tally, sink)?;
                    sockets.send_all(&held, &mut tally, sink).await;
                }
                counters.add(&tally);
                sink.flush();
                return Ok(());
            }
            r = async {
                match &mut in_flight {
                    Some((task, _, _)) => task.await,
                    None => std::future::pending().await,
                }
            } => {
                let done = r.map_err(ShellError::Commit)?;
                log = Some(done.log);
                if let Some((_, replies, n)) = in_flight.take() {
                    let ok = finish(done.result, n, &mut tally, sink);
                    counters.add(&std::mem::take(&mut tally));
                    ok?;
                    sockets.send_all(&replies, &mut tally, sink).await;
                }
            }
            r = s67.readable(), if room => r.map_err(|source| ShellError::Io { port: shell.dhcp_port, source })?,
            r = async {
                match &s4011 {
                    Some(s) => s.readable().await,
                    None => std::future::pending().await,
                }
            }, if room => r.map_err(|source| ShellError::Io { port: PXE_PORT, source })?,
        }
        immediate.clear();
        // Alternate between the sockets until both are drained or the batch is full.
        loop {
            let before = pending;
            for (port, sock, number) in [
                (ServerPort::Dhcp, Some(&s67), shell.dhcp_port),
                (ServerPort::Pxe, s4011.as_ref(), PXE_PORT),
            ] {
                let Some(sock) = sock else { continue };
                if pending >= max_batch {
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
                pending += 1;
                tally.received += 1;
                let SocketAddr::V4(src) = src else { continue };
                let ingress = Ingress {
                    interface: shell.interface_address,
                    port,
                    src,
                };
                let data = buf.get(..n).unwrap_or_default();
                let out = server.handle(SystemTime::now(), data, ingress);
                for e in out.events {
                    if let Event::Ignored { reason, .. } = &e {
                        if matches!(reason, Ignored::Malformed(_)) {
                            tally.malformed += 1;
                        } else {
                            tally.ignored += 1;
                        }
                    }
                    if !sink.event(e) {
                        tally.events_dropped += 1;
                    }
                }
                let replies = out.replies.into_iter().map(|r| (port, r));
                if out.persist.is_empty() {
                    immediate.extend(replies);
                } else {
                    persist.extend(out.persist);
                    held.extend(replies);
                }
            }
            if pending == before || pending >= max_batch {
                break;
            }
        }
        sockets.send_all(&immediate, &mut tally, sink).await;
        if in_flight.is_none() {
            // Nothing waits for disk: the next batch starts here.
            pending = 0;
            if !persist.is_empty()
                && let Some(l) = log.take()
            {
                let records = std::mem::take(&mut persist);
                let n = records.len();
                // The table already holds this batch: a snapshot taken now contains it.
                let snapshot = l
                    .wants_compaction(server.leases().live_count())
                    .then(|| server.leases().snapshot());
                let task = tokio::task::spawn_blocking(move || commit(l, &records, snapshot));
                in_flight = Some((task, std::mem::take(&mut held), n));
            }
        }
        counters.add(&std::mem::take(&mut tally));
        sink.flush();
    }
}

/// Accounts for a finished commit of `n` records.
fn finish(
    result: Result<Option<Notice>, LeaseLogError>,
    n: usize,
    tally: &mut CounterSnapshot,
    sink: &mut impl EventSink,
) -> Result<(), ShellError> {
    let notice = result?;
    tally.commit_batches += 1;
    tally.lease_records_persisted += u64::try_from(n).unwrap_or(u64::MAX);
    if let Some(n) = notice {
        if matches!(n, Notice::Compacted { .. }) {
            tally.compactions += 1;
        }
        sink.notice(n);
    }
    Ok(())
}

struct Sockets<'a> {
    s67: &'a UdpSocket,
    s4011: Option<&'a UdpSocket>,
}

impl Sockets<'_> {
    async fn send_all(
        &self,
        replies: &[(ServerPort, Reply)],
        tally: &mut CounterSnapshot,
        sink: &mut impl EventSink,
    ) {
        for (port, r) in replies {
            let sock = match (port, self.s4011) {
                (ServerPort::Pxe, Some(s)) => s,
                _ => self.s67,
            };
            // No ARP injection yet: a reply meant for a not-yet-configured client's new
            // address goes to the broadcast address instead (every client accepts that).
            let dest = if r.link_layer.is_some() {
                SocketAddrV4::new(Ipv4Addr::BROADCAST, DHCP_CLIENT_PORT)
            } else {
                r.dest
            };
            match sock.send_to(&r.bytes, dest).await {
                Ok(_) => tally.replies_sent += 1,
                Err(error) => {
                    // One unreachable client must not stop the server.
                    tally.send_errors += 1;
                    sink.notice(Notice::SendFailed { dest, error });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_names_are_stable() {
        let s = CounterSnapshot {
            received: 2,
            malformed: 1,
            ..CounterSnapshot::default()
        };
        let f = s.fields();
        assert_eq!(f[0], ("packets_received", "DHCP packets received", 2));
        assert_eq!(f[1].0, "packets_malformed");
        let c = Counters::default();
        c.add(&s);
        c.add(&s);
        assert_eq!(c.snapshot().received, 4);
    }
}
