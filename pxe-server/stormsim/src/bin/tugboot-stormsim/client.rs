//! The fleet on the wire: one task per machine, each running its firmware's sequence with the
//! sans-IO clients of the library; one relay agent per rack.
//!
//! Runs inside the clients' network namespace, where the racks' subnets are local addresses
//! (`ip route add local 10.100.0.0/14 dev lo`), so every machine sends from and receives on
//! the address DHCP gave it, and each rack's relay listens on its giaddr, port 67.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tugboot_stormsim::dhcp::{DhcpClient, DhcpRules, Lease, Template, relay_forward};
use tugboot_stormsim::family::{
    self, Family, GRUB_PROBES, Loader, PI4_BOOTLOADER_FILES, PI4_FIRMWARE_FILES, Phase,
};
use tugboot_stormsim::fleet::{Machine, relay_address};
use tugboot_stormsim::http::{self, Agent, Url};
use tugboot_stormsim::report::{MachineRecord, PhaseRecord};
use tugboot_stormsim::script::{self, Action, Ipxe, Vars};
use tugboot_stormsim::tftp::{
    Goal, ReadRequest, TftpClient, TftpFailure, TftpRules, To, Transferred,
};
use tugboot_stormsim::{Rng, fleet};

/// Which DHCP servers a rack's relay forwards to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Helpers {
    /// Every relay forwards to every server (redundant helper addresses).
    All,
    /// Rack r's relay forwards to server r mod n only (one server per segment).
    Split,
}

/// An artifact the machines should end up with (for `verify`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    pub size: u64,
    pub sha256: String,
}

/// Everything the client side needs, written by `storm` as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub machines: Vec<Machine>,
    pub dhcp_servers: Vec<Ipv4Addr>,
    pub helpers: Helpers,
    pub power_on_window_ms: u64,
    pub seed: u64,
    /// Boot attempts per machine (the firmware's own retry: reboot and netboot again).
    pub attempts: u32,
    /// Time between a failed attempt and the next (power cycle, POST).
    pub reboot_ms: u64,
    /// Machines not booted by then are recorded as failed.
    pub deadline_ms: u64,
    pub artifacts: Vec<Expected>,
    /// Hash every kernel and initrd received and compare with `artifacts`.
    pub verify: bool,
    pub rack_size: u32,
}

/// What the client run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Output {
    /// Unix time of the storm's time zero (ms), to line up events of the servers.
    pub epoch_unix_ms: f64,
    pub wall_ms: f64,
    pub records: Vec<MachineRecord>,
}

struct Relay {
    address: Ipv4Addr,
    sock: UdpSocket,
    servers: Vec<SocketAddr>,
    waiting: Mutex<HashMap<u32, mpsc::Sender<Vec<u8>>>>,
}

struct Ctx {
    plan: Plan,
    epoch: Instant,
    relays: Vec<Arc<Relay>>,
}

impl Ctx {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn ms(&self) -> f64 {
        self.now().as_secs_f64() * 1000.0
    }
}

thread_local! {
    /// Receive buffer for bodies: tasks on one worker run one at a time and never hold it
    /// across an await, so 10,000 downloads need no 10,000 buffers.
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; 256 * 1024]);
    /// The length argument of discarding reads: allocated, never written, so never faulted in.
    static DISCARD: RefCell<Vec<std::mem::MaybeUninit<u8>>> =
        RefCell::new(vec![std::mem::MaybeUninit::uninit(); DISCARD_LEN]);
}

/// Runs the whole fleet and returns its records.
pub async fn run(plan: Plan) -> Result<Output> {
    let epoch = Instant::now();
    let epoch_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let racks = fleet::racks(
        u32::try_from(plan.machines.len()).unwrap_or(u32::MAX),
        plan.rack_size,
    );
    let mut relays = Vec::new();
    for r in 0..racks {
        let address = relay_address(r);
        let sock = bind_udp(SocketAddrV4::new(address, 67))
            .with_context(|| format!("relay socket on {address}:67"))?;
        let servers: Vec<SocketAddr> = match plan.helpers {
            Helpers::All => plan.dhcp_servers.clone(),
            Helpers::Split => {
                let i = usize::try_from(r).unwrap_or(0) % plan.dhcp_servers.len().max(1);
                plan.dhcp_servers.get(i).copied().into_iter().collect()
            }
        }
        .into_iter()
        .map(|a| SocketAddr::from((a, 67)))
        .collect();
        relays.push(Arc::new(Relay {
            address,
            sock,
            servers,
            waiting: Mutex::new(HashMap::new()),
        }));
    }
    for relay in &relays {
        let relay = Arc::clone(relay);
        tokio::spawn(async move { relay_receive(relay).await });
    }
    let ctx = Arc::new(Ctx {
        plan,
        epoch,
        relays,
    });
    let mut rng = Rng::new(ctx.plan.seed);
    let mut tasks = Vec::new();
    for m in ctx.plan.machines.clone() {
        let power_on = Duration::from_millis(rng.below(ctx.plan.power_on_window_ms.max(1)));
        let tick = Duration::from_millis(rng.below(1000));
        let ctx = Arc::clone(&ctx);
        tasks.push(tokio::spawn(async move {
            let deadline = ctx.epoch + Duration::from_millis(ctx.plan.deadline_ms);
            let mut rec = Rec::new(&m, power_on);
            let run = machine(&ctx, &m, power_on, tick, &mut rec);
            if tokio::time::timeout_at(deadline, run).await.is_err() {
                rec.r.failure = Some("deadline: not booted in time".into());
                rec.r.booted_ms = None;
            }
            rec.r
        }));
    }
    let mut records = Vec::with_capacity(tasks.len());
    for t in tasks {
        records.push(t.await.context("machine task")?);
    }
    Ok(Output {
        epoch_unix_ms,
        wall_ms: ctx.ms(),
        records,
    })
}

