//! What the network saw recently, by MAC: the bridge between what DHCP observed and what the
//! other front ends answer.
//!
//! A GRUB or U-Boot configuration request over TFTP carries nothing but a MAC; the DHCP request
//! a moment earlier said the machine is arm64 UEFI (option 93 = 11). [`Observations`] keeps those
//! facts (all `observed`, the lowest rank) for a while, bounded in size, so a plan made for the
//! TFTP request sees `arch = arm64` and a group `{ arch = "arm64" }` matches a machine nobody
//! declared. The shell also persists observations to the store (the registry shows them with
//! their source); this table is the fast path between two packets of one boot.
//!
//! Also here: the mapping from what firmware and iPXE report to the fleet's fact vocabulary.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use tugboot_wire::Mac;

use crate::facts::{Fact, FactKey, Facts, Observer, Source, keys, normalize_arch};

/// Default number of machines remembered.
pub const DEFAULT_CAPACITY: usize = 65_536;
/// Default age after which an observation no longer informs a plan (seconds).
pub const DEFAULT_TTL_SECS: i64 = 3600;

#[derive(Debug, Clone)]
struct Entry {
    facts: Facts,
    at: i64,
}

/// Recent observations by MAC. Bounded: beyond `capacity` machines the least recently
/// observed are forgotten (they are in the store anyway).
#[derive(Debug, Clone)]
pub struct Observations {
    entries: HashMap<Mac, Entry>,
    /// The MAC that last held an address (DHCP's `address` fact): TFTP requests carry only
    /// the peer address.
    by_address: HashMap<Ipv4Addr, Mac>,
    /// The MAC a serial was last seen with (a Raspberry Pi's DHCP option 97): its TFTP paths
    /// carry only the serial.
    by_serial: HashMap<String, Mac>,
    capacity: usize,
    ttl_secs: i64,
}

impl Default for Observations {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY, DEFAULT_TTL_SECS)
    }
}

impl Observations {
    /// At most `capacity` machines (at least 1), each for `ttl_secs`.
    #[must_use]
    pub fn new(capacity: usize, ttl_secs: i64) -> Self {
        Self {
            entries: HashMap::new(),
            by_address: HashMap::new(),
            by_serial: HashMap::new(),
            capacity: capacity.max(1),
            ttl_secs,
        }
    }

    /// Records what was observed about `mac` at `now` (merged into what is known, by the fact
    /// rules: newer observations replace older ones).
    pub fn record(&mut self, mac: Mac, facts: &Facts, now: i64) {
        if !self.entries.contains_key(&mac) && self.entries.len() >= self.capacity {
            self.evict(now);
        }
        let entry = self.entries.entry(mac).or_insert_with(|| Entry {
            facts: Facts::new(),
            at: now,
        });
        for (k, f) in facts.iter() {
            entry.facts.offer(k.clone(), f.clone());
        }
        entry.at = entry.at.max(now);
        if let Some(a) = facts.value(keys::ADDRESS).and_then(|a| a.parse().ok()) {
            self.by_address.insert(a, mac);
        }
        if let Some(serial) = facts.value(keys::SERIAL) {
            self.by_serial.insert(serial.to_owned(), mac);
        }
    }

    /// The MAC that last held `address` (within the TTL).
    #[must_use]
    pub fn mac_at(&self, address: Ipv4Addr, now: i64) -> Option<Mac> {
        self.by_address
            .get(&address)
            .copied()
            .filter(|m| self.get(*m, now).is_some())
    }

    /// The MAC last seen with this serial (within the TTL).
    #[must_use]
    pub fn mac_of_serial(&self, serial: &str, now: i64) -> Option<Mac> {
        self.by_serial
            .get(serial)
            .copied()
            .filter(|m| self.get(*m, now).is_some())
    }

    /// What was observed about `mac` within the TTL.
    #[must_use]
    pub fn get(&self, mac: Mac, now: i64) -> Option<&Facts> {
        self.entries
            .get(&mac)
            .filter(|e| now.saturating_sub(e.at) <= self.ttl_secs)
            .map(|e| &e.facts)
    }

