//! A read transfer driven by arbitrary client datagrams and timer firings.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tugboot_tftp::fuzzing::client_packets(data);
});
