//! The fleet as a running server shares it: the current [`Fleet`] snapshot, swapped whole when
//! something it is built from changes, and the recent [`Observations`], updated by every front
//! end as packets arrive. Plain locks, no I/O: the shells (DHCP, TFTP, HTTP, device API) hold
//! one `Arc<Live>` each.

use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Tickets handed out to rebuilds ([`Live::refresh_ticket`]).
    refresh_issued: AtomicU64,
    /// The newest ticket whose rebuild was swapped in (written under the `fleet` write lock).
    refresh_applied: AtomicU64,
}

/// The place of one rebuild of the snapshot from outside state (the store) among all rebuilds
/// of a [`Live`]: taken before that state is read, see [`Live::refresh_ticket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RefreshTicket(u64);

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
            refresh_issued: AtomicU64::new(0),
            refresh_applied: AtomicU64::new(0),
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

    /// A ticket for a rebuild of the snapshot from outside state: take it **before** reading that
    /// state, swap the result in with [`Live::update_refreshed`]. Every change committed before
    /// a ticket was taken is seen by its rebuild and by every rebuild with a later ticket.
    pub fn refresh_ticket(&self) -> RefreshTicket {
        RefreshTicket(self.refresh_issued.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// Swaps in the snapshot the rebuild holding `ticket` derived, unless a rebuild with a later
    /// ticket was swapped in already: that one saw at least every change this one saw, and
    /// swapping this one in after it would put back what it replaced (an image published
    /// meanwhile, answered `201`, dropped from the catalogue until the next periodic refresh).
    /// Returns whether it was swapped in.
    pub fn update_refreshed(&self, ticket: RefreshTicket, f: impl FnOnce(&Fleet) -> Fleet) -> bool {
        let mut guard = self.fleet.write().unwrap_or_else(PoisonError::into_inner);
        if ticket.0 <= self.refresh_applied.load(Ordering::SeqCst) {
            return false;
        }
        self.refresh_applied.store(ticket.0, Ordering::SeqCst);
        let next = f(&guard);
        *guard = Arc::new(next);
        true
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_rebuild_never_replaces_a_newer_one() {
        let live = Live::new(Fleet::default());
        let named = |n: usize| {
            let machines = (0..n)
                .map(|i| Machine {
                    id: crate::MachineId(i64::try_from(i).unwrap() + 1),
                    name: None,
                    mac: None,
                    uuid: None,
                    serial: Some(format!("s{i}")),
                    state: crate::MachineState::Unknown,
                    facts: Facts::new(),
                    first_seen: 0,
                    last_seen: 0,
                    last_booted_image: None,
                })
                .collect();
            move |f: &Fleet| Fleet {
                registry: Registry::new(machines),
                ..f.clone()
            }
        };
        // Two rebuilds read the store in this order; the later one finishes first.
        let older = live.refresh_ticket();
        let newer = live.refresh_ticket();
        assert!(older < newer);
        assert!(live.update_refreshed(newer, named(2)));
        assert!(!live.update_refreshed(older, named(1)));
        assert_eq!(live.snapshot().registry.len(), 2);
        // The same ticket twice is applied once.
        assert!(!live.update_refreshed(newer, named(3)));
        let latest = live.refresh_ticket();
        assert!(live.update_refreshed(latest, named(3)));
        assert_eq!(live.snapshot().registry.len(), 3);
    }
}
