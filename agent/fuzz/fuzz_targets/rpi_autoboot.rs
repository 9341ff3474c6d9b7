//! Raspberry Pi autoboot.txt: parse -> encode is lossless; A/B edits change only the values
//! and stay under the firmware's 512-byte limit. Seeds: tests/fixtures/rpi/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = tugboot_agent::bootloader::rpi::fuzzing::autoboot(data) {
        panic!("{e}");
    }
});
