//! `BoardFile` → `Board`: every rule of docs/boards.md that types alone cannot express.
//! Each failure names the TOML path of the key that breaks the rule.

use std::collections::{BTreeMap, BTreeSet};

use crate::board::{
    AbLayout, Arch, Board, BootKind, BootMethod, Bootloader, BootloaderKind, HexBytes, Identify,
    Kernel, KernelFormat, Loader, NetworkHints, Oui, RpiNetboot, Slot, SlotLocation, SlotName,
    UbootEnvCopy,
};
use crate::error::FieldError;
use crate::raw::{
    BoardFile, BootTable, BootloaderTable, IdentifyTable, KernelTable, NetworkTable, SlotTable,
};

/// Highest code in IANA's "Processor Architecture Types" registry (41, "arm rpiboot").
pub const MAX_IANA_ARCH_CODE: u16 = 41;

/// Most boot methods one board may list.
const MAX_METHODS: usize = 16;
/// Most entries in one `files` list.
const MAX_FILES: usize = 64;
/// The BOOTP `file` field is 128 bytes with its NUL: a boot file must fit it.
const MAX_BOOT_FILE: usize = 127;
/// Longest path in `files` and longest absolute device path.
const MAX_PATH: usize = 255;
/// Longest board name.
const MAX_NAME: usize = 64;
/// Longest description.
const MAX_DESCRIPTION: usize = 200;
/// Longest extra kernel command line.
const MAX_CMDLINE: usize = 1024;
/// GPT partition names hold 36 UTF-16 code units.
const MAX_PARTLABEL: usize = 36;

type Result<T> = std::result::Result<T, FieldError>;

/// The IANA name of an option 93 code, for the codes boards may use.
#[must_use]
pub fn arch_code_name(code: u16) -> Option<&'static str> {
    Some(match code {
        0 => "x86 BIOS",
        6 => "x86 (IA32) UEFI",
        7 => "x64 UEFI",
        9 => "EBC; x64 UEFI in RFC 4578 before its erratum",
        10 => "ARM 32-bit UEFI",
        11 => "ARM 64-bit UEFI",
        15 => "x86 UEFI HTTP",
        16 => "x64 UEFI HTTP",
        18 => "ARM 32-bit UEFI HTTP",
        19 => "ARM 64-bit UEFI HTTP",
        21 => "ARM 32-bit U-Boot",
        22 => "ARM 64-bit U-Boot",
        41 => "arm rpiboot",
        _ => return None,
    })
}

/// Which (method, OS architecture) pairs may claim an option 93 code.
fn code_fits(kind: BootKind, arch: Arch, code: u16) -> bool {
    match kind {
        BootKind::BiosPxe => arch == Arch::X86_64 && code == 0,
        BootKind::UefiPxe => match arch {
            Arch::X86_64 => matches!(code, 6 | 7 | 9),
            Arch::Arm64 => matches!(code, 10 | 11),
        },
        BootKind::UefiHttp => match arch {
            Arch::X86_64 => matches!(code, 15 | 16),
            Arch::Arm64 => matches!(code, 18 | 19),
        },
        BootKind::UbootPxe => arch == Arch::Arm64 && matches!(code, 21 | 22),
        // The Pi boot ROM and EEPROM bootloader send 0; 41 is Raspberry Pi's own code.
        BootKind::RpiNetboot => arch == Arch::Arm64 && matches!(code, 0 | 41),
    }
}

fn loader_fits(kind: BootKind, loader: Loader) -> bool {
    match kind {
        BootKind::BiosPxe => loader == Loader::Ipxe,
        BootKind::UefiPxe | BootKind::UefiHttp => {
            matches!(loader, Loader::Ipxe | Loader::Grub | Loader::EfiStub)
        }
        BootKind::UbootPxe => matches!(loader, Loader::UbootScript | Loader::PxelinuxConfig),
        BootKind::RpiNetboot => loader == Loader::RpiFirmware,
    }
}

