//! The GUID partition table the installer writes, and a reader for the one a disk may already
//! hold: a sans-IO core (sizes and GUIDs in, bytes out; bytes in, a checked table out).
//!
//! ```text
//! LBA 0                 protective MBR: one partition of type 0xEE over the whole disk
//! LBA 1                 primary header ("EFI PART", 92 bytes, CRC-32 of itself and the entries)
//! LBA 2 ..              128 entries of 128 bytes (16 KiB): type GUID, partition GUID, first and
//!                       last LBA, attributes, name (36 UTF-16LE code units)
//! 1 MiB ..              the partitions, each starting on a 1 MiB boundary
//! last - 32 .. last - 1 the backup entries (same bytes)
//! last LBA              the backup header (my/alternate LBA swapped, entries LBA = last - 32)
//! ```
//!
//! (With 4096-byte sectors the entries take 4 sectors instead of 32; everything is counted in
//! the disk's logical sectors, which is also what `HD()` in an EFI boot entry uses.)
//!
//! [`plan`] makes the installer's layout — `tugboot-esp`, `tugboot-a`, `tugboot-b`,
//! `tugboot-data`, in that order, the PARTLABELs the server's boot configuration and the OS
//! image rely on — and refuses a disk that cannot hold it. [`Layout::primary`] and
//! [`Layout::backup`] are the bytes to write. [`read`] parses a table from untrusted bytes (the
//! "does this disk already hold something?" check; fuzzed): every length is capped and
//! checked, both CRCs must match, and nothing after it succeeds can panic.

use std::fmt;

use crate::bootloader::uboot::crc32;

/// Bytes in a MiB.
pub const MIB: u64 = 1 << 20;
/// Entries in the array the installer writes (the minimum the UEFI spec allows, what every
/// tool writes).
pub const ENTRY_COUNT: u32 = 128;
/// Size of one entry.
pub const ENTRY_SIZE: u32 = 128;
/// Size of the header proper (the rest of its sector is zero).
pub const HEADER_SIZE: u32 = 92;
/// `EFI PART`.
pub const SIGNATURE: &[u8; 8] = b"EFI PART";
/// Revision 1.0.
pub const REVISION: u32 = 0x0001_0000;
/// Smallest data partition [`plan`] accepts when it takes "the rest of the disk": room for an
/// ext2 file system with the agent's state, reports and certificate.
pub const MIN_DATA_MIB: u64 = 16;
/// Most entries [`read`] accepts (the spec allows more than 128; nothing real uses more).
pub const MAX_READ_ENTRIES: u32 = 1024;
/// Largest entry size [`read`] accepts.
pub const MAX_READ_ENTRY_SIZE: u32 = 1024;
/// Characters of a partition name (72 bytes of UTF-16LE).
pub const NAME_UNITS: usize = 36;

/// The PARTLABELs of the installer's partitions, in partition order.
pub const LABELS: [&str; 4] = ["tugboot-esp", "tugboot-a", "tugboot-b", "tugboot-data"];

/// A GUID in the byte order GPT and EFI keep on disk (the first three fields little-endian).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Guid(pub [u8; 16]);

/// EFI System Partition.
pub const ESP_TYPE: Guid = Guid::from_fields(
    0xC12A_7328,
    0xF81F,
    0x11D2,
    [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B],
);
/// Linux filesystem data.
pub const LINUX_DATA_TYPE: Guid = Guid::from_fields(
    0x0FC6_3DAF,
    0x8483,
    0x4772,
    [0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4],
);

