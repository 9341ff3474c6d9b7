//! TFTP storm: N concurrent clients each download one file from any TFTP server, verify every
//! byte (SHA-256), and report completion, latency percentiles, aggregate throughput and the
//! server's peak memory.
//!
//! ```text
//! # against any server (tugboot serve, dnsmasq, tftpd-hpa, ...):
//! cargo run --release -p tugboot-tftp --example tftp_storm -- \
//!     --server 192.0.2.1:69 --file <remote name> --reference <local copy> \
//!     --clients 200 --blksize 1468 --windowsize 16 --pid <server pid>
//!
//! # side by side on this machine (root: private network namespace), 200 clients, 64 MiB:
//! cargo run --release -p tugboot-tftp --example tftp_storm -- --side-by-side
//! ```
//!
//! The clients are built in (tokio tasks with their own TFTP client: RFC 1350 + options,
//! RFC 7440 windows with the ACK-on-gap rule, block-number rollover, retransmission on
//! timeout), so 200 of them cost no process each and can hash as they receive. `--bind` and
//! `--addresses` spread the clients over consecutive source addresses, as a fleet of machines
//! would be (tugboot caps transfers per client address).
//!
//! Memory is read from `/proc/<pid>`: `VmHWM` (peak RSS of that process since it started) and,
//! sampled every 100 ms during the storm, the RSS summed over the process and its descendants
//! (tftpd-hpa forks a process per transfer). Prints a Markdown table; no assertions.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use sha2::{Digest, Sha256};
use tokio::net::UdpSocket;
use tugboot_tftp::{FileProvider, Mode, Options, Provided, Repr, Request, RequestKind};

const NETNS_ENV: &str = "TUGBOOT_TFTP_STORM_NETNS";

