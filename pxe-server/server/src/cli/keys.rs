//! `tugboot keys …`: ed25519 signing keys and the versioned, rotatable trust root.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use tugboot_firmware::{
    KeyId, MAX_ROOT_BYTES, PublicKey, SecretKey, Signed, Timestamp, TrustRoot, TrustedRoot,
    VerifyError,
};

use super::Global;
use super::output::print_json;
use super::util::{ensure_absent, parse_expiry, read_capped, write_atomic};

/// Key files are small PEM documents; anything bigger is not a key.
const MAX_KEY_FILE_BYTES: usize = 16 << 10;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate an ed25519 key pair: PREFIX.key (PKCS#8 PEM, mode 0600) and PREFIX.pub.
    Generate {
        /// Path prefix of the two files written.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Print the key id of a public or secret key file.
    Show { file: PathBuf },
    /// The trust root: keys + threshold + version + expiry, signed by its own keys.
    #[command(subcommand)]
    Root(RootCommand),
}

#[derive(Debug, Subcommand)]
pub enum RootCommand {
    /// Create trust root version 1.
    Init {
        /// Public key files (PREFIX.pub, or a .key file) of the root's signers.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// Signatures a manifest (and the next root) needs.
        #[arg(long, default_value_t = 1)]
        threshold: u32,
        #[command(flatten)]
        common: RootWriteArgs,
    },
    /// Create root version N+1 from root N: add, remove or revoke keys, change the threshold.
    /// It must be signed by a threshold of root N's keys and of its own.
    Rotate {
        /// The current root (version N).
        #[arg(long)]
        from: PathBuf,
        /// Public key files to add.
        #[arg(long = "add-key")]
        add: Vec<PathBuf>,
        /// Key ids to drop from the root.
        #[arg(long = "remove-key")]
        remove: Vec<KeyId>,
        /// Key ids whose signatures must never count again.
        #[arg(long = "revoke")]
        revoke: Vec<KeyId>,
        /// New threshold (default: unchanged).
        #[arg(long)]
        threshold: Option<u32>,
        #[command(flatten)]
        common: RootWriteArgs,
    },
    /// Add signatures to a root file (in place).
    Sign {
        file: PathBuf,
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
    },
    /// Verify a chain of roots: the first is the trust anchor, each next one must rotate from it.
    Verify {
        #[arg(required = true)]
        chain: Vec<PathBuf>,
        /// Verify as of this time instead of now (YYYY-MM-DDTHH:MM:SSZ).
        #[arg(long)]
        now: Option<Timestamp>,
    },
}

#[derive(Debug, Args)]
pub struct RootWriteArgs {
    /// Expiry: duration from now (e.g. 365d) or UTC timestamp.
    #[arg(long, default_value = "365d")]
    expires: String,
    /// Secret key files to sign with.
    #[arg(long = "sign")]
    sign: Vec<PathBuf>,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
    /// Overwrite --out if it exists.
    #[arg(long)]
    force: bool,
}

pub fn run(cmd: KeysCommand, global: Global) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Generate { out, force } => generate(&out, force, global),
        KeysCommand::Show { file } => {
            let key = load_public(&file)?;
            if global.json {
                print_json(&serde_json::json!({ "keyid": key.key_id(), "file": file }))
            } else {
                println!("{}", key.key_id());
                Ok(())
            }
        }
        KeysCommand::Root(cmd) => run_root(cmd, global),
    }
}

fn generate(prefix: &Path, force: bool, global: Global) -> anyhow::Result<()> {
    let secret_path = with_suffix(prefix, "key");
    let public_path = with_suffix(prefix, "pub");
    ensure_absent(&secret_path, force)?;
    ensure_absent(&public_path, force)?;
    if let Some(dir) = secret_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        create_private_dir(dir)?;
    }
    let secret = SecretKey::generate().context("cannot generate a key")?;
    write_atomic(&secret_path, secret.to_pkcs8_pem().as_bytes(), true)?;
    write_atomic(&public_path, secret.public().to_pem().as_bytes(), false)?;
    let keyid = secret.key_id();
    if global.json {
        print_json(&serde_json::json!({
            "keyid": keyid, "secret_key": secret_path, "public_key": public_path,
        }))
    } else {
        println!("key id      {keyid}");
        println!("secret key  {} (keep it offline)", secret_path.display());
        println!("public key  {}", public_path.display());
        Ok(())
    }
}

