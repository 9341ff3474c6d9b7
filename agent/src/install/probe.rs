//! Does a disk already hold something? A sans-IO look at its first and last MiBs: partition
//! tables (GPT, primary or backup, intact or damaged; MBR) and the signatures of common file
//! systems and volume formats at the offsets `blkid` reads them from. The installer refuses a
//! disk with any finding unless told to wipe it, and names what it found.
//!
//! Untrusted bytes: every read is bounds-checked; short regions simply find less.

use std::fmt;

use super::gpt;

/// Bytes of the disk's head the installer reads (ISO 9660 at 32 KiB, btrfs at 64 KiB, a GPT
/// with up to 1024 entries).
pub const HEAD_BYTES: u64 = 2 * gpt::MIB;
/// Bytes of the disk's tail (the backup GPT).
pub const TAIL_BYTES: u64 = gpt::MIB;

/// One thing found on a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A readable GPT (`primary`: at LBA 1, else the backup in the last sector), with the
    /// names of its partitions.
    Gpt {
        /// Which copy.
        primary: bool,
        /// PARTLABELs (`#N` for an unnamed one).
        partitions: Vec<String>,
    },
    /// A GPT header whose table is damaged.
    DamagedGpt {
        /// Which copy.
        primary: bool,
        /// What is wrong.
        reason: String,
    },
    /// An MBR partition table (not a GPT's protective MBR).
    Mbr {
        /// Used entries.
        partitions: usize,
    },
    /// A protective MBR (`0xEE`) without a readable GPT.
    ProtectiveMbr,
    /// A file system or volume signature.
    Signature {
        /// What (`ext2/3/4`, `vfat`, `squashfs`, …).
        kind: &'static str,
        /// Byte offset of the magic on the disk.
        offset: u64,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let copy = |primary: &bool| if *primary { "primary" } else { "backup" };
        match self {
            Self::Gpt {
                primary,
                partitions,
            } => write!(
                f,
                "a GPT ({} table) with {} partition{}{}",
                copy(primary),
                partitions.len(),
                if partitions.len() == 1 { "" } else { "s" },
                if partitions.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", partitions.join(", "))
                }
            ),
            Self::DamagedGpt { primary, reason } => {
                write!(f, "a damaged GPT ({} table: {reason})", copy(primary))
            }
            Self::Mbr { partitions } => write!(
                f,
                "an MBR partition table with {partitions} partition{}",
                if *partitions == 1 { "" } else { "s" }
            ),
            Self::ProtectiveMbr => f.write_str("a protective MBR (GPT) without a readable GPT"),
            Self::Signature { kind, offset } => write!(f, "a signature of {kind} at byte {offset}"),
        }
    }
}

/// Most partition names listed in a finding.
const MAX_NAMES: usize = 16;

/// Looks at `head` (the disk's first bytes) and `tail` (its last bytes, of which the last
/// byte is the disk's last byte; `disk_bytes` is the disk's size) with `sector_size`-byte
/// sectors. An empty list means nothing was recognised.
#[must_use]
pub fn probe(head: &[u8], tail: &[u8], disk_bytes: u64, sector_size: u64) -> Vec<Finding> {
    let mut out = Vec::new();
    let gpt_finding = |r: Result<gpt::Table, gpt::GptError>, primary: bool| match r {
        Ok(t) => Some(Finding::Gpt {
            primary,
            partitions: t
                .partitions
                .iter()
                .take(MAX_NAMES)
                .map(|p| {
                    if p.name.is_empty() {
                        format!("#{}", p.number)
                    } else {
                        p.name.chars().filter(|c| !c.is_control()).collect()
                    }
                })
                .collect(),
        }),
        Err(gpt::GptError::NoSignature | gpt::GptError::Truncated { what: "header", .. }) => None,
        Err(e) => Some(Finding::DamagedGpt {
            primary,
            reason: e.to_string(),
        }),
    };
    let primary = gpt_finding(gpt::read(head, 0, 1, sector_size), true);
    let has_primary = primary.is_some();
    out.extend(primary);
    let tail_len = tail.len() as u64;
    if sector_size > 0
        && disk_bytes >= tail_len
        && (disk_bytes - tail_len).is_multiple_of(sector_size)
        && disk_bytes / sector_size > 0
    {
        let backup = gpt_finding(
            gpt::read(
                tail,
                (disk_bytes - tail_len) / sector_size,
                disk_bytes / sector_size - 1,
                sector_size,
            ),
            false,
        );
        // The backup of an intact primary is the same table: named once.
        match (&backup, out.first()) {
            (
                Some(Finding::Gpt { partitions: b, .. }),
                Some(Finding::Gpt { partitions: p, .. }),
            ) if b == p => {}
            _ => out.extend(backup),
        }
    }
    if let Some(mbr) = mbr(head)
        && !(has_primary && mbr == Finding::ProtectiveMbr)
    {
        out.push(mbr);
    }
    out.extend(signatures(head));
    out
}

