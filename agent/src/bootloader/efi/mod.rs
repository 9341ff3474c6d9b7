//! UEFI A/B through the firmware's boot manager: `BootNext` tries a slot once, `BootOrder`
//! commits it.
//!
//! Each slot has one `Boot####` entry (an `EFI_LOAD_OPTION` whose device path ends in the
//! slot's loader on the ESP, e.g. `HD(1,GPT,...)/File(\EFI\tugboot\slot-b.efi)`, created at
//! install time with `efibootmgr -c`). The firmware deletes `BootNext` before booting the entry
//! it names, so a trial that crashes or hangs falls back to `BootOrder` on the next boot.
//!
//! - [`load_option`]: the sans-IO `EFI_LOAD_OPTION` / device-path parser and encoder (fuzzed).
//! - [`efivarfs`]: variables as files under `/sys/firmware/efi/efivars` (attributes prefix,
//!   one `write(2)` per variable, the immutable flag).
//! - [`EfiBootNext`]: the [`AbBootloader`](crate::update::AbBootloader).
//! - [`entry`]: the installer's `Boot####` entry (created, first in `BootOrder`).
//! - [`fuzzing`]: the entry function of the `efi_load_option` fuzz target.

mod bootnext;
pub mod efivarfs;
pub mod entry;
pub mod fuzzing;
pub mod load_option;

pub use bootnext::{EfiBootNext, EfiError, EfiSlot, EfiState, MAX_BOOT_ENTRIES, MAX_BOOT_ORDER};
pub use efivarfs::{
    EFI_GLOBAL_VARIABLE, EFIVARFS, Efivarfs, EfivarfsError, Variable, VariableError,
};
pub use load_option::{DevicePathNode, HardDrive, LoadOption, LoadOptionError};
