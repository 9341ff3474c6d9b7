//! U-Boot environment: the sans-IO codec, the redundant-copy rules, `fw_env.config`, and a
//! file/block-device backend.
//!
//! Layout of one copy of `size` bytes (little-endian CRC, as on every target we ship):
//!
//! ```text
//! single:    | crc32(data) u32 LE | data (size - 4)                    |
//! redundant: | crc32(data) u32 LE | flags u8 | data (size - 5)         |
//! data:      name=value\0name=value\0 ... \0 <padding 0x00 or 0xff ...>
//! ```
//!
//! The CRC covers the whole data area including the padding, so the padding byte is part of the
//! image; `mkenvimage` pads with 0xff, libubootenv with whatever its buffer held (0x00 in
//! practice). Either reads back identically.

pub mod ab;
mod config;
mod file;

pub use config::{EnvConfig, EnvConfigError, EnvDevice};
pub use file::UbootEnvFile;

use super::vars::{VarError, Vars};

/// Bytes of the CRC header.
pub const CRC_LEN: usize = 4;
/// Bytes of the header of one redundant copy (CRC + flags).
pub const REDUNDANT_HEADER_LEN: usize = 5;
/// Largest environment copy accepted, checked before anything is read or allocated. Real boards
/// use 8 KiB to 256 KiB; 1 MiB leaves room without letting a bad config eat the device's RAM.
pub const MAX_ENV_SIZE: usize = 1 << 20;
/// Padding written by [`crate::bootloader::uboot::UbootEnvFile`] unless told otherwise (what
/// U-Boot's own `saveenv` and libubootenv leave behind).
pub const DEFAULT_PAD: u8 = 0x00;

/// A U-Boot environment image that cannot be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UbootEnvError {
    /// The copy is smaller than its header plus one terminator byte, or larger than the cap.
    #[error("environment size {size} is outside {min}..={max} bytes")]
    BadSize {
        /// Size given.
        size: usize,
        /// Smallest size for this layout.
        min: usize,
        /// [`MAX_ENV_SIZE`].
        max: usize,
    },
    /// The stored CRC does not match the data: the copy is corrupt or was never written.
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc {
        /// CRC in the header.
        stored: u32,
        /// CRC of the data area.
        computed: u32,
    },
    /// Neither redundant copy has a valid CRC. Nothing is written over such an environment.
    #[error("both redundant copies are corrupt (copy 0: {first}; copy 1: {second})")]
    BothCopiesCorrupt {
        /// Why copy 0 was rejected.
        first: Box<UbootEnvError>,
        /// Why copy 1 was rejected.
        second: Box<UbootEnvError>,
    },
    /// The data area has no terminating empty entry.
    #[error("data area is not terminated by an empty entry")]
    Unterminated,
    /// An entry has no `=`.
    #[error("entry at data offset {offset} has no '='")]
    MissingEquals {
        /// Offset of the entry in the data area.
        offset: usize,
    },
    /// An entry has a name the environment cannot hold.
    #[error("entry at data offset {offset}: {source}")]
    BadEntry {
        /// Offset of the entry in the data area.
        offset: usize,
        /// What is wrong with it.
        source: VarError,
    },
    /// The variables need more room than the data area has.
    #[error("variables need {needed} bytes but the data area holds {available}")]
    TooLarge {
        /// Bytes the entries and terminator need.
        needed: usize,
        /// Bytes of data area.
        available: usize,
    },
}

/// How the flags byte of redundant copies orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FlagScheme {
    /// Each write stores the current copy's flag plus one (wrapping); the higher flag is
    /// current, except that 0 beats 0xff (the wrap). Used by U-Boot and libubootenv for
    /// files, block devices and NAND.
    #[default]
    Incremental,
    /// The new copy gets 1 ("active"), then the old one's flag is overwritten with 0
    /// ("obsolete"); 0xff is an erased, never-obsoleted flag. Used for NOR flash, where bits
    /// can only be cleared without an erase.
    Boolean,
}

/// Which of the two redundant copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyIndex {
    /// The first configured copy (`fw_env.config` line 1).
    First,
    /// The second configured copy.
    Second,
}

