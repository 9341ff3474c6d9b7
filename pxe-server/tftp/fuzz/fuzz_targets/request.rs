//! Any datagram: parse with caps, and whatever parses must round-trip through emit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tugboot_tftp::fuzzing::request(data);
});
