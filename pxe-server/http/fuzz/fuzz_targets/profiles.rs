//! ProfileSet::from_toml, then resolution and command-line rendering for a few requests.
//! Seeds: tests/fixtures/http/profiles/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tugboot_http::fuzzing::profiles(data);
});
