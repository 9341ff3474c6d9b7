use super::*;
use crate::facts::{Declarer, Observer, Source};
use crate::observe::{dhcp_facts, observed};
use crate::testkit;

const PROFILES: &str = r#"
default_profile = "rescue"

[profiles.edge]
image = "edge"
cmdline = "tugboot.rack={{label.rack}} tugboot.host={{hostname}} tugboot.mac={{mac}}"

[profiles.x86]
image = "x86-os"

[profiles.arm]
image = "arm-os"

[profiles.bios-only]
image = "x86-os"
cmdline = "legacy=1"

[profiles.rescue]
image = "rescue"

[profiles.disk]
template = "local"

[[machines]]
name = "gw-1"
mac = "52:54:00:00:00:01"
board = "x86_64-uefi"
profile = "disk"
labels = { rack = "r1" }

[[machines]]
name = "gw-2"
mac = "52:54:00:00:00:02"
hostname = "gw-2"
labels = { rack = "r1", role = "gateway" }

[[machines]]
name = "by-serial"
serial = "SN-3"
labels = { rack = "r1", role = "gateway" }

[[groups]]
name = "gateways"
profile = "edge"
selector = "rack=r1,role=gateway"

[[groups]]
name = "x86"
profile = "x86"
selector = "arch=x86_64"

[[groups]]
name = "x86-bios"
profile = "bios-only"
selector = "arch=x86_64,firmware=bios"

[[groups]]
name = "arm"
profile = "arm"
selector = { arch = "arm64" }
"#;

fn fleet() -> Fleet {
    let profiles = ProfileSet::from_toml(PROFILES).unwrap();
    Fleet {
        catalogue: testkit::catalogue(&[
            ("edge", 1, "console=ttyS0"),
            ("edge", 2, "console=ttyS0 quiet"),
            ("x86-os", 1, ""),
            ("arm-os", 1, ""),
            ("rescue", 1, ""),
        ]),
        registry: declared_registry(&profiles, 1),
        profiles,
        boards: Catalog::builtin(),
    }
}

fn mac(s: &str) -> Mac {
    s.parse().unwrap()
}

fn plan(
    fleet: &Fleet,
    mac_s: Option<&str>,
    serial: Option<&str>,
    observed: &Facts,
) -> Result<BootPlan, NoBoot> {
    fleet.plan(&BootRequest {
        mac: mac_s.map(mac),
        uuid: None,
        serial,
        observed,
    })
}

#[test]
fn assigned_profile_then_group_then_default() {
    let f = fleet();
    let none = Facts::new();
    // gw-1: assigned "disk" although its labels would match nothing better.
    let p = plan(&f, Some("52:54:00:00:00:01"), None, &none).unwrap();
    assert_eq!((p.profile.as_str(), &p.via), ("disk", &Via::Machine));
    assert!(matches!(p.action, BootAction::Local));
    assert_eq!(p.booted(), "local");
    assert_eq!(p.board.as_deref(), Some("x86_64-uefi"));
    // gw-2: the gateways group (two terms) by its declared labels; placeholders filled.
    let p = plan(&f, Some("52:54:00:00:00:02"), None, &none).unwrap();
    assert_eq!(p.via, Via::Group("gateways".into()));
    let l = p.linux().unwrap();
    assert_eq!(l.image.label(), "edge@2", "highest version");
    assert_eq!(
        l.cmdline.as_str(),
        "console=ttyS0 quiet tugboot.rack=r1 tugboot.host=gw-2 tugboot.mac=52:54:00:00:00:02"
    );
    assert_eq!(p.machine, Some(MachineId(2)));
    // Unknown machine, nothing observed: the default.
    let p = plan(&f, Some("02:00:00:00:00:99"), None, &none).unwrap();
    assert_eq!((p.profile.as_str(), &p.via), ("rescue", &Via::Default));
    assert_eq!(p.machine, None);
    assert_eq!(p.who, "02:00:00:00:00:99");
}

