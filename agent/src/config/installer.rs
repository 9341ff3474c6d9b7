//! The installer's configuration (`tugboot-agent -c installer.toml install-disk`): the TOML
//! parsed by the agent's own parser, read key by key from the document (not through serde:
//! the static binary's size budget) into [`InstallerConfig`], validated. Every error names the
//! line and the key (`line 12, key `install.esp_mib`: must be 1..=1073741824 MiB, not 0`);
//! unknown keys are refused.
//!
//! It also writes the configuration of the agent it installs ([`InstallerConfig::agent_toml`]):
//! plain TOML that the OS image may extend by appending its own `[[health.*]]` tables.
//!
//! ```toml
//! server = "https://10.77.0.1:8443"
//! board = "x86_64-uefi"
//! trust_root = "/etc/tugboot/root.json"      # in the installer's initramfs
//! # extra_boards = ["lab-board"]
//! [tls]
//! ca = "/etc/tugboot/server-ca.pem"          # in the installer's initramfs
//! [enroll]                                    # as for `run`: MAC pre-authorised, or a token
//! interface = "eth0"                          # also token_file, mac, serial, ca_sha256,
//!                                             # renew_before_days
//! [install]
//! disk = "/dev/vda"                           # the whole disk
//! esp_image = "/usr/share/tugboot/esp.img"    # written raw into partition 1 (GRUB boards)
//! # bios_boot_img = "/usr/share/tugboot/boot.img"  # with esp_image, BIOS boards: GRUB i386-pc,
//! # bios_core_img = "/usr/share/tugboot/core.img"  #   boot.img in the MBR, core.img after the GPT
//! # boot_script = "/usr/share/tugboot/boot.scr.uimg"   # instead of esp_image (U-Boot boards):
//! #   partition 1 is formatted FAT, gets the script, each slot's kernel and uboot.env
//! # boot_mount = "/boot"                      # where the installer mounts it
//! # os_boot_mount = "/boot"                   # where the installed OS mounts it
//! esp_mib = 64
//! slot_mib = 512                              # each of A and B
//! data_mib = 0                                # 0 (default): the rest of the disk
//! data_mount = "/data"                        # where the installer mounts the data partition
//! reboot_command = ["reboot", "-f"]           # the installed agent's (default ["reboot"])
//! # os_data_mount = "/data"                   # where the installed OS mounts it
//! # os_disk = "/dev/vda"                      # the disk's name in the installed OS
//! # busybox = "busybox"                       # mke2fs, mount, umount, blockdev, sync
//! # reread_command = ["busybox", "blockdev", "--rereadpt", "{disk}"]
//! # efivars = "/sys/firmware/efi/efivars"
//! # efi_loader = "\\EFI\\BOOT\\BOOTX64.EFI"   # default by board (x86_64-uefi, arm64-uefi)
//! # efi_description = "tugboot"
//! ```

use std::path::{Path, PathBuf};

use super::toml::{self, Node, Value};
use super::{
    ConfigError, DeviceConfig, EnrollConfig, KNOWN_BOARDS, MAX_CONFIG_BYTES, RawEnroll, absolute,
    board_name, enroll_config, suggest_board, url,
};
use crate::bootloader::efi::EFIVARFS;

/// Where the installed OS mounts the data partition, unless `install.os_data_mount` says.
pub const DEFAULT_OS_DATA_MOUNT: &str = "/data";
/// Description of the `Boot####` entry, unless `install.efi_description` says.
pub const DEFAULT_EFI_DESCRIPTION: &str = "tugboot";
/// Where the boot partition of a U-Boot board is mounted, unless `install.boot_mount` or
/// `install.os_boot_mount` says.
pub const DEFAULT_BOOT_MOUNT: &str = "/boot";
/// The U-Boot environment file on the boot partition, and its size (`uboot-ab.cmd`).
pub const UBOOT_ENV_FILE: &str = "uboot.env";
/// Size of [`UBOOT_ENV_FILE`] (`env export -c -s 0x200`): one sector, so that every write of it
/// (the agent's in place, U-Boot's `fatwrite`) is a single sector write, which disks complete
/// or not at all — the same assumption GRUB's environment block makes. The A/B variables take
/// about 170 of its 508 data bytes.
pub const UBOOT_ENV_SIZE: usize = 0x200;
/// The boot script's name on the boot partition (what U-Boot's distro boot looks for).
pub const UBOOT_SCRIPT_FILE: &str = "boot.scr.uimg";
/// Trial boots a U-Boot board gets before its script falls back.
pub const UBOOT_BOOTLIMIT: u32 = 1;

/// Largest ESP, slot or data size in MiB (1 PiB).
pub const MAX_PARTITION_MIB: u64 = 1 << 30;

/// One table of the document, read key by key: every key must be taken, type errors and
/// missing keys name the line and the dotted key.
struct Table<'a> {
    path: &'static str,
    line: usize,
    entries: &'a [(String, Node)],
    taken: Vec<&'a str>,
}

fn located(line: usize, key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::InvalidAt {
        at: format!("line {line}, key `{key}`"),
        key: key.to_owned(),
        reason: reason.into(),
    }
}

