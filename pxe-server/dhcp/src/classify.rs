//! Who is asking: firmware kind, architectures, identity and relay path of a request.
//!
//! Real firmware is inconsistent (QEMU's iPXE sends an all-zero UUID, U-Boot sends no
//! PXE vendor class, a Raspberry Pi claims to be an x86 BIOS), so classification looks
//! at several signals in a fixed order and records which arch codes it saw.

use std::fmt;
use std::net::Ipv4Addr;

pub use tugboot_wire::{Mac, Uuid};

use crate::wire::Request;

/// One entry of the IANA "Processor Architecture Types" registry (DHCP option 93,
/// RFC 4578 §2.1, with the later additions for HTTP boot, U-Boot and rpiboot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArchCode(pub u16);

impl ArchCode {
    /// The registry's name for this code, or `None` if unassigned.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "x86 BIOS",
            1 => "NEC/PC98",
            2 => "Itanium",
            3 => "DEC Alpha",
            4 => "Arc x86",
            5 => "Intel Lean Client",
            6 => "x86 UEFI",
            7 => "x64 UEFI",
            8 => "EFI Xscale",
            9 => "EBC (x64 UEFI in practice)",
            10 => "ARM 32-bit UEFI",
            11 => "ARM 64-bit UEFI",
            12 => "PowerPC Open Firmware",
            13 => "PowerPC ePAPR",
            14 => "POWER OPAL v3",
            15 => "x86 UEFI HTTP",
            16 => "x64 UEFI HTTP",
            17 => "EBC HTTP",
            18 => "ARM 32-bit UEFI HTTP",
            19 => "ARM 64-bit UEFI HTTP",
            20 => "PC/AT BIOS HTTP",
            21 => "ARM 32-bit U-Boot",
            22 => "ARM 64-bit U-Boot",
            23 => "ARM 32-bit U-Boot HTTP",
            24 => "ARM 64-bit U-Boot HTTP",
            25 => "RISC-V 32-bit UEFI",
            26 => "RISC-V 32-bit UEFI HTTP",
            27 => "RISC-V 64-bit UEFI",
            28 => "RISC-V 64-bit UEFI HTTP",
            29 => "RISC-V 128-bit UEFI",
            30 => "RISC-V 128-bit UEFI HTTP",
            31 => "s390 Basic",
            32 => "s390 Extended",
            33 => "MIPS 32-bit UEFI",
            34 => "MIPS 64-bit UEFI",
            35 => "Sunway 32-bit UEFI",
            36 => "Sunway 64-bit UEFI",
            37 => "LoongArch 32-bit UEFI",
            38 => "LoongArch 32-bit UEFI HTTP",
            39 => "LoongArch 64-bit UEFI",
            40 => "LoongArch 64-bit UEFI HTTP",
            41 => "ARM rpiboot",
            _ => return None,
        })
    }

    /// What the code means for picking a boot file.
    pub fn meaning(self) -> Option<(Platform, Transport)> {
        use Platform as P;
        use Transport as T;
        Some(match self.0 {
            0 => (P::Bios, T::Pxe),
            20 => (P::Bios, T::Http),
            6 => (P::UefiIa32, T::Pxe),
            15 => (P::UefiIa32, T::Http),
            7 | 9 => (P::UefiX64, T::Pxe),
            16 => (P::UefiX64, T::Http),
            10 => (P::UefiArm32, T::Pxe),
            18 => (P::UefiArm32, T::Http),
            11 => (P::UefiArm64, T::Pxe),
            19 => (P::UefiArm64, T::Http),
            27 => (P::UefiRiscV64, T::Pxe),
            28 => (P::UefiRiscV64, T::Http),
            21 => (P::UBootArm32, T::Pxe),
            23 => (P::UBootArm32, T::Http),
            22 => (P::UBootArm64, T::Pxe),
            24 => (P::UBootArm64, T::Http),
            41 => (P::RaspberryPi, T::Pxe),
            _ => return None,
        })
    }
}

impl fmt::Display for ArchCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{} ({n})", self.0),
            None => write!(f, "{} (unassigned)", self.0),
        }
    }
}

/// The pre-boot environment a boot file must be built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Platform {
    /// x86 PC BIOS (legacy PXE, UNDI).
    Bios,
    /// 32-bit x86 UEFI.
    UefiIa32,
    /// x86-64 UEFI.
    UefiX64,
    /// 32-bit ARM UEFI.
    UefiArm32,
    /// 64-bit ARM UEFI.
    UefiArm64,
    /// 64-bit RISC-V UEFI.
    UefiRiscV64,
    /// U-Boot on 32-bit ARM.
    UBootArm32,
    /// U-Boot on 64-bit ARM.
    UBootArm64,
    /// Raspberry Pi boot ROM / EEPROM bootloader.
    RaspberryPi,
}