impl TryFrom<BoardFile> for Board {
    type Error = FieldError;

    fn try_from(raw: BoardFile) -> Result<Board> {
        check_name(&raw.name)?;
        check_line("description", &raw.description, MAX_DESCRIPTION)?;
        let kernel = kernel(raw.arch, raw.kernel)?;
        let network = network(&raw.network)?;
        let identify = identify(raw.identify)?;
        let boot = boot_methods(raw.arch, raw.boot)?;
        if boot.iter().any(|m| m.kind == BootKind::RpiNetboot)
            && identify.mac_ouis.is_empty()
            && identify.client_guid_prefix.is_none()
        {
            return Err(FieldError::new(
                "identify",
                "an rpi-netboot board shares option 93 code 0 with x86 BIOS: \
                 set identify.mac_ouis or identify.client_guid_prefix so the server can tell them apart",
            ));
        }
        let ab = ab_layout(raw.slots, raw.bootloader)?;
        Ok(Board {
            name: raw.name,
            description: raw.description,
            arch: raw.arch,
            kernel,
            network,
            identify,
            boot,
            ab,
        })
    }
}

/// Board names are also file names and CLI arguments: lowercase ASCII, digits, `-`, `_`.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    let ok_start = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !ok_chars || !ok_start || name.len() > MAX_NAME {
        return Err(FieldError::new(
            "name",
            format!(
                "{name:?} is not a board name: use 1 to {MAX_NAME} of a-z, 0-9, '-', '_', \
                 starting with a letter or digit"
            ),
        ));
    }
    Ok(())
}

fn check_line(key: &str, value: &str, max: usize) -> Result<()> {
    if value.trim().is_empty() {
        return Err(FieldError::new(key, "must not be empty"));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(
            key,
            "must be one line without control characters",
        ));
    }
    if value.chars().count() > max {
        return Err(FieldError::new(
            key,
            format!("longer than {max} characters"),
        ));
    }
    Ok(())
}

fn kernel(arch: Arch, raw: KernelTable) -> Result<Kernel> {
    let fits = match raw.format {
        KernelFormat::Bzimage => arch == Arch::X86_64,
        KernelFormat::Arm64Image => arch == Arch::Arm64,
        KernelFormat::EfiStub => true,
    };
    if !fits {
        return Err(FieldError::new(
            "kernel.format",
            format!("a {} kernel cannot run on an {arch} board", raw.format),
        ));
    }
    if raw.console.is_empty() {
        return Err(FieldError::new(
            "kernel.console",
            "list at least one console (e.g. \"ttyS0,115200n8\")",
        ));
    }
    for (i, c) in raw.console.iter().enumerate() {
        let ok = !c.is_empty()
            && c.len() <= 64
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b",._-/:".contains(&b));
        if !ok {
            return Err(FieldError::new(
                format!("kernel.console[{i}]"),
                format!("{c:?} is not a console= value (device[,options], no spaces)"),
            ));
        }
    }
    if let Some(cmdline) = &raw.cmdline {
        check_line("kernel.cmdline", cmdline, MAX_CMDLINE)?;
    }
    Ok(Kernel {
        format: raw.format,
        console: raw.console,
        cmdline: raw.cmdline,
    })
}

fn network(raw: &NetworkTable) -> Result<NetworkHints> {
    let mtu = raw.mtu.unwrap_or(1500);
    if !(576..=9216).contains(&mtu) {
        return Err(FieldError::new(
            "network.mtu",
            format!("{mtu} is outside 576..=9216"),
        ));
    }
    // IPv4 (20) + UDP (8) + TFTP DATA header (4).
    let max_blksize = mtu - 32;
    let tftp_blksize = raw.tftp_blksize.unwrap_or(1468.min(max_blksize));
    if !(8..=max_blksize).contains(&tftp_blksize) {
        return Err(FieldError::new(
            "network.tftp_blksize",
            format!(
                "{tftp_blksize} is outside 8..={max_blksize} (RFC 2348 minimum 8; a block must fit the MTU of {mtu} with 32 header bytes)"
            ),
        ));
    }
    let tftp_windowsize = raw.tftp_windowsize.unwrap_or(1);
    if tftp_windowsize == 0 {
        return Err(FieldError::new(
            "network.tftp_windowsize",
            "0 is outside 1..=65535 (RFC 7440)",
        ));
    }
    Ok(NetworkHints {
        mtu,
        tftp_blksize,
        tftp_windowsize,
    })
}

