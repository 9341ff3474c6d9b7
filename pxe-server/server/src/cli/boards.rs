//! `tugboot boards …`: the catalog of supported hardware.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use tugboot_boards::Catalog;

use super::Global;
use super::output::print_json;

#[derive(Debug, Subcommand)]
pub enum BoardsCommand {
    /// List the boards tugboot knows.
    List {
        /// Load the catalog from this directory instead of the built-in one.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Show everything the catalog says about one board.
    Show {
        name: String,
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn catalog(dir: Option<PathBuf>) -> anyhow::Result<Catalog> {
    match dir {
        Some(dir) => Catalog::load_dir(&dir)
            .with_context(|| format!("cannot load the board catalog from {}", dir.display())),
        None => Ok(Catalog::builtin()),
    }
}

pub fn run(cmd: BoardsCommand, global: Global) -> anyhow::Result<()> {
    match cmd {
        BoardsCommand::List { dir } => {
            let catalog = catalog(dir)?;
            if global.json {
                return print_json(&catalog.iter().collect::<Vec<_>>());
            }
            println!(
                "{:<18} {:<8} {:<30} {:<14} DESCRIPTION",
                "BOARD", "ARCH", "BOOT (DHCP ARCH)", "A/B BACKEND"
            );
            for b in catalog.iter() {
                let boot: Vec<String> = b
                    .boot
                    .iter()
                    .map(|m| {
                        let codes: Vec<String> = m.arch_codes.iter().map(u16::to_string).collect();
                        format!("{}({})", m.kind, codes.join(","))
                    })
                    .collect();
                let backend =
                    b.ab.as_ref()
                        .map_or_else(|| "-".to_owned(), |ab| ab.bootloader.to_string());
                println!(
                    "{:<18} {:<8} {:<30} {:<14} {}",
                    b.name,
                    b.arch.to_string(),
                    boot.join(" "),
                    backend,
                    b.description
                );
            }
            Ok(())
        }
        BoardsCommand::Show { name, dir } => {
            let catalog = catalog(dir)?;
            let board = catalog
                .get(&name)
                .with_context(|| format!("unknown board {name:?} (see `tugboot boards list`)"))?;
            if global.json {
                print_json(board)
            } else {
                // TOML is what the operator wrote; show the resolved board the same way.
                println!("{}", serde_json::to_string_pretty(board)?);
                Ok(())
            }
        }
    }
}