#[derive(Debug, Clone, Parser)]
#[command(about = "N concurrent TFTP downloads against any server, verified and timed")]
struct Args {
    /// TFTP server address.
    #[arg(long, default_value = "127.0.0.1:69")]
    server: SocketAddr,
    /// Remote file name.
    #[arg(long)]
    file: Option<String>,
    /// Expected SHA-256 (hex) of the file.
    #[arg(long)]
    sha256: Option<String>,
    /// Local copy of the file; its SHA-256 is the expected digest.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// `blksize` option (512 sends none).
    #[arg(long, default_value_t = 1468)]
    blksize: u16,
    /// `windowsize` option (1 sends none).
    #[arg(long, default_value_t = 16)]
    windowsize: u16,
    /// Server process whose memory to report.
    #[arg(long)]
    pid: Option<u32>,
    /// First source address of the clients.
    #[arg(long, default_value = "0.0.0.0")]
    bind: IpAddr,
    /// Spread the clients over this many consecutive source addresses (IPv4).
    #[arg(long, default_value_t = 1)]
    addresses: u32,
    /// Retransmission timeout of the clients, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Retransmissions without progress before a client gives up.
    #[arg(long, default_value_t = 10)]
    retries: u32,
    /// Name of the server in the table.
    #[arg(long, default_value = "server")]
    label: String,
    /// Start tugboot, dnsmasq and tftpd-hpa here (in a private network namespace, needs root)
    /// and storm each in turn.
    #[arg(long)]
    side_by_side: bool,
    /// File size for --side-by-side.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    size: u64,
    /// Run tugboot's example server instead: LISTEN ROOT [NAME=PATH ...], each NAME streamed
    /// from PATH through the file provider (what --side-by-side starts).
    #[arg(long, num_args = 2.., value_names = ["LISTEN", "ROOT"])]
    serve: Option<Vec<String>>,
    /// With --serve (and --side-by-side): the server's buffer budget in bytes (default: the
    /// crate's default).
    #[arg(long)]
    buffer_budget: Option<usize>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(serve_args) = &args.serve {
        return serve(serve_args, args.buffer_budget);
    }
    if args.side_by_side {
        if std::env::var_os(NETNS_ENV).is_none() {
            let all: Vec<String> = std::env::args().collect();
            let status = Command::new("unshare")
                .arg("--net")
                .arg("--")
                .args(&all)
                .env(NETNS_ENV, "1")
                .status()
                .context("run unshare (--side-by-side needs root for a network namespace)")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        return side_by_side(&args);
    }
    let file = args.file.clone().context("--file is required")?;
    let expected = expected_digest(&args)?;
    let report = storm(&args, &file, expected, args.pid)?;
    print_header();
    report.print_row(&args.label, &args);
    report.print_failures();
    Ok(())
}

/// The tugboot server of `--side-by-side` (and a handy example of a streaming provider).
struct Streamed {
    files: BTreeMap<String, Provided>,
}

impl FileProvider for Streamed {
    fn lookup(&self, _peer: SocketAddr, path: &str) -> Option<Provided> {
        self.files.get(path).cloned()
    }
}

fn serve(args: &[String], buffer_budget: Option<usize>) -> Result<()> {
    let listen: SocketAddr = args[0].parse().context("LISTEN")?;
    let root = &args[1];
    let mut files = BTreeMap::new();
    for spec in &args[2..] {
        let (name, path) = spec.split_once('=').context("NAME=PATH")?;
        // The size is fixed here, once: lookups stay free of file I/O.
        let size = std::fs::metadata(path)
            .with_context(|| path.to_owned())?
            .len();
        files.insert(name.to_owned(), Provided::file(path, size));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut config = tugboot_tftp::ServerConfig::new(listen, root);
        if let Some(b) = buffer_budget {
            config.buffer_budget = b;
        }
        let server = tugboot_tftp::Server::bind(config).await?;
        let server = server.with_provider(Arc::new(Streamed { files }));
        server
            .run(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}

fn expected_digest(args: &Args) -> Result<[u8; 32]> {
    match (&args.sha256, &args.reference) {
        (Some(hex_digest), None) => {
            let v = hex::decode(hex_digest.trim()).context("--sha256: not hex")?;
            v.try_into()
                .map_err(|_| anyhow::anyhow!("--sha256: not 32 bytes"))
        }
        (None, Some(path)) => sha256_file(path),
        _ => bail!("give exactly one of --sha256 and --reference"),
    }
}

fn sha256_file(path: &Path) -> Result<[u8; 32]> {
    let mut f = std::fs::File::open(path).with_context(|| path.display().to_string())?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// One client's result.
#[derive(Debug)]
enum ClientResult {
    Done {
        secs: f64,
        bytes: u64,
        identical: bool,
    },
    Failed(String),
}

struct Report {
    results: Vec<ClientResult>,
    wall: f64,
    vm_hwm_kib: Option<u64>,
    tree_peak_kib: Option<u64>,
}

fn print_header() {
    println!(
        "| server | blksize/window asked | completed | failed | identical | total s | p50 s | p95 s | p99 s | max s | aggregate MiB/s | server VmHWM MiB | server tree peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "p in 0..=1 times a slice length: a small non-negative index"
    )]
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0))
}

impl Report {
    fn print_row(&self, label: &str, args: &Args) {
        let mut secs: Vec<f64> = Vec::new();
        let (mut identical, mut bytes) = (0, 0u64);
        for r in &self.results {
            if let ClientResult::Done {
                secs: s,
                bytes: b,
                identical: same,
            } = r
            {
                secs.push(*s);
                bytes += b;
                identical += usize::from(*same);
            }
        }
        secs.sort_by(f64::total_cmp);
        let n = self.results.len();
        println!(
            "| {label} | {}/{} | {}/{n} | {} | {identical}/{n} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {} |",
            args.blksize,
            args.windowsize,
            secs.len(),
            n - secs.len(),
            self.wall,
            percentile(&secs, 0.50),
            percentile(&secs, 0.95),
            percentile(&secs, 0.99),
            secs.last().copied().unwrap_or(f64::NAN),
            bytes as f64 / (1024.0 * 1024.0) / self.wall,
            mib(self.vm_hwm_kib),
            mib(self.tree_peak_kib),
        );
    }

