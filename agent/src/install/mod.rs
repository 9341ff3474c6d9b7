//! `tugboot-agent install-disk`: a netbooted installer makes a machine's disk bootable on its
//! own (`docs/agent.md`, "Installer mode").
//!
//! Steps, each printed as it happens (`tugboot-agent install: …`), any failure ending the run
//! with one line saying why:
//!
//! 1. check the disk: a whole block device, not in use, big enough for the layout, holding no
//!    partition table or file system in its first and last MiBs ([`probe`]) unless `--wipe`
//!    (a table that is exactly this installer's own layout is an unfinished install, written
//!    again: the server only sends a machine here until it reported `installed`);
//! 2. write a GPT ([`gpt`]: ESP, A, B, data; random GUIDs), have the kernel read it
//!    (`blockdev --rereadpt`) and check its partitions against the layout;
//! 3. format the data partition (ext2, label `tugboot-data`) and mount it; copy the trust root
//!    and the server's CA there; enroll (key and certificate on the data partition);
//! 4. ask the server what to install, verify the manifest (trust root, floor 0, board,
//!    expiry), stream its `slot` artifact into slot A through the verifier, sync, read back;
//! 5. GRUB boards: write the ESP image into partition 1 (read back too) and the GRUB
//!    environment (`tugboot_slot=A`) on the data partition; U-Boot boards: format partition 1
//!    FAT, copy the boot script, slot A's kernel and initrd (`A/`) and the U-Boot environment
//!    (`uboot.env`, `tugboot_slot=A`) to it;
//! 6. write the state (committed A, floor = version) and the installed agent's configuration;
//! 7. UEFI boards: a `Boot####` entry for the ESP's loader, first in `BootOrder`;
//! 8. report `installed` to the server, which must acknowledge it (2xx); unmount, sync.
//!
//! Nothing but `install.disk` (and its partitions, and efivarfs) is written.
//! The sans-IO parts (layout, table bytes, the probe, the boot entry's plan, the installed
//! configuration) are unit-tested; the whole command runs in a root test against a loop
//! device and the real device API (`agent/tests/install_disk.rs`).

pub mod bios;
pub mod fuzzing;
pub mod gpt;
pub mod probe;

use std::fs::{File, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::{FileExt as _, FileTypeExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tugboot_firmware::{MAX_MANIFEST_BYTES, MAX_ROOT_BYTES, Policy, Sha256Digest, Timestamp};
use tugboot_wire::{DeviceReport, Outcome, Rejection};

use crate::bootloader::efi::{EfiError, Efivarfs, entry};
use crate::bootloader::grub::GrubEnvFile;
use crate::bootloader::uboot::{EnvConfig, EnvDevice, UbootEnvFile};
use crate::bootloader::{BootEnvError, Slot, Vars};
use crate::config::installer::{BootSide, UBOOT_ENV_FILE, UBOOT_ENV_SIZE, UBOOT_SCRIPT_FILE};
use crate::config::{ConfigError, DeviceConfig, InstallerConfig, partition_path, read_capped};
use crate::io::{RealIo, write_atomic};
use crate::net::client::{MAX_PEM_BYTES, Timeouts};
use crate::net::daemon::{BootContext, CHUNK, Daemon, DaemonError, load_root};
use crate::net::enroll::{EnrollStep, pending_backoff};
use crate::net::{HttpClient, NetError, ResumableDownload, TlsIdentity};
use crate::slot::{self, SlotError};
use crate::update::state::clip;
use crate::update::{AgentState, Image, UpdateError, image_of, kernels};

/// How long the kernel may take to show the new partitions.
const PARTITION_WAIT: Duration = Duration::from_secs(10);
/// Longest wait between two enrollment attempts while the operator has not approved.
const MAX_PENDING_WAIT: Duration = Duration::from_secs(60);
/// `O_EXCL` (Linux, all architectures the agent is built for): on a block device, fails with
/// `EBUSY` while a partition is mounted or the device is held (device mapper, md, swap).
const O_EXCL: i32 = 0o200;

/// The installation failed; the disk may be half-written (run the installer again with
/// `--wipe`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InstallDiskError {
    /// The configuration is unusable.
    #[error("config: {0}")]
    Config(#[from] ConfigError),
    /// The disk cannot be used as it is.
    #[error("{disk}: {reason}")]
    Disk {
        /// The disk.
        disk: PathBuf,
        /// Why.
        reason: String,
    },
    /// The disk already holds data and `--wipe` was not given.
    #[error(
        "{disk} already holds data: {found}; nothing was written (run install-disk --wipe to \
         erase the whole disk)"
    )]
    HoldsData {
        /// The disk.
        disk: PathBuf,
        /// What was found.
        found: String,
    },
    /// The layout does not fit.
    #[error("{disk}: {source}")]
    Layout {
        /// The disk.
        disk: PathBuf,
        /// Why.
        source: gpt::GptError,
    },
    /// A file or device operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A command (busybox applet) failed.
    #[error("{command}: {reason}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status and the last line it printed.
        reason: String,
    },
    /// Enrollment, or the trust root or report queue it needs.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// Talking to the server failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The server has nothing for this machine.
    #[error(
        "the server assigns nothing to this machine ({0}/api/v1/device/assignment answered 204): \
         give it an install profile or a rollout"
    )]
    NothingAssigned(String),
    /// The manifest was refused (reported to the server as `rejected`).
    #[error("manifest {url} rejected ({code}): {reason}")]
    Manifest {
        /// Where it came from.
        url: String,
        /// The firmware crate's code.
        code: String,
        /// Why.
        reason: String,
    },
    /// The slot or ESP write failed (the artifact's failures are reported as `failed`).
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// Writing the GRUB environment failed.
    #[error("grubenv: {0}")]
    Grubenv(#[from] BootEnvError),
    /// Creating the boot entry failed.
    #[error("EFI boot entry: {0}")]
    Efi(#[from] EfiError),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallDiskError {
    let path = path.to_path_buf();
    move |source| InstallDiskError::Io { op, path, source }
}

fn disk_err(disk: &Path, reason: impl Into<String>) -> InstallDiskError {
    InstallDiskError::Disk {
        disk: disk.to_path_buf(),
        reason: reason.into(),
    }
}

/// What was installed.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The device id the server gave at enrollment.
    pub device_id: i64,
    /// The image in slot A.
    pub image: Image,
    /// The partition table written.
    pub layout: gpt::Layout,
    /// The `Boot####` entry made, if any.
    pub boot_entry: Option<u16>,
}

