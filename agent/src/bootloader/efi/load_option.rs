//! `EFI_LOAD_OPTION` (the data of a `Boot####` variable) and the device paths inside it: a
//! sans-IO parser and encoder, fuzzed.
//!
//! ```text
//! Attributes          u32 LE    LOAD_OPTION_ACTIVE = 0x1, ...
//! FilePathListLength  u16 LE    bytes of FilePathList
//! Description         UCS-2 LE, NUL-terminated
//! FilePathList        device path(s): nodes { type u8, subtype u8, length u16 LE (>= 4), data }
//!                     ending with the end-of-entire-path node 7f ff 04 00
//! OptionalData        the rest
//! ```
//!
//! [`parse`] checks the whole structure (lengths, terminators, every node inside the list, the
//! final end node) and keeps the raw bytes of the path list and the optional data, so
//! `encode(parse(x)) == x`. Nothing after a successful parse can panic.

use std::fmt;

/// Largest `Boot####` data accepted, checked before parsing (firmware keeps variables well
/// below this; efibootmgr entries are ~100 bytes).
pub const MAX_LOAD_OPTION_LEN: usize = 64 * 1024;
/// `LOAD_OPTION_ACTIVE`: the boot manager may boot the entry.
pub const LOAD_OPTION_ACTIVE: u32 = 0x0000_0001;
/// `LOAD_OPTION_HIDDEN`.
pub const LOAD_OPTION_HIDDEN: u32 = 0x0000_0008;

/// Device path node types and subtypes used here (UEFI 2.10 §10.3).
pub mod node {
    /// Media device path.
    pub const MEDIA: u8 = 0x04;
    /// Media / hard drive (a partition).
    pub const MEDIA_HARD_DRIVE: u8 = 0x01;
    /// Media / file path (UCS-2, NUL-terminated).
    pub const MEDIA_FILE_PATH: u8 = 0x04;
    /// End of hardware device path.
    pub const END: u8 = 0x7f;
    /// End of this instance; another follows.
    pub const END_INSTANCE: u8 = 0x01;
    /// End of the entire device path.
    pub const END_ENTIRE: u8 = 0xff;
    /// Length of a hard-drive node.
    pub const HARD_DRIVE_LEN: usize = 42;
    /// Length of a node header.
    pub const HEADER_LEN: usize = 4;
}

/// A `Boot####` value that is not a well-formed `EFI_LOAD_OPTION`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadOptionError {
    /// Larger than [`MAX_LOAD_OPTION_LEN`].
    #[error("{len} bytes is larger than the {max}-byte cap")]
    TooLarge {
        /// Size.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// Ends inside a fixed field.
    #[error("truncated: {len} bytes, the header needs 6")]
    Truncated {
        /// Size.
        len: usize,
    },
    /// The description has no NUL terminator.
    #[error("description is not NUL-terminated")]
    UnterminatedDescription,
    /// `FilePathListLength` runs past the end.
    #[error("file path list of {len} bytes at offset {offset} runs past the end ({total} bytes)")]
    FilePathListOverrun {
        /// Where the list starts.
        offset: usize,
        /// Its declared length.
        len: usize,
        /// Size of the option.
        total: usize,
    },
    /// The device path inside is malformed.
    #[error("device path: {0}")]
    DevicePath(#[from] DevicePathError),
}

/// A malformed device path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DevicePathError {
    /// Empty, or the last node is not end-of-entire-path.
    #[error("does not end with the end-of-entire-path node")]
    Unterminated,
    /// A node header or body runs past the end, or declares a length below 4.
    #[error("node at offset {offset} has bad length {len}")]
    BadNodeLength {
        /// Offset of the node.
        offset: usize,
        /// Declared length.
        len: usize,
    },
    /// Bytes follow the end-of-entire-path node.
    #[error("{extra} bytes after the end-of-entire-path node")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// A hard-drive node that is not 42 bytes.
    #[error("hard drive node at offset {offset} is {len} bytes, not 42")]
    BadHardDrive {
        /// Offset of the node.
        offset: usize,
        /// Its length.
        len: usize,
    },
    /// A file-path node whose string has odd length or no NUL terminator.
    #[error("file path node at offset {offset} is not a NUL-terminated UCS-2 string")]
    BadFilePath {
        /// Offset of the node.
        offset: usize,
    },
}