    fn print_failures(&self) {
        let mut why: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &self.results {
            if let ClientResult::Failed(e) = r {
                *why.entry(e.as_str()).or_default() += 1;
            }
        }
        for (e, n) in why {
            println!("  - {n} client(s) failed: {e}");
        }
    }
}

fn storm(args: &Args, file: &str, expected: [u8; 32], pid: Option<u32>) -> Result<Report> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = pid.map(|pid| {
        let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(tree_rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    });
    let (results, wall) = rt.block_on(async {
        let mut tasks = Vec::with_capacity(args.clients);
        let started = Instant::now();
        for i in 0..args.clients {
            let cfg = ClientConfig {
                server: args.server,
                bind: source_address(args.bind, args.addresses, i),
                file: file.to_owned(),
                blksize: args.blksize,
                windowsize: args.windowsize,
                timeout: Duration::from_millis(args.timeout_ms),
                retries: args.retries,
            };
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                match download(&cfg).await {
                    Ok((bytes, digest)) => ClientResult::Done {
                        secs: t.elapsed().as_secs_f64(),
                        bytes,
                        identical: digest == expected,
                    },
                    Err(e) => ClientResult::Failed(e),
                }
            }));
        }
        let mut results = Vec::with_capacity(tasks.len());
        for t in tasks {
            results.push(
                t.await
                    .unwrap_or_else(|e| ClientResult::Failed(e.to_string())),
            );
        }
        (results, started.elapsed().as_secs_f64())
    });
    stop.store(true, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = s.join();
    }
    Ok(Report {
        results,
        wall,
        vm_hwm_kib: pid.and_then(|p| status_kib(p, "VmHWM:")),
        tree_peak_kib: pid.map(|_| peak.load(Ordering::Relaxed)),
    })
}

fn source_address(first: IpAddr, count: u32, i: usize) -> IpAddr {
    match first {
        IpAddr::V4(v4) if count > 1 => {
            let step = u32::try_from(i).unwrap_or(u32::MAX) % count;
            IpAddr::V4(Ipv4Addr::from(u32::from(v4).wrapping_add(step)))
        }
        other => other,
    }
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// RSS of `pid` plus all its descendants, in KiB.
fn tree_rss_kib(pid: u32) -> u64 {
    let mut parent: BTreeMap<u32, u32> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok());
            if let Some(ppid) = ppid {
                parent.insert(p, ppid);
            }
        }
    }
    let in_tree = |mut p: u32| {
        for _ in 0..64 {
            if p == pid {
                return true;
            }
            match parent.get(&p) {
                Some(&pp) if pp != p => p = pp,
                _ => return false,
            }
        }
        false
    };
    parent
        .keys()
        .filter(|p| in_tree(**p))
        .filter_map(|p| status_kib(*p, "VmRSS:"))
        .sum()
}

struct ClientConfig {
    server: SocketAddr,
    bind: IpAddr,
    file: String,
    blksize: u16,
    windowsize: u16,
    timeout: Duration,
    retries: u32,
}