#[test]
fn placeholders_without_a_value_refuse_with_the_reason() {
    let f = fleet();
    let e = plan(&f, None, Some("SN-3"), &Facts::new()).unwrap_err();
    assert!(
        e.to_string()
            .contains("placeholder {{hostname}} has no value"),
        "{e}"
    );
}

#[test]
fn unknown_machines_of_a_mixed_fleet_boot_by_observed_architecture() {
    let f = fleet();
    let cases = [
        ("pxe/bios", "bios-only"),
        ("ipxe/bios", "bios-only"),
        ("pxe/uefi-x64", "x86"),
        ("http-boot/uefi-x64", "x86"),
        ("pxe/uefi-arm64", "arm"),
        ("uboot/uboot-arm64", "arm"),
    ];
    for (client, profile) in cases {
        let obs = dhcp_facts(client, &[], 5);
        let p = plan(&f, Some("02:00:00:00:00:42"), None, &obs).unwrap();
        assert_eq!(p.profile, profile, "{client}");
    }
    // iPXE's own report: buildarch i386 on a BIOS PC is an x86_64 BIOS machine.
    let (arch, fw) = crate::observe::ipxe_facts(Some("i386"), Some("pcbios"));
    let obs = observed(
        Observer::Http,
        5,
        &[("arch", arch.unwrap()), ("firmware", fw.unwrap())],
    );
    let p = plan(&f, Some("02:00:00:00:00:43"), None, &obs).unwrap();
    assert_eq!(p.profile, "bios-only");
}

#[test]
fn a_request_cannot_change_declared_facts() {
    let f = fleet();
    // gw-1 is declared x86_64-uefi; a forged board (and labels) in the request change nothing.
    let forged = observed(
        Observer::Http,
        9,
        &[
            ("board", "raspberrypi-4"),
            ("label.role", "gateway"),
            ("profile", "edge"),
        ],
    );
    let p = plan(&f, Some("52:54:00:00:00:01"), None, &forged).unwrap();
    assert_eq!(p.board.as_deref(), Some("x86_64-uefi"));
    assert_eq!(p.profile, "disk");
    // An unknown machine claiming a label does not join a label group (labels read trusted).
    let p = plan(&f, Some("02:00:00:00:00:44"), None, &forged).unwrap();
    assert_eq!(p.profile, "rescue");
}

#[test]
fn the_board_console_comes_first() {
    let mut f = fleet();
    // An operator-declared board on an unknown-to-the-file machine.
    let mut m = f.registry.get(MachineId(2)).unwrap().clone();
    m.facts
        .offer_value(
            "board",
            "qemu-arm64-uboot",
            Source::Declared(Declarer::Operator),
            3,
        )
        .unwrap();
    f.registry = Registry::new(vec![m]);
    let p = plan(&f, Some("52:54:00:00:00:02"), None, &Facts::new()).unwrap();
    let cmdline = p.linux().unwrap().cmdline.as_str().to_owned();
    assert!(
        cmdline.starts_with("console=ttyAMA0,115200n8 "),
        "{cmdline}"
    );
}

#[test]
fn revoked_unpublished_and_unknown_fail_with_reasons() {
    let mut f = fleet();
    let mut m = f.registry.get(MachineId(2)).unwrap().clone();
    m.state = MachineState::Revoked;
    f.registry = Registry::new(vec![m]);
    let e = plan(&f, Some("52:54:00:00:00:02"), None, &Facts::new()).unwrap_err();
    assert_eq!(e, NoBoot::Revoked { who: "gw-2".into() });

    let mut f = fleet();
    f.catalogue = testkit::catalogue(&[("x86-os", 1, "")]);
    let e = plan(&f, Some("02:00:00:00:00:05"), None, &Facts::new()).unwrap_err();
    assert!(
        e.to_string()
            .contains("image rescue (latest) of profile rescue is not published"),
        "{e}"
    );

    let mut f = fleet();
    f.profiles = ProfileSet::from_toml("[profiles.x]\nimage = \"x86-os\"").unwrap();
    let e = plan(&f, Some("02:00:00:00:00:05"), None, &Facts::new()).unwrap_err();
    assert_eq!(
        e,
        NoBoot::NoProfile {
            who: "02:00:00:00:00:05".into()
        }
    );
}

