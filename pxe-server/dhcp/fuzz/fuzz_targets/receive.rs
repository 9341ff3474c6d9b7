//! The whole DHCP receive path: wire checks, dhcproto decode, classification and
//! the decision core in three modes. Seeds: tests/fixtures/dhcp (real captures).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tugboot_dhcp::fuzz_receive(data);
});