    /// Machines remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// None remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops expired entries, then the oldest eighth: amortised O(1) per insertion.
    fn evict(&mut self, now: i64) {
        let ttl = self.ttl_secs;
        self.entries.retain(|_, e| now.saturating_sub(e.at) <= ttl);
        if self.entries.len() >= self.capacity {
            let mut ages: Vec<i64> = self.entries.values().map(|e| e.at).collect();
            let cut = (self.capacity / 8).max(1).min(ages.len() - 1);
            let (_, &mut threshold, _) = ages.select_nth_unstable(cut);
            self.entries.retain(|_, e| e.at > threshold);
        }
        let entries = &self.entries;
        self.by_address.retain(|_, m| entries.contains_key(m));
        self.by_serial.retain(|_, m| entries.contains_key(m));
    }
}

/// Builds observed facts: `(name, value)` pairs with one source and time; values that do not
/// pass [`crate::facts::check_value`] are skipped (observations are best effort).
#[must_use]
pub fn observed(observer: Observer, at: i64, pairs: &[(&str, &str)]) -> Facts {
    let mut out = Facts::new();
    for (k, v) in pairs {
        if crate::facts::check_value(v).is_ok()
            && let Ok(key) = FactKey::new(k)
        {
            out.offer(
                key,
                Fact {
                    value: (*v).to_owned(),
                    source: Source::Observed(observer),
                    at,
                },
            );
        }
    }
    out
}

/// Architecture and firmware family of a DHCP client kind, as the DHCP core labels it
/// (`pxe/bios`, `http-boot/uefi-x64`, `ipxe/uefi-arm64`, `uboot/uboot-arm64`, `rpi/pi4`):
/// `(netboot, arch, firmware, board)`. Option 93 = 0 says "x86 BIOS" and nothing about the CPU:
/// BIOS PXE machines are taken as `x86_64` (no 32-bit-only x86 server is netbooted today), so a
/// group `arch = "x86_64"` covers BIOS and UEFI alike, and `firmware` tells them apart.
#[must_use]
pub fn dhcp_client_facts(
    label: &str,
) -> (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
) {
    let (kind, platform) = label.split_once('/').unwrap_or((label, ""));
    let netboot = match kind {
        "pxe" => "pxe",
        "http-boot" => "http-boot",
        "ipxe" => "ipxe",
        "uboot" => "uboot",
        "rpi" => "rpi",
        _ => "dhcp",
    };
    if kind == "rpi" {
        let board = match platform {
            "pi3" => Some("raspberrypi-3"),
            "pi4" => Some("raspberrypi-4"),
            "pi5" => Some("raspberrypi-5"),
            _ => None,
        };
        return (netboot, Some("arm64"), Some("rpi"), board);
    }
    let (arch, firmware) = match platform {
        "bios" => (Some("x86_64"), Some("bios")),
        "uefi-ia32" => (Some("i386"), Some("uefi")),
        "uefi-x64" => (Some("x86_64"), Some("uefi")),
        "uefi-arm32" => (Some("arm32"), Some("uefi")),
        "uefi-arm64" => (Some("arm64"), Some("uefi")),
        "uefi-riscv64" => (Some("riscv64"), Some("uefi")),
        "uboot-arm32" => (Some("arm32"), Some("uboot")),
        "uboot-arm64" => (Some("arm64"), Some("uboot")),
        _ => (None, None),
    };
    (netboot, arch, firmware, None)
}

/// Architecture and firmware from iPXE's `${buildarch}` and `${platform}`. iPXE's BIOS build is
/// `i386` on every x86 PC (`undionly.kpxe` runs in 32-bit mode on 64-bit CPUs): with platform
/// `pcbios` that means an x86 BIOS machine, `x86_64` as for [`dhcp_client_facts`].
#[must_use]
pub fn ipxe_facts(
    buildarch: Option<&str>,
    platform: Option<&str>,
) -> (Option<&'static str>, Option<&'static str>) {
    match platform {
        Some("pcbios") => (Some("x86_64"), Some("bios")),
        Some("efi") => (buildarch.and_then(normalize_arch), Some("uefi")),
        _ => (buildarch.and_then(normalize_arch), None),
    }
}

