//! Prometheus text for the parts of `tugboot serve` that have no HTTP endpoint of their own
//! (DHCP, TFTP): appended to the HTTP server's `/metrics`, so one scrape target covers them.

use std::fmt::Write as _;

use tugboot_tftp::StatsSnapshot;

/// Writes `tugboot_<area>_<name>_total` counters with their HELP and TYPE lines.
pub fn counters(out: &mut String, area: &str, values: &[(&str, &str, u64)]) {
    for (name, help, v) in values {
        let _ = write!(
            out,
            "# HELP tugboot_{area}_{name}_total {help}\n# TYPE tugboot_{area}_{name}_total counter\ntugboot_{area}_{name}_total {v}\n"
        );
    }
}

/// The TFTP server's counters and its active-transfer gauge.
pub fn tftp(s: &StatsSnapshot, out: &mut String) {
    counters(
        out,
        "tftp",
        &[
            (
                "transfers_started",
                "TFTP transfers started",
                s.transfers_started,
            ),
            (
                "transfers_completed",
                "TFTP transfers completed",
                s.transfers_completed,
            ),
            (
                "transfers_failed",
                "TFTP transfers failed or aborted",
                s.transfers_failed,
            ),
            (
                "requests_refused",
                "TFTP requests refused",
                s.requests_refused,
            ),
            ("bytes_sent", "TFTP payload bytes sent", s.bytes_sent),
        ],
    );
    let _ = write!(
        out,
        "# HELP tugboot_tftp_active_transfers TFTP transfers in progress\n# TYPE tugboot_tftp_active_transfers gauge\ntugboot_tftp_active_transfers {}\n",
        s.active_transfers
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let mut out = String::new();
        counters(
            &mut out,
            "dhcp",
            &[("replies_sent", "DHCP replies sent", 7)],
        );
        assert_eq!(
            out,
            "# HELP tugboot_dhcp_replies_sent_total DHCP replies sent\n# TYPE tugboot_dhcp_replies_sent_total counter\ntugboot_dhcp_replies_sent_total 7\n"
        );
        let mut out = String::new();
        tftp(
            &StatsSnapshot {
                active_transfers: 2,
                bytes_sent: 9,
                ..StatsSnapshot::default()
            },
            &mut out,
        );
        assert!(out.contains("tugboot_tftp_bytes_sent_total 9\n"), "{out}");
        assert!(out.contains("tugboot_tftp_active_transfers 2\n"), "{out}");
    }
}
