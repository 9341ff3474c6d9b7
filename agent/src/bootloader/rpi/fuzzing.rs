//! The entry function of the `rpi_autoboot` fuzz target (and of the seed test).

use super::autoboot::{self, AbPartitions, MAX_PARTITION};
use crate::bootloader::fuzzing::RoundTripMismatch;

fn ensure(ok: bool, what: &'static str) -> Result<(), RoundTripMismatch> {
    if ok {
        Ok(())
    } else {
        Err(RoundTripMismatch { what })
    }
}

/// `autoboot.txt`: parse; what parses re-encodes to the same bytes; an A/B file edited with
/// the partitions swapped (and with both set to one) parses back to exactly those partitions
/// and differs from the input only in the edited values; the edit never exceeds the cap.
///
/// Returns whether the input parsed.
///
/// # Errors
/// [`RoundTripMismatch`] if a property fails.
pub fn autoboot(data: &[u8]) -> Result<bool, RoundTripMismatch> {
    let Ok(doc) = autoboot::parse(data) else {
        return Ok(false);
    };
    ensure(doc.encode() == data, "autoboot: encode(parse(x)) != x")?;
    let Ok(parts) = doc.ab() else {
        return Ok(true);
    };
    let swapped = AbPartitions {
        default: parts.tryboot,
        tryboot: parts.default,
    };
    let same = AbPartitions {
        default: MAX_PARTITION,
        tryboot: MAX_PARTITION,
    };
    for target in [swapped, same, parts] {
        let mut edited = doc.clone();
        match edited.set_ab(target) {
            Ok(()) => {
                let bytes = edited.encode();
                ensure(
                    bytes.len() <= autoboot::MAX_AUTOBOOT_LEN,
                    "autoboot: edit over cap",
                )?;
                let again = autoboot::parse(&bytes).map_err(|_| RoundTripMismatch {
                    what: "autoboot: edited file does not parse",
                })?;
                ensure(
                    again.ab() == Ok(target),
                    "autoboot: edited partitions differ",
                )?;
                // Unedited lines are untouched: restoring the old values gives the input back.
                let mut restored = again;
                ensure(restored.set_ab(parts).is_ok(), "autoboot: restore failed")?;
                ensure(
                    restored.encode() == data,
                    "autoboot: edit touched other bytes",
                )?;
            }
            Err(autoboot::AutobootError::TooLarge { .. }) => {
                ensure(edited == doc, "autoboot: failed edit changed the document")?;
            }
            Err(_) => {
                return Err(RoundTripMismatch {
                    what: "autoboot: edit of an A/B file failed",
                });
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        assert_eq!(
            autoboot(b"[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"),
            Ok(true)
        );
        assert_eq!(autoboot(b"[all"), Ok(false));
    }
}
