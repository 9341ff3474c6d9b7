//! Stand-alone DHCP/proxyDHCP daemon around `tugboot-dhcp` (used by the netns
//! conformance test; the `tugboot` binary embeds the same shell).
//!
//! `tugboot-dhcpd --config dhcp.toml --leases leases.jsonl [--interface eth0] [--no-pxe-port]
//! [--max-batch N]` (at most N datagrams per lease-file `fsync`, 1..=4096, default 4096)

use std::path::PathBuf;

use anyhow::{Context, bail};
use tugboot_dhcp::server::{ShellConfig, load_leases, run};
use tugboot_dhcp::{Config, Server};

fn main() -> anyhow::Result<()> {
    let mut config_path = None;
    let mut leases = None;
    let mut device = None;
    let mut pxe_port = true;
    let mut max_batch = tugboot_dhcp::server::MAX_BATCH;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => config_path = args.next().map(PathBuf::from),
            "--leases" => leases = args.next().map(PathBuf::from),
            "--interface" => device = args.next(),
            "--no-pxe-port" => pxe_port = false,
            "--max-batch" => {
                max_batch = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| (1..=tugboot_dhcp::server::MAX_BATCH).contains(n))
                    .with_context(|| {
                        format!(
                            "--max-batch takes a number from 1 to {}",
                            tugboot_dhcp::server::MAX_BATCH
                        )
                    })?;
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    let config_path = config_path.context("--config is required")?;
    let lease_file = leases.context("--leases is required")?;
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let config = Config::from_toml(&text)?;
    let interface_address = config.server_address;
    let records = load_leases(&lease_file)?;
    let mut server = Server::new(config);
    server.restore(&records);
    eprintln!("dhcp: {} lease records restored", records.len());
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
    rt.block_on(async {
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
        eprintln!("dhcp: serving");
        run(server, shell, shutdown).await
    })?;
    Ok(())
}
