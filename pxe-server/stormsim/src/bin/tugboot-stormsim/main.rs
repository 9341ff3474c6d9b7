//! `tugboot-stormsim`: powers on N simulated machines at once and netboots them against
//! `tugboot serve`, against dnsmasq + nginx, or against two `tugboot serve` sharing
//! PostgreSQL, in private network namespaces. Prints a table per run and writes JSON.
//!
//! ```sh
//! cargo build --release -p tugboot -p tugboot-stormsim
//! sudo target/release/tugboot-stormsim storm --machines 1000 --mix bios-pxe=50,uefi-pxe=50 \
//!     --kernel-kib 8192 --initrd-kib 32768 --json storm.json
//! ```
//!
//! See `docs/storm.md` for what is simulated and how.

mod client;
mod lab;
mod targets;

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use tugboot_stormsim::fleet::{self, Mix};
use tugboot_stormsim::report::{self, MachineRecord, ServerUsage, Summary};

use client::{Expected, Helpers, Output, Plan};
use lab::{Lab, Sampler, server_address};
use targets::{Files, NginxIo, TugbootOptions};

#[derive(Debug, Parser)]
#[command(
    name = "tugboot-stormsim",
    about = "Boot storms: many simulated machines netbooting at once"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run storms against the chosen targets in private network namespaces (root).
    Storm(Box<StormArgs>),
    /// Run the fleet of a plan (what `storm` starts inside the clients' namespace).
    Client {
        #[arg(long)]
        plan: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Runtime threads of the simulator.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Target {
    /// One `tugboot serve` (DHCP, TFTP, HTTP).
    Tugboot,
    /// dnsmasq (DHCP + TFTP) and nginx (HTTP).
    DnsmasqNginx,
    /// The same with dnsmasq's `--no-ping` (its default pings every address before offering
    /// it and waits up to 3 s for an answer).
    DnsmasqNopingNginx,
    /// Two `tugboot serve` sharing one PostgreSQL fleet store, split-scope pools.
    ScaleOut,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Tugboot => "tugboot",
            Target::DnsmasqNginx => "dnsmasq+nginx",
            Target::DnsmasqNopingNginx => "dnsmasq(no-ping)+nginx",
            Target::ScaleOut => "tugboot x2 (PostgreSQL)",
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
struct StormArgs {
    /// What to storm, in order (rotated each round).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "tugboot,dnsmasq-nginx"
    )]
    targets: Vec<Target>,
    #[arg(long, default_value_t = 200)]
    machines: u32,
    /// Families by weight: ipxe-bios, bios-pxe, uefi-pxe, uefi-http, grub-arm64, uboot-arm64,
    /// rpi4.
    #[arg(long, default_value = "bios-pxe=50,uefi-pxe=50")]
    mix: String,
    #[arg(long, default_value_t = 8192)]
    kernel_kib: u64,
    #[arg(long, default_value_t = 32768)]
    initrd_kib: u64,
    /// Every machine powers on at a random moment of this window ("in the same second").
    #[arg(long, default_value_t = 1000)]
    power_on_ms: u64,
    /// Boot attempts per machine (a failed netboot: reboot, netboot again).
    #[arg(long, default_value_t = 3)]
    attempts: u32,
    /// Seconds from a failed attempt to the next (power cycle and POST).
    #[arg(long, default_value_t = 10)]
    reboot_secs: u64,
    /// Machines not booted this long after the storm began count as failed.
    #[arg(long, default_value_t = 900)]
    deadline_secs: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Check every kernel and initrd received against its SHA-256.
    #[arg(long)]
    verify: bool,
    /// Machines per rack (relay, /24 subnet with 240 addresses).
    #[arg(long, default_value_t = fleet::RACK_SIZE)]
    rack_size: u32,
    /// Write the runs (summaries, server usage, every machine's record) here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The `tugboot` binary (default: next to this one).
    #[arg(long)]
    tugboot: Option<PathBuf>,
    /// Working directory (default /var/tmp/tugboot-storm-<pid>, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the working directory (logs, lease files).
    #[arg(long)]
    keep: bool,
    #[arg(long, value_enum, default_value = "sendfile")]
    nginx_io: NginxIo,
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Runtime threads of the simulator.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Extra `[tftp]` settings for tugboot, e.g. "max_transfers = 2048".
    #[arg(long, default_value = "")]
    tftp_extra: String,
    /// PostgreSQL server for scale-out (a database is created on it for the run); default
    /// `$TUGBOOT_TEST_PG_URL` (`eval "$(tests/postgres)"`).
    #[arg(long)]
    pg_url: Option<String>,
    /// Scale-out: which servers each rack's relay forwards to.
    #[arg(long, value_enum, default_value = "all")]
    helpers: Helpers,
    /// Scale-out: SIGKILL the first server this long after the storm began.
    #[arg(long)]
    kill_after_ms: Option<u64>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Storm(args) => storm(&args),
        Cmd::Client { plan, out, threads } => {
            let plan: Plan = serde_json::from_slice(&fs::read(&plan)?)
                .with_context(|| format!("plan {}", plan.display()))?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.max(1))
                .enable_all()
                .build()?;
            let output = rt.block_on(client::run(plan))?;
            fs::write(&out, serde_json::to_vec(&output)?)?;
            Ok(())
        }
    }
}

