//! The shipped catalog, the catalog API, and one broken board file per rule: each must
//! fail with the file, the TOML key and the reason (and the line, for parse errors).

use std::path::Path;

use tugboot_boards::{
    Arch, Board, BoardError, BootKind, Bootloader, BootloaderKind, Catalog, DhcpClient, Loader,
    MAX_BOARD_FILE_BYTES, SlotLocation, SlotName, Transport,
};

fn boards_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

const SHIPPED: [&str; 7] = [
    "arm64-uefi",
    "qemu-arm64-uboot",
    "raspberrypi-3",
    "raspberrypi-4",
    "raspberrypi-5",
    "x86_64-bios",
    "x86_64-uefi",
];

// ---------------------------------------------------------------- shipped boards

#[test]
fn builtin_has_every_shipped_board_sorted() {
    let catalog = Catalog::builtin();
    let names: Vec<&str> = catalog.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, SHIPPED);
}

#[test]
fn load_dir_on_boards_equals_builtin() {
    // boards/ also holds loader/ (this crate): load_dir must skip it.
    let loaded = Catalog::load_dir(boards_dir()).unwrap();
    assert_eq!(loaded, Catalog::builtin());
}

#[test]
fn every_shipped_file_loads_on_its_own() {
    for name in SHIPPED {
        let file = format!("{name}.toml");
        let text = std::fs::read_to_string(boards_dir().join(&file)).unwrap();
        let board = Board::from_toml(&file, &text).unwrap();
        assert_eq!(board.name, name);
        assert!(!board.boot.is_empty());
        let ab = board
            .ab
            .as_ref()
            .expect("every shipped board has A/B slots");
        assert_eq!(ab.slots[0].name, SlotName::A);
        assert_eq!(ab.slots[1].name, SlotName::B);
    }
}

#[test]
fn dhcp_arch_lookup() {
    let c = Catalog::builtin();
    let names = |code| -> Vec<String> {
        c.for_dhcp_arch(code)
            .iter()
            .map(|b| b.name.clone())
            .collect()
    };
    assert_eq!(
        names(0),
        [
            "raspberrypi-3",
            "raspberrypi-4",
            "raspberrypi-5",
            "x86_64-bios"
        ]
    );
    assert_eq!(names(7), ["x86_64-uefi"]);
    assert_eq!(names(9), ["x86_64-uefi"]);
    assert_eq!(names(16), ["x86_64-uefi"]);
    assert_eq!(names(11), ["arm64-uefi"]);
    assert_eq!(names(19), ["arm64-uefi"]);
    assert_eq!(names(22), ["qemu-arm64-uboot"]);
    assert_eq!(names(41), ["raspberrypi-4", "raspberrypi-5"]);
    assert!(names(6).is_empty());
    assert!(names(0xffff).is_empty());
}

#[test]
fn boot_files_per_firmware() {
    let c = Catalog::builtin();
    let method = |board: &str, code| c.get(board).unwrap().method_for_arch(code).unwrap().clone();

    let bios = method("x86_64-bios", 0);
    assert_eq!((bios.kind, bios.loader), (BootKind::BiosPxe, Loader::Ipxe));
    assert_eq!(bios.boot_file, "undionly.kpxe");
    assert_eq!(bios.transport, Transport::Tftp);

    let http = method("x86_64-uefi", 16);
    assert_eq!(http.kind, BootKind::UefiHttp);
    assert_eq!(http.transport, Transport::Http);

    assert_eq!(method("arm64-uefi", 11).boot_file, "grubnetaa64.efi");
    assert_eq!(method("qemu-arm64-uboot", 22).boot_file, "boot.scr.uimg");

    let pi3 = method("raspberrypi-3", 0);
    assert_eq!(pi3.boot_file, "bootcode.bin");
    let rpi3 = pi3.rpi.unwrap();
    assert!(!rpi3.prefix_boot_file);
    assert!(!rpi3.sends_dhcp_request);
    assert_eq!(rpi3.option43, "Raspberry Pi Boot   ");

    let pi4 = method("raspberrypi-4", 0);
    assert_eq!(pi4.boot_file, "start4.elf");
    assert!(pi4.files.iter().any(|f| f == "fixup4.dat"));
    assert!(pi4.rpi.unwrap().prefix_boot_file);

    let pi5 = method("raspberrypi-5", 0);
    assert_eq!(pi5.boot_file, "config.txt");
    assert_eq!(pi5.files, ["boot.img"]);
}

