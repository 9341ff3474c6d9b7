//! The agent's configuration file (`/etc/tugboot/agent.toml`, read at every start): any bytes
//! through the same entry as the seed test, `DeviceConfig::parse_bytes`. It never panics, and
//! whatever it accepts describes itself and validates again to the same value. Seeds:
//! tests/fixtures/agent-config/.
#![no_main]

use tugboot_agent::config::DeviceConfig;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(config) = DeviceConfig::parse_bytes(data) {
        assert!(!config.describe().is_empty());
        assert!(!config.reboot_command.is_empty() && !config.trial_reboot_command.is_empty());
        let again = DeviceConfig::parse_bytes(data).expect("accepted once, accepted again");
        assert_eq!(config, again);
    }
});
