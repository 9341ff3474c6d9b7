//! `tugboot images ...`: the server's one image catalogue (what machines netboot and what
//! rollouts install). The local build and signing tools are `tugboot image ...`; these commands
//! only talk to a server.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use tugboot_firmware::{BlobStore, Manifest, Signed};

use super::output::{bytes_bar, print_json};
use super::remote::{Remote, RemoteArgs, cell, print_table, time_cell};
use super::util::read_capped;
use super::{Global, StoreArgs};

/// Bytes per upload request: small enough to resume cheaply, large enough to keep the link busy.
const CHUNK: usize = 8 << 20;

#[derive(Debug, Args)]
pub struct ImagesArgs {
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(subcommand)]
    command: ImagesCommand,
}

#[derive(Debug, Subcommand)]
enum ImagesCommand {
    /// Upload a signed image (its artifacts from the local blob store, then its manifest) and
    /// publish it: resumable, with progress. Run it again after an interruption.
    Push {
        /// The signed manifest (`tugboot image build/sign --out`).
        manifest: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Publish a signed manifest whose artifacts the server already has (pushed, or built
    /// into its blob store); also publishes a yanked image again.
    Publish { manifest: PathBuf },
    /// The catalogue: every image, or the versions of one.
    List {
        /// Only this image name.
        #[arg(long)]
        name: Option<String>,
    },
    /// One image: boards, artifacts, signatures, machines running it.
    Show { name: String, version: u64 },
    /// Withdraw an image from the catalogue: nothing netboots or installs it any more (the
    /// signed manifest stays stored; `publish` brings it back).
    Yank { name: String, version: u64 },
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= tugboot_firmware::MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if !ok {
        bail!("image name {name:?}: use the name as written in its manifest");
    }
    Ok(())
}

pub fn run(args: ImagesArgs, global: Global) -> anyhow::Result<()> {
    let remote = Remote::connect(&args.remote)?;
    match args.command {
        ImagesCommand::Push { manifest, store } => push(&remote, &manifest, &store.store, global),
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
            Ok(())
        }
        ImagesCommand::List { name } => {
            let path = match &name {
                Some(n) => {
                    check_name(n)?;
                    format!("/api/v1/admin/images?name={n}")
                }
                None => "/api/v1/admin/images".into(),
            };
            let list = remote.call("GET", &path, None)?;
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
                                published(i),
                                cell(&i["manifest_digest"]),
                                time_cell(&i["created_at"]),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            print_table(
                &["NAME", "VERSION", "STATE", "MANIFEST SHA256", "CREATED"],
                &rows,
            );
            Ok(())
        }
        ImagesCommand::Show { name, version } => {
            check_name(&name)?;
            let i = remote.call(
                "GET",
                &format!("/api/v1/admin/images/{name}/{version}"),
                None,
            )?;
            if global.json {
                return print_json(&i);
            }
            println!("image      {} v{}", cell(&i["name"]), cell(&i["version"]));
            println!("state      {}", published(&i));
            println!("manifest   sha256 {}", cell(&i["manifest_digest"]));
            println!("boards     {}", join(&i["boards"]));
            println!(
                "created    {}   expires {}",
                cell(&i["created"]),
                cell(&i["expires"])
            );
            println!(
                "signatures {} (the trust root needs {})",
                i["signatures"].as_array().map_or(0, Vec::len),
                cell(&i["threshold"])
            );
            println!("machines   {}", join(&i["machines"]));
            let rows: Vec<Vec<String>> = i["artifacts"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|x| {
                            vec![
                                cell(&x["role"]),
                                cell(&x["name"]),
                                cell(&x["size"]),
                                cell(&x["sha256"]),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            println!();
            print_table(&["ROLE", "NAME", "SIZE", "SHA256"], &rows);
            Ok(())
        }
        ImagesCommand::Yank { name, version } => {
            check_name(&name)?;
            let doc = remote.call(
                "POST",
                &format!("/api/v1/admin/images/{name}/{version}/yank"),
                Some(b""),
            )?;
            if global.json {
                return print_json(&doc);
            }
            println!("yanked {name} v{version}: no machine netboots or installs it any more");
            Ok(())
        }
    }
}

fn published(i: &Value) -> String {
    match (i["published"].as_bool(), i["serving"].as_bool()) {
        (Some(false), _) => "yanked".into(),
        (Some(true), Some(false)) => "published (not served here)".into(),
        _ => "published".into(),
    }
}

fn join(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().map(cell).collect::<Vec<_>>().join(", "))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into())
}

/// Uploads each artifact the server does not have yet (from where it stands), then publishes.
fn push(remote: &Remote, manifest: &Path, store: &Path, global: Global) -> anyhow::Result<()> {
    let envelope = read_capped(manifest, tugboot_firmware::MAX_MANIFEST_BYTES)?;
    // Unverified here: the server verifies against its trust root when publishing. Parsing it
    // only tells which artifacts to upload.
    let signed = Signed::<Manifest>::from_bytes(&envelope)
        .with_context(|| format!("{} is not a signed manifest", manifest.display()))?;
    let blobs =
        BlobStore::open(store).with_context(|| format!("blob store {}", store.display()))?;
    let m = signed.value();
    let mut sent = 0u64;
    for a in &m.artifacts {
        let path = blobs.path(&a.sha256);
        let mut file = std::fs::File::open(&path).with_context(|| {
            format!(
                "artifact {} (sha256 {}) is not in {} (pass the blob store `image build --store` used)",
                a.name,
                a.sha256,
                store.display()
            )
        })?;
        let len = file.metadata()?.len();
        if len != a.size {
            bail!(
                "{}: {len} bytes, but the manifest signs {} bytes for {}",
                path.display(),
                a.size,
                a.name
            );
        }
        let url = format!("/api/v1/admin/blobs/{}?size={}", a.sha256, a.size);
        let status = remote.call("GET", &url, None)?;
        let mut offset = status["offset"]
            .as_u64()
            .context("the server did not say where the upload stands")?;
        let bar = bytes_bar(global, a.size, &a.name);
        bar.set_position(offset);
        file.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0u8; CHUNK];
        while offset < a.size {
            let want = usize::try_from((a.size - offset).min(CHUNK as u64)).unwrap_or(CHUNK);
            let chunk = buf.get_mut(..want).context("chunk")?;
            file.read_exact(chunk)
                .with_context(|| format!("reading {}", path.display()))?;
            let answer = remote
                .call(
                    "PATCH",
                    &format!(
                        "/api/v1/admin/blobs/{}?size={}&offset={offset}",
                        a.sha256, a.size
                    ),
                    Some(chunk),
                )
                .with_context(|| format!("uploading {} at byte {offset}", a.name))?;
            let next = answer["offset"]
                .as_u64()
                .context("upload answer without offset")?;
            if next <= offset {
                bail!(
                    "the server did not take the chunk of {} at byte {offset}",
                    a.name
                );
            }
            sent += next - offset;
            offset = next;
            bar.set_position(offset);
        }
        bar.finish_and_clear();
    }
    let doc = remote.call("POST", "/api/v1/admin/images", Some(&envelope))?;
    if global.json {
        let mut doc = doc;
        doc["uploaded_bytes"] = Value::from(sent);
        return print_json(&doc);
    }
    println!(
        "pushed {} v{}: {sent} bytes uploaded, {} artifact(s), published (manifest sha256 {})",
        cell(&doc["name"]),
        cell(&doc["version"]),
        m.artifacts.len(),
        cell(&doc["manifest_digest"])
    );
    Ok(())
}
