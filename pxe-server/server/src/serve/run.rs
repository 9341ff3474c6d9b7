//! `tugboot serve`: DHCP + TFTP + HTTP(S) on one tokio runtime, one shutdown for all.
//!
//! Start-up order: directories, trust root, profiles, board catalog, blob store, publish the
//! manifest directory, open the store, bind every socket (so a port conflict fails before
//! anything answers), then serve. SIGINT/SIGTERM stop all three servers (TFTP sends ERROR 0 to
//! running transfers, HTTP lets requests in flight finish); SIGHUP re-reads the profiles file
//! and publishes manifests added since.

use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tugboot_boards::Catalog;
use tugboot_dhcp::Event;
use tugboot_firmware::{BlobStore, MAX_ROOT_BYTES, Timestamp, TrustedRoot};
use tugboot_http::{BootRecord, BootServer, HttpConfig, ProfileSet};
use tugboot_store::{AnyStore, MacAddr, MachineSighting, Store};

use super::config::ServeConfig;
use super::netboot::NetbootFiles;
use super::publish::publish_dir;

/// Reads at most `limit` bytes of `path` (more is an error, not a truncation).
fn read_capped(path: &std::path::Path, limit: usize) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() > limit {
        bail!("{} is larger than {limit} bytes", path.display());
    }
    Ok(bytes)
}

fn load_root(config: &ServeConfig, now: Timestamp) -> anyhow::Result<TrustedRoot> {
    let bytes = read_capped(&config.trust_root, MAX_ROOT_BYTES)?;
    TrustedRoot::bootstrap(&bytes, now)
        .with_context(|| format!("trust root {}", config.trust_root.display()))
}

/// The profiles file, or an empty set (every machine gets the unknown-machine script).
pub fn load_profiles(config: &ServeConfig) -> anyhow::Result<ProfileSet> {
    let text = match &config.profiles {
        None => String::new(),
        Some(p) => {
            let bytes = read_capped(p, tugboot_http::profiles::MAX_PROFILES_FILE_BYTES)?;
            String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", p.display()))?
        }
    };
    ProfileSet::from_toml(&text).with_context(|| {
        format!(
            "profiles {}",
            config
                .profiles
                .as_deref()
                .map_or_else(|| "(none)".into(), |p| p.display().to_string())
        )
    })
}

