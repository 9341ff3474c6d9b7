//! `tugboot`: the netboot/update server and the operator CLI.

mod cli;
mod serve;

use std::process::ExitCode;

use clap::Parser;

/// Exit status of a command whose reader went away (`tugboot ... | head`): what a shell reports
/// for a process killed by SIGPIPE (128 + 13).
const CLOSED_PIPE_EXIT: i32 = 141;

/// `print!` panics when stdout is a closed pipe; for a CLI that is the reader's choice, not an
/// error: leave quietly, as `ls | head` does. Other panics keep the default report. (Resetting
/// SIGPIPE to its default action would need `unsafe`, which the workspace denies.)
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(CLOSED_PIPE_EXIT);
        }
        default(info);
    }));
}

/// `tugboot image push` and `tugboot images build` are easy slips: `image` works on local files
/// (build, sign, verify), `images` on a server's catalogue. Say which one was meant.
fn image_or_images(args: &[String]) -> Option<String> {
    const LOCAL: [&str; 5] = ["build", "import-linuxkit", "sign", "verify", "inspect"];
    const SERVER: [&str; 5] = ["push", "publish", "list", "show", "yank"];
    let pos = args
        .iter()
        .skip(1)
        .position(|a| a == "image" || a == "images")?
        + 1;
    let sub = args.get(pos + 1)?.as_str();
    match args[pos].as_str() {
        "image" if SERVER.contains(&sub) => Some(format!(
            "`tugboot image {sub}`: did you mean `tugboot images {sub}`? (`image` builds and signs local files; `images` is a server's catalogue)"
        )),
        "images" if LOCAL.contains(&sub) => Some(format!(
            "`tugboot images {sub}`: did you mean `tugboot image {sub}`? (`images` is a server's catalogue; `image` builds and signs local files)"
        )),
        _ => None,
    }
}

fn main() -> ExitCode {
    quiet_on_closed_pipe();
    let argv: Vec<String> = std::env::args().collect();
    if let Some(hint) = image_or_images(&argv) {
        eprintln!("error: {hint}");
        return ExitCode::from(2);
    }
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
