//! `tugboot-agent install-disk` and its parts against the real tools.
//!
//! - The GPT the agent writes, as sgdisk (`-v`, `-p`, `-i`), blkid, partx and fdisk read it
//!   (512- and 4096-byte sectors); its bytes against a fixture.
//! - Tables and file systems made by sgdisk, sfdisk, mke2fs, mkfs.vfat and mksquashfs
//!   (tests/fixtures/agent-install/gpt, `regenerate.sh`) as the agent's reader and probe see
//!   them; every seed of the `install_gpt` and `installer_config` fuzz targets through their
//!   entry functions.
//! - The `Boot####` writer on a stand-in efivarfs (a copy of tests/fixtures/efi/efivars): real
//!   efivarfs needs UEFI, which the QEMU lifecycle test has.
//! - The binary's refusals that need no root (not a block device, a missing ESP image, a bad
//!   configuration).
//! - As root (`#[ignore = "root: loop devices"]`): the real binary installs onto a 2 GiB loop
//!   device against the real device API in this process — then sgdisk, blkid, unsquashfs,
//!   grub-editenv and a mount of the data partition check the result, and the server holds the
//!   `installed` report; a second run without `--wipe` is refused; an install cut short (no
//!   agent state) is written again without `--wipe` with the identity it had; with `--wipe` it
//!   installs again.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tugboot_agent::bootloader::efi::entry;
use tugboot_agent::bootloader::efi::{Efivarfs, load_option};
use tugboot_agent::config::{DeviceConfig, InstallerConfig};
use tugboot_agent::install::gpt::{self, Guid, Sizes};
use tugboot_agent::install::{fuzzing, probe};

mod api;

fn fixtures(sub: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(sub)
}

/// `(name, bytes)` of every file in a fixture directory, sorted.
fn seeds(sub: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fixtures(sub);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn tool(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (install gdisk, fdisk, util-linux)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}: {}\n{text}", out.status);
    text
}

fn guids() -> [Guid; 5] {
    [
        "11111111-2222-4333-8444-555555555555",
        "6E5D9A3C-1F2B-4C47-9C1E-8A2D610B4701",
        "AAAAAAAA-0000-4000-8000-00000000000A",
        "BBBBBBBB-0000-4000-8000-00000000000B",
        "DDDDDDDD-0000-4000-8000-00000000000D",
    ]
    .map(|g| Guid::parse(g).unwrap())
}

const SIZES: Sizes = Sizes {
    esp_mib: 64,
    slot_mib: 512,
    data_mib: 0,
};

