//! What a storm measured: per machine and phase records, their statistics, a table for people
//! and JSON for scripts.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::family::{Family, Phase};

/// One phase of one boot attempt of one machine. Times are milliseconds since the storm began
/// (the first machine's power-on window opened).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseRecord {
    pub phase: Phase,
    pub attempt: u32,
    pub start_ms: f64,
    pub end_ms: f64,
    pub ok: bool,
    /// Retransmissions and reconnections within the phase.
    pub retries: u32,
    /// Payload bytes received (file and script contents).
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// One machine's storm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineRecord {
    pub index: u32,
    pub family: Family,
    pub mac: String,
    pub power_on_ms: f64,
    /// Boot attempts (1 = no firmware-level retry).
    pub attempts: u32,
    /// Every address a DHCP ACK gave this machine (all rounds, all attempts).
    pub leases: Vec<Ipv4Addr>,
    /// The server that booted it (DHCP server identifier of the last lease).
    pub server: Option<Ipv4Addr>,
    /// When the last artifact (kernel or initrd) was complete.
    pub booted_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub failure: Option<String>,
    /// Artifacts checked against their SHA-256 (`None`: not checked).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub verified: Option<bool>,
    pub phases: Vec<PhaseRecord>,
}

impl MachineRecord {
    /// Booted without any firmware-level retry and without a failed phase.
    #[must_use]
    pub fn first_attempt(&self) -> bool {
        self.booted_ms.is_some() && self.attempts == 1 && self.phases.iter().all(|p| p.ok)
    }
}

/// Percentiles of one phase's durations (of the phases that completed), milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseStats {
    pub phase: Phase,
    pub completed: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub retries: u64,
    pub failures: usize,
}

/// The storm in numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub machines: usize,
    pub booted: usize,
    pub failed: usize,
    /// Booted with no firmware-level retry and no failed phase.
    pub first_attempt: usize,
    /// When the last machine had its last artifact (ms since the storm began).
    pub last_booted_ms: Option<f64>,
    /// When the last machine had its initrd.
    pub last_initrd_ms: Option<f64>,
    /// Boot time (power-on to last artifact) percentiles.
    pub boot_p50_ms: f64,
    pub boot_p99_ms: f64,
    pub phases: Vec<PhaseStats>,
    /// Addresses ACKed to more than one machine (must be empty).
    pub leased_twice: Vec<(Ipv4Addr, Vec<String>)>,
    pub by_family: BTreeMap<String, (usize, usize)>,
    /// Failure reasons and how many machines ended with each.
    pub failures: BTreeMap<String, usize>,
}

/// Nearest-rank percentile of sorted values.
#[must_use]
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil().max(1.0);
    // A rank is at most len: the cast is exact for any fleet size.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let i = (rank as usize).min(sorted.len()) - 1;
    sorted[i]
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (
        percentile(&v, 50.0),
        percentile(&v, 95.0),
        percentile(&v, 99.0),
        v.last().copied().unwrap_or(0.0),
    )
}

/// Summarises the records.
#[must_use]
pub fn summarize(records: &[MachineRecord]) -> Summary {
    let mut phases = Vec::new();
    for phase in Phase::ALL {
        let of: Vec<&PhaseRecord> = records
            .iter()
            .flat_map(|r| r.phases.iter())
            .filter(|p| p.phase == phase)
            .collect();
        if of.is_empty() {
            continue;
        }
        let durations: Vec<f64> = of
            .iter()
            .filter(|p| p.ok)
            .map(|p| p.end_ms - p.start_ms)
            .collect();
        let completed = durations.len();
        let (p50, p95, p99, max) = stats(durations);
        phases.push(PhaseStats {
            phase,
            completed,
            p50_ms: p50,
            p95_ms: p95,
            p99_ms: p99,
            max_ms: max,
            retries: of.iter().map(|p| u64::from(p.retries)).sum(),
            failures: of.iter().filter(|p| !p.ok).count(),
        });
    }
    let mut holders: HashMap<Ipv4Addr, Vec<String>> = HashMap::new();
    for r in records {
        let mut seen: Vec<Ipv4Addr> = r.leases.clone();
        seen.sort();
        seen.dedup();
        for a in seen {
            holders.entry(a).or_default().push(r.mac.clone());
        }
    }
    let mut leased_twice: Vec<(Ipv4Addr, Vec<String>)> =
        holders.into_iter().filter(|(_, m)| m.len() > 1).collect();
    leased_twice.sort();
    let mut by_family: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    for r in records {
        let e = by_family.entry(r.family.name().into()).or_default();
        e.0 += 1;
        if r.booted_ms.is_some() {
            e.1 += 1;
        } else {
            *failures
                .entry(r.failure.clone().unwrap_or_else(|| "unknown".into()))
                .or_default() += 1;
        }
    }
    let boot: Vec<f64> = records
        .iter()
        .filter_map(|r| r.booted_ms.map(|b| b - r.power_on_ms))
        .collect();
    let (boot_p50, _, boot_p99, _) = stats(boot);
    let last_initrd_ms = records
        .iter()
        .flat_map(|r| r.phases.iter())
        .filter(|p| p.phase == Phase::Initrd && p.ok)
        .map(|p| p.end_ms)
        .max_by(f64::total_cmp);
    let booted = records.iter().filter(|r| r.booted_ms.is_some()).count();
    Summary {
        machines: records.len(),
        booted,
        failed: records.len() - booted,
        first_attempt: records.iter().filter(|r| r.first_attempt()).count(),
        last_booted_ms: records
            .iter()
            .filter_map(|r| r.booted_ms)
            .max_by(f64::total_cmp),
        last_initrd_ms,
        boot_p50_ms: boot_p50,
        boot_p99_ms: boot_p99,
        phases,
        leased_twice,
        by_family,
        failures,
    }
}

