//! The validated, runtime form of a board: what the DHCP/TFTP server and the agent use.
//! Every value here has passed the rules in `validate.rs`; see docs/boards.md.

use std::fmt;

use serde::{Serialize, Serializer};

/// Defines a closed set of names spelled the same way in TOML, in JSON and in `Display`.
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The name used in board files and in JSON.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum! {
    /// CPU architecture of the operating system the board runs (not of its firmware).
    pub enum Arch {
        /// 64-bit x86.
        X86_64 = "x86_64",
        /// 64-bit Arm (AArch64).
        Arm64 = "arm64",
    }
}

named_enum! {
    /// How the firmware boots from the network: decides the DHCP reply's shape.
    pub enum BootKind {
        /// Legacy BIOS PXE option ROM: TFTP, boot file in the reply.
        BiosPxe = "bios-pxe",
        /// UEFI PXE: TFTP, boot file in the reply.
        UefiPxe = "uefi-pxe",
        /// UEFI HTTP boot: vendor class `HTTPClient`, an `http://` URL as boot file.
        UefiHttp = "uefi-http",
        /// U-Boot's `dhcp`/`pxe` commands: TFTP boot script or PXELINUX-style config.
        UbootPxe = "uboot-pxe",
        /// Raspberry Pi boot ROM / EEPROM bootloader: option 43 "Raspberry Pi Boot",
        /// firmware files over TFTP under a per-device prefix.
        RpiNetboot = "rpi-netboot",
    }
}

named_enum! {
    /// How the boot file reaches the client.
    pub enum Transport {
        /// TFTP (RFC 1350 and its option extensions).
        Tftp = "tftp",
        /// HTTP, for UEFI HTTP boot.
        Http = "http",
    }
}

named_enum! {
    /// What the boot file is: the next stage that runs after the firmware.
    pub enum Loader {
        /// iPXE: asks DHCP again with user class "iPXE" and then fetches its script.
        Ipxe = "ipxe",
        /// GRUB with network support: reads grub.cfg from the boot server.
        Grub = "grub",
        /// The kernel's own EFI stub, started directly by the firmware.
        EfiStub = "efi-stub",
        /// A U-Boot script image (`mkimage -T script`), run by U-Boot's `source`.
        UbootScript = "uboot-script",
        /// A PXELINUX-style config read by U-Boot's `pxe get` / `pxe boot`.
        PxelinuxConfig = "pxelinux-config",
        /// The Raspberry Pi VideoCore firmware / EEPROM bootloader files.
        RpiFirmware = "rpi-firmware",
    }
}

named_enum! {
    /// Format of the kernel image the board's boot path loads.
    pub enum KernelFormat {
        /// x86 bzImage (has an EFI stub too; BIOS loaders use the real-mode entry).
        Bzimage = "bzimage",
        /// Raw arm64 `Image`, loaded by U-Boot's `booti` or the Raspberry Pi firmware.
        Arm64Image = "arm64-image",
        /// A kernel started as an EFI application through its EFI stub.
        EfiStub = "efi-stub",
    }
}

named_enum! {
    /// Which directory prefix a Raspberry Pi puts before the files it asks for.
    pub enum TftpPrefix {
        /// The board serial number (8 lowercase hex digits): the default.
        Serial = "serial",
        /// The MAC address, dash-separated (`TFTP_PREFIX=2`, Pi 4 and later).
        Mac = "mac",
        /// No prefix: every Pi reads the same files.
        NoPrefix = "none",
    }
}

named_enum! {
    /// The two update slots.
    pub enum SlotName {
        /// Slot A.
        A = "A",
        /// Slot B.
        B = "B",
    }
}

named_enum! {
    /// The agent's bootloader backends (the `backend` key).
    pub enum BootloaderKind {
        /// GRUB environment block (`grub-editenv` format).
        GrubEnv = "grub-env",
        /// U-Boot environment (`fw_printenv`/`fw_setenv` format), one or two copies.
        UbootEnv = "uboot-env",
        /// Raspberry Pi `autoboot.txt` with `tryboot_a_b=1`.
        RpiTryboot = "rpi-tryboot",
        /// UEFI `BootNext` / `BootOrder` variables.
        EfiBootnext = "efi-bootnext",
        /// A plain state file, for tests and development.
        File = "file",
    }
}

impl SlotName {
    /// The other slot.
    #[must_use]
    pub fn other(self) -> SlotName {
        match self {
            SlotName::A => SlotName::B,
            SlotName::B => SlotName::A,
        }
    }
}

