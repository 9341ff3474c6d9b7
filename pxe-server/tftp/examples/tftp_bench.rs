//! TFTP throughput benchmark: tugboot vs dnsmasq vs tftpd-hpa, downloaded by atftp on loopback.
//!
//! ```text
//! cargo run --release -p tugboot-tftp --example tftp_bench
//! ```
//!
//! dnsmasq 2.90 only serves TFTP on port 69, so the whole run re-executes itself inside a private
//! network namespace (`unshare --net`, needs root) where port 69 is free and nothing else can
//! interfere. Every server runs as its own process (tugboot as `tftp_bench --serve DIR PORT`), so
//! server CPU is read the same way for all three from `/proc/PID/stat` (utime + stime, plus the
//! reaped children of tftpd-hpa's per-transfer fork).
//!
//! Prints a Markdown table; no assertions, nothing here is a test.

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const BIG: usize = 64 * 1024 * 1024;
const SMALL: usize = 1024 * 1024;
const CONCURRENT: usize = 200;
const REPEATS: usize = 5;
const NETNS_ENV: &str = "TUGBOOT_TFTP_BENCH_NETNS";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        return serve(
            args.get(2).context("--serve DIR PORT")?,
            args.get(3).context("--serve DIR PORT")?,
        );
    }
    if std::env::var_os(NETNS_ENV).is_none() {
        let status = Command::new("unshare")
            .arg("--net")
            .arg("--")
            .args(&args)
            .env(NETNS_ENV, "1")
            .status()
            .context("run unshare (the benchmark needs root for a private network namespace)")?;
        std::process::exit(status.code().unwrap_or(1));
    }
    run_in_netns()
}

/// The tugboot server process.
fn serve(dir: &str, port: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listen: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut config = tugboot_tftp::ServerConfig::new(listen, dir);
        // The 200 concurrent atftp clients all come from 127.0.0.1, where a fleet would be 200
        // hosts: lift the per-host cap (dnsmasq and tftpd-hpa have none) so all are served.
        config.max_transfers_per_peer = config.max_transfers;
        let server = tugboot_tftp::Server::bind(config).await?;
        server
            .run(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}

struct ServerProc {
    name: &'static str,
    port: u16,
    child: Child,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// utime + stime + cutime + cstime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime is field 14 overall.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()?
        + f[12].parse::<u64>()?
        + f[13].parse::<u64>()?
        + f[14].parse::<u64>()?;
    let hz = 100.0; // USER_HZ on Linux
    Ok(ticks as f64 / hz)
}

fn wait_ready(port: u16) -> Result<()> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let rrq = b"\x00\x01ready\x00octet\x00";
    let mut buf = [0u8; 1600];
    for _ in 0..50 {
        sock.send_to(rrq, ("127.0.0.1", port))?;
        if let Ok((n, _)) = sock.recv_from(&mut buf)
            && n >= 4
            && buf[1] == 3
        {
            return Ok(());
        }
    }
    bail!("server on port {port} never answered")
}

