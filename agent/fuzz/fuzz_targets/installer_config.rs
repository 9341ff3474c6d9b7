//! The installer's configuration (`tugboot-agent -c installer.toml install-disk`): any bytes
//! through `InstallerConfig::parse_bytes`. Never panics; whatever it accepts writes an
//! installed configuration the device's parser accepts, and parses again to the same value.
//! Seeds: tests/fixtures/agent-install/config/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tugboot_agent::install::fuzzing::installer_config(data);
});
