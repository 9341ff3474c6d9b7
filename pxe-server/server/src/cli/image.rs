//! `tugboot image …`: build signed images from files, sign, verify, inspect.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use tugboot_boards::Catalog;
use tugboot_firmware::{
    Artifact, BlobStore, MAX_MANIFEST_BYTES, MAX_ROOT_BYTES, Manifest, Policy, Role, Signed,
    Timestamp, TrustedRoot, VerifyError, verify_manifest,
};

use super::keys::load_secret;
use super::output::{bytes_bar, print_json, with_progress};
use super::util::{ensure_absent, parse_expiry, read_capped, write_atomic};
use super::{Global, StoreArgs};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build an image from kernel / initrd / cmdline / slot payload files: the artifacts go into
    /// the blob store, the manifest into --out.
    Build {
        /// Kernel image (bzImage, arm64 Image, EFI stub).
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// Initial ramdisk.
        #[arg(long)]
        initrd: Option<PathBuf>,
        /// Kernel command line text.
        #[arg(long, conflicts_with = "cmdline_file")]
        cmdline: Option<String>,
        /// Kernel command line from a file.
        #[arg(long)]
        cmdline_file: Option<PathBuf>,
        /// Raw partition image written into the inactive A/B slot by the agent.
        #[arg(long, conflicts_with = "rootfs")]
        slot: Option<PathBuf>,
        /// A root file system (directory or tar) with `boot/vmlinuz` inside: becomes the slot
        /// artifact as a reproducible squashfs (`rootfs.squashfs`).
        #[arg(long)]
        rootfs: Option<PathBuf>,
        /// Device tree blob.
        #[arg(long)]
        dtb: Option<PathBuf>,
        /// Any other file delivered with the image (e.g. Raspberry Pi firmware files).
        #[arg(long = "file")]
        files: Vec<PathBuf>,
        /// Image name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        meta: MetaArgs,
    },
    /// Build an image from the files `linuxkit build -format kernel+initrd` writes:
    /// PREFIX-kernel, PREFIX-initrd.img and PREFIX-cmdline.
    ImportLinuxkit {
        /// Path prefix, e.g. `out/sshd` for out/sshd-kernel, out/sshd-initrd.img, out/sshd-cmdline.
        prefix: PathBuf,
        /// Image name (default: the prefix's file name).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        meta: MetaArgs,
    },
    /// Add signatures to a manifest, toward the root's threshold (in place unless --out).
    Sign {
        manifest: PathBuf,
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify a manifest against a trust root, then every artifact in the store.
    Verify {
        manifest: PathBuf,
        /// Trust root file; repeat to verify a rotation chain (first = anchor).
        #[arg(long = "root", required = true)]
        roots: Vec<PathBuf>,
        /// The device's board (the manifest must name it).
        #[arg(long)]
        board: Option<String>,
        /// The device's version floor: older images are a rollback.
        #[arg(long, default_value_t = 0)]
        floor: u64,
        /// The version the device runs now (checked against the manifest's min_version).
        #[arg(long)]
        current_version: Option<u64>,
        /// Verify as of this time instead of now.
        #[arg(long)]
        now: Option<Timestamp>,
        /// Check signatures and policy only, not the artifacts.
        #[arg(long)]
        skip_artifacts: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Show what a manifest says (without verifying it).
    Inspect { manifest: PathBuf },
}

/// What every newly built image needs besides its files.
#[derive(Debug, Args)]
pub(super) struct MetaArgs {
    /// Monotonic version number; devices never go back to a lower one.
    #[arg(long)]
    version: u64,
    /// Board(s) the image is for (see `tugboot boards list`).
    #[arg(long = "board", required = true)]
    pub(super) boards: Vec<String>,
    /// Board catalog directory (default: the built-in catalog).
    #[arg(long)]
    boards_dir: Option<PathBuf>,
    /// Expiry: duration from now (e.g. 90d) or UTC timestamp.
    #[arg(long, default_value = "90d")]
    expires: String,
    /// Devices must already run at least this version to take the image.
    #[arg(long)]
    min_version: Option<u64>,
    /// Free-form label KEY=VALUE (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Secret key file(s) to sign with.
    #[arg(long = "sign")]
    sign: Vec<PathBuf>,
    /// Manifest file to write.
    #[arg(long)]
    out: PathBuf,
    /// Overwrite --out if it exists.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    store: StoreArgs,
}

pub fn run(cmd: ImageCommand, global: Global) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Build {
            kernel,
            initrd,
            cmdline,
            cmdline_file,
            slot,
            rootfs,
            dtb,
            files,
            name,
            meta,
        } => {
            // Lives until the artifacts are in the store.
            let work = tempfile::tempdir().context("cannot create a temporary directory")?;
            let slot = match rootfs {
                Some(r) => Some(super::rootfs::squashfs(&r, work.path())?),
                None => slot,
            };
            let mut inputs: Vec<(Role, Input)> = Vec::new();
            let file_inputs = [
                (Role::Kernel, kernel),
                (Role::Initrd, initrd),
                (Role::Cmdline, cmdline_file),
                (Role::Slot, slot),
                (Role::Dtb, dtb),
            ];
            for (role, path) in file_inputs {
                if let Some(path) = path {
                    inputs.push((role, Input::File(path)));
                }
            }
            if let Some(text) = cmdline {
                inputs.push((Role::Cmdline, Input::Text(text)));
            }
            inputs.extend(files.into_iter().map(|p| (Role::File, Input::File(p))));
            if inputs.is_empty() {
                bail!(
                    "nothing to build: give at least one of --kernel, --initrd, --cmdline, --slot, --rootfs, --dtb, --file"
                );
            }
            build(name, inputs, meta, global)
        }
        ImageCommand::ImportLinuxkit { prefix, name, meta } => {
            let name = match name {
                Some(n) => n,
                None => prefix
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_owned)
                    .with_context(|| {
                        format!("cannot derive an image name from {}", prefix.display())
                    })?,
            };
            let part = |suffix: &str| {
                let mut s = prefix.as_os_str().to_owned();
                s.push(suffix);
                PathBuf::from(s)
            };
            let mut inputs = vec![
                (Role::Kernel, Input::File(part("-kernel"))),
                (Role::Initrd, Input::File(part("-initrd.img"))),
            ];
            let cmdline = part("-cmdline");
            if cmdline.exists() {
                inputs.push((Role::Cmdline, Input::File(cmdline)));
            }
            for (_, input) in &inputs {
                if let Input::File(p) = input
                    && !p.is_file()
                {
                    bail!(
                        "{} is missing: not the output of `linuxkit build -format kernel+initrd`",
                        p.display()
                    );
                }
            }
            build(name, inputs, meta, global)
        }
        ImageCommand::Sign {
            manifest,
            keys,
            out,
        } => {
            let bytes = read_capped(&manifest, MAX_MANIFEST_BYTES)?;
            let mut signed = Signed::<Manifest>::from_bytes(&bytes)
                .with_context(|| format!("{} is not a manifest", manifest.display()))?;
            for path in &keys {
                signed.sign(&load_secret(path)?);
            }
            let out = out.unwrap_or(manifest);
            write_atomic(&out, &signed.to_bytes(), false)?;
            if global.json {
                print_json(&serde_json::json!({
                    "ok": true, "file": out,
                    "signatures": signed.signatures.iter().map(|s| s.keyid).collect::<Vec<_>>(),
                }))
            } else {
                println!(
                    "{}: {} signature(s)",
                    out.display(),
                    signed.signatures.len()
                );
                Ok(())
            }
        }
        ImageCommand::Verify {
            manifest,
            roots,
            board,
            floor,
            current_version,
            now,
            skip_artifacts,
            store,
        } => verify(
            VerifyArgs {
                manifest,
                roots,
                board,
                floor,
                current_version,
                now,
                skip_artifacts,
                store,
            },
            global,
        ),
        ImageCommand::Inspect { manifest } => {
            let bytes = read_capped(&manifest, MAX_MANIFEST_BYTES)?;
            let signed = Signed::<Manifest>::from_bytes(&bytes)
                .with_context(|| format!("{} is not a manifest", manifest.display()))?;
            if global.json {
                print_json(&serde_json::json!({
                    "verified": false,
                    "manifest": signed.value(),
                    "signatures": signed.signatures.iter().map(|s| s.keyid).collect::<Vec<_>>(),
                }))
            } else {
                println!("(not verified: use `tugboot image verify` for that)");
                print_manifest(signed.value());
                for sig in &signed.signatures {
                    println!("signature    {}", sig.keyid);
                }
                Ok(())
            }
        }
    }
}

