//! What `tugboot check-config` warns about beyond a configuration that loads: set-ups that
//! start fine and then leave some machines unable to boot. Each warning names the machines or
//! firmware it concerns and the fix. Measured behaviour behind them: docs/netboot.md,
//! "Firmware and DHCP modes".

use std::path::Path;

use tugboot_boards::{BootKind, Catalog, Loader};
use tugboot_dhcp::{Mode, Platform};
use tugboot_fleet::ProfileSet;
use tugboot_fleet::netboot::{self, LoaderFile};

use super::config::ServeConfig;

/// The warnings for `config` with its profiles file and board catalogue, in a stable order.
#[must_use]
pub fn netboot_warnings(
    config: &ServeConfig,
    profiles: &ProfileSet,
    boards: &Catalog,
) -> Vec<String> {
    let mut out = Vec::new();
    let Some(dhcp) = &config.dhcp else {
        return out;
    };
    let boot = &dhcp.config.boot;
    let tftp_addr = config.tftp.as_ref().map_or_else(
        || config.network.address.to_string(),
        |t| t.listen.ip().to_string(),
    );

    if dhcp.config.mode == Mode::Proxy {
        // Measured (fleet_boot.rs): U-Boot 2023.01 and Debian's GRUB take the TFTP server from
        // the site's DHCP ACK (siaddr), never from a proxy offer.
        let stuck: Vec<String> = profiles
            .machines()
            .iter()
            .filter_map(|m| {
                let board = boards.get(m.board.as_deref()?)?;
                let blocked = board.boot.iter().any(|b| {
                    b.kind == BootKind::UbootPxe
                        || (b.kind == BootKind::UefiPxe && b.loader == Loader::Grub)
                });
                blocked.then(|| format!("{} (board {})", m.display_name(), board.name))
            })
            .collect();
        let who = if stuck.is_empty() {
            String::new()
        } else {
            format!(" This concerns the declared machines {}.", stuck.join(", "))
        };
        out.push(format!(
            "dhcp.mode = \"proxy\": U-Boot and GRUB started by UEFI PXE (arm64 UEFI) fetch their files from the \
             next-server of the site's DHCP server, not from this server's proxy offer, so they do not boot. \
             Set next-server (siaddr) to {tftp_addr} on the site's DHCP server, boot arm64 UEFI machines by UEFI \
             HTTP boot instead, or use mode = \"authoritative\" or \"reservation-only\".{who}"
        ));
    }

    // TFTP boot files the DHCP server hands out: generated ones are fine, others must exist.
    for (platform, file) in &boot.tftp {
        let generated =
            netboot::classify(file).is_some_and(|f| !matches!(f, LoaderFile::Rpi { .. }));
        if generated || *platform == Platform::RaspberryPi {
            continue;
        }
        match &config.tftp {
            None => out.push(format!(
                "[dhcp.boot] hands {} clients the TFTP file {file:?}, but there is no [tftp] section: they cannot boot",
                platform.as_str()
            )),
            Some(t) if !is_file(&t.root.join(file.trim_start_matches('/'))) => out.push(format!(
                "tftp.root {} has no {file:?}: {} PXE clients cannot boot (copy it from Debian's {})",
                t.root.display(),
                platform.as_str(),
                package_of(*platform)
            )),
            Some(_) => {}
        }
    }

    // UEFI HTTP boot: the URL path must be a file of [http] boot_dir.
    for platform in [Platform::UefiX64, Platform::UefiArm64] {
        let path = boot.http_boot.replace("{arch}", platform.as_str());
        let Some(name) = path.strip_prefix("/boot/") else {
            out.push(format!(
                "[dhcp.boot] http_boot = {:?} is not under /boot/: the HTTP server serves boot files only there, UEFI HTTP boot clients get 404",
                boot.http_boot
            ));
            break;
        };
        match &config.http.boot_dir {
            None => {
                out.push(
                    "[http] boot_dir is not set: UEFI HTTP boot clients (OVMF, AAVMF with PXE off) get 404 for their boot file"
                        .to_owned(),
                );
                break;
            }
            Some(dir) if !is_file(&dir.join(name)) => out.push(format!(
                "http.boot_dir {} has no {name:?}: {} UEFI HTTP boot clients cannot boot ({})",
                dir.display(),
                platform.as_str(),
                if platform == Platform::UefiArm64 {
                    "a GRUB image with the http module, see docs/netboot.md"
                } else {
                    "e.g. iPXE's snponly.efi"
                }
            )),
            Some(_) => {}
        }
    }
    out
}