fn identify(raw: IdentifyTable) -> Result<Identify> {
    let mut mac_ouis = Vec::with_capacity(raw.mac_ouis.len());
    for (i, text) in raw.mac_ouis.iter().enumerate() {
        let key = || format!("identify.mac_ouis[{i}]");
        let oui = parse_oui(text).ok_or_else(|| {
            FieldError::new(key(), format!("{text:?} is not an OUI like \"b8:27:eb\""))
        })?;
        if mac_ouis.contains(&oui) {
            return Err(FieldError::new(key(), format!("{oui} is listed twice")));
        }
        mac_ouis.push(oui);
    }
    let client_guid_prefix = match &raw.client_guid_prefix {
        None => None,
        Some(text) => Some(parse_guid_prefix(text).ok_or_else(|| {
            FieldError::new(
                "identify.client_guid_prefix",
                format!("{text:?} is not 1 to 16 bytes of hex (e.g. \"52506934\" for \"RPi4\")"),
            )
        })?),
    };
    if let Some(vc) = &raw.vendor_class_prefix {
        let ok = !vc.is_empty() && vc.len() <= 255 && vc.bytes().all(|b| (0x20..0x7f).contains(&b));
        if !ok {
            return Err(FieldError::new(
                "identify.vendor_class_prefix",
                "must be 1 to 255 printable ASCII characters (DHCP option 60)",
            ));
        }
    }
    Ok(Identify {
        mac_ouis,
        client_guid_prefix,
        vendor_class_prefix: raw.vendor_class_prefix,
    })
}

fn parse_oui(text: &str) -> Option<Oui> {
    let mut out = [0u8; 3];
    let mut parts = text.split(':');
    for byte in &mut out {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(Oui(out))
}

fn parse_guid_prefix(text: &str) -> Option<HexBytes> {
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(2) || bytes.len() > 32 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 2);
    for pair in bytes.chunks(2) {
        let s = std::str::from_utf8(pair).ok()?;
        out.push(u8::from_str_radix(s, 16).ok()?);
    }
    Some(HexBytes(out))
}