impl<'a> Table<'a> {
    fn of(node: &'a Node, path: &'static str) -> Result<Self, ConfigError> {
        match &node.value {
            Value::Table(entries, _) => Ok(Self {
                path,
                line: node.line,
                entries,
                taken: Vec::new(),
            }),
            _ => Err(located(node.line, path, "expected a table")),
        }
    }

    fn dotted(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn node(&mut self, key: &'static str) -> Option<&'a Node> {
        self.taken.push(key);
        self.entries.iter().find(|(k, _)| k == key).map(|(_, n)| n)
    }

    fn missing(&self, key: &str) -> ConfigError {
        located(
            self.line,
            &self.dotted(key),
            format!("missing field `{key}`"),
        )
    }

    fn string(&mut self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.node(key) {
            None => Ok(None),
            Some(Node {
                value: Value::Str(s),
                ..
            }) => Ok(Some(s.clone())),
            Some(n) => Err(located(n.line, &self.dotted(key), "expected a string")),
        }
    }

    fn required(&mut self, key: &'static str) -> Result<String, ConfigError> {
        self.string(key)?.ok_or_else(|| self.missing(key))
    }

    fn number(&mut self, key: &'static str) -> Result<Option<u64>, ConfigError> {
        match self.node(key) {
            None => Ok(None),
            Some(n) => match n.value {
                Value::Int(i) => u64::try_from(i).map(Some).map_err(|_| {
                    located(
                        n.line,
                        &self.dotted(key),
                        format!("expected a whole number ≥ 0, not {i}"),
                    )
                }),
                _ => Err(located(
                    n.line,
                    &self.dotted(key),
                    "expected a whole number",
                )),
            },
        }
    }

    fn strings(&mut self, key: &'static str) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(n) = self.node(key) else {
            return Ok(None);
        };
        let bad = || located(n.line, &self.dotted(key), "expected an array of strings");
        let Value::Array(items) = &n.value else {
            return Err(bad());
        };
        items
            .iter()
            .map(|i| match &i.value {
                Value::Str(s) => Ok(s.clone()),
                _ => Err(bad()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn table(
        &mut self,
        key: &'static str,
        path: &'static str,
    ) -> Result<Option<Self>, ConfigError> {
        self.node(key).map(|n| Table::of(n, path)).transpose()
    }

    /// Refuses keys nobody took.
    fn finish(self) -> Result<(), ConfigError> {
        match self
            .entries
            .iter()
            .find(|(k, _)| !self.taken.contains(&k.as_str()))
        {
            None => Ok(()),
            Some((k, n)) => Err(located(
                n.line,
                &self.dotted(k),
                format!(
                    "unknown field `{k}`, expected one of {}",
                    self.taken.join(", ")
                ),
            )),
        }
    }
}

/// `[install]` as written, defaults applied.
#[derive(Debug, Clone)]
struct RawInstall {
    disk: String,
    esp_image: Option<PathBuf>,
    bios_boot_img: Option<PathBuf>,
    bios_core_img: Option<PathBuf>,
    boot_script: Option<PathBuf>,
    boot_mount: PathBuf,
    os_boot_mount: PathBuf,
    esp_mib: u64,
    slot_mib: u64,
    data_mib: u64,
    data_mount: PathBuf,
    os_data_mount: PathBuf,
    os_disk: Option<String>,
    reboot_command: Vec<String>,
    busybox: String,
    reread_command: Option<Vec<String>>,
    efivars: PathBuf,
    efi_loader: Option<String>,
    efi_description: String,
}

/// The document as written: top level, `[tls]`, `[enroll]`, `[install]`.
#[derive(Debug, Clone)]
struct RawInstallerConfig {
    server: String,
    board: String,
    trust_root: PathBuf,
    extra_boards: Vec<String>,
    tls_ca: PathBuf,
    enroll: RawEnroll,
    install: RawInstall,
}

fn read_raw(root: &Node) -> Result<RawInstallerConfig, ConfigError> {
    let mut top = Table::of(root, "")?;
    let server = top.required("server")?;
    let board = top.required("board")?;
    let trust_root = PathBuf::from(top.required("trust_root")?);
    let extra_boards = top.strings("extra_boards")?.unwrap_or_default();
    let mut tls = top.table("tls", "tls")?.ok_or_else(|| top.missing("tls"))?;
    let tls_ca = PathBuf::from(tls.required("ca")?);
    tls.finish()?;
    let mut enroll = RawEnroll::default();
    if let Some(mut e) = top.table("enroll", "enroll")? {
        enroll.token_file = e.string("token_file")?.map(PathBuf::from);
        enroll.interface = e.string("interface")?;
        enroll.mac = e.string("mac")?;
        enroll.serial = e.string("serial")?;
        enroll.ca_sha256 = e.string("ca_sha256")?;
        if let Some(days) = e.number("renew_before_days")? {
            enroll.renew_before_days = days;
        }
        e.finish()?;
    }
    let mut i = top
        .table("install", "install")?
        .ok_or_else(|| top.missing("install"))?;
    let install = RawInstall {
        disk: i.required("disk")?,
        esp_image: i.string("esp_image")?.map(PathBuf::from),
        bios_boot_img: i.string("bios_boot_img")?.map(PathBuf::from),
        bios_core_img: i.string("bios_core_img")?.map(PathBuf::from),
        boot_script: i.string("boot_script")?.map(PathBuf::from),
        boot_mount: PathBuf::from(
            i.string("boot_mount")?
                .unwrap_or_else(|| DEFAULT_BOOT_MOUNT.to_owned()),
        ),
        os_boot_mount: PathBuf::from(
            i.string("os_boot_mount")?
                .unwrap_or_else(|| DEFAULT_BOOT_MOUNT.to_owned()),
        ),
        esp_mib: i.number("esp_mib")?.ok_or_else(|| i.missing("esp_mib"))?,
        slot_mib: i.number("slot_mib")?.ok_or_else(|| i.missing("slot_mib"))?,
        data_mib: i.number("data_mib")?.unwrap_or(0),
        data_mount: PathBuf::from(i.required("data_mount")?),
        os_data_mount: PathBuf::from(
            i.string("os_data_mount")?
                .unwrap_or_else(|| DEFAULT_OS_DATA_MOUNT.to_owned()),
        ),
        os_disk: i.string("os_disk")?,
        reboot_command: i
            .strings("reboot_command")?
            .unwrap_or_else(|| vec!["reboot".to_owned()]),
        busybox: i.string("busybox")?.unwrap_or_else(|| "busybox".to_owned()),
        reread_command: i.strings("reread_command")?,
        efivars: PathBuf::from(i.string("efivars")?.unwrap_or_else(|| EFIVARFS.to_owned())),
        efi_loader: i.string("efi_loader")?,
        efi_description: i
            .string("efi_description")?
            .unwrap_or_else(|| DEFAULT_EFI_DESCRIPTION.to_owned()),
    };
    i.finish()?;
    top.finish()?;
    Ok(RawInstallerConfig {
        server,
        board,
        trust_root,
        extra_boards,
        tls_ca,
        enroll,
        install,
    })
}

/// The validated installer configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallerConfig {
    /// Base URL of the device API, without a trailing `/`.
    pub server: String,
    /// The board.
    pub board: String,
    /// Extra board names (copied).
    pub extra_boards: Vec<String>,
    /// The trust root to copy.
    pub trust_root: PathBuf,
    /// The server CA to copy.
    pub tls_ca: PathBuf,
    /// Validated `[enroll]`.
    pub enroll: EnrollConfig,
    /// Whole disk.
    pub disk: PathBuf,
    /// The disk's name in the installed OS.
    pub os_disk: PathBuf,
    /// How partition 1 is made and booted.
    pub boot: BootSide,
    /// GRUB for BIOS embedded in the disk's head (`install.bios_boot_img` and
    /// `install.bios_core_img`), with an ESP image holding its configuration.
    pub bios: Option<BiosImages>,
    /// ESP size, MiB.
    pub esp_mib: u64,
    /// Slot size, MiB.
    pub slot_mib: u64,
    /// Data size, MiB (0: the rest).
    pub data_mib: u64,
    /// The data partition's mount point in the installer.
    pub data_mount: PathBuf,
    /// Its mount point in the installed OS.
    pub os_data_mount: PathBuf,
    /// The installed agent's reboot command.
    pub reboot_command: Vec<String>,
    /// The busybox binary.
    pub busybox: String,
    /// argv that makes the kernel read the table (`{disk}` placeholder).
    pub reread_command: Vec<String>,
    /// efivarfs.
    pub efivars: PathBuf,
    /// The loader of the boot entry (`\EFI\BOOT\BOOTX64.EFI`), `None` for boards that do not
    /// boot through UEFI.
    pub efi_loader: Option<String>,
    /// The boot entry's description.
    pub efi_description: String,
}

/// How the installer makes partition 1 and what boots the slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootSide {
    /// `install.esp_image`: a FAT image (GRUB and its A/B configuration) written raw; GRUB's
    /// environment on the data partition.
    EspImage(PathBuf),
    /// `install.boot_script`: partition 1 formatted FAT (label `TUGBOOT-ESP`) with the U-Boot
    /// script as `boot.scr.uimg`, the U-Boot environment `uboot.env` and each slot's kernel in
    /// `A/`, `B/` (`firmware/boot/uboot-ab.cmd`).
    UbootScript {
        /// The script image (legacy U-Boot image) to copy.
        script: PathBuf,
        /// Where the installer mounts the boot partition.
        mount: PathBuf,
        /// Where the installed OS mounts it.
        os_mount: PathBuf,
    },
}

/// GRUB i386-pc's two images (`grub-pc-bin`'s boot.img; core.img from `grub-mkimage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BiosImages {
    /// The MBR boot code.
    pub boot_img: PathBuf,
    /// The core image embedded after the GPT.
    pub core_img: PathBuf,
}

/// The removable-media loader path of a UEFI board (what GRUB is installed as on the ESP).
#[must_use]
pub fn default_efi_loader(board: &str) -> Option<&'static str> {
    match board {
        "x86_64-uefi" => Some("\\EFI\\BOOT\\BOOTX64.EFI"),
        "arm64-uefi" => Some("\\EFI\\BOOT\\BOOTAA64.EFI"),
        _ => None,
    }
}

/// A whole-disk device: `/dev/<name>` with a plain name (partitions are named after it).
fn whole_disk(key: &str, value: &str) -> Result<PathBuf, ConfigError> {
    let name = value.strip_prefix("/dev/").unwrap_or_default();
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name != "."
        && name != "..";
    if ok {
        Ok(PathBuf::from(value))
    } else {
        Err(super::invalid(
            key,
            format!(
                "must be a whole disk such as /dev/vda, /dev/nvme0n1 or /dev/loop0, not {value:?}"
            ),
        ))
    }
}

fn mount_point(key: &str, path: &Path) -> Result<PathBuf, ConfigError> {
    let p = absolute(key, path)?;
    if p == Path::new("/") {
        return Err(super::invalid(key, "must not be /"));
    }
    Ok(p)
}

fn mib(key: &str, value: u64, min: u64) -> Result<u64, ConfigError> {
    if (min..=MAX_PARTITION_MIB).contains(&value) {
        Ok(value)
    } else {
        Err(super::invalid(
            key,
            format!("must be {min}..={MAX_PARTITION_MIB} MiB, not {value}"),
        ))
    }
}

/// The path of partition `n` of `disk`: `/dev/vda2`, `/dev/nvme0n1p2`, `/dev/loop0p2` (a `p`
/// when the disk's name ends in a digit, as the kernel names them).
#[must_use]
pub fn partition_path(disk: &Path, n: u32) -> PathBuf {
    let text = disk.to_string_lossy();
    if text.ends_with(|c: char| c.is_ascii_digit()) {
        PathBuf::from(format!("{text}p{n}"))
    } else {
        PathBuf::from(format!("{text}{n}"))
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn quote_path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

fn array(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|s| quote(s))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

impl InstallerConfig {
    fn validate(raw: RawInstallerConfig) -> Result<Self, ConfigError> {
        let server = url("server", &raw.server, &["https"])?;
        let mut extra_boards = Vec::with_capacity(raw.extra_boards.len());
        for (i, b) in raw.extra_boards.iter().enumerate() {
            extra_boards.push(board_name(&format!("extra_boards[{i}]"), b)?);
        }
        let board = board_name("board", &raw.board)?;
        if !KNOWN_BOARDS.contains(&board.as_str()) && !extra_boards.contains(&board) {
            return Err(super::invalid(
                "board",
                format!(
                    "{board:?} is not a board of the catalogue{}; known: {}",
                    suggest_board(&board)
                        .map(|b| format!(" (did you mean {b:?}?)"))
                        .unwrap_or_default(),
                    KNOWN_BOARDS.join(", ")
                ),
            ));
        }
        let i = &raw.install;
        let disk = whole_disk("install.disk", &i.disk)?;
        let os_disk = match &i.os_disk {
            Some(d) => whole_disk("install.os_disk", d)?,
            None => disk.clone(),
        };
        if i.reboot_command.first().is_none_or(String::is_empty) {
            return Err(super::invalid(
                "install.reboot_command",
                "must name a program",
            ));
        }
        if i.busybox.is_empty() || i.busybox.contains(char::is_whitespace) {
            return Err(super::invalid(
                "install.busybox",
                "must be a program name or path",
            ));
        }
        let reread_command = match &i.reread_command {
            Some(argv) => {
                if argv.first().is_none_or(String::is_empty) {
                    return Err(super::invalid(
                        "install.reread_command",
                        "must name a program",
                    ));
                }
                if !argv.iter().any(|a| a.contains("{disk}")) {
                    return Err(super::invalid(
                        "install.reread_command",
                        "must name the disk as {disk}",
                    ));
                }
                argv.clone()
            }
            None => [i.busybox.as_str(), "blockdev", "--rereadpt", "{disk}"]
                .map(str::to_owned)
                .to_vec(),
        };
        let printable =
            |s: &str| !s.is_empty() && s.len() <= 255 && !s.chars().any(char::is_control);
        let efi_loader = match &i.efi_loader {
            Some(l) => {
                let l = l.replace('/', "\\");
                if !printable(&l) || !l.starts_with('\\') || l.ends_with('\\') {
                    return Err(super::invalid(
                        "install.efi_loader",
                        format!(
                            "must be a file path on the ESP such as \\EFI\\BOOT\\BOOTX64.EFI, not {l:?}"
                        ),
                    ));
                }
                Some(l)
            }
            None => default_efi_loader(&board).map(str::to_owned),
        };
        if !printable(&i.efi_description) {
            return Err(super::invalid(
                "install.efi_description",
                "must be 1..=255 printable characters",
            ));
        }
        let data_mount = mount_point("install.data_mount", &i.data_mount)?;
        let os_data_mount = mount_point("install.os_data_mount", &i.os_data_mount)?;
        let boot = match (&i.esp_image, &i.boot_script) {
            (Some(image), None) => BootSide::EspImage(absolute("install.esp_image", image)?),
            (None, Some(script)) => BootSide::UbootScript {
                script: absolute("install.boot_script", script)?,
                mount: mount_point("install.boot_mount", &i.boot_mount)?,
                os_mount: mount_point("install.os_boot_mount", &i.os_boot_mount)?,
            },
            _ => {
                return Err(super::invalid(
                    "install.esp_image",
                    "give exactly one of install.esp_image (GRUB boards) and \
                     install.boot_script (U-Boot boards)",
                ));
            }
        };
        let bios = match (&i.bios_boot_img, &i.bios_core_img, &boot) {
            (None, None, _) => None,
            (Some(b), Some(c), BootSide::EspImage(_)) => Some(BiosImages {
                boot_img: absolute("install.bios_boot_img", b)?,
                core_img: absolute("install.bios_core_img", c)?,
            }),
            _ => {
                return Err(super::invalid(
                    "install.bios_boot_img",
                    "give both install.bios_boot_img and install.bios_core_img, with \
                     install.esp_image",
                ));
            }
        };
        if let BootSide::UbootScript { mount, .. } = &boot
            && (*mount == data_mount || efi_loader.is_some())
        {
            return Err(super::invalid(
                "install.boot_script",
                "a U-Boot board's boot partition needs its own mount point and no efi_loader",
            ));
        }
        let config = Self {
            server,
            board,
            extra_boards,
            trust_root: absolute("trust_root", &raw.trust_root)?,
            tls_ca: absolute("tls.ca", &raw.tls_ca)?,
            enroll: enroll_config(&raw.enroll)?,
            disk,
            os_disk,
            boot,
            bios,
            esp_mib: mib("install.esp_mib", i.esp_mib, 1)?,
            slot_mib: mib("install.slot_mib", i.slot_mib, 1)?,
            data_mib: mib("install.data_mib", i.data_mib, 0)?,
            data_mount,
            os_data_mount,
            reboot_command: i.reboot_command.clone(),
            busybox: i.busybox.clone(),
            reread_command,
            efivars: absolute("install.efivars", &i.efivars)?,
            efi_loader,
            efi_description: i.efi_description.clone(),
        };
        // The installed configuration must load: checked here, before any disk is touched.
        config.installed_config()?;
        Ok(config)
    }
}

impl InstallerConfig {
    /// Parses and validates; errors name the line and the key.
    ///
    /// # Errors
    /// [`ConfigError::TooLarge`], [`ConfigError::Syntax`], [`ConfigError::InvalidAt`].
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: PathBuf::from("<config>"),
            });
        }
        let root = toml::parse(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        let raw = read_raw(&root)?;
        Self::validate(raw).map_err(|e| match e {
            ConfigError::Invalid { key, reason } => {
                let at = match toml::line_of(&root, key.split('[').next().unwrap_or_default()) {
                    Some(line) => format!("line {line}, key `{key}`"),
                    None => format!("key `{key}`"),
                };
                ConfigError::InvalidAt { at, key, reason }
            }
            other => other,
        })
    }