/// The MBR's partition table, when sector 0 has one (and is not a FAT/NTFS boot sector, whose
/// `55 AA` means something else).
fn mbr(head: &[u8]) -> Option<Finding> {
    if head.get(510..512) != Some(&[0x55, 0xAA][..]) || boot_sector_fs(head).is_some() {
        return None;
    }
    let entries: Vec<&[u8]> = head.get(446..510)?.chunks_exact(16).collect();
    let used: Vec<&&[u8]> = entries
        .iter()
        .filter(|e| e.get(4).is_some_and(|&t| t != 0))
        .collect();
    if used.is_empty() {
        return None;
    }
    if used.iter().all(|e| e.get(4) == Some(&0xEE)) {
        return Some(Finding::ProtectiveMbr);
    }
    Some(Finding::Mbr {
        partitions: used.len(),
    })
}

/// FAT or NTFS/exFAT boot sector in sector 0.
fn boot_sector_fs(head: &[u8]) -> Option<(&'static str, u64)> {
    let at = |o: usize, magic: &[u8]| head.get(o..o + magic.len()) == Some(magic);
    if at(3, b"NTFS    ") {
        return Some(("ntfs", 3));
    }
    if at(3, b"EXFAT   ") {
        return Some(("exfat", 3));
    }
    if head.get(510..512) != Some(&[0x55, 0xAA][..]) {
        return None;
    }
    if at(82, b"FAT32   ") {
        return Some(("vfat", 82));
    }
    if at(54, b"FAT12   ") || at(54, b"FAT16   ") || at(54, b"FAT     ") {
        return Some(("vfat", 54));
    }
    None
}

/// File system and volume signatures (`blkid`'s offsets).
fn signatures(head: &[u8]) -> Vec<Finding> {
    const MAGICS: &[(&str, usize, &[u8])] = &[
        ("ext2/3/4", 1080, &[0x53, 0xEF]),
        ("squashfs", 0, b"hsqs"),
        ("erofs", 1024, &[0xE2, 0xE1, 0xF5, 0xE0]),
        ("f2fs", 1024, &[0x10, 0x20, 0xF5, 0xF2]),
        ("xfs", 0, b"XFSB"),
        ("btrfs", 65_600, b"_BHRfS_M"),
        ("iso9660", 32_769, b"CD001"),
        ("LUKS", 0, b"LUKS\xba\xbe"),
        ("LVM2 physical volume", 536, b"LVM2 001"),
        ("linux_raid_member (md 1.1)", 0, &[0xFC, 0x4E, 0x2B, 0xA9]),
        (
            "linux_raid_member (md 1.2)",
            4096,
            &[0xFC, 0x4E, 0x2B, 0xA9],
        ),
        ("swap", 4086, b"SWAPSPACE2"),
        ("swap", 4086, b"SWAP-SPACE"),
        ("swap", 16_374, b"SWAPSPACE2"),
        ("swap", 65_526, b"SWAPSPACE2"),
        (
            "zfs_member",
            8192,
            &[0x0C, 0xB1, 0xBA, 0x00, 0x00, 0x00, 0x00, 0x00],
        ),
        (
            "bcache",
            4120,
            &[
                0xC6, 0x85, 0x73, 0xF6, 0x4E, 0x1A, 0x45, 0xCA, 0x82, 0x65, 0xF5, 0x7F, 0x48, 0xBA,
                0x6D, 0x81,
            ],
        ),
    ];
    let mut out: Vec<Finding> = MAGICS
        .iter()
        .filter(|(_, at, magic)| head.get(*at..*at + magic.len()) == Some(*magic))
        .map(|(kind, at, _)| Finding::Signature {
            kind,
            offset: *at as u64,
        })
        .collect();
    if let Some((kind, offset)) = boot_sector_fs(head) {
        out.push(Finding::Signature { kind, offset });
    }
    out
}

/// True when everything found is this installer's own layout (a GPT, either copy, whose
/// partitions are exactly `tugboot-esp`, `tugboot-a`, `tugboot-b`, `tugboot-data`): an install
/// that did not finish (power cut, network failure), which the next run may write over
/// without `--wipe`. Anything else (another table, a damaged one, a file system outside our
/// layout) is someone's data.
#[must_use]
pub fn only_our_layout(findings: &[Finding]) -> bool {
    !findings.is_empty()
        && findings.iter().all(|f| {
            matches!(f, Finding::Gpt { partitions, .. }
                if partitions.iter().map(String::as_str).eq(gpt::LABELS))
        })
}