#[test]
fn raspberry_pis_are_told_apart_by_mac_and_guid() {
    let c = Catalog::builtin();
    let pi4 = &c.get("raspberrypi-4").unwrap().identify;
    let pi5 = &c.get("raspberrypi-5").unwrap().identify;
    let bios = &c.get("x86_64-bios").unwrap().identify;

    let pi4_mac = [0xdc, 0xa6, 0x32, 0x01, 0x36, 0xc2];
    assert!(pi4.matches_mac(&pi4_mac));
    assert!(!pi5.matches_mac(&pi4_mac));
    assert!(!bios.matches_mac(&pi4_mac));

    // Option 97 as on the wire: type 0, then "RPi4", revision, MAC tail, serial.
    let mut guid = vec![0u8, b'R', b'P', b'i', b'4'];
    guid.extend_from_slice(&[0x11, 0x31, 0xc0, 0x00, 0x32, 0x01, 0x36, 0xc2, 1, 2, 3, 4]);
    assert!(pi4.matches_client_guid(&guid));
    assert!(!pi5.matches_client_guid(&guid));
    assert!(!bios.matches_client_guid(&guid));
    assert!(!pi4.matches_client_guid(&[]));

    let pi3 = &c.get("raspberrypi-3").unwrap().identify;
    assert!(pi3.matches_vendor_class(b"PXEClient:Arch:00000:UNDI:002001"));
    assert!(!pi4.matches_vendor_class(b"PXEClient:Arch:00000:UNDI:002001"));
}

#[test]
fn bootloader_backends() {
    let c = Catalog::builtin();
    let backend = |name: &str| c.get(name).unwrap().ab.as_ref().unwrap().bootloader.clone();
    assert_eq!(backend("x86_64-bios").kind(), BootloaderKind::GrubEnv);
    assert_eq!(backend("arm64-uefi").to_string(), "efi-bootnext");
    match backend("qemu-arm64-uboot") {
        Bootloader::UbootEnv { copies, bootlimit } => {
            assert_eq!(copies.len(), 1);
            assert_eq!(copies[0].offset, 0x0400_0000);
            assert_eq!(copies[0].size, 0x4_0000);
            assert_eq!(bootlimit, 3);
        }
        other => panic!("unexpected {other:?}"),
    }
    let pi = c.get("raspberrypi-4").unwrap().ab.as_ref().unwrap();
    assert_eq!(
        pi.bootloader,
        Bootloader::RpiTryboot {
            disk: "/dev/mmcblk0".into(),
            autoboot_partition: 1
        }
    );
    assert_eq!(pi.slot(SlotName::B).boot_partition, Some(3));
    assert_eq!(
        pi.slot(SlotName::A).location,
        SlotLocation::Device("/dev/mmcblk0p5".into())
    );
}

#[test]
fn display_names_are_kebab_case() {
    assert_eq!(Arch::X86_64.to_string(), "x86_64");
    assert_eq!(BootKind::RpiNetboot.to_string(), "rpi-netboot");
    assert_eq!(BootloaderKind::UbootEnv.to_string(), "uboot-env");
    assert_eq!(Loader::PxelinuxConfig.to_string(), "pxelinux-config");
}

#[test]
fn boards_serialize_for_the_cli() {
    // The CLI prints JSON; toml's serializer exercises the same Serialize impls.
    let c = Catalog::builtin();
    let pi = toml::to_string(c.get("raspberrypi-4").unwrap()).unwrap();
    assert!(pi.contains("backend = \"rpi-tryboot\""), "{pi}");
    assert!(pi.contains("\"dc:a6:32\""), "{pi}");
    assert!(pi.contains("client_guid_prefix = \"52506934\""), "{pi}");
    let x86 = toml::to_string(c.get("x86_64-uefi").unwrap()).unwrap();
    assert!(x86.contains("partlabel = \"tugboot-a\""), "{x86}");
    assert!(x86.contains("transport = \"http\""), "{x86}");
}

#[test]
fn console_args_for_the_cmdline() {
    let c = Catalog::builtin();
    assert_eq!(
        c.get("x86_64-bios").unwrap().kernel.console_args(),
        "console=tty0 console=ttyS0,115200n8"
    );
}

// ---------------------------------------------------------------- broken files

/// A valid board that every broken case below edits in one place.
const BASE: &str = r#"name = "test-board"
description = "a board for tests"
arch = "x86_64"

[kernel]
format = "bzimage"
console = ["ttyS0,115200n8"]

[[boot]]
method = "bios-pxe"
arch_codes = [0]
boot_file = "undionly.kpxe"
loader = "ipxe"

[[boot]]
method = "uefi-pxe"
arch_codes = [7, 9]
boot_file = "ipxe.efi"
loader = "ipxe"

[bootloader]
backend = "grub-env"
env_file = "/boot/grub/grubenv"

[[slots]]
name = "A"
partlabel = "root-a"
size_mib = 1024

[[slots]]
name = "B"
partlabel = "root-b"
size_mib = 1024
"#;

const FILE: &str = "test-board.toml";

fn edit(from: &str, to: &str) -> String {
    assert_eq!(
        BASE.matches(from).count(),
        1,
        "{from:?} must occur once in BASE"
    );
    BASE.replace(from, to)
}

