//! U-Boot environment: single image, one redundant copy, bare data areas and the input split
//! into a redundant pair; parse -> encode -> parse must agree, and the next write must become
//! current. Seeds: tests/fixtures/bootenv/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = tugboot_agent::bootloader::fuzzing::uboot_env(data) {
        panic!("{e}");
    }
});
