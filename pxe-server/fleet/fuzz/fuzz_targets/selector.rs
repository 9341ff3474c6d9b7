//! Selector::parse, the text form's round trip, and matching. Seeds: tests/fixtures/selector/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tugboot_fleet::fuzzing::selector(data);
});