/// A sparse file of `bytes` holding `layout`'s tables, written as the agent writes them.
fn disk_file(dir: &Path, bytes: u64, layout: &gpt::Layout) -> PathBuf {
    use std::os::unix::fs::FileExt as _;
    let path = dir.join("disk.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(bytes).unwrap();
    f.write_all_at(&layout.primary(), 0).unwrap();
    let (at, backup) = layout.backup();
    f.write_all_at(&backup, at).unwrap();
    path
}

/// The agent's table, byte for byte (regenerate with TUGBOOT_WRITE_FIXTURES=1).
#[test]
fn our_table_fixture() {
    let layout = gpt::plan(2 << 30, 512, SIZES, guids()).unwrap();
    let path = fixtures("agent-install/gpt/ours-2g-head.bin");
    if std::env::var_os("TUGBOOT_WRITE_FIXTURES").is_some() {
        std::fs::write(&path, layout.primary()).unwrap();
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        layout.primary(),
        "{}",
        path.display()
    );
}

#[test]
fn the_table_as_sgdisk_blkid_partx_and_fdisk_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let layout = gpt::plan(2 << 30, 512, SIZES, guids()).unwrap();
    let disk = disk_file(dir.path(), 2 << 30, &layout);
    let v = tool(Command::new("sgdisk").arg("-v").arg(&disk));
    assert!(v.contains("No problems found"), "{v}");
    let p = tool(Command::new("sgdisk").arg("-p").arg(&disk));
    assert!(
        p.contains("Disk identifier (GUID): 11111111-2222-4333-8444-555555555555"),
        "{p}"
    );
    assert!(p.contains("Partition table holds up to 128 entries"), "{p}");
    assert!(
        p.contains("First usable sector is 34, last usable sector is 4194270"),
        "{p}"
    );
    let rows: Vec<Vec<&str>> = p
        .lines()
        .skip_while(|l| !l.starts_with("Number"))
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            ["1", "2048", "133119", "64.0", "MiB", "EF00", "tugboot-esp"],
            [
                "2",
                "133120",
                "1181695",
                "512.0",
                "MiB",
                "8300",
                "tugboot-a"
            ],
            [
                "3",
                "1181696",
                "2230271",
                "512.0",
                "MiB",
                "8300",
                "tugboot-b"
            ],
            [
                "4",
                "2230272",
                "4192255",
                "958.0",
                "MiB",
                "8300",
                "tugboot-data"
            ],
        ],
        "{p}"
    );
    for (n, code, uuid) in [
        (
            1,
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B (EFI system partition)",
            "6E5D9A3C-1F2B-4C47-9C1E-8A2D610B4701",
        ),
        (
            4,
            "0FC63DAF-8483-4772-8E79-3D69D8477DE4 (Linux filesystem)",
            "DDDDDDDD-0000-4000-8000-00000000000D",
        ),
    ] {
        let i = tool(Command::new("sgdisk").arg(format!("-i{n}")).arg(&disk));
        assert!(i.contains(&format!("Partition GUID code: {code}")), "{i}");
        assert!(i.contains(&format!("Partition unique GUID: {uuid}")), "{i}");
        assert!(i.contains("Attribute flags: 0000000000000000"), "{i}");
    }
    let b = tool(
        Command::new("blkid")
            .args(["-p", "-o", "export"])
            .arg(&disk),
    );
    assert!(b.contains("PTTYPE=gpt"), "{b}");
    assert!(
        b.contains("PTUUID=11111111-2222-4333-8444-555555555555"),
        "{b}"
    );
    let x = tool(
        Command::new("partx")
            .args(["-s", "-g", "-o", "NR,START,SECTORS,NAME,UUID,TYPE"])
            .arg(&disk),
    );
    let lines: Vec<Vec<&str>> = x.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        lines[1],
        [
            "2",
            "133120",
            "1048576",
            "tugboot-a",
            "aaaaaaaa-0000-4000-8000-00000000000a",
            "0fc63daf-8483-4772-8e79-3d69d8477de4"
        ],
        "{x}"
    );
    assert_eq!(lines.len(), 4, "{x}");
    let f = tool(Command::new("fdisk").arg("-l").arg(&disk));
    assert!(f.contains("Disklabel type: gpt"), "{f}");
    assert!(
        f.contains("Disk identifier: 11111111-2222-4333-8444-555555555555"),
        "{f}"
    );
    assert!(
        f.contains("EFI System") && f.contains("Linux filesystem"),
        "{f}"
    );
    assert!(
        !f.contains("does not start on physical sector boundary"),
        "{f}"
    );
    // 4096-byte sectors: 4 sectors of entries, 256-sector alignment (fdisk -b 4096).
    let dir4 = tempfile::tempdir().unwrap();
    let l4 = gpt::plan(2 << 30, 4096, SIZES, guids()).unwrap();
    let disk4 = disk_file(dir4.path(), 2 << 30, &l4);
    let f = tool(Command::new("fdisk").args(["-b", "4096", "-l"]).arg(&disk4));
    assert!(
        f.contains("Sector size (logical/physical): 4096 bytes"),
        "{f}"
    );
    assert!(f.contains("Disklabel type: gpt"), "{f}");
    let starts: Vec<&str> = f
        .lines()
        .filter(|l| l.contains("disk.img") && !l.starts_with("Disk "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(starts, ["256", "16640", "147712", "278784"], "{f}");
    assert!(!f.contains("GPT PMBR size mismatch"), "{f}");
}

#[test]
fn tables_and_file_systems_of_the_real_tools_as_the_agent_reads_them() {
    let read = |name: &str| std::fs::read(fixtures("agent-install/gpt").join(name)).unwrap();
    // sgdisk: both copies of a 64 KiB disk.
    let small = read("sgdisk-64k-4-partitions.bin");
    let t = gpt::read(&small, 0, 1, 512).unwrap();
    let names: Vec<&str> = t.partitions.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, gpt::LABELS);
    assert_eq!(t.partitions[0].type_guid, gpt::ESP_TYPE);
    assert_eq!(t.partitions[0].guid, guids()[1]);
    assert_eq!(
        (t.partitions[0].first_lba, t.partitions[0].last_lba),
        (40, 55)
    );
    assert_eq!(t.header.disk_guid, guids()[0]);
    let b = gpt::read(&small, 0, 127, 512).unwrap();
    assert_eq!(b.partitions, t.partitions);
    assert_eq!((b.header.my_lba, b.header.alternate_lba), (127, 1));
    // sfdisk: the head of a 2 GiB disk.
    let t = gpt::read(&read("sfdisk-2g-gpt-head.bin"), 0, 1, 512).unwrap();
    assert_eq!(t.partitions.len(), 2);
    assert_eq!(t.partitions[1].first_lba, 133_120);
    assert_eq!(t.partitions[1].name, "tugboot-a");
    // The probe names what each holds.
    let probe = |name: &str| {
        let d = read(name);
        probe::describe(&probe::probe(&d, &d, d.len() as u64, 512))
    };
    assert_eq!(
        probe("sgdisk-64k-4-partitions.bin"),
        "a GPT (primary table) with 4 partitions (tugboot-esp, tugboot-a, tugboot-b, tugboot-data)"
    );
    let damaged = probe("bad-entries-crc.bin");
    assert!(
        damaged.starts_with("a damaged GPT (primary table: entry array CRC-32 is ")
            && damaged.ends_with(
                "a GPT (backup table) with 4 partitions (tugboot-esp, tugboot-a, tugboot-b, \
                 tugboot-data)"
            ),
        "{damaged}"
    );
    assert_eq!(
        probe("sfdisk-dos-head.bin"),
        "an MBR partition table with 2 partitions"
    );
    assert_eq!(
        probe("mke2fs-ext2-head.bin"),
        "a signature of ext2/3/4 at byte 1080"
    );
    assert_eq!(
        probe("mkfs-vfat-head.bin"),
        "a signature of vfat at byte 54"
    );
    assert_eq!(
        probe("mksquashfs-head.bin"),
        "a signature of squashfs at byte 0"
    );
    assert_eq!(probe("blank.bin"), "");
    assert!(probe("ours-2g-head.bin").starts_with("a GPT (primary table) with 4 partitions"));
}