/// A new directory for secret keys: readable by its owner only.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

fn with_suffix(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// Loads a public key from a public PEM, or derives it from a secret key file.
pub fn load_public(path: &Path) -> anyhow::Result<PublicKey> {
    let text = read_key_text(path)?;
    if text.contains("PRIVATE KEY") {
        return Ok(SecretKey::from_pkcs8_pem(&text)
            .with_context(|| format!("{} is not an ed25519 secret key", path.display()))?
            .public());
    }
    PublicKey::from_pem(&text)
        .with_context(|| format!("{} is not an ed25519 public key", path.display()))
}

pub fn load_secret(path: &Path) -> anyhow::Result<SecretKey> {
    let text = read_key_text(path)?;
    SecretKey::from_pkcs8_pem(&text).with_context(|| {
        format!(
            "{} is not an ed25519 secret key (PKCS#8 PEM)",
            path.display()
        )
    })
}

fn read_key_text(path: &Path) -> anyhow::Result<String> {
    let bytes = read_capped(path, MAX_KEY_FILE_BYTES)?;
    String::from_utf8(bytes).with_context(|| format!("{} is not a PEM file", path.display()))
}

fn run_root(cmd: RootCommand, global: Global) -> anyhow::Result<()> {
    let now = Timestamp::now();
    match cmd {
        RootCommand::Init {
            keys,
            threshold,
            common,
        } => {
            ensure_absent(&common.out, common.force)?;
            let keys = keys
                .iter()
                .map(|p| load_public(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let root = TrustRoot {
                version: 1,
                expires: parse_expiry(&common.expires, now)?,
                threshold,
                keys,
                revoked: Vec::new(),
            };
            let mut signed = Signed::new(root).context("invalid trust root")?;
            sign_root(&mut signed, &common.sign, &[])?;
            write_atomic(&common.out, &signed.to_bytes(), false)?;
            let status = TrustedRoot::bootstrap(&signed.to_bytes(), now).err();
            print_root(
                &common.out,
                signed.value(),
                signed.signatures.len(),
                status,
                global,
            )
        }
        RootCommand::Rotate {
            from,
            add,
            remove,
            revoke,
            threshold,
            common,
        } => {
            ensure_absent(&common.out, common.force)?;
            let current = TrustedRoot::bootstrap(&read_capped(&from, MAX_ROOT_BYTES)?, now)
                .with_context(|| format!("current root {} does not verify", from.display()))?;
            let old = current.root().clone();
            let mut keys: Vec<PublicKey> = old
                .keys
                .iter()
                .filter(|k| !remove.contains(&k.key_id()))
                .cloned()
                .collect();
            for path in &add {
                let key = load_public(path)?;
                if !keys.iter().any(|k| k.key_id() == key.key_id()) {
                    keys.push(key);
                }
            }
            let mut revoked: BTreeSet<KeyId> = old.revoked.iter().copied().collect();
            revoked.extend(revoke.iter().copied());
            let next = TrustRoot {
                version: old
                    .version
                    .checked_add(1)
                    .context("root version cannot grow further")?,
                expires: parse_expiry(&common.expires, now)?,
                threshold: threshold.unwrap_or(old.threshold),
                keys,
                revoked: revoked.into_iter().collect(),
            };
            let mut signed = Signed::new(next).context("invalid trust root")?;
            sign_root(&mut signed, &common.sign, &old.keys)?;
            write_atomic(&common.out, &signed.to_bytes(), false)?;
            let status = current.rotate(&signed.to_bytes(), now).err();
            print_root(
                &common.out,
                signed.value(),
                signed.signatures.len(),
                status,
                global,
            )
        }
        RootCommand::Sign { file, keys } => {
            let bytes = read_capped(&file, MAX_ROOT_BYTES)?;
            let mut signed = Signed::<TrustRoot>::from_bytes(&bytes)
                .with_context(|| format!("{} is not a trust root", file.display()))?;
            // Keys of the previous root may sign too (rotation), so no membership check here.
            for path in &keys {
                signed.sign(&load_secret(path)?);
            }
            write_atomic(&file, &signed.to_bytes(), false)?;
            let status = TrustedRoot::bootstrap(&signed.to_bytes(), now).err();
            print_root(
                &file,
                signed.value(),
                signed.signatures.len(),
                status,
                global,
            )
        }
        RootCommand::Verify { chain, now: at } => {
            let at = at.unwrap_or(now);
            let mut paths = chain.iter();
            let first = paths.next().context("no root given")?;
            let mut trusted = TrustedRoot::bootstrap(&read_capped(first, MAX_ROOT_BYTES)?, at)
                .with_context(|| format!("{} does not verify", first.display()))?;
            for path in paths {
                trusted = trusted
                    .rotate(&read_capped(path, MAX_ROOT_BYTES)?, at)
                    .with_context(|| {
                        format!("{} does not rotate from the root before it", path.display())
                    })?;
            }
            let root = trusted.root();
            if global.json {
                print_json(&serde_json::json!({
                    "ok": true, "version": root.version, "expires": root.expires,
                    "threshold": root.threshold,
                    "keys": root.keys.iter().map(PublicKey::key_id).collect::<Vec<_>>(),
                    "revoked": root.revoked,
                }))
            } else {
                println!(
                    "trust root version {} verified ({} key(s), threshold {}, expires {})",
                    root.version,
                    root.keys.len(),
                    root.threshold,
                    root.expires
                );
                Ok(())
            }
        }
    }
}

/// Signs with each key, refusing keys that could never count (in neither the new nor the old root).
fn sign_root(
    signed: &mut Signed<TrustRoot>,
    keys: &[PathBuf],
    old: &[PublicKey],
) -> anyhow::Result<()> {
    for path in keys {
        let key = load_secret(path)?;
        let id = key.key_id();
        let known = signed
            .value()
            .keys
            .iter()
            .chain(old)
            .any(|k| k.key_id() == id);
        if !known {
            bail!(
                "{} (key {id}) is not a key of this root or of the one before",
                path.display()
            );
        }
        signed.sign(&key);
    }
    Ok(())
}

#[derive(Serialize)]
struct RootReport<'a> {
    ok: bool,
    file: &'a Path,
    version: u64,
    expires: Timestamp,
    threshold: u32,
    keys: Vec<KeyId>,
    revoked: &'a [KeyId],
    signatures: usize,
    /// Why the root does not verify yet (e.g. more signatures needed), if it does not.
    pending: Option<String>,
}

fn print_root(
    file: &Path,
    root: &TrustRoot,
    signatures: usize,
    status: Option<VerifyError>,
    global: Global,
) -> anyhow::Result<()> {
    let pending = status.map(|e| e.to_string());
    if global.json {
        return print_json(&RootReport {
            ok: true,
            file,
            version: root.version,
            expires: root.expires,
            threshold: root.threshold,
            keys: root.keys.iter().map(PublicKey::key_id).collect(),
            revoked: &root.revoked,
            signatures,
            pending,
        });
    }
    println!(
        "wrote {} (trust root version {})",
        file.display(),
        root.version
    );
    println!("  expires    {}", root.expires);
    println!(
        "  threshold  {} of {} key(s)",
        root.threshold,
        root.keys.len()
    );
    for key in &root.keys {
        let mark = if root.revoked.contains(&key.key_id()) {
            " (revoked)"
        } else {
            ""
        };
        println!("  key        {}{mark}", key.key_id());
    }
    println!("  signatures {signatures}");
    match pending {
        None => println!("  status     valid"),
        Some(why) => println!("  status     not valid yet: {why}"),
    }
    Ok(())
}
