//! The GRUB side of the A/B contract: the variables `firmware/boot/grub-ab.cfg` reads.
//!
//! - [`SLOT`] (`A`/`B`): the committed slot, booted when no trial is pending.
//! - [`TRY`] (`A`/`B` or empty): a slot to try; set by the agent after installing.
//! - [`TRIES`] (`0`..=`3`): trial boots left. Each boot with a pending trial decrements it and
//!   saves it *before* booting; a boot that finds it at 0 clears [`TRY`] and boots [`SLOT`].
//!
//! After a healthy trial boot the agent calls [`commit`], which makes the tried slot the
//! committed one and clears the trial. A trial that never commits falls back by itself.

use super::super::{AbVarError, Slot, Vars, get_number, get_slot, set_known};

/// The committed slot.
pub const SLOT: &str = "tugboot_slot";
/// The slot to try.
pub const TRY: &str = "tugboot_try";
/// Trial boots left.
pub const TRIES: &str = "tugboot_tries";
/// Most trial boots the shipped script counts down from.
pub const MAX_TRIES: u32 = 3;

/// A pending trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trial {
    /// Slot being tried.
    pub slot: Slot,
    /// Boots left before GRUB gives up on it (0: the next boot falls back).
    pub tries_left: u32,
}

/// The committed slot; GRUB treats unset (and anything but `B`) as `A`.
///
/// # Errors
/// [`AbVarError::BadSlot`] for values other than `A`, `B` or empty.
pub fn slot(vars: &Vars) -> Result<Slot, AbVarError> {
    Ok(get_slot(vars, SLOT)?.unwrap_or(Slot::A))
}

/// The pending trial, if any.
///
/// # Errors
/// [`AbVarError`] when [`TRY`] or [`TRIES`] hold values the script does not produce.
pub fn trial(vars: &Vars) -> Result<Option<Trial>, AbVarError> {
    let Some(slot) = get_slot(vars, TRY)? else {
        return Ok(None);
    };
    let tries_left = get_number(vars, TRIES, MAX_TRIES)?.unwrap_or(0);
    Ok(Some(Trial { slot, tries_left }))
}

/// Asks GRUB to try `slot` for up to `tries` boots.
///
/// # Errors
/// [`AbVarError::OutOfRange`] unless `1 <= tries <= MAX_TRIES`.
pub fn arm_trial(vars: &mut Vars, slot: Slot, tries: u32) -> Result<(), AbVarError> {
    if !(1..=MAX_TRIES).contains(&tries) {
        return Err(AbVarError::OutOfRange {
            what: "GRUB trial tries must be between 1 and 3",
        });
    }
    set_known(vars, TRY, slot.as_str());
    set_known(vars, TRIES, &tries.to_string());
    Ok(())
}

/// Makes `slot` the committed slot and clears any trial (the values are emptied, as GRUB's
/// script does, so the block's layout stays stable).
pub fn commit(vars: &mut Vars, slot: Slot) {
    set_known(vars, SLOT, slot.as_str());
    set_known(vars, TRY, "");
    set_known(vars, TRIES, "");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm_and_commit() {
        let mut v = Vars::new();
        assert_eq!(slot(&v), Ok(Slot::A));
        assert_eq!(trial(&v), Ok(None));
        arm_trial(&mut v, Slot::B, 1).unwrap();
        assert_eq!(
            trial(&v),
            Ok(Some(Trial {
                slot: Slot::B,
                tries_left: 1
            }))
        );
        commit(&mut v, Slot::B);
        assert_eq!(slot(&v), Ok(Slot::B));
        assert_eq!(trial(&v), Ok(None));
        assert!(arm_trial(&mut v, Slot::A, 0).is_err());
        assert!(arm_trial(&mut v, Slot::A, 4).is_err());
        v.set(TRY, "A").unwrap();
        v.set(TRIES, "9").unwrap();
        assert!(trial(&v).is_err());
    }
}
