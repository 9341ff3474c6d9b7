//! The lease log reader: line splitting, record decoding and torn-tail recovery
//! (`tugboot_dhcp::lease`), with its invariants checked on every input (the valid
//! prefix re-scans to itself, records round-trip, snapshots are fixed points).
//! Seeds: tests/fixtures/dhcp/lease-log.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tugboot_dhcp::fuzz_lease_log(data);
});
