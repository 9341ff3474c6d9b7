//! `fw_env.config`: where the U-Boot environment lives.
//!
//! One line per copy (two lines = redundant):
//!
//! ```text
//! # device        offset    env-size  [sector-size  [sector-count]]
//! /dev/mmcblk0    0x3fe000  0x2000
//! /dev/mmcblk0    0x3fc000  0x2000
//! ```
//!
//! Numbers are read the way libubootenv's `sscanf("%lli %zx %zx %lx")` reads them, so an existing
//! config means the same thing to us as to `fw_printenv`: the offset takes C prefixes (`0x` hex,
//! leading `0` octal, else decimal), while sizes and the sector count are **always hex**, with or
//! without `0x` (`2000` is 8 KiB). Unlike libubootenv, a malformed line is an error with its line
//! number instead of being skipped, and a trailing `# comment` is allowed.

use std::path::PathBuf;

use super::MAX_ENV_SIZE;

/// A `fw_env.config` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvConfigError {
    /// Fewer than three or more than six fields.
    #[error("line {line}: expected `device offset env-size [sector-size [sector-count]]`")]
    FieldCount {
        /// 1-based line number.
        line: usize,
    },
    /// A number does not parse.
    #[error("line {line}: {field} {text:?} is not a valid number")]
    BadNumber {
        /// 1-based line number.
        line: usize,
        /// Which field.
        field: &'static str,
        /// The text found.
        text: String,
    },
    /// The environment size is zero or above the cap.
    #[error("line {line}: env size {size:#x} is outside 6..={max:#x}")]
    BadEnvSize {
        /// 1-based line number.
        line: usize,
        /// Size given.
        size: u64,
        /// [`MAX_ENV_SIZE`].
        max: usize,
    },
    /// No device line at all.
    #[error("no environment device configured")]
    Empty,
    /// A third device line.
    #[error("line {line}: at most two copies (redundant environment) are supported")]
    TooManyDevices {
        /// 1-based line number.
        line: usize,
    },
    /// The two copies have different sizes.
    #[error("redundant copies differ in size ({first:#x} vs {second:#x})")]
    SizeMismatch {
        /// Size of copy 0.
        first: usize,
        /// Size of copy 1.
        second: usize,
    },
    /// The two copies overlap on the same device.
    #[error("redundant copies overlap on {path}")]
    Overlap {
        /// The shared device.
        path: String,
    },
    /// MTD/UBI devices need erase ioctls this backend does not do yet.
    #[error("line {line}: {path} is an MTD/UBI device, which is not supported yet")]
    UnsupportedDevice {
        /// 1-based line number.
        line: usize,
        /// The device path.
        path: String,
    },
}

/// One copy of the environment: a file or block device and a region inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvDevice {
    /// File or block device.
    pub path: PathBuf,
    /// Byte offset of the copy inside `path`.
    pub offset: u64,
    /// Bytes of the copy, header included (`CONFIG_ENV_SIZE`).
    pub env_size: usize,
    /// Erase block size (flash only; kept for completeness).
    pub sector_size: Option<u64>,
    /// Erase blocks spanned (flash only; kept for completeness).
    pub sector_count: Option<u64>,
}

impl EnvDevice {
    /// A region of `env_size` bytes at `offset` in `path`.
    #[must_use]
    pub fn new(path: impl Into<PathBuf>, offset: u64, env_size: usize) -> Self {
        Self {
            path: path.into(),
            offset,
            env_size,
            sector_size: None,
            sector_count: None,
        }
    }
}

/// A validated configuration: one copy, or two redundant copies of the same size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvConfig {
    devices: Vec<EnvDevice>,
}

fn parse_c_integer(text: &str) -> Option<u64> {
    // %lli: optional sign, then 0x/0X hex, 0 octal, or decimal. Negative offsets are refused.
    let t = text.strip_prefix('+').unwrap_or(text);
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if t.len() > 1 && t.starts_with('0') {
        u64::from_str_radix(&t[1..], 8).ok()
    } else {
        t.parse().ok()
    }
}