/// One run's results.
#[derive(Debug, Serialize)]
struct RunReport {
    target: Target,
    label: String,
    round: u32,
    load_before: String,
    load_after: String,
    wall_s: f64,
    summary: Summary,
    servers: Vec<ServerUsage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    postgres: Option<PgUsage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kill: Option<KillReport>,
    /// Checks of the server side (lease logs, `tugboot machines list`).
    checks: BTreeMap<String, String>,
    records: Vec<MachineRecord>,
}

#[derive(Debug, Serialize)]
struct PgUsage {
    cpu_s: f64,
    xact_commit: i64,
    tup_inserted: i64,
    tup_updated: i64,
    tup_fetched: i64,
    blks_read: i64,
}

#[derive(Debug, Serialize)]
struct KillReport {
    kill_ms: f64,
    /// Machines that had the killed server's lease and were not booted at the kill.
    affected: usize,
    /// Of those, booted afterwards (from the other server).
    recovered: usize,
    /// Time from the kill until each recovered machine had its last artifact.
    recovery_p50_ms: f64,
    recovery_max_ms: f64,
    /// What the affected machines saw (the failure ending their attempt), and how many.
    seen: BTreeMap<String, usize>,
    booted_before_kill: usize,
}

#[derive(Debug, Serialize)]
struct Document<'a> {
    command: Vec<String>,
    machines: u32,
    mix: &'a str,
    kernel_kib: u64,
    initrd_kib: u64,
    notes: Vec<String>,
    runs: Vec<RunReport>,
}

