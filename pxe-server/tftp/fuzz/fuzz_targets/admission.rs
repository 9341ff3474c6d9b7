//! The caps on transfer slots and buffer bytes under arbitrary request sequences.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tugboot_tftp::fuzzing::admission(data);
});