fn parse_hex(text: &str) -> Option<u64> {
    // %zx / %lx: hex with an optional 0x prefix.
    let t = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if t.starts_with('+') {
        return None;
    }
    u64::from_str_radix(t, 16).ok()
}

fn number(
    line: usize,
    field: &'static str,
    text: &str,
    parse: fn(&str) -> Option<u64>,
) -> Result<u64, EnvConfigError> {
    parse(text).ok_or_else(|| EnvConfigError::BadNumber {
        line,
        field,
        text: text.to_owned(),
    })
}

impl EnvConfig {
    /// One copy.
    ///
    /// # Errors
    /// [`EnvConfigError::BadEnvSize`] if the size is outside the caps.
    pub fn single(device: EnvDevice) -> Result<Self, EnvConfigError> {
        Self::from_devices(vec![device])
    }

    /// Two redundant copies.
    ///
    /// # Errors
    /// Size out of caps, sizes differ, or the regions overlap.
    pub fn redundant(first: EnvDevice, second: EnvDevice) -> Result<Self, EnvConfigError> {
        Self::from_devices(vec![first, second])
    }

    fn from_devices(devices: Vec<EnvDevice>) -> Result<Self, EnvConfigError> {
        for (i, d) in devices.iter().enumerate() {
            if d.env_size < super::REDUNDANT_HEADER_LEN + 1 || d.env_size > MAX_ENV_SIZE {
                return Err(EnvConfigError::BadEnvSize {
                    line: i + 1,
                    size: d.env_size as u64,
                    max: MAX_ENV_SIZE,
                });
            }
        }
        match devices.as_slice() {
            [] => return Err(EnvConfigError::Empty),
            [_] => {}
            [a, b] => {
                if a.env_size != b.env_size {
                    return Err(EnvConfigError::SizeMismatch {
                        first: a.env_size,
                        second: b.env_size,
                    });
                }
                let size = a.env_size as u64;
                if a.path == b.path
                    && a.offset < b.offset.saturating_add(size)
                    && b.offset < a.offset.saturating_add(size)
                {
                    return Err(EnvConfigError::Overlap {
                        path: a.path.display().to_string(),
                    });
                }
            }
            [_, _, _, ..] => return Err(EnvConfigError::TooManyDevices { line: 3 }),
        }
        Ok(Self { devices })
    }

