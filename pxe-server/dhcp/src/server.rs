//! The thin tokio shell around the sans-IO core (feature `shell`): UDP sockets on
//! ports 67 and 4011 bound to one interface, an append-only lease file, and the
//! clock. Everything it decides is decided by [`Server::handle`].
//!
//! Order per batch of datagrams (see [`run`]): `handle` each → append all `persist`
//! records to the lease file and `fsync` once → send all replies. A crash between
//! the two loses only unsent replies, never an acknowledged lease.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{self, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tokio::net::UdpSocket;

use crate::core::{DHCP_CLIENT_PORT, Event, Ingress, PXE_PORT, Reply, Server, ServerPort};
use crate::lease::LeaseRecord;
use crate::wire::MAX_REQUEST_LEN;

/// Largest lease file read at start-up.
pub const MAX_LEASE_FILE: u64 = 256 << 20;

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
    /// Receiving or sending failed.
    #[error("UDP I/O on port {port}: {source}")]
    Io {
        /// Port.
        port: u16,
        /// Cause.
        source: io::Error,
    },
    /// The lease file could not be read or written.
    #[error("lease file {path}: {source}")]
    LeaseFile {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// A line of the lease file is not a lease record.
    #[error("lease file {path}, line {line}: {message}")]
    LeaseRecord {
        /// Path.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// Parser message.
        message: String,
    },
    /// The lease file exceeds [`MAX_LEASE_FILE`].
    #[error("lease file {path} is larger than {MAX_LEASE_FILE} bytes")]
    LeaseFileTooLarge {
        /// Path.
        path: PathBuf,
    },
}

/// Where and how the shell listens.
#[derive(Debug, Clone)]
pub struct ShellConfig {
    /// Interface name for `SO_BINDTODEVICE` (the server then sees only that link).
    pub device: Option<String>,
    /// Address of that interface (becomes `Ingress::interface`).
    pub interface_address: Ipv4Addr,
    /// Append-only JSON-lines lease file.
    pub lease_file: PathBuf,
    /// Also serve PXE boot-server requests on port 4011.
    pub pxe_port: bool,
    /// Port for DHCP (67 in production).
    pub dhcp_port: u16,
    /// Most datagrams per group commit (clamped to 1..=[`MAX_BATCH`]; 1 = one
    /// `fsync` per lease-changing datagram).
    pub max_batch: usize,
}

