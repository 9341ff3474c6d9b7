//! The U-Boot side of the A/B contract, as typed accessors.
//!
//! U-Boot's boot counting (`CONFIG_BOOTCOUNT_LIMIT` with `CONFIG_BOOTCOUNT_ENV`) works like this:
//! on every boot, if `upgrade_available` is non-zero, U-Boot increments `bootcount` and saves the
//! environment; if `bootcount` then exceeds `bootlimit`, it runs `altbootcmd` instead of
//! `bootcmd`. The board's `bootcmd` picks the root partition from [`SLOT`]. The agent:
//!
//! 1. after installing into the inactive slot: [`arm_trial`] (slot := new, `upgrade_available`
//!    := 1, `bootcount` := 0, `bootlimit` := N, `altbootcmd` := switch back to the old slot);
//! 2. after a healthy boot of the new slot: [`commit`] (`upgrade_available` := 0,
//!    `bootcount` := 0).
//!
//! If the new slot never gets healthy, the N+1st boot runs `altbootcmd`, which restores the old
//! slot and clears `upgrade_available`, so the device always has a bootable slot.

use super::super::{AbVarError, Slot, Vars, get_number, get_slot, set_known};

/// Incremented by U-Boot on each boot while an upgrade is being tried.
pub const BOOTCOUNT: &str = "bootcount";
/// Boots allowed before `altbootcmd` runs.
pub const BOOTLIMIT: &str = "bootlimit";
/// `1` while a trial is in progress; U-Boot only counts boots (and writes the env) then.
pub const UPGRADE_AVAILABLE: &str = "upgrade_available";
/// The command U-Boot runs instead of `bootcmd` once `bootcount > bootlimit`.
pub const ALTBOOTCMD: &str = "altbootcmd";
/// The slot `bootcmd` boots (`A` or `B`).
pub const SLOT: &str = "tugboot_slot";
/// Largest `bootlimit` the agent sets (a trial longer than this is a bug, not a policy).
pub const MAX_BOOTLIMIT: u32 = 16;

/// `bootcount`; absent or empty reads as 0, as U-Boot's `env_get_ulong` does.
///
/// # Errors
/// [`AbVarError::BadNumber`] if it is not a decimal `u32`.
pub fn bootcount(vars: &Vars) -> Result<u32, AbVarError> {
    Ok(get_number(vars, BOOTCOUNT, u32::MAX)?.unwrap_or(0))
}

/// Sets `bootcount`.
pub fn set_bootcount(vars: &mut Vars, count: u32) {
    set_known(vars, BOOTCOUNT, &count.to_string());
}

/// `bootlimit`; `None` when unset (U-Boot then never runs `altbootcmd`).
///
/// # Errors
/// [`AbVarError::BadNumber`] if it is not a decimal `u32`.
pub fn bootlimit(vars: &Vars) -> Result<Option<u32>, AbVarError> {
    get_number(vars, BOOTLIMIT, u32::MAX)
}

/// Sets `bootlimit`.
pub fn set_bootlimit(vars: &mut Vars, limit: u32) {
    set_known(vars, BOOTLIMIT, &limit.to_string());
}

/// `upgrade_available`; absent or empty is `false`.
///
/// # Errors
/// [`AbVarError::BadBool`] for anything but `0` or `1`.
pub fn upgrade_available(vars: &Vars) -> Result<bool, AbVarError> {
    match vars.get(UPGRADE_AVAILABLE) {
        None | Some(b"" | b"0") => Ok(false),
        Some(b"1") => Ok(true),
        Some(other) => Err(AbVarError::BadBool {
            name: UPGRADE_AVAILABLE,
            value: String::from_utf8_lossy(other).into_owned(),
        }),
    }
}

/// Sets `upgrade_available` to `1` or `0`.
pub fn set_upgrade_available(vars: &mut Vars, on: bool) {
    set_known(vars, UPGRADE_AVAILABLE, if on { "1" } else { "0" });
}