    /// [`InstallerConfig::parse`] over raw bytes (cap, then UTF-8): the `installer_config`
    /// fuzz target's entry. Never panics.
    ///
    /// # Errors
    /// As for [`InstallerConfig::parse`].
    pub fn parse_bytes(data: &[u8]) -> Result<Self, ConfigError> {
        if data.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: PathBuf::from("<config>"),
            });
        }
        let text = std::str::from_utf8(data)
            .map_err(|e| ConfigError::Syntax(format!("not UTF-8: {e}")))?;
        Self::parse(text)
    }

    /// The installed agent's configuration as it must read on the installed OS: every file
    /// under `os_data_mount/tugboot/`, the GRUB environment block at `os_data_mount/grubenv`,
    /// the slots partitions 2 and 3 of `os_disk`, `[enroll]` as the installer's (without
    /// `token_file`: the one-time token is spent by then, and the file is not on the disk).
    /// Ends with a newline and a table, so that appending `[[health.command]]` tables keeps it
    /// valid TOML.
    #[must_use]
    pub fn agent_toml(&self) -> String {
        self.render(&self.os_data_mount, &self.os_disk, false)
    }

    /// The same configuration with the installer's view of the paths (data partition at
    /// `data_mount`, slots on `disk`) and the installer's `enroll.token_file`: what the
    /// installer itself enrolls and reports with.
    ///
    /// # Errors
    /// A configuration that does not load (a bug, or paths that make it invalid).
    pub fn installer_view(&self) -> Result<DeviceConfig, ConfigError> {
        DeviceConfig::parse(&self.render(&self.data_mount, &self.disk, true))
    }

    /// [`InstallerConfig::agent_toml`] parsed, as the installed agent will read it.
    ///
    /// # Errors
    /// As for [`InstallerConfig::installer_view`].
    pub fn installed_config(&self) -> Result<DeviceConfig, ConfigError> {
        DeviceConfig::parse(&self.agent_toml()).map_err(|e| ConfigError::Invalid {
            key: "install".into(),
            reason: format!("the installed agent's configuration would not load: {e}"),
        })
    }

    /// The installed agent's `fw_env.config` (on the data partition) for U-Boot boards: the
    /// environment file on the boot partition as the installed OS mounts it.
    #[must_use]
    pub fn fw_env_config(&self) -> Option<String> {
        match &self.boot {
            BootSide::EspImage(_) => None,
            BootSide::UbootScript { os_mount, .. } => Some(format!(
                "# Written by `tugboot-agent install-disk`: U-Boot's A/B environment, read by \
                 boot.scr.uimg.\n{} 0x0 {UBOOT_ENV_SIZE:#x}\n",
                os_mount.join(UBOOT_ENV_FILE).display()
            )),
        }
    }

    fn render(&self, data: &Path, disk: &Path, installer: bool) -> String {
        use std::fmt::Write as _;
        let t = data.join("tugboot");
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Written by `tugboot-agent install-disk`. The OS image may append [[health.*]] tables."
        );
        let _ = writeln!(s, "server = {}", quote(&self.server));
        let _ = writeln!(s, "board = {}", quote(&self.board));
        if !self.extra_boards.is_empty() {
            let _ = writeln!(s, "extra_boards = {}", array(&self.extra_boards));
        }
        let _ = writeln!(s, "state_file = {}", quote_path(&t.join("state.json")));
        let _ = writeln!(s, "trust_root = {}", quote_path(&t.join("root.json")));
        let _ = writeln!(s, "report_queue = {}", quote_path(&t.join("reports")));
        let _ = writeln!(s, "reboot_command = {}", array(&self.reboot_command));
        let _ = writeln!(s, "\n[tls]");
        let _ = writeln!(s, "ca = {}", quote_path(&t.join("server-ca.pem")));
        let _ = writeln!(s, "cert = {}", quote_path(&t.join("device.pem")));
        let _ = writeln!(s, "key = {}", quote_path(&t.join("device.key")));
        let _ = writeln!(s, "\n[slots]");
        let _ = writeln!(s, "a = {}", quote_path(&partition_path(disk, 2)));
        let _ = writeln!(s, "b = {}", quote_path(&partition_path(disk, 3)));
        let _ = writeln!(s, "\n[bootloader]");
        match &self.boot {
            BootSide::EspImage(_) => {
                let _ = writeln!(s, "kind = \"grub\"");
                let _ = writeln!(s, "env_file = {}", quote_path(&data.join("grubenv")));
                let _ = writeln!(s, "tries = 1");
            }
            BootSide::UbootScript {
                mount, os_mount, ..
            } => {
                let boot = if installer { mount } else { os_mount };
                let _ = writeln!(s, "kind = \"uboot\"");
                let _ = writeln!(
                    s,
                    "fw_env_config = {}",
                    quote_path(&t.join("fw_env.config"))
                );
                let _ = writeln!(s, "bootlimit = {UBOOT_BOOTLIMIT}");
                let _ = writeln!(s, "kernel_dir = {}", quote_path(boot));
            }
        }
        let _ = writeln!(s, "\n[enroll]");
        let e = &self.enroll;
        if let Some(f) = e.token_file.as_deref().filter(|_| installer) {
            let _ = writeln!(s, "token_file = {}", quote_path(f));
        }
        if let Some(i) = &e.interface {
            let _ = writeln!(s, "interface = {}", quote(i));
        }
        if let Some(m) = &e.mac {
            let _ = writeln!(s, "mac = {}", quote(&m.to_string()));
        }
        if let Some(serial) = &e.serial {
            let _ = writeln!(s, "serial = {}", quote(serial));
        }
        if let Some(f) = &e.ca_sha256 {
            let hex: String = f.iter().map(|b| format!("{b:02x}")).collect();
            let _ = writeln!(s, "ca_sha256 = {}", quote(&hex));
        }
        let _ = writeln!(
            s,
            "renew_before_days = {}",
            e.renew_before.as_secs() / 86_400
        );
        s
    }
}