/// The facts a DHCP observation yields (see [`dhcp_client_facts`]), plus the raw identifiers.
#[must_use]
pub fn dhcp_facts(label: &str, extra: &[(&str, &str)], at: i64) -> Facts {
    let (netboot, arch, firmware, board) = dhcp_client_facts(label);
    let mut pairs: Vec<(&str, &str)> = vec![(keys::NETBOOT, netboot)];
    if let Some(a) = arch {
        pairs.push((keys::ARCH, a));
    }
    if let Some(f) = firmware {
        pairs.push((keys::FIRMWARE, f));
    }
    if let Some(b) = board {
        pairs.push((keys::BOARD, b));
    }
    pairs.extend_from_slice(extra);
    observed(Observer::Dhcp, at, &pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, n])
    }

    #[test]
    fn dhcp_arch_reaches_later_lookups_until_the_ttl() {
        let mut o = Observations::new(100, 60);
        o.record(mac(1), &dhcp_facts("pxe/uefi-arm64", &[], 1000), 1000);
        let f = o.get(mac(1), 1030).unwrap();
        assert_eq!(f.value("arch"), Some("arm64"));
        assert_eq!(f.value("firmware"), Some("uefi"));
        assert_eq!(f.get("arch").unwrap().source.as_str(), "observed:dhcp");
        assert!(o.get(mac(1), 1061).is_none(), "expired");
        assert!(o.get(mac(2), 1000).is_none());
        o.record(
            mac(2),
            &observed(
                Observer::Dhcp,
                1000,
                &[("address", "10.0.0.7"), ("serial", "8a3b1c2d")],
            ),
            1000,
        );
        assert_eq!(o.mac_at([10, 0, 0, 7].into(), 1010), Some(mac(2)));
        assert_eq!(o.mac_of_serial("8a3b1c2d", 1010), Some(mac(2)));
        assert_eq!(o.mac_at([10, 0, 0, 7].into(), 2000), None, "expired");
        // A later observation refreshes.
        o.record(mac(1), &dhcp_facts("ipxe/uefi-x64", &[], 1100), 1100);
        assert_eq!(o.get(mac(1), 1100).unwrap().value("arch"), Some("x86_64"));
    }

    #[test]
    fn capacity_is_bounded() {
        let mut o = Observations::new(64, 1_000_000);
        for i in 0..200u8 {
            o.record(
                mac(i),
                &observed(Observer::Dhcp, 0, &[("arch", "arm64")]),
                i64::from(i),
            );
        }
        assert!(o.len() <= 64, "{}", o.len());
        assert!(o.get(mac(199), 199).is_some(), "the newest stays");
        assert!(o.get(mac(0), 199).is_none(), "the oldest went");
    }

    #[test]
    fn firmware_vocabulary() {
        assert_eq!(
            dhcp_client_facts("pxe/bios"),
            ("pxe", Some("x86_64"), Some("bios"), None)
        );
        assert_eq!(
            dhcp_client_facts("uboot/uboot-arm64"),
            ("uboot", Some("arm64"), Some("uboot"), None)
        );
        assert_eq!(
            dhcp_client_facts("rpi/pi4"),
            ("rpi", Some("arm64"), Some("rpi"), Some("raspberrypi-4"))
        );
        assert_eq!(dhcp_client_facts("plain").1, None);
        assert_eq!(
            ipxe_facts(Some("i386"), Some("pcbios")),
            (Some("x86_64"), Some("bios"))
        );
        assert_eq!(
            ipxe_facts(Some("x86_64"), Some("efi")),
            (Some("x86_64"), Some("uefi"))
        );
        assert_eq!(ipxe_facts(Some("arm64"), None), (Some("arm64"), None));
        let f = observed(
            Observer::Http,
            1,
            &[("arch", "arm64"), ("hostname", "a\nb")],
        );
        assert_eq!(f.len(), 1, "the bad value is skipped");
    }
}