/// A `HD(...)` node: the partition the loader is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardDrive {
    /// Partition number (1-based).
    pub partition_number: u32,
    /// First LBA.
    pub start: u64,
    /// Size in LBAs.
    pub size: u64,
    /// MBR signature (first 4 bytes) or GPT partition GUID (on-disk byte order).
    pub signature: [u8; 16],
    /// 0x01 MBR, 0x02 GPT.
    pub format: u8,
    /// 0x00 none, 0x01 MBR signature, 0x02 GUID.
    pub signature_type: u8,
}

/// One device path node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePathNode {
    /// `HD(...)`.
    HardDrive(HardDrive),
    /// `File(...)`: UCS-2 code units without the NUL.
    FilePath(Vec<u16>),
    /// End of one instance; another follows.
    EndInstance,
    /// End of the entire path.
    EndEntire,
    /// Any other node, kept raw.
    Other {
        /// Node type.
        kind: u8,
        /// Node subtype.
        sub_type: u8,
        /// Bytes after the 4-byte header.
        data: Vec<u8>,
    },
}

/// Formats a GUID stored in EFI byte order (first three fields little-endian).
#[must_use]
pub fn format_guid(g: &[u8; 16]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
        u16::from_le_bytes([g[4], g[5]]),
        u16::from_le_bytes([g[6], g[7]]),
        g[8],
        g[9],
        g[10],
        g[11],
        g[12],
        g[13],
        g[14],
        g[15]
    )
}

/// efibootmgr-style text: `HD(1,GPT,<guid>,0x800,0x100000)`, `File(\EFI\x.efi)`.
impl fmt::Display for DevicePathNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HardDrive(hd) => {
                let sig = match hd.signature_type {
                    0x02 => format_guid(&hd.signature),
                    0x01 => format!(
                        "{:08x}",
                        u32::from_le_bytes([
                            hd.signature[0],
                            hd.signature[1],
                            hd.signature[2],
                            hd.signature[3]
                        ])
                    ),
                    _ => String::new(),
                };
                let format = match hd.format {
                    0x01 => "MBR".to_owned(),
                    0x02 => "GPT".to_owned(),
                    n => format!("{n}"),
                };
                write!(
                    f,
                    "HD({},{format},{sig},{:#x},{:#x})",
                    hd.partition_number, hd.start, hd.size
                )
            }
            Self::FilePath(units) => write!(f, "File({})", String::from_utf16_lossy(units)),
            Self::EndInstance => f.write_str(","),
            Self::EndEntire => Ok(()),
            Self::Other {
                kind,
                sub_type,
                data,
            } => write!(f, "Path({kind},{sub_type},{})", hex_lower(data)),
        }
    }
}

fn hex_lower(data: &[u8]) -> String {
    use fmt::Write as _;
    data.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    let b = data.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([*b.first()?, *b.get(1)?]))
}

fn array<const N: usize>(data: &[u8], at: usize) -> Option<[u8; N]> {
    data.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Parses a device path (one or more instances) that must end with end-of-entire-path.
///
/// # Errors
/// [`DevicePathError`] for a node overrunning the buffer, a bad fixed-size node, a missing
/// end node or bytes after it.
pub fn parse_device_path(data: &[u8]) -> Result<Vec<DevicePathNode>, DevicePathError> {
    let mut nodes = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let kind = *data.get(at).ok_or(DevicePathError::Unterminated)?;
        let sub_type = *data.get(at + 1).ok_or(DevicePathError::Unterminated)?;
        let len = usize::from(u16_at(data, at + 2).ok_or(DevicePathError::BadNodeLength {
            offset: at,
            len: data.len() - at,
        })?);
        let body = (len >= node::HEADER_LEN)
            .then(|| data.get(at + node::HEADER_LEN..at + len))
            .flatten()
            .ok_or(DevicePathError::BadNodeLength { offset: at, len })?;
        if kind == node::END && len != node::HEADER_LEN {
            return Err(DevicePathError::BadNodeLength { offset: at, len });
        }
        let parsed = match (kind, sub_type) {
            (node::END, node::END_ENTIRE) => {
                let extra = data.len() - (at + len);
                if extra != 0 {
                    return Err(DevicePathError::TrailingBytes { extra });
                }
                nodes.push(DevicePathNode::EndEntire);
                return Ok(nodes);
            }
            (node::END, node::END_INSTANCE) => DevicePathNode::EndInstance,
            (node::MEDIA, node::MEDIA_HARD_DRIVE) => {
                let bad = DevicePathError::BadHardDrive { offset: at, len };
                if len != node::HARD_DRIVE_LEN {
                    return Err(bad);
                }
                let hd = (|| {
                    Some(HardDrive {
                        partition_number: u32::from_le_bytes(array(body, 0)?),
                        start: u64::from_le_bytes(array(body, 4)?),
                        size: u64::from_le_bytes(array(body, 12)?),
                        signature: array(body, 20)?,
                        format: *body.get(36)?,
                        signature_type: *body.get(37)?,
                    })
                })()
                .ok_or(bad)?;
                DevicePathNode::HardDrive(hd)
            }
            (node::MEDIA, node::MEDIA_FILE_PATH) => {
                let bad = DevicePathError::BadFilePath { offset: at };
                if !body.len().is_multiple_of(2) {
                    return Err(bad);
                }
                let mut units: Vec<u16> = body
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                if units.pop() != Some(0) {
                    return Err(bad);
                }
                DevicePathNode::FilePath(units)
            }
            _ => DevicePathNode::Other {
                kind,
                sub_type,
                data: body.to_vec(),
            },
        };
        nodes.push(parsed);
        at += len;
    }
    Err(DevicePathError::Unterminated)
}