impl Platform {
    /// Stable lower-case name, used in URLs (`{arch}`) and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bios => "bios",
            Self::UefiIa32 => "uefi-ia32",
            Self::UefiX64 => "uefi-x64",
            Self::UefiArm32 => "uefi-arm32",
            Self::UefiArm64 => "uefi-arm64",
            Self::UefiRiscV64 => "uefi-riscv64",
            Self::UBootArm32 => "uboot-arm32",
            Self::UBootArm64 => "uboot-arm64",
            Self::RaspberryPi => "rpi",
        }
    }
}

/// How the firmware fetches its boot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// TFTP (PXE, U-Boot, Raspberry Pi).
    Pxe,
    /// UEFI HTTP boot: the file field is a URL.
    Http,
}

/// Raspberry Pi generation, as far as the DISCOVER reveals it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PiModel {
    /// Pi 2B v1.2 / 3B / 3B+ boot ROM (option 97 is 0x00 followed by sixteen 'D').
    Pi3,
    /// Pi 4 EEPROM bootloader (option 97 begins with "RPi4").
    Pi4,
    /// Pi 5 EEPROM bootloader (option 97 begins with "RPi5").
    Pi5,
    /// Recognised by MAC OUI or arch 41 only.
    Unknown,
}

impl PiModel {
    /// Stable lower-case name (`pi3`, `pi4`, `pi5`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pi3 => "pi3",
            Self::Pi4 => "pi4",
            Self::Pi5 => "pi5",
            Self::Unknown => "unknown",
        }
    }
}

/// The kind of client, which decides what it is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Firmware {
    /// Firmware PXE (vendor class `PXEClient`) on this platform.
    Pxe(Platform),
    /// UEFI HTTP boot (vendor class `HTTPClient`).
    HttpBoot(Platform),
    /// iPXE itself (user class `iPXE` or option 175): gets its script URL.
    Ipxe(Platform),
    /// U-Boot's `dhcp`/`pxe` commands (vendor class `U-Boot.<arch>` or arch 21/22).
    UBoot(Platform),
    /// A Raspberry Pi bootloader.
    RaspberryPi(PiModel),
    /// Any other DHCP client: an address and nothing to boot.
    Plain,
}

impl Firmware {
    /// Whether this client is netbooting (gets boot parameters).
    pub fn is_netboot(self) -> bool {
        !matches!(self, Self::Plain)
    }

    /// The firmware family: `pxe`, `http-boot`, `ipxe`, `uboot`, `rpi` or `plain`.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Pxe(_) => "pxe",
            Self::HttpBoot(_) => "http-boot",
            Self::Ipxe(_) => "ipxe",
            Self::UBoot(_) => "uboot",
            Self::RaspberryPi(_) => "rpi",
            Self::Plain => "plain",
        }
    }

    /// The platform a boot file must be built for (a Raspberry Pi is [`Platform::RaspberryPi`]
    /// whatever its model); `None` for plain clients.
    pub fn platform(self) -> Option<Platform> {
        match self {
            Self::Pxe(p) | Self::HttpBoot(p) | Self::Ipxe(p) | Self::UBoot(p) => Some(p),
            Self::RaspberryPi(_) => Some(Platform::RaspberryPi),
            Self::Plain => None,
        }
    }

    /// Stable name for logs and events: `kind/platform` (`pxe/uefi-x64`, `uboot/uboot-arm64`),
    /// `rpi/<model>` (`rpi/pi4`), or `plain`.
    pub fn label(self) -> String {
        match self {
            Self::Pxe(p) | Self::HttpBoot(p) | Self::Ipxe(p) | Self::UBoot(p) => {
                format!("{}/{}", self.kind(), p.as_str())
            }
            Self::RaspberryPi(m) => format!("rpi/{}", m.as_str()),
            Self::Plain => "plain".into(),
        }
    }
}

/// Raspberry Pi Ltd / Foundation OUIs.
pub const RPI_OUIS: [[u8; 3]; 6] = [
    [0xb8, 0x27, 0xeb],
    [0xdc, 0xa6, 0x32],
    [0xe4, 0x5f, 0x01],
    [0x28, 0xcd, 0xc1],
    [0x2c, 0xcf, 0x67],
    [0xd8, 0x3a, 0xdd],
];

