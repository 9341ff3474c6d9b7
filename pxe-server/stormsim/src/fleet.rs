//! The simulated fleet: which machine is of which family, its identity on the wire, and the
//! rack (relay, subnet) it sits in.
//!
//! Machines sit in racks (default [`RACK_SIZE`]) behind a relay agent each (the top-of-rack
//! switch relaying DHCP, as a hall of thousands of machines is built). Rack `r` is the subnet
//! `10.(100 + r / 256).(r % 256).0/24`: the relay is `.1`, the DHCP pool `.10`–`.249`, so a
//! rack has 2.4 addresses per machine: UEFI machines hold two leases each (the firmware sends
//! no client identifier, iPXE sends one, so servers see two clients), and a split-scope
//! server pair needs room when one of them is gone.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::dhcp::Identity;
use crate::family::Family;

/// Machines per rack by default (the pool of a /24 is .10 to .249: 240 addresses).
pub const RACK_SIZE: u32 = 100;
/// First and last pool host number in a rack subnet.
pub const POOL: (u8, u8) = (10, 249);

/// Why a mix cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MixError {
    #[error(
        "unknown family {0:?} (one of: ipxe-bios, bios-pxe, uefi-pxe, uefi-http, grub-arm64, uboot-arm64, rpi4)"
    )]
    Family(String),
    #[error("{0:?}: expected FAMILY=WEIGHT")]
    Syntax(String),
    #[error("the weights add up to zero")]
    Empty,
}

/// Families by weight (percentages, or any weights).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mix(pub Vec<(Family, u32)>);

impl Mix {
    /// `bios-pxe=50,uefi-pxe=50`.
    pub fn parse(s: &str) -> Result<Self, MixError> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| MixError::Syntax(part.into()))?;
            let family =
                Family::parse(name.trim()).ok_or_else(|| MixError::Family(name.trim().into()))?;
            let weight = weight
                .trim()
                .parse()
                .map_err(|_| MixError::Syntax(part.into()))?;
            out.push((family, weight));
        }
        if out.iter().map(|(_, w)| u64::from(*w)).sum::<u64>() == 0 {
            return Err(MixError::Empty);
        }
        Ok(Mix(out))
    }

    /// The family of each of `n` machines: counts by largest remainder, interleaved so every
    /// rack gets its share.
    #[must_use]
    pub fn assign(&self, n: u32) -> Vec<Family> {
        let total: u64 = self.0.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut given = vec![0u64; self.0.len()];
        let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        for i in 0..u64::from(n) {
            // The family furthest behind its share of the first i+1 machines.
            let pick = (0..self.0.len())
                .max_by(|&a, &b| {
                    let deficit = |k: usize| {
                        (i + 1) as f64 * f64::from(self.0[k].1) / total as f64 - given[k] as f64
                    };
                    deficit(a).total_cmp(&deficit(b)).then(b.cmp(&a))
                })
                .unwrap_or(0);
            given[pick] += 1;
            out.push(self.0[pick].0);
        }
        out
    }
}

/// One simulated machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub index: u32,
    pub family: Family,
    pub mac: [u8; 6],
    pub uuid: [u8; 16],
    pub pi_serial: Option<u32>,
    pub rack: u32,
}

impl Machine {
    /// Machine `index` of `family` in racks of `rack_size`: a MAC in an OUI its family uses
    /// (QEMU's `52:54:00`, the Raspberry Pi 4's `dc:a6:32`), a unique SMBIOS UUID, a Pi serial.
    #[must_use]
    pub fn new(index: u32, family: Family, rack_size: u32) -> Self {
        let i = index.to_be_bytes();
        let mac = match family {
            Family::Rpi4 => [0xdc, 0xa6, 0x32, i[1], i[2], i[3]],
            _ => [0x52, 0x54, 0x00, i[1], i[2], i[3]],
        };
        let mut uuid = [0u8; 16];
        uuid[..4].copy_from_slice(b"tbst");
        uuid[6] = 0x40;
        uuid[8] = 0x80;
        uuid[12..].copy_from_slice(&i);
        Machine {
            index,
            family,
            mac,
            uuid,
            pi_serial: (family == Family::Rpi4).then_some(0x5100_0000 | index),
            rack: index / rack_size.max(1),
        }
    }