impl CopyIndex {
    /// The other copy.
    #[must_use]
    pub fn other(self) -> Self {
        match self {
            Self::First => Self::Second,
            Self::Second => Self::First,
        }
    }

    /// 0 or 1.
    #[must_use]
    pub fn as_usize(self) -> usize {
        match self {
            Self::First => 0,
            Self::Second => 1,
        }
    }
}

fn check_size(size: usize, header: usize) -> Result<(), UbootEnvError> {
    let min = header + 1;
    if size < min || size > MAX_ENV_SIZE {
        return Err(UbootEnvError::BadSize {
            size,
            min,
            max: MAX_ENV_SIZE,
        });
    }
    Ok(())
}

/// Parses a data area (after the header): `name=value\0 ... \0`.
///
/// Later duplicates replace earlier values, as in U-Boot and libubootenv. Bytes after the
/// terminator are padding and ignored.
///
/// # Errors
/// [`UbootEnvError::Unterminated`], [`UbootEnvError::MissingEquals`] or
/// [`UbootEnvError::BadEntry`].
pub fn parse_data(data: &[u8]) -> Result<Vars, UbootEnvError> {
    let mut vars = Vars::new();
    let mut pos = 0;
    loop {
        let rest = data.get(pos..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(UbootEnvError::Unterminated)?;
        if len == 0 {
            return Ok(vars);
        }
        let entry = &rest[..len];
        let eq = entry
            .iter()
            .position(|&b| b == b'=')
            .ok_or(UbootEnvError::MissingEquals { offset: pos })?;
        vars.set(&entry[..eq], &entry[eq + 1..])
            .map_err(|source| UbootEnvError::BadEntry {
                offset: pos,
                source,
            })?;
        pos += len + 1;
    }
}

/// Encodes `vars`, sorted by name like libubootenv, into a data area of exactly `len` bytes
/// filled up with `pad`.
///
/// # Errors
/// [`UbootEnvError::TooLarge`] if the entries plus terminator do not fit.
pub fn encode_data(vars: &Vars, len: usize, pad: u8) -> Result<Vec<u8>, UbootEnvError> {
    let needed = vars
        .iter()
        .map(|(n, v)| n.len() + v.len() + 2)
        .sum::<usize>()
        + 1;
    if needed > len {
        return Err(UbootEnvError::TooLarge {
            needed,
            available: len,
        });
    }
    let mut out = Vec::with_capacity(len);
    for (name, value) in vars.iter_sorted() {
        out.extend_from_slice(name);
        out.push(b'=');
        out.extend_from_slice(value);
        out.push(0);
    }
    out.push(0);
    out.resize(len, pad);
    Ok(out)
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as U-Boot's `crc32()` over the data
/// area. One 1 KiB table built at compile time: environments are a few KiB and written rarely,
/// so this is fast enough, and about 20 KB smaller in the static agent than crc32fast's
/// slicing tables and SIMD paths.
#[must_use]
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            #[allow(clippy::cast_possible_truncation)] // i < 256
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

fn stored_crc(image: &[u8]) -> u32 {
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&image[..CRC_LEN]);
    u32::from_le_bytes(crc)
}

fn check_crc(image: &[u8], data_start: usize) -> Result<(), UbootEnvError> {
    let stored = stored_crc(image);
    let computed = crc32(&image[data_start..]);
    if stored == computed {
        Ok(())
    } else {
        Err(UbootEnvError::BadCrc { stored, computed })
    }
}

/// Parses a single-copy image (the whole configured env size).
///
/// # Errors
/// [`UbootEnvError::BadSize`], [`UbootEnvError::BadCrc`] or a data-area error.
pub fn parse_single(image: &[u8]) -> Result<Vars, UbootEnvError> {
    check_size(image.len(), CRC_LEN)?;
    check_crc(image, CRC_LEN)?;
    parse_data(&image[CRC_LEN..])
}

/// Encodes a single-copy image of `size` bytes.
///
/// # Errors
/// [`UbootEnvError::BadSize`] or [`UbootEnvError::TooLarge`].
pub fn encode_single(vars: &Vars, size: usize, pad: u8) -> Result<Vec<u8>, UbootEnvError> {
    check_size(size, CRC_LEN)?;
    let data = encode_data(vars, size - CRC_LEN, pad)?;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&crc32(&data).to_le_bytes());
    out.extend_from_slice(&data);
    Ok(out)
}