fn bind_udp(addr: SocketAddrV4) -> Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // A rack's worth of replies can arrive at once.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::V4(addr).into())?;
    Ok(UdpSocket::from_std(s.into())?)
}

/// The relay's way back: replies to giaddr:67 go to the machine waiting for that xid.
async fn relay_receive(relay: Arc<Relay>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, _from)) = relay.sock.recv_from(&mut buf).await else {
            continue;
        };
        if n < 240 || buf[0] != 2 {
            continue;
        }
        let xid = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let tx = relay
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&xid)
            .cloned();
        if let Some(tx) = tx {
            let _ = tx.try_send(buf[..n].to_vec());
        }
    }
}

/// A machine's record under construction.
struct Rec {
    r: MachineRecord,
    attempt: u32,
}

impl Rec {
    fn new(m: &Machine, power_on: Duration) -> Self {
        Rec {
            r: MachineRecord {
                index: m.index,
                family: m.family,
                mac: m.mac_text(),
                power_on_ms: power_on.as_secs_f64() * 1000.0,
                attempts: 0,
                leases: Vec::new(),
                server: None,
                booted_ms: None,
                failure: None,
                verified: None,
                phases: Vec::new(),
            },
            attempt: 0,
        }
    }

    /// The record of `phase` in this attempt that is still going well, or a new one.
    fn begin(&mut self, phase: Phase, now_ms: f64) -> usize {
        if let Some(i) = self
            .r
            .phases
            .iter()
            .rposition(|p| p.phase == phase && p.attempt == self.attempt && p.ok)
        {
            return i;
        }
        self.r.phases.push(PhaseRecord {
            phase,
            attempt: self.attempt,
            start_ms: now_ms,
            end_ms: now_ms,
            ok: true,
            retries: 0,
            bytes: 0,
            error: None,
        });
        self.r.phases.len() - 1
    }

    fn end(&mut self, i: usize, now_ms: f64, retries: u32, bytes: u64, err: Option<String>) {
        let p = &mut self.r.phases[i];
        p.end_ms = now_ms;
        p.retries += retries;
        p.bytes += bytes;
        if let Some(e) = err {
            p.ok = false;
            p.error = Some(e);
        }
    }
}

type BootResult = std::result::Result<(), String>;

async fn machine(ctx: &Ctx, m: &Machine, power_on: Duration, tick: Duration, rec: &mut Rec) {
    tokio::time::sleep_until(ctx.epoch + power_on).await;
    for attempt in 1..=ctx.plan.attempts.max(1) {
        rec.attempt = attempt;
        rec.r.attempts = attempt;
        match boot(ctx, m, tick, rec).await {
            Ok(()) => {
                rec.r.booted_ms = Some(ctx.ms());
                rec.r.failure = None;
                return;
            }
            Err(e) => {
                rec.r.failure = Some(e);
                if attempt < ctx.plan.attempts {
                    tokio::time::sleep(Duration::from_millis(ctx.plan.reboot_ms)).await;
                }
            }
        }
    }
}

async fn boot(ctx: &Ctx, m: &Machine, tick: Duration, rec: &mut Rec) -> BootResult {
    let (d, r) = m.family.firmware_dhcp();
    let lease = dhcp(
        ctx,
        m,
        0,
        Phase::Dhcp,
        d,
        r,
        m.family.firmware_dhcp_rules(),
        tick,
        rec,
    )
    .await?;
    let ip = lease.address;
    match m.family.loader() {
        Loader::Ipxe => {
            let url = match m.family {
                Family::IpxeBios => boot_file(&lease)?,
                Family::UefiHttp => {
                    // EDK2 HTTP boot: the NBP from the URL in the offer, then iPXE.
                    let url = Url::parse(&boot_file(&lease)?).map_err(|e| format!("nbp: {e}"))?;
                    let mut conn = Http::new(ip);
                    let i = rec.begin(Phase::Nbp, ctx.ms());
                    let r = async {
                        conn.fetch(
                            Agent::Edk2,
                            "HEAD",
                            &url,
                            Body::Discard,
                            m.family.http_stall(),
                        )
                        .await?;
                        conn.fetch(
                            Agent::Edk2,
                            "GET",
                            &url,
                            Body::Discard,
                            m.family.http_stall(),
                        )
                        .await
                    }
                    .await;
                    phase_end_http(ctx, rec, i, &r, 0);
                    r.map_err(|e| format!("nbp: {e}"))?;
                    ipxe_round(ctx, m, tick, rec).await?
                }
                _ => {
                    let server = lease.next_server.ok_or("nbp: no next server")?;
                    let file = boot_file(&lease)?;
                    nbp_tftp(ctx, m, ip, server, &file, rec).await?;
                    ipxe_round(ctx, m, tick, rec).await?
                }
            };
            let ip = rec.r.leases.last().copied().unwrap_or(ip);
            ipxe(ctx, m, ip, &url, tick, rec).await
        }
        Loader::Grub => grub(ctx, m, &lease, rec).await,
        Loader::Pxelinux => uboot(ctx, m, &lease, rec).await,
        Loader::PiFirmware => pi4(ctx, m, &lease, rec).await,
    }
}

