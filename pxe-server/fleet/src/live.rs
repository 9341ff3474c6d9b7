//! The fleet as a running server shares it: the current [`Fleet`] snapshot, swapped whole when
//! something it is built from changes, and the recent [`Observations`], updated by every front
//! end as packets arrive. Plain locks, no I/O: the shells (DHCP, TFTP, HTTP, device API) hold
//! one `Arc<Live>` each.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tugboot_wire::Mac;

use crate::facts::Facts;
use crate::machine::Machine;
use crate::observe::Observations;
use crate::plan::{BootPlan, BootRequest, Fleet, NoBoot};
use crate::registry::Registry;

/// Told about every observation (e.g. to persist it to the store off the request path). Called
/// with the lock released; it must not block.
pub type ObservationSink = Box<dyn Fn(Mac, &Facts) + Send + Sync>;

/// The shared state of one server.
pub struct Live {
    fleet: RwLock<Arc<Fleet>>,
    observations: Mutex<Observations>,
    sink: RwLock<Option<ObservationSink>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fleet = self.snapshot();
        f.debug_struct("Live")
            .field("images", &fleet.catalogue.len())
            .field("machines", &fleet.registry.len())
            .finish_non_exhaustive()
    }
}

impl Live {
    /// Starts from `fleet`, with an empty observation table of default size.
    #[must_use]
    pub fn new(fleet: Fleet) -> Self {
        Self::with_observations(fleet, Observations::default())
    }

    /// Starts from `fleet` and `observations`.
    #[must_use]
    pub fn with_observations(fleet: Fleet, observations: Observations) -> Self {
        Self {
            fleet: RwLock::new(Arc::new(fleet)),
            observations: Mutex::new(observations),
            sink: RwLock::new(None),
        }
    }

    /// The current snapshot. Cheap (an `Arc` clone); requests keep the one they started with.
    #[must_use]
    pub fn snapshot(&self) -> Arc<Fleet> {
        Arc::clone(&self.fleet.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Swaps in a new snapshot.
    pub fn replace(&self, fleet: Fleet) {
        *self.fleet.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(fleet);
    }

    /// Swaps in a snapshot derived from the current one (e.g. new profiles, same catalogue).
    pub fn update(&self, f: impl FnOnce(&Fleet) -> Fleet) {
        let mut guard = self.fleet.write().unwrap_or_else(PoisonError::into_inner);
        let next = f(&guard);
        *guard = Arc::new(next);
    }

    /// Puts one machine as the store now has it into the snapshot (after its own report changed
    /// its facts), without reloading the rest: a new registry, the same catalogue and profiles.
    pub fn put_machine(&self, machine: Machine) {
        self.update(|fleet| {
            let mut machines: Vec<Machine> = fleet
                .registry
                .iter()
                .filter(|m| m.id != machine.id)
                .cloned()
                .collect();
            machines.push(machine);
            Fleet {
                registry: Registry::new(machines),
                ..fleet.clone()
            }
        });
    }

    /// Sets who is told about observations.
    pub fn on_observation(&self, sink: ObservationSink) {
        *self.sink.write().unwrap_or_else(PoisonError::into_inner) = Some(sink);
    }

    /// Records what the network saw of `mac` at `now`, then tells the sink.
    pub fn observe(&self, mac: Mac, facts: &Facts, now: i64) {
        if facts.is_empty() {
            return;
        }
        self.observations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(mac, facts, now);
        if let Some(sink) = self
            .sink
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            sink(mac, facts);
        }
    }

    /// Reads the observation table.
    pub fn with_observations_read<R>(&self, f: impl FnOnce(&Observations) -> R) -> R {
        f(&self
            .observations
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
    }

    /// What `mac` was observed as within the TTL (a copy).
    #[must_use]
    pub fn observed(&self, mac: Mac, now: i64) -> Facts {
        self.with_observations_read(|o| o.get(mac, now).cloned().unwrap_or_default())
    }

    /// The plan for a request whose own observations are `request` (already recorded with
    /// [`Live::observe`] or not): layered over what was observed of its MAC before.
    pub fn plan(
        &self,
        mac: Option<Mac>,
        uuid: Option<tugboot_wire::Uuid>,
        serial: Option<&str>,
        request: &Facts,
        now: i64,
    ) -> Result<BootPlan, NoBoot> {
        let seen = mac.map(|m| self.observed(m, now)).unwrap_or_default();
        let facts = seen.overlaid(request);
        self.snapshot().plan(&BootRequest {
            mac,
            uuid,
            serial,
            observed: &facts,
        })
    }
}