/// Relay agent data (RFC 3046 option 82, RFC 3527 link selection, RFC 3011 subnet selection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayInfo {
    /// `giaddr` (zero when not relayed).
    pub giaddr: Ipv4Addr,
    /// Option 82 sub-option 1 (circuit id).
    pub circuit_id: Option<Vec<u8>>,
    /// Option 82 sub-option 2 (remote id).
    pub remote_id: Option<Vec<u8>>,
    /// Option 82 sub-option 5 (RFC 3527 link selection).
    pub link_selection: Option<Ipv4Addr>,
    /// Option 82 sub-option 11 (RFC 5107 server identifier override).
    pub server_id_override: Option<Ipv4Addr>,
    /// Option 118 (RFC 3011 subnet selection).
    pub subnet_selection: Option<Ipv4Addr>,
    /// Option 82 exactly as received, echoed back verbatim.
    pub option82: Option<Vec<u8>>,
}

impl RelayInfo {
    /// Whether the request came through a relay.
    pub fn is_relayed(&self) -> bool {
        !self.giaddr.is_unspecified()
    }

    /// The address that selects the subnet (RFC 3527 > RFC 3011 > giaddr), if any.
    /// The core clears the two options first unless the datagram came from a trusted
    /// relay (`Config::trusted_relays`, [`RelayInfo::distrust`]).
    pub fn selector(&self) -> Option<Ipv4Addr> {
        self.link_selection
            .or(self.subnet_selection)
            .or((!self.giaddr.is_unspecified()).then_some(self.giaddr))
    }

    /// Forgets what only a trusted relay may say: link selection, subnet selection and
    /// the server identifier override. Circuit and remote id stay (they are reported, not
    /// acted on) and option 82 is still echoed (a snooping switch strips it again).
    pub fn distrust(&mut self) {
        self.link_selection = None;
        self.subnet_selection = None;
        self.server_id_override = None;
    }
}

/// Everything the decision core needs to know about who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    /// Firmware kind.
    pub firmware: Firmware,
    /// Option 93, as a list, in the order sent.
    pub arches: Vec<ArchCode>,
    /// Option 60 as sent.
    pub vendor_class: Option<Vec<u8>>,
    /// Option 77 entries (RFC 3004 length-prefixed list, or one raw string as iPXE sends).
    pub user_classes: Vec<Vec<u8>>,
    /// Client MAC (when htype is Ethernet with hlen 6).
    pub mac: Option<Mac>,
    /// Option 61 as sent.
    pub client_id: Option<Vec<u8>>,
    /// Option 97 as sent (mirrored back to PXE clients even if all-zero).
    pub machine_id: Option<Vec<u8>>,
    /// SMBIOS UUID from option 97, unless it is all zero (QEMU) or not type 0: never
    /// [`Uuid::is_nil`], so it can serve as an identity.
    pub uuid: Option<Uuid>,
    /// Raspberry Pi serial number (hex), when the request carries it.
    pub pi_serial: Option<String>,
    /// Relay path.
    pub relay: RelayInfo,
}

impl Classification {
    /// Whether option 60 starts with `prefix`.
    pub fn vendor_class_starts_with(&self, prefix: &[u8]) -> bool {
        self.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with(prefix))
    }

    /// The UUID in canonical text form.
    pub fn uuid_string(&self) -> Option<String> {
        self.uuid.map(|u| u.to_string())
    }
}