async fn record_sightings(store: Arc<AnyStore>, mut events: mpsc::Receiver<Event>) {
    while let Some(event) = events.recv().await {
        let Event::UnknownMachine {
            mac: Some(mac),
            uuid,
            ..
        } = event
        else {
            continue;
        };
        let sighting = MachineSighting {
            mac: MacAddr(mac.0),
            smbios_uuid: uuid,
            serial: None,
            board: None,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        match store.record_sighting(&sighting, now).await {
            Ok(m) => {
                tracing::info!(machine = %m.id, mac = %sighting.mac, state = ?m.state, "machine sighted")
            }
            Err(e) => tracing::error!(mac = %sighting.mac, error = %e, "cannot record sighting"),
        }
    }
}

async fn record_boots(store: Arc<AnyStore>, mut records: mpsc::Receiver<BootRecord>) {
    while let Some(r) = records.recv().await {
        let Some(mac) = r.mac else {
            tracing::debug!(profile = %r.profile, image = %r.image, "boot without a MAC: not recorded");
            continue;
        };
        let sighting = MachineSighting {
            mac: MacAddr(mac.0),
            smbios_uuid: r.uuid,
            serial: r.serial,
            board: r.board,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let recorded = async {
            let m = store.record_sighting(&sighting, now).await?;
            store.record_boot(m.id, &r.image, now).await
        };
        match recorded.await {
            Ok(m) => {
                tracing::info!(machine = %m.id, mac = %sighting.mac, image = %r.image, "boot recorded")
            }
            Err(e) => tracing::error!(mac = %sighting.mac, error = %e, "cannot record boot"),
        }
    }
}

/// Runs the server until SIGINT/SIGTERM.
pub fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tugboot")
        .build()
        .context("tokio runtime")?;
    rt.block_on(serve_async(config))
}

async fn serve_async(config: ServeConfig) -> anyhow::Result<()> {
    for dir in [&config.data_dir, &config.manifest_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let now = Timestamp::now();
    let root = load_root(&config, now)?;
    let profiles = load_profiles(&config)?;
    let catalog = match &config.boards_dir {
        Some(d) => Catalog::load_dir(d).with_context(|| format!("boards {}", d.display()))?,
        None => Catalog::builtin(),
    };
    let blobs = BlobStore::open(&config.blob_dir)
        .with_context(|| format!("blob store {}", config.blob_dir.display()))?;
    let api_blobs = blobs.clone();
    let http_config = HttpConfig {
        base_url: Some(config.http.public_url.clone()),
        boot_dir: config.http.boot_dir.clone(),
        retry_secs: config.http.retry_secs,
        unknown_machine: config.http.unknown_machine,
        ..HttpConfig::default()
    };
    // TFTP boot files for loaders without iPXE (GRUB, U-Boot): same images, same profiles.
    let netboot = Arc::new(NetbootFiles::new(
        blobs.clone(),
        profiles.clone(),
        catalog.clone(),
        config.http.retry_secs,
    ));
    let boot = BootServer::with_catalog(blobs, profiles, catalog, http_config);
    let outcomes = publish_dir(&boot, Some(&netboot), &root, &config.manifest_dir, now)
        .with_context(|| format!("manifests {}", config.manifest_dir.display()))?;
    let refused: Vec<String> = outcomes
        .iter()
        .filter(|o| o.result.is_err())
        .map(|o| o.path.display().to_string())
        .collect();
    tracing::info!(
        published = outcomes.len() - refused.len(),
        ?refused,
        "manifests"
    );

    let store = Arc::new(
        AnyStore::open(&config.store)
            .await
            .with_context(|| format!("store {}", config.store))?,
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();

    // Who booted what, when: every boot script served is recorded on the machine in the store
    // (`tugboot machines list` shows it). Off the request path, through a channel.
    let (boot_tx, boot_rx) = mpsc::channel::<BootRecord>(1024);
    boot.on_boot(Arc::new(move |record| {
        if boot_tx.try_send(record).is_err() {
            tracing::warn!("boot record consumer behind, record dropped");
        }
    }));
    {
        let store = Arc::clone(&store);
        let stop = stopped();
        tasks.spawn(async move {
            tokio::select! {
                () = record_boots(store, boot_rx) => {},
                () = stop => {},
            }
            ("boots", Ok(()))
        });
    }

    // HTTP(S): bind first; it is what every other answer points to.
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {} (http)", config.http.listen))?;
    let http_addr = listener.local_addr().context("http listen address")?;
    let tls = match &config.http.tls {
        None => None,
        Some((cert, key)) => {
            let chain = read_capped(cert, tugboot_http::tls::MAX_PEM_BYTES)?;
            let key = read_capped(key, tugboot_http::tls::MAX_PEM_BYTES)?;
            Some(tugboot_http::server_config(&chain, &key).context("TLS certificate or key")?)
        }
    };
    {
        let boot = Arc::clone(&boot);
        let shutdown = stopped();
        tasks.spawn(async move {
            let r = match tls {
                None => tugboot_http::serve(listener, boot, shutdown).await,
                Some(tls) => tugboot_http::serve_tls(listener, tls, boot, shutdown).await,
            };
            ("http", r.context("http server"))
        });
    }

    let mut tftp_addr = None;
    if let Some(t) = &config.tftp {
        let tftp_config = tugboot_tftp::ServerConfig {
            single_port: t.single_port,
            max_transfers: t.max_transfers,
            limits: t.limits,
            ..tugboot_tftp::ServerConfig::new(t.listen, &t.root)
        };
        let provider: Arc<dyn tugboot_tftp::FileProvider> = netboot.clone();
        let server = tugboot_tftp::Server::bind(tftp_config)
            .await
            .context("tftp server")?
            .with_provider(provider);
        tftp_addr = Some(server.local_addr().context("tftp listen address")?);
        let stats = server.stats();
        boot.add_metrics(Arc::new(move |out: &mut String| {
            super::metrics::tftp(&stats.snapshot(), out);
        }));
        let shutdown = stopped();
        tasks.spawn(async move { ("tftp", server.run(shutdown).await.context("tftp server")) });
    }

    // Device API (`[api]`): same store, blob store and trust root; stops with the others.
    let mut api_addr = None;
    if let Some(a) = &config.api {
        let (server, listener) =
            api_server(a, AnyStore::clone(&store), api_blobs, root.clone()).await?;
        api_addr = Some(listener.local_addr().context("api listen address")?);
        let shutdown = stopped();
        tasks.spawn(async move {
            tokio::select! {
                r = server.serve(listener) => ("api", r.context("device API")),
                () = shutdown => ("api", Ok(())),
            }
        });
    }

    if let Some(d) = &config.dhcp {
        let records = tugboot_dhcp::server::load_leases(&config.lease_file)?;
        let mut server = tugboot_dhcp::Server::new(d.config.clone());
        server.restore(&records);
        tracing::info!(records = records.len(), file = %config.lease_file.display(), "dhcp leases restored");
        let shell = tugboot_dhcp::server::ShellConfig {
            device: config.network.interface.clone(),
            interface_address: config.network.address,
            lease_file: config.lease_file.clone(),
            pxe_port: d.pxe_port,
            dhcp_port: d.port,
            max_batch: tugboot_dhcp::server::MAX_BATCH,
        };
        let (ev_tx, ev_rx) = mpsc::channel(1024);
        tasks.spawn(async move {
            record_sightings(store, ev_rx).await;
            ("sightings", Ok(()))
        });
        let counters = Arc::new(super::dhcp::DhcpCounters::default());
        let for_metrics = Arc::clone(&counters);
        boot.add_metrics(Arc::new(move |out: &mut String| for_metrics.render(out)));
        let shutdown = stopped();
        tasks.spawn(async move {
            let r = super::dhcp::run(server, shell, ev_tx, counters, shutdown).await;
            ("dhcp", r.context("dhcp server"))
        });
    }

    tracing::info!(
        http = %http_addr,
        public_url = config.http.public_url.as_str(),
        tftp = %tftp_addr.map_or_else(|| "off".into(), |a| a.to_string()),
        dhcp = config.dhcp.is_some(),
        api = %api_addr.map_or_else(|| "off".into(), |a: std::net::SocketAddr| a.to_string()),
        "tugboot serve: ready"
    );

    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut failure: Option<anyhow::Error> = None;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => reload(&config, &boot, &netboot),
            done = tasks.join_next() => {
                match done {
                    Some(Ok((name, Ok(())))) => {
                        // The sightings task ends when DHCP ends; a server ending on its own is a failure.
                        if name != "sightings" {
                            failure = Some(anyhow::anyhow!("{name} server stopped unexpectedly"));
                            break;
                        }
                    }
                    Some(Ok((_, Err(e)))) => { failure = Some(e); break; }
                    Some(Err(e)) => { failure = Some(anyhow::anyhow!("server task failed: {e}")); break; }
                    None => break,
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    while let Some(done) = tasks.join_next().await {
        if let Ok((name, Err(e))) = done {
            tracing::error!(
                server = name,
                error = format!("{e:#}"),
                "stopped with an error"
            );
        }
    }
    tracing::info!("tugboot serve: stopped");
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// SIGHUP: new profiles, newly added manifests. A broken file keeps the previous state.
fn reload(config: &ServeConfig, boot: &BootServer, netboot: &NetbootFiles) {
    tracing::info!("SIGHUP: reloading profiles and manifests");
    match load_profiles(config) {
        Ok(p) => {
            netboot.set_profiles(p.clone());
            boot.set_profiles(p);
        }
        Err(e) => tracing::error!(error = format!("{e:#}"), "profiles not reloaded"),
    }
    let now = Timestamp::now();
    match load_root(config, now) {
        Ok(root) => {
            if let Err(e) = publish_dir(boot, Some(netboot), &root, &config.manifest_dir, now) {
                tracing::error!(error = %e, "manifest directory unreadable");
            }
        }
        Err(e) => tracing::error!(
            error = format!("{e:#}"),
            "trust root unreadable; nothing published"
        ),
    }
}

/// The device API of `[api]`: the CA from `ca_dir` (made by `tugboot ca init`), the server
/// certificate issued or reused in `state_dir`, the operator token (created when absent), and
/// the bound listener, so a port conflict fails start-up like the other servers'.
async fn api_server(
    a: &super::config::ApiSettings,
    store: AnyStore,
    blobs: BlobStore,
    trusted_root: TrustedRoot,
) -> anyhow::Result<(tugboot_api::ApiServer, tokio::net::TcpListener)> {
    std::fs::create_dir_all(&a.state_dir)
        .with_context(|| format!("cannot create {}", a.state_dir.display()))?;
    let ca = tugboot_api::CertAuthority::load(&a.ca_dir).with_context(|| {
        format!(
            "api.ca_dir {} (create it with `tugboot ca init --dir {}`)",
            a.ca_dir.display(),
            a.ca_dir.display()
        )
    })?;
    let clock = tugboot_api::server::system_clock();
    let config = tugboot_api::ApiConfig {
        artifact_base_url: a.artifact_base_url.clone(),
        report_timeout_secs: a.report_timeout_secs,
        ..tugboot_api::ApiConfig::default()
    };
    let cert = tugboot_api::server::load_or_issue_server_cert(
        &a.state_dir,
        &ca,
        &a.server_names,
        clock(),
        config.renew_before_secs,
    )
    .context("api server certificate")?;
    ensure_operator_token(&a.operator_token_file)?;
    let operator = tugboot_api::tokens::OperatorToken::from_file(&a.operator_token_file)
        .context("api.operator_token_file")?;
    let server = tugboot_api::ApiServer::new(tugboot_api::ApiParts {
        store,
        ca,
        state_dir: a.state_dir.clone(),
        operator,
        blobs,
        trusted_root,
        server_cert_pem: cert.cert_pem,
        server_key_pem: cert.key_pem,
        config,
        clock,
    })
    .context("device API")?;
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {} (api)", a.listen))?;
    Ok((server, listener))
}

/// Creates the operator token file (256 random bits, hex, mode 0600, never overwriting) when
/// it does not exist, so a first start needs no extra step; the operator copies it to where
/// the CLI runs.
fn ensure_operator_token(path: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write as _;
    if path.exists() {
        return Ok(());
    }
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| anyhow::anyhow!("random token: {e}"))?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(format!("{}\n", hex::encode(bytes)).as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(file = %path.display(), "operator token created");
    Ok(())
}