/// Reads (at most [`MAX_CONFIG_BYTES`]) and parses the installer configuration at `path`.
///
/// # Errors
/// As for [`InstallerConfig::parse`], plus read errors; messages start with the path.
pub fn load_installer(path: &Path) -> Result<InstallerConfig, ConfigError> {
    let text = super::read_capped(path, MAX_CONFIG_BYTES).map_err(|e| match e {
        super::CappedReadError::TooLarge => ConfigError::TooLarge {
            path: path.to_path_buf(),
        },
        super::CappedReadError::Io(source) => ConfigError::Read {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let text = String::from_utf8(text)
        .map_err(|_| ConfigError::Syntax(format!("{}: not UTF-8", path.display())))?;
    InstallerConfig::parse(&text).map_err(|e| match e {
        ConfigError::Syntax(m) => ConfigError::Syntax(format!("{}: {m}", path.display())),
        ConfigError::InvalidAt { at, key, reason } => ConfigError::InvalidAt {
            at: format!("{}: {at}", path.display()),
            key,
            reason,
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BootloaderConfig;

    pub(crate) const EXAMPLE: &str = r#"server = "https://10.77.0.1:8443"
board = "x86_64-uefi"
trust_root = "/etc/tugboot/root.json"

[tls]
ca = "/etc/tugboot/server-ca.pem"

[enroll]
interface = "eth0"

[install]
disk = "/dev/vda"
esp_image = "/usr/share/tugboot/esp.img"
esp_mib = 64
slot_mib = 512
data_mib = 0
data_mount = "/data"
reboot_command = ["reboot", "-f"]
"#;

    fn err(text: &str) -> String {
        let e = InstallerConfig::parse(text).unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
        e
    }

    #[test]
    fn example_parses_with_defaults() {
        let c = InstallerConfig::parse(EXAMPLE).unwrap();
        assert_eq!(c.disk, Path::new("/dev/vda"));
        assert_eq!(c.os_disk, Path::new("/dev/vda"));
        assert_eq!((c.esp_mib, c.slot_mib, c.data_mib), (64, 512, 0));
        assert_eq!(c.os_data_mount, Path::new("/data"));
        assert_eq!(c.busybox, "busybox");
        assert_eq!(
            c.reread_command,
            ["busybox", "blockdev", "--rereadpt", "{disk}"]
        );
        assert_eq!(c.efivars, Path::new(EFIVARFS));
        assert_eq!(c.efi_loader.as_deref(), Some("\\EFI\\BOOT\\BOOTX64.EFI"));
        assert_eq!(c.efi_description, "tugboot");
        assert_eq!(c.enroll.interface.as_deref(), Some("eth0"));
        // A board without UEFI gets no boot entry; a loader can be given for any board.
        let c = InstallerConfig::parse(&EXAMPLE.replace("x86_64-uefi", "x86_64-bios")).unwrap();
        assert_eq!(c.efi_loader, None);
        let c = InstallerConfig::parse(&EXAMPLE.replace(
            "data_mib = 0",
            "data_mib = 100\nefi_loader = \"/EFI/tugboot/grubx64.efi\"",
        ))
        .unwrap();
        assert_eq!(c.efi_loader.as_deref(), Some("\\EFI\\tugboot\\grubx64.efi"));
    }

    #[test]
    fn the_installed_configuration() {
        let c = InstallerConfig::parse(&EXAMPLE.replace(
            "interface = \"eth0\"",
            "interface = \"eth0\"\ntoken_file = \"/etc/tugboot/token\"\nserial = \"S \\\"1\\\"\"",
        ))
        .unwrap();
        let text = c.agent_toml();
        assert_eq!(
            text,
            r#"# Written by `tugboot-agent install-disk`. The OS image may append [[health.*]] tables.
server = "https://10.77.0.1:8443"
board = "x86_64-uefi"
state_file = "/data/tugboot/state.json"
trust_root = "/data/tugboot/root.json"
report_queue = "/data/tugboot/reports"
reboot_command = ["reboot", "-f"]

[tls]
ca = "/data/tugboot/server-ca.pem"
cert = "/data/tugboot/device.pem"
key = "/data/tugboot/device.key"

[slots]
a = "/dev/vda2"
b = "/dev/vda3"

[bootloader]
kind = "grub"
env_file = "/data/grubenv"
tries = 1

[enroll]
interface = "eth0"
serial = "S \"1\""
renew_before_days = 28
"#
        );
        let d = c.installed_config().unwrap();
        assert_eq!(
            d.bootloader,
            BootloaderConfig::Grub {
                env_file: "/data/grubenv".into(),
                tries: 1
            }
        );
        assert_eq!(d.enroll.token_file, None, "the spent token is not copied");
        assert_eq!(d.enroll.serial.as_deref(), Some("S \"1\""));
        // The OS image appends its health checks: still one valid configuration.
        let appended = format!(
            "{text}\n[[health.command]]\nname = \"app\"\nrun = [\"/bin/true\"]\n\n\
             [[health.file]]\nname = \"marker\"\npath = \"/data/ok\"\n"
        );
        let d = DeviceConfig::parse(&appended).unwrap();
        assert_eq!(d.health.len(), 2);
        // The installer's own view: the data partition where it mounted it.
        let mut c2 = c.clone();
        c2.data_mount = "/mnt/data".into();
        c2.disk = "/dev/loop7".into();
        let v = c2.installer_view().unwrap();
        assert_eq!(v.tls.key, Path::new("/mnt/data/tugboot/device.key"));
        assert_eq!(v.slots.a, Path::new("/dev/loop7p2"));
        assert_eq!(v.slots.b, Path::new("/dev/loop7p3"));
        assert_eq!(
            v.enroll.token_file.as_deref(),
            Some(Path::new("/etc/tugboot/token")),
            "the installer enrolls with its token"
        );
    }

    #[test]
    fn a_uboot_board_gets_a_boot_script_and_the_uboot_backend() {
        let text = EXAMPLE.replace("x86_64-uefi", "qemu-arm64-uboot").replace(
            "esp_image = \"/usr/share/tugboot/esp.img\"",
            "boot_script = \"/usr/share/tugboot/boot.scr.uimg\"\nboot_mount = \"/mnt/boot\"",
        );
        let c = InstallerConfig::parse(&text).unwrap();
        assert_eq!(
            c.boot,
            BootSide::UbootScript {
                script: "/usr/share/tugboot/boot.scr.uimg".into(),
                mount: "/mnt/boot".into(),
                os_mount: "/boot".into(),
            }
        );
        assert_eq!(c.efi_loader, None);
        let d = c.installed_config().unwrap();
        assert_eq!(
            d.bootloader,
            BootloaderConfig::Uboot {
                fw_env_config: "/data/tugboot/fw_env.config".into(),
                bootlimit: UBOOT_BOOTLIMIT,
                kernel_dir: Some("/boot".into()),
            }
        );
        // The installer itself copies kernels to where it mounted the boot partition.
        let v = c.installer_view().unwrap();
        assert!(
            matches!(&v.bootloader, BootloaderConfig::Uboot { kernel_dir: Some(k), .. }
                if k == Path::new("/mnt/boot"))
        );
        // fw_printenv's format: the file on the boot partition as the OS mounts it, 512 bytes.
        let fw = c.fw_env_config().unwrap();
        let parsed = crate::bootloader::uboot::EnvConfig::parse(&fw).unwrap();
        assert_eq!(parsed.devices()[0].path, Path::new("/boot/uboot.env"));
        assert_eq!(parsed.env_size(), UBOOT_ENV_SIZE);
        // The contract's largest values fit the one-sector environment.
        use crate::bootloader::uboot::{ab, encode_single};
        let mut v = crate::bootloader::Vars::new();
        ab::arm_trial(&mut v, crate::bootloader::Slot::B, ab::MAX_BOOTLIMIT).unwrap();
        ab::set_bootcount(&mut v, ab::MAX_BOOTLIMIT + 1);
        let img = encode_single(&v, UBOOT_ENV_SIZE, 0).unwrap();
        assert_eq!(img.len(), UBOOT_ENV_SIZE);
        assert_eq!(
            InstallerConfig::parse(EXAMPLE).unwrap().fw_env_config(),
            None
        );

        // Exactly one of the two; a boot partition mounted over the data partition is refused.
        let both = text.replace(
            "boot_mount",
            "esp_image = \"/usr/share/tugboot/esp.img\"\nboot_mount",
        );
        assert!(err(&both).contains("exactly one of"), "{}", err(&both));
        let neither = EXAMPLE.replace("esp_image = \"/usr/share/tugboot/esp.img\"\n", "");
        assert!(
            err(&neither).contains("exactly one of"),
            "{}",
            err(&neither)
        );
        let clash = text.replace("/mnt/boot", "/data");
        assert!(err(&clash).contains("own mount point"), "{}", err(&clash));
    }

    #[test]
    fn partition_names() {
        for (disk, want) in [
            ("/dev/vda", "/dev/vda1"),
            ("/dev/sdb", "/dev/sdb1"),
            ("/dev/nvme0n1", "/dev/nvme0n1p1"),
            ("/dev/mmcblk0", "/dev/mmcblk0p1"),
            ("/dev/loop12", "/dev/loop12p1"),
        ] {
            assert_eq!(partition_path(Path::new(disk), 1), Path::new(want));
        }
    }

    #[test]
    fn errors_name_line_and_key() {
        let swap = |from: &str, to: &str| {
            let t = EXAMPLE.replacen(from, to, 1);
            assert_ne!(t, EXAMPLE, "{from}");
            t
        };
        for (text, want) in [
            (
                swap("esp_mib = 64", "esp_mib = 0"),
                "line 14, key `install.esp_mib`: must be 1..=",
            ),
            (
                swap("slot_mib = 512", "slot_mib = -1"),
                "line 15, key `install.slot_mib`: expected a whole number ≥ 0, not -1",
            ),
            (
                swap("\"/dev/vda\"", "\"/dev/disk/by-id/x\""),
                "line 12, key `install.disk`: must be a whole disk",
            ),
            (
                swap("\"/dev/vda\"", "\"vda\""),
                "line 12, key `install.disk`",
            ),
            (
                swap("data_mount = \"/data\"", "data_mount = \"/\""),
                "line 17, key `install.data_mount`: must not be /",
            ),
            (
                swap("data_mount = \"/data\"", "data_mount = \"data\""),
                "line 17, key `install.data_mount`: must be an absolute path",
            ),
            (
                swap("[\"reboot\", \"-f\"]", "[]"),
                "line 18, key `install.reboot_command`: must name a program",
            ),
            (
                swap("x86_64-uefi", "pc"),
                "line 2, key `board`: \"pc\" is not a board of the catalogue",
            ),
            (
                swap("https://", "http://"),
                "line 1, key `server`: must be a https URL",
            ),
            (
                swap("\"/etc/tugboot/root.json\"", "\"root.json\""),
                "line 3, key `trust_root`",
            ),
            (
                swap("interface = \"eth0\"", "interface = \"a/b\""),
                "line 9, key `enroll.interface`",
            ),
            (
                swap("esp_mib = 64", "esp_mib = 64\nsize = 1"),
                "line 15, key `install.size`: unknown field `size`",
            ),
            (
                swap("esp_mib = 64\n", ""),
                "line 11, key `install.esp_mib`: missing field `esp_mib`",
            ),
            (
                swap("data_mib = 0", "data_mib = 0\nefi_loader = \"EFI\""),
                "key `install.efi_loader`: must be a file path",
            ),
            (
                swap("data_mib = 0", "data_mib = 0\nos_disk = \"/dev/\""),
                "line 17, key `install.os_disk`",
            ),
            (
                swap("data_mib = 0", "data_mib = 0\nbusybox = \"\""),
                "key `install.busybox`",
            ),
            (
                swap(
                    "data_mib = 0",
                    "data_mib = 0\nreread_command = [\"partx\", \"-u\"]",
                ),
                "line 17, key `install.reread_command`: must name the disk as {disk}",
            ),
            (
                swap("data_mib = 0", "data_mib = 0.5"),
                "line 16: \"0.5\": floats",
            ),
            (
                swap("[install]", "[install]\n[install]"),
                "table `install` is defined twice",
            ),
        ] {
            let e = err(&text);
            assert!(e.contains(want), "wanted {want:?} in {e}");
        }
        let c = InstallerConfig::parse(&swap(
            "data_mib = 0",
            "data_mib = 0\nos_data_mount = \"rel\"",
        ));
        assert!(
            c.unwrap_err()
                .to_string()
                .contains("line 17, key `install.os_data_mount`")
        );
    }
}