fn boot_methods(arch: Arch, raw: Vec<BootTable>) -> Result<Vec<BootMethod>> {
    if raw.is_empty() {
        return Err(FieldError::new(
            "boot",
            "a board needs at least one [[boot]] method",
        ));
    }
    if raw.len() > MAX_METHODS {
        return Err(FieldError::new(
            "boot",
            format!("more than {MAX_METHODS} boot methods"),
        ));
    }
    // code -> index of the method that claimed it first
    let mut seen: BTreeMap<u16, usize> = BTreeMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, m) in raw.into_iter().enumerate() {
        let at = |k: &str| format!("boot[{i}].{k}");
        if m.arch_codes.is_empty() {
            return Err(FieldError::new(
                at("arch_codes"),
                "list the DHCP option 93 codes this firmware sends",
            ));
        }
        for (j, &code) in m.arch_codes.iter().enumerate() {
            let key = format!("boot[{i}].arch_codes[{j}]");
            if code > MAX_IANA_ARCH_CODE {
                return Err(FieldError::new(
                    key,
                    format!(
                        "{code} is not a registered processor architecture type (IANA codes end at {MAX_IANA_ARCH_CODE})"
                    ),
                ));
            }
            if !code_fits(m.method, arch, code) {
                let what = arch_code_name(code).unwrap_or("a code no board method uses");
                return Err(FieldError::new(
                    key,
                    format!(
                        "code {code} ({what}) is not sent by {} firmware on an {arch} board",
                        m.method
                    ),
                ));
            }
            if let Some(first) = seen.insert(code, i) {
                let reason = if first == i {
                    format!("code {code} is listed twice")
                } else {
                    format!("code {code} is already claimed by boot[{first}]")
                };
                return Err(FieldError::new(key, reason));
            }
        }
        if !loader_fits(m.method, m.loader) {
            return Err(FieldError::new(
                at("loader"),
                format!("{} firmware cannot start a {} loader", m.method, m.loader),
            ));
        }
        check_rel_path(&at("boot_file"), &m.boot_file, MAX_BOOT_FILE, false)?;
        if m.files.len() > MAX_FILES {
            return Err(FieldError::new(
                at("files"),
                format!("more than {MAX_FILES} files"),
            ));
        }
        let mut names = BTreeSet::new();
        for (j, f) in m.files.iter().enumerate() {
            let key = format!("boot[{i}].files[{j}]");
            check_rel_path(&key, f, MAX_PATH, true)?;
            if f == &m.boot_file || !names.insert(f.as_str()) {
                return Err(FieldError::new(key, format!("{f:?} is listed twice")));
            }
        }
        let rpi = match (m.method, m.rpi) {
            (BootKind::RpiNetboot, Some(r)) => {
                let ok = !r.option43.trim().is_empty()
                    && r.option43.len() <= 64
                    && r.option43.bytes().all(|b| (0x20..0x7f).contains(&b));
                if !ok {
                    return Err(FieldError::new(
                        at("rpi.option43"),
                        "must be 1 to 64 printable ASCII characters",
                    ));
                }
                Some(RpiNetboot {
                    tftp_prefix: r.tftp_prefix,
                    prefix_boot_file: r.prefix_boot_file,
                    option43: r.option43,
                    sends_dhcp_request: r.sends_dhcp_request,
                })
            }
            (BootKind::RpiNetboot, None) => {
                return Err(FieldError::new(
                    at("rpi"),
                    "an rpi-netboot method needs a [boot.rpi] table",
                ));
            }
            (_, Some(_)) => {
                return Err(FieldError::new(
                    at("rpi"),
                    format!("[boot.rpi] only applies to rpi-netboot, not {}", m.method),
                ));
            }
            (_, None) => None,
        };
        out.push(BootMethod {
            kind: m.method,
            arch_codes: m.arch_codes,
            transport: m.method.transport(),
            boot_file: m.boot_file,
            loader: m.loader,
            files: m.files,
            rpi,
        });
    }
    Ok(out)
}

/// A path the server serves: relative, `/`-separated, no `.`/`..`/empty components,
/// printable ASCII without spaces or backslashes. A trailing `/` (a directory) only
/// where `dir_ok`.
pub(crate) fn check_rel_path(key: &str, path: &str, max: usize, dir_ok: bool) -> Result<()> {
    let bad = |why: &str| Err(FieldError::new(key, format!("{path:?} {why}")));
    if path.is_empty() {
        return bad("is empty");
    }
    if path.len() > max {
        return bad(&format!("is longer than {max} bytes"));
    }
    if path.starts_with('/') {
        return bad("must be relative to the boot root (no leading '/')");
    }
    if !path.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') {
        return bad("may only hold printable ASCII without spaces or '\\'");
    }
    let body = match path.strip_suffix('/') {
        Some(dir) if dir_ok => dir,
        Some(_) => return bad("must name a file, not a directory"),
        None => path,
    };
    for component in body.split('/') {
        match component {
            ".." => return bad("escapes the boot root with '..'"),
            "." | "" => return bad("has an empty or '.' component"),
            _ => {}
        }
    }
    Ok(())
}