impl Guid {
    /// From the textual fields (`data1-data2-data3-data4`).
    #[must_use]
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Self {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Self([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }

    /// A random (version 4, RFC 9562 variant) GUID from 16 random bytes.
    #[must_use]
    pub fn random(mut bytes: [u8; 16]) -> Self {
        // The version is the high nibble of data3, stored little-endian: byte 7.
        bytes[7] = (bytes[7] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Self(bytes)
    }

    /// Parses `C12A7328-F81F-11D2-BA4B-00A0C93EC93B` (either case).
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let parts: Vec<&str> = text.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if parts.len() != 5
            || parts
                .iter()
                .zip(lens)
                .any(|(p, n)| p.len() != n || !p.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return None;
        }
        let hex: String = parts.concat();
        let mut be = [0u8; 16];
        for (i, byte) in be.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self([
            be[3], be[2], be[1], be[0], be[5], be[4], be[7], be[6], be[8], be[9], be[10], be[11],
            be[12], be[13], be[14], be[15],
        ]))
    }

    /// Whether all bytes are zero (an unused entry).
    #[must_use]
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

/// Lower case, as `blkid` prints PARTUUIDs.
impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::bootloader::efi::load_option::format_guid(&self.0))
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// Why a layout cannot be made, or a table cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GptError {
    /// Not a sector size this code handles.
    #[error("logical sector size {0} is not 512 or 4096 bytes")]
    SectorSize(u64),
    /// The disk cannot hold the layout.
    #[error(
        "the disk has {have} bytes ({have_mib} MiB); the layout needs at least {need} bytes \
         ({need_mib} MiB: 1 MiB for the table, esp {esp} MiB, a and b {slot} MiB each, data \
         {data} MiB, 1 MiB for the backup table)",
        have_mib = have / MIB,
        need_mib = need.div_ceil(MIB)
    )]
    TooSmall {
        /// Disk size.
        have: u64,
        /// Smallest size that fits.
        need: u64,
        /// ESP size asked.
        esp: u64,
        /// Slot size asked.
        slot: u64,
        /// Data size asked (or the minimum, when it takes the rest).
        data: u64,
    },
    /// A size of zero, or sizes whose sum overflows.
    #[error("{0}")]
    BadSize(String),
    /// The bytes end before the header or the entries.
    #[error("truncated: the {what} needs bytes up to {need}, only {have} given")]
    Truncated {
        /// Which structure.
        what: &'static str,
        /// Bytes needed.
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// No `EFI PART` signature.
    #[error("no GPT header signature")]
    NoSignature,
    /// The header's fields are out of range.
    #[error("bad header: {0}")]
    BadHeader(String),
    /// A CRC does not match.
    #[error("{what} CRC-32 is {found:#010x}, computed {computed:#010x}")]
    Crc {
        /// Header or entries.
        what: &'static str,
        /// As stored.
        found: u32,
        /// As computed.
        computed: u32,
    },
    /// A used entry is out of range.
    #[error("partition {number}: {reason}")]
    BadEntry {
        /// 1-based entry number.
        number: u32,
        /// What is wrong.
        reason: String,
    },
}

/// The sizes asked for, in MiB (`data_mib` 0: the rest of the disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// The ESP.
    pub esp_mib: u64,
    /// Each of slot A and B.
    pub slot_mib: u64,
    /// The data partition; 0 takes the rest of the disk (whole MiBs).
    pub data_mib: u64,
}

/// One partition of a layout or of a table read from a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based entry number (the Linux partition number).
    pub number: u32,
    /// Partition type.
    pub type_guid: Guid,
    /// Unique partition GUID (PARTUUID).
    pub guid: Guid,
    /// First LBA.
    pub first_lba: u64,
    /// Last LBA (inclusive).
    pub last_lba: u64,
    /// Attribute bits.
    pub attributes: u64,
    /// Name (PARTLABEL); lossy for unpaired surrogates.
    pub name: String,
}

impl Partition {
    /// Size in sectors.
    #[must_use]
    pub fn sectors(&self) -> u64 {
        self.last_lba
            .saturating_sub(self.first_lba)
            .saturating_add(1)
    }
}

/// The installer's layout on one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Logical sector size, bytes.
    pub sector_size: u64,
    /// Sectors of the disk.
    pub total_sectors: u64,
    /// Disk GUID.
    pub disk_guid: Guid,
    /// The four partitions, in [`LABELS`] order.
    pub partitions: Vec<Partition>,
}

/// Sectors the entry array takes.
fn entry_sectors(sector_size: u64) -> u64 {
    (u64::from(ENTRY_COUNT) * u64::from(ENTRY_SIZE)).div_ceil(sector_size)
}

fn check_sector_size(sector_size: u64) -> Result<(), GptError> {
    if sector_size == 512 || sector_size == 4096 {
        Ok(())
    } else {
        Err(GptError::SectorSize(sector_size))
    }
}

