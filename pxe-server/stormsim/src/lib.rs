//! The boot-storm simulator's core: many machines netbooting at once, each playing the real
//! exchange sequence of its firmware with the firmware's own timing rules.
//!
//! Everything here is sans-IO (bytes and `now` in, datagrams and decisions out), so every rule
//! is tested with simulated time; the binary (`tugboot-stormsim`) is the shell that owns the
//! sockets, the clock, the network namespaces and the servers under test. See `docs/storm.md`.
//!
//! - [`dhcp`]: DHCP requests built from packets captured from the real firmware
//!   (`tests/fixtures/dhcp`), the relay agent's rewrite, and one client state machine whose
//!   retransmission and offer-selection rules are per firmware ([`dhcp::DhcpRules`]);
//! - [`tftp`]: a TFTP read client (options, windows, rollover, tsize probes and early aborts)
//!   with per-firmware retransmission rules;
//! - [`http`]: requests as iPXE and EDK2 send them and an incremental response-head parser;
//! - [`script`]: what the loaders read: iPXE scripts (a small interpreter), GRUB and PXELINUX
//!   configurations, a Raspberry Pi `config.txt`;
//! - [`family`]: the firmware families, their requests and rules;
//! - [`fleet`]: machine identities, the mix of families, racks and addresses;
//! - [`report`]: per-machine, per-phase records, statistics, the table and the JSON.

pub mod dhcp;
pub mod family;
pub mod fleet;
pub mod http;
pub mod report;
pub mod script;
pub mod tftp;

use std::time::Duration;

/// A retransmission schedule: how long to wait after each transmission before sending again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backoff {
    /// These waits in order; when they run out the exchange has failed.
    Table(&'static [u64]),
    /// `first`, then doubled each time up to `cap`, until `total` has passed since the start.
    Doubling { first: u64, cap: u64, total: u64 },
    /// The same wait every time until `total` has passed since the start.
    Fixed { every: u64, total: u64 },
    /// `base + step * n` for the n-th wait, `tries` waits in all (GRUB's network polling).
    Linear { base: u64, step: u64, tries: u32 },
}

impl Backoff {
    /// The wait after transmission number `n` (0 = the first transmission), or `None` when the
    /// schedule is exhausted. `elapsed` is the time since the exchange started (for schedules
    /// bounded by a total).
    #[must_use]
    pub fn wait(&self, n: u32, elapsed: Duration) -> Option<Duration> {
        let ms = |v: u64| Some(Duration::from_millis(v));
        let left = |total: u64| Duration::from_millis(total).saturating_sub(elapsed);
        match self {
            Backoff::Table(t) => t.get(usize::try_from(n).ok()?).copied().and_then(ms),
            Backoff::Doubling { first, cap, total } => {
                let rest = left(*total);
                if rest.is_zero() {
                    return None;
                }
                let w = first.saturating_mul(1u64 << n.min(30)).min(*cap);
                Some(Duration::from_millis(w).min(rest))
            }
            Backoff::Fixed { every, total } => {
                let rest = left(*total);
                if rest.is_zero() {
                    None
                } else {
                    Some(Duration::from_millis(*every).min(rest))
                }
            }
            Backoff::Linear { base, step, tries } => {
                (n < *tries).then(|| Duration::from_millis(base + step * u64::from(n)))
            }
        }
    }
}

/// A small deterministic generator (xorshift64*): power-on times, timer phases and file
/// contents are reproducible from the seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15 | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..bound` (`bound` > 0; modulo bias is irrelevant at these sizes).
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next_u64() % bound
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let z = Duration::ZERO;
        let t = Backoff::Table(&[4000, 8000]);
        assert_eq!(t.wait(0, z), Some(Duration::from_secs(4)));
        assert_eq!(t.wait(1, z), Some(Duration::from_secs(8)));
        assert_eq!(t.wait(2, z), None);
        let d = Backoff::Doubling {
            first: 250,
            cap: 2000,
            total: 28_000,
        };
        let waits: Vec<u64> = (0..5)
            .map(|n| u64::try_from(d.wait(n, z).unwrap().as_millis()).unwrap())
            .collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 2000]);
        assert_eq!(
            d.wait(9, Duration::from_millis(27_500)),
            Some(Duration::from_millis(500))
        );
        assert_eq!(d.wait(9, Duration::from_secs(28)), None);
        let l = Backoff::Linear {
            base: 400,
            step: 20,
            tries: 3,
        };
        assert_eq!(l.wait(2, z), Some(Duration::from_millis(440)));
        assert_eq!(l.wait(3, z), None);
    }

    #[test]
    fn rng_is_deterministic() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..10 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert!(Rng::new(1).below(10) < 10);
    }
}
