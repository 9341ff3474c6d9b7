//! The few file operations the update path needs, behind a trait so that tests can cut the power.
//!
//! [`Io`] is deliberately path-based and primitive (create, write at an offset, sync, rename,
//! sync a directory, read): the algorithms that must survive power loss ([`write_atomic`], the
//! slot writer in [`crate::slot`], the plain boot environment) are written once on top of it and
//! run unchanged against the real file system ([`RealIo`]) and against [`FaultyIo`], an in-memory
//! file system that loses power after the N-th write, sync or rename and then drops everything
//! that was not synced.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt as _, FileTypeExt as _};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// File operations, each of which may fail (and, under [`FaultyIo`], may be the one during which
/// the power goes).
///
/// Writes are not durable until [`Io::sync`]; a new name or a rename is not durable until
/// [`Io::sync_dir`] of its directory.
pub trait Io {
    /// Length of the file, `None` if it does not exist.
    ///
    /// # Errors
    /// OS errors other than "not found".
    fn len(&mut self, path: &Path) -> io::Result<Option<u64>>;

    /// The fixed size of a block device; `None` for a regular file, which can grow.
    ///
    /// # Errors
    /// OS errors, including a missing file.
    fn capacity(&mut self, path: &Path) -> io::Result<Option<u64>>;

    /// Reads at `offset` into `buf`; returns how many bytes were read (0 at the end).
    ///
    /// # Errors
    /// OS errors, including a missing file.
    fn read_at(&mut self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize>;

    /// Creates `path`, or truncates it to zero bytes if it exists.
    ///
    /// # Errors
    /// OS errors.
    fn create(&mut self, path: &Path) -> io::Result<()>;

    /// Writes all of `data` at `offset` of an existing file or device.
    ///
    /// # Errors
    /// OS errors, including a missing file or a write beyond a device's end.
    fn write_at(&mut self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()>;

    /// Makes the file's data durable (`fsync`).
    ///
    /// # Errors
    /// OS errors.
    fn sync(&mut self, path: &Path) -> io::Result<()>;

    /// Renames `from` to `to` atomically, replacing `to`.
    ///
    /// # Errors
    /// OS errors.
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()>;

    /// Makes the directory's entries durable (`fsync` of the directory).
    ///
    /// # Errors
    /// OS errors.
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()>;
}

impl<T: Io + ?Sized> Io for &mut T {
    fn len(&mut self, path: &Path) -> io::Result<Option<u64>> {
        (**self).len(path)
    }
    fn capacity(&mut self, path: &Path) -> io::Result<Option<u64>> {
        (**self).capacity(path)
    }
    fn read_at(&mut self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_at(path, offset, buf)
    }
    fn create(&mut self, path: &Path) -> io::Result<()> {
        (**self).create(path)
    }
    fn write_at(&mut self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        (**self).write_at(path, offset, data)
    }
    fn sync(&mut self, path: &Path) -> io::Result<()> {
        (**self).sync(path)
    }
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        (**self).rename(from, to)
    }
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        (**self).sync_dir(dir)
    }
}

/// Reads a whole small file, refusing one larger than `max` bytes before reading any of it.
/// `Ok(None)` if it does not exist.
///
/// # Errors
/// OS errors; `InvalidData` if the file is larger than `max`.
pub fn read_file(io: &mut dyn Io, path: &Path, max: usize) -> io::Result<Option<Vec<u8>>> {
    let Some(len) = io.len(path)? else {
        return Ok(None);
    };
    let too_large = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes is larger than the {max}-byte cap"),
        )
    };
    let len = usize::try_from(len).map_err(|_| too_large())?;
    if len > max {
        return Err(too_large());
    }
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
        let n = io.read_at(path, u64::try_from(done).unwrap_or(u64::MAX), rest)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(Some(buf))
}

