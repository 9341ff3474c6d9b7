//! Range / If-None-Match / If-Range parsing. Input: 8 bytes little-endian representation length,
//! then the header value. Seeds: tests/fixtures/http/range/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tugboot_http::fuzzing::range(data);
});
