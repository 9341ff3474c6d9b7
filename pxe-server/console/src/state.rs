//! The console's running state and its two background tasks: the event recorder (fleet events
//! → rows for the live view, report events → the health table) and the health table's rebuild
//! from the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::broadcast;
use tugboot_api::ApiState;
use tugboot_api::server::events::FleetEvent;
use tugboot_fleet::MachineId;
use tugboot_store::{Store, StoreError};

use crate::health::{Health, HealthIndex, RESYNC_SECS, problem, report_problem};
use crate::live::{EventLog, Row};
use crate::session::Sessions;

/// Store queries in flight at once while the health table is rebuilt.
const REBUILD_CONCURRENCY: usize = 8;

/// Everything the handlers share.
#[derive(Debug)]
pub struct Console {
    /// The API state: store, live fleet, settings, operator actions.
    pub api: Arc<ApiState>,
    pub(crate) sessions: Mutex<Sessions>,
    pub(crate) log: Mutex<EventLog>,
    pub(crate) rows: broadcast::Sender<Arc<Row>>,
    pub(crate) health: RwLock<HealthIndex>,
}

/// Unix milliseconds from the system clock (event arrival times; the shell's own clock).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Console {
    /// The state, with no background task started (tests, the benchmark).
    #[must_use]
    pub fn new(api: Arc<ApiState>) -> Arc<Self> {
        let (rows, _) = broadcast::channel(256);
        Arc::new(Self {
            api,
            sessions: Mutex::new(Sessions::default()),
            log: Mutex::new(EventLog::default()),
            rows,
            health: RwLock::new(HealthIndex::default()),
        })
    }

    /// Starts the event recorder and the periodic health rebuild on the current tokio runtime.
    /// They stop once the console is dropped (with the router that holds it).
    pub fn start_tasks(self: &Arc<Self>) {
        let events = self.api.events().subscribe();
        tokio::spawn(record(Arc::downgrade(self), events));
        tokio::spawn(resync(Arc::downgrade(self)));
    }

    pub(crate) fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the session with this cookie value is still alive (not counted as a use).
    pub(crate) fn session_alive(&self, id: &str) -> bool {
        self.sessions().alive(id, self.api.unix_now())
    }

    pub(crate) fn log(&self) -> std::sync::MutexGuard<'_, EventLog> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn health(&self) -> std::sync::RwLockReadGuard<'_, HealthIndex> {
        self.health.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn health_mut(&self) -> std::sync::RwLockWriteGuard<'_, HealthIndex> {
        self.health.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Rebuilds the health table from the store: each machine's certificates, and the latest
    /// report of those that hold one.
    ///
    /// # Errors
    /// Store errors (the previous table stays).
    pub async fn rebuild_health(&self) -> Result<usize, StoreError> {
        let started = self.api.unix_now();
        let ids: Vec<MachineId> = self
            .api
            .live()
            .snapshot()
            .registry
            .iter()
            .map(|m| m.id)
            .collect();
        let store = self.api.store();
        let results: Vec<Result<Option<(MachineId, Health)>, StoreError>> =
            futures_util::stream::iter(ids)
                .map(|id| async move {
                    let certs = store.list_device_certs(id).await?;
                    if certs.is_empty() {
                        return Ok(None);
                    }
                    let latest = store.list_reports(id, 1).await?;
                    let latest = latest.first();
                    Ok(Some((
                        id,
                        Health {
                            enrolled: certs.iter().any(|c| c.is_valid_at(started)),
                            last_report_at: latest.map(|r| r.received_at),
                            problem: latest.and_then(report_problem),
                        },
                    )))
                })
                .buffer_unordered(REBUILD_CONCURRENCY)
                .collect()
                .await;
        let mut table = HashMap::new();
        for r in results {
            if let Some((id, h)) = r? {
                table.insert(id, h);
            }
        }
        let n = table.len();
        self.health_mut()
            .replace(table, started, self.api.unix_now());
        Ok(n)
    }

    /// Records one fleet event: a row for the live view (and its subscribers), and a report's
    /// verdict in the health table.
    pub fn record(&self, event: &FleetEvent) {
        if let FleetEvent::Reported {
            device,
            outcome,
            failed_checks,
            last_error,
            ..
        } = event
        {
            let p = problem(outcome.as_deref(), failed_checks, last_error.as_deref());
            self.health_mut()
                .reported(MachineId(*device), self.api.unix_now(), p);
        }
        let row = self.log().push(event, now_ms());
        let _ = self.rows.send(row);
    }
}

async fn record(console: Weak<Console>, mut events: broadcast::Receiver<Arc<FleetEvent>>) {
    loop {
        let event = events.recv().await;
        let Some(c) = console.upgrade() else { return };
        match event {
            Ok(e) => c.record(&e),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                c.log().skipped += n;
                tracing::debug!(skipped = n, "console event recorder behind");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn resync(console: Weak<Console>) {
    loop {
        {
            let Some(c) = console.upgrade() else { return };
            let t = std::time::Instant::now();
            match c.rebuild_health().await {
                Ok(n) => tracing::debug!(
                    enrolled = n,
                    millis = t.elapsed().as_millis(),
                    "console health table rebuilt"
                ),
                Err(e) => tracing::warn!(error = %e, "console health table not rebuilt"),
            }
        }
        tokio::time::sleep(Duration::from_secs(RESYNC_SECS)).await;
    }
}