/// Plans the installer's layout for a disk of `disk_bytes` with `sector_size`-byte logical
/// sectors: ESP, A, B, data, each aligned to 1 MiB, data up to the last whole MiB before the
/// backup table when `sizes.data_mib` is 0. `guids` are the disk's and the four partitions'
/// (random, from the caller: this core takes no randomness).
///
/// # Errors
/// [`GptError::TooSmall`] (saying what fits), [`GptError::BadSize`], [`GptError::SectorSize`].
pub fn plan(
    disk_bytes: u64,
    sector_size: u64,
    sizes: Sizes,
    guids: [Guid; 5],
) -> Result<Layout, GptError> {
    check_sector_size(sector_size)?;
    if sizes.esp_mib == 0 || sizes.slot_mib == 0 {
        return Err(GptError::BadSize(
            "the ESP and the slots need at least 1 MiB each".into(),
        ));
    }
    let data_min = if sizes.data_mib == 0 {
        MIN_DATA_MIB
    } else {
        sizes.data_mib
    };
    let overflow = || GptError::BadSize("the partition sizes overflow".into());
    // 1 MiB before the first partition, 1 MiB kept for the backup table at the end.
    let need_mib = sizes
        .slot_mib
        .checked_mul(2)
        .and_then(|s| s.checked_add(sizes.esp_mib))
        .and_then(|s| s.checked_add(data_min))
        .and_then(|s| s.checked_add(2))
        .ok_or_else(overflow)?;
    let need = need_mib.checked_mul(MIB).ok_or_else(overflow)?;
    let total_sectors = disk_bytes / sector_size;
    let align = MIB / sector_size;
    let entries = entry_sectors(sector_size);
    // Usable up to (exclusive) the backup entries.
    let usable_end = total_sectors.saturating_sub(1 + entries);
    let too_small = GptError::TooSmall {
        have: disk_bytes,
        need,
        esp: sizes.esp_mib,
        slot: sizes.slot_mib,
        data: data_min,
    };
    if disk_bytes < need {
        return Err(too_small);
    }
    let mut start = align;
    let mut partitions = Vec::with_capacity(4);
    let [disk_guid, rest @ ..] = guids;
    for (i, (label, guid)) in LABELS.iter().zip(rest).enumerate() {
        let mib = match i {
            0 => sizes.esp_mib,
            1 | 2 => sizes.slot_mib,
            _ if sizes.data_mib > 0 => sizes.data_mib,
            // The rest of the disk, in whole MiBs.
            _ => (usable_end.saturating_sub(start) / align).min(u64::MAX / MIB),
        };
        let sectors = mib.checked_mul(align).ok_or_else(overflow)?;
        let end = start.checked_add(sectors).ok_or_else(overflow)?;
        if end > usable_end || (i == 3 && mib < data_min) {
            return Err(too_small);
        }
        partitions.push(Partition {
            number: u32::try_from(i + 1).unwrap_or(u32::MAX),
            type_guid: if i == 0 { ESP_TYPE } else { LINUX_DATA_TYPE },
            guid,
            first_lba: start,
            last_lba: end - 1,
            attributes: 0,
            name: (*label).to_owned(),
        });
        start = end;
    }
    Ok(Layout {
        sector_size,
        total_sectors,
        disk_guid,
        partitions,
    })
}