/// One step's line on stderr: `tugboot-agent install: …`.
macro_rules! say {
    ($($arg:tt)*) => {
        eprintln!("tugboot-agent install: {}", format_args!($($arg)*))
    };
}

/// Runs `argv`; a failure carries its status and the last line of its output.
fn run(argv: &[String]) -> Result<(), InstallDiskError> {
    let command = argv.join(" ");
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| InstallDiskError::Command {
            command: command.clone(),
            reason: "empty command".into(),
        })?;
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| InstallDiskError::Command {
            command: command.clone(),
            reason: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Err(InstallDiskError::Command {
        command,
        reason: clip(&format!("{}: {}", out.status, last.trim())),
    })
}

fn busybox(config: &InstallerConfig, args: &[&str]) -> Vec<String> {
    std::iter::once(config.busybox.as_str())
        .chain(args.iter().copied())
        .map(str::to_owned)
        .collect()
}

/// Mount points from `/proc/mounts` (octal escapes decoded) with their sources.
fn mounts() -> Vec<(String, PathBuf)> {
    let text = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let unescape = |s: &str| {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('\\') {
            out.push_str(rest.get(..i).unwrap_or_default());
            let code = rest
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok());
            match code {
                Some(c) => {
                    out.push(char::from(c));
                    rest = rest.get(i + 4..).unwrap_or_default();
                }
                None => {
                    out.push('\\');
                    rest = rest.get(i + 1..).unwrap_or_default();
                }
            }
        }
        out.push_str(rest);
        out
    };
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            Some((unescape(f.next()?), PathBuf::from(unescape(f.next()?))))
        })
        .collect()
}

