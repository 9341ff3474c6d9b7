//! Signed::<Manifest>::from_bytes + verify_manifest against the fixed test-vector root.
//! Seeds: tests/fixtures/manifest/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tugboot_firmware::fuzzing::manifest(data);
});
