//! The lab: network namespaces (clients, one or two servers), the processes started in them,
//! and what those processes use (RSS, CPU) read from `/proc`.
//!
//! Layout: the clients' namespace `tbst-c-<pid>` holds every simulated machine and relay: the
//! racks' subnets 10.100.0.0/14 are local there (`ip route add local ... dev lo`). Server `k`
//! (0, 1) has its own namespace `tbst-s<k>-<pid>` joined to the clients by a veth pair:
//! `s0` = 10.99.k.1/24 on the server side, `c<k>` = 10.99.k.254/24 on the clients' side, and
//! a route to the racks via 10.99.k.254 — the server sees a router with relays behind it, as
//! in a datacenter hall. Nothing touches a host interface; everything is deleted on drop.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Runs a command, fails with its output.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The namespaces of one lab; deleted (with every process started through it) on drop.
pub struct Lab {
    pub clients: String,
    pub servers: Vec<String>,
    children: Vec<(String, Child)>,
}

/// The address of server `k` (0 or 1).
pub fn server_address(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, u8::try_from(k).unwrap_or(0), 1)
}

impl Lab {
    pub fn new(servers: usize) -> Result<Self> {
        let pid = std::process::id();
        let lab = Lab {
            clients: format!("tbst-c-{pid}"),
            servers: (0..servers).map(|k| format!("tbst-s{k}-{pid}")).collect(),
            children: Vec::new(),
        };
        for ns in std::iter::once(&lab.clients).chain(&lab.servers) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            run(Command::new("ip").args(["netns", "add", ns]))?;
            run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
        }
        let c = lab.clients.clone();
        for (k, ns) in lab.servers.clone().iter().enumerate() {
            let cport = format!("c{k}");
            run(Command::new("ip").args([
                "-n", &c, "link", "add", &cport, "type", "veth", "peer", "name", "s0", "netns", ns,
            ]))?;
            let srv = server_address(k);
            let gw = Ipv4Addr::new(10, 99, srv.octets()[2], 254);
            for args in [
                vec![
                    "addr".to_owned(),
                    "add".into(),
                    format!("{srv}/24"),
                    "dev".into(),
                    "s0".into(),
                ],
                vec!["link".into(), "set".into(), "s0".into(), "up".into()],
                vec![
                    "route".into(),
                    "add".into(),
                    "10.100.0.0/14".into(),
                    "via".into(),
                    gw.to_string(),
                ],
            ] {
                run(Command::new("ip").arg("-n").arg(ns).args(&args))?;
            }
            for args in [
                vec![
                    "addr".to_owned(),
                    "add".into(),
                    format!("{gw}/24"),
                    "dev".into(),
                    cport.clone(),
                ],
                vec!["link".into(), "set".into(), cport.clone(), "up".into()],
            ] {
                run(Command::new("ip").arg("-n").arg(&c).args(&args))?;
            }
        }
        // Machines being netbooted answer no ping (a PXE ROM has no ICMP echo responder for
        // addresses it does not hold yet); without this the local route below would answer
        // for every rack address and dnsmasq's ping check would find every address "in use".
        run(Command::new("ip").args([
            "netns",
            "exec",
            &c,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.icmp_echo_ignore_all=1",
        ]))?;
        // Every rack address is local on the clients' side: machines bind to their leases.
        run(Command::new("ip").args([
            "-n",
            &c,
            "route",
            "add",
            "local",
            "10.100.0.0/14",
            "dev",
            "lo",
        ]))?;
        Ok(lab)
    }

    /// A command run inside namespace `ns`.
    pub fn command(ns: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }

    /// Starts a long-running process, its output appended to `log`; returns its pid (`ip netns
    /// exec` execs the program, so it is the program's).
    pub fn spawn(&mut self, name: &str, mut cmd: Command, log: &Path) -> Result<u32> {
        let out = fs::File::create(log).with_context(|| format!("{}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start {name}: {cmd:?}"))?;
        let pid = child.id();
        self.children.push((name.to_owned(), child));
        Ok(pid)
    }

    /// Sends SIGTERM and waits up to 20 s (then SIGKILL); returns whether it exited cleanly.
    pub fn stop(&mut self, pid: u32) -> bool {
        self.signal_and_wait(pid, "-TERM", Duration::from_secs(20))
    }

    /// SIGKILL, at once (the power cut of a server).
    pub fn kill(&mut self, pid: u32) {
        self.signal_and_wait(pid, "-KILL", Duration::from_secs(10));
    }

    fn signal_and_wait(&mut self, pid: u32, sig: &str, within: Duration) -> bool {
        let Some(i) = self.children.iter().position(|(_, c)| c.id() == pid) else {
            return false;
        };
        let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
        let deadline = Instant::now() + within;
        let (_, child) = &mut self.children[i];
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.children.remove(i);
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.children.remove(i);
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether a started process is still running.
    pub fn alive(&mut self, pid: u32) -> bool {
        self.children
            .iter_mut()
            .find(|(_, c)| c.id() == pid)
            .is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = Command::new("kill")
                    .args(["-TERM", &c.id().to_string()])
                    .status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (_, c) in &mut self.children {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in std::iter::once(&self.clients).chain(&self.servers) {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Waits until `log` has a line containing `needle` (or `within` passes).
pub fn wait_for_line(log: &Path, needle: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(f) = fs::File::open(log)
            && BufReader::new(f)
                .lines()
                .map_while(std::io::Result::ok)
                .any(|l| l.contains(needle))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "no {needle:?} in {} within {within:?}:\n{}",
                log.display(),
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A process and its descendants, from `/proc`.
fn tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                if let Ok(children) = fs::read_to_string(t.path().join("children")) {
                    out.extend(
                        children
                            .split_whitespace()
                            .filter_map(|c| c.parse::<u32>().ok()),
                    );
                }
            }
        }
        i += 1;
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn status_kib(pid: u32, key: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime (+ waited-for children) of one process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name may contain spaces: fields start after the last ')'.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0;
    };
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // After ')': state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    f.get(11..15).map_or(0, |v| v.iter().sum())
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Samples the RSS of process trees every 100 ms while a storm runs.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<Vec<(u32, u64, u64)>>>,
    start_ticks: Vec<(u32, u64)>,
    roots: Vec<u32>,
}

/// What a process tree used during a storm.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub peak_rss_kib: u64,
    pub vm_hwm_kib: u64,
    pub cpu_s: f64,
}

impl Sampler {
    pub fn start(roots: &[u32]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let start_ticks = roots
            .iter()
            .map(|&r| (r, tree(r).into_iter().map(cpu_ticks).sum()))
            .collect();
        let handle = {
            let stop = Arc::clone(&stop);
            let roots = roots.to_vec();
            thread::spawn(move || {
                let mut peak: Vec<(u32, u64, u64)> = roots.iter().map(|&r| (r, 0, 0)).collect();
                while !stop.load(Ordering::Relaxed) {
                    for (root, rss, hwm) in &mut peak {
                        let procs = tree(*root);
                        let sum: u64 = procs.iter().map(|&p| status_kib(p, "VmRSS:")).sum();
                        *rss = (*rss).max(sum);
                        let h = procs
                            .iter()
                            .map(|&p| status_kib(p, "VmHWM:"))
                            .max()
                            .unwrap_or(0);
                        *hwm = (*hwm).max(h);
                    }
                    thread::sleep(Duration::from_millis(100));
                }
                peak
            })
        };
        Sampler {
            stop,
            handle: Some(handle),
            start_ticks,
            roots: roots.to_vec(),
        }
    }

    /// Stops sampling; the usage of each root's tree, in the order given.
    pub fn finish(mut self) -> Vec<Usage> {
        let end_ticks: Vec<u64> = self
            .roots
            .iter()
            .map(|&r| tree(r).into_iter().map(cpu_ticks).sum())
            .collect();
        self.stop.store(true, Ordering::Relaxed);
        let peaks = self
            .handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let hz = ticks_per_second();
        self.roots
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (_, rss, hwm) = peaks
                    .iter()
                    .find(|(p, ..)| p == r)
                    .copied()
                    .unwrap_or_default();
                let start = self.start_ticks.get(i).map_or(0, |(_, t)| *t);
                #[allow(clippy::cast_precision_loss)] // ticks of a run: far below 2^52
                let cpu_s = end_ticks[i].saturating_sub(start) as f64 / hz;
                Usage {
                    peak_rss_kib: rss,
                    vm_hwm_kib: hwm,
                    cpu_s,
                }
            })
            .collect()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// CPU seconds of a process tree now (for tracking a server across a whole run, e.g. the
/// PostgreSQL postmaster and its backends).
pub fn tree_cpu_s(pid: u32) -> f64 {
    #[allow(clippy::cast_precision_loss)] // clock ticks: far below 2^52
    let t = tree(pid).into_iter().map(cpu_ticks).sum::<u64>() as f64;
    t / ticks_per_second()
}

/// The 1-minute load average now, and the whole line of `/proc/loadavg`.
pub fn load() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A fresh working directory below `base`.
pub fn workdir(base: Option<PathBuf>) -> Result<PathBuf> {
    let dir = base
        .unwrap_or_else(|| PathBuf::from(format!("/var/tmp/tugboot-storm-{}", std::process::id())));
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("clean {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}