impl BootKind {
    /// How this kind of firmware fetches its boot file.
    #[must_use]
    pub fn transport(self) -> Transport {
        match self {
            BootKind::UefiHttp => Transport::Http,
            BootKind::BiosPxe | BootKind::UefiPxe | BootKind::UbootPxe | BootKind::RpiNetboot => {
                Transport::Tftp
            }
        }
    }
}

/// One kind of hardware, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Board {
    /// Unique name, also the file stem: `raspberrypi-4`.
    pub name: String,
    /// One line for humans.
    pub description: String,
    /// CPU architecture of the OS.
    pub arch: Arch,
    /// Kernel image format, console and extra command line.
    pub kernel: Kernel,
    /// MTU and TFTP hints for the server.
    pub network: NetworkHints,
    /// How the server recognises this board beyond the arch code.
    pub identify: Identify,
    /// Firmware network-boot methods, in file order; arch codes are unique across them.
    pub boot: Vec<BootMethod>,
    /// The A/B update layout, when the board is updated in place by the agent.
    pub ab: Option<AbLayout>,
}

impl Board {
    /// The boot method this board uses when a client sends `code` in DHCP option 93.
    #[must_use]
    pub fn method_for_arch(&self, code: u16) -> Option<&BootMethod> {
        self.boot.iter().find(|m| m.arch_codes.contains(&code))
    }
}

/// Kernel facts the boot glue needs to build a command line and pick a loader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kernel {
    /// Image format.
    pub format: KernelFormat,
    /// `console=` arguments in order; the last one becomes `/dev/console`.
    pub console: Vec<String>,
    /// Extra command-line arguments every image for this board needs, if any.
    pub cmdline: Option<String>,
}

impl Kernel {
    /// The `console=...` part of the kernel command line.
    #[must_use]
    pub fn console_args(&self) -> String {
        let mut out = String::new();
        for (i, c) in self.console.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str("console=");
            out.push_str(c);
        }
        out
    }
}

/// Network hints for the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NetworkHints {
    /// Link MTU the board's firmware expects (default 1500).
    pub mtu: u16,
    /// Largest TFTP `blksize` (RFC 2348) the server grants this board (default 1468,
    /// always at most `mtu - 32`, so a block never fragments).
    pub tftp_blksize: u16,
    /// Largest TFTP `windowsize` (RFC 7440) the server grants (default 1).
    pub tftp_windowsize: u16,
}

/// A MAC address prefix (IEEE OUI), shown as `b8:27:eb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Oui(pub [u8; 3]);

impl Oui {
    /// Whether `mac` starts with this OUI.
    #[must_use]
    pub fn matches(&self, mac: &[u8; 6]) -> bool {
        mac[..3] == self.0
    }
}

impl fmt::Display for Oui {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}")
    }
}

impl Serialize for Oui {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Bytes shown as lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct HexBytes(pub Vec<u8>);

impl fmt::Display for HexBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl Serialize for HexBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What, besides option 93, tells this board apart from others.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Identify {
    /// MAC address prefixes of this board's on-board NICs. Several boards may share one.
    pub mac_ouis: Vec<Oui>,
    /// Prefix of the DHCP option 97 client GUID, after its type byte.
    pub client_guid_prefix: Option<HexBytes>,
    /// Prefix of the DHCP option 60 vendor class the firmware sends.
    pub vendor_class_prefix: Option<String>,
}

impl Identify {
    /// Whether `mac` carries one of this board's OUIs.
    #[must_use]
    pub fn matches_mac(&self, mac: &[u8; 6]) -> bool {
        self.mac_ouis.iter().any(|o| o.matches(mac))
    }

    /// Whether an option 97 value (type byte first, as on the wire) starts with this
    /// board's GUID prefix. False when the board declares none.
    #[must_use]
    pub fn matches_client_guid(&self, option97: &[u8]) -> bool {
        match (&self.client_guid_prefix, option97.split_first()) {
            (Some(prefix), Some((_type, guid))) => guid.starts_with(&prefix.0),
            _ => false,
        }
    }

    /// Whether an option 60 value starts with this board's vendor class prefix.
    /// False when the board declares none.
    #[must_use]
    pub fn matches_vendor_class(&self, option60: &[u8]) -> bool {
        self.vendor_class_prefix
            .as_ref()
            .is_some_and(|p| option60.starts_with(p.as_bytes()))
    }
}

/// One way the board's firmware boots from the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootMethod {
    /// The firmware mechanism.
    pub kind: BootKind,
    /// DHCP option 93 codes this firmware sends (IANA "Processor Architecture Types").
    pub arch_codes: Vec<u16>,
    /// How the boot file travels (derived from `kind`).
    pub transport: Transport,
    /// Relative path of the first file the firmware fetches (for TFTP: the DHCP boot
    /// file; for HTTP: the path of the URL under the server's boot root).
    pub boot_file: String,
    /// What the boot file is.
    pub loader: Loader,
    /// Further relative paths the client reads; a trailing `/` marks a directory.
    pub files: Vec<String>,
    /// Raspberry Pi specifics, present exactly when `kind` is `rpi-netboot`.
    pub rpi: Option<RpiNetboot>,
}