    /// Parses `fw_env.config` text.
    ///
    /// # Errors
    /// [`EnvConfigError`] naming the line at fault.
    pub fn parse(text: &str) -> Result<Self, EnvConfigError> {
        let mut devices = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = match raw.trim_start().find('#') {
                Some(0) => continue,
                Some(_) => raw
                    .split_once(" #")
                    .or_else(|| raw.split_once("\t#"))
                    .map_or(raw, |(before, _)| before),
                None => raw,
            };
            let fields: Vec<&str> = content.split_whitespace().collect();
            if fields.is_empty() {
                continue;
            }
            // The sixth field is libubootenv's "disable MTD lock"; meaningless for block devices.
            if fields.len() < 3 || fields.len() > 6 {
                return Err(EnvConfigError::FieldCount { line });
            }
            if devices.len() == 2 {
                return Err(EnvConfigError::TooManyDevices { line });
            }
            let path = fields[0];
            if path.starts_with("/dev/mtd") || path.starts_with("/dev/ubi") {
                return Err(EnvConfigError::UnsupportedDevice {
                    line,
                    path: path.to_owned(),
                });
            }
            let offset = number(line, "offset", fields[1], parse_c_integer)?;
            let size = number(line, "env size", fields[2], parse_hex)?;
            let env_size = usize::try_from(size)
                .ok()
                .filter(|&s| (super::REDUNDANT_HEADER_LEN + 1..=MAX_ENV_SIZE).contains(&s))
                .ok_or(EnvConfigError::BadEnvSize {
                    line,
                    size,
                    max: MAX_ENV_SIZE,
                })?;
            let sector_size = fields
                .get(3)
                .map(|t| number(line, "sector size", t, parse_hex))
                .transpose()?;
            let sector_count = fields
                .get(4)
                .map(|t| number(line, "sector count", t, parse_hex))
                .transpose()?;
            devices.push(EnvDevice {
                path: PathBuf::from(path),
                offset,
                env_size,
                sector_size,
                sector_count,
            });
        }
        Self::from_devices(devices)
    }

    /// The configured copies (one or two).
    #[must_use]
    pub fn devices(&self) -> &[EnvDevice] {
        &self.devices
    }

    /// Whether two copies are configured.
    #[must_use]
    pub fn is_redundant(&self) -> bool {
        self.devices.len() == 2
    }

    /// Bytes of each copy.
    #[must_use]
    pub fn env_size(&self) -> usize {
        self.devices.first().map_or(0, |d| d.env_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_with_hex_sizes() {
        let c = EnvConfig::parse("# comment\n\n/dev/mmcblk0 0x3fe000 0x2000\n").unwrap();
        assert!(!c.is_redundant());
        assert_eq!(
            c.devices()[0],
            EnvDevice::new("/dev/mmcblk0", 0x3f_e000, 0x2000)
        );
    }

    #[test]
    fn sizes_are_hex_even_without_prefix_offsets_follow_c_rules() {
        let c = EnvConfig::parse("/boot/uboot.env 4096 2000 1000 2\n").unwrap();
        let d = &c.devices()[0];
        assert_eq!(d.offset, 4096);
        assert_eq!(d.env_size, 0x2000);
        assert_eq!(d.sector_size, Some(0x1000));
        assert_eq!(d.sector_count, Some(2));
        let c = EnvConfig::parse("/f 010 0x10\n").unwrap();
        assert_eq!(c.devices()[0].offset, 8);
    }

    #[test]
    fn redundant_with_trailing_comment() {
        let c = EnvConfig::parse(
            "/dev/sda 0x100000 0x4000 # first\n/dev/sda 0x104000 0x4000\t# second\n",
        )
        .unwrap();
        assert!(c.is_redundant());
        assert_eq!(c.env_size(), 0x4000);
        assert_eq!(c.devices()[1].offset, 0x10_4000);
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            EnvConfig::parse("# x\n/dev/sda 0x0\n"),
            Err(EnvConfigError::FieldCount { line: 2 })
        );
        assert!(matches!(
            EnvConfig::parse("/dev/sda zz 0x10\n"),
            Err(EnvConfigError::BadNumber {
                line: 1,
                field: "offset",
                ..
            })
        ));
        assert!(matches!(
            EnvConfig::parse("/dev/sda 0 0\n"),
            Err(EnvConfigError::BadEnvSize { line: 1, .. })
        ));
        assert!(matches!(
            EnvConfig::parse("/dev/sda 0 0x200000\n"),
            Err(EnvConfigError::BadEnvSize { .. })
        ));
        assert!(matches!(
            EnvConfig::parse("/dev/sda -16 0x100\n"),
            Err(EnvConfigError::BadNumber { .. })
        ));
        assert_eq!(EnvConfig::parse("# nothing\n"), Err(EnvConfigError::Empty));
        assert_eq!(
            EnvConfig::parse("/a 0 10\n/b 0 10\n/c 0 10\n"),
            Err(EnvConfigError::TooManyDevices { line: 3 })
        );
        assert!(matches!(
            EnvConfig::parse("/a 0 10\n/b 0 20\n"),
            Err(EnvConfigError::SizeMismatch { .. })
        ));
        assert!(matches!(
            EnvConfig::parse("/a 0 0x100\n/a 0x80 0x100\n"),
            Err(EnvConfigError::Overlap { .. })
        ));
        assert!(matches!(
            EnvConfig::parse("/dev/mtd1 0 0x100\n"),
            Err(EnvConfigError::UnsupportedDevice { .. })
        ));
    }
}