/// Classifies a parsed request.
pub fn classify(req: &Request) -> Classification {
    let raw = &req.raw;
    let arches: Vec<ArchCode> = raw
        .get(93)
        .map(|b| {
            b.chunks_exact(2)
                .map(|c| ArchCode(u16::from_be_bytes([c[0], c[1]])))
                .collect()
        })
        .unwrap_or_default();
    let vendor_class = raw.get(60).map(<[u8]>::to_vec);
    let user_classes = parse_user_classes(raw.get(77));
    let mac = match (req.msg.htype(), req.chaddr()) {
        (dhcproto::v4::HType::Eth, [a, b, c, d, e, f]) => Some(Mac([*a, *b, *c, *d, *e, *f])),
        _ => None,
    };
    let machine_id = raw.get(97).map(<[u8]>::to_vec);
    let uuid = match machine_id.as_deref() {
        Some([0, rest @ ..]) => <[u8; 16]>::try_from(rest)
            .ok()
            .map(Uuid)
            .filter(|u| !u.is_nil()),
        _ => None,
    };

    let pi = pi_model(mac, machine_id.as_deref(), &arches);
    let pi_serial = match (pi, machine_id.as_deref()) {
        // Pi 4/5 EEPROM bootloaders put "RPi4"/"RPi5" and then the 32-bit serial
        // (big-endian) into the GUID; the TFTP prefix is that serial in hex.
        (Some(PiModel::Pi4 | PiModel::Pi5), Some([0, b'R', b'P', b'i', _, s0, s1, s2, s3, ..])) => {
            Some(format!("{s0:02x}{s1:02x}{s2:02x}{s3:02x}"))
        }
        _ => None,
    };

    let firmware = firmware_kind(
        vendor_class.as_deref(),
        &user_classes,
        raw.contains(175),
        &arches,
        pi,
    );

    let option82 = raw.get(82).map(<[u8]>::to_vec);
    let mut relay = RelayInfo {
        giaddr: req.msg.giaddr(),
        subnet_selection: ipv4_of(raw.get(118)),
        option82: option82.clone(),
        circuit_id: None,
        remote_id: None,
        link_selection: None,
        server_id_override: None,
    };
    if let Some(o82) = option82.as_deref() {
        let mut i = 0;
        while let (Some(&code), Some(&len)) = (o82.get(i), o82.get(i + 1)) {
            let Some(val) = o82.get(i + 2..i + 2 + usize::from(len)) else {
                break;
            };
            match code {
                1 => relay.circuit_id = Some(val.to_vec()),
                2 => relay.remote_id = Some(val.to_vec()),
                5 => relay.link_selection = ipv4_of(Some(val)),
                11 => relay.server_id_override = ipv4_of(Some(val)),
                _ => {}
            }
            i += 2 + usize::from(len);
        }
    }

    Classification {
        firmware,
        arches,
        vendor_class,
        user_classes,
        mac,
        client_id: raw.get(61).map(<[u8]>::to_vec),
        machine_id,
        uuid,
        pi_serial,
        relay,
    }
}

fn ipv4_of(b: Option<&[u8]>) -> Option<Ipv4Addr> {
    match b {
        Some([a, b, c, d]) => Some(Ipv4Addr::new(*a, *b, *c, *d)),
        _ => None,
    }
}

/// RFC 3004 says option 77 is a list of length-prefixed strings; iPXE and most
/// firmware send one bare string instead. Accept both: if the bytes parse exactly as
/// a length-prefixed list of printable strings use that, otherwise treat the whole
/// payload as one class.
fn parse_user_classes(b: Option<&[u8]>) -> Vec<Vec<u8>> {
    let Some(b) = b else { return Vec::new() };
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let len = usize::from(b[i]);
        match b.get(i + 1..i + 1 + len) {
            Some(s) if len > 0 && s.iter().all(|c| c.is_ascii_graphic() || *c == b' ') => {
                out.push(s.to_vec());
                i += 1 + len;
            }
            _ => return vec![b.to_vec()],
        }
    }
    out
}

fn pi_model(mac: Option<Mac>, machine_id: Option<&[u8]>, arches: &[ArchCode]) -> Option<PiModel> {
    match machine_id {
        Some([0, b'R', b'P', b'i', b'4', ..]) => return Some(PiModel::Pi4),
        Some([0, b'R', b'P', b'i', b'5', ..]) => return Some(PiModel::Pi5),
        Some([0, rest @ ..]) if rest.len() == 16 && rest.iter().all(|&b| b == b'D') => {
            return Some(PiModel::Pi3);
        }
        _ => {}
    }
    if arches.contains(&ArchCode(41)) {
        return Some(PiModel::Unknown);
    }
    // A Pi's boot ROM claims arch 0 (x86 BIOS); an OUI match with arch 0 or no arch
    // is a Pi. Linux on a Pi (no arch, no PXE vendor class) is caught earlier as a
    // plain client by the caller checking the vendor class.
    if mac.is_some_and(|m| RPI_OUIS.contains(&m.oui()))
        && (arches.is_empty() || arches.contains(&ArchCode(0)))
    {
        return Some(PiModel::Unknown);
    }
    None
}

