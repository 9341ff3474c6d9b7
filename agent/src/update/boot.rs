//! Bootloader adapters: the four A/B operations the update needs, over any [`BootEnv`].
//!
//! - [`Uboot`]: the `bootcount`/`bootlimit`/`upgrade_available`/`altbootcmd` contract
//!   ([`crate::bootloader::uboot::ab`]).
//! - [`Grub`]: the `tugboot_try`/`tugboot_tries` contract of `firmware/boot/grub-ab.cfg`
//!   ([`crate::bootloader::grub::ab`]).
//!
//! Both work over the real environment files (`UbootEnvFile`, `GrubEnvFile`) and over
//! [`PlainFileEnv`], a plain text environment written through [`Io`] so that tests and
//! simulations can cut the power in the middle of arming or committing.

use std::io;
use std::path::{Path, PathBuf};

use crate::bootloader::{AbVarError, BootEnv, BootEnvError, Slot, Vars, grub, uboot};
use crate::io::{Io, read_file, write_atomic};

/// A bootloader operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BootError {
    /// The environment could not be read or written.
    #[error(transparent)]
    Env(#[from] BootEnvError),
    /// A variable of the A/B contract holds something unexpected.
    #[error(transparent)]
    Var(#[from] AbVarError),
    /// Commit of a slot that is not the one on trial.
    #[error("cannot commit slot {asked}: the bootloader is set to boot {found}")]
    NotOnTrial {
        /// Slot to commit.
        asked: Slot,
        /// Slot the environment names.
        found: Slot,
    },
    /// Commit of an armed trial the bootloader has not booted yet: its counter is untouched.
    #[error("cannot commit slot {slot}: the bootloader has not booted its trial yet ({why})")]
    TrialNotBooted {
        /// Slot to commit.
        slot: Slot,
        /// What the environment shows.
        why: String,
    },
    /// The slot's kernel could not be put where the bootloader loads it from
    /// ([`super::kernels`]); the trial is not armed.
    #[error("slot kernel: {0}")]
    SlotKernel(String),
}

/// How the agent knows which slot is running. Every kind names the slot the bootloader really
/// started *in this boot*, which is what makes a commit safe; what differs is who says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// `tugboot.slot=` on the kernel command line: the slot's own boot entry put it there.
    KernelCmdline,
    /// The firmware's record of this boot: EFI `BootCurrent`, the Raspberry Pi device tree's
    /// `partition` (with the `tryboot` flag for the trial partition).
    Firmware,
    /// The bootloader counted this boot as the trial: U-Boot `bootcount` ≥ 1 with
    /// `upgrade_available=1`, GRUB `tugboot_tries` below the number armed.
    TrialCounter,
    /// The bootloader's default, because no trial is pending, or because one is armed but its
    /// counter shows it has not been booted (then the default is still the committed slot: an
    /// armed environment alone never says the trial runs).
    Default,
}

impl Evidence {
    /// One word for logs and `status`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KernelCmdline => "kernel command line",
            Self::Firmware => "firmware",
            Self::TrialCounter => "trial counter",
            Self::Default => "bootloader default",
        }
    }
}

/// The slot running now and how that is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Booted {
    /// The slot.
    pub slot: Slot,
    /// Who says so.
    pub evidence: Evidence,
}

impl From<Slot> for Booted {
    /// A slot known for certain (the kernel command line; simulations know the truth).
    fn from(slot: Slot) -> Self {
        Self {
            slot,
            evidence: Evidence::KernelCmdline,
        }
    }
}

/// What the bootloader will boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootStatus {
    /// The slot booted when no trial is pending (or once it failed).
    pub default: Slot,
    /// A slot armed for a trial boot.
    pub trial: Option<Slot>,
}

/// The A/B operations of a bootloader. Each one is a single `load` + `store` of the environment,
/// so it takes effect completely or not at all where the environment's `store` is atomic.
pub trait AbBootloader {
    /// Arms a trial boot of `slot` (whose content the caller verified).
    ///
    /// # Errors
    /// Environment errors; then the trial may or may not be armed.
    fn arm_trial(&mut self, slot: Slot) -> Result<(), BootError>;

    /// Makes `slot`, running on trial, the default.
    ///
    /// # Errors
    /// Environment errors, or `slot` not being the slot on trial.
    fn commit(&mut self, slot: Slot) -> Result<(), BootError>;

