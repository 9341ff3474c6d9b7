//! `tugboot`: the netboot/update server and the operator CLI.

mod cli;
mod serve;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let json = args.json;
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            cli::output::report_error(&err, json);
            ExitCode::FAILURE
        }
    }
}