    #[must_use]
    pub fn identity(&self) -> Identity {
        Identity {
            mac: self.mac,
            uuid: self.uuid,
            pi_serial: self.pi_serial,
        }
    }

    #[must_use]
    pub fn mac_text(&self) -> String {
        self.mac.map(|b| format!("{b:02x}")).join(":")
    }

    /// The transaction id of DHCP round `round` (0 firmware, 1 iPXE) of boot attempt
    /// `attempt`: unique in a run, so replies are routed back by it.
    #[must_use]
    pub fn xid(&self, attempt: u32, round: u32) -> u32 {
        ((self.index + 1) << 8) | ((attempt & 0xf) << 4) | (round & 0xf)
    }

    /// The Pi's TFTP prefix (its serial in hex).
    #[must_use]
    pub fn pi_prefix(&self) -> Option<String> {
        self.pi_serial.map(|s| format!("{s:08x}"))
    }
}

/// The relay agent (giaddr) of rack `r`.
#[must_use]
pub fn relay_address(rack: u32) -> Ipv4Addr {
    let [_, _, hi, lo] = rack.to_be_bytes();
    Ipv4Addr::new(10, 100u8.saturating_add(hi), lo, 1)
}

/// The network of rack `r` (a /24).
#[must_use]
pub fn rack_network(rack: u32) -> Ipv4Addr {
    let [a, b, c, _] = relay_address(rack).octets();
    Ipv4Addr::new(a, b, c, 0)
}

/// Racks needed for `machines` in racks of `rack_size`.
#[must_use]
pub fn racks(machines: u32, rack_size: u32) -> u32 {
    machines.div_ceil(rack_size.max(1)).max(1)
}

/// Builds the fleet.
#[must_use]
pub fn machines(n: u32, mix: &Mix, rack_size: u32) -> Vec<Machine> {
    mix.assign(n)
        .into_iter()
        .enumerate()
        .map(|(i, f)| Machine::new(u32::try_from(i).unwrap_or(u32::MAX), f, rack_size))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes() {
        let m = Mix::parse("bios-pxe=50, uefi-pxe=50").unwrap();
        let a = m.assign(10);
        assert_eq!(a.iter().filter(|f| **f == Family::BiosPxe).count(), 5);
        assert_ne!(a[0], a[1], "interleaved");
        let m = Mix::parse("ipxe-bios=1,rpi4=3").unwrap();
        let a = m.assign(1000);
        assert_eq!(a.iter().filter(|f| **f == Family::Rpi4).count(), 750);
        assert!(Mix::parse("x=1").is_err());
        assert!(Mix::parse("rpi4").is_err());
        assert!(Mix::parse("rpi4=0").is_err());
    }

    #[test]
    fn identities_and_racks() {
        let a = Machine::new(300, Family::Rpi4, 240);
        assert_eq!(a.mac, [0xdc, 0xa6, 0x32, 0, 1, 44]);
        assert_eq!(a.pi_prefix().as_deref(), Some("5100012c"));
        assert_eq!(a.rack, 1);
        assert_ne!(a.xid(1, 0), a.xid(1, 1));
        assert_ne!(a.xid(1, 0), Machine::new(301, Family::Rpi4, 240).xid(1, 0));
        assert_eq!(relay_address(0), Ipv4Addr::new(10, 100, 0, 1));
        assert_eq!(relay_address(257), Ipv4Addr::new(10, 101, 1, 1));
        assert_eq!(rack_network(3), Ipv4Addr::new(10, 100, 3, 0));
        assert_eq!(racks(10_000, 240), 42);
        assert_eq!(racks(10_000, RACK_SIZE), 100);
        assert_eq!(racks(0, 100), 1);
    }
}
