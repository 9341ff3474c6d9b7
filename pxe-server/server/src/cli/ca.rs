//! `tugboot ca ...`: the device API's certificate authority on disk (docs/device-api.md).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use sha2::{Digest as _, Sha256};
use tugboot_api::CertAuthority;
use tugboot_api::ca::{DEFAULT_CA_VALIDITY_SECS, DEFAULT_SERVER_VALIDITY_SECS};
use tugboot_firmware::Timestamp;

use super::Global;
use super::output::print_json;
use super::util::{ensure_absent, parse_expiry};

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create the CA (ca.key mode 0600, ca.pem) in DIR; refuses to overwrite one. Devices and
    /// operators pin ca.pem; keep ca.key on the server only.
    Init {
        /// Directory for ca.key and ca.pem (the `api.ca_dir` of `serve`).
        #[arg(long)]
        dir: PathBuf,
        /// Common name of the CA certificate.
        #[arg(long, default_value = "tugboot device CA")]
        name: String,
        /// Lifetime, e.g. 10y, 365d (default 10 years).
        #[arg(long)]
        validity: Option<String>,
    },
    /// Issue a server certificate (server.pem, server.key) for the given names; `serve` does
    /// this by itself, this is for putting the API behind another name or host.
    IssueServer {
        /// The CA directory.
        #[arg(long)]
        dir: PathBuf,
        /// DNS name or IP address; repeat for several.
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        /// Output directory for server.pem and server.key.
        #[arg(long)]
        out: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

/// `sha256:` and the lowercase hex SHA-256 of the certificate's DER: what `openssl x509
/// -fingerprint -sha256` shows, without the colons.
fn fingerprint(ca: &CertAuthority) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(ca.cert_der())))
}

fn validity_secs(text: Option<&str>, now: Timestamp) -> anyhow::Result<u64> {
    let Some(text) = text else {
        return Ok(DEFAULT_CA_VALIDITY_SECS);
    };
    let until = parse_expiry(text, now)?;
    let secs = until.unix().saturating_sub(now.unix());
    if secs < 86_400 {
        bail!("--validity {text:?}: a CA must live at least one day");
    }
    Ok(secs)
}

fn unix_now(now: Timestamp) -> i64 {
    i64::try_from(now.unix()).unwrap_or(i64::MAX)
}

pub fn run(cmd: CaCommand, global: Global) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init {
            dir,
            name,
            validity,
        } => {
            let now = Timestamp::now();
            let secs = validity_secs(validity.as_deref(), now)?;
            let ca = CertAuthority::init(&dir, &name, unix_now(now), secs)
                .with_context(|| format!("ca init {}", dir.display()))?;
            let not_after = Timestamp::from_unix(now.unix().saturating_add(secs));
            let fp = fingerprint(&ca);
            let cert = dir.join("ca.pem");
            if global.json {
                return print_json(&serde_json::json!({
                    "ok": true,
                    "dir": dir.display().to_string(),
                    "certificate": cert.display().to_string(),
                    "key": dir.join("ca.key").display().to_string(),
                    "name": name,
                    "not_after": not_after.to_string(),
                    "fingerprint": fp,
                }));
            }
            println!("CA created in {}", dir.display());
            println!("certificate  {}", cert.display());
            println!("valid until  {not_after}");
            println!("fingerprint  {fp}");
        }
        CaCommand::IssueServer {
            dir,
            names,
            out,
            force,
        } => {
            let cert_path = out.join("server.pem");
            let key_path = out.join("server.key");
            ensure_absent(&cert_path, force)?;
            ensure_absent(&key_path, force)?;
            let ca = load(&dir)?;
            let now = Timestamp::now();
            let issued = ca
                .issue_server(&names, unix_now(now), DEFAULT_SERVER_VALIDITY_SECS)
                .context("issuing the server certificate")?;
            // The pair as `serve` writes it: key first, each through a temporary file created
            // with its final mode, fsync, rename; a torn pair is detected on load.
            tugboot_api::ca::write_server_pair(&out, &issued)
                .with_context(|| format!("cannot write the key pair in {}", out.display()))?;
            if global.json {
                return print_json(&serde_json::json!({
                    "ok": true,
                    "certificate": cert_path.display().to_string(),
                    "key": key_path.display().to_string(),
                    "names": names,
                    "ca_fingerprint": fingerprint(&ca),
                }));
            }
            println!(
                "server certificate for {} in {}",
                names.join(", "),
                cert_path.display()
            );
        }
    }
    Ok(())
}

fn load(dir: &Path) -> anyhow::Result<CertAuthority> {
    CertAuthority::load(dir).with_context(|| format!("CA {}", dir.display()))
}
