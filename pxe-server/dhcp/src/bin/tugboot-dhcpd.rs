//! Stand-alone DHCP/proxyDHCP daemon around `tugboot-dhcp` (used by the netns
//! conformance tests; `tugboot serve` runs the same loop, `tugboot_dhcp::server`).
//!
//! `tugboot-dhcpd --config dhcp.toml --leases leases.jsonl [--interface eth0] [--no-pxe-port]
//! [--max-batch N] [--compact-min-records N] [--compact-ratio R]`
//!
//! `--max-batch`: at most N datagrams per lease-log `fsync` (1..=4096, default 4096).
//! `--compact-min-records` / `--compact-ratio`: compact the lease log once it holds at
//! least N lines and more than R lines per live lease (defaults 16384 and 4).

use std::path::PathBuf;

use anyhow::{Context, bail};
use tugboot_dhcp::server::{
    Compaction, Counters, LeaseLog, MAX_BATCH, ShellConfig, StderrSink, run_with_log,
};
use tugboot_dhcp::{Config, Server};

fn number<T: std::str::FromStr>(
    args: &mut impl Iterator<Item = String>,
    flag: &str,
    ok: impl Fn(&T) -> bool,
) -> anyhow::Result<T> {
    args.next()
        .and_then(|n| n.parse().ok())
        .filter(ok)
        .with_context(|| format!("{flag} takes a number in range"))
}

fn main() -> anyhow::Result<()> {
    let mut config_path = None;
    let mut leases = None;
    let mut device = None;
    let mut pxe_port = true;
    let mut max_batch = MAX_BATCH;
    let mut policy = Compaction::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => config_path = args.next().map(PathBuf::from),
            "--leases" => leases = args.next().map(PathBuf::from),
            "--interface" => device = args.next(),
            "--no-pxe-port" => pxe_port = false,
            "--max-batch" => {
                max_batch = number(&mut args, &a, |n| (1..=MAX_BATCH).contains(n))?;
            }
            "--compact-min-records" => policy.min_records = number(&mut args, &a, |_| true)?,
            "--compact-ratio" => policy.ratio = number(&mut args, &a, |n| *n >= 1)?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    let config_path = config_path.context("--config is required")?;
    let lease_file = leases.context("--leases is required")?;
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let config = Config::from_toml(&text)?;
    let interface_address = config.server_address;
    let (log, recovered) = LeaseLog::open(&lease_file, policy)?;
    let mut server = Server::new(config);
    server.restore(&recovered.live);
    eprintln!(
        "dhcp: {} live leases restored from {} records ({} bytes of torn tail cut{})",
        recovered.live.len(),
        recovered.records,
        recovered.torn_bytes,
        if recovered.compacted {
            ", log compacted"
        } else {
            ""
        }
    );
    let shell = ShellConfig {
        device,
        interface_address,
        lease_file,
        pxe_port,
        dhcp_port: tugboot_dhcp::core::DHCP_SERVER_PORT,
        max_batch,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let counters = Counters::default();
    let result = rt.block_on(async {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        run_with_log(
            server,
            shell,
            log,
            &counters,
            &mut StderrSink::default(),
            shutdown,
        )
        .await
    });
    let counts: Vec<String> = counters
        .snapshot()
        .fields()
        .iter()
        .map(|(name, _, v)| format!("{name}={v}"))
        .collect();
    eprintln!("dhcp: stopped; {}", counts.join(" "));
    result?;
    Ok(())
}