/// Reads the lease file (missing file = no leases). A torn last line (crash during
/// an append) is ignored; any other bad line is an error.
pub fn load_leases(path: &Path) -> Result<Vec<LeaseRecord>, ShellError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ShellError::LeaseFile {
                path: path.into(),
                source,
            });
        }
    };
    let lease_err = |source| ShellError::LeaseFile {
        path: path.into(),
        source,
    };
    let len = file.metadata().map_err(lease_err)?.len();
    if len > MAX_LEASE_FILE {
        return Err(ShellError::LeaseFileTooLarge { path: path.into() });
    }
    let mut text = String::new();
    BufReader::new(file.take(MAX_LEASE_FILE))
        .read_to_string(&mut text)
        .map_err(lease_err)?;
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<LeaseRecord>(line) {
            Ok(r) => out.push(r),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => break,
            Err(e) => {
                return Err(ShellError::LeaseRecord {
                    path: path.into(),
                    line: i + 1,
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// Appends records durably (write + fsync).
#[derive(Debug)]
pub struct LeaseLog {
    path: PathBuf,
    file: File,
}

impl LeaseLog {
    /// Opens (creating) the file for appending.
    pub fn open(path: &Path) -> Result<Self, ShellError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| ShellError::LeaseFile {
                path: path.into(),
                source,
            })?;
        Ok(Self {
            path: path.into(),
            file,
        })
    }

    /// Appends and syncs; returns only once the records are on disk.
    pub fn append(&mut self, records: &[LeaseRecord]) -> Result<(), ShellError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for r in records {
            // LeaseRecord has only plain fields; serialisation cannot fail, but a
            // failure is still reported rather than unwrapped.
            serde_json::to_writer(&mut buf, r).map_err(|e| ShellError::LeaseFile {
                path: self.path.clone(),
                source: io::Error::other(e),
            })?;
            buf.push(b'\n');
        }
        let err = |source| ShellError::LeaseFile {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&buf).map_err(err)?;
        self.file.sync_data().map_err(err)
    }
}

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

/// Largest group commit: most datagrams whose lease records share one write and one
/// `fsync`. While a commit is on its way to disk, at most this many further
/// datagrams are read and decided; then the shell stops reading (the kernel queues
/// or drops) until the commit is done.
pub const MAX_BATCH: usize = 4096;

/// Records of one batch going to disk on the blocking pool, with the replies that
/// must wait for them.
type Commit = (
    tokio::task::JoinHandle<(LeaseLog, Result<(), ShellError>)>,
    Vec<(ServerPort, Reply)>,
);

/// Runs the server until `shutdown` completes. `server` should already hold the
/// leases of [`load_leases`] (see [`Server::restore`]).
///
/// Group commit, pipelined: the shell keeps reading and deciding datagrams while the
/// previous batch's lease records are being written and `fsync`ed on the blocking
/// pool. A reply whose datagram produced lease records (an ACK that binds or renews)
/// is held until the commit holding those records has finished; a reply that
/// acknowledges nothing durable (OFFER, NAK, INFORM's ACK, proxy replies) is sent at
/// once. When a commit finishes, its held replies are sent and everything decided
/// meanwhile (at most [`ShellConfig::max_batch`] datagrams) becomes the next commit:
/// one write + one `fsync` for all of it. "Persisted before acknowledged" holds for
/// every datagram; the `fsync` cost is shared by everything that arrived during the
/// previous one. An `fsync` error stops the server without sending the replies of
/// that commit.
pub async fn run(
    mut server: Server,
    shell: ShellConfig,
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
    let mut log = Some(LeaseLog::open(&shell.lease_file)?);
    let max_batch = shell.max_batch.clamp(1, MAX_BATCH);
    let mut buf = vec![0u8; MAX_REQUEST_LEN + 1];
    // Decided but not yet committed: records, the replies waiting for them, and how
    // many datagrams they came from.
    let mut persist: Vec<LeaseRecord> = Vec::new();
    let mut held: Vec<(ServerPort, Reply)> = Vec::new();
    let mut pending = 0usize;
    let mut immediate: Vec<(ServerPort, Reply)> = Vec::new();
    let mut commit: Option<Commit> = None;
    let mut events = String::new();
    tokio::pin!(shutdown);
    loop {
        let room = pending < max_batch;
        tokio::select! {
            () = &mut shutdown => {
                // Finish the commit on its way so its held replies are not lost.
                if let Some((task, replies)) = commit.take() {
                    let (_, r) = task.await.map_err(join_error(&shell.lease_file))?;
                    r?;
                    send_all(&s67, s4011.as_ref(), &replies).await;
                }
                return Ok(());
            }
            r = async {
                match &mut commit {
                    Some((task, _)) => task.await,
                    None => std::future::pending().await,
                }
            } => {
                let (l, result) = r.map_err(join_error(&shell.lease_file))?;
                log = Some(l);
                result?;
                if let Some((_, replies)) = commit.take() {
                    send_all(&s67, s4011.as_ref(), &replies).await;
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
        events.clear();
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
                let SocketAddr::V4(src) = src else { continue };
                let ingress = Ingress {
                    interface: shell.interface_address,
                    port,
                    src,
                };
                let data = buf.get(..n).unwrap_or_default();
                let out = server.handle(SystemTime::now(), data, ingress);
                for e in &out.events {
                    if !matches!(e, Event::Ignored { .. }) {
                        use std::fmt::Write as _;
                        let _ = writeln!(events, "dhcp: {e:?}");
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
        if !events.is_empty() {
            // One write per wake-up; a closed stderr must not stop the server.
            let _ = io::stderr().lock().write_all(events.as_bytes());
        }
        send_all(&s67, s4011.as_ref(), &immediate).await;
        if commit.is_none() {
            // Nothing waits for disk: the next batch starts here.
            pending = 0;
            if !persist.is_empty()
                && let Some(mut l) = log.take()
            {
                let records = std::mem::take(&mut persist);
                let task = tokio::task::spawn_blocking(move || {
                    let r = l.append(&records);
                    (l, r)
                });
                commit = Some((task, std::mem::take(&mut held)));
            }
        }
    }
}

fn join_error(path: &Path) -> impl Fn(tokio::task::JoinError) -> ShellError + '_ {
    move |e| ShellError::LeaseFile {
        path: path.into(),
        source: io::Error::other(e),
    }
}

async fn send_all(s67: &UdpSocket, s4011: Option<&UdpSocket>, replies: &[(ServerPort, Reply)]) {
    for (port, r) in replies {
        let sock = match (port, s4011) {
            (ServerPort::Pxe, Some(s)) => s,
            _ => s67,
        };
        // No ARP injection yet: a reply meant for a not-yet-configured client's new
        // address goes to the broadcast address instead (every client accepts that).
        let dest = if r.link_layer.is_some() {
            SocketAddrV4::new(Ipv4Addr::BROADCAST, DHCP_CLIENT_PORT)
        } else {
            r.dest
        };
        if let Err(source) = sock.send_to(&r.bytes, dest).await {
            // One unreachable client must not stop the server.
            eprintln!("dhcp: send to {dest} failed: {source}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{ClientKey, LeaseState};
    use std::time::Duration;

    fn rec(n: u8, state: LeaseState) -> LeaseRecord {
        LeaseRecord {
            address: Ipv4Addr::new(10, 0, 0, n),
            client: ClientKey::Hardware(vec![1, 2, 3, 4, 5, 6, n]),
            mac: Some(crate::Mac([2, 0, 0, 0, 0, n])),
            state,
            expires_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    #[test]
    fn lease_log_round_trips_and_tolerates_a_torn_tail() {
        let dir = std::env::temp_dir().join(format!("tugboot-dhcp-leases-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("leases.jsonl");
        let _ = std::fs::remove_file(&path);
        assert!(load_leases(&path).expect("missing is empty").is_empty());
        let mut log = LeaseLog::open(&path).expect("open");
        let recs = vec![rec(1, LeaseState::Bound), rec(2, LeaseState::Released)];
        log.append(&recs).expect("append");
        assert_eq!(load_leases(&path).expect("load"), recs);
        // A crash mid-append leaves a partial last line: ignored.
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"address\":\"10.0").expect("write");
        assert_eq!(load_leases(&path).expect("load"), recs);
        // Corruption elsewhere is an error.
        std::fs::write(&path, "garbage\n{}\n").expect("write");
        assert!(matches!(
            load_leases(&path),
            Err(ShellError::LeaseRecord { line: 1, .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