/// Encodes nodes (the caller supplies the end node). Nodes that cannot be encoded (longer
/// than 65535 bytes) are an error.
///
/// # Errors
/// [`DevicePathError::BadNodeLength`] for an oversized node.
pub fn encode_device_path(nodes: &[DevicePathNode]) -> Result<Vec<u8>, DevicePathError> {
    let mut out = Vec::new();
    for n in nodes {
        let (kind, sub_type, body) = match n {
            DevicePathNode::HardDrive(hd) => {
                let mut b = Vec::with_capacity(38);
                b.extend_from_slice(&hd.partition_number.to_le_bytes());
                b.extend_from_slice(&hd.start.to_le_bytes());
                b.extend_from_slice(&hd.size.to_le_bytes());
                b.extend_from_slice(&hd.signature);
                b.push(hd.format);
                b.push(hd.signature_type);
                (node::MEDIA, node::MEDIA_HARD_DRIVE, b)
            }
            DevicePathNode::FilePath(units) => {
                let mut b: Vec<u8> = units.iter().flat_map(|u| u.to_le_bytes()).collect();
                b.extend_from_slice(&[0, 0]);
                (node::MEDIA, node::MEDIA_FILE_PATH, b)
            }
            DevicePathNode::EndInstance => (node::END, node::END_INSTANCE, Vec::new()),
            DevicePathNode::EndEntire => (node::END, node::END_ENTIRE, Vec::new()),
            DevicePathNode::Other {
                kind,
                sub_type,
                data,
            } => (*kind, *sub_type, data.clone()),
        };
        let len = u16::try_from(body.len() + node::HEADER_LEN).map_err(|_| {
            DevicePathError::BadNodeLength {
                offset: out.len(),
                len: body.len() + node::HEADER_LEN,
            }
        })?;
        out.push(kind);
        out.push(sub_type);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&body);
    }
    Ok(out)
}

/// A parsed `EFI_LOAD_OPTION`.
///
/// Invariant (from [`parse`]): `file_path_list` is a valid device path of at most 65535
/// bytes; `description` has no NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOption {
    /// `LOAD_OPTION_*` bits.
    pub attributes: u32,
    /// UCS-2 code units without the NUL.
    pub description: Vec<u16>,
    /// The raw device path list.
    pub file_path_list: Vec<u8>,
    /// Bytes after the path list (arguments for the loader).
    pub optional_data: Vec<u8>,
}

impl LoadOption {
    /// A new active option (what `efibootmgr -c` creates, for tests and installers).
    ///
    /// # Errors
    /// A description with NUL or a device path too long to encode.
    pub fn new(description: &str, path: &[DevicePathNode]) -> Result<Self, LoadOptionError> {
        let description: Vec<u16> = description.encode_utf16().collect();
        if description.contains(&0) {
            return Err(LoadOptionError::UnterminatedDescription);
        }
        let file_path_list = encode_device_path(path)?;
        let option = Self {
            attributes: LOAD_OPTION_ACTIVE,
            description,
            file_path_list,
            optional_data: Vec::new(),
        };
        // Validates the path list (end node, lengths) exactly as a read would.
        parse(&option.encode()?)
    }

    /// The description (lossy for unpaired surrogates).
    #[must_use]
    pub fn description(&self) -> String {
        String::from_utf16_lossy(&self.description)
    }

    /// Whether `LOAD_OPTION_ACTIVE` is set.
    #[must_use]
    pub fn is_active(&self) -> bool {
        self.attributes & LOAD_OPTION_ACTIVE != 0
    }