    /// Cancels any trial: boot `keep` (the committed slot) from now on.
    ///
    /// # Errors
    /// Environment errors.
    fn abort_trial(&mut self, keep: Slot) -> Result<(), BootError>;

    /// Reads what the bootloader will boot.
    ///
    /// # Errors
    /// Environment errors.
    fn status(&mut self) -> Result<BootStatus, BootError>;

    /// The slot this boot came from, as the bootloader's own records show it (used when the
    /// kernel command line does not say). An armed trial whose counter is untouched is *not*
    /// running: the default is.
    ///
    /// # Errors
    /// Environment errors.
    fn booted(&mut self) -> Result<Booted, BootError>;
}

impl<T: AbBootloader + ?Sized> AbBootloader for Box<T> {
    fn arm_trial(&mut self, slot: Slot) -> Result<(), BootError> {
        (**self).arm_trial(slot)
    }
    fn commit(&mut self, slot: Slot) -> Result<(), BootError> {
        (**self).commit(slot)
    }
    fn abort_trial(&mut self, keep: Slot) -> Result<(), BootError> {
        (**self).abort_trial(keep)
    }
    fn status(&mut self) -> Result<BootStatus, BootError> {
        (**self).status()
    }
    fn booted(&mut self) -> Result<Booted, BootError> {
        (**self).booted()
    }
}

/// U-Boot with `CONFIG_BOOTCOUNT_LIMIT` + `CONFIG_BOOTCOUNT_ENV`.
#[derive(Debug)]
pub struct Uboot<E> {
    env: E,
    bootlimit: u32,
}

impl<E: BootEnv> Uboot<E> {
    /// Trial boots get `bootlimit` attempts (1..=16) before U-Boot runs `altbootcmd`.
    #[must_use]
    pub fn new(env: E, bootlimit: u32) -> Self {
        Self { env, bootlimit }
    }

    /// The environment.
    pub fn env_mut(&mut self) -> &mut E {
        &mut self.env
    }
}

impl<E: BootEnv> AbBootloader for Uboot<E> {
    fn arm_trial(&mut self, slot: Slot) -> Result<(), BootError> {
        let mut vars = self.env.load()?;
        uboot::ab::arm_trial(&mut vars, slot, self.bootlimit)?;
        Ok(self.env.store(&vars)?)
    }

    /// Refused unless `tugboot_slot` is `slot` and, while a trial is armed, U-Boot has counted
    /// a boot of it (`bootcount` ≥ 1): committing an untouched trial would clear
    /// `upgrade_available` for a slot that never ran, leaving U-Boot no fallback.
    fn commit(&mut self, slot: Slot) -> Result<(), BootError> {
        let mut vars = self.env.load()?;
        let found = uboot::ab::slot(&vars)?.unwrap_or(Slot::A);
        if found != slot {
            return Err(BootError::NotOnTrial { asked: slot, found });
        }
        if uboot::ab::upgrade_available(&vars)? && uboot::ab::bootcount(&vars)? == 0 {
            return Err(BootError::TrialNotBooted {
                slot,
                why: "upgrade_available=1, bootcount=0".into(),
            });
        }
        uboot::ab::commit(&mut vars);
        Ok(self.env.store(&vars)?)
    }

    fn abort_trial(&mut self, keep: Slot) -> Result<(), BootError> {
        let mut vars = self.env.load()?;
        uboot::ab::set_slot(&mut vars, keep);
        uboot::ab::commit(&mut vars);
        Ok(self.env.store(&vars)?)
    }

    fn status(&mut self) -> Result<BootStatus, BootError> {
        let vars = self.env.load()?;
        let slot = uboot::ab::slot(&vars)?.unwrap_or(Slot::A);
        Ok(if uboot::ab::upgrade_available(&vars)? {
            BootStatus {
                default: slot.other(),
                trial: Some(slot),
            }
        } else {
            BootStatus {
                default: slot,
                trial: None,
            }
        })
    }

    /// `upgrade_available=1`: U-Boot counts every boot before it starts the kernel, so
    /// `bootcount` ≥ 1 means this boot is the trial of `tugboot_slot`, and 0 means the trial has
    /// not been booted (the running slot is the other one). Otherwise `tugboot_slot`.
    fn booted(&mut self) -> Result<Booted, BootError> {
        let vars = self.env.load()?;
        let slot = uboot::ab::slot(&vars)?.unwrap_or(Slot::A);
        Ok(if !uboot::ab::upgrade_available(&vars)? {
            Booted {
                slot,
                evidence: Evidence::Default,
            }
        } else if uboot::ab::bootcount(&vars)? >= 1 {
            Booted {
                slot,
                evidence: Evidence::TrialCounter,
            }
        } else {
            Booted {
                slot: slot.other(),
                evidence: Evidence::Default,
            }
        })
    }
}