fn is_file(p: &Path) -> bool {
    p.metadata().is_ok_and(|m| m.is_file())
}

fn package_of(platform: Platform) -> &'static str {
    match platform {
        Platform::Bios | Platform::UefiX64 | Platform::UefiIa32 => "ipxe package, /usr/lib/ipxe",
        Platform::UefiArm64 => {
            "grub-efi-arm64-bin package, /usr/lib/grub/arm64-efi/monolithic/grubnetaa64.efi"
        }
        _ => "firmware vendor",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config in `dir` with DHCP `mode`, TFTP root `tftp/` and boot dir `boot/`.
    fn config(dir: &Path, mode: &str) -> ServeConfig {
        let text = format!(
            "data_dir = \"data\"\ntrust_root = \"r.json\"\n[network]\naddress = \"10.77.0.1\"\n\
             [dhcp]\nmode = \"{mode}\"\n[dhcp.boot]\nhttp_boot = \"/boot/{{arch}}.efi\"\n\
             [[dhcp.subnets]]\nnetwork = \"10.77.0.0/24\"\npools = [{{ start = \"10.77.0.100\", end = \"10.77.0.200\" }}]\n\
             [tftp]\nroot = \"tftp\"\n[http]\nboot_dir = \"boot\"\n"
        );
        ServeConfig::from_toml(&text, dir).expect("config")
    }

    fn touch(dir: &Path, files: &[&str]) {
        for f in files {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, b"x").expect("write");
        }
    }

    const UBOOT_MACHINE: &str = "[[machines]]\nname = \"pi-lab\"\nmac = \"52:54:00:00:00:09\"\nboard = \"qemu-arm64-uboot\"\n\
                                 [[machines]]\nname = \"x86\"\nmac = \"52:54:00:00:00:0a\"\nboard = \"x86_64-uefi\"\n";

    #[test]
    fn a_complete_authoritative_setup_has_no_warnings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path(), "authoritative");
        let files: Vec<String> = config
            .dhcp
            .as_ref()
            .expect("dhcp")
            .config
            .boot
            .tftp
            .values()
            .map(|f| format!("tftp/{f}"))
            .collect();
        let mut all: Vec<&str> = files.iter().map(String::as_str).collect();
        all.extend(["boot/uefi-x64.efi", "boot/uefi-arm64.efi"]);
        touch(dir.path(), &all);
        let profiles = ProfileSet::from_toml(UBOOT_MACHINE).expect("profiles");
        let w = netboot_warnings(&config, &profiles, &Catalog::builtin());
        assert!(w.is_empty(), "{w:#?}");
    }

    #[test]
    fn proxy_mode_names_the_machines_whose_loader_ignores_proxy_offers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path(), "proxy");
        let profiles = ProfileSet::from_toml(UBOOT_MACHINE).expect("profiles");
        let w = netboot_warnings(&config, &profiles, &Catalog::builtin());
        let proxy = w
            .iter()
            .find(|w| w.starts_with("dhcp.mode = \"proxy\""))
            .expect("proxy warning");
        assert!(
            proxy.contains("next-server (siaddr) to 10.77.0.1"),
            "{proxy}"
        );
        assert!(proxy.contains("pi-lab (board qemu-arm64-uboot)"), "{proxy}");
        assert!(!proxy.contains("x86"), "{proxy}");
    }

    #[test]
    fn missing_boot_files_are_named_with_who_cannot_boot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config(dir.path(), "authoritative");
        let w = netboot_warnings(&config, &ProfileSet::default(), &Catalog::builtin());
        let text = w.join("\n");
        assert!(
            text.contains("has no \"undionly.kpxe\": bios PXE clients cannot boot"),
            "{text}"
        );
        assert!(
            text.contains("has no \"uefi-arm64.efi\": uefi-arm64 UEFI HTTP boot"),
            "{text}"
        );
        // Generated by the server: never missing.
        assert!(!text.contains("boot.scr.uimg"), "{text}");
    }
}
