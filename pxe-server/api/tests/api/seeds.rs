//! Every seed of the fuzz corpus (`tests/fixtures/api/`) through the fuzz entry point, so that
//! `cargo test` covers it.

#[test]
fn fuzz_seeds_do_not_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/api");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/fixtures/api") {
        let path = entry.unwrap().path();
        if path.is_file() {
            tugboot_api::wire::fuzz_bodies(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n >= 5, "expected the seed corpus in {}", dir.display());
}