/// Download `cfg.file`; returns its size and SHA-256.
async fn download(cfg: &ClientConfig) -> Result<(u64, [u8; 32]), String> {
    let socket = UdpSocket::bind(SocketAddr::new(cfg.bind, 0))
        .await
        .map_err(|e| format!("bind {}: {e}", cfg.bind))?;
    let options = Options {
        blksize: (cfg.blksize != 512).then_some(cfg.blksize),
        tsize: Some(0),
        timeout: None,
        windowsize: (cfg.windowsize > 1).then_some(cfg.windowsize),
    };
    let rrq = Repr::Request(Request {
        kind: RequestKind::Read,
        filename: &cfg.file,
        mode: Mode::Octet,
        options,
    });
    let mut rrq_buf = vec![0u8; rrq.buffer_len()];
    rrq.emit(&mut rrq_buf);
    let send_err = |e: std::io::Error| format!("send: {e}");
    socket
        .send_to(&rrq_buf, cfg.server)
        .await
        .map_err(send_err)?;

    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 65_536 + 4];
    let mut tid: Option<SocketAddr> = None;
    let (mut blksize, mut window) = (512usize, 1u64);
    // Next block index expected (unwrapped, 1-based) and blocks received in this window.
    let (mut expected, mut in_window) = (1u64, 0u64);
    let mut bytes = 0u64;
    let mut negotiated = false;
    let mut retries = 0;
    // One duplicate ACK per stretch without progress (RFC 7440: ACK the last in-order block
    // when something arrives out of order).
    let mut dup_acked = false;
    let ack = |index: u64| {
        let mut a = [0u8, 4, 0, 0];
        a[2..].copy_from_slice(&wire_block(index).to_be_bytes());
        a
    };
    loop {
        let received = tokio::time::timeout(cfg.timeout, socket.recv_from(&mut buf)).await;
        let (n, from) = match received {
            Err(_) => {
                retries += 1;
                if retries > cfg.retries {
                    return Err("timed out".into());
                }
                match tid {
                    None => socket.send_to(&rrq_buf, cfg.server).await,
                    Some(t) => socket.send_to(&ack(expected - 1), t).await,
                }
                .map_err(send_err)?;
                continue;
            }
            Ok(Err(e)) => return Err(format!("recv: {e}")),
            Ok(Ok(r)) => r,
        };
        if from.ip() != cfg.server.ip() {
            continue;
        }
        match tid {
            None => tid = Some(from),
            Some(t) if t != from => {
                // Another TID (RFC 1350): tell it so, keep going with ours.
                let _ = socket
                    .send_to(b"\x00\x05\x00\x05unknown TID\x00", from)
                    .await;
                continue;
            }
            Some(_) => {}
        }
        let peer = from;
        match Repr::parse_bytes(&buf[..n]) {
            Ok(Repr::Oack { options }) if expected == 1 && in_window == 0 => {
                if !negotiated {
                    blksize = usize::from(options.blksize.unwrap_or(512));
                    window = u64::from(options.windowsize.unwrap_or(1));
                    negotiated = true;
                }
                retries = 0;
                socket.send_to(&ack(0), peer).await.map_err(send_err)?;
            }
            Ok(Repr::Data { block, data }) => {
                if block == wire_block(expected) {
                    hasher.update(data);
                    bytes += data.len() as u64;
                    negotiated = true;
                    retries = 0;
                    dup_acked = false;
                    in_window += 1;
                    let last = data.len() < blksize;
                    if last || in_window == window {
                        socket
                            .send_to(&ack(expected), peer)
                            .await
                            .map_err(send_err)?;
                        in_window = 0;
                    }
                    expected += 1;
                    if last {
                        return Ok((bytes, hasher.finalize().into()));
                    }
                } else if !dup_acked {
                    dup_acked = true;
                    in_window = 0;
                    socket
                        .send_to(&ack(expected - 1), peer)
                        .await
                        .map_err(send_err)?;
                }
            }
            Ok(Repr::Error { code, message }) => {
                return Err(format!("server ERROR {}: {message}", code.to_u16()));
            }
            _ => {}
        }
    }
}

/// The block number on the wire: the low 16 bits (rolls over from 65535 to 0).
fn wire_block(index: u64) -> u16 {
    u16::try_from(index & 0xffff).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// --side-by-side

struct ServerProc {
    name: &'static str,
    addr: SocketAddr,
    child: Child,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_ready(addr: SocketAddr) -> Result<()> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 1600];
    for _ in 0..50 {
        sock.send_to(b"\x00\x01ready-probe\x00octet\x00", addr)?;
        if sock.recv_from(&mut buf).is_ok() {
            return Ok(());
        }
    }
    bail!("server on {addr} never answered")
}

