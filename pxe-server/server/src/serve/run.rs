//! `tugboot serve`: DHCP, TFTP, HTTP(S) and the device API on one tokio runtime, all front ends
//! of one live fleet.
//!
//! Start-up order: directories, trust root, profiles, board catalog, blob store, store; the
//! profiles file's machines synced into the registry and the manifest directory imported into
//! the catalogue; the fleet snapshot built from the store; then every socket bound (so a port
//! conflict fails before anything answers), then serve. While running, what the front ends
//! observe is recorded in the store in batches, and the snapshot is rebuilt from the store
//! periodically (other servers on the same PostgreSQL change it too) and after every change.
//!
//! SIGINT/SIGTERM stop every server (TFTP sends ERROR 0 to running transfers, HTTP lets
//! requests in flight finish); SIGHUP re-reads the trust root and the profiles file, syncs the
//! declared machines and imports manifests added since. A DHCP failure (its lease log, its
//! sockets) stops DHCP only, with a clear error; the other services keep serving.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tugboot_boards::Catalog;
use tugboot_dhcp::Event;
use tugboot_firmware::{BlobStore, MAX_ROOT_BYTES, Timestamp, TrustedRoot};
use tugboot_fleet::observe::dhcp_facts;
use tugboot_fleet::profiles::MAX_PROFILES_FILE_BYTES;
use tugboot_fleet::{BootPlan, Facts, Fleet, Live, Mac, MachineId, ProfileSet};
use tugboot_http::{BootServer, HttpConfig};
use tugboot_store::{AnyStore, Sighting, Store};

use super::config::ServeConfig;
use super::netboot::NetbootFiles;
use super::publish::import_dir;

/// How often the fleet snapshot is rebuilt from the store when nothing here changed it.
const REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Sightings written to the store at most this long after they were observed.
const OBSERVATION_FLUSH: Duration = Duration::from_millis(250);
/// Observations queued for the store before new ones are dropped (netboot does not wait for
/// them: they are a record, the live table already has them).
const OBSERVATION_QUEUE: usize = 16_384;

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

