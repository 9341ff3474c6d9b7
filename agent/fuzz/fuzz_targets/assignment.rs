//! The assignment document (untrusted bytes from the server, parsed at every poll): through
//! the same entry as the seed test, `check_assignment`. `Assignment::parse` never panics, and
//! every URL of an assignment it accepts resolves against the server to an absolute
//! `http(s)://host…` URL. Seeds: tests/fixtures/agent-assignment/.
#![no_main]

use tugboot_agent::net::daemon::{AssignmentCheck, check_assignment};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(AssignmentCheck::Unresolvable(e)) =
        check_assignment("https://tugboot.example:8443", data)
    {
        panic!("{e}");
    }
});