fn load(text: &str) -> BoardError {
    match Board::from_toml(FILE, text) {
        Ok(b) => panic!("expected an error, loaded {}", b.name),
        Err(e) => e,
    }
}

/// Asserts a parse error at `line` naming `key`, with `reason` in the message.
fn parse_err(text: &str, key: &str, line: usize, reason: &str) {
    let e = load(text);
    let shown = e.to_string();
    match &e {
        BoardError::Parse {
            file,
            line: l,
            key: k,
            message,
            ..
        } => {
            assert_eq!(file, FILE, "{shown}");
            assert_eq!(k, key, "{shown}");
            assert_eq!(*l, Some(line), "{shown}");
            assert!(message.contains(reason), "{shown}");
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    assert!(shown.starts_with(FILE), "{shown}");
    assert!(shown.contains(&format!("line {line}")), "{shown}");
    assert!(shown.contains(key), "{shown}");
}

/// Asserts a validation error naming `key`, with `reason` in it.
fn invalid(text: &str, key: &str, reason: &str) {
    let e = load(text);
    let shown = e.to_string();
    match &e {
        BoardError::Invalid {
            file,
            key: k,
            reason: r,
        } => {
            assert_eq!(file, FILE, "{shown}");
            assert_eq!(k, key, "{shown}");
            assert!(r.contains(reason), "{shown}");
        }
        other => panic!("expected a validation error, got {other:?}"),
    }
    assert_eq!(shown, format!("{FILE}: key `{key}`: {}", reason_of(&e)));
}

fn reason_of(e: &BoardError) -> &str {
    match e {
        BoardError::Invalid { reason, .. } => reason,
        _ => "",
    }
}

#[test]
fn base_is_valid() {
    let b = Board::from_toml(FILE, BASE).unwrap();
    assert_eq!(b.boot.len(), 2);
    assert_eq!(b.network.tftp_blksize, 1468);
}

#[test]
fn unknown_top_level_key() {
    parse_err(
        &edit(
            "arch = \"x86_64\"\n",
            "arch = \"x86_64\"\ncolour = \"red\"\n",
        ),
        "colour",
        4,
        "unknown field `colour`",
    );
}

#[test]
fn unknown_key_in_second_boot_method() {
    parse_err(
        &edit("boot_file = \"ipxe.efi\"", "bootfile = \"ipxe.efi\""),
        "boot[1].bootfile",
        18,
        "unknown field `bootfile`",
    );
}

#[test]
fn wrong_type_names_line_and_key() {
    parse_err(
        &edit("arch_codes = [7, 9]", "arch_codes = [7, \"nine\"]"),
        "boot[1].arch_codes",
        17,
        "invalid type",
    );
    parse_err(
        &edit(
            "size_mib = 1024\n\n[[slots]]",
            "size_mib = \"big\"\n\n[[slots]]",
        ),
        "slots[0].size_mib",
        28,
        "invalid type",
    );
}

#[test]
fn code_does_not_fit_u16() {
    parse_err(
        &edit("arch_codes = [0]", "arch_codes = [70000]"),
        "boot[0].arch_codes",
        11,
        "70000",
    );
}

#[test]
fn unknown_enum_value() {
    parse_err(
        &edit("arch = \"x86_64\"", "arch = \"riscv64\""),
        "arch",
        3,
        "unknown variant `riscv64`",
    );
    parse_err(
        &edit("backend = \"grub-env\"", "backend = \"lilo\""),
        "bootloader.backend",
        22,
        "unknown variant `lilo`",
    );
}

#[test]
fn missing_required_key() {
    let e = load(&edit("description = \"a board for tests\"\n", ""));
    assert_eq!(e.key(), Some("description"), "{e}");
    assert!(e.to_string().contains("missing field `description`"), "{e}");
    let e = load(&edit("format = \"bzimage\"\n", ""));
    assert_eq!(e.key(), Some("kernel.format"), "{e}");
}

#[test]
fn toml_syntax_error() {
    parse_err(
        &edit("loader = \"ipxe\"\n\n[[boot]]", "loader = \n\n[[boot]]"),
        "boot[0].loader",
        13,
        "",
    );
}

#[test]
fn duplicate_arch_code_across_methods() {
    let text = edit(
        "method = \"bios-pxe\"\narch_codes = [0]",
        "method = \"uefi-pxe\"\narch_codes = [9]",
    );
    invalid(
        &text,
        "boot[1].arch_codes[1]",
        "code 9 is already claimed by boot[0]",
    );
}

#[test]
fn duplicate_arch_code_in_one_method() {
    invalid(
        &edit("arch_codes = [7, 9]", "arch_codes = [7, 7]"),
        "boot[1].arch_codes[1]",
        "code 7 is listed twice",
    );
}

#[test]
fn arch_code_out_of_range() {
    invalid(
        &edit("arch_codes = [7, 9]", "arch_codes = [7, 42]"),
        "boot[1].arch_codes[1]",
        "42 is not a registered processor architecture type",
    );
}

#[test]
fn arch_code_of_another_method() {
    invalid(
        &edit("arch_codes = [7, 9]", "arch_codes = [7, 16]"),
        "boot[1].arch_codes[1]",
        "code 16 (x64 UEFI HTTP) is not sent by uefi-pxe firmware on an x86_64 board",
    );
    invalid(
        &edit("arch_codes = [7, 9]", "arch_codes = [11]"),
        "boot[1].arch_codes[0]",
        "code 11 (ARM 64-bit UEFI) is not sent by uefi-pxe firmware on an x86_64 board",
    );
}

#[test]
fn boot_file_escapes_the_root() {
    invalid(
        &edit(
            "boot_file = \"ipxe.efi\"",
            "boot_file = \"../../etc/shadow\"",
        ),
        "boot[1].boot_file",
        "escapes the boot root with '..'",
    );
    invalid(
        &edit(
            "boot_file = \"ipxe.efi\"",
            "boot_file = \"efi/../../x.efi\"",
        ),
        "boot[1].boot_file",
        "escapes the boot root",
    );
}

#[test]
fn boot_file_must_be_relative_and_plain() {
    invalid(
        &edit("boot_file = \"ipxe.efi\"", "boot_file = \"/srv/ipxe.efi\""),
        "boot[1].boot_file",
        "must be relative",
    );
    invalid(
        &edit(
            "boot_file = \"ipxe.efi\"",
            "boot_file = \"efi\\\\ipxe.efi\"",
        ),
        "boot[1].boot_file",
        "printable ASCII",
    );
    invalid(
        &edit("boot_file = \"ipxe.efi\"", "boot_file = \"efi//ipxe.efi\""),
        "boot[1].boot_file",
        "empty or '.' component",
    );
    invalid(
        &edit("boot_file = \"ipxe.efi\"", "boot_file = \"efi/\""),
        "boot[1].boot_file",
        "must name a file",
    );
    let long = format!("boot_file = \"{}\"", "a".repeat(128));
    invalid(
        &edit("boot_file = \"ipxe.efi\"", &long),
        "boot[1].boot_file",
        "longer than 127 bytes",
    );
}

#[test]
fn extra_file_escapes_the_root() {
    invalid(
        &edit(
            "boot_file = \"ipxe.efi\"",
            "boot_file = \"ipxe.efi\"\nfiles = [\"ok.cfg\", \"cfg/../../x\"]",
        ),
        "boot[1].files[1]",
        "escapes the boot root",
    );
}

#[test]
fn missing_slot_b() {
    let text = edit(
        "\n[[slots]]\nname = \"B\"\npartlabel = \"root-b\"\nsize_mib = 1024\n",
        "",
    );
    invalid(&text, "slots", "slot B is missing");
}

#[test]
fn duplicate_and_unknown_slot_names() {
    invalid(
        &edit("name = \"B\"", "name = \"A\""),
        "slots[1].name",
        "slot A is defined twice",
    );
    invalid(
        &edit("name = \"B\"", "name = \"C\""),
        "slots[1].name",
        "\"C\" is not a slot name",
    );
}

#[test]
fn slots_must_differ_and_be_located() {
    invalid(
        &edit("partlabel = \"root-b\"", "partlabel = \"root-a\""),
        "slots",
        "both at",
    );
    invalid(
        &edit("partlabel = \"root-b\"", "device = \"/dev/../sda2\""),
        "slots[1].device",
        "must not contain '..'",
    );
    invalid(
        &edit("partlabel = \"root-b\"", "device = \"sda2\""),
        "slots[1].device",
        "must be an absolute path",
    );
    invalid(
        &edit(
            "partlabel = \"root-b\"",
            "partlabel = \"root-b\"\ndevice = \"/dev/sda2\"",
        ),
        "slots[1].device",
        "not both",
    );
    invalid(
        &edit("partlabel = \"root-b\"\n", ""),
        "slots[1]",
        "missing partlabel or device",
    );
    invalid(
        &edit("size_mib = 1024\n\n[[slots]]", "size_mib = 0\n\n[[slots]]"),
        "slots[0].size_mib",
        "at least 1",
    );
}

#[test]
fn slots_and_bootloader_come_together() {
    let no_bootloader = edit(
        "[bootloader]\nbackend = \"grub-env\"\nenv_file = \"/boot/grub/grubenv\"\n",
        "",
    );
    invalid(&no_bootloader, "bootloader", "no [bootloader]");
    let no_slots = BASE.split("[[slots]]").next().unwrap().to_owned();
    invalid(
        &no_slots,
        "slots",
        "backend grub-env needs [[slots]] A and B",
    );
}

#[test]
fn backend_specific_keys() {
    invalid(
        &edit("env_file = \"/boot/grub/grubenv\"\n", ""),
        "bootloader.env_file",
        "missing: backend grub-env needs it",
    );
    invalid(
        &edit(
            "env_file = \"/boot/grub/grubenv\"",
            "env_file = \"/boot/grub/grubenv\"\ndisk = \"/dev/sda\"",
        ),
        "bootloader.disk",
        "belongs to backend rpi-tryboot, not grub-env",
    );
    invalid(
        &edit(
            "env_file = \"/boot/grub/grubenv\"",
            "env_file = \"grubenv\"",
        ),
        "bootloader.env_file",
        "absolute",
    );
    invalid(
        &edit(
            "size_mib = 1024\n\n[[slots]]",
            "size_mib = 1024\nboot_partition = 2\n\n[[slots]]",
        ),
        "slots[0].boot_partition",
        "only used by backend rpi-tryboot",
    );
}

/// BASE with its bootloader table replaced by `bootloader` and extra slot keys.
fn with_backend(bootloader: &str, slot_a: &str, slot_b: &str) -> String {
    let head = BASE.split("[bootloader]").next().unwrap();
    format!(
        "{head}[bootloader]\n{bootloader}\n\n[[slots]]\nname = \"A\"\npartlabel = \"root-a\"\nsize_mib = 1024\n{slot_a}\n\n[[slots]]\nname = \"B\"\npartlabel = \"root-b\"\nsize_mib = 1024\n{slot_b}\n"
    )
}

#[test]
fn rpi_tryboot_needs_boot_partitions() {
    let bl = "backend = \"rpi-tryboot\"\ndisk = \"/dev/mmcblk0\"\nautoboot_partition = 1";
    let ok = with_backend(bl, "boot_partition = 2", "boot_partition = 3");
    Board::from_toml(FILE, &ok).unwrap();
    invalid(
        &with_backend(bl, "boot_partition = 2", ""),
        "slots[1].boot_partition",
        "missing: rpi-tryboot needs",
    );
    invalid(
        &with_backend(bl, "boot_partition = 2", "boot_partition = 2"),
        "slots",
        "same boot_partition",
    );
    invalid(
        &with_backend(bl, "boot_partition = 1", "boot_partition = 3"),
        "slots[0].boot_partition",
        "is the autoboot_partition",
    );
    invalid(
        &with_backend(
            "backend = \"rpi-tryboot\"\ndisk = \"/dev/mmcblk0\"",
            "boot_partition = 2",
            "boot_partition = 3",
        ),
        "bootloader.autoboot_partition",
        "missing",
    );
}

#[test]
fn uboot_env_copies() {
    let one = "backend = \"uboot-env\"\nbootlimit = 3\nenv = [{ device = \"/dev/mmcblk0\", offset = 0x3fc000, size = 0x4000 }]";
    let b = Board::from_toml(FILE, &with_backend(one, "", "")).unwrap();
    assert_eq!(b.ab.unwrap().bootloader.kind(), BootloaderKind::UbootEnv);

    let two_ok = "backend = \"uboot-env\"\nbootlimit = 3\nenv = [\n  { device = \"/dev/mmcblk0\", offset = 0x3f8000, size = 0x4000 },\n  { device = \"/dev/mmcblk0\", offset = 0x3fc000, size = 0x4000 },\n]";
    Board::from_toml(FILE, &with_backend(two_ok, "", "")).unwrap();

    let overlap = two_ok.replace("0x3fc000", "0x3fa000");
    invalid(
        &with_backend(&overlap, "", ""),
        "bootloader.env[1].offset",
        "overlaps the first copy",
    );

    let sizes = two_ok.replacen("size = 0x4000 }", "size = 0x2000 }", 1);
    invalid(
        &with_backend(&sizes, "", ""),
        "bootloader.env[1].size",
        "same size",
    );

    let sector = one.replace("size = 0x4000 }", "size = 0x4000, sector_size = 0x1000 }");
    invalid(
        &with_backend(&sector, "", ""),
        "bootloader.env[0].sector_size",
        "one erase sector",
    );

    let no_limit = one.replace("bootlimit = 3\n", "");
    invalid(
        &with_backend(&no_limit, "", ""),
        "bootloader.bootlimit",
        "missing",
    );

    // A missing key inside an inline table names the element.
    let no_size = "backend = \"uboot-env\"\nbootlimit = 3\nenv = [\n  { device = \"/a\", offset = 0, size = 16 },\n  { device = \"/b\", offset = 0 },\n]";
    let e = load(&with_backend(no_size, "", ""));
    assert_eq!(e.key(), Some("bootloader.env[1].size"), "{e}");
    assert_eq!(e.line(), Some(26), "{e}");

    let three = "backend = \"uboot-env\"\nbootlimit = 3\nenv = [\n  { device = \"/a\", offset = 0, size = 16 },\n  { device = \"/b\", offset = 0, size = 16 },\n  { device = \"/c\", offset = 0, size = 16 },\n]";
    invalid(&with_backend(three, "", ""), "bootloader.env", "3 copies");
}

#[test]
fn efi_bootnext_needs_loaders() {
    let bl = "backend = \"efi-bootnext\"\nesp_device = \"/dev/sda1\"";
    Board::from_toml(
        FILE,
        &with_backend(
            bl,
            "efi_loader = \"EFI/t/a.efi\"",
            "efi_loader = \"EFI/t/b.efi\"",
        ),
    )
    .unwrap();
    invalid(
        &with_backend(bl, "efi_loader = \"EFI/t/a.efi\"", ""),
        "slots[1].efi_loader",
        "missing",
    );
    invalid(
        &with_backend(
            bl,
            "efi_loader = \"EFI/t/a.efi\"",
            "efi_loader = \"EFI/t/b.img\"",
        ),
        "slots[1].efi_loader",
        "must end in .efi",
    );
    invalid(
        &with_backend(
            bl,
            "efi_loader = \"EFI/t/a.efi\"",
            "efi_loader = \"EFI/t/a.efi\"",
        ),
        "slots",
        "same efi_loader",
    );
}

#[test]
fn file_backend() {
    let b = Board::from_toml(
        FILE,
        &with_backend(
            "backend = \"file\"\npath = \"/var/lib/tugboot/slots\"",
            "",
            "",
        ),
    )
    .unwrap();
    assert_eq!(b.ab.unwrap().bootloader.to_string(), "file");
}

#[test]
fn name_must_match_file_stem() {
    invalid(
        &edit("name = \"test-board\"", "name = \"other-board\""),
        "name",
        "must be \"test-board\"",
    );
    invalid(
        &edit("name = \"test-board\"", "name = \"Test Board\""),
        "name",
        "not a board name",
    );
}

#[test]
fn kernel_rules() {
    invalid(
        &edit("format = \"bzimage\"", "format = \"arm64-image\""),
        "kernel.format",
        "a arm64-image kernel cannot run on an x86_64 board",
    );
    invalid(
        &edit("console = [\"ttyS0,115200n8\"]", "console = []"),
        "kernel.console",
        "at least one",
    );
    invalid(
        &edit(
            "console = [\"ttyS0,115200n8\"]",
            "console = [\"ttyS0 quiet\"]",
        ),
        "kernel.console[0]",
        "not a console= value",
    );
    invalid(
        &edit("description = \"a board for tests\"", "description = \" \""),
        "description",
        "empty",
    );
}

#[test]
fn network_rules() {
    let with = |net: &str| {
        edit(
            "[[boot]]\nmethod = \"bios-pxe\"",
            &format!("{net}\n\n[[boot]]\nmethod = \"bios-pxe\""),
        )
    };
    invalid(
        &with("[network]\nmtu = 1500\ntftp_blksize = 1472"),
        "network.tftp_blksize",
        "outside 8..=1468",
    );
    invalid(
        &with("[network]\nmtu = 100"),
        "network.mtu",
        "outside 576..=9216",
    );
    invalid(
        &with("[network]\ntftp_windowsize = 0"),
        "network.tftp_windowsize",
        "RFC 7440",
    );
    let b = Board::from_toml(
        FILE,
        &with("[network]\nmtu = 9000\ntftp_blksize = 8192\ntftp_windowsize = 8"),
    )
    .unwrap();
    assert_eq!(
        (
            b.network.mtu,
            b.network.tftp_blksize,
            b.network.tftp_windowsize
        ),
        (9000, 8192, 8)
    );
}

#[test]
fn loader_must_fit_method() {
    invalid(
        &edit(
            "loader = \"ipxe\"\n\n[[boot]]",
            "loader = \"grub\"\n\n[[boot]]",
        ),
        "boot[0].loader",
        "bios-pxe firmware cannot start a grub loader",
    );
}

/// An arm64 board with one rpi-netboot method, for the Pi rules.
const PI: &str = r#"name = "test-board"
description = "pi"
arch = "arm64"

[kernel]
format = "arm64-image"
console = ["serial0,115200"]

[identify]
mac_ouis = ["dc:a6:32"]

[[boot]]
method = "rpi-netboot"
arch_codes = [0]
boot_file = "start4.elf"
loader = "rpi-firmware"

[boot.rpi]
tftp_prefix = "serial"
prefix_boot_file = true
option43 = "Raspberry Pi Boot"
"#;

#[test]
fn rpi_rules() {
    let b = Board::from_toml(FILE, PI).unwrap();
    assert!(b.ab.is_none());
    assert!(b.boot[0].rpi.as_ref().unwrap().sends_dhcp_request);

    let no_rpi = PI.split("[boot.rpi]").next().unwrap();
    invalid(no_rpi, "boot[0].rpi", "needs a [boot.rpi] table");

    let no_identify = PI.replace("[identify]\nmac_ouis = [\"dc:a6:32\"]\n", "");
    invalid(
        &no_identify,
        "identify",
        "shares option 93 code 0 with x86 BIOS",
    );

    let bad_oui = PI.replace("dc:a6:32", "dc:a6:3");
    invalid(&bad_oui, "identify.mac_ouis[0]", "not an OUI");
    let twice = PI.replace("[\"dc:a6:32\"]", "[\"dc:a6:32\", \"DC:A6:32\"]");
    invalid(&twice, "identify.mac_ouis[1]", "listed twice");

    let bad_guid = PI.replace("mac_ouis = [\"dc:a6:32\"]", "client_guid_prefix = \"RPi4\"");
    invalid(
        &bad_guid,
        "identify.client_guid_prefix",
        "not 1 to 16 bytes of hex",
    );

    let rpi_on_uefi = edit(
        "loader = \"ipxe\"\n\n[bootloader]",
        "loader = \"ipxe\"\n\n[boot.rpi]\ntftp_prefix = \"serial\"\nprefix_boot_file = true\noption43 = \"x\"\n\n[bootloader]",
    );
    invalid(
        &rpi_on_uefi,
        "boot[1].rpi",
        "only applies to rpi-netboot, not uefi-pxe",
    );

    // A Pi cannot claim a UEFI code.
    invalid(
        &PI.replace("arch_codes = [0]", "arch_codes = [0, 11]"),
        "boot[0].arch_codes[1]",
        "not sent by rpi-netboot firmware",
    );
}

#[test]
fn unknown_key_in_nested_rpi_table() {
    let text = PI.replace(
        "option43 = \"Raspberry Pi Boot\"",
        "option43 = \"x\"\nprefix = \"y\"",
    );
    parse_err(&text, "boot[0].rpi.prefix", 22, "unknown field `prefix`");
}

// ---------------------------------------------------------------- files and catalogs

#[test]
fn oversized_file_is_refused_before_parsing() {
    let mut text = BASE.to_owned();
    text.push_str(&"#".repeat(MAX_BOARD_FILE_BYTES));
    match load(&text) {
        BoardError::TooLarge { file, limit, .. } => {
            assert_eq!(file, FILE);
            assert_eq!(limit, MAX_BOARD_FILE_BYTES);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn file_names() {
    for bad in [
        "test-board.yaml",
        "dir/test-board.toml",
        ".toml",
        "Test.toml",
    ] {
        match Board::from_toml(bad, BASE) {
            Err(BoardError::FileName { file, .. }) => assert_eq!(file, bad),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn from_sources_rejects_duplicates_and_reports_the_file() {
    let e = Catalog::from_sources([(FILE, BASE), (FILE, BASE)]).unwrap_err();
    assert!(
        matches!(&e, BoardError::DuplicateBoard { name, first, .. } if name == "test-board" && first == FILE),
        "{e}"
    );
    let broken = edit("arch_codes = [0]", "arch_codes = [0, 0]");
    let e = Catalog::from_sources([
        ("x86_64-bios.toml", include_str!("../../x86_64-bios.toml")),
        (FILE, &broken),
    ])
    .unwrap_err();
    assert_eq!(e.file(), Some(FILE));
    let c = Catalog::from_sources([(FILE, BASE)]).unwrap();
    assert_eq!(c.len(), 1);
    assert!(Catalog::from_sources([]).unwrap().is_empty());
}

#[test]
fn load_dir_skips_other_files_and_reports_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(FILE), BASE).unwrap();
    std::fs::write(dir.path().join("README.md"), "not a board").unwrap();
    std::fs::create_dir(dir.path().join("sub.toml")).unwrap();
    std::fs::write(dir.path().join(".test-board.toml"), "editor lock file").unwrap();
    let c = Catalog::load_dir(dir.path()).unwrap();
    assert_eq!(
        c.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
        ["test-board"]
    );

    std::fs::write(dir.path().join("zz-bad.toml"), [0xff, 0xfe, b'\n']).unwrap();
    match Catalog::load_dir(dir.path()).unwrap_err() {
        BoardError::NotUtf8 { file } => assert_eq!(file, "zz-bad.toml"),
        other => panic!("{other:?}"),
    }

    std::fs::write(
        dir.path().join("zz-bad.toml"),
        vec![b'#'; MAX_BOARD_FILE_BYTES + 10],
    )
    .unwrap();
    match Catalog::load_dir(dir.path()).unwrap_err() {
        BoardError::TooLarge { file, size, .. } => {
            assert_eq!(file, "zz-bad.toml");
            assert_eq!(size, u64::try_from(MAX_BOARD_FILE_BYTES + 10).unwrap());
        }
        other => panic!("{other:?}"),
    }

    let missing = dir.path().join("nope");
    assert!(matches!(
        Catalog::load_dir(&missing),
        Err(BoardError::Io { .. })
    ));
}

// ---------------------------------------------------------------- real firmware captures

/// Options of a BOOTP/DHCP payload (test helper: bounds-checked, no overload handling).
fn dhcp_options(bootp: &[u8]) -> Vec<(u8, Vec<u8>)> {
    assert!(bootp.len() > 240, "short BOOTP payload");
    assert_eq!(&bootp[236..240], &[99, 130, 83, 99], "magic cookie");
    let mut out = Vec::new();
    let mut rest = &bootp[240..];
    while let Some((&code, tail)) = rest.split_first() {
        match code {
            0 => rest = tail,
            255 => break,
            _ => {
                let (&len, tail) = tail.split_first().expect("option length");
                let len = usize::from(len);
                assert!(tail.len() >= len, "option {code} overruns the packet");
                out.push((code, tail[..len].to_vec()));
                rest = &tail[len..];
            }
        }
    }
    out
}

/// The boards the catalog offers for a captured DHCPDISCOVER.
fn boards_for_discover(catalog: &Catalog, bootp: &[u8]) -> Vec<String> {
    let opts = dhcp_options(bootp);
    let get = |c: u8| {
        opts.iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| v.as_slice())
    };
    let arch = get(93).expect("option 93");
    let client = DhcpClient {
        arch_code: u16::from_be_bytes([arch[0], arch[1]]),
        mac: bootp[28..34].try_into().unwrap(),
        vendor_class: get(60),
        client_guid: get(97),
    };
    catalog
        .boards_for_client(&client)
        .into_iter()
        .map(|b| b.name.clone())
        .collect()
}

#[test]
fn captured_firmware_discovers_find_their_board() {
    let c = Catalog::builtin();
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dhcp"));
    let cases = [
        ("seabios-ipxe-x86_64-arch0-discover.bin", "x86_64-bios"),
        ("ovmf-x86_64-arch7-discover.bin", "x86_64-uefi"),
        ("ovmf-x86_64-arch16-discover.bin", "x86_64-uefi"),
        ("aavmf-arm64-arch11-discover.bin", "arm64-uefi"),
        ("aavmf-arm64-arch19-discover.bin", "arm64-uefi"),
        ("qemu-arm64-uboot-arch22-discover.bin", "qemu-arm64-uboot"),
        // U-Boot's EFI fallback looks like UEFI firmware; GRUB runs on U-Boot's EFI too.
        ("qemu-arm64-uboot-arch11-discover.bin", "arm64-uefi"),
    ];
    for (file, board) in cases {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        assert_eq!(boards_for_discover(&c, &bytes), [board], "{file}");
    }
    // Code 0 alone would also have matched every Raspberry Pi: the MAC ruled them out.
    let bios = std::fs::read(dir.join("seabios-ipxe-x86_64-arch0-discover.bin")).unwrap();
    assert_eq!(c.for_dhcp_arch(0).len(), 4);
    // The same packet from a Pi 4's MAC goes to the Pi 4 only (its OUI scores over
    // x86_64-bios, which declares no hints), from a Pi 3's MAC to the Pi 3.
    let mut pi = bios.clone();
    pi[28..31].copy_from_slice(&[0xdc, 0xa6, 0x32]);
    assert_eq!(boards_for_discover(&c, &pi), ["raspberrypi-4"]);
    pi[28..31].copy_from_slice(&[0xb8, 0x27, 0xeb]);
    assert_eq!(boards_for_discover(&c, &pi), ["raspberrypi-3"]);
}

#[test]
fn shared_oui_is_settled_by_the_client_guid() {
    let c = Catalog::builtin();
    let names = |client: &DhcpClient<'_>| -> Vec<String> {
        c.boards_for_client(client)
            .into_iter()
            .map(|b| b.name.clone())
            .collect()
    };
    let mut client = DhcpClient {
        arch_code: 0,
        mac: [0xd8, 0x3a, 0xdd, 1, 2, 3],
        vendor_class: None,
        client_guid: None,
    };
    // d8:3a:dd is on both Pi 4 and Pi 5 boards: ambiguous without option 97.
    assert_eq!(names(&client), ["raspberrypi-4", "raspberrypi-5"]);
    let rpi5 = [
        0u8, b'R', b'P', b'i', b'5', 0x17, 0x04, 0xd0, 0, 1, 2, 3, 4, 5, 6, 7, 8,
    ];
    client.client_guid = Some(&rpi5);
    assert_eq!(names(&client), ["raspberrypi-5"]);
    // A Pi 4 whose MAC was overridden (MAC_ADDRESS) is still found by its GUID.
    let rpi4 = [
        0u8, b'R', b'P', b'i', b'4', 0x11, 0x31, 0xc0, 0, 1, 2, 3, 4, 5, 6, 7, 8,
    ];
    client.mac = [0x02, 0, 0, 0, 0, 1];
    client.client_guid = Some(&rpi4);
    assert_eq!(names(&client), ["raspberrypi-4"]);
    // An unknown code: nothing.
    client.arch_code = 30;
    assert!(names(&client).is_empty());
}
