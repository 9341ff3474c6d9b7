//! A deliberately small command-line parser: the agent is a static binary with a size budget, so
//! it does without clap.

use std::path::PathBuf;

use thiserror::Error;
use tugboot_firmware::{MAX_MANIFEST_BYTES, MAX_ROOT_BYTES, Policy, Timestamp, TrustedRoot};

const USAGE: &str = "usage: tugboot-agent <command>

commands:
  verify --root ROOT.json --manifest MANIFEST.json [--board NAME] [--floor N] [--current-version N]
      check a manifest the way the device does before installing it
  version
      print the agent version";

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CliError {
    #[error("{0}\n{USAGE}")]
    Usage(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is larger than {limit} bytes")]
    TooLarge { path: PathBuf, limit: usize },
    #[error("trust root {path}: {source}")]
    Root {
        path: PathBuf,
        source: tugboot_firmware::VerifyError,
    },
    #[error("manifest {path} rejected ({code}): {source}", code = source.code())]
    Manifest {
        path: PathBuf,
        source: tugboot_firmware::VerifyError,
    },
}

pub fn run(args: &[String]) -> Result<(), CliError> {
    match args.first().map(String::as_str) {
        Some("version" | "--version" | "-V") => {
            println!("tugboot-agent {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Some("verify") => verify(&args[1..]),
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(CliError::Usage(format!("unknown command {other:?}"))),
        None => Err(CliError::Usage("missing command".into())),
    }
}

fn verify(args: &[String]) -> Result<(), CliError> {
    let mut root = None;
    let mut manifest = None;
    let mut board = None;
    let mut floor = 0u64;
    let mut current = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| CliError::Usage(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--root" => root = Some(PathBuf::from(value()?)),
            "--manifest" => manifest = Some(PathBuf::from(value()?)),
            "--board" => board = Some(value()?),
            "--floor" => floor = parse_u64(flag, &value()?)?,
            "--current-version" => current = Some(parse_u64(flag, &value()?)?),
            other => return Err(CliError::Usage(format!("unknown option {other:?}"))),
        }
    }
    let root = root.ok_or_else(|| CliError::Usage("--root is required".into()))?;
    let manifest = manifest.ok_or_else(|| CliError::Usage("--manifest is required".into()))?;
    let now = Timestamp::now();
    let trusted = TrustedRoot::bootstrap(&read(&root, MAX_ROOT_BYTES)?, now).map_err(|source| {
        CliError::Root {
            path: root.clone(),
            source,
        }
    })?;
    let policy = Policy {
        now,
        board: board.as_deref(),
        floor,
        current_version: current,
    };
    let verified =
        tugboot_firmware::verify_manifest(&read(&manifest, MAX_MANIFEST_BYTES)?, &trusted, &policy)
            .map_err(|source| CliError::Manifest {
                path: manifest.clone(),
                source,
            })?;
    println!("{} version {} verified", verified.name, verified.version);
    Ok(())
}

fn parse_u64(flag: &str, v: &str) -> Result<u64, CliError> {
    v.parse()
        .map_err(|_| CliError::Usage(format!("{flag} takes a whole number, not {v:?}")))
}

fn read(path: &PathBuf, limit: usize) -> Result<Vec<u8>, CliError> {
    let meta = std::fs::metadata(path).map_err(|source| CliError::Read {
        path: path.clone(),
        source,
    })?;
    if meta.len() > limit as u64 {
        return Err(CliError::TooLarge {
            path: path.clone(),
            limit,
        });
    }
    std::fs::read(path).map_err(|source| CliError::Read {
        path: path.clone(),
        source,
    })
}