fn boot_file(lease: &Lease) -> std::result::Result<String, String> {
    lease
        .boot_file
        .clone()
        .ok_or_else(|| "dhcp: no boot file in the lease".to_owned())
}

/// iPXE's DHCP after the chainload; returns its boot file (the script URL).
async fn ipxe_round(
    ctx: &Ctx,
    m: &Machine,
    tick: Duration,
    rec: &mut Rec,
) -> std::result::Result<String, String> {
    let (d, r) = m
        .family
        .ipxe_dhcp()
        .ok_or("no iPXE round for this family")?;
    let lease = dhcp(
        ctx,
        m,
        1,
        Phase::Dhcp2,
        d,
        r,
        family::ipxe_dhcp_rules(),
        tick,
        rec,
    )
    .await?;
    boot_file(&lease)
}

#[allow(clippy::too_many_arguments)]
async fn dhcp(
    ctx: &Ctx,
    m: &Machine,
    round: u32,
    phase: Phase,
    discover: Template,
    request: Template,
    rules: DhcpRules,
    tick: Duration,
    rec: &mut Rec,
) -> std::result::Result<Lease, String> {
    let relay = &ctx.relays[usize::try_from(m.rack).unwrap_or(0)];
    let xid = m.xid(rec.attempt, round);
    let (tx, mut rx) = mpsc::channel(16);
    relay
        .waiting
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(xid, tx);
    let i = rec.begin(phase, ctx.ms());
    let mut c = DhcpClient::start(rules, discover, request, m.identity(), xid, ctx.now(), tick);
    let circuit = format!("port{}", m.index % ctx.plan.rack_size.max(1));
    let remote = format!("rack{}", m.rack);
    let result = loop {
        while let Some(p) = c.poll_transmit() {
            if let Ok(fwd) = relay_forward(&p, relay.address, circuit.as_bytes(), remote.as_bytes())
            {
                for s in &relay.servers {
                    let _ = relay.sock.send_to(&fwd, s).await;
                }
            }
        }
        if let Some(r) = c.result() {
            break r.clone();
        }
        let Some(at) = c.poll_timeout() else {
            break Err(tugboot_stormsim::dhcp::DhcpFailure::NoOffer(0));
        };
        tokio::select! {
            got = rx.recv() => if let Some(b) = got { c.handle_datagram(ctx.now(), &b) },
            () = tokio::time::sleep_until(ctx.epoch + at) => c.handle_timeout(ctx.now()),
        }
    };
    relay
        .waiting
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&xid);
    match result {
        Ok(lease) => {
            rec.end(i, ctx.ms(), c.retransmissions(), 0, None);
            rec.r.leases.push(lease.address);
            rec.r.server = lease.server_id;
            Ok(lease)
        }
        Err(e) => {
            let msg = format!("{}: {e}", phase.name());
            rec.end(i, ctx.ms(), c.retransmissions(), 0, Some(msg.clone()));
            Err(msg)
        }
    }
}

/// One TFTP read from `server`; `Ok` also for "not found" when the caller allows it.
async fn tftp(
    ctx: &Ctx,
    ip: Ipv4Addr,
    server: Ipv4Addr,
    req: ReadRequest,
    rules: TftpRules,
) -> (std::result::Result<Transferred, TftpFailure>, u32) {
    let sock = match bind_udp(SocketAddrV4::new(ip, 0)) {
        Ok(s) => s,
        Err(e) => return (Err(TftpFailure::Protocol(format!("socket: {e}"))), 0),
    };
    let listener = SocketAddr::from((server, 69));
    let mut tid: Option<SocketAddr> = None;
    let mut c = TftpClient::start(req, rules, ctx.now());
    let mut buf = vec![0u8; 65_536];
    loop {
        while let Some((packet, to)) = c.poll_transmit() {
            let dest = match to {
                To::Listener => listener,
                To::Transfer => tid.unwrap_or(listener),
            };
            let _ = sock.send_to(&packet, dest).await;
        }
        if let Some(r) = c.result() {
            return (r.clone(), c.retransmissions());
        }
        let Some(at) = c.poll_timeout() else {
            return (Err(TftpFailure::TimedOut(0)), c.retransmissions());
        };
        tokio::select! {
            got = sock.recv_from(&mut buf) => {
                let Ok((n, from)) = got else { continue };
                if from.ip() != std::net::IpAddr::V4(server) {
                    continue;
                }
                match tid {
                    None => tid = Some(from),
                    Some(t) if t != from => continue,
                    Some(_) => {}
                }
                c.handle_datagram(ctx.now(), &buf[..n]);
            }
            () = tokio::time::sleep_until(ctx.epoch + at) => c.handle_timeout(ctx.now()),
        }
    }
}

