//! GRUB for BIOS (i386-pc) on a GPT disk, as `grub-install` embeds it, sans-IO: Debian's
//! `boot.img` becomes the MBR's boot code (the protective MBR's partition table and disk
//! signature are kept) and loads `core.img` (made by `grub-mkimage -O i386-pc` when the
//! installer is built) from the gap between the GPT and the first partition, which starts at
//! 1 MiB in the installer's layout. Only the fields `grub-install` itself patches are touched:
//!
//! - `boot.img`: the disk's BIOS parameter block kept (0x03..0x5a), the LBA of core.img's first sector (`GRUB_BOOT_MACHINE_KERNEL_SECTOR`, 0x5c)
//!   and the boot-drive check (0x66) turned into two NOPs, as for any non-floppy install;
//! - `core.img`'s first sector (`diskboot.img`): its one block list entry (the last 12 bytes:
//!   start LBA, sector count, load segment) naming the sectors after it.
//!
//! GRUB then finds its configuration through the prefix baked into core.img
//! (`(hd0,gpt1)/grub`: the ESP-like FAT partition 1).

/// Bytes of a sector as BIOS GRUB addresses it.
pub const SECTOR: usize = 512;
/// Offset of the boot code's end in the MBR (disk signature, then the partition table).
pub const MBR_CODE_LEN: usize = 440;
/// The BIOS parameter block boot.img jumps over: kept from the disk, as `grub-install` does.
pub const BPB: std::ops::Range<usize> = 0x3..0x5a;
/// `GRUB_BOOT_MACHINE_KERNEL_SECTOR`: core.img's first LBA, u64 little-endian.
pub const KERNEL_SECTOR: usize = 0x5c;
/// `GRUB_BOOT_MACHINE_DRIVE_CHECK`: a jump that trusts only 0x8x drive numbers; NOPed.
pub const DRIVE_CHECK: usize = 0x66;
/// The block list entry at the end of diskboot.img: start u64, len u16, segment u16.
pub const BLOCKLIST_LEN: usize = 12;
/// Where diskboot.img loads the rest of core.img: `GRUB_BOOT_I386_PC_KERNEL_SEG` + one sector.
pub const LOAD_SEGMENT: u16 = 0x820;

/// What cannot be embedded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BiosError {
    /// `boot.img` is not one sector with the 0x55AA signature.
    #[error("boot.img must be one 512-byte sector ending in 55 AA")]
    BadBootImg,
    /// `core.img` is empty, or its first sector does not end in a default block list.
    #[error("core.img does not start with GRUB's diskboot.img ({0})")]
    BadCoreImg(&'static str),
    /// The MBR on the disk is not a protective MBR's sector.
    #[error("the disk's first sector is not an MBR (no 55 AA)")]
    BadMbr,
    /// core.img does not fit between the GPT and the first partition.
    #[error("core.img needs {need} sectors, the gap after the GPT has {have}")]
    TooLarge {
        /// Sectors of core.img.
        need: u64,
        /// Sectors free.
        have: u64,
    },
}

/// The MBR and core.img to write: `mbr` at LBA 0, `core` at `core_lba`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Embedded {
    /// The new first sector.
    pub mbr: [u8; SECTOR],
    /// core.img, patched, padded to whole sectors.
    pub core: Vec<u8>,
    /// Where core.img goes.
    pub core_lba: u64,
}