/// One line: `a GPT (primary table) with 4 partitions (…), a signature of ext2/3/4 at byte 1080`.
#[must_use]
pub fn describe(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::gpt::{Guid, Sizes, plan};

    fn layout() -> gpt::Layout {
        let g = Guid::random([7; 16]);
        plan(
            2 << 30,
            512,
            Sizes {
                esp_mib: 64,
                slot_mib: 512,
                data_mib: 0,
            },
            [g; 5],
        )
        .unwrap()
    }

    #[test]
    fn a_blank_disk_has_nothing() {
        assert!(probe(&[0; 4096], &[0; 4096], 1 << 30, 512).is_empty());
        assert!(probe(&[], &[], 0, 512).is_empty());
        assert!(probe(&[0; 10], &[0; 10], 5, 4096).is_empty());
    }

    #[test]
    fn only_our_own_layout_may_be_written_over() {
        let ours = |primary| Finding::Gpt {
            primary,
            partitions: gpt::LABELS.iter().map(|s| (*s).to_owned()).collect(),
        };
        assert!(only_our_layout(&[ours(true)]));
        assert!(only_our_layout(&[ours(true), ours(false)]));
        assert!(!only_our_layout(&[]));
        assert!(!only_our_layout(&[
            ours(true),
            Finding::Signature {
                kind: "ext2/3/4",
                offset: 1080
            }
        ]));
        assert!(!only_our_layout(&[Finding::Gpt {
            primary: true,
            partitions: vec!["tugboot-esp".into(), "tugboot-a".into(), "tugboot-b".into()],
        }]));
        assert!(!only_our_layout(&[Finding::Gpt {
            primary: true,
            partitions: vec!["EFI".into(), "root".into(), "home".into(), "swap".into()],
        }]));
        assert!(!only_our_layout(&[Finding::DamagedGpt {
            primary: true,
            reason: "crc".into()
        }]));
    }

    #[test]
    fn our_own_table_is_found_with_its_names() {
        let l = layout();
        let mut head = l.primary();
        head.resize(usize::try_from(HEAD_BYTES).unwrap(), 0);
        let (offset, b) = l.backup();
        let mut tail = vec![0u8; usize::try_from(TAIL_BYTES).unwrap() - b.len()];
        tail.extend_from_slice(&b);
        assert_eq!(offset + b.len() as u64, 2 << 30);
        let f = probe(&head, &tail, 2 << 30, 512);
        assert_eq!(
            f,
            [Finding::Gpt {
                primary: true,
                partitions: vec![
                    "tugboot-esp".into(),
                    "tugboot-a".into(),
                    "tugboot-b".into(),
                    "tugboot-data".into()
                ]
            }]
        );
        assert_eq!(
            describe(&f),
            "a GPT (primary table) with 4 partitions (tugboot-esp, tugboot-a, tugboot-b, \
             tugboot-data)"
        );
        // Primary wiped, backup left: still found, as the backup; the protective MBR too.
        let mut wiped = head.clone();
        wiped[512..1024].fill(0);
        let f = probe(&wiped, &tail, 2 << 30, 512);
        assert!(
            matches!(&f[0], Finding::Gpt { primary: false, partitions } if partitions.len() == 4)
        );
        assert_eq!(f[1], Finding::ProtectiveMbr);
        // A damaged primary is named as such.
        let mut damaged = head.clone();
        damaged[1024 + 3] ^= 1;
        let f = probe(&damaged, &tail, 2 << 30, 512);
        assert!(
            describe(&f).starts_with("a damaged GPT (primary table: entry array CRC-32"),
            "{}",
            describe(&f)
        );
    }

    #[test]
    fn mbr_and_file_systems() {
        let mut s = vec![0u8; 70_000];
        s[510] = 0x55;
        s[511] = 0xAA;
        s[446 + 4] = 0x83;
        s[462 + 4] = 0x82;
        assert_eq!(
            probe(&s, &[], 1 << 30, 512),
            [Finding::Mbr { partitions: 2 }]
        );
        let mut fs = vec![0u8; 70_000];
        fs[1080] = 0x53;
        fs[1081] = 0xEF;
        fs[65_600..65_608].copy_from_slice(b"_BHRfS_M");
        assert_eq!(
            describe(&probe(&fs, &[], 1 << 30, 512)),
            "a signature of ext2/3/4 at byte 1080, a signature of btrfs at byte 65600"
        );
        // A FAT boot sector's 55 AA is not a partition table.
        let mut fat = vec![0u8; 4096];
        fat[510] = 0x55;
        fat[511] = 0xAA;
        fat[446 + 4] = 0x12; // boot code, not entries
        fat[82..90].copy_from_slice(b"FAT32   ");
        assert_eq!(
            probe(&fat, &[], 1 << 30, 512),
            [Finding::Signature {
                kind: "vfat",
                offset: 82
            }]
        );
    }
}