/// The profiles file, or an empty set (every machine gets the unknown-machine answer).
pub fn load_profiles(config: &ServeConfig) -> anyhow::Result<ProfileSet> {
    let text = match &config.profiles {
        None => String::new(),
        Some(p) => {
            let bytes = read_capped(p, MAX_PROFILES_FILE_BYTES)?;
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

/// The board catalogue (`boards_dir`, else the built-in one), checked against the profiles.
pub fn load_boards(config: &ServeConfig, profiles: &ProfileSet) -> anyhow::Result<Catalog> {
    let boards = match &config.boards_dir {
        Some(d) => Catalog::load_dir(d).with_context(|| format!("boards {}", d.display()))?,
        None => Catalog::builtin(),
    };
    profiles
        .check_boards(&boards)
        .context("profiles file names a board the catalog does not have")?;
    Ok(boards)
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// What a running server shares between its tasks.
struct Shared {
    config: ServeConfig,
    store: AnyStore,
    blobs: BlobStore,
    live: Arc<Live>,
    root: std::sync::RwLock<TrustedRoot>,
}

impl Shared {
    fn root(&self) -> TrustedRoot {
        self.root
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Syncs the profiles file's machines and imports the manifest directory into the store.
    async fn sync_sources(&self, profiles: &ProfileSet) -> anyhow::Result<()> {
        let now = unix_now();
        let summary = self
            .store
            .declare_machines(profiles.machines(), now)
            .await
            .context("declaring the profiles file's machines in the store")?;
        tracing::info!(
            machines = profiles.machines().len(),
            created = summary.created,
            facts_written = summary.facts_written,
            facts_withdrawn = summary.facts_withdrawn,
            "profiles file synced into the machine registry"
        );
        let outcomes = import_dir(
            &self.store,
            &self.blobs,
            &self.root(),
            &self.config.manifest_dir,
            Timestamp::now(),
        )
        .await
        .with_context(|| format!("manifests {}", self.config.manifest_dir.display()))?;
        let refused: Vec<String> = outcomes
            .iter()
            .filter(|o| o.result.is_err())
            .map(|o| o.path.display().to_string())
            .collect();
        tracing::info!(
            imported = outcomes.len() - refused.len(),
            ?refused,
            "manifest directory imported into the catalogue"
        );
        Ok(())
    }

    /// Rebuilds the live catalogue and registry from the store.
    async fn refresh(&self) {
        match tugboot_store::refresh_live(
            &self.live,
            &self.store,
            &self.blobs,
            &self.root(),
            Timestamp::now(),
        )
        .await
        {
            Ok(problems) => {
                for p in problems {
                    tracing::warn!(image = %p.name, version = p.version, reason = %p.reason, "published image not served by this server");
                }
            }
            Err(e) => tracing::error!(error = %e, "fleet refresh from the store failed"),
        }
    }
}

/// Writes observations to the store in batches (one transaction each, at most
/// [`tugboot_store::MAX_SIGHTINGS_PER_BATCH`] machines), merging repeated sightings of one
/// machine; what a failed batch held is retried with the next, after [`OBSERVATION_FLUSH`]. On
/// `stop` what is pending is written before returning.
async fn record_observations(
    store: AnyStore,
    mut rx: mpsc::Receiver<(Mac, Facts)>,
    stop: impl std::future::Future<Output = ()>,
) {
    let max = tugboot_store::MAX_SIGHTINGS_PER_BATCH;
    let mut pending: HashMap<Mac, Facts> = HashMap::new();
    tokio::pin!(stop);
    let mut stopping = false;
    loop {
        // Leftovers of a full or failed batch are written without waiting for more.
        let wait = pending.is_empty() && !stopping;
        let take = |(mac, facts)| {
            merge(&mut pending, mac, facts);
            pending.len() < max
        };
        if gather(&mut rx, &mut stop, wait, take).await {
            stopping = true;
        }
        if pending.is_empty() {
            if stopping {
                return;
            }
            continue;
        }
        let macs: Vec<Mac> = pending.keys().take(max).copied().collect();
        let batch: Vec<Sighting> = macs
            .into_iter()
            .filter_map(|mac| pending.remove(&mac).map(|facts| Sighting { mac, facts }))
            .collect();
        match store.observe(&batch, unix_now()).await {
            Ok(_) => tracing::debug!(machines = batch.len(), "observations recorded"),
            Err(e) => {
                for s in batch {
                    merge(&mut pending, s.mac, s.facts);
                }
                if stopping {
                    tracing::error!(error = %e, machines = pending.len(), "observations not recorded at shutdown");
                    return;
                }
                tracing::warn!(error = %e, machines = pending.len(), "observations not recorded; retrying");
                tokio::select! {
                    () = tokio::time::sleep(OBSERVATION_FLUSH) => {},
                    () = &mut stop => stopping = true,
                }
            }
        }
    }
}

/// Takes a batch's worth from `rx` into `take`, which returns false once the batch is full.
/// With `wait` it first blocks for one item and then takes what arrives within
/// [`OBSERVATION_FLUSH`] of it; then whatever is already queued. Returns true once `stop` fired
/// or the channel closed: the caller writes what it holds and ends.
async fn gather<T, S: std::future::Future<Output = ()>>(
    rx: &mut mpsc::Receiver<T>,
    stop: &mut std::pin::Pin<&mut S>,
    wait: bool,
    mut take: impl FnMut(T) -> bool,
) -> bool {
    let mut room = true;
    let mut stopped = false;
    if wait {
        tokio::select! {
            first = rx.recv() => match first {
                Some(item) => room = take(item),
                None => return true,
            },
            () = stop.as_mut() => stopped = true,
        }
        let deadline = tokio::time::sleep(OBSERVATION_FLUSH);
        tokio::pin!(deadline);
        while room && !stopped {
            tokio::select! {
                () = &mut deadline => break,
                () = stop.as_mut() => stopped = true,
                next = rx.recv() => match next {
                    Some(item) => room = take(item),
                    None => break,
                },
            }
        }
    }
    while room {
        let Ok(item) = rx.try_recv() else { break };
        room = take(item);
    }
    stopped
}

fn merge(pending: &mut HashMap<Mac, Facts>, mac: Mac, facts: Facts) {
    let entry = pending.entry(mac).or_default();
    *entry = entry.overlaid(&facts);
}

/// A boot decided by a script or loader configuration: the machine (when registered), its
/// MAC, and the image.
type BootRecord = (Option<MachineId>, Option<Mac>, String);

/// Records who booted what, when, off the request path: in batches (what arrives within
/// [`OBSERVATION_FLUSH`] of a first boot), one store transaction each (a storm of 1,000
/// machines wrote 1,000 transactions before). On `stop` what is pending is written first.
async fn record_boots(
    store: AnyStore,
    mut rx: mpsc::Receiver<BootRecord>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let max = tugboot_store::MAX_SIGHTINGS_PER_BATCH;
    let mut stopping = false;
    loop {
        let mut batch = Vec::new();
        let take = |boot| {
            batch.push(boot);
            batch.len() < max
        };
        if gather(&mut rx, &mut stop, !stopping, take).await {
            stopping = true;
        }
        // Stopping: the queue may hold several batches (the store's writer can be busy for
        // seconds in a storm); write them all.
        let drained = batch.len() < max;
        write_boots(&store, batch).await;
        if stopping && drained {
            return;
        }
    }
}

/// Writes a batch of boots: machines not registered yet are created from their MAC first (one
/// batch), then every boot in one transaction.
async fn write_boots(store: &AnyStore, batch: Vec<BootRecord>) {
    if batch.is_empty() {
        return;
    }
    let now = unix_now();
    let mut unregistered: Vec<Mac> = batch
        .iter()
        .filter_map(|(machine, mac, _)| if machine.is_none() { *mac } else { None })
        .collect();
    unregistered.sort_unstable();
    unregistered.dedup();
    let mut by_mac = HashMap::new();
    if !unregistered.is_empty() {
        let sightings: Vec<Sighting> = unregistered
            .iter()
            .map(|&mac| Sighting {
                mac,
                facts: Facts::new(),
            })
            .collect();
        match store.observe(&sightings, now).await {
            Ok(ids) => by_mac = unregistered.into_iter().zip(ids).collect(),
            Err(e) => {
                tracing::error!(error = %e, machines = sightings.len(), "cannot record boots of unregistered machines");
            }
        }
    }
    let boots: Vec<(MachineId, String)> = batch
        .into_iter()
        .filter_map(|(machine, mac, image)| {
            machine
                .or_else(|| mac.and_then(|mac| by_mac.get(&mac).copied()))
                .map(|id| (id, image))
        })
        .collect();
    match store.record_boots(&boots, now).await {
        Ok(_) => {
            for (id, image) in &boots {
                tracing::info!(machine = %id, image = %image, "boot recorded");
            }
        }
        Err(e) => tracing::error!(error = %e, boots = boots.len(), "cannot record boots"),
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

#[allow(clippy::too_many_lines)] // the start-up sequence reads best in one place
async fn serve_async(config: ServeConfig) -> anyhow::Result<()> {
    // Handlers first: a SIGHUP sent as soon as "ready" is logged must reload, not kill.
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    for dir in [&config.data_dir, &config.manifest_dir] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let root = load_root(&config, Timestamp::now())?;
    let profiles = load_profiles(&config)?;
    let boards = load_boards(&config, &profiles)?;
    let blobs = BlobStore::open(&config.blob_dir)
        .with_context(|| format!("blob store {}", config.blob_dir.display()))?;
    // Nothing writes blobs before serve is up: what `tmp/` holds is left by a killed `put`.
    match blobs.clean_tmp() {
        Ok(0) => {}
        Ok(n) => tracing::info!(files = n, "removed leftovers of interrupted blob writes"),
        Err(e) => tracing::warn!(error = %e, "cannot clean the blob store's tmp directory"),
    }
    let store = AnyStore::open(&config.store)
        .await
        .with_context(|| format!("store {}", config.store))?;
    let live = Arc::new(Live::new(Fleet {
        profiles: profiles.clone(),
        boards,
        ..Fleet::default()
    }));
    let shared = Arc::new(Shared {
        config: config.clone(),
        store: store.clone(),
        blobs: blobs.clone(),
        live: Arc::clone(&live),
        root: std::sync::RwLock::new(root.clone()),
    });
    shared.sync_sources(&profiles).await?;
    shared.refresh().await;
    let snapshot = live.snapshot();
    tracing::info!(
        images = snapshot.catalogue.len(),
        machines = snapshot.registry.len(),
        "fleet loaded"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut tasks: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();

    // What the front ends observe goes to the store in batches (and to the console's live view).
    let events = tugboot_api::server::events::Events::default();
    let (obs_tx, obs_rx) = mpsc::channel::<(Mac, Facts)>(OBSERVATION_QUEUE);
    let seen = events.clone();
    live.on_observation(Box::new(move |mac, facts| {
        seen.observed(mac, facts);
        if obs_tx.try_send((mac, facts.clone())).is_err() {
            tracing::debug!(%mac, "observation recorder behind; observation kept in memory only");
        }
    }));
    {
        let store = store.clone();
        let stop = stopped();
        tasks.spawn(async move {
            record_observations(store, obs_rx, stop).await;
            ("observations", Ok(()))
        });
    }

    // Who booted what, when: every boot decided by a script or a loader configuration.
    // As deep as the observation queue: a hall of machines booting within seconds while the
    // store's writer is busy with a batch of sightings (1,024 dropped 8,036 of 10,000).
    let (boot_tx, boot_rx) = mpsc::channel(OBSERVATION_QUEUE);
    let booted = events.clone();
    let on_boot: Arc<dyn Fn(&BootPlan) + Send + Sync> = Arc::new(move |plan: &BootPlan| {
        booted.booted(plan);
        if boot_tx
            .try_send((plan.machine, plan.mac, plan.booted()))
            .is_err()
        {
            tracing::warn!("boot record consumer behind, record dropped");
        }
    });
    {
        let store = store.clone();
        let stop = stopped();
        tasks.spawn(async move {
            record_boots(store, boot_rx, stop).await;
            ("boots", Ok(()))
        });
    }

    // The snapshot follows the store (other servers, newly seen machines).
    {
        let shared = Arc::clone(&shared);
        let stop = stopped();
        tasks.spawn(async move {
            let refresh = async {
                let mut tick = tokio::time::interval(REFRESH_INTERVAL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    shared.refresh().await;
                }
            };
            tokio::select! {
                () = refresh => {},
                () = stop => {},
            }
            ("refresh", Ok(()))
        });
    }

    // HTTP(S): bind first; it is what every other answer points to.
    let http_config = HttpConfig {
        base_url: Some(config.http.public_url.clone()),
        boot_dir: config.http.boot_dir.clone(),
        retry_secs: config.http.retry_secs,
        unknown_machine: config.http.unknown_machine,
        max_connections_per_peer: config.http.max_connections_per_peer,
        file_send: config.http.file_send,
        ..HttpConfig::default()
    };
    let boot = BootServer::new(blobs.clone(), Arc::clone(&live), http_config);
    boot.on_boot(Arc::clone(&on_boot));
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
            max_transfers_per_peer: t.max_transfers_per_peer,
            buffer_budget: t.buffer_budget,
            limits: t.limits,
            ..tugboot_tftp::ServerConfig::new(t.listen, &t.root)
        };
        let provider: Arc<dyn tugboot_tftp::FileProvider> = Arc::new(NetbootFiles::new(
            Arc::clone(&live),
            blobs.clone(),
            t.rpi_firmware.clone(),
            config.http.retry_secs,
            Some(Arc::clone(&on_boot)),
        ));
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

    // Device API (`[api]`): same store, blob store, trust root and live fleet.
    let mut api_addr = None;
    if let Some(a) = &config.api {
        let (server, listener) = api_server(
            a,
            store.clone(),
            Arc::clone(&live),
            blobs.clone(),
            root.clone(),
            events.clone(),
        )
        .await?;
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
        let mut dhcp_config = d.config.clone();
        add_declared_reservations(&mut dhcp_config, &profiles);
        let shell = tugboot_dhcp::server::ShellConfig {
            device: config.network.interface.clone(),
            interface_address: config.network.address,
            lease_file: config.lease_file.clone(),
            pxe_port: d.pxe_port,
            dhcp_port: d.port,
            max_batch: tugboot_dhcp::server::MAX_BATCH,
        };
        let records = tugboot_dhcp::server::load_leases(&config.lease_file)?;
        let mut server = tugboot_dhcp::Server::new(dhcp_config);
        server.restore(&records);
        tracing::info!(records = records.len(), file = %config.lease_file.display(), "dhcp leases restored");
        // A hall's DHCP burst (10,000 machines, four messages each, in seconds) must not
        // overflow it: a dropped event is a machine the registry learns of later, or never.
        let (ev_tx, ev_rx) = mpsc::channel(OBSERVATION_QUEUE);
        {
            let live = Arc::clone(&live);
            tasks.spawn(async move {
                observe_dhcp(live, ev_rx).await;
                ("dhcp events", Ok(()))
            });
        }
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

    let mut failure: Option<anyhow::Error> = None;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => reload(&shared).await,
            done = tasks.join_next() => {
                match done {
                    // DHCP failing (its lease log, its sockets) must not take the boot files,
                    // the scripts and the device API down with it.
                    Some(Ok(("dhcp", Err(e)))) => {
                        tracing::error!(error = format!("{e:#}"), "DHCP stopped; TFTP, HTTP and the device API keep serving");
                    }
                    Some(Ok(("dhcp events", Ok(())))) => {}
                    Some(Ok((name, Ok(())))) => {
                        failure = Some(anyhow::anyhow!("{name} stopped unexpectedly"));
                        break;
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

/// DHCP events become observed facts of the live fleet (and, through it, of the store).
async fn observe_dhcp(live: Arc<Live>, mut events: mpsc::Receiver<Event>) {
    while let Some(event) = events.recv().await {
        let now = unix_now();
        match event {
            Event::Observed(o) => {
                if let Some(mac) = o.mac {
                    live.observe(mac, &observation_facts(&o, now), now);
                }
            }
            Event::Leased {
                address,
                mac: Some(mac),
                ..
            } => {
                let a = address.to_string();
                let facts = tugboot_fleet::observe::observed(
                    tugboot_fleet::Observer::Dhcp,
                    now,
                    &[("address", &a)],
                );
                live.observe(mac, &facts, now);
            }
            _ => {}
        }
    }
}

/// The facts one DHCP observation yields: firmware, architecture and netboot kind from its
/// classification, the identifiers it carried, the relay path only when the relay is trusted
/// (anyone can put option 82 into a datagram), and the address once it is the client's
/// (leased here or claimed in `ciaddr`; an offer is not an address yet).
fn observation_facts(o: &tugboot_dhcp::Observation, now: i64) -> tugboot_fleet::Facts {
    use tugboot_dhcp::ObservedAddress;
    use tugboot_fleet::facts::{keys, sanitize_value};
    let text = |b: &[u8]| sanitize_value(b);
    let mut owned: Vec<(&str, String)> = Vec::new();
    if let Some(v) = o.vendor_class.as_deref().and_then(text) {
        owned.push((keys::VENDOR_CLASS, v));
    }
    if let Some(v) = o.user_classes.first().and_then(|u| text(u)) {
        owned.push((keys::USER_CLASS, v));
    }
    if let Some(u) = o.uuid {
        owned.push((keys::UUID, u.to_string()));
    }
    if let Some(s) = &o.pi_serial {
        owned.push((keys::SERIAL, s.clone()));
    }
    if let Some(h) = o
        .hostname_text()
        .as_deref()
        .and_then(|h| text(h.as_bytes()))
    {
        owned.push((keys::HOSTNAME, h));
    }
    if let Some(r) = o.relay.as_ref().filter(|r| r.trusted) {
        owned.push((keys::RELAY, r.giaddr.to_string()));
        if let Some(c) = &r.circuit_id {
            owned.push((keys::CIRCUIT_ID, hex::encode(c)));
        }
        if let Some(id) = &r.remote_id {
            owned.push((keys::REMOTE_ID, hex::encode(id)));
        }
    }
    if let Some(ObservedAddress::Leased(a) | ObservedAddress::Claimed(a)) = o.address {
        owned.push((keys::ADDRESS, a.to_string()));
    }
    let extra: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    dhcp_facts(&o.firmware.label(), &extra, now)
}

/// DHCP reservations of the machines the profiles file declares with a MAC (a fixed `address`
/// and `hostname` when given): one registry for DHCP too. A MAC or address `[dhcp]` already
/// reserves keeps its `serve.toml` reservation.
fn add_declared_reservations(config: &mut tugboot_dhcp::Config, profiles: &ProfileSet) {
    let macs: BTreeSet<Mac> = config.reservations.iter().filter_map(|r| r.mac).collect();
    let addresses: BTreeSet<Ipv4Addr> = config
        .reservations
        .iter()
        .filter_map(|r| r.address)
        .collect();
    for m in profiles.machines() {
        let Some(mac) = m.mac else { continue };
        if macs.contains(&mac) || m.address.is_some_and(|a| addresses.contains(&a)) {
            tracing::warn!(machine = %m.display_name(), %mac, "[dhcp] reservations already name this MAC or address; the profiles file's entry is not used for DHCP");
            continue;
        }
        config.reservations.push(tugboot_dhcp::config::Reservation {
            mac: Some(mac),
            client_id: None,
            address: m.address,
            hostname: m.hostname.clone(),
        });
    }
}

/// SIGHUP: the trust root, the profiles file (a broken one keeps the previous profiles),
/// declared machines, manifests added since; then a fresh snapshot.
async fn reload(shared: &Shared) {
    tracing::info!("SIGHUP: reloading the trust root, profiles and manifests");
    match load_root(&shared.config, Timestamp::now()) {
        Ok(root) => {
            *shared
                .root
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = root;
        }
        Err(e) => tracing::error!(
            error = format!("{e:#}"),
            "trust root unreadable; keeping the previous one"
        ),
    }
    let profiles = match load_profiles(&shared.config) {
        Ok(p) => match p.check_boards(&shared.live.snapshot().boards) {
            Ok(()) => Some(p),
            Err(e) => {
                tracing::error!(error = %e, "profiles not reloaded");
                None
            }
        },
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "profiles not reloaded");
            None
        }
    };
    let current = profiles.unwrap_or_else(|| shared.live.snapshot().profiles.clone());
    if let Err(e) = shared.sync_sources(&current).await {
        tracing::error!(error = format!("{e:#}"), "reload incomplete");
    }
    shared.live.update(|f| Fleet {
        profiles: current.clone(),
        ..f.clone()
    });
    shared.refresh().await;
}

/// The device API of `[api]`: the CA from `ca_dir` (made by `tugboot ca init`), the server
/// certificate issued or reused in `state_dir`, the operator token (created when absent), and
/// the bound listener, so a port conflict fails start-up like the other servers'.
async fn api_server(
    a: &super::config::ApiSettings,
    store: AnyStore,
    live: Arc<Live>,
    blobs: BlobStore,
    trusted_root: TrustedRoot,
    events: tugboot_api::server::events::Events,
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
        silent_after_secs: a.silent_after_secs,
        max_connections_per_peer: a.max_connections_per_peer,
        body_timeout: std::time::Duration::from_secs(a.body_timeout_secs),
        max_pending_enrollments: a.max_pending_enrollments,
        token_ttl_secs: a.token_ttl_secs,
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
    let mut server = tugboot_api::ApiServer::new_with_events(
        tugboot_api::ApiParts {
            store,
            live,
            ca,
            state_dir: a.state_dir.clone(),
            operator,
            blobs,
            trusted_root,
            server_cert_pem: cert.cert_pem,
            server_key_pem: cert.key_pem,
            config,
            clock,
        },
        events,
    )
    .context("device API")?;
    if a.console {
        let console = tugboot_console::router(server.state());
        server = server.with_routes(console);
    }
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