fn put(buf: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = buf.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn guid_at(b: &[u8], at: usize) -> Option<Guid> {
    Some(Guid(b.get(at..at + 16)?.try_into().ok()?))
}

/// `usize` of a size already bounded by the caller (sector sizes, entry arrays of at most
/// 1 MiB).
fn small(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl Layout {
    /// First LBA a partition may use.
    #[must_use]
    pub fn first_usable(&self) -> u64 {
        2 + entry_sectors(self.sector_size)
    }

    /// Last LBA a partition may use.
    #[must_use]
    pub fn last_usable(&self) -> u64 {
        self.total_sectors - 2 - entry_sectors(self.sector_size)
    }

    /// The partition called `label`.
    #[must_use]
    pub fn partition(&self, label: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.name == label)
    }

    /// The entry array (all [`ENTRY_COUNT`] entries).
    #[must_use]
    pub fn entries(&self) -> Vec<u8> {
        let mut out = vec![0u8; small(u64::from(ENTRY_COUNT) * u64::from(ENTRY_SIZE))];
        for (i, p) in self.partitions.iter().enumerate() {
            let at = i * small(u64::from(ENTRY_SIZE));
            put(&mut out, at, &p.type_guid.0);
            put(&mut out, at + 16, &p.guid.0);
            put(&mut out, at + 32, &p.first_lba.to_le_bytes());
            put(&mut out, at + 40, &p.last_lba.to_le_bytes());
            put(&mut out, at + 48, &p.attributes.to_le_bytes());
            let name: Vec<u8> = p
                .name
                .encode_utf16()
                .take(NAME_UNITS)
                .flat_map(u16::to_le_bytes)
                .collect();
            put(&mut out, at + 56, &name);
        }
        out
    }

    /// One header sector: the primary (at LBA 1) or the backup (at the last LBA).
    #[must_use]
    pub fn header(&self, primary: bool, entries_crc: u32) -> Vec<u8> {
        let last = self.total_sectors - 1;
        let (my_lba, alternate, entries_lba) = if primary {
            (1, last, 2)
        } else {
            (last, 1, last - entry_sectors(self.sector_size))
        };
        let mut h = vec![0u8; small(self.sector_size)];
        put(&mut h, 0, SIGNATURE);
        put(&mut h, 8, &REVISION.to_le_bytes());
        put(&mut h, 12, &HEADER_SIZE.to_le_bytes());
        put(&mut h, 24, &my_lba.to_le_bytes());
        put(&mut h, 32, &alternate.to_le_bytes());
        put(&mut h, 40, &self.first_usable().to_le_bytes());
        put(&mut h, 48, &self.last_usable().to_le_bytes());
        put(&mut h, 56, &self.disk_guid.0);
        put(&mut h, 72, &entries_lba.to_le_bytes());
        put(&mut h, 80, &ENTRY_COUNT.to_le_bytes());
        put(&mut h, 84, &ENTRY_SIZE.to_le_bytes());
        put(&mut h, 88, &entries_crc.to_le_bytes());
        let crc = crc32(h.get(..small(u64::from(HEADER_SIZE))).unwrap_or_default());
        put(&mut h, 16, &crc.to_le_bytes());
        h
    }

    /// The protective MBR sector: one partition of type `0xEE` from LBA 1 over the whole disk
    /// (capped at `0xFFFFFFFF` sectors), boot signature `55 AA`.
    #[must_use]
    pub fn protective_mbr(&self) -> Vec<u8> {
        let mut s = vec![0u8; small(self.sector_size)];
        let size = u32::try_from(self.total_sectors - 1).unwrap_or(u32::MAX);
        // status, CHS of LBA 1 (0/0/2), type, CHS end (the "too large" value), LBA, size.
        put(
            &mut s,
            446,
            &[0x00, 0x00, 0x02, 0x00, 0xEE, 0xFF, 0xFF, 0xFF],
        );
        put(&mut s, 454, &1u32.to_le_bytes());
        put(&mut s, 458, &size.to_le_bytes());
        put(&mut s, 510, &[0x55, 0xAA]);
        s
    }

    /// The bytes from LBA 0 to the first usable LBA: protective MBR, primary header, entries.
    #[must_use]
    pub fn primary(&self) -> Vec<u8> {
        let entries = self.entries();
        let crc = crc32(&entries);
        let mut out = self.protective_mbr();
        out.extend_from_slice(&self.header(true, crc));
        out.extend_from_slice(&entries);
        out.resize(small(self.first_usable() * self.sector_size), 0);
        out
    }

    /// The byte offset and bytes of the backup table: entries, then the backup header in the
    /// disk's last sector.
    #[must_use]
    pub fn backup(&self) -> (u64, Vec<u8>) {
        let entries = self.entries();
        let crc = crc32(&entries);
        let first = self.total_sectors - 1 - entry_sectors(self.sector_size);
        let mut out = entries;
        out.resize(small(entry_sectors(self.sector_size) * self.sector_size), 0);
        out.extend_from_slice(&self.header(false, crc));
        (first * self.sector_size, out)
    }

    /// `esp 64 MiB, a 512 MiB, b 512 MiB, data 1023 MiB`.
    #[must_use]
    pub fn summary(&self) -> String {
        self.partitions
            .iter()
            .map(|p| {
                let short = p.name.strip_prefix("tugboot-").unwrap_or(&p.name);
                format!("{short} {} MiB", p.sectors() * self.sector_size / MIB)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A header read from a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Where the header says it is.
    pub my_lba: u64,
    /// Where the other copy is.
    pub alternate_lba: u64,
    /// First usable LBA.
    pub first_usable: u64,
    /// Last usable LBA.
    pub last_usable: u64,
    /// Disk GUID.
    pub disk_guid: Guid,
    /// First LBA of the entry array.
    pub entries_lba: u64,
    /// Number of entries.
    pub entry_count: u32,
    /// Size of one entry.
    pub entry_size: u32,
    /// CRC-32 of the entry array.
    pub entries_crc: u32,
}

impl Header {
    /// Bytes of the entry array.
    #[must_use]
    pub fn entries_len(&self) -> u64 {
        u64::from(self.entry_count) * u64::from(self.entry_size)
    }
}

/// A table read from a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The header.
    pub header: Header,
    /// The used entries, in entry order.
    pub partitions: Vec<Partition>,
}

/// Parses and checks a header sector found at `lba`.
///
/// # Errors
/// [`GptError`] for a missing signature, a bad size, revision or CRC, fields out of range.
pub fn read_header(sector: &[u8], lba: u64) -> Result<Header, GptError> {
    if sector.get(..8) != Some(SIGNATURE.as_slice()) {
        return Err(GptError::NoSignature);
    }
    let bad = |s: String| GptError::BadHeader(s);
    let field = |at| {
        u32_at(sector, at).ok_or(GptError::Truncated {
            what: "header",
            need: u64::from(HEADER_SIZE),
            have: sector.len() as u64,
        })
    };
    let revision = field(8)?;
    if revision >> 16 != 1 {
        return Err(bad(format!("revision {revision:#010x}")));
    }
    let size = field(12)?;
    if size < HEADER_SIZE || small(u64::from(size)) > sector.len() {
        return Err(bad(format!("header size {size}")));
    }
    let found = field(16)?;
    let mut copy = sector
        .get(..small(u64::from(size)))
        .unwrap_or_default()
        .to_vec();
    put(&mut copy, 16, &[0; 4]);
    let computed = crc32(&copy);
    if found != computed {
        return Err(GptError::Crc {
            what: "header",
            found,
            computed,
        });
    }
    let truncated = GptError::Truncated {
        what: "header",
        need: u64::from(HEADER_SIZE),
        have: sector.len() as u64,
    };
    let h = (|| {
        Some(Header {
            my_lba: u64_at(sector, 24)?,
            alternate_lba: u64_at(sector, 32)?,
            first_usable: u64_at(sector, 40)?,
            last_usable: u64_at(sector, 48)?,
            disk_guid: guid_at(sector, 56)?,
            entries_lba: u64_at(sector, 72)?,
            entry_count: u32_at(sector, 80)?,
            entry_size: u32_at(sector, 84)?,
            entries_crc: u32_at(sector, 88)?,
        })
    })()
    .ok_or(truncated)?;
    if h.my_lba != lba {
        return Err(bad(format!(
            "says it is at LBA {}, found at {lba}",
            h.my_lba
        )));
    }
    if h.first_usable > h.last_usable.saturating_add(1) {
        return Err(bad(format!(
            "first usable LBA {} after last usable {}",
            h.first_usable, h.last_usable
        )));
    }
    if h.entry_count == 0 || h.entry_count > MAX_READ_ENTRIES {
        return Err(bad(format!("{} entries", h.entry_count)));
    }
    if h.entry_size < ENTRY_SIZE
        || h.entry_size > MAX_READ_ENTRY_SIZE
        || !h.entry_size.is_multiple_of(8)
    {
        return Err(bad(format!("entry size {}", h.entry_size)));
    }
    Ok(h)
}

/// Parses and checks the entry array of `header`: its CRC, and every used entry inside the
/// usable range with first ≤ last.
///
/// # Errors
/// [`GptError::Truncated`], [`GptError::Crc`], [`GptError::BadEntry`].
pub fn read_entries(bytes: &[u8], header: &Header) -> Result<Vec<Partition>, GptError> {
    let len = header.entries_len();
    let array = bytes.get(..small(len)).ok_or(GptError::Truncated {
        what: "entry array",
        need: len,
        have: bytes.len() as u64,
    })?;
    let computed = crc32(array);
    if computed != header.entries_crc {
        return Err(GptError::Crc {
            what: "entry array",
            found: header.entries_crc,
            computed,
        });
    }
    let mut out = Vec::new();
    for (i, e) in array
        .chunks_exact(small(u64::from(header.entry_size)))
        .enumerate()
    {
        let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let (Some(type_guid), Some(guid), Some(first), Some(last), Some(attributes)) = (
            guid_at(e, 0),
            guid_at(e, 16),
            u64_at(e, 32),
            u64_at(e, 40),
            u64_at(e, 48),
        ) else {
            continue;
        };
        if type_guid.is_nil() {
            continue;
        }
        if first > last || first < header.first_usable || last > header.last_usable {
            return Err(GptError::BadEntry {
                number,
                reason: format!(
                    "LBAs {first}..={last} outside {}..={}",
                    header.first_usable, header.last_usable
                ),
            });
        }
        let units: Vec<u16> = e
            .get(56..56 + 2 * NAME_UNITS)
            .unwrap_or_default()
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        out.push(Partition {
            number,
            type_guid,
            guid,
            first_lba: first,
            last_lba: last,
            attributes,
            name: String::from_utf16_lossy(&units),
        });
    }
    Ok(out)
}

/// Reads the table whose header is at `header_lba`, from `region`: the disk's bytes starting at
/// LBA `region_lba` (the head of the disk for the primary table, its tail for the backup).
/// The entry array must lie inside `region`.
///
/// # Errors
/// See [`read_header`] and [`read_entries`]; [`GptError::Truncated`] when the region does not
/// hold the header or the entries.
pub fn read(
    region: &[u8],
    region_lba: u64,
    header_lba: u64,
    sector_size: u64,
) -> Result<Table, GptError> {
    check_sector_size(sector_size)?;
    let offset = |lba: u64, what: &'static str| -> Result<usize, GptError> {
        let rel = lba
            .checked_sub(region_lba)
            .and_then(|l| l.checked_mul(sector_size))
            .ok_or(GptError::Truncated {
                what,
                need: u64::MAX,
                have: region.len() as u64,
            })?;
        usize::try_from(rel).map_err(|_| GptError::Truncated {
            what,
            need: rel,
            have: region.len() as u64,
        })
    };
    let at = offset(header_lba, "header")?;
    let sector = region
        .get(at..)
        .and_then(|r| r.get(..small(sector_size)))
        .ok_or(GptError::Truncated {
            what: "header",
            need: (at as u64).saturating_add(sector_size),
            have: region.len() as u64,
        })?;
    let header = read_header(sector, header_lba)?;
    let at = offset(header.entries_lba, "entry array")?;
    let entries = region.get(at..).ok_or(GptError::Truncated {
        what: "entry array",
        need: (at as u64).saturating_add(header.entries_len()),
        have: region.len() as u64,
    })?;
    let partitions = read_entries(entries, &header)?;
    Ok(Table { header, partitions })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn guids() -> [Guid; 5] {
        [
            Guid::parse("11111111-2222-4333-8444-555555555555").unwrap(),
            Guid::parse("6E5D9A3C-1F2B-4C47-9C1E-8A2D610B4701").unwrap(),
            Guid::parse("aaaaaaaa-0000-4000-8000-00000000000a").unwrap(),
            Guid::parse("bbbbbbbb-0000-4000-8000-00000000000b").unwrap(),
            Guid::parse("dddddddd-0000-4000-8000-00000000000d").unwrap(),
        ]
    }

    const SIZES: Sizes = Sizes {
        esp_mib: 64,
        slot_mib: 512,
        data_mib: 0,
    };

    #[test]
    fn guid_text_and_byte_order() {
        assert_eq!(
            ESP_TYPE.0,
            [
                0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
                0xC9, 0x3B
            ]
        );
        assert_eq!(ESP_TYPE.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
        assert_eq!(
            Guid::parse("0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
            Some(LINUX_DATA_TYPE)
        );
        for bad in [
            "",
            "0FC63DAF-8483-4772-8E79",
            "0FC63DAF-8483-4772-8E79-3D69D8477DEG",
        ] {
            assert_eq!(Guid::parse(bad), None, "{bad}");
        }
        let g = Guid::random([0xff; 16]);
        let text = g.to_string();
        assert_eq!(&text[14..15], "4", "version 4: {text}");
        assert!(matches!(&text[19..20], "8" | "9" | "a" | "b"), "{text}");
        assert_eq!(Guid::parse(&text), Some(g));
        assert_eq!(
            Guid::random([0; 16]).to_string(),
            "00000000-0000-4000-8000-000000000000"
        );
    }

    #[test]
    fn layout_of_a_2_gib_disk() {
        let l = plan(2 << 30, 512, SIZES, guids()).unwrap();
        let spans: Vec<(u64, u64, &str)> = l
            .partitions
            .iter()
            .map(|p| (p.first_lba, p.last_lba, p.name.as_str()))
            .collect();
        assert_eq!(
            spans,
            [
                (2048, 133_119, "tugboot-esp"),
                (133_120, 1_181_695, "tugboot-a"),
                (1_181_696, 2_230_271, "tugboot-b"),
                (2_230_271 + 1, 4_192_255, "tugboot-data"),
            ]
        );
        for p in &l.partitions {
            assert_eq!(p.first_lba % 2048, 0, "1 MiB alignment");
            assert_eq!(p.sectors() % 2048, 0, "whole MiBs");
        }
        assert_eq!(
            l.summary(),
            "esp 64 MiB, a 512 MiB, b 512 MiB, data 958 MiB"
        );
        assert_eq!((l.first_usable(), l.last_usable()), (34, 4_194_270));
        assert_eq!(l.partitions[0].type_guid, ESP_TYPE);
        assert!(
            l.partitions[1..]
                .iter()
                .all(|p| p.type_guid == LINUX_DATA_TYPE)
        );
        assert_eq!(l.partitions[3].guid, guids()[4]);
        // A fixed data size; 4096-byte sectors align to 256 sectors.
        let fixed = Sizes {
            data_mib: 100,
            ..SIZES
        };
        let l = plan(2 << 30, 512, fixed, guids()).unwrap();
        assert_eq!(l.partitions[3].sectors(), 100 * 2048);
        let l4k = plan(2 << 30, 4096, fixed, guids()).unwrap();
        assert_eq!(l4k.partitions[1].first_lba, (1 + 64) * 256);
        assert_eq!((l4k.first_usable(), l4k.last_usable()), (6, (2 << 18) - 6));
    }

    #[test]
    fn a_disk_too_small_is_refused_saying_what_fits() {
        // 1 + 64 + 512 + 512 + 16 + 1 MiB.
        let need = 1106 * MIB;
        assert!(plan(need, 512, SIZES, guids()).is_ok());
        let e = plan(need - 512, 512, SIZES, guids()).unwrap_err();
        assert_eq!(
            e,
            GptError::TooSmall {
                have: need - 512,
                need,
                esp: 64,
                slot: 512,
                data: 16
            }
        );
        let text = e.to_string();
        assert!(
            text.contains("1105 MiB") && text.contains("at least 1159725056 bytes (1106 MiB"),
            "{text}"
        );
        let fixed = Sizes {
            data_mib: 2000,
            ..SIZES
        };
        assert!(matches!(
            plan(2 << 30, 512, fixed, guids()),
            Err(GptError::TooSmall { data: 2000, .. })
        ));
        assert!(matches!(
            plan(2 << 30, 520, SIZES, guids()),
            Err(GptError::SectorSize(520))
        ));
        assert!(matches!(
            plan(
                u64::MAX,
                512,
                Sizes {
                    slot_mib: u64::MAX / 2,
                    ..SIZES
                },
                guids()
            ),
            Err(GptError::BadSize(_))
        ));
        assert!(matches!(
            plan(
                2 << 30,
                512,
                Sizes {
                    esp_mib: 0,
                    ..SIZES
                },
                guids()
            ),
            Err(GptError::BadSize(_))
        ));
    }

    #[test]
    fn emit_primary_and_backup_bytes() {
        let l = plan(2 << 30, 512, SIZES, guids()).unwrap();
        let p = l.primary();
        assert_eq!(p.len(), 34 * 512);
        // Protective MBR.
        assert_eq!(
            &p[446..462],
            &[
                0x00, 0x00, 0x02, 0x00, 0xEE, 0xFF, 0xFF, 0xFF, 1, 0, 0, 0, 0xFF, 0xFF, 0x3F, 0x00
            ]
        );
        assert_eq!(&p[510..512], &[0x55, 0xAA]);
        assert!(p[..446].iter().all(|&b| b == 0));
        // Header at LBA 1.
        let h = &p[512..1024];
        assert_eq!(&h[..8], b"EFI PART");
        assert_eq!(&h[8..16], &[0, 0, 1, 0, 92, 0, 0, 0]);
        assert_eq!(u64_at(h, 24), Some(1));
        assert_eq!(u64_at(h, 32), Some((2 << 21) - 1));
        assert_eq!(u64_at(h, 72), Some(2));
        assert_eq!((u32_at(h, 80), u32_at(h, 84)), (Some(128), Some(128)));
        assert!(h[92..].iter().all(|&b| b == 0));
        let mut zeroed = h[..92].to_vec();
        zeroed[16..20].fill(0);
        assert_eq!(u32_at(h, 16), Some(crc32(&zeroed)));
        assert_eq!(u32_at(h, 88), Some(crc32(&p[1024..1024 + 16384])));
        // Entry 1: type, GUID, LBAs, name in UTF-16LE.
        let e = &p[1024..1024 + 128];
        assert_eq!(&e[..16], &ESP_TYPE.0);
        assert_eq!(&e[16..32], &guids()[1].0);
        assert_eq!((u64_at(e, 32), u64_at(e, 40)), (Some(2048), Some(133_119)));
        let name: Vec<u8> = "tugboot-esp"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(&e[56..56 + name.len()], &name[..]);
        assert!(e[56 + name.len()..].iter().all(|&b| b == 0));
        assert!(
            p[1024 + 4 * 128..].iter().all(|&b| b == 0),
            "unused entries"
        );
        // Backup: same entries, header in the last sector pointing back.
        let (offset, b) = l.backup();
        assert_eq!(offset + b.len() as u64, 2 << 30);
        assert_eq!(&b[..16384], &p[1024..1024 + 16384]);
        let bh = &b[16384..];
        assert_eq!(u64_at(bh, 24), Some((2 << 21) - 1));
        assert_eq!(u64_at(bh, 32), Some(1));
        assert_eq!(u64_at(bh, 72), Some((2 << 21) - 33));
        assert_ne!(u32_at(bh, 16), u32_at(h, 16));
    }

    #[test]
    fn read_back_what_was_written() {
        for ss in [512, 4096] {
            let l = plan(3 << 30, ss, SIZES, guids()).unwrap();
            let t = read(&l.primary(), 0, 1, ss).unwrap();
            assert_eq!(t.partitions, l.partitions);
            assert_eq!(t.header.disk_guid, l.disk_guid);
            let (offset, tail) = l.backup();
            let t = read(&tail, offset / ss, l.total_sectors - 1, ss).unwrap();
            assert_eq!(t.partitions, l.partitions);
            assert_eq!(t.header.alternate_lba, 1);
        }
    }

    #[test]
    fn damaged_tables_are_errors() {
        let l = plan(2 << 30, 512, SIZES, guids()).unwrap();
        let good = l.primary();
        for n in [0, 511, 600, 1024, 1024 + 16383] {
            assert!(read(&good[..n], 0, 1, 512).is_err(), "prefix {n}");
        }
        let mut bad = good.clone();
        bad[512 + 40] ^= 1; // first usable LBA: header CRC
        assert!(matches!(
            read(&bad, 0, 1, 512),
            Err(GptError::Crc { what: "header", .. })
        ));
        let mut bad = good.clone();
        bad[1024 + 60] ^= 1; // a name: entries CRC
        assert!(matches!(
            read(&bad, 0, 1, 512),
            Err(GptError::Crc {
                what: "entry array",
                ..
            })
        ));
        assert!(matches!(read(&good, 0, 2, 512), Err(GptError::NoSignature)));
        assert!(matches!(
            read(&good, 5, 1, 512),
            Err(GptError::Truncated { .. })
        ));
        // A header whose fields are wrong but whose CRC matches.
        let resign = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            let mut h = b[512..1024].to_vec();
            edit(&mut h);
            h[16..20].fill(0);
            let crc = crc32(&h[..92]);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
            b[512..1024].copy_from_slice(&h);
            read(&b, 0, 1, 512)
        };
        assert!(matches!(
            resign(&|h| h[80..84].copy_from_slice(&0u32.to_le_bytes())),
            Err(GptError::BadHeader(_))
        ));
        assert!(matches!(
            resign(&|h| h[84..88].copy_from_slice(&100u32.to_le_bytes())),
            Err(GptError::BadHeader(_))
        ));
        assert!(matches!(
            resign(&|h| h[24..32].copy_from_slice(&7u64.to_le_bytes())),
            Err(GptError::BadHeader(_))
        ));
        assert!(matches!(
            resign(&|h| h[48..56].copy_from_slice(&1000u64.to_le_bytes())),
            Err(GptError::BadEntry { number: 1, .. })
        ));
        assert!(matches!(
            resign(&|h| h[8..12].copy_from_slice(&0x0002_0000u32.to_le_bytes())),
            Err(GptError::BadHeader(_))
        ));
    }
}
