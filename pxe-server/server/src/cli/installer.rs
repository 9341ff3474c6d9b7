//! `tugboot installer build` and `tugboot initramfs build`: the environment a machine of an
//! `install` profile netboots into (kernel + an initramfs holding busybox, the static agent,
//! the kernel modules for disks and network, the server's CA and trust root, and the ESP image
//! it writes), as one signed image. See docs/installer.md.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tugboot_firmware::Role;
use tugboot_fleet::KernelCmdline;

use super::Global;
use super::image::{Input, MetaArgs, build, catalog};
use super::initramfs::{Initramfs, parse_file_arg};

/// The A/B snippet every installed disk's GRUB sources (docs/bootloaders.md).
const GRUB_AB: &str = include_str!("../../../../firmware/boot/grub-ab.cfg");
/// The A/B boot script of U-Boot boards without a boot counter (docs/bootloaders.md).
pub const UBOOT_AB: &str = include_str!("../../../../firmware/boot/uboot-ab.cmd");

/// Modules the installer loads unless told otherwise: virtio and common server disks and NICs,
/// ext4 (the data partition), efivarfs (the boot entry).
const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_scsi",
    "sd_mod",
    "ahci",
    "nvme",
    "e1000e",
    "igb",
    "ext4",
    "efivarfs",
];

/// FAT time stamps cannot go below 1980: every file of the ESP image has this one.
const FAT_EPOCH: &str = "315532800";

#[derive(Debug, Subcommand)]
pub enum InstallerCommand {
    /// Build the installer image: kernel + initramfs (busybox, agent, modules, CA, trust root,
    /// ESP image with Debian's GRUB and the A/B configuration), signed like any image.
    Build(Box<InstallerArgs>),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("loader").required(true).multiple(false)))]
pub struct InstallerArgs {
    /// Kernel the installer runs (e.g. Debian's /boot/vmlinuz-<release>).
    #[arg(long)]
    kernel: PathBuf,
    /// The kernel's module tree, /lib/modules/<release>.
    #[arg(long)]
    modules: PathBuf,
    /// Kernel modules to load (default: virtio, SATA/NVMe/SCSI disks, e1000e/igb, ext4,
    /// efivarfs); repeat. Dependencies are added.
    #[arg(long = "module")]
    module: Vec<String>,
    /// A static busybox (Debian's busybox-static).
    #[arg(long)]
    busybox: PathBuf,
    /// The static tugboot-agent for the target architecture.
    #[arg(long)]
    agent: PathBuf,
    /// GRUB EFI binary put on the ESP as \EFI\BOOT\BOOTX64.EFI (Debian's monolithic grubx64.efi,
    /// grub-efi-amd64-bin, prefix /EFI/debian): boards booting through UEFI.
    #[arg(long, group = "loader")]
    grub_efi: Option<PathBuf>,
    /// BIOS boards: Debian's GRUB for BIOS (grub-pc-bin's /usr/lib/grub/i386-pc): boot.img goes
    /// into the MBR, a core.img made by grub-mkimage after the GPT (as grub-install embeds
    /// them), the A/B grub.cfg on partition 1.
    #[arg(long, group = "loader", value_name = "I386_PC_DIR")]
    grub_pc: Option<PathBuf>,
    /// Boards whose U-Boot boots from the disk (no boot counter needed, e.g. Debian's
    /// qemu_arm64): the installer formats partition 1 FAT and puts tugboot's A/B boot script
    /// (firmware/boot/uboot-ab.cmd, as boot.scr.uimg), each slot's kernel and the U-Boot
    /// environment there.
    #[arg(long, group = "loader")]
    uboot_script: bool,
    /// The device API the installer enrolls with and reports to (https://...).
    #[arg(long)]
    server: String,
    /// The device API's CA certificate (`tugboot ca init` wrote ca.pem).
    #[arg(long)]
    ca: PathBuf,
    /// Trust root the installer verifies the image to install against.
    #[arg(long)]
    trust_root: PathBuf,
    /// The disk to install to.
    #[arg(long, default_value = "/dev/vda")]
    disk: String,
    /// Size of each A/B slot, MiB (default: the board's `[[slots]] size_mib` in the board
    /// catalogue, else 512).
    #[arg(long)]
    slot_mib: Option<u64>,
    /// Size of the ESP, MiB.
    #[arg(long, default_value_t = 64)]
    esp_mib: u64,
    /// Kernel command line of the installed OS (both slots; `tugboot.slot=A|B` is added).
    #[arg(long, default_value = "console=ttyS0 panic=10")]
    os_cmdline: String,
    /// Kernel command line of the installer itself.
    #[arg(long, default_value = "console=ttyS0 panic=10")]
    cmdline: String,
    /// Extra files, SOURCE:PATH (repeat).
    #[arg(long = "file")]
    files: Vec<String>,
    /// Image name of the installer.
    #[arg(long, default_value = "installer")]
    name: String,
    #[command(flatten)]
    meta: MetaArgs,
}