    /// The device path nodes.
    ///
    /// # Errors
    /// Never for an option from [`parse`]; [`DevicePathError`] if fields were edited.
    pub fn device_path(&self) -> Result<Vec<DevicePathNode>, DevicePathError> {
        parse_device_path(&self.file_path_list)
    }

    /// The file path of the first instance (consecutive `File()` nodes joined), if any.
    #[must_use]
    pub fn file_path(&self) -> Option<String> {
        let nodes = self.device_path().ok()?;
        let mut units = Vec::new();
        for n in &nodes {
            match n {
                DevicePathNode::FilePath(u) => units.extend_from_slice(u),
                DevicePathNode::EndInstance | DevicePathNode::EndEntire => break,
                _ => {}
            }
        }
        (!units.is_empty()).then(|| String::from_utf16_lossy(&units))
    }

    /// The option's bytes.
    ///
    /// # Errors
    /// A path list longer than 65535 bytes (impossible for a parsed option).
    pub fn encode(&self) -> Result<Vec<u8>, LoadOptionError> {
        let list_len = u16::try_from(self.file_path_list.len()).map_err(|_| {
            DevicePathError::BadNodeLength {
                offset: 0,
                len: self.file_path_list.len(),
            }
        })?;
        let mut out = Vec::with_capacity(
            8 + 2 * self.description.len() + self.file_path_list.len() + self.optional_data.len(),
        );
        out.extend_from_slice(&self.attributes.to_le_bytes());
        out.extend_from_slice(&list_len.to_le_bytes());
        for u in &self.description {
            out.extend_from_slice(&u.to_le_bytes());
        }
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.file_path_list);
        out.extend_from_slice(&self.optional_data);
        Ok(out)
    }
}

/// Human-readable like `efibootmgr -v`: `tugboot A\tHD(...)/File(...)`.
impl fmt::Display for LoadOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\t", self.description())?;
        let nodes = self.device_path().unwrap_or_default();
        let mut first = true;
        for n in &nodes {
            if matches!(n, DevicePathNode::EndEntire) {
                continue;
            }
            if !first && !matches!(n, DevicePathNode::EndInstance) {
                f.write_str("/")?;
            }
            write!(f, "{n}")?;
            first = matches!(n, DevicePathNode::EndInstance);
        }
        Ok(())
    }
}