/// An absolute path on the device: `/`-rooted, no `.`/`..`/empty components.
fn check_abs_path(key: &str, path: &str) -> Result<()> {
    let bad = |why: &str| Err(FieldError::new(key, format!("{path:?} {why}")));
    let Some(rest) = path.strip_prefix('/') else {
        return bad("must be an absolute path");
    };
    if path.len() > MAX_PATH {
        return bad(&format!("is longer than {MAX_PATH} bytes"));
    }
    if !path.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') {
        return bad("may only hold printable ASCII without spaces or '\\'");
    }
    for component in rest.split('/') {
        match component {
            ".." => return bad("must not contain '..'"),
            "." | "" => return bad("has an empty or '.' component"),
            _ => {}
        }
    }
    Ok(())
}

fn ab_layout(
    slots: Vec<SlotTable>,
    bootloader: Option<BootloaderTable>,
) -> Result<Option<AbLayout>> {
    let bl = match (slots.is_empty(), bootloader) {
        (true, None) => return Ok(None),
        (false, None) => {
            return Err(FieldError::new(
                "bootloader",
                "slots are listed but there is no [bootloader] to switch between them",
            ));
        }
        (true, Some(bl)) => {
            return Err(FieldError::new(
                "slots",
                format!("backend {} needs [[slots]] A and B", bl.backend),
            ));
        }
        (false, Some(bl)) => bl,
    };
    let backend = bl.backend;
    let mut a = None;
    let mut b = None;
    let count = slots.len();
    for (i, s) in slots.into_iter().enumerate() {
        let slot = slot(i, backend, s)?;
        let place = match slot.name {
            SlotName::A => &mut a,
            SlotName::B => &mut b,
        };
        if place.is_some() {
            return Err(FieldError::new(
                format!("slots[{i}].name"),
                format!("slot {} is defined twice", slot.name),
            ));
        }
        *place = Some(slot);
    }
    let (a, b) = match (a, b) {
        (Some(a), Some(b)) => (a, b),
        (a, _) => {
            let missing = if a.is_none() { "A" } else { "B" };
            return Err(FieldError::new(
                "slots",
                format!(
                    "slot {missing} is missing: an A/B board needs exactly slots A and B (found {count})"
                ),
            ));
        }
    };
    if a.location == b.location {
        return Err(FieldError::new(
            "slots",
            format!("slots A and B are both at {}", a.location),
        ));
    }
    let bootloader = bootloader_of(bl)?;
    match &bootloader {
        Bootloader::RpiTryboot {
            autoboot_partition, ..
        } => {
            // slot() guaranteed both are set for this backend.
            if a.boot_partition == b.boot_partition {
                return Err(FieldError::new(
                    "slots",
                    "slots A and B have the same boot_partition",
                ));
            }
            for (i, s) in [&a, &b].into_iter().enumerate() {
                if s.boot_partition == Some(*autoboot_partition) {
                    return Err(FieldError::new(
                        format!("slots[{i}].boot_partition"),
                        "is the autoboot_partition: autoboot.txt needs its own partition",
                    ));
                }
            }
        }
        Bootloader::EfiBootnext { .. } if a.efi_loader == b.efi_loader => {
            return Err(FieldError::new(
                "slots",
                "slots A and B have the same efi_loader",
            ));
        }
        _ => {}
    }
    Ok(Some(AbLayout {
        slots: [a, b],
        bootloader,
    }))
}

