//! Raspberry Pi `tryboot` A/B: `autoboot.txt` on a small FAT partition picks the boot
//! partition, and `reboot "0 tryboot"` boots the other one exactly once.
//!
//! ```text
//! [all]
//! tryboot_a_b=1          # tryboot switches partitions, not config.txt -> tryboot.txt
//! boot_partition=2       # slot A: booted normally
//! [tryboot]
//! boot_partition=3       # slot B: booted once after `reboot "0 tryboot"`
//! ```
//!
//! - [`autoboot`]: the sans-IO parser/editor (512-byte cap, unknown lines kept verbatim).
//! - [`devicetree`]: which partition booted and whether it was a tryboot, from
//!   `/proc/device-tree/chosen/bootloader/{partition,tryboot}`.
//! - [`RpiTryboot`]: the [`AbBootloader`](crate::update::AbBootloader) over a mounted
//!   `autoboot.txt`, written through [`Io`](crate::io::Io) (temp + fsync + rename + fsync dir).
//! - [`fuzzing`]: the entry function of the `rpi_autoboot` fuzz target.
//!
//! The contract (see `docs/bootloaders.md`): with no trial armed, both sections name the
//! committed slot's partition, so a stray `reboot "0 tryboot"` can never boot a slot that is
//! being written. Arming sets `[tryboot]` to the new slot; the shell then reboots with
//! [`REBOOT_ARG`]. The firmware clears its one-shot flag before starting the OS, so any crash
//! or reset of the trial boots `[all]` again. Commit sets both to the new slot; abort sets both
//! to the kept slot.

pub mod autoboot;
pub mod devicetree;
pub mod fuzzing;
mod tryboot;

pub use autoboot::{AbPartitions, Autoboot, AutobootError, MAX_AUTOBOOT_LEN};
pub use devicetree::{BootInfo, DeviceTreeError, PROC_DEVICE_TREE, read_boot_info};
pub use tryboot::{
    AUTOBOOT_FILE, REBOOT_ARG, RpiPartitions, RpiTryboot, TrybootError, partition_device,
};
