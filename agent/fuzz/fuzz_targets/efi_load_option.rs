//! EFI variables and EFI_LOAD_OPTION (with or without the efivarfs attributes prefix):
//! parse -> encode is lossless, device paths node by node. Seeds: tests/fixtures/efi/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = tugboot_agent::bootloader::efi::fuzzing::load_option(data) {
        panic!("{e}");
    }
});