/// What the server must do differently for a Raspberry Pi.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RpiNetboot {
    /// Per-device directory prefix of the TFTP requests.
    pub tftp_prefix: TftpPrefix,
    /// Whether `boot_file` itself is requested under the prefix (Pi 4/5: yes,
    /// Pi 3's `bootcode.bin`: no, it comes from the TFTP root).
    pub prefix_boot_file: bool,
    /// The string the reply must carry in option 43 (PXE boot menu) for the
    /// firmware to accept it.
    pub option43: String,
    /// False when the firmware never sends DHCPREQUEST (Pi 3 boot ROM): the server
    /// must record the lease at OFFER time.
    pub sends_dhcp_request: bool,
}

/// The A/B layout the agent updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AbLayout {
    /// Slot A, then slot B.
    pub slots: [Slot; 2],
    /// How the agent tells the bootloader which slot to boot.
    pub bootloader: Bootloader,
}

impl AbLayout {
    /// The slot with this name.
    #[must_use]
    pub fn slot(&self, name: SlotName) -> &Slot {
        match name {
            SlotName::A => &self.slots[0],
            SlotName::B => &self.slots[1],
        }
    }
}

/// Where a slot lives on the device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotLocation {
    /// A GPT partition label, found under `/dev/disk/by-partlabel/`.
    Partlabel(String),
    /// An absolute device path, e.g. `/dev/mmcblk0p5`.
    Device(String),
}

impl fmt::Display for SlotLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotLocation::Partlabel(l) => write!(f, "/dev/disk/by-partlabel/{l}"),
            SlotLocation::Device(d) => f.write_str(d),
        }
    }
}

/// One update slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Slot {
    /// A or B.
    pub name: SlotName,
    /// The partition that receives the slot payload.
    pub location: SlotLocation,
    /// Size of that partition in MiB; an image larger than this is refused.
    pub size_mib: u64,
    /// `rpi-tryboot`: the FAT boot partition number of this slot.
    pub boot_partition: Option<u8>,
    /// `efi-bootnext`: path of this slot's EFI loader on the ESP.
    pub efi_loader: Option<String>,
}

/// One copy of a U-Boot environment, like a line of `fw_env.config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UbootEnvCopy {
    /// Absolute path of the device or file holding the copy.
    pub device: String,
    /// Byte offset of the copy in the device.
    pub offset: u64,
    /// Size of the environment in bytes (`CONFIG_ENV_SIZE`).
    pub size: u64,
    /// Erase-sector size for flash devices, when it matters.
    pub sector_size: Option<u64>,
}

/// How the agent switches slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "backend", rename_all = "kebab-case")]
pub enum Bootloader {
    /// GRUB environment block.
    GrubEnv {
        /// Absolute path of the `grubenv` file on the running system.
        env_file: String,
    },
    /// U-Boot environment with bootcount/bootlimit/altbootcmd.
    UbootEnv {
        /// One copy, or two for a redundant environment
        /// (`CONFIG_SYS_REDUNDAND_ENVIRONMENT`).
        copies: Vec<UbootEnvCopy>,
        /// `bootlimit`: failed boots before U-Boot runs `altbootcmd`.
        bootlimit: u32,
    },
    /// Raspberry Pi `autoboot.txt` + tryboot.
    RpiTryboot {
        /// The disk holding the boot partitions.
        disk: String,
        /// Partition number of the FAT partition holding `autoboot.txt`.
        autoboot_partition: u8,
    },
    /// UEFI `BootNext` / `BootOrder`.
    EfiBootnext {
        /// Absolute path of the EFI system partition device.
        esp_device: String,
    },
    /// A plain state file.
    File {
        /// Absolute path of the state file.
        path: String,
    },
}

impl Bootloader {
    /// Which backend this is.
    #[must_use]
    pub fn kind(&self) -> BootloaderKind {
        match self {
            Bootloader::GrubEnv { .. } => BootloaderKind::GrubEnv,
            Bootloader::UbootEnv { .. } => BootloaderKind::UbootEnv,
            Bootloader::RpiTryboot { .. } => BootloaderKind::RpiTryboot,
            Bootloader::EfiBootnext { .. } => BootloaderKind::EfiBootnext,
            Bootloader::File { .. } => BootloaderKind::File,
        }
    }
}

impl fmt::Display for Bootloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind().as_str())
    }
}