fn storm(a: &StormArgs) -> Result<()> {
    let uid = lab::run(Command::new("id").arg("-u"))?;
    if uid.trim() != "0" {
        bail!("storm needs root (network namespaces); run it with sudo");
    }
    let mix = Mix::parse(&a.mix)?;
    let tugboot = match &a.tugboot {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("tugboot"),
    };
    if !tugboot.exists() {
        bail!(
            "{} not found: build it (cargo build --release -p tugboot) or pass --tugboot",
            tugboot.display()
        );
    }
    let dir = lab::workdir(a.dir.clone())?;
    let files = Files::prepare(&dir, &tugboot, a.kernel_kib, a.initrd_kib)?;
    let machines = fleet::machines(a.machines, &mix, a.rack_size);
    let mut runs = Vec::new();
    for round in 0..a.rounds {
        let n = a.targets.len();
        for i in 0..n {
            let target = a.targets[(i + usize::try_from(round).unwrap_or(0)) % n];
            eprintln!(
                "tugboot-stormsim: round {} {}: {} machines (load {})",
                round + 1,
                target.name(),
                a.machines,
                lab::load()
            );
            let run = run_target(a, target, round, &dir, &files, &machines)?;
            println!(
                "{}",
                report::table(
                    &format!("{} (round {})", run.label, round + 1),
                    &run.summary,
                    &run.servers,
                    &format!("{} before, {} after", run.load_before, run.load_after)
                )
            );
            if let Some(k) = &run.kill {
                println!("- kill: {k:?}");
            }
            if let Some(pg) = &run.postgres {
                println!("- PostgreSQL: {pg:?}");
            }
            for (k, v) in &run.checks {
                println!("- check {k}: {v}");
            }
            println!();
            runs.push(run);
        }
    }
    if let Some(path) = &a.json {
        let doc = Document {
            command: std::env::args().collect(),
            machines: a.machines,
            mix: &a.mix,
            kernel_kib: a.kernel_kib,
            initrd_kib: a.initrd_kib,
            notes: files.notes.clone(),
            runs,
        };
        fs::write(path, serde_json::to_vec(&doc)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    if !a.keep {
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(())
}

fn plan_for(
    a: &StormArgs,
    machines: &[fleet::Machine],
    servers: Vec<Ipv4Addr>,
    files: &Files,
) -> Plan {
    Plan {
        machines: machines.to_vec(),
        dhcp_servers: servers,
        helpers: a.helpers,
        power_on_window_ms: a.power_on_ms,
        seed: a.seed,
        attempts: a.attempts,
        reboot_ms: a.reboot_secs * 1000,
        deadline_ms: a.deadline_secs * 1000,
        artifacts: vec![
            Expected {
                size: files.kernel_len,
                sha256: files.kernel_sha.clone(),
            },
            Expected {
                size: files.initrd_len,
                sha256: files.initrd_sha.clone(),
            },
        ],
        verify: a.verify,
        rack_size: a.rack_size,
    }
}

/// Starts the client fleet in the clients' namespace; returns the child.
fn start_client(lab: &mut Lab, dir: &Path, plan: &Plan, threads: usize) -> Result<(u32, PathBuf)> {
    let plan_path = dir.join("plan.json");
    fs::write(&plan_path, serde_json::to_vec(plan)?)?;
    let out = dir.join("client-out.json");
    let _ = fs::remove_file(&out);
    let me = std::env::current_exe()?;
    let mut cmd = Command::new("ip");
    // Thousands of sockets: lift the descriptor limit first.
    cmd.args([
        "netns",
        "exec",
        &lab.clients,
        "sh",
        "-c",
        "ulimit -n \"$(ulimit -Hn)\" && exec \"$@\"",
        "sh",
    ])
    .arg(&me)
    .args(["client", "--threads", &threads.to_string(), "--plan"])
    .arg(&plan_path)
    .arg("--out")
    .arg(&out);
    let pid = lab.spawn("client", cmd, &dir.join("client.log"))?;
    Ok((pid, out))
}

fn run_target(
    a: &StormArgs,
    target: Target,
    round: u32,
    base: &Path,
    files: &Files,
    machines: &[fleet::Machine],
) -> Result<RunReport> {
    let dir = base.join(format!(
        "run-{}-{}",
        round + 1,
        match target {
            Target::Tugboot => "tugboot",
            Target::DnsmasqNginx => "dnsmasq-nginx",
            Target::DnsmasqNopingNginx => "dnsmasq-noping-nginx",
            Target::ScaleOut => "scale-out",
        }
    ));
    fs::create_dir_all(&dir)?;
    let servers = if target == Target::ScaleOut { 2 } else { 1 };
    let mut lab = Lab::new(servers)?;
    let mut checks = BTreeMap::new();
    let mut pg = None;
    let (roots, labels, tug) = match target {
        Target::Tugboot | Target::ScaleOut => {
            let store = if target == Target::ScaleOut {
                let url = a
                    .pg_url
                    .clone()
                    .or_else(|| std::env::var("TUGBOOT_TEST_PG_URL").ok())
                    .context(
                        "scale-out needs PostgreSQL: --pg-url or eval \"$(tests/postgres)\"",
                    )?;
                let db = format!("tbst_{}_{}", std::process::id(), round);
                let url = pg_create_db(&url, &db)?;
                lab::run(
                    Command::new(&files.tugboot)
                        .args(["ca", "init", "--dir"])
                        .arg(dir.join("ca"))
                        .arg("--quiet"),
                )?;
                pg = Some(url.clone());
                Some(url)
            } else {
                None
            };
            let o = TugbootOptions {
                machines: a.machines,
                rack_size: a.rack_size,
                servers,
                store,
                tftp_extra: a.tftp_extra.clone(),
                api: target == Target::ScaleOut,
            };
            let mut started = Vec::new();
            for k in 0..servers {
                let d = targets::tugboot_config(files, &dir, k, &o)?;
                started.push(targets::start_tugboot(&mut lab, files, &d, k)?);
            }
            let roots: Vec<u32> = started.iter().map(|t| t.pid).collect();
            let labels = (0..servers)
                .map(|k| format!("tugboot serve {k}"))
                .collect::<Vec<_>>();
            (roots, labels, started)
        }
        Target::DnsmasqNginx | Target::DnsmasqNopingNginx => {
            let c = targets::start_classic(
                &mut lab,
                files,
                &dir,
                a.machines,
                a.rack_size,
                a.nginx_io,
                target == Target::DnsmasqNopingNginx,
            )?;
            (
                vec![c.dnsmasq, c.nginx],
                vec![
                    "dnsmasq".to_owned(),
                    format!("nginx ({:?})", a.nginx_io).to_lowercase(),
                ],
                Vec::new(),
            )
        }
    };
    let server_addrs: Vec<Ipv4Addr> = (0..servers).map(server_address).collect();
    let plan = plan_for(a, machines, server_addrs, files);
    let pg_before = match &pg {
        Some(url) => Some((pg_stats(url)?, lab::tree_cpu_s(pg_postmaster(url)?))),
        None => None,
    };
    let load_before = lab::load();
    let sampler = Sampler::start(&roots);
    let started = Instant::now();
    let (client, out) = start_client(&mut lab, &dir, &plan, a.client_threads)?;
    let mut kill_unix_ms = None;
    if let (Some(ms), true) = (a.kill_after_ms, target == Target::ScaleOut) {
        std::thread::sleep(Duration::from_millis(ms));
        kill_unix_ms = Some(unix_ms());
        lab.kill(roots[0]);
        eprintln!("tugboot-stormsim: killed tugboot serve 0 (SIGKILL) at +{ms} ms");
    }
    while lab.alive(client) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let wall_s = started.elapsed().as_secs_f64();
    let usage = sampler.finish();
    let load_after = lab::load();
    let output: Output = serde_json::from_slice(&fs::read(&out).with_context(|| {
        format!(
            "the client wrote no results: {}",
            fs::read_to_string(dir.join("client.log")).unwrap_or_default()
        )
    })?)?;
    let postgres = match (&pg, pg_before) {
        (Some(url), Some((before, cpu0))) => {
            let after = pg_stats(url)?;
            Some(PgUsage {
                cpu_s: lab::tree_cpu_s(pg_postmaster(url)?) - cpu0,
                xact_commit: after[0] - before[0],
                tup_inserted: after[1] - before[1],
                tup_updated: after[2] - before[2],
                tup_fetched: after[3] - before[3],
                blks_read: after[4] - before[4],
            })
        }
        _ => None,
    };
    // The server side: every tugboot server's lease log, and the registry.
    if !tug.is_empty() {
        lease_check(&tug, &mut checks);
        if target == Target::ScaleOut {
            registry_check(&lab, files, &dir, &tug, &output.records, &mut checks);
        }
    }
    let servers_usage: Vec<ServerUsage> = labels
        .iter()
        .zip(&usage)
        .map(|(l, u)| ServerUsage {
            label: l.clone(),
            #[allow(clippy::cast_precision_loss)] // KiB of a process: far below 2^52
            peak_rss_mib: u.peak_rss_kib as f64 / 1024.0,
            #[allow(clippy::cast_precision_loss)]
            vm_hwm_mib: u.vm_hwm_kib as f64 / 1024.0,
            cpu_s: u.cpu_s,
        })
        .collect();
    for (t, k) in tug.iter().zip(0..) {
        let alive = lab.alive(t.pid);
        let clean = alive && lab.stop(t.pid);
        checks.insert(
            format!("tugboot serve {k} exit"),
            if !alive {
                "killed during the storm".into()
            } else if clean {
                "clean (SIGTERM, exit 0)".into()
            } else {
                format!("NOT clean; log {}", t.log.display())
            },
        );
    }
    let kill = kill_unix_ms.map(|k| kill_report(k - output.epoch_unix_ms, &output.records));
    let summary = report::summarize(&output.records);
    Ok(RunReport {
        target,
        label: match target {
            Target::DnsmasqNginx | Target::DnsmasqNopingNginx => {
                format!("{} ({:?})", target.name(), a.nginx_io).to_lowercase()
            }
            t => t.name().into(),
        },
        round: round + 1,
        load_before,
        load_after,
        wall_s,
        summary,
        servers: servers_usage,
        postgres,
        kill,
        checks,
        records: output.records,
    })
}

fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// What the machines of the killed server saw and how long they took to boot from the other.
///
/// A machine is affected when it was not booted at the kill and the lease it held then came
/// from the killed server (split scope: server 0 leases the lower half of every pool).
fn kill_report(kill_ms: f64, records: &[MachineRecord]) -> KillReport {
    use tugboot_stormsim::family::Phase;
    let (_, last_of_first) = targets::pool(0, 2);
    let mut seen = BTreeMap::new();
    let mut recovery = Vec::new();
    let mut affected = 0;
    let mut before = 0;
    for r in records {
        if r.booted_ms.is_some_and(|b| b <= kill_ms) {
            before += 1;
            continue;
        }
        let held = r
            .phases
            .iter()
            .filter(|p| matches!(p.phase, Phase::Dhcp | Phase::Dhcp2) && p.ok)
            .zip(&r.leases)
            .filter(|(p, _)| p.end_ms <= kill_ms)
            .map(|(_, a)| *a)
            .last();
        if held.is_none_or(|a| a.octets()[3] > last_of_first) {
            continue;
        }
        affected += 1;
        let what = r
            .phases
            .iter()
            .find(|p| !p.ok && p.end_ms >= kill_ms)
            .and_then(|p| p.error.clone())
            .unwrap_or_else(|| "nothing: finished without the killed server".into());
        *seen.entry(what).or_insert(0) += 1;
        if let Some(b) = r.booted_ms {
            recovery.push(b - kill_ms);
        }
    }
    recovery.sort_by(f64::total_cmp);
    KillReport {
        kill_ms,
        affected,
        recovered: recovery.len(),
        recovery_p50_ms: report::percentile(&recovery, 50.0),
        recovery_max_ms: recovery.last().copied().unwrap_or(0.0),
        seen,
        booted_before_kill: before,
    }
}

/// No address bound to two MACs, within and across the servers' lease logs.
fn lease_check(servers: &[targets::Tugboot], checks: &mut BTreeMap<String, String>) {
    let mut by_address: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    let mut records = 0;
    for t in servers {
        let log = t.dir.join("data/dhcp-leases.jsonl");
        let text = fs::read_to_string(&log).unwrap_or_default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["state"] == "bound" {
                records += 1;
                by_address
                    .entry(v["address"].as_str().unwrap_or_default().to_owned())
                    .or_default()
                    .insert(v["mac"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    let twice: Vec<&String> = by_address
        .iter()
        .filter(|(_, macs)| macs.len() > 1)
        .map(|(a, _)| a)
        .collect();
    checks.insert(
        "lease logs".into(),
        format!(
            "{records} bound records, {} addresses, bound to two MACs: {}",
            by_address.len(),
            if twice.is_empty() {
                "none".to_owned()
            } else {
                format!("{twice:?}")
            }
        ),
    );
}

/// Every machine of the storm in one `tugboot machines list` (asked of the server still up).
fn registry_check(
    lab: &Lab,
    files: &Files,
    dir: &Path,
    servers: &[targets::Tugboot],
    records: &[MachineRecord],
    checks: &mut BTreeMap<String, String>,
) {
    let Some(t) = servers.last() else { return };
    let ns = &lab.servers[lab.servers.len() - 1];
    let out = Lab::command(ns, &files.tugboot)
        .args(["--json", "machines", "list"])
        .env("TUGBOOT_SERVER", format!("https://{}:8443", t.address))
        .env("TUGBOOT_TOKEN_FILE", t.dir.join("data/api/operator-token"))
        .env("TUGBOOT_CA_CERT", dir.join("ca/ca.pem"))
        .output();
    let text = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            checks.insert(
                "machines list".into(),
                format!("failed: {}", String::from_utf8_lossy(&o.stderr)),
            );
            return;
        }
        Err(e) => {
            checks.insert("machines list".into(), format!("failed: {e}"));
            return;
        }
    };
    let missing: Vec<&str> = records
        .iter()
        .map(|r| r.mac.as_str())
        .filter(|m| !text.contains(m))
        .collect();
    checks.insert(
        "machines list".into(),
        format!(
            "{} of {} storm machines listed by {} (missing: {:?})",
            records.len() - missing.len(),
            records.len(),
            t.address,
            &missing[..missing.len().min(10)]
        ),
    );
}

/// Creates database `db` on the server of `url`; returns the URL of the new database.
fn pg_create_db(url: &str, db: &str) -> Result<String> {
    lab::run(Command::new("psql").args([url, "-q", "-c", &format!("CREATE DATABASE {db}")]))
        .context("psql CREATE DATABASE")?;
    let (head, query) = url.split_once('?').unwrap_or((url, ""));
    let base = head.rsplit_once('/').map_or(head, |(b, _)| b);
    Ok(if query.is_empty() {
        format!("{base}/{db}")
    } else {
        format!("{base}/{db}?{query}")
    })
}

fn psql(url: &str, sql: &str) -> Result<String> {
    lab::run(Command::new("psql").args([url, "-At", "-c", sql]))
}

/// xact_commit, tup_inserted, tup_updated, tup_fetched, blks_read of the current database.
fn pg_stats(url: &str) -> Result<[i64; 5]> {
    let line = psql(
        url,
        "SELECT xact_commit, tup_inserted, tup_updated, tup_fetched, blks_read FROM pg_stat_database WHERE datname = current_database()",
    )?;
    let v: Vec<i64> = line
        .trim()
        .split('|')
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    if v.len() != 5 {
        bail!("unexpected pg_stat_database line {line:?}");
    }
    Ok([v[0], v[1], v[2], v[3], v[4]])
}

/// The postmaster's pid: the parent of the checkpointer (a backend would be gone with psql).
fn pg_postmaster(url: &str) -> Result<u32> {
    let cp: u32 = psql(
        url,
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'",
    )?
    .trim()
    .parse()
    .context("checkpointer pid")?;
    let status = fs::read_to_string(format!("/proc/{cp}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .context("postmaster pid")
}