#[derive(Debug, Subcommand)]
pub enum InitramfsCommand {
    /// Build a reproducible initramfs (newc cpio): an /init script, a static busybox, files,
    /// kernel modules with their dependencies.
    Build {
        /// The /init script.
        #[arg(long)]
        init: PathBuf,
        /// A static busybox, installed as /bin/busybox.
        #[arg(long)]
        busybox: PathBuf,
        /// Kernel module tree, /lib/modules/<release> (with --module).
        #[arg(long)]
        modules: Option<PathBuf>,
        /// Kernel modules (repeat); load order in /etc/tugboot/modules.
        #[arg(long = "module")]
        module: Vec<String>,
        /// Extra files, SOURCE:PATH (repeat).
        #[arg(long = "file")]
        files: Vec<String>,
        /// The cpio archive to write.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run_initramfs(cmd: InitramfsCommand, global: Global) -> anyhow::Result<()> {
    let InitramfsCommand::Build {
        init,
        busybox,
        modules,
        module,
        files,
        out,
    } = cmd;
    let mut i = Initramfs::new();
    i.file(
        "init",
        0o755,
        std::fs::read(&init).with_context(|| format!("{}", init.display()))?,
    )?;
    i.copy("bin/busybox", &busybox)?;
    i.symlink("bin/sh", "busybox")?;
    let order = match modules {
        Some(dir) => i.modules(&dir, &module)?,
        None if module.is_empty() => Vec::new(),
        None => bail!("--module needs --modules /lib/modules/<release>"),
    };
    for f in &files {
        let (src, dst) = parse_file_arg(f)?;
        i.copy(&dst, &src)?;
    }
    let bytes = i.to_cpio();
    std::fs::write(&out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    if global.json {
        super::output::print_json(&serde_json::json!({
            "ok": true, "file": out, "bytes": bytes.len(), "modules": order,
        }))
    } else {
        println!(
            "wrote {} ({} bytes, {} modules)",
            out.display(),
            bytes.len(),
            order.len()
        );
        Ok(())
    }
}

pub fn run(cmd: InstallerCommand, global: Global) -> anyhow::Result<()> {
    let InstallerCommand::Build(args) = cmd;
    build_installer(*args, global)
}

fn build_installer(a: InstallerArgs, global: Global) -> anyhow::Result<()> {
    if !a.server.starts_with("https://") {
        bail!("--server {:?}: the device API is https://", a.server);
    }
    let board = a
        .meta
        .boards
        .first()
        .cloned()
        .context("--board names the board the installer installs for")?;
    for (what, text) in [("--os-cmdline", &a.os_cmdline), ("--cmdline", &a.cmdline)] {
        KernelCmdline::parse(text)
            .and_then(|c| c.check_loader().map(|()| c))
            .map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    }
    let slot_mib = match a.slot_mib {
        Some(mib) => mib,
        None => catalog(&a.meta)?
            .get(&board)
            .and_then(|b| b.ab.as_ref())
            .map_or(DEFAULT_SLOT_MIB, |ab| {
                ab.slots
                    .iter()
                    .map(|s| s.size_mib)
                    .max()
                    .unwrap_or(DEFAULT_SLOT_MIB)
            }),
    };
    let work = tempfile::tempdir().context("cannot create a temporary directory")?;
    let mut bios = None;
    let (boot_file, boot_bytes) = match (&a.grub_efi, &a.grub_pc) {
        (Some(grub), _) => (ESP_IMAGE, esp_image(work.path(), grub, &a.os_cmdline)?),
        (None, Some(dir)) => {
            bios = Some(grub_pc_images(work.path(), dir)?);
            (ESP_IMAGE, bios_esp_image(work.path(), &a.os_cmdline)?)
        }
        (None, None) => (UBOOT_SCRIPT_IMAGE, uboot_boot_script(&a.os_cmdline)?),
    };

    let mut i = Initramfs::new();
    i.file("init", 0o755, INSTALLER_INIT.as_bytes().to_vec())?;
    i.copy("bin/busybox", &a.busybox)?;
    i.symlink("bin/sh", "busybox")?;
    i.copy("usr/bin/tugboot-agent", &a.agent)?;
    i.copy("etc/tugboot/server-ca.pem", &a.ca)?;
    i.copy("etc/tugboot/root.json", &a.trust_root)?;
    i.file(boot_file.trim_start_matches('/'), 0o644, boot_bytes)?;
    if let Some((boot_img, core_img)) = bios {
        i.file(BIOS_BOOT_IMG.trim_start_matches('/'), 0o644, boot_img)?;
        i.file(BIOS_CORE_IMG.trim_start_matches('/'), 0o644, core_img)?;
    }
    i.file(
        "usr/share/udhcpc/default.script",
        0o755,
        UDHCPC_SCRIPT.as_bytes().to_vec(),
    )?;
    i.file(
        "etc/tugboot/installer.toml",
        0o644,
        installer_config(
            &a.server,
            &board,
            &a.disk,
            boot_file,
            a.grub_pc.is_some(),
            a.esp_mib,
            slot_mib,
        )
        .into_bytes(),
    )?;
    let modules: Vec<String> = if a.module.is_empty() {
        DEFAULT_MODULES.iter().map(|m| (*m).to_owned()).collect()
    } else {
        a.module.clone()
    };
    i.modules(&a.modules, &modules)?;
    for f in &a.files {
        let (src, dst) = parse_file_arg(f)?;
        i.copy(&dst, &src)?;
    }
    let initrd = work.path().join("initrd.img");
    std::fs::write(&initrd, i.to_cpio())?;
    let inputs = vec![
        (Role::Kernel, Input::File(a.kernel.clone())),
        (Role::Initrd, Input::File(initrd)),
        (Role::Cmdline, Input::Text(a.cmdline.clone())),
    ];
    build(a.name, inputs, a.meta, global)
}

/// The installer's configuration (read by `tugboot-agent install-disk`, docs/agent.md).
fn installer_config(
    server: &str,
    board: &str,
    disk: &str,
    boot_file: &str,
    bios: bool,
    esp_mib: u64,
    slot_mib: u64,
) -> String {
    let boot = if bios {
        format!(
            "esp_image = \"{boot_file}\"\nbios_boot_img = \"{BIOS_BOOT_IMG}\"\n\
             bios_core_img = \"{BIOS_CORE_IMG}\""
        )
    } else if boot_file == ESP_IMAGE {
        format!("esp_image = \"{boot_file}\"")
    } else {
        format!("boot_script = \"{boot_file}\"")
    };
    format!(
        "# Written by `tugboot installer build`.\n\
         server = \"{server}\"\n\
         board = \"{board}\"\n\
         trust_root = \"/etc/tugboot/root.json\"\n\n\
         [tls]\nca = \"/etc/tugboot/server-ca.pem\"\n\n\
         [install]\n\
         disk = \"{disk}\"\n\
         {boot}\n\
         esp_mib = {esp_mib}\n\
         slot_mib = {slot_mib}\n\
         data_mib = 0\n\
         data_mount = \"/data\"\n\
         reboot_command = [\"reboot\", \"-f\"]\n"
    )
}

/// Slot size for boards whose catalogue entry has no A/B layout.
const DEFAULT_SLOT_MIB: u64 = 512;

/// Where the installer's initramfs holds the ESP image (GRUB boards).
const ESP_IMAGE: &str = "/usr/share/tugboot/esp.img";
/// Where it holds GRUB for BIOS (BIOS boards).
const BIOS_BOOT_IMG: &str = "/usr/share/tugboot/boot.img";
const BIOS_CORE_IMG: &str = "/usr/share/tugboot/core.img";
/// Where it holds the U-Boot boot script image (U-Boot boards).
const UBOOT_SCRIPT_IMAGE: &str = "/usr/share/tugboot/boot.scr.uimg";

/// The installed disk's U-Boot script: the kernel command line, then the shipped A/B script,
/// as a legacy script image (`mkimage -T script`, timestamp 0: reproducible).
pub fn uboot_boot_script(os_cmdline: &str) -> anyhow::Result<Vec<u8>> {
    let text = format!("setenv tugboot_cmdline \"{os_cmdline}\"\n{UBOOT_AB}");
    Ok(tugboot_fleet::render::uboot::uimage_script(
        "tugboot A/B",
        &text,
        0,
    )?)
}

/// The installed disk's GRUB configuration: the A/B snippet decides the slot (its environment
/// on the data partition, an ext2 file system GRUB can write in place), each entry boots the
/// kernel and initrd inside that slot's squashfs. Partition numbers are the installer's layout
/// (1 ESP, 2 A, 3 B, 4 data).
#[must_use]
pub fn grub_cfg(os_cmdline: &str) -> String {
    let entry = |slot: &str, part: u8| {
        format!(
            "menuentry \"tugboot slot {slot}\" --id tugboot_{slot} {{\n\
             \x20 echo 'tugboot: booting slot {slot}'\n\
             \x20 linux (${{tb_disk}},gpt{part})/boot/vmlinuz tugboot.slot={slot} {os_cmdline}\n\
             \x20 if [ -f (${{tb_disk}},gpt{part})/boot/initrd.img ]; then\n\
             \x20   initrd (${{tb_disk}},gpt{part})/boot/initrd.img\n\
             \x20 fi\n\
             }}\n"
        )
    };
    format!(
        "# tugboot: A/B boot from this disk's slots (written by `tugboot installer build`).\n\
         set timeout=0\n\
         # The disk GRUB came from: ($root) is its ESP, (hdN,gpt1).\n\
         regexp --set=1:tb_disk '^([^,]+),' \"${{root}}\"\n\
         search --no-floppy --label tugboot-data --set=tb_data\n\
         set tugboot_env=\"(${{tb_data}})/grubenv\"\n\
         source \"${{prefix}}/grub-ab.cfg\"\n\n{}\n{}",
        entry("A", 2),
        entry("B", 3)
    )
}

/// A FAT image for the ESP, the same bytes for the same inputs: `\EFI\BOOT\BOOTX64.EFI` (the
/// removable-media path every UEFI firmware boots), `\EFI\debian\grub.cfg` and `grub-ab.cfg`
/// (Debian's monolithic grubx64.efi has the prefix /EFI/debian).
fn esp_image(work: &Path, grub_efi: &Path, os_cmdline: &str) -> anyhow::Result<Vec<u8>> {
    let grub =
        std::fs::read(grub_efi).with_context(|| format!("cannot read {}", grub_efi.display()))?;
    // 8 MiB: room for GRUB (4 MB) and its configuration; the partition may be larger. (It rides
    // uncompressed in the installer's initramfs: 32 MiB made that 44.8 MB, now 19.7 MB.)
    fat_image(
        work,
        16384,
        &[
            ("EFI/BOOT/BOOTX64.EFI", grub),
            ("EFI/debian/grub.cfg", grub_cfg(os_cmdline).into_bytes()),
            ("EFI/debian/grub-ab.cfg", GRUB_AB.as_bytes().to_vec()),
        ],
    )
}

/// The FAT partition of a BIOS disk: `/grub/grub.cfg` and `grub-ab.cfg`, where core.img's
/// prefix `(hd0,gpt1)/grub` points (4 MiB: configuration only, GRUB is in the disk's head).
fn bios_esp_image(work: &Path, os_cmdline: &str) -> anyhow::Result<Vec<u8>> {
    fat_image(
        work,
        8192,
        &[
            ("grub/grub.cfg", grub_cfg(os_cmdline).into_bytes()),
            ("grub/grub-ab.cfg", GRUB_AB.as_bytes().to_vec()),
        ],
    )
}

/// Modules built into the BIOS core.img: disk, partition and file systems (FAT for the
/// configuration, ext2 for the environment, squashfs slots with gzip as `image build` makes them), the
/// commands of grub.cfg and grub-ab.cfg.
const GRUB_PC_MODULES: &[&str] = &[
    "biosdisk",
    "part_gpt",
    "fat",
    "ext2",
    "squash4",
    "gzio",
    "normal",
    "configfile",
    "linux",
    "search",
    "search_label",
    "regexp",
    "test",
    "echo",
    "loadenv",
    "boot",
    "reboot",
    "halt",
    "sleep",
];

/// GRUB i386-pc's core.img for an installed disk (what `grub-install` embeds), made by
/// `grub-mkimage` from Debian's module directory (grub-pc-bin's /usr/lib/grub/i386-pc), with
/// diskboot.img in front; and Debian's boot.img as it is.
fn grub_pc_images(work: &Path, dir: &Path) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let boot = std::fs::read(dir.join("boot.img"))
        .with_context(|| format!("--grub-pc {}: no boot.img (grub-pc-bin)", dir.display()))?;
    let core = work.join("core.img");
    let out = Command::new("grub-mkimage")
        .args(["-O", "i386-pc", "-p", "(hd0,gpt1)/grub", "-d"])
        .arg(dir)
        .arg("-o")
        .arg(&core)
        .args(GRUB_PC_MODULES)
        .output()
        .context("cannot run grub-mkimage (Debian package grub-common)")?;
    if !out.status.success() {
        bail!(
            "grub-mkimage -O i386-pc failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((boot, std::fs::read(&core)?))
}

/// A reproducible FAT image of `sectors` 512-byte sectors holding `files` (path, bytes), all
/// time stamps at FAT_EPOCH.
fn fat_image(work: &Path, sectors: u32, files: &[(&str, Vec<u8>)]) -> anyhow::Result<Vec<u8>> {
    let tree = work.join("fat");
    let mut stamped = Vec::new();
    for (path, bytes) in files {
        let file = tree.join(path);
        let mut dir = file.parent();
        while let Some(d) = dir.filter(|d| *d != tree) {
            std::fs::create_dir_all(d)?;
            if !stamped.contains(&d.to_path_buf()) {
                stamped.push(d.to_path_buf());
            }
            dir = d.parent();
        }
        std::fs::write(&file, bytes)?;
        stamped.push(file);
    }
    let img = work.join("fat.img");
    let _ = std::fs::remove_file(&img);
    tool(
        Command::new("mformat")
            .env("SOURCE_DATE_EPOCH", FAT_EPOCH)
            .arg("-i")
            .arg(&img)
            .args(["-C", "-T", &sectors.to_string()])
            .args(["-v", "TUGBOOT-ESP", "-N", "7e600001", "::"]),
    )?;
    // Time stamps from the tree (all FAT_EPOCH), so directories are reproducible too.
    tool(
        Command::new("touch")
            .args(["-h", "-d", &format!("@{FAT_EPOCH}")])
            .args(&stamped),
    )?;
    let mut top: Vec<PathBuf> = std::fs::read_dir(&tree)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    top.sort();
    tool(
        Command::new("mcopy")
            .env("SOURCE_DATE_EPOCH", FAT_EPOCH)
            .args(["-s", "-m", "-i"])
            .arg(&img)
            .args(&top)
            .arg("::/"),
    )?;
    let bytes = std::fs::read(&img)?;
    std::fs::remove_dir_all(&tree)?;
    Ok(bytes)
}

fn tool(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {:?} (Debian package mtools)", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// busybox udhcpc calls this with the lease in the environment (shared with the reference OS,
/// pxe-server/examples/os).
const UDHCPC_SCRIPT: &str = include_str!("../../../examples/os/udhcpc.script");

/// The installer's /init: modules, network, `tugboot-agent install-disk`, reboot.
const INSTALLER_INIT: &str = r#"#!/bin/busybox sh
# tugboot installer (tugboot installer build): install this machine's image to its disk.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "tugboot-installer: loading modules"
while read -r m; do
  insmod "$m" 2>/dev/null || echo "tugboot-installer: insmod $m failed (no such hardware?)"
done < /etc/tugboot/modules
[ -d /sys/firmware/efi/efivars ] && mount -t efivarfs efivarfs /sys/firmware/efi/efivars
ip link set lo up
iface=""
for n in /sys/class/net/*; do
  n="${n##*/}"
  [ "$n" = lo ] && continue
  [ -z "$iface" ] && iface="$n"
done
if [ -z "$iface" ]; then
  echo "tugboot-installer: FAILED: no network interface"; sleep 30; reboot -f
fi
echo "tugboot-installer: DHCP on $iface"
udhcpc -i "$iface" -s /usr/share/udhcpc/default.script -q -n -t 20 -T 3 || {
  echo "tugboot-installer: FAILED: no DHCP lease on $iface"; sleep 30; reboot -f; }
if tugboot-agent -c /etc/tugboot/installer.toml install-disk; then
  echo "tugboot-installer: installed; rebooting into the disk"
  sync
  reboot -f
fi
echo "tugboot-installer: FAILED (reason above); trying again in 60 s"
sleep 60
reboot -f
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// GRUB's own syntax checker accepts the generated configuration and the snippet.
    #[test]
    fn grub_cfg_passes_grub_script_check() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("grub.cfg", grub_cfg("console=ttyS0 panic=10")),
            ("grub-ab.cfg", GRUB_AB.to_owned()),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            let out = Command::new("grub-script-check").arg(&p).output().unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn esp_image_is_reproducible_and_holds_grub_where_uefi_looks() {
        let dir = tempfile::tempdir().unwrap();
        let grub = dir.path().join("grubx64.efi");
        std::fs::write(&grub, b"MZ not really grub").unwrap();
        let w1 = dir.path().join("1");
        let w2 = dir.path().join("2");
        std::fs::create_dir_all(&w1).unwrap();
        std::fs::create_dir_all(&w2).unwrap();
        let a = esp_image(&w1, &grub, "console=ttyS0").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let b = esp_image(&w2, &grub, "console=ttyS0").unwrap();
        assert!(a == b, "two builds differ");
        let img = dir.path().join("esp.img");
        std::fs::write(&img, &a).unwrap();
        let mtype = |path: &str| {
            Command::new("mtype")
                .arg("-i")
                .arg(&img)
                .arg(path)
                .output()
                .unwrap()
                .stdout
        };
        assert_eq!(mtype("::/EFI/BOOT/BOOTX64.EFI"), b"MZ not really grub");
        let cfg = String::from_utf8_lossy(&mtype("::/EFI/debian/grub.cfg")).into_owned();
        assert!(
            cfg.contains("linux (${tb_disk},gpt3)/boot/vmlinuz tugboot.slot=B console=ttyS0"),
            "{cfg}"
        );
        // The BIOS disk's FAT partition: the same configuration where core.img's prefix is.
        let bios = bios_esp_image(&w1, "console=ttyS0").unwrap();
        assert_eq!(bios, bios_esp_image(&w2, "console=ttyS0").unwrap());
        std::fs::write(&img, &bios).unwrap();
        assert_eq!(String::from_utf8_lossy(&mtype("::/grub/grub.cfg")), cfg);
        assert_eq!(mtype("::/grub/grub-ab.cfg"), GRUB_AB.as_bytes());
    }
}