/// `altbootcmd`, raw.
#[must_use]
pub fn altbootcmd(vars: &Vars) -> Option<&[u8]> {
    vars.get(ALTBOOTCMD)
}

/// The slot `bootcmd` will boot; `None` when unset.
///
/// # Errors
/// [`AbVarError::BadSlot`] for anything but `A` or `B`.
pub fn slot(vars: &Vars) -> Result<Option<Slot>, AbVarError> {
    get_slot(vars, SLOT)
}

/// Sets the slot `bootcmd` boots.
pub fn set_slot(vars: &mut Vars, slot: Slot) {
    set_known(vars, SLOT, slot.as_str());
}

/// The `altbootcmd` that falls back to `fallback`: restore the slot, stop counting, persist,
/// and boot normally.
#[must_use]
pub fn fallback_command(fallback: Slot) -> String {
    format!(
        "setenv {SLOT} {fallback}; setenv {UPGRADE_AVAILABLE} 0; setenv {BOOTCOUNT} 0; saveenv; run bootcmd"
    )
}

/// Arms a trial of `slot` for at most `bootlimit` boots, falling back to the other slot.
///
/// # Errors
/// [`AbVarError::OutOfRange`] unless `1 <= bootlimit <= MAX_BOOTLIMIT`.
pub fn arm_trial(vars: &mut Vars, slot: Slot, bootlimit: u32) -> Result<(), AbVarError> {
    if !(1..=MAX_BOOTLIMIT).contains(&bootlimit) {
        return Err(AbVarError::OutOfRange {
            what: "bootlimit must be between 1 and 16",
        });
    }
    set_slot(vars, slot);
    set_bootcount(vars, 0);
    set_bootlimit(vars, bootlimit);
    set_known(vars, ALTBOOTCMD, &fallback_command(slot.other()));
    set_upgrade_available(vars, true);
    Ok(())
}

/// Marks the running slot good: stop counting boots.
pub fn commit(vars: &mut Vars) {
    set_upgrade_available(vars, false);
    set_bootcount(vars, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm_then_commit() {
        let mut v = Vars::new();
        set_slot(&mut v, Slot::A);
        assert_eq!(upgrade_available(&v), Ok(false));
        assert_eq!(bootcount(&v), Ok(0));
        assert_eq!(bootlimit(&v), Ok(None));
        arm_trial(&mut v, Slot::B, 3).unwrap();
        assert_eq!(slot(&v), Ok(Some(Slot::B)));
        assert_eq!(upgrade_available(&v), Ok(true));
        assert_eq!(bootlimit(&v), Ok(Some(3)));
        assert_eq!(
            altbootcmd(&v),
            Some(
                &b"setenv tugboot_slot A; setenv upgrade_available 0; setenv bootcount 0; saveenv; run bootcmd"[..]
            )
        );
        set_bootcount(&mut v, 2);
        commit(&mut v);
        assert_eq!(upgrade_available(&v), Ok(false));
        assert_eq!(bootcount(&v), Ok(0));
        assert_eq!(slot(&v), Ok(Some(Slot::B)));
    }

    #[test]
    fn rejects_garbage() {
        let mut v = Vars::new();
        v.set(UPGRADE_AVAILABLE, "yes").unwrap();
        assert!(matches!(
            upgrade_available(&v),
            Err(AbVarError::BadBool { .. })
        ));
        v.set(SLOT, "C").unwrap();
        assert!(matches!(slot(&v), Err(AbVarError::BadSlot { .. })));
        v.set(BOOTCOUNT, "x").unwrap();
        assert!(matches!(bootcount(&v), Err(AbVarError::BadNumber { .. })));
        assert!(arm_trial(&mut v, Slot::A, 0).is_err());
        assert!(arm_trial(&mut v, Slot::A, 17).is_err());
    }
}
