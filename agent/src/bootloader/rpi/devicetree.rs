//! What the Raspberry Pi firmware tells Linux about the boot that just happened.
//!
//! The firmware adds properties under `/chosen/bootloader` of the device tree it hands to the
//! kernel, which Linux shows as files under `/proc/device-tree/chosen/bootloader/`:
//!
//! - `partition`: the partition the firmware booted from (for a `boot.img` ramdisk, the
//!   partition the ramdisk was loaded from), a 4-byte big-endian cell;
//! - `tryboot`: `1` if the tryboot flag was set for this boot, else `0`, a 4-byte big-endian
//!   cell.
//!
//! [`read_boot_info`] takes the device-tree root as a parameter so tests use a fake tree.

use std::io::Read as _;
use std::path::{Path, PathBuf};

/// Where Linux shows the device tree.
pub const PROC_DEVICE_TREE: &str = "/proc/device-tree";
/// The booted partition, relative to the device-tree root.
pub const PARTITION_PROP: &str = "chosen/bootloader/partition";
/// The tryboot flag, relative to the device-tree root.
pub const TRYBOOT_PROP: &str = "chosen/bootloader/tryboot";
/// Size of one device-tree cell.
pub const CELL_LEN: usize = 4;
/// Bytes read from a property at most: enough to see that a cell is too long.
const READ_CAP: u64 = 64;

/// A device-tree property that cannot be read as the firmware writes it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceTreeError {
    /// The property file could not be read (missing: firmware without tryboot support, or a
    /// kernel not booted by the Raspberry Pi firmware).
    #[error("{path}: {source}")]
    Read {
        /// The property file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not one 4-byte cell.
    #[error("{path}: {len} bytes, expected one {CELL_LEN}-byte cell")]
    BadCell {
        /// The property file.
        path: PathBuf,
        /// Bytes found (capped).
        len: usize,
    },
    /// `tryboot` is neither 0 nor 1.
    #[error("{path}: tryboot flag {value} is neither 0 nor 1")]
    BadFlag {
        /// The property file.
        path: PathBuf,
        /// The value found.
        value: u32,
    },
}

/// How the running system was booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootInfo {
    /// The partition the firmware booted from.
    pub partition: u32,
    /// Whether this boot is a tryboot (one-shot, after `reboot "0 tryboot"`).
    pub tryboot: bool,
}

/// Decodes one big-endian cell; `None` unless `bytes` is exactly 4 bytes.
#[must_use]
pub fn parse_cell(bytes: &[u8]) -> Option<u32> {
    let cell: [u8; CELL_LEN] = bytes.try_into().ok()?;
    Some(u32::from_be_bytes(cell))
}

/// The bytes of a cell holding `value` (what the firmware writes; for fake trees in tests).
#[must_use]
pub fn encode_cell(value: u32) -> [u8; CELL_LEN] {
    value.to_be_bytes()
}

fn read_cell(path: &Path) -> Result<u32, DeviceTreeError> {
    let read_err = |source| DeviceTreeError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut buf = Vec::with_capacity(CELL_LEN);
    file.take(READ_CAP)
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    parse_cell(&buf).ok_or_else(|| DeviceTreeError::BadCell {
        path: path.to_path_buf(),
        len: buf.len(),
    })
}

/// Reads `partition` and `tryboot` under `root` (normally [`PROC_DEVICE_TREE`]).
///
/// # Errors
/// [`DeviceTreeError`] if either property is missing or malformed.
pub fn read_boot_info(root: &Path) -> Result<BootInfo, DeviceTreeError> {
    let partition = read_cell(&root.join(PARTITION_PROP))?;
    let flag_path = root.join(TRYBOOT_PROP);
    let tryboot = match read_cell(&flag_path)? {
        0 => false,
        1 => true,
        value => {
            return Err(DeviceTreeError::BadFlag {
                path: flag_path,
                value,
            });
        }
    };
    Ok(BootInfo { partition, tryboot })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(partition: &[u8], tryboot: Option<&[u8]>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("chosen/bootloader");
        std::fs::create_dir_all(&node).unwrap();
        std::fs::write(node.join("partition"), partition).unwrap();
        if let Some(t) = tryboot {
            std::fs::write(node.join("tryboot"), t).unwrap();
        }
        dir
    }

    #[test]
    fn cells_are_big_endian() {
        assert_eq!(parse_cell(&[0, 0, 0, 3]), Some(3));
        assert_eq!(parse_cell(&[0, 0, 1, 0]), Some(256));
        assert_eq!(parse_cell(&[3, 0, 0]), None);
        assert_eq!(parse_cell(&[0, 0, 0, 3, 0]), None);
        assert_eq!(encode_cell(2), [0, 0, 0, 2]);
    }

    #[test]
    fn reads_a_fake_tree() {
        let t = tree(&[0, 0, 0, 3], Some(&[0, 0, 0, 1]));
        assert_eq!(
            read_boot_info(t.path()).unwrap(),
            BootInfo {
                partition: 3,
                tryboot: true
            }
        );
        let t = tree(&[0, 0, 0, 2], Some(&[0, 0, 0, 0]));
        assert_eq!(
            read_boot_info(t.path()).unwrap(),
            BootInfo {
                partition: 2,
                tryboot: false
            }
        );
    }

    #[test]
    fn malformed_trees_are_errors() {
        let t = tree(&[0, 0, 0, 2], None);
        assert!(matches!(
            read_boot_info(t.path()),
            Err(DeviceTreeError::Read { .. })
        ));
        let t = tree(b"2\n", Some(&[0, 0, 0, 0]));
        assert!(matches!(
            read_boot_info(t.path()),
            Err(DeviceTreeError::BadCell { len: 2, .. })
        ));
        let t = tree(&[0, 0, 0, 2], Some(&[1, 0, 0, 0]));
        assert!(matches!(
            read_boot_info(t.path()),
            Err(DeviceTreeError::BadFlag {
                value: 0x0100_0000,
                ..
            })
        ));
        let t = tree(&[0; 100], Some(&[0, 0, 0, 0]));
        assert!(matches!(
            read_boot_info(t.path()),
            Err(DeviceTreeError::BadCell { len: 64, .. })
        ));
    }
}
