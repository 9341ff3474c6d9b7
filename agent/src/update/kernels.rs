//! Slot kernels on the boot partition, for bootloaders that cannot read a slot's file system
//! (Debian's U-Boot for `qemu_arm64` has no squashfs): before a slot is armed (and when the
//! installer writes slot A), the slot's `/boot/vmlinuz` and `/boot/initrd.img` are copied out
//! of its squashfs into `<dir>/<slot>/` on the boot partition, where the boot script
//! (`firmware/boot/uboot-ab.cmd`) loads them from. The kernel and the root file system still
//! change together: the copy is part of arming, and the slot's content was verified first.
//!
//! Only the inactive slot's directory is written, so a power cut during the copy leaves the
//! booted slot's kernel alone; each file is written to a temporary name, synced and renamed,
//! and the boot partition's whole file system is synced before the slot is armed.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

use super::boot::{AbBootloader, BootError, BootStatus, Booted};
use crate::bootloader::Slot;
use crate::slot::SlotPaths;

/// Where a slot is mounted (read-only) while its kernel is copied to the boot partition.
pub const SLOT_MOUNT: &str = "/run/tugboot-slot";
/// File system type of slot images (`tugboot image build`).
pub const SLOT_FS: &str = "squashfs";
/// Largest kernel or initrd copied (a bigger file in `/boot` is refused, not copied).
pub const MAX_BOOT_FILE: u64 = 512 << 20;
/// The files copied: path in the slot, name on the boot partition, required.
pub const BOOT_FILES: [(&str, &str, bool); 2] = [
    ("boot/vmlinuz", "vmlinuz", true),
    ("boot/initrd.img", "initrd.img", false),
];

/// Copying a slot's kernel failed; the slot is then not armed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// Mounting the slot read-only failed.
    #[error("cannot mount slot {slot} ({dev}) as {SLOT_FS} on {at}: {source}")]
    Mount {
        /// Slot.
        slot: Slot,
        /// Its device.
        dev: PathBuf,
        /// Mount point.
        at: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The slot has no kernel.
    #[error("slot {slot} has no /{path}: nothing for the bootloader to boot")]
    NoKernel {
        /// Slot.
        slot: Slot,
        /// The missing path.
        path: &'static str,
    },
    /// A file too large to copy.
    #[error("slot {slot}: /{path} is {len} bytes, more than {MAX_BOOT_FILE}")]
    TooLarge {
        /// Slot.
        slot: Slot,
        /// The file.
        path: &'static str,
        /// Its size.
        len: u64,
    },
    /// Reading or writing a file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// Operation.
        op: &'static str,
        /// Path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KernelError {
    let path = path.to_path_buf();
    move |source| KernelError::Io { op, path, source }
}

/// What [`publish`] copied: `(name, bytes)` per file.
pub type Published = Vec<(&'static str, u64)>;

/// The slot's file system mounted read-only; unmounted when dropped.
struct SlotMount<'a>(&'a Path);

impl Drop for SlotMount<'_> {
    fn drop(&mut self) {
        if rustix::mount::unmount(self.0, UnmountFlags::empty()).is_err() {
            let _ = rustix::mount::unmount(self.0, UnmountFlags::DETACH);
        }
    }
}

fn copy_synced(from: &Path, to: &Path, len: u64) -> Result<(), KernelError> {
    let tmp = to.with_extension("tmp");
    let mut src = File::open(from).map_err(io_err("open", from))?;
    let mut dst = File::create(&tmp).map_err(io_err("create", &tmp))?;
    let copied =
        std::io::copy(&mut (&mut src).take(len), &mut dst).map_err(io_err("copy to", &tmp))?;
    if copied != len {
        return Err(KernelError::Io {
            op: "copy",
            path: from.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file shrank"),
        });
    }
    dst.flush().map_err(io_err("write", &tmp))?;
    dst.sync_all().map_err(io_err("sync", &tmp))?;
    drop(dst);
    std::fs::rename(&tmp, to).map_err(io_err("rename to", to))
}

