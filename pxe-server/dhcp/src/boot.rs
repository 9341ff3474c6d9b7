//! What each kind of firmware is told to boot: a pure function of the
//! classification and the configuration.

use std::net::Ipv4Addr;

use crate::classify::{Classification, Firmware, Platform};
use crate::config::Config;

/// The text a Raspberry Pi boot ROM looks for in option 43. The three trailing
/// spaces are part of it: Pi 3 ROMs compare the full 20-byte menu entry that
/// `pxe-service=0,"Raspberry Pi Boot   "` produces in dnsmasq.
pub const RPI_BOOT_MAGIC: &[u8] = b"Raspberry Pi Boot   ";

/// PXE option 43 sub-option 6 (discovery control) bit 3: "if a boot file name is
/// present, download it; skip boot server discovery and menus" (PXE 2.1 §2.4.4.1).
pub const PXE_DISCOVERY_USE_BOOTFILE: u8 = 8;

/// Boot parameters for one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// File field and option 67 (a TFTP path or an HTTP URL), without NUL.
    pub file: String,
    /// siaddr ("next server") and option 66, when the file comes over TFTP.
    pub tftp_server: Option<Ipv4Addr>,
    /// Option 60 to echo (`PXEClient` / `HTTPClient`).
    pub vendor_class: Option<&'static [u8]>,
    /// Option 43 payload.
    pub vendor_options: Option<Vec<u8>>,
    /// Option 175 payload (iPXE encapsulated options).
    pub ipxe_options: Option<Vec<u8>>,
    /// Mirror option 97 back (PXE clients expect it).
    pub mirror_machine_id: bool,
}

fn substitute(template: &str, class: &Classification, platform: Platform) -> String {
    let mac = class.mac.map(|m| m.hyphenated()).unwrap_or_default();
    let uuid = class.uuid_string().unwrap_or_default();
    template
        .replace("{mac}", &mac)
        .replace("{uuid}", &uuid)
        .replace("{arch}", platform.as_str())
}

fn pxe_vendor_options() -> Vec<u8> {
    vec![6, 1, PXE_DISCOVERY_USE_BOOTFILE, 255]
}

/// Option 43 for a Raspberry Pi: a PXE boot menu (sub-option 9: type 0, the magic
/// description) and prompt (sub-option 10: timeout 0, the magic text), plus
/// discovery control 3 (no broadcast/multicast discovery), as the Pi documentation's
/// dnsmasq `pxe-service` line produces.
fn rpi_vendor_options() -> Vec<u8> {
    let n = u8::try_from(RPI_BOOT_MAGIC.len()).unwrap_or(u8::MAX);
    let mut v = vec![6, 1, 3];
    v.extend_from_slice(&[9, n + 3, 0, 0, n]);
    v.extend_from_slice(RPI_BOOT_MAGIC);
    v.extend_from_slice(&[10, n + 1, 0]);
    v.extend_from_slice(RPI_BOOT_MAGIC);
    v.push(255);
    v
}

/// Boot parameters for a classified netboot client, or `None` for plain clients.
pub fn boot_params(class: &Classification, config: &Config) -> Option<BootParams> {
    let tftp = |p: Platform| config.boot.tftp.get(&p).cloned().unwrap_or_default();
    Some(match class.firmware {
        Firmware::Plain => return None,
        Firmware::Ipxe(p) => BootParams {
            file: format!(
                "{}{}",
                config.http_base_url,
                substitute(&config.boot.ipxe_script, class, p)
            ),
            // iPXE only accepts a ProxyDHCP reply with "PXE options": a next-server
            // (siaddr) plus a boot file, or a PXE menu. siaddr is harmless elsewhere.
            tftp_server: Some(config.tftp_server),
            vendor_class: None,
            vendor_options: None,
            // 175.176 ("no-pxedhcp") = 1: do not wait for a ProxyDHCP offer.
            ipxe_options: Some(vec![176, 1, 1]),
            mirror_machine_id: false,
        },
        Firmware::Pxe(p) => BootParams {
            file: tftp(p),
            tftp_server: Some(config.tftp_server),
            vendor_class: Some(b"PXEClient"),
            vendor_options: Some(pxe_vendor_options()),
            ipxe_options: None,
            mirror_machine_id: true,
        },
        Firmware::HttpBoot(p) => BootParams {
            file: format!(
                "{}{}",
                config.http_base_url,
                substitute(&config.boot.http_boot, class, p)
            ),
            tftp_server: None,
            vendor_class: Some(b"HTTPClient"),
            vendor_options: None,
            ipxe_options: None,
            mirror_machine_id: true,
        },
        Firmware::UBoot(p) => BootParams {
            file: tftp(p),
            tftp_server: Some(config.tftp_server),
            vendor_class: None,
            vendor_options: None,
            ipxe_options: None,
            mirror_machine_id: false,
        },
        Firmware::RaspberryPi(_) => BootParams {
            file: tftp(Platform::RaspberryPi),
            tftp_server: Some(config.tftp_server),
            vendor_class: Some(b"PXEClient"),
            vendor_options: Some(rpi_vendor_options()),
            ipxe_options: None,
            mirror_machine_id: true,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpi_option_43_carries_the_magic_twice_with_three_spaces() {
        let v = rpi_vendor_options();
        let text = b"Raspberry Pi Boot   ";
        assert_eq!(text.len(), 20);
        let hits = v.windows(20).filter(|w| w == text).count();
        assert_eq!(hits, 2);
        // Sub-option 9: code, len 23, type 0x0000, desc len 20.
        assert_eq!(&v[3..8], &[9, 23, 0, 0, 20]);
        assert_eq!(*v.last().expect("nonempty"), 255);
    }
}