/// GRUB 2 with `firmware/boot/grub-ab.cfg`.
#[derive(Debug)]
pub struct Grub<E> {
    env: E,
    tries: u32,
}

impl<E: BootEnv> Grub<E> {
    /// Trial boots get `tries` attempts (1..=3).
    #[must_use]
    pub fn new(env: E, tries: u32) -> Self {
        Self { env, tries }
    }

    /// The environment.
    pub fn env_mut(&mut self) -> &mut E {
        &mut self.env
    }
}

impl<E: BootEnv> AbBootloader for Grub<E> {
    fn arm_trial(&mut self, slot: Slot) -> Result<(), BootError> {
        let mut vars = self.env.load()?;
        grub::ab::arm_trial(&mut vars, slot, self.tries)?;
        Ok(self.env.store(&vars)?)
    }

    /// Refused unless `slot` is the trial and GRUB has counted a boot of it (`tugboot_tries`
    /// below the number armed), or, with no trial, already the committed slot (idempotent).
    fn commit(&mut self, slot: Slot) -> Result<(), BootError> {
        let mut vars = self.env.load()?;
        let trial = grub::ab::trial(&vars)?;
        let found = trial.map_or(grub::ab::slot(&vars)?, |t| t.slot);
        if found != slot {
            return Err(BootError::NotOnTrial { asked: slot, found });
        }
        if let Some(t) = trial
            && t.tries_left >= self.tries
        {
            return Err(BootError::TrialNotBooted {
                slot,
                why: format!("tugboot_tries={} of {} armed", t.tries_left, self.tries),
            });
        }
        grub::ab::commit(&mut vars, slot);
        Ok(self.env.store(&vars)?)
    }

    fn abort_trial(&mut self, keep: Slot) -> Result<(), BootError> {
        let mut vars = self.env.load()?;
        grub::ab::commit(&mut vars, keep);
        Ok(self.env.store(&vars)?)
    }

    fn status(&mut self) -> Result<BootStatus, BootError> {
        let vars = self.env.load()?;
        Ok(BootStatus {
            default: grub::ab::slot(&vars)?,
            trial: grub::ab::trial(&vars)?
                .filter(|t| t.tries_left > 0)
                .map(|t| t.slot),
        })
    }

    /// A pending trial whose `tugboot_tries` is below the number armed (this adapter's
    /// `tries`) was booted by `grub-ab.cfg`, which counts down before it boots: this boot is
    /// the trial. Otherwise (no trial, or one not booted yet) `tugboot_slot`. A fallback clears
    /// the trial, so it reads as the committed slot again.
    fn booted(&mut self) -> Result<Booted, BootError> {
        let vars = self.env.load()?;
        Ok(match grub::ab::trial(&vars)? {
            Some(t) if t.tries_left < self.tries => Booted {
                slot: t.slot,
                evidence: Evidence::TrialCounter,
            },
            _ => Booted {
                slot: grub::ab::slot(&vars)?,
                evidence: Evidence::Default,
            },
        })
    }
}

/// Size cap of a [`PlainFileEnv`] file.
pub const MAX_PLAIN_ENV: usize = 64 * 1024;
const PLAIN_HEADER: &str = "# tugboot plain boot environment v1\n";

/// A boot environment in a plain text file, replaced atomically through [`Io`]: for tests,
/// simulations and boards whose boot script reads a file.
///
/// Format: the header line `# tugboot plain boot environment v1`, then one `name=value` line
/// per variable; in values `\` is written `\\` and a newline `\n`.
#[derive(Debug)]
pub struct PlainFileEnv<I> {
    io: I,
    path: PathBuf,
}

fn invalid(path: &Path, what: String) -> BootEnvError {
    BootEnvError::Io {
        op: "parse plain environment",
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, what),
    }
}

impl<I: Io> PlainFileEnv<I> {
    /// The environment in `path`.
    pub fn new(io: I, path: impl Into<PathBuf>) -> Self {
        Self {
            io,
            path: path.into(),
        }
    }

