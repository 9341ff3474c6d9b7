//! The serde layer: exactly what a board file may say, nothing checked beyond types.
//! `TryFrom<BoardFile> for Board` (in `validate.rs`) turns it into a [`crate::Board`].
//!
//! Every table denies unknown keys, so a typo is an error with its line number rather
//! than a silently ignored setting.

use serde::Deserialize;

use crate::board::{Arch, BootKind, BootloaderKind, KernelFormat, Loader, TftpPrefix};

/// A board file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardFile {
    /// `name`: must equal the file stem.
    pub name: String,
    /// `description`: one line.
    pub description: String,
    /// `arch`.
    pub arch: Arch,
    /// `[kernel]`.
    pub kernel: KernelTable,
    /// `[network]`, optional.
    #[serde(default)]
    pub network: NetworkTable,
    /// `[identify]`, optional.
    #[serde(default)]
    pub identify: IdentifyTable,
    /// `[[boot]]`, at least one.
    pub boot: Vec<BootTable>,
    /// `[[slots]]`: none, or A and B.
    #[serde(default)]
    pub slots: Vec<SlotTable>,
    /// `[bootloader]`: present exactly when slots are.
    pub bootloader: Option<BootloaderTable>,
}

/// `[kernel]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelTable {
    /// `format`.
    pub format: KernelFormat,
    /// `console`: `console=` values, last one primary.
    pub console: Vec<String>,
    /// `cmdline`: extra arguments.
    pub cmdline: Option<String>,
}

/// `[network]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkTable {
    /// `mtu`, default 1500.
    pub mtu: Option<u16>,
    /// `tftp_blksize`, default 1468.
    pub tftp_blksize: Option<u16>,
    /// `tftp_windowsize`, default 1.
    pub tftp_windowsize: Option<u16>,
}

/// `[identify]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentifyTable {
    /// `mac_ouis`: `"b8:27:eb"` strings.
    #[serde(default)]
    pub mac_ouis: Vec<String>,
    /// `client_guid_prefix`: hex string.
    pub client_guid_prefix: Option<String>,
    /// `vendor_class_prefix`.
    pub vendor_class_prefix: Option<String>,
}

/// One `[[boot]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootTable {
    /// `method`.
    pub method: BootKind,
    /// `arch_codes`: DHCP option 93 values.
    pub arch_codes: Vec<u16>,
    /// `boot_file`.
    pub boot_file: String,
    /// `loader`.
    pub loader: Loader,
    /// `files`.
    #[serde(default)]
    pub files: Vec<String>,
    /// `[boot.rpi]`.
    pub rpi: Option<RpiTable>,
}

/// `[boot.rpi]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpiTable {
    /// `tftp_prefix`.
    pub tftp_prefix: TftpPrefix,
    /// `prefix_boot_file`.
    pub prefix_boot_file: bool,
    /// `option43`.
    pub option43: String,
    /// `sends_dhcp_request`, default true.
    #[serde(default = "default_true")]
    pub sends_dhcp_request: bool,
}

fn default_true() -> bool {
    true
}

/// One `[[slots]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotTable {
    /// `name`: "A" or "B".
    pub name: String,
    /// `partlabel` (exclusive with `device`).
    pub partlabel: Option<String>,
    /// `device` (exclusive with `partlabel`).
    pub device: Option<String>,
    /// `size_mib`.
    pub size_mib: u64,
    /// `boot_partition` (rpi-tryboot only).
    pub boot_partition: Option<u8>,
    /// `efi_loader` (efi-bootnext only).
    pub efi_loader: Option<String>,
}

/// `[bootloader]`: every backend's keys, optional here; validation checks that a
/// backend gets the keys it needs and no others.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootloaderTable {
    /// `backend`.
    pub backend: BootloaderKind,
    /// grub-env: `env_file`.
    pub env_file: Option<String>,
    /// uboot-env: `env` copies.
    pub env: Option<Vec<UbootEnvTable>>,
    /// uboot-env: `bootlimit`.
    pub bootlimit: Option<u32>,
    /// rpi-tryboot: `disk`.
    pub disk: Option<String>,
    /// rpi-tryboot: `autoboot_partition`.
    pub autoboot_partition: Option<u8>,
    /// efi-bootnext: `esp_device`.
    pub esp_device: Option<String>,
    /// file: `path`.
    pub path: Option<String>,
}

/// One entry of `bootloader.env`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UbootEnvTable {
    /// `device`.
    pub device: String,
    /// `offset`.
    pub offset: u64,
    /// `size`.
    pub size: u64,
    /// `sector_size`.
    pub sector_size: Option<u64>,
}
