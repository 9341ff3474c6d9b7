use super::*;
use crate::facts::Observer;
use crate::observe::dhcp_facts;
use crate::plan::declared_registry;
use crate::profiles::ProfileSet;
use crate::testkit;

const MAC: Mac = Mac([0x52, 0x54, 0x00, 0x12, 0x34, 0x01]);

fn digest(byte: u8) -> Sha256Digest {
    format!("{byte:02x}").repeat(32).parse().expect("digest")
}

#[test]
fn paths_are_classified_and_everything_else_falls_through() {
    assert_eq!(
        classify("grub/grub.cfg-01-52-54-00-12-34-01"),
        Some(LoaderFile::GrubMachine(MAC))
    );
    // GRUB prints the MAC in lower case; upper case is the same machine.
    assert_eq!(
        classify("grub/grub.cfg-01-52-54-00-12-34-0A"),
        Some(LoaderFile::GrubMachine(Mac([
            0x52, 0x54, 0, 0x12, 0x34, 0x0a
        ])))
    );
    assert_eq!(classify("grub/grub.cfg"), Some(LoaderFile::GrubConfig));
    assert_eq!(
        classify("pxelinux.cfg/01-52-54-00-12-34-01"),
        Some(LoaderFile::Pxelinux(MAC))
    );
    assert_eq!(classify("boot.scr.uimg"), Some(LoaderFile::UbootScript));
    let hex = "ab".repeat(32);
    assert_eq!(
        classify(&format!("artifacts/sha256/{hex}")),
        Some(LoaderFile::Artifact(digest(0xab)))
    );
    assert_eq!(
        classify("8A3B1C2D/start4.elf"),
        Some(LoaderFile::Rpi {
            serial: "8a3b1c2d".into(),
            file: "start4.elf".into()
        })
    );
    for other in [
        "grub/grub.cfg-0A4D0064",
        "grub/arm64-efi/command.lst",
        "grub/x86_64-efi/grub.cfg",
        "grub/grub.cfg-01-52-54-00-12-34",
        "grub/grub.cfg-01-52-54-00-12-34-01-02",
        "grub/grub.cfg-01-52-54-00-12-34-1",
        "grub/grub.cfg-01-52-54-00-12-34-zz",
        "grub/grub.cfg-06-52-54-00-12-34-01",
        "grub/mac/52:54:00:12:34:01",
        "other/grub.cfg-01-52-54-00-12-34-01",
        "pxelinux.cfg/default",
        "pxelinux.cfg/0A4D0064",
        "sub/boot.scr.uimg",
        "grubnetaa64.efi",
        &format!("artifacts/sha256/{}", "AB".repeat(32)),
        &format!("artifacts/sha256/{}", "ab".repeat(31)),
        &format!("artifacts/sha256/{}/x", "ab".repeat(32)),
        "artifacts/sha256/",
        "8a3b1c2d/../x",
        "8a3b1c2d/.hidden",
        "8a3b1c2g/start4.elf",
        "8a3b1c2/start4.elf",
        "",
        "/",
        "grub/grub.cfg-",
        "pxelinux.cfg/01-\u{e9}\u{e9}-00-00-00-00-00",
        "artifacts/sha256/\u{e9}",
    ] {
        assert_eq!(classify(other), None, "{other:?}");
    }
}

const PROFILES: &str = r#"
[profiles.arm]
image = "arm-os"
[profiles.x86]
image = "x86-os"
[profiles.disk]
template = "local"
[profiles.pi]
image = "pi-os"

[[machines]]
mac = "52:54:00:00:00:0d"
profile = "disk"

[[machines]]
serial = "8a3b1c2d"
board = "raspberrypi-4"
profile = "pi"

[[groups]]
name = "arm"
profile = "arm"
selector = "arch=arm64"
[[groups]]
name = "x86"
profile = "x86"
selector = "arch=x86_64"
"#;

fn fleet() -> Fleet {
    let profiles = ProfileSet::from_toml(PROFILES).unwrap();
    let mut catalogue = testkit::catalogue(&[("arm-os", 1, "panic=-1"), ("x86-os", 1, "")]);
    catalogue
        .insert(
            testkit::image("pi-os", 1, &["raspberrypi-4"], &["bcm2711-rpi-4-b.dtb"]),
            crate::KernelCmdline::default(),
        )
        .unwrap();
    Fleet {
        catalogue,
        registry: declared_registry(&profiles, 1),
        profiles,
        boards: tugboot_boards::Catalog::builtin(),
    }
}

fn ctx<'a>(o: &'a Observations, peer: Option<Ipv4Addr>) -> Context<'a> {
    Context {
        observations: o,
        peer,
        now: 100,
        retry_secs: 5,
    }
}