/// The NBP: the firmware's size probe (if it makes one), then the download.
async fn nbp_tftp(
    ctx: &Ctx,
    m: &Machine,
    ip: Ipv4Addr,
    server: Ipv4Addr,
    file: &str,
    rec: &mut Rec,
) -> BootResult {
    let i = rec.begin(Phase::Nbp, ctx.ms());
    let rules = m.family.firmware_tftp_rules();
    let mut retries = 0;
    if let Some(probe) = m.family.nbp_probe(file) {
        let (r, n) = tftp(ctx, ip, server, probe, rules.clone()).await;
        retries += n;
        if let Err(e) = r {
            let msg = format!("nbp (size probe): {e}");
            rec.end(i, ctx.ms(), retries, 0, Some(msg.clone()));
            return Err(msg);
        }
    }
    let req = ReadRequest {
        path: file.into(),
        options: m.family.tftp_options(false),
        goal: Goal::Download { keep: 0 },
    };
    let (r, n) = tftp(ctx, ip, server, req, rules).await;
    retries += n;
    match r {
        Ok(t) => {
            rec.end(i, ctx.ms(), retries, t.bytes, None);
            Ok(())
        }
        Err(e) => {
            let msg = format!("nbp: {e}");
            rec.end(i, ctx.ms(), retries, 0, Some(msg.clone()));
            Err(msg)
        }
    }
}

/// What to do with a response body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Body {
    Keep(usize),
    Discard,
    Hash,
}

struct Got {
    status: u16,
    bytes: u64,
    kept: Vec<u8>,
    sha256: Option<[u8; 32]>,
    reconnects: u32,
}

/// iPXE's HTTP: one kept-alive connection, reopened when the server closed it.
struct Http {
    ip: Ipv4Addr,
    conn: Option<(SocketAddr, TcpStream)>,
}

impl Http {
    fn new(ip: Ipv4Addr) -> Self {
        Http { ip, conn: None }
    }