#[test]
fn every_gpt_seed_through_the_fuzz_entry() {
    let seeds = seeds("agent-install/gpt");
    assert!(seeds.len() >= 9, "fixtures missing");
    for (name, data) in seeds {
        let tables = fuzzing::gpt(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = match name.as_str() {
            "sgdisk-64k-4-partitions.bin" => 2, // primary and backup, at 512-byte sectors
            "bad-entries-crc.bin" => 1,         // the backup only
            n if n.ends_with("-gpt-head.bin") || n.starts_with("ours-") => 1,
            _ => 0,
        };
        assert_eq!(tables, want, "{name}");
    }
}

#[test]
fn every_config_seed_through_the_fuzz_entry() {
    let seeds = seeds("agent-install/config");
    assert!(seeds.len() >= 10, "fixtures missing");
    for (name, data) in seeds {
        let accepted = fuzzing::installer_config(&data);
        assert_eq!(accepted, name.starts_with("good-"), "{name}");
        if !accepted {
            let e = InstallerConfig::parse_bytes(&data).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{name}: {e}");
        }
    }
    let text =
        std::fs::read_to_string(fixtures("agent-install/config/good-everything.toml")).unwrap();
    let c = InstallerConfig::parse(&text).unwrap();
    assert_eq!(c.efi_loader.as_deref(), Some("\\EFI\\tugboot\\grubx64.efi"));
    assert_eq!(c.reread_command, ["partx", "-u", "{disk}"]);
    let d = DeviceConfig::parse(&c.agent_toml()).unwrap();
    assert_eq!(d.slots.a, Path::new("/dev/sda2"));
    assert_eq!(
        d.state_file,
        Path::new("/var/lib/tugboot-data/tugboot/state.json")
    );
    assert_eq!(d.enroll.renew_before.as_secs(), 20 * 86_400);
    assert!(d.enroll.ca_sha256.is_some());
}

/// The writer on a copy of the fixture efivarfs (OVMF-like entries 0000..0003, BootOrder
/// 1,2,3,0): a new entry 0004 first in BootOrder, NV+BS+RT, readable by the agent's parser;
/// installing again replaces it.
#[test]
fn the_boot_entry_in_a_stand_in_efivarfs() {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixtures("efi/efivars")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let vars = Efivarfs::open(dir.path()).unwrap();
    let layout = gpt::plan(2 << 30, 512, SIZES, guids()).unwrap();
    let esp = &layout.partitions[0];
    let path = entry::gpt_loader_path(
        1,
        esp.first_lba,
        esp.sectors(),
        esp.guid.0,
        "\\EFI\\BOOT\\BOOTX64.EFI",
    );
    let plan = entry::install(&vars, "tugboot", &path).unwrap();
    assert_eq!((plan.number, plan.replaces), (4, false));
    assert_eq!(plan.order, [4, 1, 2, 3, 0]);
    let raw = std::fs::read(vars.path("Boot0004")).unwrap();
    assert_eq!(&raw[..4], &[7, 0, 0, 0], "NV+BS+RT");
    let opt = load_option::parse(&raw[4..]).unwrap();
    assert_eq!(
        opt.to_string(),
        "tugboot\tHD(1,GPT,6e5d9a3c-1f2b-4c47-9c1e-8a2d610b4701,0x800,0x20000)/File(\\EFI\\BOOT\\BOOTX64.EFI)"
    );
    assert!(opt.is_active());
    assert_eq!(
        vars.read("BootOrder")
            .unwrap()
            .unwrap()
            .as_u16_list()
            .unwrap(),
        [4, 1, 2, 3, 0]
    );
    // The same bytes as the fixture of this entry.
    let fixture = fixtures("agent-install/Boot0004-tugboot.bin");
    if std::env::var_os("TUGBOOT_WRITE_FIXTURES").is_some() {
        std::fs::write(&fixture, &raw).unwrap();
    }
    assert_eq!(std::fs::read(&fixture).unwrap(), raw);
    // A reinstall (new ESP GUID) replaces the entry; other vendors' Boot0001 is left alone.
    let other = std::fs::read(
        dir.path()
            .join("Boot0001-605dab50-e046-4300-abb6-3dd810dd8b23"),
    )
    .unwrap();
    let path = entry::gpt_loader_path(
        1,
        esp.first_lba,
        esp.sectors(),
        [9; 16],
        "\\EFI\\BOOT\\BOOTX64.EFI",
    );
    let again = entry::install(&vars, "tugboot", &path).unwrap();
    assert_eq!((again.number, again.replaces), (4, true));
    assert_eq!(again.order, [4, 1, 2, 3, 0]);
    assert_eq!(vars.boot_entries(64).unwrap(), [0, 1, 2, 3, 4]);
    assert_eq!(
        std::fs::read(
            dir.path()
                .join("Boot0001-605dab50-e046-4300-abb6-3dd810dd8b23")
        )
        .unwrap(),
        other
    );
}

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tugboot-agent"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The last line, which is the error.
fn error_line(o: &Output) -> String {
    let e = stderr(o);
    e.lines().last().unwrap_or_default().to_owned()
}

/// An installer configuration for `disk`, everything else in `dir`.
fn installer_toml(dir: &Path, server: &str, disk: &str, extra_install: &str) -> String {
    let d = dir.display();
    format!(
        r#"server = "{server}"
board = "x86_64-uefi"
trust_root = "{d}/installer/root.json"
[tls]
ca = "{d}/installer/ca.pem"
[enroll]
mac = "02:00:00:00:bb:01"
token_file = "{d}/installer/token"
[install]
disk = "{disk}"
esp_image = "{d}/esp.img"
esp_mib = 16
slot_mib = 64
data_mount = "{d}/data"
reboot_command = ["reboot", "-f"]
efivars = "{d}/no-uefi/efivars"
{extra_install}
"#
    )
}

#[test]
fn refusals_without_root() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("installer.toml");
    // A character device is no disk; nothing is opened for writing.
    std::fs::write(dir.path().join("esp.img"), vec![0u8; 4096]).unwrap();
    std::fs::write(
        &cfg,
        installer_toml(dir.path(), "https://127.0.0.1:9", "/dev/null", ""),
    )
    .unwrap();
    let o = agent(&["-c", cfg.to_str().unwrap(), "install-disk"]);
    assert!(!o.status.success());
    assert_eq!(
        error_line(&o),
        "error: install-disk: /dev/null: not a block device"
    );
    // The ESP image is read before any disk is looked at.
    std::fs::remove_file(dir.path().join("esp.img")).unwrap();
    let o = agent(&["-c", cfg.to_str().unwrap(), "install-disk", "--wipe"]);
    let e = error_line(&o);
    assert!(
        e.starts_with("error: install-disk: open ") && e.contains("esp.img"),
        "{e}"
    );
    // Configuration errors name the file, the line and the key.
    std::fs::write(
        &cfg,
        installer_toml(dir.path(), "https://127.0.0.1:9", "/dev/vda", "")
            .replace("slot_mib = 64", "slot_mib = 0"),
    )
    .unwrap();
    let o = agent(&["-c", cfg.to_str().unwrap(), "install-disk"]);
    let e = error_line(&o);
    assert!(
        e.contains("installer.toml: line 13, key `install.slot_mib`: must be 1..="),
        "{e}"
    );
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

// ------------------------------------------------------------------------------------------
// As root: the whole command on a loop device against the real device API.

/// A loop device over a sparse file; detached (and anything of it unmounted) when dropped,
/// also when the test fails.
struct Loop {
    dev: String,
    mounts: Vec<PathBuf>,
}

impl Loop {
    fn new(file: &Path) -> Self {
        let out = tool(
            Command::new("losetup")
                .args(["-f", "-P", "--show"])
                .arg(file),
        );
        Self {
            dev: out.trim().to_owned(),
            mounts: Vec::new(),
        }
    }

    fn part(&self, n: u32) -> String {
        format!("{}p{n}", self.dev)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        for m in &self.mounts {
            let _ = Command::new("umount").arg(m).output();
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).output();
    }
}

/// Whether the running kernel parses GPTs itself (CONFIG_EFI_PARTITION); otherwise the
/// partitions are given to it from user space (partx, BLKPG).
fn kernel_reads_gpt() -> bool {
    let out = Command::new("sh")
        .args([
            "-c",
            "zcat /proc/config.gz 2>/dev/null || cat /boot/config-$(uname -r) 2>/dev/null",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("CONFIG_EFI_PARTITION=y")
}

fn blkid(dev: &str) -> String {
    tool(Command::new("blkid").args(["-p", "-o", "export", dev]))
}

#[test]
#[ignore = "root: loop devices"]
fn install_onto_a_loop_device_against_the_real_api() {
    use tugboot_agent::update::AgentState;

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The OS image: a squashfs with /boot in it, signed and published, rolled out to all.
    let root = d.join("rootfs");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("boot/vmlinuz"), api::noise(300_000, 5)).unwrap();
    std::fs::write(root.join("etc/os-release"), "NAME=edge-os\nVERSION_ID=7\n").unwrap();
    tool(
        Command::new("mksquashfs")
            .arg(&root)
            .arg(d.join("rootfs.img"))
            .args(["-noappend", "-quiet", "-no-progress", "-all-root"]),
    );
    let squashfs = std::fs::read(d.join("rootfs.img")).unwrap();
    let api = api::Api::start(tugboot_api::server::ApiConfig::default());
    api.publish(
        &api::manifest_named("edge-os", 7, "x86_64-uefi", &squashfs),
        &squashfs,
    );
    api.rollout("edge-os", 7, 500);
    // The installer's files: trust root, the server's CA, a one-time token; an ESP image.
    std::fs::create_dir_all(d.join("installer")).unwrap();
    std::fs::write(d.join("installer/root.json"), api::root_bytes()).unwrap();
    std::fs::write(d.join("installer/ca.pem"), &api.ca_pem).unwrap();
    let new_token = || {
        let (status, v) = api.op("POST", "/api/v1/admin/enrollment-tokens", &Value::Null);
        assert_eq!(status, 201, "{v}");
        std::fs::write(d.join("installer/token"), v["token"].as_str().unwrap()).unwrap();
    };
    new_token();
    let esp = d.join("esp.img");
    tool(Command::new("mkfs.vfat").arg("-C").arg(&esp).arg("8192"));
    std::fs::write(d.join("BOOTX64.EFI"), b"not really a loader").unwrap();
    tool(
        Command::new("mmd")
            .arg("-i")
            .arg(&esp)
            .args(["::/EFI", "::/EFI/BOOT"]),
    );
    tool(
        Command::new("mcopy")
            .arg("-i")
            .arg(&esp)
            .arg(d.join("BOOTX64.EFI"))
            .arg("::/EFI/BOOT/BOOTX64.EFI"),
    );
    // The disk.
    let image = d.join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let mut lo = Loop::new(&image);
    lo.mounts.push(d.join("data"));
    let reread = if kernel_reads_gpt() {
        String::new()
    } else {
        eprintln!("this kernel does not parse GPTs: partitions given by partx -u");
        "reread_command = [\"partx\", \"-u\", \"{disk}\"]".to_owned()
    };
    let cfg = d.join("installer.toml");
    std::fs::write(&cfg, installer_toml(d, &api.url(), &lo.dev, &reread)).unwrap();
    let cfg = cfg.to_str().unwrap().to_owned();

    let o = agent(&["-c", &cfg, "install-disk"]);
    let log = stderr(&o);
    eprintln!("{log}");
    assert!(o.status.success(), "{log}");
    let data_mib = (2048 - 1 - 16 - 2 * 64 - 1) as u64;
    for want in [
        format!(
            "tugboot-agent install: partitioned {} (GPT: esp 16 MiB, a 64 MiB, b 64 MiB, data {data_mib} MiB; 2147483648 bytes, 512-byte sectors)",
            lo.dev
        ),
        format!(
            "tugboot-agent install: formatted {} (ext2, label tugboot-data)",
            lo.part(4)
        ),
        "tugboot-agent install: enrolled as device ".to_owned(),
        format!(
            "tugboot-agent install: installing edge-os 7 ({} bytes) into slot A ({}, 64 MiB)",
            squashfs.len(),
            lo.part(2)
        ),
        "tugboot-agent install: wrote slot A and read it back: sha256 ".to_owned(),
        "tugboot-agent install: wrote the ESP image ".to_owned(),
        "tugboot-agent install: no EFI boot entry: this machine did not boot through UEFI"
            .to_owned(),
        "tugboot-agent install: reported installed edge-os 7 (slot A)".to_owned(),
        format!(
            "tugboot-agent install: done: {} boots edge-os 7 from slot A",
            lo.dev
        ),
    ] {
        assert!(log.contains(&want), "wanted {want:?} in\n{log}");
    }

    // The table, as the tools see it.
    let v = tool(Command::new("sgdisk").arg("-v").arg(&lo.dev));
    assert!(v.contains("No problems found"), "{v}");
    let p = tool(Command::new("sgdisk").arg("-p").arg(&lo.dev));
    let disk_guid = p
        .lines()
        .find_map(|l| l.strip_prefix("Disk identifier (GUID): "))
        .unwrap()
        .to_owned();
    for (n, label, ty) in [
        (1, "tugboot-esp", "vfat"),
        (2, "tugboot-a", "squashfs"),
        (3, "tugboot-b", ""),
        (4, "tugboot-data", "ext2"),
    ] {
        let b = blkid(&lo.part(n));
        assert!(b.contains(&format!("PART_ENTRY_NAME={label}")), "{b}");
        if !ty.is_empty() {
            assert!(b.contains(&format!("TYPE={ty}")), "{n}: {b}");
        }
    }
    assert!(blkid(&lo.part(4)).contains("LABEL=tugboot-data"));
    assert!(blkid(&lo.part(1)).contains("PART_ENTRY_TYPE=c12a7328-f81f-11d2-ba4b-00a0c93ec93b"));
    let l = tool(Command::new("unsquashfs").args(["-l"]).arg(lo.part(2)));
    assert!(
        l.contains("squashfs-root/boot/vmlinuz") && l.contains("squashfs-root/etc/os-release"),
        "{l}"
    );
    // The ESP, byte for byte.
    let esp_bytes = std::fs::read(&esp).unwrap();
    let mut on_disk = vec![0u8; esp_bytes.len()];
    {
        use std::io::Read as _;
        std::fs::File::open(lo.part(1))
            .unwrap()
            .read_exact(&mut on_disk)
            .unwrap();
    }
    assert!(on_disk == esp_bytes, "partition 1 holds the ESP image");

    // The data partition.
    let inspect = d.join("inspect");
    std::fs::create_dir_all(&inspect).unwrap();
    tool(
        Command::new("mount")
            .args(["-t", "ext2", "-o", "ro"])
            .arg(lo.part(4))
            .arg(&inspect),
    );
    lo.mounts.insert(0, inspect.clone());
    let env = tool(
        Command::new("grub-editenv")
            .arg(inspect.join("grubenv"))
            .arg("list"),
    );
    assert_eq!(env.trim(), "tugboot_slot=A");
    let t = inspect.join("tugboot");
    let state = AgentState::parse(&std::fs::read(t.join("state.json")).unwrap()).unwrap();
    let image_record = state.committed.image.clone().unwrap();
    assert_eq!(state.committed.slot, tugboot_agent::bootloader::Slot::A);
    assert_eq!(
        (image_record.name.as_str(), image_record.version),
        ("edge-os", 7)
    );
    assert_eq!(image_record.size, squashfs.len() as u64);
    assert_eq!(state.floor, 7);
    assert!(state.update.is_none());
    let written = std::fs::read_to_string(t.join("agent.toml")).unwrap();
    let installer = InstallerConfig::parse(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    assert_eq!(written, installer.agent_toml());
    let installed = DeviceConfig::parse(&written).unwrap();
    assert_eq!(installed.slots.a, Path::new(&lo.part(2)));
    assert_eq!(installed.tls.key, Path::new("/data/tugboot/device.key"));
    assert_eq!(
        std::fs::read(t.join("root.json")).unwrap(),
        std::fs::read(d.join("installer/root.json")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(t.join("server-ca.pem"))
            .unwrap()
            .trim(),
        api.ca_pem.trim()
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(t.join("device.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(
        std::fs::read_to_string(t.join("device.pem"))
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert!(t.join("reports").is_dir());
    tool(Command::new("umount").arg(&inspect));
    lo.mounts.remove(0);

    // The server has the machine, enrolled, and the report.
    let (_, machines) = api.op("GET", "/api/v1/admin/machines", &Value::Null);
    let m = machines
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mac"] == "02:00:00:00:bb:01")
        .unwrap_or_else(|| panic!("{machines}"));
    let id = m["id"].as_i64().unwrap();
    let installed_reports = || {
        let (_, m) = api.op("GET", &format!("/api/v1/admin/machines/{id}"), &Value::Null);
        m["reports"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["report"]["outcome"]["outcome"] == "installed")
            .map(|r| r["report"]["outcome"].clone())
            .collect::<Vec<Value>>()
    };
    assert_eq!(
        installed_reports(),
        [serde_json::json!({"outcome": "installed", "name": "edge-os", "version": 7, "slot": "A"})]
    );

    // Again without --wipe: refused, nothing written.
    let o = agent(&["-c", &cfg, "install-disk"]);
    assert!(!o.status.success());
    let e = error_line(&o);
    assert_eq!(
        e,
        format!(
            "error: install-disk: {} already holds data: a GPT (primary table) with 4 partitions \
             (tugboot-esp, tugboot-a, tugboot-b, tugboot-data); nothing was written (run \
             install-disk --wipe to erase the whole disk)",
            lo.dev
        )
    );
    let p = tool(Command::new("sgdisk").arg("-p").arg(&lo.dev));
    assert!(p.contains(&disk_guid), "untouched: {p}");

    // An install cut short before its agent state was written: written again without
    // --wipe, with the identity it already had (no second enrollment).
    let mnt = tempfile::tempdir().unwrap();
    tool(
        Command::new("mount")
            .arg(format!("{}p4", lo.dev))
            .arg(mnt.path()),
    );
    std::fs::remove_file(mnt.path().join("tugboot/state.json")).unwrap();
    tool(Command::new("umount").arg(mnt.path()));
    let o = agent(&["-c", &cfg, "install-disk"]);
    let log = stderr(&o);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("holds an unfinished tugboot install"), "{log}");
    assert!(
        log.contains("kept the key and certificate of the unfinished install (device "),
        "{log}"
    );
    assert!(!log.contains("enrolled as device"), "{log}");
    assert_eq!(installed_reports().len(), 2);

    // With --wipe: a new table and a new key. The server gives a machine one identity, so the
    // operator first revokes the old one and approves the machine again; a new token too (a
    // one-time token is spent).
    for action in ["revoke", "approve"] {
        let (status, v) = api.op(
            "POST",
            &format!("/api/v1/admin/machines/{id}/{action}"),
            &Value::Null,
        );
        assert_eq!(status, 200, "{action}: {v}");
    }
    new_token();
    let o = agent(&["-c", &cfg, "install-disk", "--wipe"]);
    let log = stderr(&o);
    eprintln!("{log}");
    assert!(o.status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "tugboot-agent install: wiping {}: it held a GPT (primary table) with 4 partitions",
            lo.dev
        )),
        "{log}"
    );
    let p = tool(Command::new("sgdisk").arg("-p").arg(&lo.dev));
    assert!(!p.contains(&disk_guid), "a new disk GUID: {p}");
    let v = tool(Command::new("sgdisk").arg("-v").arg(&lo.dev));
    assert!(v.contains("No problems found"), "{v}");
    assert_eq!(installed_reports().len(), 3);
}