fn firmware_kind(
    vendor_class: Option<&[u8]>,
    user_classes: &[Vec<u8>],
    has_175: bool,
    arches: &[ArchCode],
    pi: Option<PiModel>,
) -> Firmware {
    let vc = vendor_class.unwrap_or_default();
    let pxe_client = vc.starts_with(b"PXEClient");
    let http_client = vc.starts_with(b"HTTPClient");
    let uboot_vc = vc.starts_with(b"U-Boot");
    let is_ipxe = has_175 || user_classes.iter().any(|c| c == b"iPXE");

    // The first arch the server knows how to serve wins; RFC 4578 lists them in
    // preference order.
    let known = arches.iter().find_map(|a| a.meaning());
    let vc_arch = vendor_class_arch(vc).and_then(ArchCode::meaning);
    let platform_of = |t: Transport| {
        known
            .filter(|(_, tr)| *tr == t)
            .or(known)
            .or(vc_arch)
            .map(|(p, _)| p)
    };

    if is_ipxe {
        return Firmware::Ipxe(platform_of(Transport::Pxe).unwrap_or(Platform::Bios));
    }
    if pxe_client && let Some(model) = pi {
        return Firmware::RaspberryPi(model);
    }
    if http_client {
        return Firmware::HttpBoot(platform_of(Transport::Http).unwrap_or(Platform::UefiX64));
    }
    if uboot_vc
        || known.is_some_and(|(p, _)| matches!(p, Platform::UBootArm32 | Platform::UBootArm64))
    {
        let p = platform_of(Transport::Pxe).unwrap_or(if vc.ends_with(b"armv7") {
            Platform::UBootArm32
        } else {
            Platform::UBootArm64
        });
        let p = match p {
            Platform::UBootArm32 | Platform::UefiArm32 => Platform::UBootArm32,
            _ => Platform::UBootArm64,
        };
        return Firmware::UBoot(p);
    }
    if pxe_client {
        return match platform_of(Transport::Pxe) {
            Some(Platform::RaspberryPi) => Firmware::RaspberryPi(PiModel::Unknown),
            Some(p) => Firmware::Pxe(p),
            None => Firmware::Pxe(Platform::Bios),
        };
    }
    Firmware::Plain
}

/// `PXEClient:Arch:00007:UNDI:003000` → arch 7 (used when option 93 is missing).
fn vendor_class_arch(vc: &[u8]) -> Option<ArchCode> {
    let s = std::str::from_utf8(vc).ok()?;
    let rest = s.split(":Arch:").nth(1)?;
    let digits = rest.get(..5)?;
    digits.parse::<u16>().ok().map(ArchCode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_table_covers_the_codes_firmware_sends() {
        let cases = [
            (0, Platform::Bios, Transport::Pxe),
            (6, Platform::UefiIa32, Transport::Pxe),
            (7, Platform::UefiX64, Transport::Pxe),
            (9, Platform::UefiX64, Transport::Pxe),
            (10, Platform::UefiArm32, Transport::Pxe),
            (11, Platform::UefiArm64, Transport::Pxe),
            (15, Platform::UefiIa32, Transport::Http),
            (16, Platform::UefiX64, Transport::Http),
            (18, Platform::UefiArm32, Transport::Http),
            (19, Platform::UefiArm64, Transport::Http),
            (21, Platform::UBootArm32, Transport::Pxe),
            (22, Platform::UBootArm64, Transport::Pxe),
            (41, Platform::RaspberryPi, Transport::Pxe),
        ];
        for (code, p, t) in cases {
            assert_eq!(ArchCode(code).meaning(), Some((p, t)), "code {code}");
            assert!(ArchCode(code).name().is_some());
        }
        assert_eq!(ArchCode(42).name(), None);
        assert_eq!(ArchCode(12).meaning(), None);
    }

    #[test]
    fn vendor_class_arch_parses_pxe_strings() {
        assert_eq!(
            vendor_class_arch(b"PXEClient:Arch:00011:UNDI:003000"),
            Some(ArchCode(11))
        );
        assert_eq!(vendor_class_arch(b"PXEClient"), None);
        assert_eq!(vendor_class_arch(b"PXEClient:Arch:0x"), None);
    }

    #[test]
    fn user_class_accepts_both_encodings() {
        assert_eq!(parse_user_classes(Some(b"iPXE")), vec![b"iPXE".to_vec()]);
        assert_eq!(
            parse_user_classes(Some(b"\x04iPXE\x03abc")),
            vec![b"iPXE".to_vec(), b"abc".to_vec()]
        );
        assert_eq!(
            parse_user_classes(Some(b"\x09iPXE")),
            vec![b"\x09iPXE".to_vec()]
        );
    }

    #[test]
    fn mac_is_the_wire_type() {
        let m: Mac = "b8:27:EB:01:02:03".parse().expect("mac");
        assert_eq!(m.to_string(), "b8:27:eb:01:02:03");
        assert_eq!(m.hyphenated(), "b8-27-eb-01-02-03");
        assert!("b8:27:eb:01:02".parse::<Mac>().is_err());
        assert!("zz:27:eb:01:02:03".parse::<Mac>().is_err());
    }
}
