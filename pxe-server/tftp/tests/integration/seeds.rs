//! Every fuzz seed goes through the same entry points as the fuzz targets.

use std::path::Path;

#[test]
fn fuzz_seeds_through_entry_points() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tftp");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("seed directory") {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        tugboot_tftp::fuzzing::request(&bytes);
        tugboot_tftp::fuzzing::client_packets(&bytes);
        tugboot_tftp::fuzzing::admission(&bytes);
        count += 1;
    }
    assert!(count >= 8, "only {count} seeds in {}", dir.display());
}
