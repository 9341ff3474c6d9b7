//! Firmware families: what each one sends, and its timing rules, from the firmware's source
//! and from captures (`tests/fixtures/dhcp`, `tests/fixtures/tftp`); `docs/storm.md` lists the
//! sources and what is an assumption.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Backoff;
use crate::dhcp::{DhcpRules, RequestTimeout, Select, Template};
use crate::tftp::{Goal, ReadRequest, TftpRules};

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("../../../tests/fixtures/dhcp/", $name))
    };
}

/// A kind of machine and the way its firmware netboots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// SeaBIOS + the iPXE option ROM (QEMU's BIOS machines): iPXE from the start, DHCP →
    /// HTTP script → kernel + initrd.
    IpxeBios,
    /// A BIOS PXE ROM: DHCP → TFTP `undionly.kpxe` (size probe, then the file) → iPXE DHCP
    /// (user class iPXE, option 175) → HTTP.
    BiosPxe,
    /// OVMF's PXEv4: DHCP → TFTP `snponly.efi` (tsize probe, then the file) → iPXE → HTTP.
    UefiPxe,
    /// OVMF's UEFI HTTP boot: DHCP (`HTTPClient`) → HTTP the iPXE binary → iPXE → HTTP.
    UefiHttp,
    /// AAVMF PXEv4 with Debian's stock GRUB: DHCP → TFTP GRUB → TFTP `grub.cfg` → kernel and
    /// initrd over TFTP.
    GrubArm64,
    /// U-Boot (qemu_arm64) distro boot: DHCP → TFTP `boot.scr.uimg` → `pxe get` (PXELINUX
    /// file) → `pxe boot` (initrd, kernel over TFTP).
    UbootArm64,
    /// The Raspberry Pi 4 EEPROM bootloader: DHCP (option 43 "Raspberry Pi Boot") → its TFTP
    /// sequence under the serial-number prefix → the GPU firmware's → kernel and initramfs.
    Rpi4,
}

/// Where a machine is in its boot, for the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The firmware's DHCP.
    Dhcp,
    /// The network boot program (or Pi bootloader files) over TFTP or HTTP.
    Nbp,
    /// iPXE's own DHCP.
    Dhcp2,
    /// Scripts and configurations (iPXE scripts, GRUB/PXELINUX files, Pi config).
    Config,
    Kernel,
    Initrd,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Dhcp,
        Phase::Nbp,
        Phase::Dhcp2,
        Phase::Config,
        Phase::Kernel,
        Phase::Initrd,
    ];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Phase::Dhcp => "dhcp",
            Phase::Nbp => "nbp",
            Phase::Dhcp2 => "ipxe-dhcp",
            Phase::Config => "config",
            Phase::Kernel => "kernel",
            Phase::Initrd => "initrd",
        }
    }
}

/// How a loader fetches its kernel and initrd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loader {
    Ipxe,
    Grub,
    Pxelinux,
    PiFirmware,
}