/// The temporary name [`write_atomic`] writes before renaming: `<name>.tmp` beside the target,
/// so that the rename never crosses a file system.
#[must_use]
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Replaces `path` with `data` so that after a power loss at any moment the file holds either
/// the old or the new content, never a mix: write a temporary file, `fsync` it, rename it over
/// the target, `fsync` the directory. Returns only once the new content is durable.
///
/// # Errors
/// OS errors; the target then still holds the old or (if only the directory sync failed) the new
/// content.
pub fn write_atomic(io: &mut dyn Io, path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = temp_path(path);
    io.create(&tmp)?;
    io.write_at(&tmp, 0, data)?;
    io.sync(&tmp)?;
    io.rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    io.sync_dir(dir)
}

/// This process's peak resident set (`VmHWM` in `/proc/self/status`), KiB; `None` where the
/// kernel does not say.
#[must_use]
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
}

/// [`Io`] on the real file system. Keeps files open between calls so that streaming an image
/// into a slot does not reopen the device for every chunk.
#[derive(Debug, Default)]
pub struct RealIo {
    open: HashMap<PathBuf, File>,
}

impl RealIo {
    /// No file open yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn file(&mut self, path: &Path) -> io::Result<&File> {
        if !self.open.contains_key(path) {
            let f = OpenOptions::new().read(true).write(true).open(path)?;
            self.open.insert(path.to_path_buf(), f);
        }
        self.open
            .get(path)
            .ok_or_else(|| io::Error::other("file handle vanished"))
    }
}

impl Io for RealIo {
    fn len(&mut self, path: &Path) -> io::Result<Option<u64>> {
        match std::fs::metadata(path) {
            Ok(m) if m.file_type().is_block_device() => self.capacity(path),
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn capacity(&mut self, path: &Path) -> io::Result<Option<u64>> {
        if !std::fs::metadata(path)?.file_type().is_block_device() {
            return Ok(None);
        }
        let mut f = File::open(path)?;
        io::Seek::seek(&mut f, io::SeekFrom::End(0)).map(Some)
    }

    fn read_at(&mut self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        match self.open.get(path) {
            Some(f) => f.read_at(buf, offset),
            None => File::open(path)?.read_at(buf, offset),
        }
    }

    fn create(&mut self, path: &Path) -> io::Result<()> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        self.open.insert(path.to_path_buf(), f);
        Ok(())
    }

    fn write_at(&mut self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file(path)?.write_all_at(data, offset)
    }

    fn sync(&mut self, path: &Path) -> io::Result<()> {
        self.file(path)?.sync_all()
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)?;
        self.open.remove(from);
        self.open.remove(to);
        Ok(())
    }

    /// The directory, then the whole file system (`syncfs`): on a file system without a
    /// journal (the ext2 data partition the installer makes with busybox) an fsync does not
    /// write the allocation bitmaps, and after a power cut the next allocation can take the
    /// blocks of a file just written (the lifecycle test's power cut once left `state.json`
    /// holding `boot.json`'s bytes). The data partition holds a few small files: cheap.
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        let d = File::open(dir)?;
        d.sync_all()?;
        rustix::fs::syncfs(&d).map_err(io::Error::from)
    }
}

#[derive(Debug, Default, Clone)]
struct Inode {
    /// What reads see now.
    data: Vec<u8>,
    /// What survives a power loss.
    durable: Vec<u8>,
    /// A device's fixed size; `None` for a growable file.
    capacity: Option<u64>,
}

#[derive(Debug, Default)]
struct World {
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    steps: u64,
    cut_after: Option<u64>,
    power_lost: bool,
    writes: u64,
    cuts: u64,
    loss: LossMode,
}

/// What a [`FaultyIo`] power loss does to data written but not yet synced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LossMode {
    /// Lost: the file holds what it held at its last `sync` (the usual worst case).
    #[default]
    DropUnsynced,
    /// Reached the medium anyway (the other legal outcome); directory changes not synced are
    /// still lost.
    KeepWrites,
}