    async fn connect(&self, server: SocketAddr, stall: Duration) -> std::io::Result<TcpStream> {
        let s = TcpSocket::new_v4()?;
        s.bind(SocketAddr::from((self.ip, 0)))?;
        let stream = tokio::time::timeout(stall, s.connect(server))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn fetch(
        &mut self,
        agent: Agent,
        method: &str,
        url: &Url,
        body: Body,
        stall: Duration,
    ) -> std::result::Result<Got, String> {
        let server: SocketAddr = format!("{}:{}", url.host, url.port)
            .parse()
            .map_err(|_| format!("{}: not an address", url.host))?;
        let request = http::request(agent, method, url);
        let mut reconnects = 0;
        for round in 0..3 {
            let reused = matches!(&self.conn, Some((s, _)) if *s == server);
            if !reused {
                match self.connect(server, stall).await {
                    Ok(s) => self.conn = Some((server, s)),
                    Err(e) => {
                        reconnects += 1;
                        if round == 2 {
                            return Err(format!("connect: {e}"));
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
            let Some((_, stream)) = self.conn.as_mut() else {
                continue;
            };
            let attempt = exchange(stream, &request, method == "HEAD", body, stall).await;
            match attempt {
                Ok((mut got, close)) => {
                    if close {
                        self.conn = None;
                    }
                    got.reconnects = reconnects;
                    return Ok(got);
                }
                // A kept-alive connection the server had closed: open a new one.
                Err(Exchange::Closed) if reused => {
                    self.conn = None;
                    reconnects += 1;
                }
                Err(e) => {
                    self.conn = None;
                    return Err(e.to_string());
                }
            }
        }
        Err("connection closed repeatedly".into())
    }
}

#[derive(Debug)]
enum Exchange {
    /// Closed before any byte of the answer.
    Closed,
    Failed(String),
}

impl std::fmt::Display for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exchange::Closed => f.write_str("connection closed before the response"),
            Exchange::Failed(e) => f.write_str(e),
        }
    }
}

/// Reads what is there into the thread's buffer and hands it to `f`; 0 = end of stream.
async fn read_some(
    stream: &TcpStream,
    stall: Duration,
    mut f: impl FnMut(&[u8]),
) -> std::result::Result<usize, Exchange> {
    when_readable(stream, stall, || {
        BUF.with_borrow_mut(|buf| {
            let n = stream.try_read(buf)?;
            f(&buf[..n]);
            Ok(n)
        })
    })
    .await
}

/// Runs the non-blocking read `op` once `stream` is readable, again after a spurious wakeup
/// (`WouldBlock`); fails after `stall` without data.
async fn when_readable<R>(
    stream: &TcpStream,
    stall: Duration,
    mut op: impl FnMut() -> std::io::Result<R>,
) -> std::result::Result<R, Exchange> {
    loop {
        tokio::time::timeout(stall, stream.readable())
            .await
            .map_err(|_| Exchange::Failed(format!("no data for {stall:?}")))?
            .map_err(|e| Exchange::Failed(e.to_string()))?;
        match op() {
            Ok(r) => return Ok(r),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Exchange::Failed(e.to_string())),
        }
    }
}

/// Linux's `MSG_TRUNC` for a TCP `recv`: the kernel drops up to `len` bytes from the receive
/// queue without copying them out (tcp(7)).
const MSG_TRUNC: std::ffi::c_int = 0x20;

/// Size of one discarding read (the buffer is never written: only its length matters).
const DISCARD_LEN: usize = 4 << 20;

/// Drops up to `max` bytes of a body the simulated machine does not look at, without copying
/// them: real machines write their kernel into their own memory on their own CPU, and a copy
/// into a scratch buffer here only took CPU from the servers under test (both targets alike).
async fn discard_some(
    stream: &TcpStream,
    stall: Duration,
    max: u64,
) -> std::result::Result<usize, Exchange> {
    let len = usize::try_from(max).unwrap_or(usize::MAX).min(DISCARD_LEN);
    when_readable(stream, stall, || {
        DISCARD.with_borrow_mut(|buf| {
            stream.try_io(tokio::io::Interest::READABLE, || {
                socket2::SockRef::from(stream).recv_with_flags(&mut buf[..len], MSG_TRUNC)
            })
        })
    })
    .await
}

async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    head_only: bool,
    body: Body,
    stall: Duration,
) -> std::result::Result<(Got, bool), Exchange> {
    if stream.write_all(request).await.is_err() {
        return Err(Exchange::Closed);
    }
    let mut head_buf: Vec<u8> = Vec::new();
    let (head, mut rest) = loop {
        let n = read_some(stream, stall, |b| head_buf.extend_from_slice(b)).await;
        match n {
            Ok(0) | Err(Exchange::Closed) if head_buf.is_empty() => return Err(Exchange::Closed),
            Ok(0) => return Err(Exchange::Failed("closed inside the response head".into())),
            Err(Exchange::Failed(e)) if head_buf.is_empty() && e.contains("reset") => {
                return Err(Exchange::Closed);
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        match http::parse_head(&head_buf) {
            Ok(Some((h, used))) => break (h, head_buf.split_off(used)),
            Ok(None) => {}
            Err(e) => return Err(Exchange::Failed(e.to_string())),
        }
    };
    let mut got = Got {
        status: head.status,
        bytes: 0,
        kept: Vec::new(),
        sha256: None,
        reconnects: 0,
    };
    if head_only || head.status == 304 || head.status == 204 {
        return Ok((got, head.close));
    }
    if head.chunked {
        return Err(Exchange::Failed(
            "chunked bodies are not expected here".into(),
        ));
    }
    let mut hasher = (body == Body::Hash).then(Sha256::new);
    let mut take = |b: &[u8], got: &mut Got| {
        got.bytes += b.len() as u64;
        if let Body::Keep(max) = body {
            let room = max.saturating_sub(got.kept.len());
            got.kept.extend_from_slice(&b[..b.len().min(room)]);
        }
        if let Some(h) = hasher.as_mut() {
            h.update(b);
        }
    };
    match head.content_length {
        Some(len) => {
            if rest.len() as u64 > len {
                rest.truncate(usize::try_from(len).unwrap_or(usize::MAX));
            }
            take(&rest, &mut got);
            while body == Body::Discard && got.bytes < len {
                match discard_some(stream, stall, len - got.bytes).await? {
                    0 => {
                        return Err(Exchange::Failed(format!(
                            "closed after {} of {len} body bytes",
                            got.bytes
                        )));
                    }
                    n => got.bytes += n as u64,
                }
            }
            while got.bytes < len {
                let want = len - got.bytes;
                let mut extra = 0u64;
                let n = read_some(stream, stall, |b| {
                    let b = &b[..b.len().min(usize::try_from(want).unwrap_or(usize::MAX))];
                    extra = b.len() as u64;
                    take(b, &mut got);
                })
                .await?;
                if n == 0 || extra == 0 {
                    return Err(Exchange::Failed(format!(
                        "closed after {} of {len} body bytes",
                        got.bytes
                    )));
                }
            }
        }
        None => {
            take(&rest, &mut got);
            while read_some(stream, stall, |b| take(b, &mut got)).await? > 0 {}
            got.sha256 = hasher.map(|h| h.finalize().into());
            return Ok((got, true));
        }
    }
    got.sha256 = hasher.map(|h| h.finalize().into());
    Ok((got, head.close))
}

fn phase_end_http(
    ctx: &Ctx,
    rec: &mut Rec,
    i: usize,
    r: &std::result::Result<Got, String>,
    extra_retries: u32,
) {
    match r {
        Ok(g) if g.status < 400 => {
            rec.end(i, ctx.ms(), g.reconnects + extra_retries, g.bytes, None);
        }
        Ok(g) => rec.end(
            i,
            ctx.ms(),
            g.reconnects + extra_retries,
            g.bytes,
            Some(format!(
                "{}: HTTP {}",
                rec.r.phases[i].phase.name(),
                g.status
            )),
        ),
        Err(e) => rec.end(
            i,
            ctx.ms(),
            extra_retries,
            0,
            Some(format!("{}: {e}", rec.r.phases[i].phase.name())),
        ),
    }
}

fn verify(ctx: &Ctx, rec: &mut Rec, size: u64, digest: Option<[u8; 32]>) -> BootResult {
    if !ctx.plan.verify {
        return Ok(());
    }
    let Some(d) = digest else {
        return Ok(());
    };
    let hex = hex::encode(d);
    let ok = ctx
        .plan
        .artifacts
        .iter()
        .any(|a| a.size == size && a.sha256 == hex);
    rec.r.verified = Some(rec.r.verified.unwrap_or(true) && ok);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "verify: {size} bytes with SHA-256 {hex} is no published artifact"
        ))
    }
}