/// Patches `boot_img` and `core_img` to load core.img from `core_lba` (the first LBA after the
/// GPT's entries) on a disk whose first sector is `mbr` and whose first partition starts at
/// `first_partition_lba`.
///
/// # Errors
/// See [`BiosError`].
pub fn embed(
    boot_img: &[u8],
    core_img: &[u8],
    mbr: &[u8],
    core_lba: u64,
    first_partition_lba: u64,
) -> Result<Embedded, BiosError> {
    let signed = |s: &[u8]| s.len() == SECTOR && s[510..] == [0x55, 0xaa];
    if !signed(boot_img) {
        return Err(BiosError::BadBootImg);
    }
    if !signed(mbr) {
        return Err(BiosError::BadMbr);
    }
    if core_img.len() <= SECTOR {
        return Err(BiosError::BadCoreImg("it is one sector or less"));
    }
    let mut core = core_img.to_vec();
    core.resize(core.len().div_ceil(SECTOR) * SECTOR, 0);
    let sectors = (core.len() / SECTOR) as u64;
    let have = first_partition_lba.saturating_sub(core_lba);
    if sectors > have {
        return Err(BiosError::TooLarge {
            need: sectors,
            have,
        });
    }
    // diskboot.img's default block list: start 2, len 0 (`blocklist_default_*`), segment 0x820.
    let bl = SECTOR - BLOCKLIST_LEN;
    if core[bl + 10..bl + 12] != LOAD_SEGMENT.to_le_bytes() {
        return Err(BiosError::BadCoreImg("no block list with segment 0x820"));
    }
    let rest = u16::try_from(sectors - 1).map_err(|_| BiosError::TooLarge {
        need: sectors,
        have,
    })?;
    core[bl..bl + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    core[bl + 8..bl + 10].copy_from_slice(&rest.to_le_bytes());

    let mut out = [0u8; SECTOR];
    out.copy_from_slice(mbr);
    out[..MBR_CODE_LEN].copy_from_slice(&boot_img[..MBR_CODE_LEN]);
    out[BPB].copy_from_slice(&mbr[BPB]);
    out[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    out[DRIVE_CHECK..DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    Ok(Embedded {
        mbr: out,
        core,
        core_lba,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sector_with_signature(fill: u8) -> Vec<u8> {
        let mut s = vec![fill; SECTOR];
        s[510] = 0x55;
        s[511] = 0xaa;
        s
    }

    fn core(sectors: usize) -> Vec<u8> {
        let mut c = vec![0xc0; sectors * SECTOR - 100];
        let bl = SECTOR - BLOCKLIST_LEN;
        c[bl..bl + 8].copy_from_slice(&2u64.to_le_bytes());
        c[bl + 8..bl + 10].copy_from_slice(&0u16.to_le_bytes());
        c[bl + 10..bl + 12].copy_from_slice(&LOAD_SEGMENT.to_le_bytes());
        c
    }

    #[test]
    fn patches_only_what_grub_install_patches() {
        let boot = sector_with_signature(0xb0);
        let mut mbr = sector_with_signature(0);
        mbr[440..446].copy_from_slice(&[1, 2, 3, 4, 0, 0]); // disk signature
        mbr[446..462].copy_from_slice(&[
            0, 0, 2, 0, 0xee, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
        ]);
        let e = embed(&boot, &core(300), &mbr, 34, 2048).unwrap();
        assert_eq!(e.core_lba, 34);
        assert_eq!(e.core.len(), 300 * SECTOR);
        // Boot code from boot.img with its two fields; BPB, table and signature from the disk.
        assert_eq!(&e.mbr[..BPB.start], &boot[..BPB.start]);
        assert_eq!(&e.mbr[BPB], &mbr[BPB]);
        assert_eq!(
            &e.mbr[BPB.end..KERNEL_SECTOR],
            &boot[BPB.end..KERNEL_SECTOR]
        );
        assert_eq!(
            &e.mbr[KERNEL_SECTOR..KERNEL_SECTOR + 8],
            &34u64.to_le_bytes()
        );
        assert_eq!(&e.mbr[DRIVE_CHECK..DRIVE_CHECK + 2], &[0x90, 0x90]);
        assert_eq!(
            &e.mbr[DRIVE_CHECK + 2..MBR_CODE_LEN],
            &boot[DRIVE_CHECK + 2..MBR_CODE_LEN]
        );
        assert_eq!(&e.mbr[MBR_CODE_LEN..], &mbr[MBR_CODE_LEN..]);
        // The block list names the 299 sectors after diskboot.img.
        let bl = SECTOR - BLOCKLIST_LEN;
        assert_eq!(&e.core[bl..bl + 8], &35u64.to_le_bytes());
        assert_eq!(&e.core[bl + 8..bl + 10], &299u16.to_le_bytes());
        assert_eq!(&e.core[bl + 10..bl + 12], &LOAD_SEGMENT.to_le_bytes());
        assert_eq!(&e.core[SECTOR..SECTOR + 10], &[0xc0; 10]);
        assert!(
            e.core[300 * SECTOR - 100..].iter().all(|&b| b == 0),
            "padding"
        );
    }

    #[test]
    fn refuses_what_would_not_boot() {
        let boot = sector_with_signature(0xb0);
        let mbr = sector_with_signature(0);
        assert_eq!(
            embed(&boot, &core(2015), &mbr, 34, 2048),
            Err(BiosError::TooLarge {
                need: 2015,
                have: 2014
            })
        );
        assert_eq!(
            embed(&boot[..511], &core(4), &mbr, 34, 2048),
            Err(BiosError::BadBootImg)
        );
        assert_eq!(
            embed(&boot, &core(4), &vec![0; SECTOR], 34, 2048),
            Err(BiosError::BadMbr)
        );
        assert!(matches!(
            embed(&boot, &vec![0; 4 * SECTOR], &mbr, 34, 2048),
            Err(BiosError::BadCoreImg(_))
        ));
        assert!(matches!(
            embed(&boot, &[0; 100], &mbr, 34, 2048),
            Err(BiosError::BadCoreImg(_))
        ));
    }

    /// Debian's real boot.img and diskboot.img (grub-pc-bin), when the boot-file cache has
    /// them (tests/fetch-arm64).
    #[test]
    fn debian_boot_img_and_diskboot_have_the_fields_where_we_patch() {
        let dir = std::path::Path::new("/var/cache/tugboot-arm64/grub/i386-pc");
        let (Ok(boot), Ok(diskboot)) = (
            std::fs::read(dir.join("boot.img")),
            std::fs::read(dir.join("diskboot.img")),
        ) else {
            return;
        };
        let mut core = diskboot.clone();
        core.extend_from_slice(&[0u8; 4 * SECTOR]);
        let e = embed(&boot, &core, &sector_with_signature(0), 34, 2048).unwrap();
        // boot.img's default kernel sector is 1 and its drive check a `jz`; diskboot's default
        // block list starts at 2.
        assert_eq!(&boot[KERNEL_SECTOR..KERNEL_SECTOR + 8], &1u64.to_le_bytes());
        let bl = SECTOR - BLOCKLIST_LEN;
        assert_eq!(&diskboot[bl..bl + 8], &2u64.to_le_bytes());
        assert_eq!(&e.core[bl + 8..bl + 10], &4u16.to_le_bytes());
    }
}