/// An in-memory file system for tests and simulations whose power can be cut.
///
/// Every mutating call (create, write, sync, rename, directory sync) is a *step*. After
/// [`FaultyIo::cut_power_after`]`(n)`, steps `1..=n` succeed and step `n + 1` fails: the power is
/// gone and every later call fails too, until [`FaultyIo::power_cycle`] brings the machine back
/// with only what was durable: file data as of its last `sync`, names as of the last `sync_dir`
/// of their directory. Clones share one file system (the agent's state file, the slots and the
/// boot environment live on the same simulated machine).
#[derive(Debug, Clone, Default)]
pub struct FaultyIo {
    world: Rc<RefCell<World>>,
}

fn power_error() -> io::Error {
    io::Error::other("simulated power loss")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

impl FaultyIo {
    /// An empty file system with the power on and no cut planned.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a durable regular file (set-up, not a step).
    pub fn add_file(&self, path: impl Into<PathBuf>, data: &[u8]) {
        self.add(path.into(), data, None);
    }

    /// Adds a durable block device of `capacity` bytes whose start holds `data` (set-up, not a
    /// step). The rest is zero.
    pub fn add_device(&self, path: impl Into<PathBuf>, data: &[u8], capacity: u64) {
        let mut bytes = data.to_vec();
        bytes.resize(usize::try_from(capacity).unwrap_or(usize::MAX), 0);
        self.add(path.into(), &bytes, Some(capacity));
    }

    fn add(&self, path: PathBuf, data: &[u8], capacity: Option<u64>) {
        let mut w = self.world.borrow_mut();
        let ino = w.inodes.len();
        w.inodes.push(Inode {
            data: data.to_vec(),
            durable: data.to_vec(),
            capacity,
        });
        w.names.insert(path.clone(), ino);
        w.durable_names.insert(path, ino);
    }

    /// Plans a power loss: the next `n` steps succeed, the one after fails.
    pub fn cut_power_after(&self, n: u64) {
        let mut w = self.world.borrow_mut();
        w.cut_after = Some(w.steps.saturating_add(n));
    }

    /// Power off and on again (a crash or a reboot): only the durable state remains. A cut that
    /// has happened is cleared; one still planned stays planned.
    pub fn power_cycle(&self) {
        let mut w = self.world.borrow_mut();
        for inode in &mut w.inodes {
            inode.data = inode.durable.clone();
        }
        w.names = w.durable_names.clone();
        if w.power_lost {
            w.cut_after = None;
        }
        w.power_lost = false;
    }

    /// Whether a planned cut has happened (and the power is still off).
    #[must_use]
    pub fn power_lost(&self) -> bool {
        self.world.borrow().power_lost
    }

    /// Chooses what a power loss does to unsynced data.
    pub fn set_loss_mode(&self, mode: LossMode) {
        self.world.borrow_mut().loss = mode;
    }

    /// How many planned power cuts have happened since creation.
    #[must_use]
    pub fn cuts(&self) -> u64 {
        self.world.borrow().cuts
    }

    /// Steps taken since creation.
    #[must_use]
    pub fn steps(&self) -> u64 {
        self.world.borrow().steps
    }

    /// Number of `write_at` calls that succeeded since creation.
    #[must_use]
    pub fn writes(&self) -> u64 {
        self.world.borrow().writes
    }

    /// What a read of `path` sees now.
    #[must_use]
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let w = self.world.borrow();
        let &ino = w.names.get(path)?;
        w.inodes.get(ino).map(|i| i.data.clone())
    }

    /// What `path` would hold after a power loss now.
    #[must_use]
    pub fn durable_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let w = self.world.borrow();
        let &ino = w.durable_names.get(path)?;
        w.inodes.get(ino).map(|i| i.durable.clone())
    }

    /// Counts a step; fails (and turns the power off) if it is the one planned to fail.
    fn step(&self) -> io::Result<std::cell::RefMut<'_, World>> {
        let mut w = self.world.borrow_mut();
        if w.power_lost {
            return Err(power_error());
        }
        if w.cut_after.is_some_and(|limit| w.steps >= limit) {
            w.power_lost = true;
            w.cuts += 1;
            if w.loss == LossMode::KeepWrites {
                for inode in &mut w.inodes {
                    inode.durable = inode.data.clone();
                }
            }
            return Err(power_error());
        }
        w.steps += 1;
        Ok(w)
    }

    fn powered(&self) -> io::Result<std::cell::Ref<'_, World>> {
        let w = self.world.borrow();
        if w.power_lost {
            return Err(power_error());
        }
        Ok(w)
    }
}

