//! `tugboot init`'s DHCP probe reading whatever answers on the link: offers from dnsmasq,
//! ISC, Kea, proxyDHCP servers, or garbage. Seeds: tests/fixtures/init.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tugboot_dhcp::probe::fuzz_offer(data);
});
