//! Simulated bootloaders: what U-Boot and GRUB do with the A/B variables at power-on, over any
//! [`BootEnv`]. Tests and simulations drive the agent through reboots with them.
//!
//! - [`uboot_power_on`]: U-Boot with `CONFIG_BOOTCOUNT_LIMIT` and `CONFIG_BOOTCOUNT_ENV`:
//!   `bootcount_inc()` increments `bootcount` and saves the environment on every boot while
//!   `upgrade_available=1`; autoboot then runs `altbootcmd` instead of `bootcmd` when
//!   `bootlimit` is set and `bootcount > bootlimit`. `altbootcmd` is interpreted (the `setenv`,
//!   `saveenv` and `run bootcmd` commands the agent writes), not assumed. `bootcmd` boots
//!   `tugboot_slot`.
//! - [`grub_power_on`]: `firmware/boot/grub-ab.cfg` line by line.

use crate::bootloader::{BootEnv, BootEnvError, Slot, Vars, uboot::ab};

/// The simulated bootloader cannot boot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The environment could not be read or saved.
    #[error(transparent)]
    Env(#[from] BootEnvError),
    /// A command in `altbootcmd` that the simulation (and the contract) does not have.
    #[error("unsupported command in altbootcmd: {0:?}")]
    Command(String),
    /// `altbootcmd` ended without booting.
    #[error("altbootcmd did not boot anything")]
    NoBoot,
    /// A variable the boot script reads is malformed.
    #[error("bad variable {0}")]
    BadVar(&'static str),
}

fn number(vars: &Vars, name: &'static str) -> Result<u64, SimError> {
    match vars.get_str(name) {
        None | Some("") => Ok(0),
        Some(s) => s.parse().map_err(|_| SimError::BadVar(name)),
    }
}

fn bootcmd(vars: &Vars) -> Slot {
    // The board's bootcmd: `if test "${tugboot_slot}" = B; then <boot B>; else <boot A>; fi`.
    if vars.get(ab::SLOT) == Some(b"B") {
        Slot::B
    } else {
        Slot::A
    }
}

/// One U-Boot power-on: returns the slot it boots.
///
/// # Errors
/// An unreadable environment, or an `altbootcmd` outside the contract.
pub fn uboot_power_on(env: &mut dyn BootEnv) -> Result<Slot, SimError> {
    let mut vars = env.load()?;
    let upgrade = vars.get(ab::UPGRADE_AVAILABLE) == Some(b"1");
    let mut count = number(&vars, ab::BOOTCOUNT)?;
    if upgrade {
        count += 1;
        // set_known-style: a decimal number is always a valid value.
        vars.set(ab::BOOTCOUNT, count.to_string())
            .map_err(|_| SimError::BadVar(ab::BOOTCOUNT))?;
        env.store(&vars)?;
    }
    let limit = number(&vars, ab::BOOTLIMIT)?;
    if limit == 0 || count <= limit {
        return Ok(bootcmd(&vars));
    }
    let script = vars
        .get_str(ab::ALTBOOTCMD)
        .ok_or(SimError::BadVar(ab::ALTBOOTCMD))?
        .to_owned();
    for command in script.split(';').map(str::trim) {
        let words: Vec<&str> = command.split_ascii_whitespace().collect();
        match words.as_slice() {
            ["setenv", name] => {
                vars.remove(name);
            }
            ["setenv", name, value @ ..] => {
                vars.set(*name, value.join(" "))
                    .map_err(|_| SimError::Command(command.to_owned()))?;
            }
            ["saveenv"] => env.store(&vars)?,
            ["run", "bootcmd"] => return Ok(bootcmd(&vars)),
            [] => {}
            _ => return Err(SimError::Command(command.to_owned())),
        }
    }
    Err(SimError::NoBoot)
}

/// One GRUB power-on running `grub-ab.cfg`: returns the slot it boots.
///
/// # Errors
/// An unreadable environment. (A failing `save_env` in real GRUB boots the committed slot;
/// here a failing store is an error, since the simulated disk is always writable.)
pub fn grub_power_on(env: &mut dyn BootEnv) -> Result<Slot, SimError> {
    let mut vars = env.load()?;
    let slot = if vars.get("tugboot_slot") == Some(b"B") {
        Slot::B
    } else {
        Slot::A
    };
    let try_slot = match vars.get("tugboot_try") {
        Some(b"A") => Some(Slot::A),
        Some(b"B") => Some(Slot::B),
        _ => None,
    };
    let set = |vars: &mut Vars, name: &'static str, value: &str| {
        vars.set(name, value).map_err(|_| SimError::BadVar(name))
    };
    if let Some(trial) = try_slot {
        let tries = vars.get("tugboot_tries").map(<[u8]>::to_vec);
        let next = match tries.as_deref() {
            Some(b"3") => Some("2"),
            Some(b"2") => Some("1"),
            Some(b"1") => Some("0"),
            _ => None,
        };
        match next {
            Some(left) => {
                set(&mut vars, "tugboot_tries", left)?;
                env.store(&vars)?;
                Ok(trial)
            }
            None => {
                set(&mut vars, "tugboot_try", "")?;
                set(&mut vars, "tugboot_tries", "")?;
                env.store(&vars)?;
                Ok(slot)
            }
        }
    } else {
        if vars.get("tugboot_try").is_some_and(|v| !v.is_empty()) {
            set(&mut vars, "tugboot_try", "")?;
            set(&mut vars, "tugboot_tries", "")?;
            env.store(&vars)?;
        }
        Ok(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootloader::grub;
    use crate::io::FaultyIo;
    use crate::update::boot::PlainFileEnv;

    fn env(vars: &Vars) -> PlainFileEnv<FaultyIo> {
        let mut e = PlainFileEnv::new(FaultyIo::new(), "/boot/env");
        e.initialize(vars).unwrap();
        e
    }

    #[test]
    fn uboot_counts_then_runs_altbootcmd() {
        let mut v = Vars::new();
        ab::set_slot(&mut v, Slot::A);
        ab::arm_trial(&mut v, Slot::B, 2).unwrap();
        let mut e = env(&v);
        assert_eq!(uboot_power_on(&mut e).unwrap(), Slot::B);
        assert_eq!(uboot_power_on(&mut e).unwrap(), Slot::B);
        assert_eq!(e.load().unwrap().get_str("bootcount"), Some("2"));
        assert_eq!(uboot_power_on(&mut e).unwrap(), Slot::A, "bootcount 3 > 2");
        let after = e.load().unwrap();
        assert_eq!(after.get_str("tugboot_slot"), Some("A"));
        assert_eq!(after.get_str("upgrade_available"), Some("0"));
        assert_eq!(after.get_str("bootcount"), Some("0"));
        // Disarmed: stays on A without counting.
        assert_eq!(uboot_power_on(&mut e).unwrap(), Slot::A);
        assert_eq!(e.load().unwrap().get_str("bootcount"), Some("0"));
    }

    #[test]
    fn uboot_refuses_unknown_commands() {
        let mut v = Vars::new();
        v.set("upgrade_available", "1").unwrap();
        v.set("bootlimit", "1").unwrap();
        v.set("bootcount", "1").unwrap();
        v.set("altbootcmd", "reset").unwrap();
        assert!(matches!(
            uboot_power_on(&mut env(&v)),
            Err(SimError::Command(_))
        ));
    }

    #[test]
    fn grub_counts_down_then_falls_back() {
        let mut v = Vars::new();
        grub::ab::arm_trial(&mut v, Slot::B, 2).unwrap();
        let mut e = env(&v);
        assert_eq!(grub_power_on(&mut e).unwrap(), Slot::B);
        assert_eq!(grub_power_on(&mut e).unwrap(), Slot::B);
        assert_eq!(grub_power_on(&mut e).unwrap(), Slot::A);
        let after = e.load().unwrap();
        assert_eq!(after.get_str("tugboot_try"), Some(""));
        assert_eq!(grub_power_on(&mut e).unwrap(), Slot::A);
        // Commit sticks.
        let mut v = e.load().unwrap();
        grub::ab::arm_trial(&mut v, Slot::B, 1).unwrap();
        e.store(&v).unwrap();
        assert_eq!(grub_power_on(&mut e).unwrap(), Slot::B);
        let mut v = e.load().unwrap();
        grub::ab::commit(&mut v, Slot::B);
        e.store(&v).unwrap();
        assert_eq!(grub_power_on(&mut e).unwrap(), Slot::B);
        assert_eq!(grub_power_on(&mut e).unwrap(), Slot::B);
    }

    #[test]
    fn grub_drops_garbage_trial() {
        let mut v = Vars::new();
        v.set("tugboot_try", "C").unwrap();
        v.set("tugboot_slot", "B").unwrap();
        let mut e = env(&v);
        assert_eq!(grub_power_on(&mut e).unwrap(), Slot::B);
        assert_eq!(e.load().unwrap().get_str("tugboot_try"), Some(""));
    }
}