fn atftp(port: u16, remote: &str, local: &Path, options: &[&str]) -> Command {
    let mut cmd = Command::new("atftp");
    for o in options {
        cmd.arg("--option").arg(o);
    }
    cmd.args(["-g", "-r", remote, "-l"])
        .arg(local)
        .arg("127.0.0.1")
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn same_file(a: &Path, expected: &[u8]) -> Result<bool> {
    let mut got = Vec::with_capacity(expected.len());
    std::fs::File::open(a)?.read_to_end(&mut got)?;
    Ok(got == expected)
}

fn run_in_netns() -> Result<()> {
    // tftpd-hpa resolves its -a address with AI_ADDRCONFIG, which fails when loopback is the
    // only configured interface: give the namespace a veth pair with a documentation address.
    for args in [
        &["link", "set", "lo", "up"][..],
        &["link", "add", "tb0", "type", "veth", "peer", "name", "tb1"],
        &["addr", "add", "192.0.2.1/24", "dev", "tb0"],
        &["link", "set", "tb0", "up"],
        &["link", "set", "tb1", "up"],
    ] {
        let st = Command::new("ip").args(args).status()?;
        if !st.success() {
            bail!("`ip {}` failed in the benchmark namespace", args.join(" "));
        }
    }
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("root");
    std::fs::create_dir(&root)?;
    let big = pattern(BIG, 1);
    let small = pattern(SMALL, 2);
    std::fs::write(root.join("big.bin"), &big)?;
    std::fs::write(root.join("small.bin"), &small)?;
    std::fs::write(root.join("ready"), b"ok")?;
    // dnsmasq and tftpd-hpa drop privileges: make the root world-readable.
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(dir.path())
        .status()?;
    let out_dir = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")?
    } else {
        tempfile::tempdir()?
    };
    let me = std::env::current_exe()?;
    let mut servers = Vec::new();
    servers.push(ServerProc {
        name: "tugboot",
        port: 1069,
        child: Command::new(&me)
            .arg("--serve")
            .arg(&root)
            .arg("1069")
            .stdout(Stdio::null())
            .spawn()
            .context("start tugboot")?,
    });
    match Command::new("dnsmasq")
        .args([
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
            dir.path().join("dnsmasq.pid").display()
        ))
        .arg(format!("--tftp-root={}", root.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => servers.push(ServerProc {
            name: "dnsmasq",
            port: 69,
            child,
        }),
        Err(e) => println!("SKIP dnsmasq: {e}"),
    }
    match Command::new("in.tftpd")
        .args(["-L", "-a", "127.0.0.1:2069", "-s"])
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(child) => servers.push(ServerProc {
            name: "tftpd-hpa",
            port: 2069,
            child,
        }),
        Err(e) => println!("SKIP tftpd-hpa: {e}"),
    }
    for s in &servers {
        wait_ready(s.port).with_context(|| s.name)?;
    }

    println!(
        "## 64 MiB download with atftp (blksize 1468), best of {REPEATS} interleaved rounds\n"
    );
    println!("| server | windowsize asked | MiB/s | seconds | server CPU s | bytes identical |");
    println!("|---|---|---|---|---|---|");
    let mut rates: Vec<(&str, &str, f64)> = Vec::new();
    for (label, opts) in [
        ("1", &["blksize 1468", "tsize 0"][..]),
        ("16", &["blksize 1468", "windowsize 16", "tsize 0"][..]),
    ] {
        // Rounds interleave the servers so that load from elsewhere on the machine hits all
        // of them alike; each server's best round is reported.
        let mut best = vec![f64::MAX; servers.len()];
        let mut cpu = vec![0.0f64; servers.len()];
        let mut ok = vec![true; servers.len()];
        for _ in 0..REPEATS {
            for (i, s) in servers.iter().enumerate() {
                let out = out_dir.path().join(format!("{}-{label}", s.name));
                let cpu0 = cpu_seconds(s.child.id())?;
                let t = Instant::now();
                let st = atftp(s.port, "big.bin", &out, opts).status()?;
                let secs = t.elapsed().as_secs_f64();
                cpu[i] += cpu_seconds(s.child.id())? - cpu0;
                ok[i] &= st.success() && same_file(&out, &big)?;
                best[i] = best[i].min(secs);
                let _ = std::fs::remove_file(&out);
            }
        }
        for (i, s) in servers.iter().enumerate() {
            let mibs = BIG as f64 / (1024.0 * 1024.0) / best[i];
            rates.push((s.name, label, mibs));
            println!(
                "| {} | {label} | {mibs:.1} | {:.3} | {} | {} |",
                s.name,
                best[i],
                cpu_cell(s.name, cpu[i] / REPEATS as f64),
                if ok[i] { "yes" } else { "NO" }
            );
        }
    }
    let rate = |name: &str, ws: &str| {
        rates
            .iter()
            .find(|(n, w, _)| *n == name && *w == ws)
            .map(|r| r.2)
    };
    println!();
    for (ws, other) in [
        ("1", "dnsmasq"),
        ("16", "dnsmasq"),
        ("1", "tftpd-hpa"),
        ("16", "tftpd-hpa"),
    ] {
        if let (Some(a), Some(b)) = (rate("tugboot", ws), rate(other, ws)) {
            println!("- tugboot / {other} at windowsize {ws}: {:.2}x", a / b);
        }
    }

    println!("\n## {CONCURRENT} concurrent 1 MiB downloads with atftp (blksize 1468)\n");
    println!("| server | completed | identical | wall s | server CPU s |");
    println!("|---|---|---|---|---|");
    for s in &servers {
        let cpu0 = cpu_seconds(s.child.id())?;
        let t = Instant::now();
        let mut children = Vec::new();
        for i in 0..CONCURRENT {
            let out = out_dir.path().join(format!("c-{}-{i}", s.name));
            let child = atftp(s.port, "small.bin", &out, &["blksize 1468"]).spawn()?;
            children.push((child, out));
        }
        let mut completed = 0;
        let mut identical = 0;
        let mut outs = Vec::new();
        for (mut child, out) in children {
            if child.wait()?.success() {
                completed += 1;
            }
            outs.push(out);
        }
        let wall = t.elapsed().as_secs_f64();
        let cpu = cpu_seconds(s.child.id())? - cpu0;
        for out in outs {
            if same_file(&out, &small).unwrap_or(false) {
                identical += 1;
            }
            let _ = std::fs::remove_file(out);
        }
        println!(
            "| {} | {completed}/{CONCURRENT} | {identical}/{CONCURRENT} | {wall:.2} | {} |",
            s.name,
            cpu_cell(s.name, cpu)
        );
    }
    let _ = root_cleanup(&root);
    Ok(())
}

/// tftpd-hpa forks a child per transfer and lets the kernel reap it, so its CPU time never
/// reaches the parent's counters: report it as unknown rather than as zero.
fn cpu_cell(name: &str, secs: f64) -> String {
    if name == "tftpd-hpa" {
        "n/a".to_owned()
    } else {
        format!("{secs:.2}")
    }
}

fn root_cleanup(root: &PathBuf) -> std::io::Result<()> {
    std::fs::remove_dir_all(root)
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        out.extend_from_slice(&s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}
