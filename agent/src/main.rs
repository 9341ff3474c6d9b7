//! `tugboot-agent`: the on-device agent (see `docs/agent.md`). Every failure ends with a
//! non-zero exit status and one line on stderr saying why.

use std::process::ExitCode;

use tugboot_agent::cli;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match cli::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", cli::one_line(&err.to_string()));
            ExitCode::FAILURE
        }
    }
}
