//! `tugboot images ...`: the server's image catalogue (what rollouts can point at). The local
//! signing tools are `tugboot image ...`; these commands only talk to a server.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::Global;
use super::output::print_json;
use super::remote::{Remote, RemoteArgs, cell, print_table, time_cell};
use super::util::read_capped;

#[derive(Debug, Args)]
pub struct ImagesArgs {
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(subcommand)]
    command: ImagesCommand,
}

#[derive(Debug, Subcommand)]
enum ImagesCommand {
    /// Upload a signed manifest (from `tugboot image build/sign`). The server verifies it
    /// against its trust root and needs every artifact in its blob store already (e.g. built
    /// with `tugboot image build --store <data_dir>/blobs` on the server).
    Publish { manifest: PathBuf },
    /// The published versions of one image.
    List {
        /// Image name.
        #[arg(long)]
        name: String,
    },
}

pub fn run(args: ImagesArgs, global: Global) -> anyhow::Result<()> {
    let remote = Remote::connect(&args.remote)?;
    match args.command {
        ImagesCommand::Publish { manifest } => {
            // The server caps the body at the same size; refusing here saves the upload.
            let bytes = read_capped(&manifest, tugboot_firmware::MAX_MANIFEST_BYTES)?;
            let doc = remote.call("POST", "/api/v1/admin/images", Some(&bytes))?;
            if global.json {
                return print_json(&doc);
            }
            println!(
                "published {} v{} (manifest sha256 {})",
                cell(&doc["name"]),
                cell(&doc["version"]),
                cell(&doc["manifest_digest"])
            );
        }
        ImagesCommand::List { name } => {
            if name.is_empty()
                || !name.bytes().all(|b| {
                    b.is_ascii_graphic() && b != b'&' && b != b'#' && b != b'%' && b != b'+'
                })
            {
                anyhow::bail!("--name {name:?}: use the image name as written in its manifest");
            }
            let list = remote.call("GET", &format!("/api/v1/admin/images?name={name}"), None)?;
            if global.json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|i| {
                            vec![
                                cell(&i["name"]),
                                cell(&i["version"]),
                                cell(&i["published"]),
                                cell(&i["manifest_digest"]),
                                time_cell(&i["created_at"]),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            print_table(
                &["NAME", "VERSION", "PUBLISHED", "MANIFEST SHA256", "CREATED"],
                &rows,
            );
        }
    }
    Ok(())
}