/// Parses an `EFI_LOAD_OPTION`.
///
/// # Errors
/// [`LoadOptionError`] for anything not well-formed, including the device path inside.
pub fn parse(data: &[u8]) -> Result<LoadOption, LoadOptionError> {
    if data.len() > MAX_LOAD_OPTION_LEN {
        return Err(LoadOptionError::TooLarge {
            len: data.len(),
            max: MAX_LOAD_OPTION_LEN,
        });
    }
    let truncated = LoadOptionError::Truncated { len: data.len() };
    let attributes = u32::from_le_bytes(array(data, 0).ok_or(truncated.clone())?);
    let list_len = usize::from(u16_at(data, 4).ok_or(truncated)?);
    let mut description = Vec::new();
    let mut at = 6;
    loop {
        let unit = u16_at(data, at).ok_or(LoadOptionError::UnterminatedDescription)?;
        at += 2;
        if unit == 0 {
            break;
        }
        description.push(unit);
    }
    let file_path_list = data
        .get(at..at + list_len)
        .ok_or(LoadOptionError::FilePathListOverrun {
            offset: at,
            len: list_len,
            total: data.len(),
        })?
        .to_vec();
    parse_device_path(&file_path_list)?;
    let optional_data = data.get(at + list_len..).unwrap_or_default().to_vec();
    Ok(LoadOption {
        attributes,
        description,
        file_path_list,
        optional_data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `efibootmgr -c -d /dev/vda -p 1 -L "tugboot A" -l '\EFI\tugboot\slot-a.efi'` on a GPT
    /// disk whose ESP starts at LBA 2048 and has 204800 sectors.
    pub(crate) fn boot0001() -> Vec<u8> {
        let mut v = vec![0x01, 0, 0, 0]; // LOAD_OPTION_ACTIVE
        let file: Vec<u8> = "\\EFI\\tugboot\\slot-a.efi"
            .encode_utf16()
            .chain([0])
            .flat_map(u16::to_le_bytes)
            .collect();
        let list_len = 42 + 4 + file.len() + 4;
        v.extend_from_slice(&u16::try_from(list_len).unwrap().to_le_bytes());
        v.extend(
            "tugboot A"
                .encode_utf16()
                .chain([0])
                .flat_map(u16::to_le_bytes),
        );
        v.extend_from_slice(&[0x04, 0x01, 42, 0]);
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&0x800u64.to_le_bytes());
        v.extend_from_slice(&0x32000u64.to_le_bytes());
        v.extend_from_slice(&[
            0x3c, 0x9a, 0x5d, 0x6e, 0x2b, 0x1f, 0x47, 0x4c, 0x9c, 0x1e, 0x8a, 0x2d, 0x61, 0x0b,
            0x47, 0x01,
        ]);
        v.extend_from_slice(&[0x02, 0x02]);
        v.extend_from_slice(&[0x04, 0x04]);
        v.extend_from_slice(&u16::try_from(4 + file.len()).unwrap().to_le_bytes());
        v.extend_from_slice(&file);
        v.extend_from_slice(&[0x7f, 0xff, 0x04, 0x00]);
        v
    }

    #[test]
    fn deconstruct_boot0001() {
        let data = boot0001();
        let opt = parse(&data).unwrap();
        assert_eq!(opt.attributes, LOAD_OPTION_ACTIVE);
        assert!(opt.is_active());
        assert_eq!(opt.description(), "tugboot A");
        assert_eq!(
            opt.file_path().as_deref(),
            Some("\\EFI\\tugboot\\slot-a.efi")
        );
        assert!(opt.optional_data.is_empty());
        let nodes = opt.device_path().unwrap();
        assert_eq!(nodes.len(), 3);
        let DevicePathNode::HardDrive(hd) = nodes[0] else {
            panic!("{nodes:?}")
        };
        assert_eq!(hd.partition_number, 1);
        assert_eq!((hd.start, hd.size), (0x800, 0x32000));
        assert_eq!((hd.format, hd.signature_type), (2, 2));
        assert_eq!(
            opt.to_string(),
            "tugboot A\tHD(1,GPT,6e5d9a3c-1f2b-4c47-9c1e-8a2d610b4701,0x800,0x32000)/File(\\EFI\\tugboot\\slot-a.efi)"
        );
    }

    #[test]
    fn emit_boot0001() {
        let data = boot0001();
        assert_eq!(parse(&data).unwrap().encode().unwrap(), data);
        let nodes = parse_device_path(&parse(&data).unwrap().file_path_list).unwrap();
        let built = LoadOption::new("tugboot A", &nodes).unwrap();
        assert_eq!(built.encode().unwrap(), data);
    }

    #[test]
    fn optional_data_and_instances() {
        let path = [
            DevicePathNode::Other {
                kind: 1,
                sub_type: 1,
                data: vec![0, 3],
            },
            DevicePathNode::EndInstance,
            DevicePathNode::FilePath("\\a".encode_utf16().collect()),
            DevicePathNode::FilePath("\\b.efi".encode_utf16().collect()),
            DevicePathNode::EndEntire,
        ];
        let mut opt = LoadOption::new("x", &path).unwrap();
        // The file path is taken from the first instance only.
        assert_eq!(opt.file_path(), None);
        opt.optional_data = b"args".to_vec();
        let bytes = opt.encode().unwrap();
        assert_eq!(parse(&bytes).unwrap(), opt);
        let two_files = LoadOption::new("y", &path[2..]).unwrap();
        assert_eq!(two_files.file_path().as_deref(), Some("\\a\\b.efi"));
    }

    #[test]
    fn malformed_options_are_errors() {
        let good = boot0001();
        // Truncated anywhere: an error, never a panic.
        for n in 0..good.len() {
            assert!(parse(&good[..n]).is_err(), "prefix {n}");
        }
        let list_at = 6 + 2 * ("tugboot A".len() + 1);
        let mut bad = good.clone();
        bad[list_at + 2] = 41; // HD length
        assert!(matches!(parse(&bad), Err(LoadOptionError::DevicePath(_))));
        let mut bad = good.clone();
        bad[list_at + 2] = 2; // node length below the header
        assert!(parse(&bad).is_err());
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 3] = 0x01; // end-of-instance as the last node
        assert!(matches!(
            parse(&bad),
            Err(LoadOptionError::DevicePath(DevicePathError::Unterminated))
        ));
        let mut bad = good.clone();
        bad[4] = bad[4].wrapping_add(2);
        assert!(parse(&bad).is_err(), "list length past the end");
        let mut bad = good;
        bad.extend(std::iter::repeat_n(0, MAX_LOAD_OPTION_LEN));
        assert!(matches!(parse(&bad), Err(LoadOptionError::TooLarge { .. })));
        assert!(matches!(
            parse(&[1, 0, 0, 0, 4, 0, b'a', 0]),
            Err(LoadOptionError::UnterminatedDescription)
        ));
    }
}
