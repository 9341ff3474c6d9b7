//! Raspberry Pi network boot trees, generated per machine under its serial number.
//!
//! The EEPROM/ROM bootloader fetches everything over TFTP below `<serial>/` (8 lowercase hex
//! digits; `TFTP_PREFIX=0`, the default): the GPU firmware (`start4.elf` + `fixup4.dat` on a
//! Pi 4), which then reads `config.txt`, `cmdline.txt`, the kernel, the initramfs and the device
//! tree. Here:
//!
//! - `config.txt` and `cmdline.txt` are generated from the machine's [`BootPlan`];
//! - the kernel and initramfs are the image's artifacts under fixed names ([`KERNEL`],
//!   [`INITRD`]), so nothing of the signed image is renamed or rewritten;
//! - a device tree comes from the image when it carries one of that name (role `dtb`), else
//!   from the operator's firmware directory, as do the GPU firmware files and `overlays/`
//!   (Raspberry Pi's boot firmware is not free software; the operator supplies it).
//!
//! A machine whose plan is a local boot gets no `start*.elf`: the bootloader then moves on to
//! the next mode of its `BOOT_ORDER` (SD card, USB), which is the Pi's "boot from disk".

use crate::plan::{BootAction, BootPlan};
use crate::render::sanitize_message;

/// The kernel's name in the tree (`kernel=` of the generated `config.txt`).
pub const KERNEL: &str = "tugboot-kernel.img";
/// The initramfs's name in the tree.
pub const INITRD: &str = "tugboot-initrd.img";
/// Longest file name below the serial directory.
pub const MAX_NAME_LEN: usize = 128;

/// What a file of a Pi's tree is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpiFile {
    /// Generated text.
    Text(String),
    /// An artifact of the image (by digest).
    Artifact(tugboot_firmware::Sha256Digest),
    /// A file of the operator's firmware directory (the name, already checked).
    Firmware(String),
    /// Nothing here: the bootloader tries its next name or boot mode.
    NotFound,
}

/// `name` is a path below the serial directory that may name a firmware file: `[A-Za-z0-9._-]`
/// components, `overlays/` allowed, no dot-files, no `..`.
#[must_use]
pub fn firmware_name_ok(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN
        && !name.is_empty()
        && name.split('/').count() <= 2
        && name.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
        })
}

/// The file `name` of the tree for `plan`.
#[must_use]
pub fn file(plan: &BootPlan, name: &str) -> RpiFile {
    let BootAction::Linux(l) = &plan.action else {
        return RpiFile::NotFound;
    };
    match name {
        "config.txt" => RpiFile::Text(config_txt(plan)),
        "cmdline.txt" => RpiFile::Text(format!("{}\n", l.cmdline)),
        KERNEL => RpiFile::Artifact(l.kernel),
        INITRD => l.initrd.map_or(RpiFile::NotFound, RpiFile::Artifact),
        other => {
            if let Some((_, d)) = l.dtbs.iter().find(|(n, _)| n == other) {
                return RpiFile::Artifact(*d);
            }
            if firmware_name_ok(other) {
                RpiFile::Firmware(other.to_owned())
            } else {
                RpiFile::NotFound
            }
        }
    }
}

/// `config.txt`: 64-bit kernel and initramfs of the image, the serial console on.
#[must_use]
pub fn config_txt(plan: &BootPlan) -> String {
    let mut s = format!(
        "# tugboot: {}\n[all]\narm_64bit=1\nenable_uart=1\nkernel={KERNEL}\n",
        sanitize_message(&plan.comment())
    );
    if plan.linux().is_some_and(|l| l.initrd.is_some()) {
        s.push_str(&format!("initramfs {INITRD} followkernel\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::test_plan;

    #[test]
    fn tree_of_a_linux_plan() {
        let plan = test_plan("console=serial0,115200 quiet", true);
        let l = plan.linux().unwrap();
        let RpiFile::Text(config) = file(&plan, "config.txt") else {
            panic!()
        };
        assert!(config.contains("arm_64bit=1\n"), "{config}");
        assert!(config.contains(&format!("kernel={KERNEL}\n")));
        assert!(config.contains(&format!("initramfs {INITRD} followkernel\n")));
        assert_eq!(
            file(&plan, "cmdline.txt"),
            RpiFile::Text("console=serial0,115200 quiet\n".into())
        );
        assert_eq!(file(&plan, KERNEL), RpiFile::Artifact(l.kernel));
        assert_eq!(file(&plan, INITRD), RpiFile::Artifact(l.initrd.unwrap()));
        assert_eq!(
            file(&plan, "start4.elf"),
            RpiFile::Firmware("start4.elf".into())
        );
        assert_eq!(
            file(&plan, "overlays/disable-bt.dtbo"),
            RpiFile::Firmware("overlays/disable-bt.dtbo".into())
        );
        for bad in ["../x", ".hidden", "a/b/c", "a b", "overlays/", ""] {
            assert_eq!(file(&plan, bad), RpiFile::NotFound, "{bad:?}");
        }
    }
}