#[test]
fn grub_config_follows_what_dhcp_observed() {
    let f = fleet();
    let mut o = Observations::default();
    let unknown = Mac([2, 0, 0, 0, 0, 1]);
    // Nothing observed: no group matches, no default.
    let (a, plan) = answer(&f, &ctx(&o, None), &LoaderFile::GrubMachine(unknown));
    let Answer::Text(text) = a else { panic!() };
    assert!(
        text.contains("no profile for machine 02:00:00:00:00:01"),
        "{text}"
    );
    assert!(plan.unwrap().is_err());
    // DHCP saw it as arm64 UEFI: the arm group.
    o.record(
        unknown,
        &dhcp_facts("pxe/uefi-arm64", &[("address", "10.77.0.100")], 90),
        90,
    );
    let (a, plan) = answer(&f, &ctx(&o, None), &LoaderFile::GrubMachine(unknown));
    let Answer::Text(text) = a else { panic!() };
    assert!(text.contains("profile arm image arm-os v1"), "{text}");
    assert!(text.contains("'panic=-1'"), "{text}");
    assert_eq!(plan.unwrap().unwrap().profile, "arm");
    // Stock GRUB reads grub/grub.cfg: known by its address, the machine's own configuration...
    let (a, _) = answer(
        &f,
        &ctx(&o, Some([10, 77, 0, 100].into())),
        &LoaderFile::GrubConfig,
    );
    assert!(
        matches!(&a, Answer::Text(t) if t.contains("profile arm")),
        "{a:?}"
    );
    // ...unknown address: the dispatch by GRUB's own MAC.
    let (a, plan) = answer(
        &f,
        &ctx(&o, Some([10, 77, 0, 9].into())),
        &LoaderFile::GrubConfig,
    );
    assert!(
        matches!(&a, Answer::Text(t) if t.contains("\"$net_default_mac\"")),
        "{a:?}"
    );
    assert!(plan.is_none());
}

#[test]
fn pxelinux_and_uboot_script() {
    let f = fleet();
    let mut o = Observations::default();
    let m = Mac([2, 0, 0, 0, 0, 2]);
    o.record(m, &dhcp_facts("uboot/uboot-arm64", &[], 99), 99);
    let (a, _) = answer(&f, &ctx(&o, None), &LoaderFile::Pxelinux(m));
    assert!(
        matches!(&a, Answer::Text(t) if t.contains("append panic=-1")),
        "{a:?}"
    );
    // A local-boot machine: not found, U-Boot goes on with its next boot target.
    let local = Mac([0x52, 0x54, 0, 0, 0, 0x0d]);
    let (a, plan) = answer(&f, &ctx(&o, None), &LoaderFile::Pxelinux(local));
    assert_eq!(a, Answer::NotFound);
    assert_eq!(plan.unwrap().unwrap().booted(), "local");
    let (a, _) = answer(&f, &ctx(&o, None), &LoaderFile::UbootScript);
    assert!(matches!(a, Answer::Bytes(b) if b.len() > 64));
}

#[test]
fn only_published_artifacts_are_answered() {
    let f = fleet();
    let o = Observations::default();
    let img = f.catalogue.images().next().unwrap();
    let kernel = img.artifact_digest(tugboot_firmware::Role::Kernel).unwrap();
    assert_eq!(
        answer(&f, &ctx(&o, None), &LoaderFile::Artifact(kernel)).0,
        Answer::Artifact {
            digest: kernel,
            size: 100
        }
    );
    assert_eq!(
        answer(&f, &ctx(&o, None), &LoaderFile::Artifact(digest(1))).0,
        Answer::NotFound
    );
}

#[test]
fn raspberry_pi_tree_by_serial() {
    let f = fleet();
    let mut o = Observations::default();
    let file = |name: &str| LoaderFile::Rpi {
        serial: "8a3b1c2d".into(),
        file: name.into(),
    };
    // The serial is declared in the file: its tree exists even before DHCP is seen.
    let (a, plan) = answer(&f, &ctx(&o, None), &file("config.txt"));
    assert!(
        matches!(&a, Answer::Text(t) if t.contains("kernel=tugboot-kernel.img")),
        "{a:?}"
    );
    assert_eq!(plan.unwrap().unwrap().profile, "pi");
    let (a, _) = answer(&f, &ctx(&o, None), &file("cmdline.txt"));
    // The board's console first.
    assert!(
        matches!(&a, Answer::Text(t) if t.starts_with("console=tty1 console=serial0,115200")),
        "{a:?}"
    );
    assert!(matches!(
        answer(&f, &ctx(&o, None), &file("bcm2711-rpi-4-b.dtb")).0,
        Answer::Artifact { .. }
    ));
    assert_eq!(
        answer(&f, &ctx(&o, None), &file("start4.elf")).0,
        Answer::Firmware("start4.elf".into())
    );
    // An unknown Pi that DHCP saw gets nothing here (no group matches a Pi with no profile)...
    let other = LoaderFile::Rpi {
        serial: "00000001".into(),
        file: "start4.elf".into(),
    };
    assert_eq!(answer(&f, &ctx(&o, None), &other).0, Answer::NotFound);
    // ...until it matches one: arm64 observed by DHCP, with its serial.
    o.record(
        Mac([0xdc, 0xa6, 0x32, 0, 0, 1]),
        &crate::observe::observed(
            Observer::Dhcp,
            99,
            &[("arch", "arm64"), ("serial", "00000001")],
        ),
        99,
    );
    assert_eq!(
        answer(&f, &ctx(&o, None), &other).0,
        Answer::Firmware("start4.elf".into())
    );
}
