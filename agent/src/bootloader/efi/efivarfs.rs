//! UEFI variables through efivarfs (`/sys/firmware/efi/efivars`).
//!
//! Each variable is a file `<Name>-<vendor GUID>` whose content is the 4-byte attributes
//! (u32 LE) followed by the data. The kernel turns one `write(2)` of attributes + data into one
//! `SetVariable()` call, which the firmware performs atomically (fault-tolerant write), so a
//! write must be a single system call and there is no temp file + rename (efivarfs has no
//! rename). Most variables are created immutable (`chattr +i`) by the kernel to protect them
//! from `rm -rf`; writing or deleting one first clears that flag with `FS_IOC_SETFLAGS`
//! ([`clear_immutable`]).
//!
//! The directory is a parameter, so tests run the same code over a temporary directory of
//! fixture files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

/// Where Linux mounts efivarfs.
pub const EFIVARFS: &str = "/sys/firmware/efi/efivars";
/// `EFI_GLOBAL_VARIABLE`: the vendor GUID of `Boot####`, `BootOrder`, `BootNext`,
/// `BootCurrent`.
pub const EFI_GLOBAL_VARIABLE: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// `EFI_VARIABLE_NON_VOLATILE`.
pub const NON_VOLATILE: u32 = 0x1;
/// `EFI_VARIABLE_BOOTSERVICE_ACCESS`.
pub const BOOTSERVICE_ACCESS: u32 = 0x2;
/// `EFI_VARIABLE_RUNTIME_ACCESS`.
pub const RUNTIME_ACCESS: u32 = 0x4;
/// NV | BS | RT: what the boot manager variables carry.
pub const BOOT_VAR_ATTRIBUTES: u32 = NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS;
/// Largest variable file read (attributes + data), checked before reading.
pub const MAX_VARIABLE_LEN: usize = 4 + 64 * 1024;
/// Size of the attributes prefix.
pub const ATTRIBUTES_LEN: usize = 4;

/// A variable file that is not attributes + data, or data of the wrong shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VariableError {
    /// Shorter than the attributes prefix.
    #[error("{len} bytes is shorter than the 4-byte attributes prefix")]
    Truncated {
        /// Size.
        len: usize,
    },
    /// Larger than [`MAX_VARIABLE_LEN`].
    #[error("{len} bytes is larger than the {max}-byte cap")]
    TooLarge {
        /// Size (or the cap + 1 when the file kept growing).
        len: usize,
        /// The cap.
        max: usize,
    },
    /// Data that must be a u16 (or a list of them) has the wrong length.
    #[error("{len} bytes of data is not {what}")]
    BadLength {
        /// Data length.
        len: usize,
        /// What was expected.
        what: &'static str,
    },
}

/// One UEFI variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// `EFI_VARIABLE_*` bits.
    pub attributes: u32,
    /// The value.
    pub data: Vec<u8>,
}

impl Variable {
    /// A boot manager variable (NV|BS|RT) holding `data`.
    #[must_use]
    pub fn boot(data: Vec<u8>) -> Self {
        Self {
            attributes: BOOT_VAR_ATTRIBUTES,
            data,
        }
    }

    /// The data as one u16 LE (`BootNext`, `BootCurrent`).
    ///
    /// # Errors
    /// [`VariableError::BadLength`] unless the data is 2 bytes.
    pub fn as_u16(&self) -> Result<u16, VariableError> {
        match self.data.as_slice() {
            &[lo, hi] => Ok(u16::from_le_bytes([lo, hi])),
            other => Err(VariableError::BadLength {
                len: other.len(),
                what: "one u16",
            }),
        }
    }

    /// The data as a list of u16 LE (`BootOrder`).
    ///
    /// # Errors
    /// [`VariableError::BadLength`] for an odd length.
    pub fn as_u16_list(&self) -> Result<Vec<u16>, VariableError> {
        if !self.data.len().is_multiple_of(2) {
            return Err(VariableError::BadLength {
                len: self.data.len(),
                what: "a list of u16",
            });
        }
        Ok(self
            .data
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect())
    }