/// Parses one redundant copy, returning its flags byte and variables.
///
/// # Errors
/// [`UbootEnvError::BadSize`], [`UbootEnvError::BadCrc`] or a data-area error.
pub fn parse_redundant_copy(image: &[u8]) -> Result<(u8, Vars), UbootEnvError> {
    check_size(image.len(), REDUNDANT_HEADER_LEN)?;
    check_crc(image, REDUNDANT_HEADER_LEN)?;
    let vars = parse_data(&image[REDUNDANT_HEADER_LEN..])?;
    Ok((image[CRC_LEN], vars))
}

/// Encodes one redundant copy of `size` bytes carrying `flags`.
///
/// # Errors
/// [`UbootEnvError::BadSize`] or [`UbootEnvError::TooLarge`].
pub fn encode_redundant_copy(
    vars: &Vars,
    size: usize,
    flags: u8,
    pad: u8,
) -> Result<Vec<u8>, UbootEnvError> {
    check_size(size, REDUNDANT_HEADER_LEN)?;
    let data = encode_data(vars, size - REDUNDANT_HEADER_LEN, pad)?;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&crc32(&data).to_le_bytes());
    out.push(flags);
    out.extend_from_slice(&data);
    Ok(out)
}

/// Which copy is current when both are valid, by libubootenv's rules (U-Boot's own
/// `env_import_redund` agrees for the incremental scheme; ties go to the first copy).
#[must_use]
pub fn current_of(flags0: u8, flags1: u8, scheme: FlagScheme) -> CopyIndex {
    let mut current = if flags1 > flags0 {
        CopyIndex::Second
    } else {
        CopyIndex::First
    };
    match scheme {
        FlagScheme::Incremental => {
            if flags0 == 0xff && flags1 == 0 {
                current = CopyIndex::Second;
            } else if flags1 == 0xff && flags0 == 0 {
                current = CopyIndex::First;
            }
        }
        FlagScheme::Boolean => {
            if flags1 == 0xff {
                current = CopyIndex::Second;
            } else if flags0 == 0xff {
                current = CopyIndex::First;
            }
        }
    }
    current
}

/// The flags byte the next write (to the non-current copy) carries.
#[must_use]
pub fn next_flags(current: u8, scheme: FlagScheme) -> u8 {
    match scheme {
        FlagScheme::Incremental => current.wrapping_add(1),
        FlagScheme::Boolean => 1,
    }
}

/// The readable state of a redundant environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedundantEnv {
    /// The copy that holds the live environment.
    pub current: CopyIndex,
    /// Its flags byte.
    pub flags: u8,
    /// Its variables.
    pub vars: Vars,
    /// Whether the other copy also passed its CRC (false right after a torn write or on a
    /// freshly flashed single image).
    pub other_valid: bool,
}

