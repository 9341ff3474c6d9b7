//! `tugboot completions <shell>` and `tugboot man --out DIR`: shell completions and man pages
//! generated from the clap definition itself, so they can never disagree with `--help`.
//!
//! Commands rather than a build script: the definition lives in this binary's modules (a
//! `build.rs` would have to compile the whole CLI twice), and a command also serves users who
//! install from source (`tugboot completions zsh > ~/.zfunc/_tugboot`). `packaging/build-debs`
//! runs both with the host's binary and puts the output into the packages (the text is the same
//! for every architecture).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::Global;
use super::output::print_json;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for (bash, zsh, fish, elvish, powershell).
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory for tugboot.1 and one page per subcommand (tugboot-serve.1, tugboot-keys-root-init.1, ...).
    #[arg(long)]
    out: PathBuf,
}

/// Prints the completion script for `args.shell` on stdout. Generated into memory first:
/// clap_complete panics when its writer fails, and `tugboot completions bash | head` is the
/// reader's choice, not an error (exit 141, as for every command).
pub fn run_completions(args: CompletionsArgs, _global: Global) -> anyhow::Result<()> {
    use std::io::Write;
    let mut cmd = super::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "tugboot", &mut script);
    let mut out = std::io::stdout().lock();
    match out.write_all(&script).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            std::process::exit(crate::CLOSED_PIPE_EXIT)
        }
        r => r.context("cannot write to stdout"),
    }
}

/// Writes the man pages (roff, section 1) into `args.out`.
pub fn run_man(args: ManArgs, global: Global) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut written = Vec::new();
    write_pages(super::Cli::command(), "tugboot", &args.out, &mut written)?;
    if global.json {
        return print_json(&serde_json::json!({ "ok": true, "pages": written }));
    }
    for p in &written {
        println!("{}", p.display());
    }
    Ok(())
}

/// One page for `cmd` named `name`, then one per visible subcommand (`name-sub`), depth first.
fn write_pages(
    cmd: clap::Command,
    name: &str,
    out: &std::path::Path,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let mut cmd = cmd.name(name.to_owned()).bin_name(name.replace('-', " "));
    cmd.build();
    let path = out.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .with_context(|| format!("rendering {name}"))?;
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        write_pages(
            sub.clone(),
            &format!("{name}-{}", sub.get_name()),
            out,
            written,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_gets_a_page_and_completions_name_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut written = Vec::new();
        write_pages(
            super::super::Cli::command(),
            "tugboot",
            dir.path(),
            &mut written,
        )
        .expect("pages");
        let names: Vec<String> = written
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        for want in [
            "tugboot.1",
            "tugboot-serve.1",
            "tugboot-init.1",
            "tugboot-keys-root-init.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        let serve = std::fs::read_to_string(dir.path().join("tugboot-serve.1")).expect("page");
        assert!(serve.contains("\\-\\-config"), "{serve}");

        let mut bash = Vec::new();
        clap_complete::generate(
            Shell::Bash,
            &mut super::super::Cli::command(),
            "tugboot",
            &mut bash,
        );
        let bash = String::from_utf8(bash).expect("utf-8");
        assert!(
            bash.contains("check-config") && bash.contains("--interface"),
            "bash"
        );
    }
}
