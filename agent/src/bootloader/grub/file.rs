//! File backend for the GRUB environment block.
//!
//! `store` writes a temp file beside the block, syncs it, renames it over the block and syncs
//! the directory: after a power cut GRUB sees either the old or the new block, never half of
//! each. The block keeps its size (GRUB's `save_env` can only rewrite it in place). A block
//! reached through a symlink or device node is written in place instead (same size, synced).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::{DEFAULT_SIZE, MAX_SIZE, encode, parse, update};
use crate::bootloader::{BootEnv, BootEnvError, Vars, io_err};

/// A GRUB environment block file (e.g. `/boot/grub/grubenv`).
#[derive(Debug, Clone)]
pub struct GrubEnvFile {
    path: PathBuf,
}

impl GrubEnvFile {
    /// The block at `path`.
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The block's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<Vec<u8>, BootEnvError> {
        let path = self.path.as_path();
        let f = File::open(path).map_err(io_err("open", path))?;
        let len = f.metadata().map_err(io_err("stat", path))?.len();
        if len > MAX_SIZE as u64 {
            return Err(BootEnvError::FileTooLarge {
                path: path.to_path_buf(),
                len,
                max: MAX_SIZE,
            });
        }
        let mut buf = Vec::new();
        f.take(MAX_SIZE as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(io_err("read", path))?;
        Ok(buf)
    }

    fn replace(&self, bytes: &[u8]) -> Result<(), BootEnvError> {
        let path = self.path.as_path();
        match fs::symlink_metadata(path) {
            // A symlink (or a device node) is written through in place: renaming over it would
            // replace the link instead of the block GRUB reads. `update` keeps the size.
            Ok(meta) if !meta.file_type().is_file() => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err("open for writing", path))?;
                f.write_all(bytes).map_err(io_err("write", path))?;
                f.sync_all().map_err(io_err("fsync", path))?;
                return Ok(());
            }
            _ => {}
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".tugboot-tmp");
        let tmp = dir.join(tmp_name);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        if let Ok(meta) = fs::metadata(path) {
            f.set_permissions(meta.permissions())
                .map_err(io_err("chmod", &tmp))?;
        }
        f.write_all(bytes).map_err(io_err("write", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(io_err("rename over", path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync directory", dir))?;
        Ok(())
    }

    /// Writes a fresh block of [`DEFAULT_SIZE`] bytes holding `vars`, like
    /// `grub-editenv FILE create` + `set`, replacing whatever the file held.
    ///
    /// # Errors
    /// Variables that do not fit, or I/O errors.
    pub fn initialize(&mut self, vars: &Vars) -> Result<(), BootEnvError> {
        let block = encode(vars, DEFAULT_SIZE)?;
        self.replace(&block)
    }
}

impl BootEnv for GrubEnvFile {
    fn load(&mut self) -> Result<Vars, BootEnvError> {
        Ok(parse(&self.read()?)?)
    }

    /// Rewrites the existing block with `vars` (same size, comments kept). An invalid block is
    /// never overwritten; a missing one is an error (see [`Self::initialize`]).
    fn store(&mut self, vars: &Vars) -> Result<(), BootEnvError> {
        let old = self.read()?;
        let new = update(&old, vars)?;
        if new == old {
            return Ok(());
        }
        self.replace(&new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootloader::grub::GrubEnvError;

    #[test]
    fn initialize_store_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grubenv");
        let mut env = GrubEnvFile::new(&path);
        assert!(matches!(env.load(), Err(BootEnvError::Io { .. })));
        let mut v = Vars::new();
        v.set("tugboot_slot", "A").unwrap();
        assert!(matches!(env.store(&v), Err(BootEnvError::Io { .. })));
        env.initialize(&v).unwrap();
        v.set("tugboot_try", "B").unwrap();
        env.store(&v).unwrap();
        assert!(env.load().unwrap().eq_ordered(&v));
        assert_eq!(fs::metadata(&path).unwrap().len(), DEFAULT_SIZE as u64);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("grubenv")]);
    }

    #[test]
    fn symlink_is_written_through_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("real-grubenv");
        let link = dir.path().join("grubenv");
        GrubEnvFile::new(&target).initialize(&Vars::new()).unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let mut env = GrubEnvFile::new(&link);
        let mut v = Vars::new();
        v.set("k", "v").unwrap();
        env.store(&v).unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(GrubEnvFile::new(&target).load().unwrap().eq_ordered(&v));
        assert_eq!(fs::metadata(&target).unwrap().len(), DEFAULT_SIZE as u64);
    }

    #[test]
    fn refuses_to_overwrite_invalid_or_huge_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grubenv");
        fs::write(&path, b"not an env block").unwrap();
        let mut env = GrubEnvFile::new(&path);
        let v = Vars::new();
        assert!(matches!(
            env.store(&v),
            Err(BootEnvError::Grub(GrubEnvError::BadSize { .. }))
        ));
        assert_eq!(fs::read(&path).unwrap(), b"not an env block");
        fs::write(&path, vec![b'#'; MAX_SIZE + 1]).unwrap();
        assert!(matches!(env.load(), Err(BootEnvError::FileTooLarge { .. })));
    }
}