#[test]
fn dtbs_of_the_image_are_in_the_plan() {
    let mut f = fleet();
    let mut c = Catalogue::new();
    c.insert(
        testkit::image("rescue", 3, &["raspberrypi-4"], &["bcm2711-rpi-4-b.dtb"]),
        KernelCmdline::default(),
    )
    .unwrap();
    f.catalogue = c;
    let p = plan(&f, Some("02:00:00:00:00:05"), None, &Facts::new()).unwrap();
    let l = p.linux().unwrap();
    assert_eq!(l.dtbs.len(), 1);
    assert_eq!(l.dtbs[0].0, "bcm2711-rpi-4-b.dtb");
    assert!(l.initrd.is_some());
}

const INSTALL: &str = r#"
[profiles.fleet]
template = "install"
image = "edge"
installer = "installer"
cmdline = "tugboot.mac={{mac}}"

[[machines]]
name = "new-1"
mac = "52:54:00:00:00:31"
profile = "fleet"
"#;

/// An `install` profile netboots the installer until the machine itself says (over mutual TLS,
/// an attested fact) that it installed; then it boots its disk. The device API hands the
/// installer the profile's image meanwhile. A claim on the network changes nothing.
#[test]
fn install_profiles_netboot_the_installer_until_the_machine_attests_its_install() {
    let profiles = ProfileSet::from_toml(INSTALL).unwrap();
    let mut f = Fleet {
        catalogue: testkit::catalogue(&[
            ("edge", 1, ""),
            ("edge", 2, ""),
            ("installer", 4, "console=ttyS0"),
        ]),
        registry: declared_registry(&profiles, 1),
        profiles,
        boards: Catalog::builtin(),
    };
    let id = MachineId(1);
    let p = plan(&f, Some("52:54:00:00:00:31"), None, &Facts::new()).unwrap();
    let l = p.linux().expect("netboots the installer");
    assert_eq!(l.image.label(), "installer@4");
    assert_eq!(
        l.cmdline.as_str(),
        "console=ttyS0 tugboot.mac=52:54:00:00:00:31"
    );
    assert_eq!(
        f.install_image(id).map(|i| i.label()),
        Some("edge@2".into())
    );

    // Somebody on the network claims the install: still the installer.
    let forged = observed(Observer::Http, 5, &[("installed", "edge@2")]);
    let p = plan(&f, Some("52:54:00:00:00:31"), None, &forged).unwrap();
    assert!(p.linux().is_some());

    // The machine attests it: its disk from now on, and nothing more to install.
    let mut machines: Vec<Machine> = f.registry.iter().cloned().collect();
    machines[0]
        .facts
        .offer_value("installed", "edge@2", Source::Attested, 6)
        .unwrap();
    f.registry = Registry::new(machines);
    let p = plan(&f, Some("52:54:00:00:00:31"), None, &Facts::new()).unwrap();
    assert!(matches!(p.action, BootAction::Local), "{p:?}");
    assert!(f.install_image(id).is_none());
}

#[test]
fn install_profiles_need_an_image_and_an_installer() {
    let err = |text: &str| ProfileSet::from_toml(text).unwrap_err().to_string();
    assert!(
        err("[profiles.p]\ntemplate = \"install\"\nimage = \"os\"\n").contains("needs `installer`")
    );
    assert!(
        err("[profiles.p]\ntemplate = \"install\"\ninstaller = \"i\"\n")
            .contains("needs the `image`")
    );
    assert!(
        err("[profiles.p]\nimage = \"os\"\ninstaller = \"i\"\n")
            .contains("profiles.p.installer: only template \"install\"")
    );
}
