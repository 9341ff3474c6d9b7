//! Every fuzz seed under tests/fixtures/bootenv/ through the same entry points as the
//! `uboot_env` and `grub_env` fuzz targets, so `cargo test` covers them.

use std::path::Path;

use tugboot_agent::bootloader::fuzzing;

fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/bootenv");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    assert!(out.len() >= 6, "fixtures missing in {}", dir.display());
    out
}

#[test]
fn every_seed_round_trips_through_uboot_target() {
    for (name, data) in seeds() {
        let accepted = fuzzing::uboot_env(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
        // The real-tool images must be accepted, not merely not crash.
        if name.starts_with("uboot-") && name.ends_with(".bin") {
            assert!(accepted, "{name} rejected by every U-Boot decoder");
        }
    }
}

#[test]
fn every_seed_round_trips_through_grub_target() {
    for (name, data) in seeds() {
        let accepted = fuzzing::grub_env(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(accepted, name.starts_with("grubenv-"), "{name}");
    }
}