    /// Data from a list of u16 LE.
    #[must_use]
    pub fn u16_data(values: &[u16]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

/// Splits an efivarfs file into attributes and data.
///
/// # Errors
/// [`VariableError`] for a file shorter than 4 bytes or above the cap.
pub fn parse_variable(file: &[u8]) -> Result<Variable, VariableError> {
    if file.len() > MAX_VARIABLE_LEN {
        return Err(VariableError::TooLarge {
            len: file.len(),
            max: MAX_VARIABLE_LEN,
        });
    }
    let (attr, data) = file
        .split_first_chunk::<ATTRIBUTES_LEN>()
        .ok_or(VariableError::Truncated { len: file.len() })?;
    Ok(Variable {
        attributes: u32::from_le_bytes(*attr),
        data: data.to_vec(),
    })
}

/// The efivarfs file content of `var`.
#[must_use]
pub fn encode_variable(var: &Variable) -> Vec<u8> {
    let mut out = Vec::with_capacity(ATTRIBUTES_LEN + var.data.len());
    out.extend_from_slice(&var.attributes.to_le_bytes());
    out.extend_from_slice(&var.data);
    out
}

/// `Boot0001` for entry 1 (four upper-case hex digits, as the UEFI spec requires).
#[must_use]
pub fn boot_entry_name(n: u16) -> String {
    format!("Boot{n:04X}")
}

/// The entry number of a `Boot####-<global GUID>` file name.
#[must_use]
pub fn parse_boot_entry_file_name(name: &str) -> Option<u16> {
    let rest = name.strip_prefix("Boot")?;
    let (hex, guid) = rest.split_at_checked(4)?;
    if guid.strip_prefix('-')? != EFI_GLOBAL_VARIABLE
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        return None;
    }
    u16::from_str_radix(hex, 16).ok()
}

/// efivarfs could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EfivarfsError {
    /// The directory does not exist: not booted through UEFI, or efivarfs not mounted.
    #[error(
        "{path}: not a directory; boot in UEFI mode and mount efivarfs \
         (mount -t efivarfs efivarfs {EFIVARFS})"
    )]
    NotMounted {
        /// The directory.
        path: PathBuf,
    },
    /// An operating-system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The variable file is malformed.
    #[error("{path}: {source}")]
    Variable {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: VariableError,
    },
    /// The kernel accepted fewer bytes than the variable (a variable is one write).
    #[error("{path}: short write ({written} of {len} bytes)")]
    ShortWrite {
        /// The file.
        path: PathBuf,
        /// Bytes written.
        written: usize,
        /// Bytes asked.
        len: usize,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> EfivarfsError + 'a {
    move |source| EfivarfsError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Clears the immutable flag (`chattr -i`) of `path` if it is set.
///
/// efivarfs marks most variables immutable; `FS_IOC_SETFLAGS` without `FS_IMMUTABLE_FL` lets
/// the next write or unlink through (it needs `CAP_LINUX_IMMUTABLE`, which the agent has as
/// root). File systems without inode flags (`ENOTTY`, `EINVAL`, `EOPNOTSUPP`) have nothing to
/// clear. An ioctl rather than running `chattr`: minimal images may not ship e2fsprogs, and
/// busybox's `chattr` is optional.
///
/// # Errors
/// OS errors of the open or the ioctls.
pub fn clear_immutable(path: &Path) -> io::Result<()> {
    /// `FS_IMMUTABLE_FL` from `<linux/fs.h>`.
    const FS_IMMUTABLE_FL: std::ffi::c_int = 0x0000_0010;
    let file = File::open(path)?;
    match get_flags(&file)? {
        Some(flags) if flags & FS_IMMUTABLE_FL != 0 => set_flags(&file, flags & !FS_IMMUTABLE_FL),
        _ => Ok(()),
    }
}

/// `_IOC(dir, 'f', nr, sizeof(long))` for the generic ioctl encoding (x86, arm, riscv).
const fn fs_ioc(dir: std::ffi::c_ulong, nr: std::ffi::c_ulong) -> std::ffi::c_ulong {
    let size = std::mem::size_of::<std::ffi::c_long>() as std::ffi::c_ulong;
    (dir << 30) | (size << 16) | ((b'f' as std::ffi::c_ulong) << 8) | nr
}
/// `FS_IOC_GETFLAGS` = `_IOR('f', 1, long)`.
const FS_IOC_GETFLAGS: std::ffi::c_ulong = fs_ioc(2, 1);
/// `FS_IOC_SETFLAGS` = `_IOW('f', 2, long)`.
const FS_IOC_SETFLAGS: std::ffi::c_ulong = fs_ioc(1, 2);

fn get_flags(file: &File) -> io::Result<Option<std::ffi::c_int>> {
    let mut flags: std::ffi::c_int = 0;
    match flags_ioctl(file, FS_IOC_GETFLAGS, &mut flags) {
        Ok(()) => Ok(Some(flags)),
        Err(e) if matches!(e.raw_os_error(), Some(25 | 22 | 95)) => Ok(None), // ENOTTY, EINVAL, EOPNOTSUPP
        Err(e) => Err(e),
    }
}

fn set_flags(file: &File, flags: std::ffi::c_int) -> io::Result<()> {
    let mut flags = flags;
    flags_ioctl(file, FS_IOC_SETFLAGS, &mut flags)
}

/// The one `unsafe` call of the agent: `ioctl(fd, FS_IOC_{GET,SET}FLAGS, &int)`.
///
/// The kernel reads/writes an `int` through the pointer for both requests (despite the
/// `long` in the request encoding).
#[allow(unsafe_code)]
fn flags_ioctl(
    file: &File,
    request: std::ffi::c_ulong,
    flags: &mut std::ffi::c_int,
) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: `ioctl` is the C library's (std links it on Linux), declared with its real
    // variadic signature (musl's `int request` is passed in the same register).
    unsafe extern "C" {
        fn ioctl(fd: std::ffi::c_int, request: std::ffi::c_ulong, ...) -> std::ffi::c_int;
    }
    // SAFETY: `file` keeps the descriptor open for the call; `flags` is a valid, exclusively
    // borrowed `int` that outlives the call, which is all FS_IOC_GETFLAGS / FS_IOC_SETFLAGS
    // read or write.
    let rc = unsafe { ioctl(file.as_raw_fd(), request, std::ptr::from_mut(flags)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Variables of one efivarfs directory.
#[derive(Debug, Clone)]
pub struct Efivarfs {
    dir: PathBuf,
}

impl Efivarfs {
    /// Opens `dir` (normally [`EFIVARFS`]) after checking that it is a directory.
    ///
    /// # Errors
    /// [`EfivarfsError::NotMounted`] otherwise.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, EfivarfsError> {
        let dir = dir.into();
        if !dir.is_dir() {
            return Err(EfivarfsError::NotMounted { path: dir });
        }
        Ok(Self { dir })
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of the global variable `name` (e.g. `BootOrder`).
    #[must_use]
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-{EFI_GLOBAL_VARIABLE}"))
    }

    /// Reads the global variable `name`; `None` if it does not exist.
    ///
    /// # Errors
    /// I/O errors, or a file that is not attributes + data within the cap.
    pub fn read(&self, name: &str) -> Result<Option<Variable>, EfivarfsError> {
        let path = self.path(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let mut buf = Vec::new();
        file.take(MAX_VARIABLE_LEN as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(io_err("read", &path))?;
        parse_variable(&buf)
            .map(Some)
            .map_err(|source| EfivarfsError::Variable { path, source })
    }

    /// Creates or replaces the global variable `name` with one `write(2)`.
    ///
    /// # Errors
    /// I/O errors (including the firmware refusing the variable), or a short write.
    pub fn write(&self, name: &str, var: &Variable) -> Result<(), EfivarfsError> {
        let path = self.path(name);
        if path.exists() {
            clear_immutable(&path).map_err(io_err("clear immutable flag of", &path))?;
        }
        let bytes = encode_variable(var);
        // No O_TRUNC: on efivarfs the single write replaces the whole variable.
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open for writing", &path))?;
        let written = file.write(&bytes).map_err(io_err("write", &path))?;
        if written != bytes.len() {
            return Err(EfivarfsError::ShortWrite {
                path,
                written,
                len: bytes.len(),
            });
        }
        // efivarfs sizes the file to the new variable itself; a plain file (tests) keeps a
        // longer old tail unless cut here.
        let len = bytes.len() as u64;
        if file.metadata().map_err(io_err("stat", &path))?.len() != len {
            file.set_len(len).map_err(io_err("truncate", &path))?;
        }
        Ok(())
    }

    /// Deletes the global variable `name`; `false` if it did not exist.
    ///
    /// # Errors
    /// I/O errors.
    pub fn delete(&self, name: &str) -> Result<bool, EfivarfsError> {
        let path = self.path(name);
        match clear_immutable(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("clear immutable flag of", &path)(e)),
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("delete", &path)(e)),
        }
    }

    /// The numbers of all `Boot####` variables, sorted; at most `max` of them.
    ///
    /// # Errors
    /// I/O errors; more than `max` entries is an `InvalidData` I/O error.
    pub fn boot_entries(&self, max: usize) -> Result<Vec<u16>, EfivarfsError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err("list", &self.dir))? {
            let entry = entry.map_err(io_err("list", &self.dir))?;
            let Some(n) = entry
                .file_name()
                .to_str()
                .and_then(parse_boot_entry_file_name)
            else {
                continue;
            };
            if out.len() == max {
                return Err(io_err("list", &self.dir)(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("more than {max} Boot#### variables"),
                )));
            }
            out.push(n);
        }
        out.sort_unstable();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux() {
        if std::mem::size_of::<std::ffi::c_long>() == 8 {
            assert_eq!(FS_IOC_GETFLAGS, 0x8008_6601);
            assert_eq!(FS_IOC_SETFLAGS, 0x4008_6602);
        } else {
            assert_eq!(FS_IOC_GETFLAGS, 0x8004_6601);
            assert_eq!(FS_IOC_SETFLAGS, 0x4004_6602);
        }
    }

    #[test]
    fn variable_codec() {
        let file = [7, 0, 0, 0, 1, 0, 0, 0];
        let v = parse_variable(&file).unwrap();
        assert_eq!(v.attributes, BOOT_VAR_ATTRIBUTES);
        assert_eq!(v.as_u16_list().unwrap(), vec![1, 0]);
        assert!(v.as_u16().is_err());
        assert_eq!(encode_variable(&v), file);
        assert!(matches!(
            parse_variable(&[7, 0, 0]),
            Err(VariableError::Truncated { len: 3 })
        ));
        assert!(parse_variable(&vec![0; MAX_VARIABLE_LEN + 1]).is_err());
        assert!(Variable::boot(vec![1, 2, 3]).as_u16_list().is_err());
        assert_eq!(Variable::u16_data(&[0x1234, 1]), [0x34, 0x12, 1, 0]);
    }

    #[test]
    fn entry_names() {
        assert_eq!(boot_entry_name(0x1a), "Boot001A");
        let g = EFI_GLOBAL_VARIABLE;
        assert_eq!(
            parse_boot_entry_file_name(&format!("Boot001A-{g}")),
            Some(0x1a)
        );
        for bad in [
            format!("Boot001a-{g}"),
            format!("Boot01A-{g}"),
            format!("BootOrder-{g}"),
            format!("Boot0001-{}", "00000000-0000-0000-0000-000000000000"),
            "Boot0001".to_owned(),
        ] {
            assert_eq!(parse_boot_entry_file_name(&bad), None, "{bad}");
        }
    }

    #[test]
    fn read_write_delete_in_a_plain_directory() {
        let dir = tempfile::tempdir().unwrap();
        let vars = Efivarfs::open(dir.path()).unwrap();
        assert_eq!(vars.read("BootNext").unwrap(), None);
        vars.write("BootOrder", &Variable::boot(Variable::u16_data(&[1, 2, 3])))
            .unwrap();
        vars.write("BootOrder", &Variable::boot(Variable::u16_data(&[2])))
            .unwrap();
        assert_eq!(
            fs::read(vars.path("BootOrder")).unwrap(),
            [7, 0, 0, 0, 2, 0],
            "a shorter value leaves no old tail"
        );
        assert!(vars.delete("BootOrder").unwrap());
        assert!(!vars.delete("BootOrder").unwrap());
        assert!(matches!(
            Efivarfs::open(dir.path().join("nope")),
            Err(EfivarfsError::NotMounted { .. })
        ));
        fs::write(vars.path("Boot0003"), [1]).unwrap();
        assert!(matches!(
            vars.read("Boot0003"),
            Err(EfivarfsError::Variable { .. })
        ));
        fs::write(dir.path().join("Boot0001-x"), [1]).unwrap();
        assert_eq!(vars.boot_entries(10).unwrap(), vec![3]);
        assert!(vars.boot_entries(0).is_err());
    }

    #[test]
    fn clear_immutable_is_a_no_op_on_a_mutable_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("v");
        fs::write(&f, b"x").unwrap();
        clear_immutable(&f).unwrap();
        assert!(clear_immutable(&dir.path().join("missing")).is_err());
    }

    /// Needs root (CAP_LINUX_IMMUTABLE), `chattr`, and a file system with inode flags
    /// (ext4, or tmpfs on Linux >= 6.0): `cargo test -p tugboot-agent -- --ignored immutable`.
    #[test]
    #[ignore = "root: chattr +i"]
    fn immutable_variables_are_written_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let vars = Efivarfs::open(dir.path()).unwrap();
        vars.write("BootNext", &Variable::boot(vec![1, 0])).unwrap();
        let path = vars.path("BootNext");
        let st = std::process::Command::new("chattr")
            .arg("+i")
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success(), "chattr +i failed");
        assert!(fs::OpenOptions::new().write(true).open(&path).is_err());
        vars.write("BootNext", &Variable::boot(vec![2, 0])).unwrap();
        assert_eq!(vars.read("BootNext").unwrap().unwrap().as_u16().unwrap(), 2);
        std::process::Command::new("chattr")
            .arg("+i")
            .arg(&path)
            .status()
            .unwrap();
        assert!(vars.delete("BootNext").unwrap());
    }
}