pub(super) enum Input {
    File(PathBuf),
    Text(String),
}

/// The board catalogue `--boards-dir` names, or the shipped one.
pub(super) fn catalog(meta: &MetaArgs) -> anyhow::Result<Catalog> {
    Ok(match &meta.boards_dir {
        Some(dir) => Catalog::load_dir(dir)?,
        None => Catalog::builtin(),
    })
}

pub(super) fn build(
    name: String,
    inputs: Vec<(Role, Input)>,
    meta: MetaArgs,
    global: Global,
) -> anyhow::Result<()> {
    ensure_absent(&meta.out, meta.force)?;
    let catalog = catalog(&meta)?;
    for board in &meta.boards {
        if catalog.get(board).is_none() {
            let known: Vec<&str> = catalog.iter().map(|b| b.name.as_str()).collect();
            bail!("unknown board {board:?} (known: {})", known.join(", "));
        }
    }
    let mut labels = BTreeMap::new();
    for label in &meta.labels {
        let (k, v) = label
            .split_once('=')
            .with_context(|| format!("label {label:?} is not KEY=VALUE"))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    let keys = meta
        .sign
        .iter()
        .map(|p| load_secret(p))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let store = BlobStore::open(&meta.store.store)?;
    let mut artifacts = Vec::with_capacity(inputs.len());
    for (role, input) in inputs {
        let (name, digest, size) = match input {
            Input::File(path) => {
                let (digest, size) = ingest_file(&store, &path, global)?;
                (artifact_name(&path)?, digest, size)
            }
            Input::Text(text) => {
                let (digest, size) = store.put(text.as_bytes(), None)?;
                ("cmdline".to_owned(), digest, size)
            }
        };
        artifacts.push(Artifact {
            role,
            name,
            sha256: digest,
            size,
        });
    }
    let now = Timestamp::now();
    let manifest = Manifest {
        name,
        version: meta.version,
        boards: meta.boards,
        artifacts,
        created: now,
        expires: parse_expiry(&meta.expires, now)?,
        min_version: meta.min_version,
        labels,
    };
    let mut signed = Signed::new(manifest).context("invalid manifest")?;
    for key in &keys {
        signed.sign(key);
    }
    write_atomic(&meta.out, &signed.to_bytes(), false)?;
    if global.json {
        print_json(&serde_json::json!({
            "ok": true, "file": meta.out, "store": store.root(),
            "manifest": signed.value(),
            "signatures": signed.signatures.iter().map(|s| s.keyid).collect::<Vec<_>>(),
        }))
    } else {
        println!(
            "wrote {} ({} signature(s))",
            meta.out.display(),
            signed.signatures.len()
        );
        print_manifest(signed.value());
        println!("artifacts in {}", store.root().display());
        Ok(())
    }
}

fn artifact_name(path: &Path) -> anyhow::Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .with_context(|| format!("{} has no usable file name", path.display()))
}

