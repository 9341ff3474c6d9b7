//! Bootloader environments: the variables through which the agent asks the bootloader to try a
//! slot once, and through which it learns what actually booted.
//!
//! Each backend is a pure codec (`parse(&[u8])` / `encode(&Vars, size)`, no I/O, fuzzed) plus a
//! thin file shell implementing [`BootEnv`]:
//!
//! - [`uboot`]: U-Boot environment, single or redundant copies, in a region of a file or block
//!   device, compatible with `fw_printenv`/`fw_setenv` (libubootenv) and `mkenvimage`.
//! - [`grub`]: the 1 KiB GRUB environment block, compatible with `grub-editenv`.
//!
//! Both refuse to write over an environment they cannot read: a blank environment would make
//! U-Boot fall back to its defaults and forget which slot is good.

pub mod efi;
pub mod fuzzing;
pub mod grub;
pub mod rpi;
pub mod uboot;
mod vars;

use std::path::PathBuf;

pub use vars::{VarError, Vars};

/// Reading and writing a bootloader environment as a whole.
///
/// `store` replaces the full variable set atomically with respect to power loss where the
/// medium allows it (redundant U-Boot copies, GRUB file rename); callers `load`, edit, `store`.
pub trait BootEnv {
    /// Reads the current variables.
    ///
    /// # Errors
    /// I/O errors, or an environment that is corrupt or not in the expected format.
    fn load(&mut self) -> Result<Vars, BootEnvError>;

    /// Replaces the variables with `vars`.
    ///
    /// # Errors
    /// I/O errors, variables that do not fit, or a current environment that is corrupt (which
    /// is never overwritten).
    fn store(&mut self, vars: &Vars) -> Result<(), BootEnvError>;
}

/// Failure of a [`BootEnv`] backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootEnvError {
    /// The U-Boot environment is corrupt, too large, or malformed.
    #[error("U-Boot environment: {0}")]
    Uboot(#[from] uboot::UbootEnvError),
    /// The U-Boot `fw_env.config` is invalid.
    #[error("U-Boot environment config: {0}")]
    Config(#[from] uboot::EnvConfigError),
    /// The GRUB environment block is invalid or the variables do not fit.
    #[error("GRUB environment block: {0}")]
    Grub(#[from] grub::GrubEnvError),
    /// An operating-system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A configured region lies (partly) beyond the end of a regular file.
    #[error("{path}: region ends at byte {end} but the file has {len} bytes")]
    RegionOutsideFile {
        /// The file.
        path: PathBuf,
        /// End of the region.
        end: u64,
        /// File length.
        len: u64,
    },
    /// Data read back after a synced write differs from what was written.
    #[error("{path}: data read back after writing differs")]
    VerifyFailed {
        /// The file or device.
        path: PathBuf,
    },
    /// A configuration file is larger than any sane one.
    #[error("{path}: larger than {max} bytes")]
    ConfigTooLarge {
        /// The file.
        path: PathBuf,
        /// The cap.
        max: u64,
    },
    /// A file that should hold an environment is larger than the format's cap.
    #[error("{path}: {len} bytes is larger than the {max}-byte cap")]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The cap.
        max: usize,
    },
    /// A redundant-only operation on a single-copy configuration.
    #[error("the environment is not configured with redundant copies")]
    NotRedundant,
}

/// One of the two A/B slots: the device API's own type (`tugboot_wire::Slot`), so the state
/// file, reports and environments spell it the same way (`A`/`B`).
pub use tugboot_wire::{Slot, SlotParseError};

/// A variable of the A/B contract holds something the agent cannot interpret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AbVarError {
    /// Not a decimal number in range.
    #[error("{name}={value:?} is not a decimal number up to {max}")]
    BadNumber {
        /// Variable.
        name: &'static str,
        /// Value found (lossy).
        value: String,
        /// Largest accepted.
        max: u32,
    },
    /// Not `A` or `B`.
    #[error("{name}={value:?} is not a slot (A or B)")]
    BadSlot {
        /// Variable.
        name: &'static str,
        /// Value found (lossy).
        value: String,
    },
    /// Not `0` or `1`.
    #[error("{name}={value:?} is not 0 or 1")]
    BadBool {
        /// Variable.
        name: &'static str,
        /// Value found (lossy).
        value: String,
    },
    /// An argument outside what the boot script supports.
    #[error("{what}")]
    OutOfRange {
        /// What was wrong.
        what: &'static str,
    },
}

/// Maps an I/O error on `path` during `op` into [`BootEnvError::Io`].
pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> BootEnvError + 'a {
    move |source| BootEnvError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a decimal variable; absent or empty means `None`.
pub(crate) fn get_number(
    vars: &Vars,
    name: &'static str,
    max: u32,
) -> Result<Option<u32>, AbVarError> {
    let Some(raw) = vars.get(name) else {
        return Ok(None);
    };
    if raw.is_empty() {
        return Ok(None);
    }
    std::str::from_utf8(raw)
        .ok()
        .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|&n| n <= max)
        .map(Some)
        .ok_or_else(|| AbVarError::BadNumber {
            name,
            value: String::from_utf8_lossy(raw).into_owned(),
            max,
        })
}

/// Reads a slot variable; absent or empty means `None`.
pub(crate) fn get_slot(vars: &Vars, name: &'static str) -> Result<Option<Slot>, AbVarError> {
    match vars.get(name) {
        None | Some(b"") => Ok(None),
        Some(b"A") => Ok(Some(Slot::A)),
        Some(b"B") => Ok(Some(Slot::B)),
        Some(other) => Err(AbVarError::BadSlot {
            name,
            value: String::from_utf8_lossy(other).into_owned(),
        }),
    }
}

/// Sets a variable whose name and value are known-valid constants of this module.
pub(crate) fn set_known(vars: &mut Vars, name: &'static str, value: &str) {
    // Names are static ASCII identifiers and values digits/slot letters/fixed commands without
    // NUL, so `set` cannot fail; a failure would be a bug caught by the unit tests.
    let result = vars.set(name, value);
    debug_assert!(result.is_ok(), "constant variable {name} rejected");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_spelling() {
        assert_eq!("A".parse(), Ok(Slot::A));
        assert_eq!("B".parse(), Ok(Slot::B));
        assert_eq!("a".parse::<Slot>(), Err(SlotParseError("a".into())));
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::B.to_string(), "B");
    }

    #[test]
    fn numbers_are_strict_decimal() {
        let mut v = Vars::new();
        assert_eq!(get_number(&v, "n", 10), Ok(None));
        v.set("n", "").unwrap();
        assert_eq!(get_number(&v, "n", 10), Ok(None));
        v.set("n", "7").unwrap();
        assert_eq!(get_number(&v, "n", 10), Ok(Some(7)));
        for bad in ["11", "0x1", "-1", " 1", "1a", "99999999999"] {
            v.set("n", bad).unwrap();
            assert!(get_number(&v, "n", 10).is_err(), "{bad}");
        }
    }
}
