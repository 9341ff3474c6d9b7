//! The machine registry as front ends read it: an immutable snapshot of the store's machines,
//! indexed by every identifier a request can carry.

use std::collections::HashMap;

use tugboot_wire::{Mac, Uuid};

use crate::machine::{Machine, MachineId};

/// Machines by id, MAC, UUID and serial.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    machines: Vec<Machine>,
    by_id: HashMap<MachineId, usize>,
    by_mac: HashMap<Mac, usize>,
    by_uuid: HashMap<Uuid, usize>,
    by_serial: HashMap<String, usize>,
}

impl Registry {
    /// Indexes `machines`. On a duplicate identifier (the store prevents them for MACs; UUIDs and
    /// serials are not unique there), the machine with the lowest id keeps it.
    #[must_use]
    pub fn new(mut machines: Vec<Machine>) -> Self {
        machines.sort_by_key(|m| m.id);
        let mut r = Registry::default();
        for (i, m) in machines.iter().enumerate() {
            r.by_id.insert(m.id, i);
            if let Some(mac) = m.mac {
                r.by_mac.entry(mac).or_insert(i);
            }
            if let Some(uuid) = m.uuid {
                r.by_uuid.entry(uuid).or_insert(i);
            }
            if let Some(serial) = &m.serial {
                r.by_serial.entry(serial.clone()).or_insert(i);
            }
        }
        r.machines = machines;
        r
    }

    /// The machine a request identifies: by MAC first, then UUID, then serial.
    #[must_use]
    pub fn find(
        &self,
        mac: Option<Mac>,
        uuid: Option<Uuid>,
        serial: Option<&str>,
    ) -> Option<&Machine> {
        mac.and_then(|m| self.by_mac.get(&m))
            .or_else(|| uuid.and_then(|u| self.by_uuid.get(&u)))
            .or_else(|| serial.and_then(|s| self.by_serial.get(s)))
            .and_then(|&i| self.machines.get(i))
    }

    /// The machine with this id.
    #[must_use]
    pub fn get(&self, id: MachineId) -> Option<&Machine> {
        self.by_id.get(&id).and_then(|&i| self.machines.get(i))
    }

    /// The machine with this MAC.
    #[must_use]
    pub fn by_mac(&self, mac: Mac) -> Option<&Machine> {
        self.by_mac.get(&mac).and_then(|&i| self.machines.get(i))
    }

    /// Every machine, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Machine> {
        self.machines.iter()
    }

    /// Number of machines.
    #[must_use]
    pub fn len(&self) -> usize {
        self.machines.len()
    }

    /// No machines.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.machines.is_empty()
    }
}
