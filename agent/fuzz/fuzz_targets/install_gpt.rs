//! The installer's look at a disk it is about to overwrite: the GPT reader (primary at LBA 1,
//! backup in the last sector, 512- and 4096-byte sectors) and the probe for partition tables
//! and file-system signatures, over any bytes taken as the disk's head and tail. Never panics;
//! a table that reads is consistent and found by the probe. Seeds:
//! tests/fixtures/agent-install/gpt/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(e) = tugboot_agent::install::fuzzing::gpt(data) {
        panic!("{e}");
    }
});