/// Reads two redundant copies and picks the current one.
///
/// # Errors
/// [`UbootEnvError::BothCopiesCorrupt`] if neither copy is valid, or [`UbootEnvError::BadSize`]
/// if the copies differ in size (libubootenv refuses such configurations too).
pub fn parse_redundant(
    copy0: &[u8],
    copy1: &[u8],
    scheme: FlagScheme,
) -> Result<RedundantEnv, UbootEnvError> {
    check_size(copy0.len(), REDUNDANT_HEADER_LEN)?;
    if copy1.len() != copy0.len() {
        return Err(UbootEnvError::BadSize {
            size: copy1.len(),
            min: copy0.len(),
            max: copy0.len(),
        });
    }
    match (parse_redundant_copy(copy0), parse_redundant_copy(copy1)) {
        (Ok((f0, v0)), Ok((f1, v1))) => Ok(match current_of(f0, f1, scheme) {
            CopyIndex::First => RedundantEnv {
                current: CopyIndex::First,
                flags: f0,
                vars: v0,
                other_valid: true,
            },
            CopyIndex::Second => RedundantEnv {
                current: CopyIndex::Second,
                flags: f1,
                vars: v1,
                other_valid: true,
            },
        }),
        (Ok((flags, vars)), Err(_)) => Ok(RedundantEnv {
            current: CopyIndex::First,
            flags,
            vars,
            other_valid: false,
        }),
        (Err(_), Ok((flags, vars))) => Ok(RedundantEnv {
            current: CopyIndex::Second,
            flags,
            vars,
            other_valid: false,
        }),
        (Err(e0), Err(e1)) => Err(UbootEnvError::BothCopiesCorrupt {
            first: Box::new(e0),
            second: Box::new(e1),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        let mut v = Vars::new();
        for (n, val) in pairs {
            v.set(*n, *val).unwrap();
        }
        v
    }

    /// `printf 'bootcount=0\nbootlimit=3\nfoo=bar baz\n' | mkenvimage -s 0x40 -o - -`
    /// (u-boot-tools 2023.01): CRC, entries, terminator, 0xff padding.
    const MKENVIMAGE_64: [u8; 64] = [
        0xba, 0x8f, 0x7d, 0x80, b'b', b'o', b'o', b't', b'c', b'o', b'u', b'n', b't', b'=', b'0',
        0, b'b', b'o', b'o', b't', b'l', b'i', b'm', b'i', b't', b'=', b'3', 0, b'f', b'o', b'o',
        b'=', b'b', b'a', b'r', b' ', b'b', b'a', b'z', 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff,
    ];

    #[test]
    fn parse_mkenvimage_fixture() {
        let v = parse_single(&MKENVIMAGE_64).unwrap();
        assert_eq!(
            v,
            vars(&[("bootcount", "0"), ("bootlimit", "3"), ("foo", "bar baz")])
        );
    }

    #[test]
    fn emit_matches_mkenvimage_bytes() {
        let v = vars(&[("foo", "bar baz"), ("bootlimit", "3"), ("bootcount", "0")]);
        assert_eq!(encode_single(&v, 64, 0xff).unwrap(), MKENVIMAGE_64);
    }

    #[test]
    fn emit_overwrites_whole_area() {
        // Like smoltcp's 0xa5-prefilled buffers: every byte of the output is decided by us.
        let v = vars(&[("a", "1")]);
        let img = encode_redundant_copy(&v, 16, 7, 0xa5).unwrap();
        assert_eq!(img.len(), 16);
        assert_eq!(img[4], 7);
        assert_eq!(&img[5..10], b"a=1\0\0");
        assert!(img[10..].iter().all(|&b| b == 0xa5));
        assert_eq!(
            u32::from_le_bytes(img[..4].try_into().unwrap()),
            crc32(&img[5..])
        );
    }

    #[test]
    fn crc32_is_ieee() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926); // the standard check value
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 253) as u8).collect();
        for len in [0, 1, 3, 4095, 4096, 70_000] {
            assert_eq!(crc32(&data[..len]), crc32fast::hash(&data[..len]), "{len}");
        }
    }

    #[test]
    fn empty_env_is_one_nul() {
        let img = encode_single(&Vars::new(), 5, 0).unwrap();
        assert_eq!(img[4], 0);
        assert!(parse_single(&img).unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_crc() {
        let mut img = MKENVIMAGE_64;
        img[20] ^= 1;
        assert!(matches!(
            parse_single(&img),
            Err(UbootEnvError::BadCrc { .. })
        ));
    }

    #[test]
    fn rejects_sizes_outside_caps() {
        assert!(matches!(
            parse_single(&[0; 4]),
            Err(UbootEnvError::BadSize { .. })
        ));
        assert!(matches!(
            encode_single(&Vars::new(), MAX_ENV_SIZE + 1, 0),
            Err(UbootEnvError::BadSize { .. })
        ));
        assert!(matches!(
            parse_redundant_copy(&[0; 5]),
            Err(UbootEnvError::BadSize { .. })
        ));
    }

    #[test]
    fn data_area_errors() {
        assert_eq!(parse_data(b"a=1\0"), Err(UbootEnvError::Unterminated));
        assert_eq!(parse_data(b"a=1"), Err(UbootEnvError::Unterminated));
        assert_eq!(
            parse_data(b"a=1\0junk\0\0"),
            Err(UbootEnvError::MissingEquals { offset: 4 })
        );
        assert!(matches!(
            parse_data(b"=1\0\0"),
            Err(UbootEnvError::BadEntry { offset: 0, .. })
        ));
        assert!(matches!(
            parse_data(b"a\nb=1\0\0"),
            Err(UbootEnvError::BadEntry { .. })
        ));
    }

    #[test]
    fn later_duplicate_wins_and_values_keep_equals_and_newlines() {
        let v = parse_data(b"a=1\0b=x=y\nz\0a=2\0\0\xff\xff").unwrap();
        assert_eq!(v.get("a"), Some(&b"2"[..]));
        assert_eq!(v.get("b"), Some(&b"x=y\nz"[..]));
        assert_eq!(v.len(), 2);
    }

    #[test]
    fn too_large_is_refused() {
        let v = vars(&[("abc", "defg")]);
        // "abc=defg\0" + "\0" = 10 bytes
        assert!(encode_data(&v, 10, 0).is_ok());
        assert_eq!(
            encode_data(&v, 9, 0),
            Err(UbootEnvError::TooLarge {
                needed: 10,
                available: 9
            })
        );
    }

    #[test]
    fn incremental_flags_pick_higher_with_wraparound() {
        use CopyIndex::{First, Second};
        let s = FlagScheme::Incremental;
        assert_eq!(current_of(1, 2, s), Second);
        assert_eq!(current_of(3, 2, s), First);
        assert_eq!(current_of(0xff, 0, s), Second);
        assert_eq!(current_of(0, 0xff, s), First);
        assert_eq!(current_of(5, 5, s), First);
        assert_eq!(next_flags(0xff, s), 0);
        assert_eq!(next_flags(1, s), 2);
    }

    #[test]
    fn boolean_flags_prefer_active_over_obsolete() {
        use CopyIndex::{First, Second};
        let s = FlagScheme::Boolean;
        assert_eq!(current_of(1, 0, s), First);
        assert_eq!(current_of(0, 1, s), Second);
        assert_eq!(current_of(0xff, 0, s), First);
        assert_eq!(current_of(0, 0xff, s), Second);
        assert_eq!(next_flags(0, s), 1);
    }

    #[test]
    fn redundant_pair_selection_and_corruption() {
        let old = encode_redundant_copy(&vars(&[("v", "old")]), 32, 4, 0).unwrap();
        let new = encode_redundant_copy(&vars(&[("v", "new")]), 32, 5, 0).unwrap();
        let env = parse_redundant(&old, &new, FlagScheme::Incremental).unwrap();
        assert_eq!(env.current, CopyIndex::Second);
        assert_eq!(env.flags, 5);
        assert_eq!(env.vars.get("v"), Some(&b"new"[..]));
        assert!(env.other_valid);

        // A torn write of the newer copy: the older one is still current.
        let mut torn = new.clone();
        torn[10] ^= 0xff;
        let env = parse_redundant(&old, &torn, FlagScheme::Incremental).unwrap();
        assert_eq!(env.current, CopyIndex::First);
        assert_eq!(env.vars.get("v"), Some(&b"old"[..]));
        assert!(!env.other_valid);

        let mut torn_old = old.clone();
        torn_old[0] ^= 1;
        assert!(matches!(
            parse_redundant(&torn_old, &torn, FlagScheme::Incremental),
            Err(UbootEnvError::BothCopiesCorrupt { .. })
        ));
        assert!(matches!(
            parse_redundant(&old, &new[..31], FlagScheme::Incremental),
            Err(UbootEnvError::BadSize { .. })
        ));
    }
}