    /// Creates the file with `vars` (the only write that does not need a readable file).
    ///
    /// # Errors
    /// I/O errors.
    pub fn initialize(&mut self, vars: &Vars) -> Result<(), BootEnvError> {
        let bytes = encode_plain(vars);
        write_atomic(&mut self.io, &self.path, &bytes).map_err(|source| BootEnvError::Io {
            op: "write",
            path: self.path.clone(),
            source,
        })
    }
}

/// The text of a plain environment.
#[must_use]
pub fn encode_plain(vars: &Vars) -> Vec<u8> {
    let mut out = PLAIN_HEADER.as_bytes().to_vec();
    for (name, value) in vars.iter_sorted() {
        out.extend_from_slice(name);
        out.push(b'=');
        for &b in value {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' => out.extend_from_slice(b"\\n"),
                _ => out.push(b),
            }
        }
        out.push(b'\n');
    }
    out
}

/// Parses a plain environment strictly (header, `=` on every line, known escapes, no
/// duplicates, final newline).
///
/// # Errors
/// A description of the first problem.
pub fn parse_plain(bytes: &[u8]) -> Result<Vars, String> {
    if bytes.len() > MAX_PLAIN_ENV {
        return Err(format!("larger than {MAX_PLAIN_ENV} bytes"));
    }
    let body = bytes
        .strip_prefix(PLAIN_HEADER.as_bytes())
        .ok_or("missing header")?;
    if !body.is_empty() && !body.ends_with(b"\n") {
        return Err("last line not terminated".into());
    }
    let mut vars = Vars::new();
    let Some(lines) = body.strip_suffix(b"\n") else {
        return Ok(vars);
    };
    for (n, line) in lines.split(|&b| b == b'\n').enumerate() {
        let lineno = n + 2;
        let eq = line
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| format!("line {lineno}: no '='"))?;
        let name = line.get(..eq).unwrap_or_default();
        let raw = line.get(eq + 1..).unwrap_or_default();
        let mut value = Vec::with_capacity(raw.len());
        let mut i = 0;
        while let Some(&b) = raw.get(i) {
            if b == b'\\' {
                match raw.get(i + 1) {
                    Some(b'\\') => value.push(b'\\'),
                    Some(b'n') => value.push(b'\n'),
                    _ => return Err(format!("line {lineno}: bad escape")),
                }
                i += 2;
            } else {
                value.push(b);
                i += 1;
            }
        }
        if vars.get_bytes(name).is_some() {
            return Err(format!("line {lineno}: duplicate variable"));
        }
        vars.set(name.to_vec(), value)
            .map_err(|e| format!("line {lineno}: {e}"))?;
    }
    Ok(vars)
}

impl<I: Io> BootEnv for PlainFileEnv<I> {
    fn load(&mut self) -> Result<Vars, BootEnvError> {
        let bytes = read_file(&mut self.io, &self.path, MAX_PLAIN_ENV)
            .map_err(|source| BootEnvError::Io {
                op: "read",
                path: self.path.clone(),
                source,
            })?
            .ok_or_else(|| invalid(&self.path, "missing".into()))?;
        parse_plain(&bytes).map_err(|what| invalid(&self.path, what))
    }