/// Whether `dev` is `disk` or one of its partitions.
fn on_disk(dev: &str, disk: &str) -> bool {
    dev.strip_prefix(disk).is_some_and(|rest| {
        let digits = rest.strip_prefix('p').unwrap_or(rest);
        rest.is_empty() || (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// The disk, checked and open.
struct Disk {
    path: PathBuf,
    /// The kernel's name (`vda`, `loop3`).
    name: String,
    file: File,
    bytes: u64,
    sector_size: u64,
}

impl Disk {
    /// Opens `path` exclusively after checking it is a whole disk no one uses.
    fn open(path: &Path) -> Result<Self, InstallDiskError> {
        let meta = std::fs::metadata(path).map_err(io_err("stat", path))?;
        if !meta.file_type().is_block_device() {
            return Err(disk_err(path, "not a block device"));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sys = Path::new("/sys/class/block").join(&name);
        if sys.join("partition").exists() {
            return Err(disk_err(path, "is a partition; give the whole disk"));
        }
        let disk_text = path.to_string_lossy();
        if let Some((dev, at)) = mounts().into_iter().find(|(d, _)| on_disk(d, &disk_text)) {
            return Err(disk_err(
                path,
                format!("in use: {dev} is mounted on {}", at.display()),
            ));
        }
        let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
        if let Some(dev) = swaps
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .find(|d| on_disk(d, &disk_text))
        {
            return Err(disk_err(path, format!("in use: {dev} is swap")));
        }
        if std::fs::read_dir(sys.join("holders")).is_ok_and(|mut d| d.next().is_some()) {
            return Err(disk_err(
                path,
                "in use: held by another device (device mapper, md, …)",
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(O_EXCL)
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(16) {
                    disk_err(path, "in use (EBUSY): a partition is mounted or held")
                } else {
                    io_err("open", path)(e)
                }
            })?;
        let bytes = std::io::Seek::seek(&mut &file, std::io::SeekFrom::End(0))
            .map_err(io_err("size", path))?;
        let sector_size = std::fs::read_to_string(sys.join("queue/logical_block_size"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(512);
        Ok(Self {
            path: path.to_path_buf(),
            name,
            file,
            bytes,
            sector_size,
        })
    }

    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, InstallDiskError> {
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(io_err("read", &self.path))?;
        Ok(buf)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), InstallDiskError> {
        self.file
            .write_all_at(data, offset)
            .map_err(io_err("write", &self.path))
    }

    /// Zeroes `len` bytes at `offset`, a MiB at a time.
    fn zero(&self, offset: u64, len: u64) -> Result<(), InstallDiskError> {
        let chunk = vec![0u8; usize::try_from(gpt::MIB).unwrap_or(1 << 20)];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(gpt::MIB);
            self.write(
                offset + done,
                chunk
                    .get(..usize::try_from(n).unwrap_or(0))
                    .unwrap_or_default(),
            )?;
            done += n;
        }
        Ok(())
    }
}

/// 16 random bytes per GUID, from the kernel.
fn random_guids() -> Result<[gpt::Guid; 5], InstallDiskError> {
    let path = Path::new("/dev/urandom");
    let mut bytes = [0u8; 80];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io_err("read", path))?;
    let mut out = [gpt::Guid::default(); 5];
    for (g, chunk) in out.iter_mut().zip(bytes.chunks_exact(16)) {
        let mut b = [0u8; 16];
        b.copy_from_slice(chunk);
        *g = gpt::Guid::random(b);
    }
    Ok(out)
}

/// Writes the table: the first MiB (protective MBR, primary table, zeros), the first MiB of
/// each partition zeroed (no stale signature survives inside them), the disk's last MiB
/// (zeros, then the backup table), synced.
fn write_table(disk: &Disk, layout: &gpt::Layout) -> Result<(), InstallDiskError> {
    let ss = layout.sector_size;
    let mut head = layout.primary();
    let first = layout
        .partitions
        .first()
        .map_or(gpt::MIB, |p| p.first_lba * ss);
    head.resize(usize::try_from(first).unwrap_or(0), 0);
    for p in &layout.partitions {
        disk.zero(p.first_lba * ss, (p.sectors() * ss).min(gpt::MIB))?;
    }
    let (backup_at, backup) = layout.backup();
    let end = layout
        .partitions
        .last()
        .map_or(0, |p| (p.last_lba + 1) * ss);
    let tail_from = end.max(disk.bytes.saturating_sub(gpt::MIB));
    disk.zero(tail_from, backup_at.saturating_sub(tail_from))?;
    disk.write(backup_at, &backup)?;
    // The primary last: a table is only there once everything it describes is in place.
    disk.write(0, &head)?;
    disk.file.sync_all().map_err(io_err("fsync", &disk.path))
}

/// Has the kernel read the new table (`reread_command`, by default `blockdev --rereadpt`),
/// then waits until each partition shows in sysfs and `/dev` and checks its start and size.
fn load_partitions(
    config: &InstallerConfig,
    disk: &Path,
    disk_name: &str,
    layout: &gpt::Layout,
) -> Result<Vec<PathBuf>, InstallDiskError> {
    let disk_text = disk.to_string_lossy();
    let argv: Vec<String> = config
        .reread_command
        .iter()
        .map(|a| a.replace("{disk}", &disk_text))
        .collect();
    run(&argv)?;
    let ss = layout.sector_size;
    let deadline = Instant::now() + PARTITION_WAIT;
    let mut paths = Vec::new();
    for p in &layout.partitions {
        let dev = partition_path(disk, p.number);
        let name = dev
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let sys = Path::new("/sys/class/block").join(disk_name).join(&name);
        let read = |f: &str| -> Option<u64> {
            std::fs::read_to_string(sys.join(f))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let (start, size) = loop {
            let is_dev = std::fs::metadata(&dev).is_ok_and(|m| m.file_type().is_block_device());
            if let (Some(start), Some(size), true) = (read("start"), read("size"), is_dev) {
                break (start, size);
            }
            if Instant::now() > deadline {
                return Err(disk_err(
                    disk,
                    format!(
                        "the kernel shows no partition {} ({}) {}s after `{}`: does the \
                         kernel read GPTs (CONFIG_EFI_PARTITION)? Otherwise set \
                         install.reread_command, e.g. [\"partx\", \"-u\", \"{{disk}}\"]",
                        p.number,
                        dev.display(),
                        PARTITION_WAIT.as_secs(),
                        argv.join(" ")
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // sysfs counts 512-byte units whatever the sector size.
        if start * 512 != p.first_lba * ss || size * 512 != p.sectors() * ss {
            return Err(disk_err(
                disk,
                format!(
                    "the kernel's partition {} is at {start}+{size} (512-byte units), the \
                     table says {}+{}",
                    p.number,
                    p.first_lba * ss / 512,
                    p.sectors() * ss / 512
                ),
            ));
        }
        paths.push(dev);
    }
    Ok(paths)
}

/// What an earlier install left on `disk`'s data partition (4 in our layout).
#[derive(Default)]
struct EarlierInstall {
    /// The agent's state is there (`tugboot/state.json`, the last file the installer writes
    /// before its report): the install finished.
    finished: bool,
    /// The key and certificate it enrolled with, if it got that far: kept, because the server
    /// gives a machine one identity (a new key would be refused).
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// Mounts the data partition read-only at `install.data_mount` for a look; anything that
/// fails (no such partition, no file system) means an install that did not get far.
fn earlier_install(config: &InstallerConfig, device: &DeviceConfig, disk: &Path) -> EarlierInstall {
    let dev = partition_path(disk, 4);
    let at = &config.data_mount;
    if std::fs::create_dir_all(at).is_err() || mounts().iter().any(|(_, m)| m == at) {
        return EarlierInstall::default();
    }
    let point = at.to_string_lossy().into_owned();
    let mount = busybox(
        config,
        &[
            "mount",
            "-t",
            "ext2",
            "-o",
            "ro",
            &dev.to_string_lossy(),
            &point,
        ],
    );
    if run(&mount).is_err() {
        return EarlierInstall::default();
    }
    let look = EarlierInstall {
        finished: at.join("tugboot/state.json").is_file(),
        identity: read_capped(&device.tls.key, MAX_PEM_BYTES)
            .ok()
            .zip(read_capped(&device.tls.cert, MAX_PEM_BYTES).ok()),
    };
    let _ = run(&busybox(config, &["umount", &point]));
    look
}

/// The device id in a certificate the server issued (its URI `urn:tugboot:device:<id>`).
fn certificate_device_id(pem: &[u8]) -> Option<i64> {
    use rustls::pki_types::pem::PemObject as _;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem).ok()?;
    let urn = b"urn:tugboot:device:";
    // A URI of the subjectAltName: [6] IMPLICIT IA5String, a short length before the text.
    let start = der.windows(urn.len()).position(|w| w == urn)?;
    let (tag, len) = (
        *der.get(start.checked_sub(2)?)?,
        usize::from(*der.get(start - 1)?),
    );
    if tag != 0x86 || len <= urn.len() || len > 0x7f {
        return None;
    }
    let digits = der.get(start + urn.len()..start + len)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The data partition mounted; unmounted when dropped (an error path), or by
/// [`Mounted::unmount`].
struct Mounted {
    argv: Vec<String>,
    active: bool,
}

impl Mounted {
    fn unmount(mut self) -> Result<(), InstallDiskError> {
        self.active = false;
        run(&self.argv)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.active {
            let _ = run(&self.argv);
        }
    }
}

/// A file of at most `cap` bytes.
fn read_file(from: &Path, cap: usize) -> Result<Vec<u8>, InstallDiskError> {
    read_capped(from, cap).map_err(|e| match e {
        crate::config::CappedReadError::TooLarge => InstallDiskError::Io {
            op: "read",
            path: from.to_path_buf(),
            source: std::io::Error::other(format!("larger than {cap} bytes")),
        },
        crate::config::CappedReadError::Io(source) => InstallDiskError::Io {
            op: "read",
            path: from.to_path_buf(),
            source,
        },
    })
}

fn copy_capped(from: &Path, to: &Path, cap: usize) -> Result<(), InstallDiskError> {
    let bytes = read_file(from, cap)?;
    write_atomic(&mut RealIo::new(), to, &bytes).map_err(io_err("write", to))
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "installer".to_owned())
}

/// Sends one outcome report and requires a 2xx.
fn report(client: &HttpClient, boot_id: &str, outcome: Outcome) -> Result<(), InstallDiskError> {
    let seq = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let r = DeviceReport {
        id: format!("{boot_id}-{seq}"),
        seq: Some(seq),
        boot_id: boot_id.to_owned(),
        agent: Some(env!("CARGO_PKG_VERSION").to_owned()),
        outcome: Some(outcome),
        ..DeviceReport::default()
    };
    r.validate().map_err(|e| InstallDiskError::Command {
        command: "report".into(),
        reason: e.to_string(),
    })?;
    client.post_report(&serde_json::to_vec(&r).unwrap_or_default())?;
    Ok(())
}

/// Enrolls, waiting for an operator's approval with backoff. Returns the device id.
/// Puts the key and certificate of an unfinished install back on the new data partition; the
/// device id when the certificate is still valid (then there is no need to enroll again).
fn keep_identity(
    device: &DeviceConfig,
    key: &[u8],
    cert: &[u8],
) -> Result<Option<i64>, InstallDiskError> {
    let now = i64::try_from(crate::net::enroll::unix_now()).unwrap_or(i64::MAX);
    let write = |path: &Path, bytes: &[u8], mode: u32| -> Result<(), InstallDiskError> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .map_err(io_err("write", path))?;
        std::io::Write::write_all(&mut f, bytes).map_err(io_err("write", path))?;
        f.sync_all().map_err(io_err("sync", path))
    };
    write(&device.tls.key, key, 0o600)?;
    write(&device.tls.cert, cert, 0o644)?;
    let valid =
        crate::net::enroll::certificate_not_after(&device.tls.cert).is_some_and(|t| t > now);
    let id = certificate_device_id(cert).filter(|_| valid);
    match id {
        Some(id) => say!("kept the key and certificate of the unfinished install (device {id})"),
        None => say!("kept the key of the unfinished install; its certificate is not valid now"),
    }
    Ok(id)
}

fn enroll(device: &DeviceConfig, boot_id: &str) -> Result<i64, InstallDiskError> {
    let mut d = Daemon::new(device.clone(), BootContext::new(Slot::A, boot_id))?;
    let mut attempt = 0;
    loop {
        match d.enroll()? {
            EnrollStep::Issued {
                device_id,
                not_after,
            } => {
                say!(
                    "enrolled as device {device_id}; certificate valid until {not_after} (unix), \
                     key and certificate in {}",
                    device.tls.cert.parent().unwrap_or(Path::new("/")).display()
                );
                return Ok(device_id);
            }
            EnrollStep::Pending { device_id } => {
                let wait = pending_backoff(attempt, MAX_PENDING_WAIT);
                attempt += 1;
                say!(
                    "enrollment pending: device {device_id} waits for an operator's approval; \
                     asking again in {}s",
                    wait.as_secs()
                );
                std::thread::sleep(wait);
            }
        }
    }
}

/// The manifest assigned to this machine, verified, and the URL of its slot artifact. A
/// refused manifest is reported (`rejected`, best effort) before the error.
fn assigned_image(
    device: &DeviceConfig,
    client: &HttpClient,
    boot_id: &str,
) -> Result<(Image, String), InstallDiskError> {
    let assignment = client
        .assignment()?
        .ok_or_else(|| InstallDiskError::NothingAssigned(device.server.clone()))?;
    let url = client.resolve(&assignment.manifest_url);
    let manifest = client.get_capped(&url, MAX_MANIFEST_BYTES)?;
    let root = load_root(&device.trust_root)?;
    let policy = Policy {
        now: Timestamp::now(),
        board: Some(&device.board),
        floor: 0,
        current_version: None,
    };
    let refuse = |code: &str, reason: String| {
        let (name, version) =
            tugboot_firmware::Signed::<tugboot_firmware::Manifest>::from_bytes(&manifest)
                .ok()
                .map(|m| (m.value().name.clone(), m.value().version))
                .filter(|(n, v)| !n.is_empty() && n.len() <= 255 && i64::try_from(*v).is_ok())
                .unwrap_or_default();
        let outcome = Outcome::Failed {
            name,
            version,
            reason: clip(&reason),
            rejected: Some(Rejection {
                code: code.to_owned(),
                manifest_sha256: Sha256Digest::of(&manifest).to_hex(),
            }),
        };
        if let Err(e) = report(client, boot_id, outcome) {
            say!("could not report the refusal: {e}");
        }
        InstallDiskError::Manifest {
            url: url.clone(),
            code: code.to_owned(),
            reason,
        }
    };
    let verified = tugboot_firmware::verify_manifest(&manifest, &root, &policy)
        .map_err(|e| refuse(e.code(), e.to_string()))?;
    let (image, _) = image_of(&verified).map_err(|e| {
        let code = match e {
            UpdateError::SeveralSlotArtifacts(_) => "several-slot-artifacts",
            _ => "no-slot-artifact",
        };
        refuse(code, e.to_string())
    })?;
    let artifact = assignment
        .artifact_url(&image.sha256.to_hex())
        .map(str::to_owned)
        .ok_or_else(|| DaemonError::NoArtifactUrl(image.sha256.to_hex()))?;
    Ok((image, artifact))
}

/// Writes `source` (of `size` bytes with digest `sha256`) into the partition `dev` through the
/// verifier, with a progress bar, then syncs and reads it back.
fn write_partition(
    dev: &Path,
    sha256: Sha256Digest,
    size: u64,
    source: &mut dyn std::io::Read,
) -> Result<(), SlotError> {
    let mut io = RealIo::new();
    let mut bar = crate::cli::ProgressBar::new(size);
    let written = slot::write_slot(
        &mut io,
        dev,
        sha256,
        size,
        &mut crate::cli::Counting {
            inner: source,
            bar: &mut bar,
        },
        CHUNK,
        &mut |_| {},
    );
    bar.finish();
    written?;
    slot::sync_and_verify(&mut io, dev, sha256, size, CHUNK)
}

/// SHA-256 and size of a file, streamed.
fn hash_file(path: &Path) -> Result<(Sha256Digest, u64), InstallDiskError> {
    let mut f = File::open(path).map_err(io_err("open", path))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err("read", path))?;
        let Some(data) = buf.get(..n).filter(|d| !d.is_empty()) else {
            break;
        };
        ctx.update(data);
        len += n as u64;
    }
    let mut d = [0u8; 32];
    d.copy_from_slice(ctx.finish().as_ref());
    Ok((Sha256Digest(d), len))
}

/// The `Boot####` entry for UEFI boards booted through UEFI; `None` (and a line saying why)
/// otherwise.
fn boot_entry(
    config: &InstallerConfig,
    layout: &gpt::Layout,
) -> Result<Option<u16>, InstallDiskError> {
    let Some(loader) = &config.efi_loader else {
        say!(
            "no EFI boot entry: board {} does not boot through UEFI",
            config.board
        );
        return Ok(None);
    };
    let firmware = config.efivars.parent().unwrap_or(Path::new("/"));
    if !firmware.is_dir() {
        say!(
            "no EFI boot entry: this machine did not boot through UEFI ({} is absent); the \
             firmware must find {loader} on the ESP by itself",
            firmware.display()
        );
        return Ok(None);
    }
    if !mounts().iter().any(|(_, at)| *at == config.efivars) {
        run(&busybox(
            config,
            &[
                "mount",
                "-t",
                "efivarfs",
                "efivarfs",
                &config.efivars.to_string_lossy(),
            ],
        ))?;
    }
    let vars = Efivarfs::open(&config.efivars).map_err(EfiError::from)?;
    let Some(esp) = layout.partition(gpt::LABELS[0]) else {
        return Ok(None);
    };
    let path = entry::gpt_loader_path(esp.number, esp.first_lba, esp.sectors(), esp.guid.0, loader);
    let plan = entry::install(&vars, &config.efi_description, &path)?;
    let shown = crate::bootloader::efi::LoadOption::new(&config.efi_description, &path)
        .map(|o| o.to_string().replace('\t', " "))
        .unwrap_or_default();
    say!(
        "boot entry Boot{:04X} {shown}{}; BootOrder {}",
        plan.number,
        if plan.replaces { " (replaced)" } else { "" },
        plan.order
            .iter()
            .map(|n| format!("{n:04X}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    Ok(Some(plan.number))
}

/// Largest boot.img / core.img read.
const MAX_BIOS_IMAGE: usize = 1 << 20;

/// GRUB for BIOS: boot.img into the MBR's code area, core.img into the gap after the GPT
/// ([`bios::embed`]); read back. Says what it did.
fn embed_grub_pc(
    disk: &Disk,
    layout: &gpt::Layout,
    images: &crate::config::installer::BiosImages,
) -> Result<String, InstallDiskError> {
    if layout.sector_size != bios::SECTOR as u64 {
        return Err(disk_err(
            &disk.path,
            format!(
                "GRUB for BIOS needs 512-byte sectors, the disk has {}",
                layout.sector_size
            ),
        ));
    }
    let (boot, core) = (
        read_file(&images.boot_img, MAX_BIOS_IMAGE)?,
        read_file(&images.core_img, MAX_BIOS_IMAGE)?,
    );
    let mbr = disk.read(0, bios::SECTOR as u64)?;
    let first = layout.partitions.first().map_or(0, |p| p.first_lba);
    let e = bios::embed(&boot, &core, &mbr, layout.first_usable(), first)
        .map_err(|err| disk_err(&disk.path, err.to_string()))?;
    disk.write(e.core_lba * layout.sector_size, &e.core)?;
    disk.write(0, &e.mbr)?;
    disk.file.sync_all().map_err(io_err("fsync", &disk.path))?;
    let at = e.core_lba * layout.sector_size;
    let (mbr_back, core_back) = (
        disk.read(0, bios::SECTOR as u64)?,
        disk.read(at, e.core.len() as u64)?,
    );
    if mbr_back != e.mbr || core_back != e.core {
        return Err(disk_err(&disk.path, "GRUB's boot code did not read back"));
    }
    Ok(format!(
        "GRUB for BIOS: boot.img in the MBR, core.img ({} sectors) at LBA {}",
        e.core.len() / bios::SECTOR,
        e.core_lba
    ))
}

/// Partition 1 as this install makes it.
#[derive(Clone, Copy)]
enum Boot<'a> {
    /// A FAT image written raw (GRUB boards).
    Esp {
        path: &'a Path,
        sha256: Sha256Digest,
        len: u64,
    },
    /// Formatted here; the U-Boot script, slot A's kernel and `uboot.env` copied to it.
    Uboot { script: &'a Path, mount: &'a Path },
}

/// Largest boot script copied to the boot partition.
const MAX_BOOT_SCRIPT: usize = 1 << 20;

/// A U-Boot board's boot partition: FAT (label `TUGBOOT-ESP`), the boot script as
/// `boot.scr.uimg`, slot A's kernel and initrd in `A/`, `uboot.env` booting A; the installed
/// agent's `fw_env.config` in `tugboot_dir` on the data partition. Returns the environment file.
fn uboot_boot_partition(
    config: &InstallerConfig,
    dev: &Path,
    slot_a: &Path,
    script: &Path,
    mount: &Path,
    tugboot_dir: &Path,
) -> Result<PathBuf, InstallDiskError> {
    let dev_text = dev.to_string_lossy();
    run(&busybox(
        config,
        &["mkdosfs", "-n", "TUGBOOT-ESP", &dev_text],
    ))?;
    std::fs::create_dir_all(mount).map_err(io_err("create", mount))?;
    if mounts().iter().any(|(_, at)| at == mount) {
        return Err(disk_err(
            dev,
            format!(
                "install.boot_mount {} is already a mount point",
                mount.display()
            ),
        ));
    }
    let point = mount.to_string_lossy().into_owned();
    run(&busybox(
        config,
        &["mount", "-t", "vfat", &dev_text, &point],
    ))?;
    let mounted = Mounted {
        argv: busybox(config, &["umount", &point]),
        active: true,
    };
    copy_capped(script, &mount.join(UBOOT_SCRIPT_FILE), MAX_BOOT_SCRIPT)?;
    let published = kernels::publish(slot_a, Slot::A, mount, Path::new(kernels::SLOT_MOUNT))
        .map_err(|e| disk_err(slot_a, e.to_string()))?;
    let env_file = mount.join(UBOOT_ENV_FILE);
    File::create(&env_file)
        .and_then(|f| f.set_len(UBOOT_ENV_SIZE as u64))
        .map_err(io_err("create", &env_file))?;
    let env = EnvConfig::single(EnvDevice::new(&env_file, 0, UBOOT_ENV_SIZE))
        .map_err(|e| disk_err(&env_file, e.to_string()))?;
    let mut vars = Vars::new();
    vars.set(crate::bootloader::uboot::ab::SLOT, Slot::A.as_str())
        .map_err(|e| disk_err(&env_file, e.to_string()))?;
    UbootEnvFile::new(env).initialize(&vars)?;
    let fw_env = tugboot_dir.join("fw_env.config");
    let text = config.fw_env_config().unwrap_or_default();
    write_atomic(&mut RealIo::new(), &fw_env, text.as_bytes()).map_err(io_err("write", &fw_env))?;
    mounted.unmount()?;
    say!(
        "formatted {} (FAT, label TUGBOOT-ESP): {UBOOT_SCRIPT_FILE}, A/ ({}), {UBOOT_ENV_FILE} \
         (tugboot_slot=A); {} for the installed agent",
        dev.display(),
        published
            .iter()
            .map(|(name, len)| format!("{name} {len} bytes"))
            .collect::<Vec<_>>()
            .join(", "),
        fw_env.display()
    );
    Ok(env_file)
}

/// Installs to `config.disk` (see the module documentation). `wipe`: erase a disk that holds
/// data.
///
/// # Errors
/// See [`InstallDiskError`].
pub fn install_disk(config: &InstallerConfig, wipe: bool) -> Result<Installed, InstallDiskError> {
    let device = config.installer_view()?;
    let boot = match &config.boot {
        BootSide::EspImage(path) => {
            let (sha256, len) = hash_file(path)?;
            Boot::Esp { path, sha256, len }
        }
        BootSide::UbootScript { script, mount, .. } => Boot::Uboot { script, mount },
    };
    let disk = Disk::open(&config.disk)?;
    let head_len = probe::HEAD_BYTES.min(disk.bytes);
    let tail_len = probe::TAIL_BYTES.min(disk.bytes);
    let findings = probe::probe(
        &disk.read(0, head_len)?,
        &disk.read(disk.bytes - tail_len, tail_len)?,
        disk.bytes,
        disk.sector_size,
    );
    let sizes = gpt::Sizes {
        esp_mib: config.esp_mib,
        slot_mib: config.slot_mib,
        data_mib: config.data_mib,
    };
    let layout =
        gpt::plan(disk.bytes, disk.sector_size, sizes, random_guids()?).map_err(|source| {
            InstallDiskError::Layout {
                disk: disk.path.clone(),
                source,
            }
        })?;
    let esp_bytes = layout
        .partitions
        .first()
        .map_or(0, |p| p.sectors() * layout.sector_size);
    if let Boot::Esp {
        path, len: esp_len, ..
    } = boot
        && esp_len > esp_bytes
    {
        return Err(disk_err(
            &disk.path,
            format!(
                "the ESP image {} ({esp_len} bytes) is larger than the {} MiB ESP",
                path.display(),
                config.esp_mib
            ),
        ));
    }
    // Our own layout: finished (its data partition holds the agent's state) or not (a power
    // cut, a failed download: written again). The data partition is looked at with the disk
    // closed: our exclusive claim would keep the mount out.
    let mut disk = disk;
    let mut unfinished = false;
    let mut earlier = EarlierInstall::default();
    if probe::only_our_layout(&findings) {
        let path = disk.path.clone();
        drop(disk);
        earlier = earlier_install(config, &device, &path);
        unfinished = !earlier.finished;
        disk = Disk::open(&path)?;
        if unfinished {
            say!(
                "{} holds an unfinished tugboot install ({}; no agent state on its data \
                 partition): writing it again",
                disk.path.display(),
                probe::describe(&findings)
            );
        }
    }
    if !unfinished && !findings.is_empty() {
        let found = probe::describe(&findings);
        if !wipe {
            return Err(InstallDiskError::HoldsData {
                disk: disk.path.clone(),
                found,
            });
        }
        say!("wiping {}: it held {found}", disk.path.display());
    }

    write_table(&disk, &layout)?;
    let grub_pc = match &config.bios {
        Some(images) => Some(embed_grub_pc(&disk, &layout, images)?),
        None => None,
    };
    let Disk {
        path: disk_path,
        name: disk_name,
        file,
        bytes,
        ..
    } = disk;
    // Closed (and its O_EXCL claim released) before the kernel re-reads the table.
    drop(file);
    say!(
        "partitioned {} (GPT: {}; {bytes} bytes, {}-byte sectors)",
        disk_path.display(),
        layout.summary(),
        layout.sector_size
    );
    if let Some(line) = grub_pc {
        say!("{line}");
    }
    let parts = load_partitions(config, &disk_path, &disk_name, &layout)?;
    let [esp_dev, slot_a, _slot_b, data_dev] = parts.as_slice() else {
        return Err(disk_err(&disk_path, "the layout has four partitions"));
    };

    // The data partition.
    run(&busybox(
        config,
        &["mke2fs", "-L", "tugboot-data", &data_dev.to_string_lossy()],
    ))?;
    std::fs::create_dir_all(&config.data_mount).map_err(io_err("create", &config.data_mount))?;
    if mounts().iter().any(|(_, at)| *at == config.data_mount) {
        return Err(disk_err(
            &disk_path,
            format!(
                "install.data_mount {} is already a mount point",
                config.data_mount.display()
            ),
        ));
    }
    let mount_point = config.data_mount.to_string_lossy().into_owned();
    run(&busybox(
        config,
        &[
            "mount",
            "-t",
            "ext2",
            &data_dev.to_string_lossy(),
            &mount_point,
        ],
    ))?;
    let mounted = Mounted {
        argv: busybox(config, &["umount", &mount_point]),
        active: true,
    };
    say!(
        "formatted {} (ext2, label tugboot-data) and mounted it on {mount_point}",
        data_dev.display()
    );
    let dir = config.data_mount.join("tugboot");
    std::fs::create_dir_all(dir.join("reports")).map_err(io_err("create", &dir))?;
    copy_capped(&config.trust_root, &device.trust_root, MAX_ROOT_BYTES)?;
    copy_capped(&config.tls_ca, &device.tls.ca, MAX_PEM_BYTES)?;

    // Who this machine is, and what it gets.
    let boot_id = boot_id();
    let kept = match earlier.identity.take().filter(|_| unfinished) {
        Some((key, cert)) => keep_identity(&device, &key, &cert)?,
        None => None,
    };
    let device_id = match kept {
        Some(id) => id,
        None => enroll(&device, &boot_id)?,
    };
    let identity = TlsIdentity::load(&device.tls)?;
    let client = HttpClient::new(&device.server, Some(&identity), Timeouts::default());
    let (image, url) = assigned_image(&device, &client, &boot_id)?;
    let slot_bytes = layout
        .partitions
        .get(1)
        .map_or(0, |p| p.sectors() * layout.sector_size);
    say!(
        "installing {} {} ({} bytes) into slot A ({}, {} MiB) from {}",
        image.name,
        image.version,
        image.size,
        slot_a.display(),
        slot_bytes >> 20,
        client.resolve(&url)
    );
    let started = Instant::now();
    let mut download = ResumableDownload::new(&client, &url).expect_len(image.size);
    if let Err(e) = write_partition(slot_a, image.sha256, image.size, &mut download) {
        if matches!(
            e,
            SlotError::Stream(_) | SlotError::TooLarge { .. } | SlotError::ReadBack { .. }
        ) {
            let outcome = Outcome::Failed {
                name: image.name.clone(),
                version: image.version,
                reason: clip(&e.to_string()),
                rejected: None,
            };
            if let Err(r) = report(&client, &boot_id, outcome) {
                say!("could not report the failure: {r}");
            }
        }
        return Err(e.into());
    }
    say!(
        "wrote slot A and read it back: sha256 {} verified ({:.1} s{})",
        image.sha256.to_hex(),
        started.elapsed().as_secs_f64(),
        if download.resumes().is_empty() {
            String::new()
        } else {
            format!(", resumed at bytes {:?}", download.resumes())
        }
    );

    let env_file = match boot {
        Boot::Esp {
            path,
            sha256: esp_sha256,
            len: esp_len,
        } => {
            let mut esp = File::open(path).map_err(io_err("open", path))?;
            write_partition(esp_dev, esp_sha256, esp_len, &mut esp)?;
            say!(
                "wrote the ESP image {} ({esp_len} bytes) into {} and read it back",
                path.display(),
                esp_dev.display()
            );
            // GRUB's environment, on the data partition.
            let env_file = config.data_mount.join("grubenv");
            let mut vars = Vars::new();
            vars.set(crate::bootloader::grub::ab::SLOT, Slot::A.as_str())
                .map_err(|e| disk_err(&env_file, e.to_string()))?;
            GrubEnvFile::new(&env_file).initialize(&vars)?;
            env_file
        }
        Boot::Uboot { script, mount } => {
            uboot_boot_partition(config, esp_dev, slot_a, script, mount, &dir)?
        }
    };
    let state = AgentState::provisioned(Slot::A, Some(image.clone()), image.version);
    let mut io = RealIo::new();
    write_atomic(&mut io, &device.state_file, &state.to_bytes())
        .map_err(io_err("write", &device.state_file))?;
    let agent_toml = dir.join("agent.toml");
    write_atomic(&mut io, &agent_toml, config.agent_toml().as_bytes())
        .map_err(io_err("write", &agent_toml))?;
    say!(
        "wrote {} (tugboot_slot=A), {} (committed A, floor {}) and {}",
        env_file.display(),
        device.state_file.display(),
        image.version,
        agent_toml.display()
    );

    let boot_entry = boot_entry(config, &layout)?;

    report(
        &client,
        &boot_id,
        Outcome::Installed {
            name: image.name.clone(),
            version: image.version,
            slot: Slot::A,
        },
    )?;
    say!(
        "reported installed {} {} (slot A) to {}",
        image.name,
        image.version,
        device.server
    );
    mounted.unmount()?;
    run(&busybox(config, &["sync"]))?;
    say!(
        "done: {} boots {} {} from slot A{}",
        disk_path.display(),
        image.name,
        image.version,
        crate::io::peak_rss_kib()
            .map(|k| format!(" (installer peak RSS {k} KiB)"))
            .unwrap_or_default()
    );
    Ok(Installed {
        device_id,
        image,
        layout,
        boot_entry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The id in the server's certificate (URI SAN `urn:tugboot:device:17`), nothing from a
    /// file without one.
    #[test]
    fn the_device_id_comes_from_the_certificate() {
        let pem = include_bytes!("../../../tests/fixtures/agent-device-api/cert-p256.pem");
        assert_eq!(certificate_device_id(pem), Some(17));
        assert_eq!(certificate_device_id(b"not a certificate"), None);
        assert_eq!(certificate_device_id(b""), None);
    }
}