/// iPXE from its first script URL to `boot`.
async fn ipxe(
    ctx: &Ctx,
    m: &Machine,
    ip: Ipv4Addr,
    first: &str,
    tick: Duration,
    rec: &mut Rec,
) -> BootResult {
    let (buildarch, platform) = m.family.ipxe_arch();
    let mut vars = Vars {
        mac: m.mac,
        uuid: m.uuid,
        serial: format!("TBST{:06}", m.index),
        buildarch,
        platform,
        ip: Some(ip),
    };
    let stall = m.family.http_stall();
    let mut conn = Http::new(ip);
    let mut base = Url::parse(first).map_err(|e| format!("config: {e}"))?;
    let mut script: Option<Ipxe> = None;
    let mut next = Some(Action::Chain(first.to_owned()));
    let mut last = true;
    let mut kernel = false;
    let mut retries = 0;
    loop {
        let action = match next.take() {
            Some(a) => a,
            None => script
                .as_mut()
                .ok_or("config: no script")?
                .next(&vars, last)
                .map_err(|e| format!("config: {e}"))?,
        };
        if !last {
            retries += 1;
        }
        match action {
            Action::Chain(u) => {
                let url = base.join(&u).map_err(|e| format!("config: {e}"))?;
                let i = rec.begin(Phase::Config, ctx.ms());
                let r = conn
                    .fetch(
                        Agent::Ipxe,
                        "GET",
                        &url,
                        Body::Keep(script::MAX_SCRIPT),
                        stall,
                    )
                    .await;
                phase_end_http(ctx, rec, i, &r, std::mem::take(&mut retries));
                last = false;
                if let Ok(g) = r
                    && g.status == 200
                {
                    match Ipxe::parse(&String::from_utf8_lossy(&g.kept)) {
                        Ok(s) => {
                            script = Some(s);
                            base = url;
                            last = true;
                        }
                        Err(e) => return Err(format!("config: {e}")),
                    }
                }
                if !last && script.is_none() {
                    return Err(rec.r.phases[i]
                        .error
                        .clone()
                        .unwrap_or_else(|| "config: failed".into()));
                }
            }
            Action::Kernel(ref u) | Action::Initrd(ref u) => {
                let phase = if matches!(action, Action::Kernel(_)) {
                    Phase::Kernel
                } else {
                    Phase::Initrd
                };
                let url = base.join(u).map_err(|e| format!("{}: {e}", phase.name()))?;
                let i = rec.begin(phase, ctx.ms());
                let mode = if ctx.plan.verify {
                    Body::Hash
                } else {
                    Body::Discard
                };
                let r = conn.fetch(Agent::Ipxe, "GET", &url, mode, stall).await;
                phase_end_http(ctx, rec, i, &r, std::mem::take(&mut retries));
                last = matches!(&r, Ok(g) if g.status == 200);
                if last {
                    if let Ok(g) = &r {
                        verify(ctx, rec, g.bytes, g.sha256)?;
                    }
                    if phase == Phase::Kernel {
                        kernel = true;
                    }
                }
            }
            Action::Dhcp => {
                let (d, r) = m
                    .family
                    .ipxe_dhcp()
                    .or_else(|| Some(m.family.firmware_dhcp()))
                    .ok_or("no DHCP")?;
                let lease = dhcp(
                    ctx,
                    m,
                    2,
                    Phase::Dhcp2,
                    d,
                    r,
                    family::ipxe_dhcp_rules(),
                    tick,
                    rec,
                )
                .await;
                last = lease.is_ok();
                if let Ok(l) = lease {
                    vars.ip = Some(l.address);
                    conn = Http::new(l.address);
                }
            }
            Action::Sleep(d) => {
                tokio::time::sleep(d).await;
                last = true;
            }
            Action::Boot => {
                return if kernel {
                    Ok(())
                } else {
                    Err("config: boot without a kernel".into())
                };
            }
            Action::Exit(code) => return Err(format!("config: script exited ({code})")),
        }
    }
}