/// Copies `slot`'s kernel and initrd from its device `dev` into `dir/<slot>/`, mounting the
/// slot read-only on `mount_at` meanwhile. A slot without an initrd removes the directory's
/// old one, so a kernel is never paired with another image's initrd.
///
/// # Errors
/// See [`KernelError`]; the directory may then hold a partial copy, which is harmless (the
/// slot is not armed).
pub fn publish(
    dev: &Path,
    slot: Slot,
    dir: &Path,
    mount_at: &Path,
) -> Result<Published, KernelError> {
    std::fs::create_dir_all(mount_at).map_err(io_err("create", mount_at))?;
    rustix::mount::mount(
        dev,
        mount_at,
        SLOT_FS,
        MountFlags::RDONLY | MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC,
        None,
    )
    .map_err(|e| KernelError::Mount {
        slot,
        dev: dev.to_path_buf(),
        at: mount_at.to_path_buf(),
        source: e.into(),
    })?;
    let _mounted = SlotMount(mount_at);
    let out = dir.join(slot.as_str());
    std::fs::create_dir_all(&out).map_err(io_err("create", &out))?;
    let mut published = Vec::new();
    for (path, name, required) in BOOT_FILES {
        let from = mount_at.join(path);
        let to = out.join(name);
        let len = match std::fs::metadata(&from) {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) | Err(_) if required => return Err(KernelError::NoKernel { slot, path }),
            _ => {
                match std::fs::remove_file(&to) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("remove", &to)(e)),
                }
                continue;
            }
        };
        if len > MAX_BOOT_FILE {
            return Err(KernelError::TooLarge { slot, path, len });
        }
        copy_synced(&from, &to, len)?;
        published.push((name, len));
    }
    // The whole file system, not only the files: Linux's vfat leaves the FAT (the files'
    // cluster chains) behind after an fsync of the file and its directory — the lifecycle test's
    // power cut right after arming caught it, U-Boot then read "Invalid FAT entry" — as ext2
    // leaves its bitmaps (docs/installer.md).
    let dir_fd = File::open(&out).map_err(io_err("open", &out))?;
    rustix::fs::syncfs(&dir_fd).map_err(|e| KernelError::Io {
        op: "syncfs",
        path: out.clone(),
        source: e.into(),
    })?;
    Ok(published)
}

/// A bootloader whose slots boot the kernels in `dir/<slot>/`: [`publish`] runs before every
/// trial is armed; everything else is the inner bootloader's.
#[derive(Debug)]
pub struct SlotKernels<B> {
    inner: B,
    slots: SlotPaths,
    dir: PathBuf,
    mount_at: PathBuf,
}

impl<B> SlotKernels<B> {
    /// Kernels of `slots` go to `dir`; slots are mounted on `mount_at` to copy them.
    pub fn new(inner: B, slots: SlotPaths, dir: PathBuf, mount_at: PathBuf) -> Self {
        Self {
            inner,
            slots,
            dir,
            mount_at,
        }
    }
}

impl<B: AbBootloader> AbBootloader for SlotKernels<B> {
    fn arm_trial(&mut self, slot: Slot) -> Result<(), BootError> {
        publish(self.slots.path(slot), slot, &self.dir, &self.mount_at)
            .map_err(|e| BootError::SlotKernel(e.to_string()))?;
        self.inner.arm_trial(slot)
    }
    fn commit(&mut self, slot: Slot) -> Result<(), BootError> {
        self.inner.commit(slot)
    }
    fn abort_trial(&mut self, keep: Slot) -> Result<(), BootError> {
        self.inner.abort_trial(keep)
    }
    fn status(&mut self) -> Result<BootStatus, BootError> {
        self.inner.status()
    }
    fn booted(&mut self) -> Result<Booted, BootError> {
        self.inner.booted()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts what reaches the inner bootloader.
    #[derive(Default)]
    struct Counting {
        armed: Vec<Slot>,
    }

    impl AbBootloader for Counting {
        fn arm_trial(&mut self, slot: Slot) -> Result<(), BootError> {
            self.armed.push(slot);
            Ok(())
        }
        fn commit(&mut self, _: Slot) -> Result<(), BootError> {
            Ok(())
        }
        fn abort_trial(&mut self, _: Slot) -> Result<(), BootError> {
            Ok(())
        }
        fn status(&mut self) -> Result<BootStatus, BootError> {
            Ok(BootStatus {
                default: Slot::A,
                trial: None,
            })
        }
        fn booted(&mut self) -> Result<Booted, BootError> {
            Err(BootError::SlotKernel("not used".into()))
        }
    }

    #[test]
    fn a_slot_whose_kernel_cannot_be_copied_is_not_armed() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file is no squashfs block device: the mount fails (EPERM, ENOTBLK or
        // EINVAL, as root or not), and nothing reaches the bootloader.
        let slot_b = dir.path().join("slot-b");
        std::fs::write(&slot_b, b"not a file system").unwrap();
        let slots = SlotPaths {
            a: dir.path().join("slot-a"),
            b: slot_b,
        };
        let mut boot = SlotKernels::new(
            Counting::default(),
            slots,
            dir.path().join("boot"),
            dir.path().join("mnt"),
        );
        let err = boot.arm_trial(Slot::B).unwrap_err();
        assert!(
            matches!(&err, BootError::SlotKernel(m) if m.contains("cannot mount slot B")),
            "{err}"
        );
        assert!(boot.inner.armed.is_empty());
        assert!(!dir.path().join("boot/B/vmlinuz").exists());
        // Everything else is the inner bootloader's.
        assert_eq!(boot.status().unwrap().default, Slot::A);
    }
}
