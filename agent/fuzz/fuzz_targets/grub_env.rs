//! GRUB environment block: parse -> update in place / encode fresh -> parse must agree, same
//! size, idempotent. Seeds: tests/fixtures/bootenv/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = tugboot_agent::bootloader::fuzzing::grub_env(data) {
        panic!("{e}");
    }
});