fn side_by_side(args: &Args) -> Result<()> {
    // tftpd-hpa resolves its -a address with AI_ADDRCONFIG, which fails when loopback is the
    // only configured interface: give the namespace a veth pair with a documentation address.
    for a in [
        &["link", "set", "lo", "up"][..],
        &["link", "add", "tb0", "type", "veth", "peer", "name", "tb1"],
        &["addr", "add", "192.0.2.1/24", "dev", "tb0"],
        &["link", "set", "tb0", "up"],
        &["link", "set", "tb1", "up"],
    ] {
        if !Command::new("ip").args(a).status()?.success() {
            bail!("`ip {}` failed in the benchmark namespace", a.join(" "));
        }
    }
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("blobs"))?;
    // tugboot streams the blob from outside its root through the provider; the others serve
    // the same bytes from their root.
    let blob = dir.path().join("blob");
    write_random(&blob, args.size)?;
    std::fs::hard_link(&blob, root.join("blobs/initrd"))?;
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir.path())
        .status()?;
    let expected = sha256_file(&blob)?;
    let me = std::env::current_exe()?;
    println!(
        "## {} concurrent downloads of a {} MiB file (SHA-256 checked), clients spread over 127.0.1.1..\n",
        args.clients,
        args.size >> 20
    );
    print_header();
    let mut failures = Vec::new();
    let runs: [(&str, u16); 4] = [
        ("tugboot", args.windowsize),
        ("tugboot", 1),
        ("dnsmasq", args.windowsize),
        ("tftpd-hpa", args.windowsize),
    ];
    for (name, windowsize) in runs {
        let server = match start_server(name, &me, &root, &blob, dir.path(), args.buffer_budget) {
            Ok(s) => s,
            Err(e) => {
                println!("SKIP {name}: {e:#}");
                continue;
            }
        };
        wait_ready(server.addr).with_context(|| server.name)?;
        let run = Args {
            server: server.addr,
            windowsize,
            bind: IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1)),
            addresses: u32::try_from(args.clients).unwrap_or(u32::MAX).max(1),
            side_by_side: false,
            ..args.clone()
        };
        let report = storm(&run, "blobs/initrd", expected, Some(server.child.id()))?;
        report.print_row(name, &run);
        failures.push((name, report));
        drop(server);
    }
    for (name, report) in &failures {
        if report
            .results
            .iter()
            .any(|r| matches!(r, ClientResult::Failed(_)))
        {
            println!("{name}:");
            report.print_failures();
        }
    }
    Ok(())
}

fn start_server(
    name: &str,
    me: &Path,
    root: &Path,
    blob: &Path,
    scratch: &Path,
    buffer_budget: Option<usize>,
) -> Result<ServerProc> {
    let quiet = |c: &mut Command| {
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    };
    Ok(match name {
        "tugboot" => {
            let mut c = Command::new(me);
            c.arg("--serve")
                .arg("127.0.0.1:1069")
                .arg(root)
                .arg(format!("blobs/initrd={}", blob.display()));
            if let Some(b) = buffer_budget {
                c.arg("--buffer-budget").arg(b.to_string());
            }
            quiet(&mut c);
            ServerProc {
                name: "tugboot",
                addr: "127.0.0.1:1069".parse()?,
                child: c.spawn().context("start tugboot")?,
            }
        }
        "dnsmasq" => {
            let mut c = Command::new("dnsmasq");
            c.args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--port=0",
                "--enable-tftp",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--tftp-max=1000",
                "--quiet-tftp",
                "--log-facility=/dev/null",
            ])
            .arg(format!(
                "--pid-file={}",
                scratch.join("dnsmasq.pid").display()
            ))
            .arg(format!("--tftp-root={}", root.display()));
            quiet(&mut c);
            ServerProc {
                name: "dnsmasq",
                addr: "127.0.0.1:69".parse()?,
                child: c.spawn().context("start dnsmasq")?,
            }
        }
        "tftpd-hpa" => {
            let mut c = Command::new("in.tftpd");
            c.args(["-L", "-a", "127.0.0.1:2069", "-s"]).arg(root);
            quiet(&mut c);
            ServerProc {
                name: "tftpd-hpa",
                addr: "127.0.0.1:2069".parse()?,
                child: c.spawn().context("start in.tftpd")?,
            }
        }
        other => bail!("unknown server {other}"),
    })
}

/// `size` bytes that compress to nothing and repeat nowhere (xorshift64*).
fn write_random(path: &Path, size: u64) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut left = size;
    while left > 0 {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        let word = s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        let n = usize::try_from(left.min(8)).unwrap_or(8);
        out.write_all(&word[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}
