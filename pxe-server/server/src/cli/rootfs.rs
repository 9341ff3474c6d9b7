//! Slot images from a root file system: a directory or a tar becomes a reproducible, read-only
//! squashfs with `/boot` inside, so one slot holds the kernel, its initrd and everything the OS
//! runs — the bootloader loads the kernel from the slot it boots (docs/image-format.md, "Slot
//! images").

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The kernel every slot image carries, where the bootloaders tugboot installs look for it.
pub const SLOT_KERNEL: &str = "boot/vmlinuz";

/// A squashfs built from `rootfs` inside `work` (a directory the caller owns and removes).
///
/// `rootfs` is a directory, or a tar (`.tar`, `.tar.gz`, `.tgz`, `.tar.xz`, `.tar.zst`; GNU tar
/// unpacks it). The result is byte-for-byte the same for the same tree: owners root, every
/// time stamp 0, no extended attributes, entries sorted (mksquashfs), gzip compression (GRUB
/// 2.06's `squash4` and Linux both read it).
///
/// # Errors
/// No `boot/vmlinuz` in the tree, a tar that does not unpack, `mksquashfs` missing or failing.
pub fn squashfs(rootfs: &Path, work: &Path) -> anyhow::Result<PathBuf> {
    let tree = if rootfs.is_dir() {
        rootfs.to_path_buf()
    } else if is_tar(rootfs) {
        let tree = work.join("rootfs");
        std::fs::create_dir_all(&tree)?;
        // Ownership is dropped (`-all-root` below sets it); device nodes in the tar need root.
        run(Command::new("tar")
            .arg("-x")
            .arg("--no-same-owner")
            .arg("-f")
            .arg(rootfs)
            .arg("-C")
            .arg(&tree))
        .with_context(|| format!("cannot unpack {}", rootfs.display()))?;
        tree
    } else {
        bail!(
            "--rootfs {}: neither a directory nor a tar (.tar, .tar.gz, .tgz, .tar.xz, .tar.zst)",
            rootfs.display()
        );
    };
    let kernel = tree.join(SLOT_KERNEL);
    if !kernel.metadata().is_ok_and(|m| m.is_file()) {
        bail!(
            "--rootfs {}: no {SLOT_KERNEL} (a slot image carries its kernel; the bootloader loads it from the slot it boots)",
            rootfs.display()
        );
    }
    let out = work.join("rootfs.squashfs");
    run(Command::new("mksquashfs").arg(&tree).arg(&out).args([
        "-noappend",
        "-all-root",
        "-no-xattrs",
        "-mkfs-time",
        "0",
        "-all-time",
        "0",
        "-comp",
        "gzip",
        "-quiet",
        "-no-progress",
    ]))
    .context("mksquashfs (Debian package squashfs-tools) failed")?;
    Ok(out)
}

fn is_tar(p: &Path) -> bool {
    let name = p
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    [".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.zst"]
        .iter()
        .any(|s| name.ends_with(s))
        && p.is_file()
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} exited with {}: {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