    fn store(&mut self, vars: &Vars) -> Result<(), BootEnvError> {
        // Refuse to replace an environment that cannot be read, like the real backends.
        self.load()?;
        self.initialize(vars)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::FaultyIo;

    fn env() -> PlainFileEnv<FaultyIo> {
        let io = FaultyIo::new();
        let mut e = PlainFileEnv::new(io, "/boot/env");
        e.initialize(&Vars::new()).unwrap();
        e
    }

    #[test]
    fn plain_round_trip_with_escapes() {
        let mut v = Vars::new();
        v.set("a", "x\\y\nz=").unwrap();
        v.set("b", "").unwrap();
        v.set("c", "plain").unwrap();
        let bytes = encode_plain(&v);
        assert_eq!(
            bytes,
            b"# tugboot plain boot environment v1\na=x\\\\y\\nz=\nb=\nc=plain\n"
        );
        assert_eq!(parse_plain(&bytes).unwrap(), v);
        assert_eq!(parse_plain(PLAIN_HEADER.as_bytes()).unwrap(), Vars::new());
    }

    #[test]
    fn plain_is_strict() {
        for bad in [
            &b"a=b\n"[..],
            b"# tugboot plain boot environment v1\nab\n",
            b"# tugboot plain boot environment v1\na=b",
            b"# tugboot plain boot environment v1\na=\\x\n",
            b"# tugboot plain boot environment v1\na=\\\n",
            b"# tugboot plain boot environment v1\na=1\na=2\n",
            b"# tugboot plain boot environment v1\n=1\n",
            b"# tugboot plain boot environment v1\n\n",
        ] {
            assert!(
                parse_plain(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn uboot_adapter() {
        let mut b = Uboot::new(env(), 2);
        assert_eq!(
            b.status().unwrap(),
            BootStatus {
                default: Slot::A,
                trial: None
            }
        );
        b.arm_trial(Slot::B).unwrap();
        assert_eq!(
            b.status().unwrap(),
            BootStatus {
                default: Slot::A,
                trial: Some(Slot::B)
            }
        );
        assert!(matches!(
            b.commit(Slot::A),
            Err(BootError::NotOnTrial { .. })
        ));
        // Armed, not booted: A still runs, and B cannot be committed.
        let default_a = Booted {
            slot: Slot::A,
            evidence: Evidence::Default,
        };
        assert_eq!(b.booted().unwrap(), default_a);
        let err = b.commit(Slot::B).unwrap_err();
        assert!(
            matches!(err, BootError::TrialNotBooted { slot: Slot::B, .. }),
            "{err}"
        );
        assert_eq!(b.status().unwrap().trial, Some(Slot::B), "still armed");
        // U-Boot counts the trial boot: now B runs, and commits.
        assert_eq!(
            crate::update::sim::uboot_power_on(b.env_mut()).unwrap(),
            Slot::B
        );
        assert_eq!(
            b.booted().unwrap(),
            Booted {
                slot: Slot::B,
                evidence: Evidence::TrialCounter
            }
        );
        b.commit(Slot::B).unwrap();
        b.commit(Slot::B).unwrap(); // idempotent
        assert_eq!(
            b.status().unwrap(),
            BootStatus {
                default: Slot::B,
                trial: None
            }
        );
        assert_eq!(b.booted().unwrap().slot, Slot::B);
        b.arm_trial(Slot::A).unwrap();
        b.abort_trial(Slot::B).unwrap();
        assert_eq!(
            b.status().unwrap(),
            BootStatus {
                default: Slot::B,
                trial: None
            }
        );
        // A trial that fell back (bootlimit 2 exceeded) reads as the committed slot.
        b.arm_trial(Slot::A).unwrap();
        for _ in 0..3 {
            crate::update::sim::uboot_power_on(b.env_mut()).unwrap();
        }
        assert_eq!(
            b.booted().unwrap(),
            Booted {
                slot: Slot::B,
                evidence: Evidence::Default
            }
        );
    }

    #[test]
    fn grub_adapter() {
        let mut b = Grub::new(env(), 1);
        b.arm_trial(Slot::B).unwrap();
        assert_eq!(
            b.status().unwrap(),
            BootStatus {
                default: Slot::A,
                trial: Some(Slot::B)
            }
        );
        assert!(b.commit(Slot::A).is_err());
        assert_eq!(b.booted().unwrap().slot, Slot::A, "armed, not booted");
        assert!(matches!(
            b.commit(Slot::B),
            Err(BootError::TrialNotBooted { .. })
        ));
        assert_eq!(
            crate::update::sim::grub_power_on(b.env_mut()).unwrap(),
            Slot::B
        );
        assert_eq!(
            b.booted().unwrap(),
            Booted {
                slot: Slot::B,
                evidence: Evidence::TrialCounter
            }
        );
        b.commit(Slot::B).unwrap();
        b.commit(Slot::B).unwrap(); // idempotent
        assert_eq!(
            b.status().unwrap(),
            BootStatus {
                default: Slot::B,
                trial: None
            }
        );
        b.arm_trial(Slot::A).unwrap();
        b.abort_trial(Slot::B).unwrap();
        assert_eq!(b.status().unwrap().trial, None);
    }

    #[test]
    fn corrupt_plain_env_is_never_overwritten() {
        let io = FaultyIo::new();
        io.add_file("/boot/env", b"garbage");
        let mut b = Uboot::new(PlainFileEnv::new(io.clone(), "/boot/env"), 1);
        assert!(b.arm_trial(Slot::B).is_err());
        assert_eq!(io.contents(Path::new("/boot/env")).unwrap(), b"garbage");
    }
}