/// GRUB from AAVMF's PXE: NBP, module-list probes, `grub.cfg` (and the file it dispatches
/// to), kernel, initrd — all TFTP, with GRUB's options and timers.
async fn grub(ctx: &Ctx, m: &Machine, lease: &Lease, rec: &mut Rec) -> BootResult {
    let ip = lease.address;
    let server = lease.next_server.ok_or("nbp: no next server")?;
    nbp_tftp(ctx, m, ip, server, &boot_file(lease)?, rec).await?;
    let rules = m.family.loader_tftp_rules();
    let opts = m.family.tftp_options(true);
    let i = rec.begin(Phase::Config, ctx.ms());
    let mut retries = 0;
    for probe in GRUB_PROBES {
        let req = ReadRequest {
            path: (*probe).into(),
            options: opts.clone(),
            goal: Goal::Download { keep: 0 },
        };
        let (r, n) = tftp(ctx, ip, server, req, rules.clone()).await;
        retries += n;
        if let Err(
            e @ (TftpFailure::TimedOut(_) | TftpFailure::Unanswered(_) | TftpFailure::Protocol(_)),
        ) = r
        {
            let msg = format!("config: {e}");
            rec.end(i, ctx.ms(), retries, 0, Some(msg.clone()));
            return Err(msg);
        }
    }
    let mut path = "/grub/grub.cfg".to_owned();
    let mut cfg = script::GrubConfig::default();
    for _ in 0..3 {
        let req = ReadRequest {
            path: path.clone(),
            options: opts.clone(),
            goal: Goal::Download {
                keep: script::MAX_SCRIPT,
            },
        };
        let (r, n) = tftp(ctx, ip, server, req, rules.clone()).await;
        retries += n;
        let t = r.map_err(|e| format!("config: {e}"));
        let t = match t {
            Ok(t) => t,
            Err(e) => {
                rec.end(i, ctx.ms(), retries, 0, Some(e.clone()));
                return Err(e);
            }
        };
        cfg = script::grub(&String::from_utf8_lossy(&t.content), m.mac);
        match cfg.configfile.take() {
            Some(next) if cfg.linux.is_none() => path = next,
            _ => break,
        }
    }
    rec.end(i, ctx.ms(), retries, 0, None);
    let kernel = cfg.linux.ok_or("config: grub.cfg loads no kernel")?;
    tftp_artifact(
        ctx,
        m,
        ip,
        server,
        &kernel,
        Phase::Kernel,
        rules.clone(),
        &opts,
        rec,
    )
    .await?;
    for initrd in &cfg.initrd {
        tftp_artifact(
            ctx,
            m,
            ip,
            server,
            initrd,
            Phase::Initrd,
            rules.clone(),
            &opts,
            rec,
        )
        .await?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn tftp_artifact(
    ctx: &Ctx,
    _m: &Machine,
    ip: Ipv4Addr,
    server: Ipv4Addr,
    path: &str,
    phase: Phase,
    rules: TftpRules,
    opts: &[(String, String)],
    rec: &mut Rec,
) -> BootResult {
    let i = rec.begin(phase, ctx.ms());
    let keep = if ctx.plan.verify { 256 << 20 } else { 0 };
    let req = ReadRequest {
        path: path.into(),
        options: opts.to_vec(),
        goal: Goal::Download { keep },
    };
    let (r, n) = tftp(ctx, ip, server, req, rules).await;
    match r {
        Ok(t) => {
            rec.end(i, ctx.ms(), n, t.bytes, None);
            if ctx.plan.verify {
                let d: [u8; 32] = Sha256::digest(&t.content).into();
                verify(ctx, rec, t.bytes, Some(d))?;
            }
            Ok(())
        }
        Err(e) => {
            let msg = format!("{}: {e}", phase.name());
            rec.end(i, ctx.ms(), n, 0, Some(msg.clone()));
            Err(msg)
        }
    }
}

/// U-Boot's distro boot: the DHCP boot file (a script running `pxe get; pxe boot`), the
/// PXELINUX file by MAC, address and default, then initrd and kernel.
async fn uboot(ctx: &Ctx, m: &Machine, lease: &Lease, rec: &mut Rec) -> BootResult {
    let ip = lease.address;
    let server = lease.next_server.ok_or("nbp: no next server")?;
    let rules = m.family.firmware_tftp_rules();
    let opts = m.family.tftp_options(false);
    let i = rec.begin(Phase::Nbp, ctx.ms());
    let req = ReadRequest {
        path: boot_file(lease)?,
        options: opts.clone(),
        goal: Goal::Download { keep: 64 },
    };
    let (r, n) = tftp(ctx, ip, server, req, rules.clone()).await;
    match r {
        Ok(t) if t.content.starts_with(&[0x27, 0x05, 0x19, 0x56]) => {
            rec.end(i, ctx.ms(), n, t.bytes, None);
        }
        Ok(_) => {
            let msg = "nbp: the boot file is no U-Boot image".to_owned();
            rec.end(i, ctx.ms(), n, 0, Some(msg.clone()));
            return Err(msg);
        }
        Err(e) => {
            let msg = format!("nbp: {e}");
            rec.end(i, ctx.ms(), n, 0, Some(msg.clone()));
            return Err(msg);
        }
    }
    let i = rec.begin(Phase::Config, ctx.ms());
    let mut retries = 0;
    let mut label = None;
    for name in script::pxelinux_candidates(m.mac, ip) {
        let req = ReadRequest {
            path: name,
            options: opts.clone(),
            goal: Goal::Download {
                keep: script::MAX_SCRIPT,
            },
        };
        let (r, n) = tftp(ctx, ip, server, req, rules.clone()).await;
        retries += n;
        match r {
            Ok(t) => {
                label = Some(script::pxelinux(&String::from_utf8_lossy(&t.content)));
                break;
            }
            Err(TftpFailure::NotFound(_)) => {}
            Err(e) => {
                let msg = format!("config: {e}");
                rec.end(i, ctx.ms(), retries, 0, Some(msg.clone()));
                return Err(msg);
            }
        }
    }
    let Some(label) = label else {
        let msg = "config: no PXELINUX file found".to_owned();
        rec.end(i, ctx.ms(), retries, 0, Some(msg.clone()));
        return Err(msg);
    };
    rec.end(i, ctx.ms(), retries, 0, None);
    // U-Boot's label_boot loads the initrd before the kernel.
    if let Some(initrd) = &label.initrd {
        tftp_artifact(
            ctx,
            m,
            ip,
            server,
            initrd,
            Phase::Initrd,
            rules.clone(),
            &opts,
            rec,
        )
        .await?;
    }
    let kernel = label.kernel.ok_or("config: the label has no kernel")?;
    tftp_artifact(
        ctx,
        m,
        ip,
        server,
        &kernel,
        Phase::Kernel,
        rules,
        &opts,
        rec,
    )
    .await
}

/// The Pi 4: the prefix probe, the bootloader's files, the GPU firmware's files, then the
/// kernel and initramfs its `config.txt` names.
async fn pi4(ctx: &Ctx, m: &Machine, lease: &Lease, rec: &mut Rec) -> BootResult {
    let ip = lease.address;
    let server = lease.next_server.ok_or("nbp: no next server")?;
    let rules = m.family.firmware_tftp_rules();
    let opts = m.family.tftp_options(false);
    let serial = m.pi_prefix().unwrap_or_default();
    let i = rec.begin(Phase::Nbp, ctx.ms());
    let mut retries = 0;
    let mut bytes = 0;
    // Prefix: `<serial>/` if start4.elf or start.elf is there, else the root.
    let mut prefix = String::new();
    for probe in ["start4.elf", "start.elf"] {
        let req = ReadRequest {
            path: format!("{serial}/{probe}"),
            options: opts.clone(),
            goal: Goal::FirstBlock,
        };
        let (r, n) = tftp(ctx, ip, server, req, rules.clone()).await;
        retries += n;
        match r {
            Ok(_) => {
                prefix = format!("{serial}/");
                break;
            }
            Err(TftpFailure::NotFound(_)) => {}
            Err(e) => {
                let msg = format!("nbp: {e}");
                rec.end(i, ctx.ms(), retries, 0, Some(msg.clone()));
                return Err(msg);
            }
        }
    }
    let mut config = Vec::new();
    for (phase, files) in [
        (Phase::Nbp, PI4_BOOTLOADER_FILES),
        (Phase::Config, PI4_FIRMWARE_FILES),
    ] {
        let i = rec.begin(phase, ctx.ms());
        for (name, required) in files {
            let req = ReadRequest {
                path: format!("{prefix}{name}"),
                options: opts.clone(),
                goal: Goal::Download {
                    keep: script::MAX_SCRIPT,
                },
            };
            let (r, n) = tftp(ctx, ip, server, req, rules.clone()).await;
            retries += n;
            match r {
                Ok(t) => {
                    bytes += t.bytes;
                    if *name == "config.txt" {
                        config = t.content;
                    }
                }
                Err(TftpFailure::NotFound(_)) if !required => {}
                Err(e) => {
                    let msg = format!("{}: {name}: {e}", phase.name());
                    rec.end(i, ctx.ms(), retries, bytes, Some(msg.clone()));
                    return Err(msg);
                }
            }
        }
        rec.end(
            i,
            ctx.ms(),
            std::mem::take(&mut retries),
            std::mem::take(&mut bytes),
            None,
        );
    }
    let cfg = script::pi_config(&String::from_utf8_lossy(&config));
    tftp_artifact(
        ctx,
        m,
        ip,
        server,
        &format!("{prefix}{}", cfg.kernel),
        Phase::Kernel,
        rules.clone(),
        &opts,
        rec,
    )
    .await?;
    if let Some(initrd) = cfg.initramfs {
        tftp_artifact(
            ctx,
            m,
            ip,
            server,
            &format!("{prefix}{initrd}"),
            Phase::Initrd,
            rules,
            &opts,
            rec,
        )
        .await?;
    }
    Ok(())
}