/// Hashes a file into the blob store, with a progress bar for people watching.
fn ingest_file(
    store: &BlobStore,
    path: &Path,
    global: Global,
) -> anyhow::Result<(tugboot_firmware::Sha256Digest, u64)> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = bytes_bar(global, len, &artifact_name(path)?);
    let result = store
        .put(
            with_progress(&bar, io::BufReader::with_capacity(1 << 20, file)),
            None,
        )
        .with_context(|| format!("cannot store {}", path.display()));
    bar.finish_and_clear();
    result
}

struct VerifyArgs {
    manifest: PathBuf,
    roots: Vec<PathBuf>,
    board: Option<String>,
    floor: u64,
    current_version: Option<u64>,
    now: Option<Timestamp>,
    skip_artifacts: bool,
    store: StoreArgs,
}

#[derive(Serialize)]
struct ArtifactReport<'a> {
    role: Role,
    name: &'a str,
    sha256: String,
    size: u64,
    verified: bool,
}

fn verify(args: VerifyArgs, global: Global) -> anyhow::Result<()> {
    let now = args.now.unwrap_or_else(Timestamp::now);
    let mut roots = args.roots.iter();
    let first = roots.next().context("no trust root given")?;
    let mut trusted = TrustedRoot::bootstrap(&read_capped(first, MAX_ROOT_BYTES)?, now)
        .with_context(|| format!("trust root {} does not verify", first.display()))?;
    for path in roots {
        trusted = trusted
            .rotate(&read_capped(path, MAX_ROOT_BYTES)?, now)
            .with_context(|| {
                format!(
                    "trust root {} does not rotate from the one before",
                    path.display()
                )
            })?;
    }

    let len = std::fs::metadata(&args.manifest)
        .with_context(|| format!("cannot read {}", args.manifest.display()))?
        .len();
    if len > MAX_MANIFEST_BYTES as u64 {
        let actual = usize::try_from(len).unwrap_or(usize::MAX);
        return Err(VerifyError::Oversize {
            limit: MAX_MANIFEST_BYTES,
            actual,
        })
        .with_context(|| format!("{} rejected", args.manifest.display()));
    }
    let bytes = read_capped(&args.manifest, MAX_MANIFEST_BYTES)?;
    let policy = Policy {
        now,
        board: args.board.as_deref(),
        floor: args.floor,
        current_version: args.current_version,
    };
    let verified = verify_manifest(&bytes, &trusted, &policy)
        .with_context(|| format!("{} rejected", args.manifest.display()))?;

    let mut reports = Vec::new();
    if !args.skip_artifacts {
        let store = BlobStore::open(&args.store.store)?;
        for artifact in &verified.artifacts {
            let reader = store
                .open_verified(artifact)
                .with_context(|| format!("artifact {} ({})", artifact.name, artifact.role))?;
            let bar = bytes_bar(global, artifact.size, &artifact.name);
            let copied = io::copy(&mut with_progress(&bar, reader), &mut io::sink());
            bar.finish_and_clear();
            copied.map_err(unwrap_stream_error).with_context(|| {
                format!("artifact {} ({}) rejected", artifact.name, artifact.role)
            })?;
            reports.push(ArtifactReport {
                role: artifact.role,
                name: &artifact.name,
                sha256: artifact.sha256.to_hex(),
                size: artifact.size,
                verified: true,
            });
        }
    }

    if global.json {
        print_json(&serde_json::json!({
            "ok": true, "name": verified.name, "version": verified.version,
            "boards": verified.boards, "expires": verified.expires,
            "root_version": trusted.root().version,
            "artifacts_checked": !args.skip_artifacts, "artifacts": reports,
        }))
    } else {
        println!(
            "{} version {} verified against trust root version {}",
            verified.name,
            verified.version,
            trusted.root().version
        );
        for r in &reports {
            println!(
                "  ok  {:<8} {:<24} {:>12}  sha256:{}",
                r.role.to_string(),
                r.name,
                r.size,
                r.sha256
            );
        }
        if args.skip_artifacts {
            println!("  (artifacts not checked)");
        }
        Ok(())
    }
}

/// The verifying reader reports stream failures as `io::Error`s carrying a `StreamError`; surface
/// the typed error so the message and the `--json` code name the attack.
fn unwrap_stream_error(err: io::Error) -> anyhow::Error {
    if err
        .get_ref()
        .is_some_and(|inner| inner.is::<tugboot_firmware::StreamError>())
    {
        if let Some(inner) = err.into_inner()
            && let Ok(stream) = inner.downcast::<tugboot_firmware::StreamError>()
        {
            return anyhow::Error::new(*stream);
        }
        return anyhow::anyhow!("artifact stream failed");
    }
    anyhow::Error::new(err)
}

fn print_manifest(m: &Manifest) {
    println!("name         {}", m.name);
    println!("version      {}", m.version);
    println!("boards       {}", m.boards.join(", "));
    println!("created      {}", m.created);
    println!("expires      {}", m.expires);
    if let Some(min) = m.min_version {
        println!("min version  {min}");
    }
    for (k, v) in &m.labels {
        println!("label        {k}={v}");
    }
    for a in &m.artifacts {
        println!(
            "artifact     {:<8} {:<24} {:>12}  sha256:{}",
            a.role.to_string(),
            a.name,
            a.size,
            a.sha256
        );
    }
}
