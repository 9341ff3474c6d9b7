//! File / block-device backend for the U-Boot environment.
//!
//! Writes go in place (the environment is a fixed region of a disk or a file the bootloader
//! finds by offset, so a temp file + rename would move it) and are `fsync`ed before returning.
//! With two copies only the non-current copy is written; the new flags byte is part of the same
//! CRC-protected write, so until that write is complete and synced the old copy stays current.
//! With one copy a torn write leaves a bad CRC and U-Boot falls back to its built-in default
//! environment: use a redundant layout wherever power can fail.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::{
    CopyIndex, DEFAULT_PAD, EnvConfig, EnvDevice, FlagScheme, RedundantEnv, encode_redundant_copy,
    encode_single, next_flags, parse_redundant, parse_single,
};
use crate::bootloader::{BootEnv, BootEnvError, Vars, io_err};

/// A U-Boot environment in one or two regions of files or block devices.
#[derive(Debug, Clone)]
pub struct UbootEnvFile {
    config: EnvConfig,
    scheme: FlagScheme,
    pad: u8,
}

fn read_region(dev: &EnvDevice) -> Result<Vec<u8>, BootEnvError> {
    let path = dev.path.as_path();
    let mut f = File::open(path).map_err(io_err("open", path))?;
    f.seek(SeekFrom::Start(dev.offset))
        .map_err(io_err("seek", path))?;
    let mut buf = vec![0u8; dev.env_size];
    f.read_exact(&mut buf).map_err(io_err("read", path))?;
    Ok(buf)
}

