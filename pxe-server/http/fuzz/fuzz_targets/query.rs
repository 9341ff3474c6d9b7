//! The iPXE script query (`mac=...&uuid=...&serial=...&arch=...&platform=...`): identifiers and
//! observed facts. Seeds: tests/fixtures/http/query/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tugboot_http::fuzzing::query(data);
});