fn inode_mut<'a>(w: &'a mut World, path: &Path) -> io::Result<&'a mut Inode> {
    let &ino = w.names.get(path).ok_or_else(|| not_found(path))?;
    w.inodes.get_mut(ino).ok_or_else(|| not_found(path))
}

impl Io for FaultyIo {
    fn len(&mut self, path: &Path) -> io::Result<Option<u64>> {
        let w = self.powered()?;
        Ok(w.names
            .get(path)
            .and_then(|&ino| w.inodes.get(ino))
            .map(|i| u64::try_from(i.data.len()).unwrap_or(u64::MAX)))
    }

    fn capacity(&mut self, path: &Path) -> io::Result<Option<u64>> {
        let w = self.powered()?;
        let &ino = w.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(w.inodes.get(ino).and_then(|i| i.capacity))
    }

    fn read_at(&mut self, path: &Path, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let w = self.powered()?;
        let &ino = w.names.get(path).ok_or_else(|| not_found(path))?;
        let data = w.inodes.get(ino).map_or(&[][..], |i| &i.data[..]);
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let src = data.get(start..).unwrap_or_default();
        let n = src.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), src.get(..n)) {
            dst.copy_from_slice(src);
        }
        Ok(n)
    }

    fn create(&mut self, path: &Path) -> io::Result<()> {
        let mut w = self.step()?;
        if let Some(&ino) = w.names.get(path) {
            if let Some(i) = w.inodes.get_mut(ino) {
                i.data.clear();
            }
            return Ok(());
        }
        let ino = w.inodes.len();
        w.inodes.push(Inode::default());
        w.names.insert(path.to_path_buf(), ino);
        Ok(())
    }

    fn write_at(&mut self, path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut w = self.step()?;
        let inode = inode_mut(&mut w, path)?;
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::other("offset overflow"))?;
        if inode.capacity.is_some_and(|cap| end > cap) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "write beyond the end of the device",
            ));
        }
        let (start, end) = (
            usize::try_from(offset).map_err(|_| io::Error::other("offset too large"))?,
            usize::try_from(end).map_err(|_| io::Error::other("offset too large"))?,
        );
        if inode.data.len() < end {
            inode.data.resize(end, 0);
        }
        if let Some(dst) = inode.data.get_mut(start..end) {
            dst.copy_from_slice(data);
        }
        w.writes += 1;
        Ok(())
    }

    fn sync(&mut self, path: &Path) -> io::Result<()> {
        let mut w = self.step()?;
        let inode = inode_mut(&mut w, path)?;
        inode.durable = inode.data.clone();
        Ok(())
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        let mut w = self.step()?;
        let ino = w.names.remove(from).ok_or_else(|| not_found(from))?;
        w.names.insert(to.to_path_buf(), ino);
        Ok(())
    }

    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        let mut w = self.step()?;
        let in_dir = |p: &Path| p.parent() == Some(dir);
        let current: Vec<(PathBuf, usize)> = w
            .names
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        w.durable_names.retain(|p, _| !in_dir(p));
        w.durable_names.extend(current);
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn peak_rss_of_this_process() {
        let k = peak_rss_kib().expect("Linux reports VmHWM");
        assert!(k > 100, "{k} KiB");
    }

    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn unsynced_data_and_names_are_lost() {
        let mut io = FaultyIo::new();
        io.add_file("/d/f", b"old");
        io.write_at(&p("/d/f"), 0, b"new").unwrap();
        io.create(&p("/d/g")).unwrap();
        io.write_at(&p("/d/g"), 0, b"g").unwrap();
        io.sync(&p("/d/g")).unwrap();
        io.power_cycle();
        assert_eq!(io.contents(&p("/d/f")).unwrap(), b"old");
        assert_eq!(
            io.contents(&p("/d/g")),
            None,
            "name not durable without sync_dir"
        );
    }

    #[test]
    fn cut_after_n_steps() {
        let mut io = FaultyIo::new();
        io.add_file("/d/f", b"");
        io.cut_power_after(2);
        io.write_at(&p("/d/f"), 0, b"a").unwrap();
        io.sync(&p("/d/f")).unwrap();
        assert!(io.write_at(&p("/d/f"), 1, b"b").is_err());
        assert!(io.power_lost());
        assert!(
            io.len(&p("/d/f")).is_err(),
            "everything fails without power"
        );
        io.power_cycle();
        assert_eq!(io.contents(&p("/d/f")).unwrap(), b"a");
    }

    #[test]
    fn keep_writes_mode_keeps_data_not_names() {
        let mut io = FaultyIo::new();
        io.set_loss_mode(LossMode::KeepWrites);
        io.add_file("/d/f", b"old");
        io.cut_power_after(2);
        io.write_at(&p("/d/f"), 0, b"new").unwrap();
        io.create(&p("/d/g")).unwrap();
        assert!(io.sync_dir(&p("/d")).is_err());
        io.power_cycle();
        assert_eq!(io.contents(&p("/d/f")).unwrap(), b"new");
        assert_eq!(io.contents(&p("/d/g")), None);
    }

    #[test]
    fn write_atomic_is_old_or_new_at_every_cut() {
        let path = p("/state/agent.json");
        for mode in [LossMode::DropUnsynced, LossMode::KeepWrites] {
            check_write_atomic(&path, mode, 10);
        }
    }

    fn check_write_atomic(path: &Path, mode: LossMode, cuts: u64) {
        let path = path.to_path_buf();
        let mut total = None;
        for n in 0..cuts {
            let mut io = FaultyIo::new();
            io.set_loss_mode(mode);
            io.add_file("/state/agent.json", b"old");
            io.cut_power_after(n);
            let result = write_atomic(&mut io, &path, b"new content");
            io.power_cycle();
            let got = io.contents(&path).unwrap();
            assert!(got == b"old" || got == b"new content", "cut {n}: {got:?}");
            if result.is_ok() {
                assert_eq!(got, b"new content", "cut {n}: returned Ok but not durable");
                total.get_or_insert(n);
            }
        }
        assert_eq!(total, Some(5), "create, write, sync, rename, sync_dir");
    }

    #[test]
    fn devices_have_a_fixed_size() {
        let mut io = FaultyIo::new();
        io.add_device("/dev/b", b"xy", 4);
        assert_eq!(io.capacity(&p("/dev/b")).unwrap(), Some(4));
        io.write_at(&p("/dev/b"), 2, b"zz").unwrap();
        assert!(io.write_at(&p("/dev/b"), 3, b"zz").is_err());
        assert_eq!(io.contents(&p("/dev/b")).unwrap(), b"xyzz");
    }

    #[test]
    fn read_file_caps_size() {
        let mut io = FaultyIo::new();
        io.add_file("/f", &[7; 100]);
        assert_eq!(
            read_file(&mut io, &p("/f"), 100).unwrap().unwrap().len(),
            100
        );
        assert!(read_file(&mut io, &p("/f"), 99).is_err());
        assert_eq!(read_file(&mut io, &p("/nope"), 99).unwrap(), None);
    }

    #[test]
    fn real_io_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let mut io = RealIo::new();
        write_atomic(&mut io, &path, b"one").unwrap();
        write_atomic(&mut io, &path, b"two!").unwrap();
        assert_eq!(read_file(&mut io, &path, 10).unwrap().unwrap(), b"two!");
        assert!(!temp_path(&path).exists());
        assert_eq!(io.capacity(&path).unwrap(), None);
    }
}
