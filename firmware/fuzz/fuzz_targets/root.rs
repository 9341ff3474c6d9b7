//! TrustedRoot::bootstrap, and rotation of the fixed test-vector root. Seeds: tests/fixtures/root/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tugboot_firmware::fuzzing::root(data);
});
