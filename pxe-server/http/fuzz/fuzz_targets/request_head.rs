//! Request heads through the plain-HTTP loop's parser and conversion (`conn.rs`). Input: the
//! bytes a client sends. Seeds: tests/fixtures/http/request-head/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tugboot_http::fuzzing::request_head(data);
});