impl Family {
    pub const ALL: [Family; 7] = [
        Family::IpxeBios,
        Family::BiosPxe,
        Family::UefiPxe,
        Family::UefiHttp,
        Family::GrubArm64,
        Family::UbootArm64,
        Family::Rpi4,
    ];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Family::IpxeBios => "ipxe-bios",
            Family::BiosPxe => "bios-pxe",
            Family::UefiPxe => "uefi-pxe",
            Family::UefiHttp => "uefi-http",
            Family::GrubArm64 => "grub-arm64",
            Family::UbootArm64 => "uboot-arm64",
            Family::Rpi4 => "rpi4",
        }
    }

    #[must_use]
    pub fn parse(s: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.name() == s)
    }

    #[must_use]
    pub fn is_arm64(self) -> bool {
        matches!(self, Family::GrubArm64 | Family::UbootArm64 | Family::Rpi4)
    }

    #[must_use]
    pub fn loader(self) -> Loader {
        match self {
            Family::IpxeBios | Family::BiosPxe | Family::UefiPxe | Family::UefiHttp => Loader::Ipxe,
            Family::GrubArm64 => Loader::Grub,
            Family::UbootArm64 => Loader::Pxelinux,
            Family::Rpi4 => Loader::PiFirmware,
        }
    }

    /// The firmware's own DHCP round: (DISCOVER, REQUEST) templates.
    ///
    /// # Panics
    /// Never: the fixtures are compiled in and parsed by a unit test.
    #[must_use]
    pub fn firmware_dhcp(self) -> (Template, Template) {
        let t = |b: &[u8]| Template::parse(b).expect("compiled-in fixture");
        match self {
            Family::IpxeBios => (
                t(fixture!("ipxe-bios-discover.bin")),
                t(fixture!("ipxe-bios-request.bin")),
            ),
            // A PXE 2.1 ROM sends what iPXE's ROM sends minus iPXE's own user class and
            // feature list (iPXE imitates the PXE ROM's vendor class and option 93/94).
            Family::BiosPxe => (
                t(fixture!("ipxe-bios-discover.bin")).without(&[77, 175]),
                t(fixture!("ipxe-bios-request.bin")).without(&[77, 175]),
            ),
            Family::UefiPxe => (
                t(fixture!("ovmf-discover.bin")),
                t(fixture!("ovmf-request.bin")),
            ),
            Family::UefiHttp => (
                t(fixture!("ovmf-httpboot-virtio-discover.bin")),
                t(fixture!("ovmf-httpboot-virtio-request.bin")),
            ),
            Family::GrubArm64 => (
                t(fixture!("aavmf-discover.bin")),
                t(fixture!("aavmf-request.bin")),
            ),
            Family::UbootArm64 => (
                t(fixture!("uboot-arm64-discover.bin")),
                t(fixture!("uboot-arm64-request.bin")),
            ),
            Family::Rpi4 => (
                t(fixture!("rpi4-discover.bin")),
                t(fixture!("rpi4-discover.bin")).as_request(),
            ),
        }
    }

    /// iPXE's DHCP round after the chainload, if this family runs iPXE after its firmware.
    #[must_use]
    pub fn ipxe_dhcp(self) -> Option<(Template, Template)> {
        let t = |b: &[u8]| Template::parse(b).expect("compiled-in fixture");
        match self {
            Family::BiosPxe => Some((
                t(fixture!("ipxe-bios-discover.bin")),
                t(fixture!("ipxe-bios-request.bin")),
            )),
            Family::UefiPxe | Family::UefiHttp => Some((
                t(fixture!("ipxe-efi-discover.bin")),
                t(fixture!("ipxe-efi-request.bin")),
            )),
            _ => None,
        }
    }

    /// The firmware DHCP client's rules.
    #[must_use]
    pub fn firmware_dhcp_rules(self) -> DhcpRules {
        match self {
            Family::IpxeBios => ipxe_dhcp_rules(),
            // PXE 2.1: DISCOVER at 4, 8, 16, 32 s; REQUEST at 1, 2, 3, 4 s.
            Family::BiosPxe => DhcpRules {
                discover: Backoff::Table(&[4000, 8000, 16000, 32000]),
                request: Backoff::Table(&[1000, 2000, 3000, 4000]),
                select: Select::FirstOffer,
                request_timeout: RequestTimeout::Fail,
                require_option43: None,
                sends_request: true,
            },
            // EDK2 Dhcp4Dxe: mDhcp4DefaultTimeout {4, 8, 16, 32} for both; offers collected
            // until the DISCOVER's countdown expires (PxeBc/HttpBoot return EFI_NOT_READY).
            Family::UefiPxe | Family::UefiHttp | Family::GrubArm64 => DhcpRules {
                discover: Backoff::Table(&[4000, 8000, 16000, 32000]),
                request: Backoff::Table(&[4000, 8000, 16000, 32000]),
                select: Select::AtRetransmitTimer,
                request_timeout: RequestTimeout::Fail,
                require_option43: None,
                sends_request: true,
            },
            // U-Boot net/bootp.c: 250 ms doubling to 2 s, for (3 + 5 × 5) s; the first offer
            // is taken; REQUEST waits 5 s, then DISCOVER again.
            Family::UbootArm64 => DhcpRules {
                discover: Backoff::Doubling {
                    first: 250,
                    cap: 2000,
                    total: 28_000,
                },
                request: Backoff::Table(&[5000]),
                select: Select::FirstOffer,
                request_timeout: RequestTimeout::Rediscover,
                require_option43: None,
                sends_request: true,
            },
            // Pi 4 bootloader: DHCP_REQ_TIMEOUT 4000 ms between tries, DHCP_TIMEOUT 45000 ms
            // in all; offers must carry PXE_OPTION43 "Raspberry Pi Boot".
            Family::Rpi4 => DhcpRules {
                discover: Backoff::Fixed {
                    every: 4000,
                    total: 45_000,
                },
                request: Backoff::Fixed {
                    every: 4000,
                    total: 45_000,
                },
                select: Select::FirstOffer,
                request_timeout: RequestTimeout::Fail,
                require_option43: Some(b"Raspberry Pi Boot"),
                sends_request: true,
            },
        }
    }

    /// The firmware's TFTP rules (for loaders after it, see [`Family::loader_tftp_rules`]).
    #[must_use]
    pub fn firmware_tftp_rules(self) -> TftpRules {
        match self {
            // PXE ROMs: 1, 2, 4, 8 s (the PXE spec leaves it to the ROM).
            Family::IpxeBios | Family::BiosPxe => TftpRules {
                waits: Backoff::Table(&[1000, 2000, 4000, 8000]),
                file_timeout: None,
            },
            // EDK2 PxeBc: PXEBC_MTFTP_TIMEOUT 4 s, PXEBC_MTFTP_RETRIES 6.
            Family::UefiPxe | Family::UefiHttp | Family::GrubArm64 => TftpRules {
                waits: Backoff::Table(&[4000; 6]),
                file_timeout: None,
            },
            // U-Boot net/tftp.c: 5000 ms, TIMEOUT_COUNT 10.
            Family::UbootArm64 => TftpRules {
                waits: Backoff::Table(&[5000; 10]),
                file_timeout: None,
            },
            // Pi 4: resend every second; TFTP_FILE_TIMEOUT 30000 ms per file.
            Family::Rpi4 => TftpRules {
                waits: Backoff::Fixed {
                    every: 1000,
                    total: 30_000,
                },
                file_timeout: Some(Duration::from_secs(30)),
            },
        }
    }

    /// TFTP rules of what runs after the firmware (GRUB's `GRUB_NET_TRIES` × interval).
    #[must_use]
    pub fn loader_tftp_rules(self) -> TftpRules {
        match self {
            Family::GrubArm64 => TftpRules {
                waits: Backoff::Linear {
                    base: 400,
                    step: 20,
                    tries: 40,
                },
                file_timeout: None,
            },
            other => other.firmware_tftp_rules(),
        }
    }

    /// The size probe before the NBP download, if the firmware makes one.
    #[must_use]
    pub fn nbp_probe(self, file: &str) -> Option<ReadRequest> {
        let opts = |o: &[(&str, &str)]| o.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        match self {
            // PXE ROMs: PXENV_TFTP_GET_FSIZE, aborted with ERROR 0 "TFTP Aborted".
            Family::BiosPxe => Some(ReadRequest {
                path: file.into(),
                options: opts(&[("tsize", "0")]),
                goal: Goal::Probe { code: 0 },
            }),
            // EDK2: the captured tsize probe (rrq-ovmf-tsize-probe.bin), ERROR 8.
            Family::UefiPxe | Family::GrubArm64 => Some(ReadRequest {
                path: file.into(),
                options: opts(&[("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")]),
                goal: Goal::Probe { code: 8 },
            }),
            _ => None,
        }
    }

    /// The RRQ options of a download by this family's firmware or loader.
    #[must_use]
    pub fn tftp_options(self, by_loader: bool) -> Vec<(String, String)> {
        let o: &[(&str, &str)] = match (self, by_loader) {
            (Family::BiosPxe | Family::IpxeBios, _) => &[("blksize", "1456")],
            (Family::UefiPxe | Family::UefiHttp, _) | (Family::GrubArm64, false) => {
                &[("blksize", "1468"), ("windowsize", "4")]
            }
            // GRUB's tftp: blksize 1024 and tsize 0 on every file (captured).
            (Family::GrubArm64, true) => &[("blksize", "1024"), ("tsize", "0")],
            // U-Boot: "timeout 5" and blksize 1468 (captured), no windowsize (default 1).
            (Family::UbootArm64, _) => &[("timeout", "5"), ("blksize", "1468")],
            // The Pi bootloader: plain RFC 1350 requests (see docs/storm.md).
            (Family::Rpi4, _) => &[],
        };
        o.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    /// iPXE's `${buildarch}` and `${platform}`.
    #[must_use]
    pub fn ipxe_arch(self) -> (&'static str, &'static str) {
        match self {
            Family::IpxeBios | Family::BiosPxe => ("i386", "pcbios"),
            _ => ("x86_64", "efi"),
        }
    }

    /// How long an HTTP exchange may stall before the loader gives up (iPXE's TCP gives up
    /// on a silent peer after about two minutes).
    #[must_use]
    pub fn http_stall(self) -> Duration {
        Duration::from_secs(120)
    }
}