fn slot(i: usize, backend: BootloaderKind, s: SlotTable) -> Result<Slot> {
    let at = |k: &str| format!("slots[{i}].{k}");
    let name = match s.name.as_str() {
        "A" => SlotName::A,
        "B" => SlotName::B,
        other => {
            return Err(FieldError::new(
                at("name"),
                format!("{other:?} is not a slot name: use \"A\" or \"B\""),
            ));
        }
    };
    let location = match (s.partlabel, s.device) {
        (Some(label), None) => {
            let ok = !label.is_empty()
                && label.chars().count() <= MAX_PARTLABEL
                && label.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
            if !ok {
                return Err(FieldError::new(
                    at("partlabel"),
                    format!(
                        "{label:?} is not a GPT partition label (1 to {MAX_PARTLABEL} printable ASCII, no '/' or spaces)"
                    ),
                ));
            }
            SlotLocation::Partlabel(label)
        }
        (None, Some(device)) => {
            check_abs_path(&at("device"), &device)?;
            SlotLocation::Device(device)
        }
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                at("device"),
                "give either partlabel or device, not both",
            ));
        }
        (None, None) => {
            return Err(FieldError::new(
                format!("slots[{i}]"),
                "missing partlabel or device",
            ));
        }
    };
    if s.size_mib == 0 {
        return Err(FieldError::new(at("size_mib"), "must be at least 1"));
    }
    match (backend, s.boot_partition) {
        (BootloaderKind::RpiTryboot, None) => {
            return Err(FieldError::new(
                at("boot_partition"),
                "missing: rpi-tryboot needs the FAT boot partition number of each slot",
            ));
        }
        (BootloaderKind::RpiTryboot, Some(n)) => check_partition(&at("boot_partition"), n)?,
        (_, Some(_)) => {
            return Err(FieldError::new(
                at("boot_partition"),
                format!("only used by backend rpi-tryboot, not {backend}"),
            ));
        }
        (_, None) => {}
    }
    match (backend, &s.efi_loader) {
        (BootloaderKind::EfiBootnext, None) => {
            return Err(FieldError::new(
                at("efi_loader"),
                "missing: efi-bootnext needs the ESP path of each slot's EFI loader",
            ));
        }
        (BootloaderKind::EfiBootnext, Some(p)) => {
            check_rel_path(&at("efi_loader"), p, MAX_PATH, false)?;
            if !p.to_ascii_lowercase().ends_with(".efi") {
                return Err(FieldError::new(
                    at("efi_loader"),
                    format!("{p:?} must end in .efi"),
                ));
            }
        }
        (_, Some(_)) => {
            return Err(FieldError::new(
                at("efi_loader"),
                format!("only used by backend efi-bootnext, not {backend}"),
            ));
        }
        (_, None) => {}
    }
    Ok(Slot {
        name,
        location,
        size_mib: s.size_mib,
        boot_partition: s.boot_partition,
        efi_loader: s.efi_loader,
    })
}

fn check_partition(key: &str, n: u8) -> Result<()> {
    if (1..=128).contains(&n) {
        Ok(())
    } else {
        Err(FieldError::new(key, format!("{n} is outside 1..=128")))
    }
}

/// Takes a required key out of the bootloader table, or says which backend needs it.
fn required<T>(value: Option<T>, key: &str, backend: BootloaderKind) -> Result<T> {
    value.ok_or_else(|| {
        FieldError::new(
            format!("bootloader.{key}"),
            format!("missing: backend {backend} needs it"),
        )
    })
}

