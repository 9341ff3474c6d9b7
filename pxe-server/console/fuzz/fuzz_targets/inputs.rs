//! The request text the web console parses itself: `Cookie` headers, the login page's `next`,
//! rollout stages, and the escaping of every value. Seeds: tests/fixtures/console/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tugboot_console::fuzz_inputs(data);
});