/// iPXE's DHCP (config/dhcp.h: DISCOVER 1, 2, 4, 8 s; REQUEST from 0.25 s doubling to 8 s;
/// ProxyDHCP offers awaited for 2 s unless told "no-pxedhcp").
#[must_use]
pub fn ipxe_dhcp_rules() -> DhcpRules {
    DhcpRules {
        discover: Backoff::Table(&[1000, 2000, 4000, 8000]),
        request: Backoff::Table(&[250, 500, 1000, 2000, 4000, 8000]),
        select: Select::Ipxe {
            proxy_wait: Duration::from_secs(2),
        },
        request_timeout: RequestTimeout::Fail,
        require_option43: None,
        sends_request: true,
    }
}

/// The files a Pi 4 reads, in order, after the prefix probe. `true`: it must exist.
/// The first group is the EEPROM bootloader's, the second the GPU firmware's (`start4.elf`).
pub const PI4_BOOTLOADER_FILES: &[(&str, bool)] = &[
    ("config.txt", true),
    ("pieeprom.sig", false),
    ("recover4.elf", false),
    ("recovery.elf", false),
    ("start4.elf", true),
    ("fixup4.dat", true),
];

/// The GPU firmware's reads before the kernel (`config.txt` is read again and parsed).
pub const PI4_FIRMWARE_FILES: &[(&str, bool)] = &[
    ("recovery.elf", false),
    ("config.txt", true),
    ("dt-blob.bin", false),
    ("bootcfg.txt", false),
    ("bcm2711-rpi-4-b.dtb", true),
    ("overlays/overlay_map.dtb", false),
    ("cmdline.txt", true),
    ("armstub8-gic.bin", false),
];

/// Stock GRUB's module-list probes before `grub.cfg` (answered "not found").
pub const GRUB_PROBES: &[&str] = &[
    "/grub/arm64-efi/command.lst",
    "/grub/arm64-efi/fs.lst",
    "/grub/arm64-efi/crypto.lst",
    "/grub/arm64-efi/terminal.lst",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_its_templates_and_a_name() {
        for f in Family::ALL {
            let (d, r) = f.firmware_dhcp();
            assert_eq!(d.option(53), Some(&[1][..]), "{f:?}");
            assert_eq!(r.option(53), Some(&[3][..]), "{f:?}");
            assert!(r.option(50).is_some() && r.option(54).is_some(), "{f:?}");
            assert_eq!(Family::parse(f.name()), Some(f));
            if let Some((d, _)) = f.ipxe_dhcp() {
                assert_eq!(d.option(77), Some(&b"iPXE"[..]), "{f:?}");
            }
        }
        let (d, _) = Family::BiosPxe.firmware_dhcp();
        assert!(d.option(77).is_none() && d.option(175).is_none());
        assert_eq!(d.option(60), Some(&b"PXEClient:Arch:00000:UNDI:002001"[..]));
        assert!(Family::parse("nope").is_none());
    }
}
