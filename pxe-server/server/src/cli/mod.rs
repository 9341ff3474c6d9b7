//! Command-line interface: argument definitions and dispatch.
//!
//! Every command prints for people by default and for scripts with `--json`; every failure ends
//! the process with a non-zero exit code and a one-line reason on stderr.

mod boards;
mod ca;
mod completions;
mod image;
mod images;
mod init;
mod initramfs;
mod installer;
mod keys;
mod machines;
pub mod output;
mod profiles;
mod remote;
mod rollout;
mod rootfs;
mod serve;
mod util;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "tugboot",
    version,
    about = "Provision machines over the network and keep them updated"
)]
pub struct Cli {
    /// Machine-readable JSON output on stdout (errors too).
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Signing keys and trust roots.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Build, sign, verify and inspect signed images (local files; `images` is the server catalogue).
    #[command(subcommand)]
    Image(Box<image::ImageCommand>),
    /// The board catalog.
    #[command(subcommand)]
    Boards(boards::BoardsCommand),
    /// The declarative machines/profiles/groups file `serve` boots from: list, add, resolve.
    Profiles(profiles::ProfilesArgs),
    /// Run the netboot server: DHCP + TFTP + HTTP(S) from one configuration file.
    Serve(serve::ServeArgs),
    /// Validate a server configuration and print it resolved (defaults, absolute paths).
    CheckConfig(serve::CheckConfigArgs),
    /// The device API's certificate authority (`ca init` before `serve` with `[api]`).
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Machines known to a server (HTTPS to its `[api]`, operator token).
    Machines(machines::MachinesArgs),
    /// Enrollment tokens on a server.
    Enroll(machines::EnrollArgs),
    /// Staged rollouts on a server.
    Rollout(rollout::RolloutArgs),
    /// A server's image catalogue (publish/list); `image` is the local build and signing tools.
    Images(images::ImagesArgs),
    /// The installer image `install` profiles netboot (docs/installer.md).
    #[command(subcommand)]
    Installer(installer::InstallerCommand),
    /// Reproducible initramfs images (busybox, files, kernel modules).
    #[command(subcommand)]
    Initramfs(installer::InitramfsCommand),
    /// A first serve.toml, profiles, keys, trust root and CA for one interface (probes for DHCP).
    Init(init::InitArgs),
    /// Shell completions generated from this CLI (bash, zsh, fish, ...).
    Completions(completions::CompletionsArgs),
    /// Man pages generated from this CLI, one per command.
    Man(completions::ManArgs),
}

/// Where the content-addressed artifact blobs live.
#[derive(Debug, Args, Clone)]
pub struct StoreArgs {
    /// Blob store directory (artifacts by SHA-256).
    #[arg(long, env = "TUGBOOT_STORE", default_value = "tugboot-store")]
    pub store: PathBuf,
}

/// Settings every command may consult.
#[derive(Debug, Clone, Copy)]
pub struct Global {
    pub json: bool,
    pub quiet: bool,
}

impl Global {
    /// Progress bars only for people looking at a terminal.
    pub fn progress(&self) -> bool {
        !self.json && !self.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr())
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let global = Global {
        json: cli.json,
        quiet: cli.quiet,
    };
    match cli.command {
        Command::Keys(cmd) => keys::run(cmd, global),
        Command::Image(cmd) => image::run(*cmd, global),
        Command::Boards(cmd) => boards::run(cmd, global),
        Command::Profiles(args) => profiles::run(args, global),
        Command::Serve(args) => serve::run_serve(args, global),
        Command::CheckConfig(args) => serve::run_check(args, global),
        Command::Ca(cmd) => ca::run(cmd, global),
        Command::Machines(args) => machines::run(args, global),
        Command::Enroll(args) => machines::run_enroll(args, global),
        Command::Rollout(args) => rollout::run(args, global),
        Command::Images(args) => images::run(args, global),
        Command::Installer(cmd) => installer::run(cmd, global),
        Command::Initramfs(cmd) => installer::run_initramfs(cmd, global),
        Command::Init(args) => init::run(args, global),
        Command::Completions(args) => completions::run_completions(args, global),
        Command::Man(args) => completions::run_man(args, global),
    }
}
