//! Round-trip properties shared by the cargo-fuzz targets (`agent/fuzz`) and the seed tests.
//!
//! Each function takes arbitrary bytes, runs every decoder on them, and for whatever decodes
//! checks that encoding and decoding again gives the same variables. They never panic; a
//! property violation comes back as [`RoundTripMismatch`] and the fuzz target turns it into a
//! crash.

use super::{grub, uboot};

/// A decoder and encoder disagree: a bug, never a property of the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("round trip mismatch: {what}")]
pub struct RoundTripMismatch {
    /// Which property failed.
    pub what: &'static str,
}

fn ensure(ok: bool, what: &'static str) -> Result<(), RoundTripMismatch> {
    if ok {
        Ok(())
    } else {
        Err(RoundTripMismatch { what })
    }
}

/// U-Boot: single image, one redundant copy, bare data areas, and the input split into two
/// redundant copies (including "the next write makes the other copy current").
///
/// Returns whether any decoder accepted the input.
///
/// # Errors
/// [`RoundTripMismatch`] if a property fails.
pub fn uboot_env(data: &[u8]) -> Result<bool, RoundTripMismatch> {
    use uboot::{
        FlagScheme, current_of, encode_data, encode_redundant_copy, encode_single, next_flags,
        parse_data, parse_redundant, parse_redundant_copy, parse_single,
    };
    let mut accepted = false;
    // The fw_env.config parser sees the same bytes: it must not panic, and what it accepts
    // must satisfy the invariants the file backend relies on.
    if let Ok(cfg) = std::str::from_utf8(data).map(uboot::EnvConfig::parse)
        && let Ok(cfg) = cfg
    {
        let n = cfg.devices().len();
        ensure(n == 1 || n == 2, "config: device count")?;
        ensure(
            cfg.devices()
                .iter()
                .all(|d| d.env_size == cfg.env_size() && d.env_size <= uboot::MAX_ENV_SIZE),
            "config: sizes",
        )?;
    }
    if let Ok(vars) = parse_single(data) {
        accepted = true;
        for pad in [0x00, 0xff] {
            let img = encode_single(&vars, data.len(), pad).map_err(|_| RoundTripMismatch {
                what: "single: re-encode failed",
            })?;
            ensure(img.len() == data.len(), "single: size changed")?;
            ensure(
                parse_single(&img).is_ok_and(|v| v == vars),
                "single: re-parse differs",
            )?;
        }
    }
    if let Ok((flags, vars)) = parse_redundant_copy(data) {
        accepted = true;
        let img = encode_redundant_copy(&vars, data.len(), flags, 0xff).map_err(|_| {
            RoundTripMismatch {
                what: "redundant: re-encode failed",
            }
        })?;
        ensure(
            parse_redundant_copy(&img).is_ok_and(|(f, v)| f == flags && v == vars),
            "redundant: re-parse differs",
        )?;
    }
    for header in [uboot::CRC_LEN, uboot::REDUNDANT_HEADER_LEN] {
        let Some(area) = data.get(header..) else {
            continue;
        };
        if area.len() > uboot::MAX_ENV_SIZE {
            continue;
        }
        if let Ok(vars) = parse_data(area) {
            accepted = true;
            let enc = encode_data(&vars, area.len(), 0).map_err(|_| RoundTripMismatch {
                what: "data: re-encode failed",
            })?;
            ensure(
                parse_data(&enc).is_ok_and(|v| v == vars),
                "data: re-parse differs",
            )?;
        }
    }
    if data.len().is_multiple_of(2) {
        let (a, b) = data.split_at(data.len() / 2);
        for scheme in [FlagScheme::Incremental, FlagScheme::Boolean] {
            let Ok(env) = parse_redundant(a, b, scheme) else {
                continue;
            };
            accepted = true;
            let copies = [a, b];
            let chosen = parse_redundant_copy(copies[env.current.as_usize()]);
            ensure(
                chosen.is_ok_and(|(f, v)| f == env.flags && v == env.vars),
                "pair: current copy not the one reported",
            )?;
            if env.other_valid {
                let other = parse_redundant_copy(copies[env.current.other().as_usize()]);
                if let Ok((of, _)) = other {
                    let (f0, f1) = if env.current.as_usize() == 0 {
                        (env.flags, of)
                    } else {
                        (of, env.flags)
                    };
                    ensure(
                        current_of(f0, f1, scheme) == env.current,
                        "pair: selection inconsistent",
                    )?;
                }
            }
            // What the file backend does next: write the other copy with the next flags (and
            // for the boolean scheme obsolete the old one). The new copy must become current.
            let new_flags = next_flags(env.flags, scheme);
            let new = encode_redundant_copy(&env.vars, a.len(), new_flags, 0).map_err(|_| {
                RoundTripMismatch {
                    what: "pair: re-encode failed",
                }
            })?;
            let mut old = copies[env.current.as_usize()].to_vec();
            if scheme == FlagScheme::Boolean {
                old[uboot::CRC_LEN] = 0;
            }
            let (n0, n1) = if env.current.as_usize() == 0 {
                (old.as_slice(), new.as_slice())
            } else {
                (new.as_slice(), old.as_slice())
            };
            // The CRC covers only the data area, so obsoleting the flag keeps the old copy valid.
            ensure(
                parse_redundant(n0, n1, scheme)
                    .is_ok_and(|e| e.current == env.current.other() && e.vars == env.vars),
                "pair: next write does not become current",
            )?;
        }
    }
    Ok(accepted)
}

/// GRUB: parse, rewrite in place, re-encode fresh.
///
/// Returns whether the block was accepted.
///
/// # Errors
/// [`RoundTripMismatch`] if a property fails.
pub fn grub_env(data: &[u8]) -> Result<bool, RoundTripMismatch> {
    let Ok(vars) = grub::parse(data) else {
        return Ok(false);
    };
    // Re-encoding never needs more room than the original: escapes only shrink and duplicate
    // lines are dropped, so an in-place update of the same variables must always succeed.
    let upd = grub::update(data, &vars).map_err(|_| RoundTripMismatch {
        what: "grub: update with own vars failed",
    })?;
    ensure(upd.len() == data.len(), "grub: update changed size")?;
    ensure(
        grub::parse(&upd).is_ok_and(|v| v.eq_ordered(&vars)),
        "grub: updated block reads differently",
    )?;
    ensure(
        grub::update(&upd, &vars).is_ok_and(|again| again == upd),
        "grub: update not idempotent",
    )?;
    if let Ok(fresh) = grub::encode(&vars, data.len()) {
        ensure(
            grub::parse(&fresh).is_ok_and(|v| v.eq_ordered(&vars)),
            "grub: fresh block reads differently",
        )?;
    }
    Ok(true)
}
