//! What the device is, read from the running kernel: `/proc` and `/sys` under a root directory
//! (`/` on a device, a fixture tree in tests). Every file is read with a small cap, text is
//! cleaned to one printable line of at most 255 bytes, and whatever is missing or malformed
//! is left out rather than failing: an inventory is information, not a gate.

use std::path::{Path, PathBuf};

use tugboot_wire::{Disk, Interface, Inventory, Mac};

/// Largest file read.
const MAX_FILE: usize = 64 * 1024;
/// Longest text kept.
const MAX_TEXT: usize = 255;
/// The store keeps sizes as signed 64-bit integers.
const MAX_I64: u64 = i64::MAX.unsigned_abs();

/// Where `/proc` and `/sys` are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysRoot(pub PathBuf);

impl Default for SysRoot {
    fn default() -> Self {
        Self(PathBuf::from("/"))
    }
}

impl SysRoot {
    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    fn read(&self, rel: impl AsRef<Path>) -> Option<String> {
        let bytes = crate::config::read_capped(&self.0.join(rel), MAX_FILE).ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A one-line value: trimmed, NULs (device tree strings) and control characters dropped,
    /// cut to 255 bytes; `None` when empty or absent.
    fn line(&self, rel: impl AsRef<Path>) -> Option<String> {
        clean(&self.read(rel)?)
    }

    /// Names of the entries of a directory, sorted.
    fn list(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(rel))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

/// One printable line of at most 255 bytes.
#[must_use]
pub fn clean(text: &str) -> Option<String> {
    let mut s: String = text
        .split(['\0', '\n'])
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let trimmed = s.trim();
    if trimmed.len() != s.len() {
        s = trimmed.to_owned();
    }
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    (!s.is_empty()).then_some(s)
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
#[must_use]
pub fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then(|| kib.saturating_mul(1024))
}

/// The number of CPUs in a `/sys/devices/system/cpu/online` list (`0-3,6`).
#[must_use]
pub fn cpu_count(online: &str) -> Option<u32> {
    let mut n: u32 = 0;
    for part in online.trim().split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let a = part.parse::<u32>().ok()?;
                (a, a)
            }
        };
        n = n.checked_add(b.checked_sub(a)?.checked_add(1)?)?;
    }
    (n > 0).then_some(n)
}

/// Seconds since boot from `/proc/uptime` (`12345.67 …`).
#[must_use]
pub fn uptime_secs(uptime: &str) -> Option<u64> {
    let first = uptime.split_whitespace().next()?;
    first.split('.').next()?.parse().ok()
}

/// Network interfaces with a hardware address other than all zeros (no loopback), sorted by
/// name, at most 64.
#[must_use]
pub fn interfaces(root: &SysRoot) -> Vec<Interface> {
    root.list("sys/class/net")
        .into_iter()
        .filter(|n| n != "lo")
        .filter_map(|name| {
            let mac: Mac = root
                .line(format!("sys/class/net/{name}/address"))?
                .parse()
                .ok()?;
            let name = clean(&name)?;
            (mac.0 != [0; 6]).then_some(Interface { name, mac })
        })
        .take(tugboot_wire::device::MAX_INVENTORY_ITEMS)
        .collect()
}