fn bootloader_of(bl: BootloaderTable) -> Result<Bootloader> {
    let backend = bl.backend;
    // Keys that belong to some backend: reject every one the chosen backend ignores,
    // so a half-edited file (backend changed, old keys left) fails loudly.
    let present: [(&str, bool, BootloaderKind); 7] = [
        ("env_file", bl.env_file.is_some(), BootloaderKind::GrubEnv),
        ("env", bl.env.is_some(), BootloaderKind::UbootEnv),
        (
            "bootlimit",
            bl.bootlimit.is_some(),
            BootloaderKind::UbootEnv,
        ),
        ("disk", bl.disk.is_some(), BootloaderKind::RpiTryboot),
        (
            "autoboot_partition",
            bl.autoboot_partition.is_some(),
            BootloaderKind::RpiTryboot,
        ),
        (
            "esp_device",
            bl.esp_device.is_some(),
            BootloaderKind::EfiBootnext,
        ),
        ("path", bl.path.is_some(), BootloaderKind::File),
    ];
    for (key, is_set, owner) in present {
        if is_set && owner != backend {
            return Err(FieldError::new(
                format!("bootloader.{key}"),
                format!("belongs to backend {owner}, not {backend}"),
            ));
        }
    }
    Ok(match backend {
        BootloaderKind::GrubEnv => {
            let env_file = required(bl.env_file, "env_file", backend)?;
            check_abs_path("bootloader.env_file", &env_file)?;
            Bootloader::GrubEnv { env_file }
        }
        BootloaderKind::UbootEnv => {
            let env = required(bl.env, "env", backend)?;
            let bootlimit = required(bl.bootlimit, "bootlimit", backend)?;
            if bootlimit == 0 {
                return Err(FieldError::new(
                    "bootloader.bootlimit",
                    "must be at least 1",
                ));
            }
            Bootloader::UbootEnv {
                copies: uboot_env(env)?,
                bootlimit,
            }
        }
        BootloaderKind::RpiTryboot => {
            let disk = required(bl.disk, "disk", backend)?;
            check_abs_path("bootloader.disk", &disk)?;
            let autoboot_partition =
                required(bl.autoboot_partition, "autoboot_partition", backend)?;
            check_partition("bootloader.autoboot_partition", autoboot_partition)?;
            Bootloader::RpiTryboot {
                disk,
                autoboot_partition,
            }
        }
        BootloaderKind::EfiBootnext => {
            let esp_device = required(bl.esp_device, "esp_device", backend)?;
            check_abs_path("bootloader.esp_device", &esp_device)?;
            Bootloader::EfiBootnext { esp_device }
        }
        BootloaderKind::File => {
            let path = required(bl.path, "path", backend)?;
            check_abs_path("bootloader.path", &path)?;
            Bootloader::File { path }
        }
    })
}

fn uboot_env(env: Vec<crate::raw::UbootEnvTable>) -> Result<Vec<UbootEnvCopy>> {
    if env.is_empty() || env.len() > 2 {
        return Err(FieldError::new(
            "bootloader.env",
            format!(
                "{} copies: list one environment copy, or two for a redundant environment",
                env.len()
            ),
        ));
    }
    let mut out: Vec<UbootEnvCopy> = Vec::with_capacity(env.len());
    for (i, e) in env.into_iter().enumerate() {
        let at = |k: &str| format!("bootloader.env[{i}].{k}");
        check_abs_path(&at("device"), &e.device)?;
        // A CRC32 and at least one "k=v\0\0" must fit; fw_env caps sizes far below 16 MiB.
        if !(8..=16 * 1024 * 1024).contains(&e.size) {
            return Err(FieldError::new(
                at("size"),
                format!("{} is outside 8..=16777216 bytes", e.size),
            ));
        }
        if let Some(sector) = e.sector_size
            && sector < e.size
        {
            return Err(FieldError::new(
                at("sector_size"),
                format!(
                    "{sector} is smaller than the environment ({} bytes): one copy must fit one erase sector",
                    e.size
                ),
            ));
        }
        if e.offset.checked_add(e.size).is_none() {
            return Err(FieldError::new(at("offset"), "offset + size overflows"));
        }
        if let Some(first) = out.first() {
            if first.size != e.size {
                return Err(FieldError::new(
                    at("size"),
                    format!(
                        "redundant copies must have the same size ({} vs {})",
                        first.size, e.size
                    ),
                ));
            }
            // A copy occupies its whole erase sector when it has one.
            let extent = |c_size: u64, sector: Option<u64>| sector.unwrap_or(c_size).max(c_size);
            let first_end = first
                .offset
                .saturating_add(extent(first.size, first.sector_size));
            let end = e.offset.saturating_add(extent(e.size, e.sector_size));
            let overlap = first.device == e.device && e.offset < first_end && first.offset < end;
            if overlap {
                return Err(FieldError::new(
                    at("offset"),
                    "overlaps the first copy: a redundant environment needs two separate areas",
                ));
            }
        }
        out.push(UbootEnvCopy {
            device: e.device,
            offset: e.offset,
            size: e.size,
            sector_size: e.sector_size,
        });
    }
    Ok(out)
}
