//! ProfileSet::from_toml, then boot plans and their GRUB/PXELINUX renderings for a few requests.
//! Seeds: tests/fixtures/profiles/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tugboot_fleet::fuzzing::profiles(data);
});