/// Whole disks (no loop, RAM, zram or network block devices), sorted by name, at most 64.
#[must_use]
pub fn disks(root: &SysRoot) -> Vec<Disk> {
    root.list("sys/block")
        .into_iter()
        .filter(|n| {
            !["loop", "ram", "zram", "nbd"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .filter_map(|name| {
            let sectors: u64 = root.line(format!("sys/block/{name}/size"))?.parse().ok()?;
            Some(Disk {
                model: root.line(format!("sys/block/{name}/device/model")),
                removable: root.line(format!("sys/block/{name}/removable")).as_deref() == Some("1"),
                size_bytes: sectors.saturating_mul(512).min(MAX_I64),
                name: clean(&name)?,
            })
        })
        .take(tugboot_wire::device::MAX_INVENTORY_ITEMS)
        .collect()
}

/// The hardware model: the device tree's `model`, else DMI vendor and product.
#[must_use]
pub fn model(root: &SysRoot) -> Option<String> {
    root.line("proc/device-tree/model").or_else(|| {
        let product = root.line("sys/class/dmi/id/product_name")?;
        Some(match root.line("sys/class/dmi/id/sys_vendor") {
            Some(v) => clean(&format!("{v} {product}"))?,
            None => product,
        })
    })
}

/// The serial number: the device tree's `serial-number` (Raspberry Pi), else the DMI product
/// serial (readable by root only).
#[must_use]
pub fn serial(root: &SysRoot) -> Option<String> {
    root.line("proc/device-tree/serial-number")
        .or_else(|| root.line("sys/class/dmi/id/product_serial"))
}

/// The whole inventory of the device configured as `board`.
#[must_use]
pub fn collect(root: &SysRoot, board: &str) -> Inventory {
    Inventory {
        board: board.to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        kernel: root
            .line("proc/sys/kernel/osrelease")
            .unwrap_or_else(|| "unknown".to_owned()),
        model: model(root),
        serial: serial(root),
        cpus: root
            .read("sys/devices/system/cpu/online")
            .and_then(|s| cpu_count(&s)),
        memory_bytes: root
            .read("proc/meminfo")
            .and_then(|s| mem_total(&s))
            .map(|m| m.min(MAX_I64)),
        disks: disks(root),
        interfaces: interfaces(root),
    }
}

/// Seconds since boot.
#[must_use]
pub fn uptime(root: &SysRoot) -> Option<u64> {
    root.read("proc/uptime").and_then(|s| uptime_secs(&s))
}

/// The MAC to enroll with: `BOOTIF=01-…` on the kernel command line (what PXELINUX-style boot
/// loaders pass: the interface the machine netbooted from, which is how the server knows it),
/// else the configured interface's address, else the first interface with a hardware device
/// behind it (`/sys/class/net/<if>/device`), else the first interface at all.
///
/// # Errors
/// A description of why none was found.
pub fn enroll_mac(root: &SysRoot, cmdline: &str, interface: Option<&str>) -> Result<Mac, String> {
    if let Some(m) = cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix("BOOTIF="))
        .next_back()
        .and_then(Mac::from_pxe_name)
    {
        return Ok(m);
    }
    let all = interfaces(root);
    if let Some(want) = interface {
        return all
            .iter()
            .find(|i| i.name == want)
            .map(|i| i.mac)
            .ok_or_else(|| format!("interface {want} has no hardware address"));
    }
    all.iter()
        .find(|i| {
            root.path(&format!("sys/class/net/{}/device", i.name))
                .exists()
        })
        .or_else(|| all.first())
        .map(|i| i.mac)
        .ok_or_else(|| "no network interface with a hardware address".to_owned())
}

/// A value from the kernel command line (`name=value`, the last one wins).
#[must_use]
pub fn cmdline_value<'a>(cmdline: &'a str, name: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .next_back()
}

/// The entry of the `inventory` fuzz target and its seed test: the text parsers over any
/// bytes never panic.
pub fn fuzz_texts(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = mem_total(&text);
    let _ = cpu_count(&text);
    let _ = uptime_secs(&text);
    if let Some(c) = clean(&text) {
        assert!(c.len() <= MAX_TEXT && !c.contains('\n'));
    }
    let _ = cmdline_value(&text, "tugboot.slot");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> (tempfile::TempDir, SysRoot) {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let root = SysRoot(dir.path().to_path_buf());
        (dir, root)
    }

    #[test]
    fn parsers() {
        assert_eq!(
            mem_total("MemTotal:        3930568 kB\nMemFree: 1 kB\n"),
            Some(3_930_568 * 1024)
        );
        assert_eq!(mem_total("MemTotal: lots"), None);
        assert_eq!(cpu_count("0-3\n"), Some(4));
        assert_eq!(cpu_count("0-1,4,6-7"), Some(5));
        assert_eq!(cpu_count("3-1"), None);
        assert_eq!(cpu_count(""), None);
        assert_eq!(uptime_secs("12345.67 40000.00\n"), Some(12345));
        assert_eq!(
            clean("  Raspberry Pi 4 Model B Rev 1.5\0"),
            Some("Raspberry Pi 4 Model B Rev 1.5".into())
        );
        assert_eq!(clean("\0"), None);
        assert_eq!(clean(&"é".repeat(200)).unwrap().len(), 254);
        assert_eq!(
            cmdline_value(
                "a tugboot.ca_sha256=ab tugboot.ca_sha256=cd",
                "tugboot.ca_sha256"
            ),
            Some("cd")
        );
        assert_eq!(
            cmdline_value("tugboot.ca_sha256x=1", "tugboot.ca_sha256"),
            None
        );
    }

    #[test]
    fn inventory_of_a_raspberry_pi_tree() {
        let (_d, root) = tree(&[
            ("proc/sys/kernel/osrelease", "6.6.31-v8+\n"),
            ("proc/device-tree/model", "Raspberry Pi 4 Model B Rev 1.5\0"),
            ("proc/device-tree/serial-number", "10000000abcdef01\0"),
            ("proc/meminfo", "MemTotal:        3930568 kB\n"),
            ("sys/devices/system/cpu/online", "0-3\n"),
            ("sys/block/mmcblk0/size", "62333952\n"),
            ("sys/block/mmcblk0/removable", "0\n"),
            ("sys/block/loop0/size", "8\n"),
            ("sys/block/sda/size", "60062500\n"),
            ("sys/block/sda/removable", "1\n"),
            ("sys/block/sda/device/model", "Flash Disk      \n"),
            ("sys/class/net/lo/address", "00:00:00:00:00:00\n"),
            ("sys/class/net/eth0/address", "dc:a6:32:01:02:03\n"),
            ("sys/class/net/eth0/device/uevent", ""),
            ("sys/class/net/wlan0/address", "dc:a6:32:01:02:04\n"),
            ("sys/class/net/bogus/address", "nope\n"),
        ]);
        let inv = collect(&root, "raspberrypi-4");
        assert_eq!(inv.kernel, "6.6.31-v8+");
        assert_eq!(inv.model.as_deref(), Some("Raspberry Pi 4 Model B Rev 1.5"));
        assert_eq!(inv.serial.as_deref(), Some("10000000abcdef01"));
        assert_eq!(inv.cpus, Some(4));
        assert_eq!(inv.memory_bytes, Some(3_930_568 * 1024));
        assert_eq!(
            inv.disks,
            vec![
                Disk {
                    name: "mmcblk0".into(),
                    size_bytes: 62_333_952 * 512,
                    model: None,
                    removable: false
                },
                Disk {
                    name: "sda".into(),
                    size_bytes: 60_062_500 * 512,
                    model: Some("Flash Disk".into()),
                    removable: true
                },
            ]
        );
        let names: Vec<_> = inv.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["eth0", "wlan0"]);
        // The report validates on the server's side too.
        let report = tugboot_wire::DeviceReport {
            id: "b-1".into(),
            boot_id: "b".into(),
            slot: Some(tugboot_wire::Slot::A),
            inventory: Some(inv),
            ..Default::default()
        };
        report.validate().unwrap();
        // Enrollment MAC: the interface with a device behind it, unless told otherwise.
        assert_eq!(
            enroll_mac(&root, "quiet", None).unwrap().to_string(),
            "dc:a6:32:01:02:03"
        );
        assert_eq!(
            enroll_mac(&root, "quiet", Some("wlan0"))
                .unwrap()
                .to_string(),
            "dc:a6:32:01:02:04"
        );
        assert_eq!(
            enroll_mac(&root, "BOOTIF=01-02-00-00-0a-0b-0c", None)
                .unwrap()
                .to_string(),
            "02:00:00:0a:0b:0c"
        );
        assert!(enroll_mac(&root, "", Some("eth9")).is_err());
    }

    #[test]
    fn an_empty_tree_gives_a_thin_inventory() {
        let (_d, root) = tree(&[]);
        let inv = collect(&root, "x86_64-uefi");
        assert_eq!(inv.kernel, "unknown");
        assert!(inv.disks.is_empty() && inv.interfaces.is_empty());
        assert!(enroll_mac(&root, "", None).is_err());
        // DMI for PCs.
        let (_d, root) = tree(&[
            ("sys/class/dmi/id/sys_vendor", "QEMU\n"),
            (
                "sys/class/dmi/id/product_name",
                "Standard PC (Q35 + ICH9, 2009)\n",
            ),
        ]);
        assert_eq!(
            model(&root).as_deref(),
            Some("QEMU Standard PC (Q35 + ICH9, 2009)")
        );
    }
}