/// What the server (or servers) under test used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerUsage {
    pub label: String,
    /// Peak of the RSS summed over the server's processes, sampled every 100 ms (MiB).
    pub peak_rss_mib: f64,
    /// The largest `VmHWM` of its processes (MiB).
    pub vm_hwm_mib: f64,
    /// User + system CPU seconds of its processes during the storm.
    pub cpu_s: f64,
}

fn secs(ms: f64) -> String {
    format!("{:.2}", ms / 1000.0)
}

/// A Markdown table of one run (phases as rows) and its headline numbers.
#[must_use]
pub fn table(label: &str, s: &Summary, servers: &[ServerUsage], load: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### {label}: {} machines, {} booted, {} failed, {} on the first attempt ({:.2} %)",
        s.machines,
        s.booted,
        s.failed,
        s.first_attempt,
        if s.machines == 0 {
            0.0
        } else {
            100.0 * s.first_attempt as f64 / s.machines as f64
        }
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| phase | completed | p50 s | p95 s | p99 s | max s | retries | failures |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for p in &s.phases {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            p.phase.name(),
            p.completed,
            secs(p.p50_ms),
            secs(p.p95_ms),
            secs(p.p99_ms),
            secs(p.max_ms),
            p.retries,
            p.failures
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "- last machine booted at {} s (last initrd {} s); boot time p50 {} s, p99 {} s",
        s.last_booted_ms.map_or_else(|| "-".into(), secs),
        s.last_initrd_ms.map_or_else(|| "-".into(), secs),
        secs(s.boot_p50_ms),
        secs(s.boot_p99_ms)
    );
    let _ = writeln!(
        out,
        "- addresses leased twice: {}",
        if s.leased_twice.is_empty() {
            "none".to_owned()
        } else {
            format!("{:?}", s.leased_twice)
        }
    );
    for u in servers {
        let _ = writeln!(
            out,
            "- {}: peak RSS {:.1} MiB (VmHWM {:.1} MiB), CPU {:.2} s",
            u.label, u.peak_rss_mib, u.vm_hwm_mib, u.cpu_s
        );
    }
    if !s.failures.is_empty() {
        let _ = writeln!(out, "- failures: {:?}", s.failures);
    }
    let fam: Vec<String> = s
        .by_family
        .iter()
        .map(|(f, (n, b))| format!("{f} {b}/{n}"))
        .collect();
    let _ = writeln!(out, "- booted by family: {}", fam.join(", "));
    if !load.is_empty() {
        let _ = writeln!(out, "- load average: {load}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u32, lease: [u8; 4], booted: bool, attempts: u32) -> MachineRecord {
        MachineRecord {
            index: i,
            family: Family::UefiPxe,
            mac: format!("m{i}"),
            power_on_ms: 0.0,
            attempts,
            leases: vec![Ipv4Addr::from(lease)],
            server: None,
            booted_ms: booted.then_some(1000.0 * f64::from(i + 1)),
            failure: (!booted).then(|| "dhcp: no offer".into()),
            verified: None,
            phases: vec![
                PhaseRecord {
                    phase: Phase::Dhcp,
                    attempt: 1,
                    start_ms: 0.0,
                    end_ms: 10.0 * f64::from(i + 1),
                    ok: true,
                    retries: 1,
                    bytes: 0,
                    error: None,
                },
                PhaseRecord {
                    phase: Phase::Initrd,
                    attempt: 1,
                    start_ms: 100.0,
                    end_ms: 1000.0 * f64::from(i + 1),
                    ok: booted,
                    retries: 0,
                    bytes: 5,
                    error: None,
                },
            ],
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn summary_counts_and_finds_double_leases() {
        let recs = vec![
            rec(0, [10, 0, 0, 1], true, 1),
            rec(1, [10, 0, 0, 2], true, 2),
            rec(2, [10, 0, 0, 1], false, 3),
        ];
        let s = summarize(&recs);
        assert_eq!(
            (s.machines, s.booted, s.failed, s.first_attempt),
            (3, 2, 1, 1)
        );
        assert_eq!(s.last_initrd_ms, Some(2000.0));
        assert_eq!(s.leased_twice.len(), 1);
        assert_eq!(s.leased_twice[0].0, Ipv4Addr::new(10, 0, 0, 1));
        let dhcp = &s.phases[0];
        assert_eq!((dhcp.completed, dhcp.retries, dhcp.max_ms), (3, 3, 30.0));
        let initrd = s.phases.iter().find(|p| p.phase == Phase::Initrd).unwrap();
        assert_eq!(initrd.failures, 1);
        assert_eq!(s.failures.get("dhcp: no offer"), Some(&1));
        let t = table("tugboot", &s, &[ServerUsage::default()], "0.5");
        assert!(t.contains("| dhcp | 3 |"), "{t}");
        assert!(t.contains("leased twice: [(10.0.0.1"), "{t}");
        let json = serde_json::to_string(&recs).unwrap();
        let back: Vec<MachineRecord> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, recs);
    }
}
