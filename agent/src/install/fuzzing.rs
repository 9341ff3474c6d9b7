//! Entry functions of the `install_gpt` and `installer_config` fuzz targets (and of their seed
//! tests).

use super::{gpt, probe};
use crate::config::InstallerConfig;

/// A property of the GPT reader or the probe that does not hold (a bug).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GptPropertyError(pub &'static str);

fn ensure(ok: bool, what: &'static str) -> Result<(), GptPropertyError> {
    if ok {
        Ok(())
    } else {
        Err(GptPropertyError(what))
    }
}

/// Takes bytes as the head of a disk (and, the same bytes, as its tail): the GPT reader at
/// LBA 1 with 512- and 4096-byte sectors, the backup reader at the last sector, and the whole
/// probe. Never panics; a table that reads has every used entry inside its usable range with
/// first ≤ last, and the probe finds it. Returns how many tables were read.
///
/// # Errors
/// [`GptPropertyError`] when a property fails.
pub fn gpt(data: &[u8]) -> Result<usize, GptPropertyError> {
    let mut read = 0;
    for ss in [512u64, 4096] {
        let len = data.len() as u64;
        let mut tables = vec![(gpt::read(data, 0, 1, ss), true)];
        if len >= ss && len.is_multiple_of(ss) {
            tables.push((gpt::read(data, 0, len / ss - 1, ss), false));
        }
        for (table, primary) in tables {
            let Ok(t) = table else { continue };
            read += 1;
            ensure(
                t.partitions.iter().all(|p| {
                    p.first_lba <= p.last_lba
                        && p.first_lba >= t.header.first_usable
                        && p.last_lba <= t.header.last_usable
                        && !p.type_guid.is_nil()
                }),
                "a read table has an entry out of range",
            )?;
            ensure(
                t.partitions.len() <= t.header.entry_count as usize,
                "more partitions than entries",
            )?;
            if primary {
                let found = probe::probe(data, &[], len.max(ss), ss);
                ensure(
                    found
                        .iter()
                        .any(|f| matches!(f, probe::Finding::Gpt { primary: true, .. })),
                    "the probe misses a table the reader reads",
                )?;
            }
        }
        let findings = probe::probe(data, data, len, ss);
        ensure(
            !probe::describe(&findings).contains(['\n', '\r']),
            "a finding spans lines",
        )?;
    }
    Ok(read)
}

/// [`InstallerConfig::parse_bytes`]; whatever is accepted renders an installed configuration
/// that the device's parser accepts, and parses again to the same value.
///
/// # Panics
/// When a property fails (a bug).
pub fn installer_config(data: &[u8]) -> bool {
    let Ok(c) = InstallerConfig::parse_bytes(data) else {
        return false;
    };
    assert!(
        c.installed_config().is_ok(),
        "accepted, but the installed config does not load"
    );
    assert!(
        c.installer_view().is_ok(),
        "accepted, but the installer's view does not load"
    );
    assert_eq!(
        InstallerConfig::parse_bytes(data).ok().as_ref(),
        Some(&c),
        "parses differently twice"
    );
    true
}
