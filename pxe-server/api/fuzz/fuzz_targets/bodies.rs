//! Every untrusted input of the device API: report, enrollment, token-request and rollout bodies,
//! the pre-v3 token file, CSR keys, selectors,
//! device ids and peer certificates (DER). Seeds: tests/fixtures/api/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tugboot_api::wire::fuzz_bodies(data);
});