/// Writes `bytes` at the device's offset, syncs, and reads them back.
fn write_region(dev: &EnvDevice, at: u64, bytes: &[u8]) -> Result<(), BootEnvError> {
    let path = dev.path.as_path();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err("open for writing", path))?;
    let meta = f.metadata().map_err(io_err("stat", path))?;
    // A regular file must already hold the region: growing it would mean the configuration does
    // not describe the file the bootloader reads. Block devices report length 0 here.
    let end = at.saturating_add(bytes.len() as u64);
    if meta.is_file() && meta.len() < end {
        return Err(BootEnvError::RegionOutsideFile {
            path: path.to_path_buf(),
            end,
            len: meta.len(),
        });
    }
    f.seek(SeekFrom::Start(at)).map_err(io_err("seek", path))?;
    f.write_all(bytes).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("fsync", path))?;
    f.seek(SeekFrom::Start(at)).map_err(io_err("seek", path))?;
    let mut back = vec![0u8; bytes.len()];
    f.read_exact(&mut back).map_err(io_err("read back", path))?;
    if back != bytes {
        return Err(BootEnvError::VerifyFailed {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

impl UbootEnvFile {
    /// A backend for `config`, with the incremental flag scheme and 0x00 padding.
    #[must_use]
    pub fn new(config: EnvConfig) -> Self {
        Self {
            config,
            scheme: FlagScheme::Incremental,
            pad: DEFAULT_PAD,
        }
    }

    /// Reads and parses a `fw_env.config` file (capped at 64 KiB).
    ///
    /// # Errors
    /// I/O errors or [`super::EnvConfigError`].
    pub fn from_config_file(path: &Path) -> Result<Self, BootEnvError> {
        const MAX_CONFIG: u64 = 64 * 1024;
        let f = File::open(path).map_err(io_err("open", path))?;
        let mut text = String::new();
        f.take(MAX_CONFIG + 1)
            .read_to_string(&mut text)
            .map_err(io_err("read", path))?;
        if text.len() as u64 > MAX_CONFIG {
            return Err(BootEnvError::ConfigTooLarge {
                path: path.to_path_buf(),
                max: MAX_CONFIG,
            });
        }
        Ok(Self::new(EnvConfig::parse(&text)?))
    }

    /// Uses another flag scheme for redundant copies.
    #[must_use]
    pub fn with_flag_scheme(mut self, scheme: FlagScheme) -> Self {
        self.scheme = scheme;
        self
    }

    /// Pads the data area with `pad` (0x00 or 0xff) on write.
    #[must_use]
    pub fn with_padding(mut self, pad: u8) -> Self {
        self.pad = pad;
        self
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &EnvConfig {
        &self.config
    }

    fn device(&self, copy: CopyIndex) -> Result<&EnvDevice, BootEnvError> {
        self.config
            .devices()
            .get(copy.as_usize())
            .ok_or(BootEnvError::NotRedundant)
    }

    /// Reads both copies of a redundant environment and reports which one is current.
    ///
    /// # Errors
    /// [`BootEnvError::NotRedundant`] for a single-copy config; I/O; both copies corrupt.
    pub fn load_redundant(&self) -> Result<RedundantEnv, BootEnvError> {
        let c0 = read_region(self.device(CopyIndex::First)?)?;
        let c1 = read_region(self.device(CopyIndex::Second)?)?;
        Ok(parse_redundant(&c0, &c1, self.scheme)?)
    }

    /// Writes `vars` as a brand-new environment, whatever the regions held before: for
    /// provisioning a blank device, never for recovering a corrupt one automatically.
    /// Redundant copies get flags 1 and 0, so copy 0 is current (as after `mkenvimage -r`).
    ///
    /// # Errors
    /// Encoding or I/O errors.
    pub fn initialize(&mut self, vars: &Vars) -> Result<(), BootEnvError> {
        let size = self.config.env_size();
        if self.config.is_redundant() {
            for (copy, flags) in [(CopyIndex::First, 1), (CopyIndex::Second, 0)] {
                let dev = self.device(copy)?;
                let img = encode_redundant_copy(vars, size, flags, self.pad)?;
                write_region(dev, dev.offset, &img)?;
            }
        } else {
            let dev = self.device(CopyIndex::First)?;
            let img = encode_single(vars, size, self.pad)?;
            write_region(dev, dev.offset, &img)?;
        }
        Ok(())
    }
}

impl BootEnv for UbootEnvFile {
    fn load(&mut self) -> Result<Vars, BootEnvError> {
        if self.config.is_redundant() {
            Ok(self.load_redundant()?.vars)
        } else {
            let img = read_region(self.device(CopyIndex::First)?)?;
            Ok(parse_single(&img)?)
        }
    }

    /// Replaces the whole environment with `vars`. The current environment is read first and
    /// must be valid: a corrupt environment is never overwritten (see [`Self::initialize`]).
    fn store(&mut self, vars: &Vars) -> Result<(), BootEnvError> {
        let size = self.config.env_size();
        if self.config.is_redundant() {
            let current = self.load_redundant()?;
            let target = self.device(current.current.other())?;
            let flags = next_flags(current.flags, self.scheme);
            let img = encode_redundant_copy(vars, size, flags, self.pad)?;
            write_region(target, target.offset, &img)?;
            if self.scheme == FlagScheme::Boolean {
                // Only after the new copy is durable: mark the old one obsolete.
                let old = self.device(current.current)?;
                write_region(old, old.offset + super::CRC_LEN as u64, &[0])?;
            }
        } else {
            let dev = self.device(CopyIndex::First)?;
            let old = read_region(dev)?;
            parse_single(&old)?;
            let img = encode_single(vars, size, self.pad)?;
            write_region(dev, dev.offset, &img)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootloader::uboot::{UbootEnvError, parse_redundant_copy};

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        let mut v = Vars::new();
        for (n, val) in pairs {
            v.set(*n, *val).unwrap();
        }
        v
    }

    fn redundant_in_one_file(dir: &Path) -> (std::path::PathBuf, UbootEnvFile) {
        let path = dir.join("disk.img");
        std::fs::write(&path, vec![0x5a; 0x3000]).unwrap();
        let cfg = EnvConfig::redundant(
            EnvDevice::new(&path, 0x1000, 0x400),
            EnvDevice::new(&path, 0x2000, 0x400),
        )
        .unwrap();
        (path, UbootEnvFile::new(cfg))
    }

    #[test]
    fn redundant_store_alternates_copies_and_bumps_flags() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut env) = redundant_in_one_file(dir.path());
        // Nothing valid yet: load and store both refuse.
        assert!(matches!(
            env.load(),
            Err(BootEnvError::Uboot(UbootEnvError::BothCopiesCorrupt { .. }))
        ));
        assert!(env.store(&vars(&[("a", "1")])).is_err());
        let disk = std::fs::read(&path).unwrap();
        assert!(disk.iter().all(|&b| b == 0x5a), "refused store wrote");

        env.initialize(&vars(&[("a", "0")])).unwrap();
        assert_eq!(env.load_redundant().unwrap().current, CopyIndex::First);
        for (i, expect_copy) in [CopyIndex::Second, CopyIndex::First, CopyIndex::Second]
            .into_iter()
            .enumerate()
        {
            env.store(&vars(&[("a", &(i + 1).to_string())])).unwrap();
            let r = env.load_redundant().unwrap();
            assert_eq!(r.current, expect_copy);
            assert_eq!(r.flags, u8::try_from(i + 2).unwrap());
            assert_eq!(r.vars.get_str("a"), Some((i + 1).to_string().as_str()));
            assert!(r.other_valid);
        }
        // Bytes outside both regions untouched.
        let disk = std::fs::read(&path).unwrap();
        assert!(disk[..0x1000].iter().all(|&b| b == 0x5a));
        assert!(disk[0x1400..0x2000].iter().all(|&b| b == 0x5a));
        assert!(disk[0x2400..].iter().all(|&b| b == 0x5a));
    }

    #[test]
    fn torn_write_of_new_copy_keeps_old_current_and_next_store_repairs() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut env) = redundant_in_one_file(dir.path());
        env.initialize(&vars(&[("slot", "A")])).unwrap();
        env.store(&vars(&[("slot", "B")])).unwrap(); // copy 1, flags 2
        // Power loss while writing copy 0: new header, old data ("slo" + "t=A").
        let new = encode_redundant_copy(&vars(&[("slot", "C")]), 0x400, 3, 0).unwrap();
        let mut disk = std::fs::read(&path).unwrap();
        disk[0x1000..0x1008].copy_from_slice(&new[..8]);
        std::fs::write(&path, &disk).unwrap();
        let r = env.load_redundant().unwrap();
        assert_eq!(r.current, CopyIndex::Second);
        assert_eq!(r.vars.get_str("slot"), Some("B"));
        assert!(!r.other_valid);
        env.store(&vars(&[("slot", "D")])).unwrap();
        assert_eq!(env.load().unwrap().get_str("slot"), Some("D"));
    }

    #[test]
    fn boolean_scheme_obsoletes_old_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (path, env) = redundant_in_one_file(dir.path());
        let mut env = env.with_flag_scheme(FlagScheme::Boolean);
        env.initialize(&vars(&[("x", "1")])).unwrap();
        env.store(&vars(&[("x", "2")])).unwrap();
        let disk = std::fs::read(&path).unwrap();
        let (f0, _) = parse_redundant_copy(&disk[0x1000..0x1400]).unwrap();
        let (f1, v1) = parse_redundant_copy(&disk[0x2000..0x2400]).unwrap();
        assert_eq!((f0, f1), (0, 1));
        assert_eq!(v1.get_str("x"), Some("2"));
        env.store(&vars(&[("x", "3")])).unwrap();
        let r = env.load_redundant().unwrap();
        assert_eq!((r.current, r.flags), (CopyIndex::First, 1));
        assert_eq!(r.vars.get_str("x"), Some("3"));
    }

    #[test]
    fn single_store_refuses_corrupt_env_and_short_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env.bin");
        std::fs::write(&path, vec![0xff; 0x100]).unwrap();
        let mut env =
            UbootEnvFile::new(EnvConfig::single(EnvDevice::new(&path, 0, 0x100)).unwrap());
        assert!(matches!(
            env.store(&vars(&[("a", "1")])),
            Err(BootEnvError::Uboot(UbootEnvError::BadCrc { .. }))
        ));
        assert_eq!(std::fs::read(&path).unwrap(), vec![0xff; 0x100]);
        env.initialize(&vars(&[("a", "1")])).unwrap();
        env.store(&vars(&[("a", "2"), ("b", "3")])).unwrap();
        assert_eq!(env.load().unwrap(), vars(&[("b", "3"), ("a", "2")]));

        let mut short =
            UbootEnvFile::new(EnvConfig::single(EnvDevice::new(&path, 0x80, 0x100)).unwrap());
        assert!(matches!(
            short.initialize(&Vars::new()),
            Err(BootEnvError::RegionOutsideFile { .. })
        ));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0x100);
    }
}
