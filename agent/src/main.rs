//! `tugboot-agent`: the on-device agent.
//!
//! This first cut verifies a signed manifest exactly as a device will before installing it; the
//! update state machine, slot backends and reporting are being built on top of it.

use std::process::ExitCode;

use tugboot_agent::cli;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match cli::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
