use super::*;

const EXAMPLE: &str = include_str!("../../../../tests/fixtures/profiles/example.toml");

fn err_at(text: &str) -> String {
    match ProfileSet::from_toml(text) {
        Err(ProfileError::Invalid { at, .. }) => at,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn example_file_loads() {
    let set = ProfileSet::from_toml(EXAMPLE).unwrap();
    assert_eq!(set.default_profile(), Some("rescue"));
    assert_eq!(set.machines().len(), 3);
    let names: Vec<&str> = set.groups().iter().map(|g| g.name.as_str()).collect();
    // Most terms first, then by name.
    assert_eq!(names, ["rack1-gateways", "arm64-any", "rack1"]);
    assert_eq!(
        set.profile("edge").unwrap().image,
        Some(ImageRef::Version {
            name: "edge-gateway".into(),
            version: 42
        })
    );
    assert_eq!(
        set.boards().into_iter().collect::<Vec<_>>(),
        ["raspberrypi-4", "x86_64-uefi"]
    );
    // Text and table selectors are one grammar.
    let arm = set.groups().iter().find(|g| g.name == "arm64-any").unwrap();
    assert_eq!(arm.selector, Selector::parse("arch=aarch64").unwrap());
}

#[test]
fn declared_machines_become_declared_facts() {
    let set = ProfileSet::from_toml(EXAMPLE).unwrap();
    let gw2 = set
        .machines()
        .iter()
        .find(|m| m.name.as_deref() == Some("gw-2"))
        .unwrap();
    let facts = gw2.facts(7);
    assert_eq!(facts.value("board"), Some("raspberrypi-4"));
    assert_eq!(facts.value("hostname"), Some("gw-2"));
    assert_eq!(facts.value("label.rack"), Some("r1"));
    assert_eq!(facts.trusted_value("label.role"), Some("gateway"));
    let f = facts.get("label.rack").unwrap();
    assert_eq!((f.source.as_str(), f.at), ("declared:file", 7));
    let gw1 = &set.machines()[0];
    assert_eq!(gw1.facts(0).value("profile"), Some("pinned"));
}

#[test]
fn boards_checked_against_the_catalog() {
    let catalog = tugboot_boards::Catalog::builtin();
    ProfileSet::from_toml(EXAMPLE)
        .unwrap()
        .check_boards(&catalog)
        .unwrap();
    let text = EXAMPLE.replace("board = \"raspberrypi-4\"", "board = \"raspberrypi-9\"");
    match ProfileSet::from_toml(&text).unwrap().check_boards(&catalog) {
        Err(ProfileError::Invalid { at, reason }) => {
            assert_eq!(at, "machines[1].board");
            assert!(reason.contains("raspberrypi-9"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn reservations_need_a_mac_and_are_unique() {
    let ok = "[[machines]]\nmac = \"02:00:00:00:00:01\"\naddress = \"10.0.0.5\"";
    let set = ProfileSet::from_toml(ok).unwrap();
    assert_eq!(set.machines()[0].address, Some([10, 0, 0, 5].into()));
    assert_eq!(
        err_at("[[machines]]\nserial = \"s\"\naddress = \"10.0.0.5\""),
        "machines[0].address"
    );
    assert_eq!(
        err_at(&format!(
            "{ok}\n[[machines]]\nmac = \"02:00:00:00:00:02\"\naddress = \"10.0.0.5\""
        )),
        "machines[1].address"
    );
    assert_eq!(
        err_at("[[machines]]\nuuid = \"00000000-0000-0000-0000-000000000000\""),
        "machines[0].uuid"
    );
}

#[test]
fn errors_name_the_place() {
    let cases = [
        (
            "[profiles.a]\nimage = \"x\"\ncmdline = \"a\\nb\"",
            "profiles.a.cmdline",
        ),
        (
            "[profiles.a]\nimage = \"x\"\ncmdline = \"${x}\"",
            "profiles.a.cmdline",
        ),
        (
            "[profiles.a]\nimage = \"x\"\ncmdline = \"{{nope}}\"",
            "profiles.a.cmdline",
        ),
        (
            "[profiles.a]\nimage = \"x\"\ncmdline = \"{{mac\"",
            "profiles.a.cmdline",
        ),
        (
            "[profiles.a]\nimage = \"x\"\ncmdline = \"a}}\"",
            "profiles.a.cmdline",
        ),
        ("[profiles.a]\ntemplate = \"linux\"", "profiles.a"),
        (
            "[profiles.a]\ntemplate = \"pxelinux\"",
            "profiles.a.template",
        ),
        (
            "[profiles.a]\ntemplate = \"local\"\nimage = \"x\"",
            "profiles.a",
        ),
        ("[profiles.a]\nversion = 3", "profiles.a.version"),
        (
            "[profiles.a]\nimage = \"x\"\nmanifest = \"00\"",
            "profiles.a",
        ),
        ("[profiles.a]\nmanifest = \"00\"", "profiles.a.manifest"),
        ("[profiles.a]\nimage = \"../x\"", "profiles.a.image"),
        ("[profiles.A]\nimage = \"x\"", "profiles.A"),
        ("default_profile = \"nope\"", "default_profile"),
        ("[[machines]]\nname = \"m\"", "machines[0]"),
        ("[[machines]]\nmac = \"zz\"", "machines[0].mac"),
        (
            "[[machines]]\nmac = \"02:00:00:00:00:01\"\nprofile = \"x\"",
            "machines[0].profile",
        ),
        (
            "[[machines]]\nmac = \"02:00:00:00:00:01\"\n[[machines]]\nmac = \"02-00-00-00-00-01\"",
            "machines[1].mac",
        ),
        (
            "[[machines]]\nserial = \"a\"\nlabels = { Rack = \"1\" }",
            "machines[0].labels.Rack",
        ),
        (
            "[[machines]]\nserial = \"a\"\nlabels = { rack = \"a b\" }",
            "machines[0].labels.rack",
        ),
        (
            "[profiles.p]\nimage = \"x\"\n[[groups]]\nname = \"g\"\nprofile = \"p\"\nselector = {}",
            "groups[0].selector",
        ),
        (
            "[profiles.p]\nimage = \"x\"\n[[groups]]\nname = \"g\"\nprofile = \"p\"\nselector = { arch = \"arm64\" }\n[[groups]]\nname = \"h\"\nprofile = \"p\"\nselector = { arch = \"arm64\" }",
            "groups[1].selector",
        ),
        (
            "[profiles.p]\nimage = \"x\"\n[[groups]]\nname = \"g\"\nprofile = \"p\"\nselector = { arch = \"arm64\" }\n[[groups]]\nname = \"g\"\nprofile = \"p\"\nselector = { arch = \"x86_64\" }",
            "groups[1].name",
        ),
    ];
    for (text, at) in cases {
        assert_eq!(err_at(text), at, "{text}");
    }
}

#[test]
fn parse_errors_have_positions_and_caps() {
    match ProfileSet::from_toml("[profiles.a]\nimage = \"x\"\ncolour = \"red\"\n") {
        Err(ProfileError::Parse { line, message, .. }) => {
            assert_eq!(line, 3);
            assert!(message.contains("colour"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let big = " ".repeat(MAX_PROFILES_FILE_BYTES + 1);
    assert!(matches!(
        ProfileSet::from_toml(&big),
        Err(ProfileError::TooLarge { .. })
    ));
    assert_eq!(ProfileSet::from_toml("").unwrap(), ProfileSet::default());
}
