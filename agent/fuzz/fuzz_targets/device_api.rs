//! What the agent reads from the device API and from its own certificate files (untrusted
//! bytes): every `tugboot_wire::device` parser with its round-trip properties
//! (`fuzz_device_json`), the certificate and key readers of enrollment
//! (`enroll::fuzz_certificate`), and the `/proc` text parsers of the inventory. Seeds:
//! tests/fixtures/agent-device-api/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tugboot_agent::net::fuzz_device_api(data);
});
