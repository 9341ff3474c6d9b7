//! The `BootNext` / `BootOrder` A/B backend.

use std::io;
use std::path::PathBuf;

use super::efivarfs::{
    BOOT_VAR_ATTRIBUTES, Efivarfs, EfivarfsError, Variable, VariableError, boot_entry_name,
};
use super::load_option::{self, LoadOption, LoadOptionError};
use crate::bootloader::{BootEnvError, Slot};
use crate::update::boot::{AbBootloader, BootError, BootStatus, Booted, Evidence};

/// Most `Boot####` variables scanned (firmware rarely has more than a few dozen).
pub const MAX_BOOT_ENTRIES: usize = 512;
/// `BootOrder` of more entries than this is refused.
pub const MAX_BOOT_ORDER: usize = 4096;

/// How to recognise one slot's `Boot####` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EfiSlot {
    /// The loader on the ESP (board `efi_loader`, e.g. `EFI/tugboot/slot-a.efi`); compared
    /// with the entry's `File()` path case-insensitively (FAT), `/` and `\` alike, leading
    /// separator optional.
    pub loader: String,
    /// If set, the entry's description must also be exactly this.
    pub description: Option<String>,
}

impl EfiSlot {
    /// Matches by loader path only.
    #[must_use]
    pub fn loader(path: impl Into<String>) -> Self {
        Self {
            loader: path.into(),
            description: None,
        }
    }

    fn normalized(&self) -> String {
        normalize_path(&self.loader)
    }

    fn matches(&self, option: &LoadOption) -> bool {
        let Some(path) = option.file_path() else {
            return false;
        };
        normalize_path(&path).eq_ignore_ascii_case(&self.normalized())
            && self
                .description
                .as_ref()
                .is_none_or(|d| *d == option.description())
    }
}

/// `EFI/x.efi`, `/EFI/x.efi` and `\EFI\x.efi` all become `\EFI\x.efi`.
fn normalize_path(p: &str) -> String {
    let p = p.replace('/', "\\");
    if p.starts_with('\\') {
        p
    } else {
        format!("\\{p}")
    }
}

/// The EFI backend failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EfiError {
    /// efivarfs could not be read or written.
    #[error(transparent)]
    Efivarfs(#[from] EfivarfsError),
    /// A `Boot####` variable is not a valid load option (nothing is written then).
    #[error("{name}: {source}")]
    LoadOption {
        /// The variable.
        name: String,
        /// What is wrong.
        source: LoadOptionError,
    },
    /// `BootOrder`, `BootNext` or `BootCurrent` has the wrong shape.
    #[error("{name}: {source}")]
    Variable {
        /// The variable.
        name: &'static str,
        /// What is wrong.
        source: VariableError,
    },
    /// No `Boot####` entry boots the slot's loader.
    #[error(
        "no Boot#### entry for slot {slot} ({loader}); create one, e.g. efibootmgr -c -l '{loader}'"
    )]
    NoEntry {
        /// The slot.
        slot: Slot,
        /// Its loader.
        loader: String,
    },
    /// Several entries boot the slot's loader: which one the firmware uses is unknowable.
    #[error("several Boot#### entries for slot {slot}: {entries:04X?}")]
    AmbiguousEntry {
        /// The slot.
        slot: Slot,
        /// The entries.
        entries: Vec<u16>,
    },
    /// The slot's entry is not `LOAD_OPTION_ACTIVE`.
    #[error("Boot{entry:04X} for slot {slot} is not active")]
    InactiveEntry {
        /// The slot.
        slot: Slot,
        /// The entry.
        entry: u16,
    },
    /// Neither slot's entry is in `BootOrder` (or it is missing): nothing says what boots.
    #[error("BootOrder {order:04X?} lists neither slot entry ({a:04X} A, {b:04X} B)")]
    NotInBootOrder {
        /// `BootOrder`.
        order: Vec<u16>,
        /// Slot A's entry.
        a: u16,
        /// Slot B's entry.
        b: u16,
    },
    /// `BootOrder` is implausibly long.
    #[error("BootOrder has {len} entries, more than {max}")]
    BootOrderTooLong {
        /// Entries.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The two slots are configured with the same loader.
    #[error("slots A and B use the same loader {0}")]
    SameLoader(String),
}

impl From<EfiError> for BootError {
    /// [`BootError`] has no EFI variant yet: the typed error travels as the source of an
    /// `io::Error` (downcast with `get_ref()`).
    fn from(e: EfiError) -> Self {
        let (op, path, kind) = match &e {
            EfiError::Efivarfs(EfivarfsError::Io { op, path, source }) => {
                (*op, path.clone(), source.kind())
            }
            EfiError::Efivarfs(EfivarfsError::NotMounted { path }) => {
                ("open", path.clone(), io::ErrorKind::NotFound)
            }
            _ => (
                "read",
                PathBuf::from(super::efivarfs::EFIVARFS),
                io::ErrorKind::InvalidData,
            ),
        };
        BootError::Env(BootEnvError::Io {
            op,
            path,
            source: io::Error::new(kind, e),
        })
    }
}

/// What the firmware's boot manager variables say, resolved to slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EfiState {
    /// `Boot####` number of slot A's and slot B's entry.
    pub entries: [u16; 2],
    /// `BootOrder` (empty if absent).
    pub boot_order: Vec<u16>,
    /// `BootNext`, if set.
    pub boot_next: Option<u16>,
    /// `BootCurrent`, if set (the entry this boot came from).
    pub boot_current: Option<u16>,
}

impl EfiState {
    /// The entry of `slot`.
    #[must_use]
    pub fn entry(&self, slot: Slot) -> u16 {
        match slot {
            Slot::A => self.entries[0],
            Slot::B => self.entries[1],
        }
    }

    /// The slot of entry `n`, if it is one of the two.
    #[must_use]
    pub fn slot_of(&self, n: u16) -> Option<Slot> {
        if n == self.entries[0] {
            Some(Slot::A)
        } else if n == self.entries[1] {
            Some(Slot::B)
        } else {
            None
        }
    }

    /// The slot booted when `BootNext` is unset: the first slot entry in `BootOrder`.
    ///
    /// # Errors
    /// [`EfiError::NotInBootOrder`] if neither is listed.
    pub fn default_slot(&self) -> Result<Slot, EfiError> {
        self.boot_order
            .iter()
            .find_map(|&n| self.slot_of(n))
            .ok_or_else(|| EfiError::NotInBootOrder {
                order: self.boot_order.clone(),
                a: self.entries[0],
                b: self.entries[1],
            })
    }

    /// The slot this boot came from (`BootCurrent`), if it is one of the two.
    #[must_use]
    pub fn booted_slot(&self) -> Option<Slot> {
        self.boot_current.and_then(|n| self.slot_of(n))
    }

    /// `BootOrder` with `first`'s entry first and the other slot's second (the firmware falls
    /// back to it if the first fails to load), everything else after in its old order.
    #[must_use]
    pub fn order_with_first(&self, first: Slot) -> Vec<u16> {
        let (f, s) = (self.entry(first), self.entry(first.other()));
        let mut order = vec![f, s];
        order.extend(
            self.boot_order
                .iter()
                .copied()
                .filter(|&n| n != f && n != s),
        );
        order
    }
}

/// UEFI `BootNext` (try once) / `BootOrder` (commit) A/B over efivarfs.
///
/// No `Io`/rename here: efivarfs has no rename, and each variable write is one atomic
/// `SetVariable()` in the firmware. Operations that touch two variables order them so that
/// every intermediate state boots a committed or verified slot (see `docs/bootloaders.md`).
#[derive(Debug, Clone)]
pub struct EfiBootNext {
    vars: Efivarfs,
    slots: [EfiSlot; 2],
}

impl EfiBootNext {
    /// The backend over `vars` with the slots' loaders (board `[[slots]] efi_loader`).
    ///
    /// # Errors
    /// [`EfiError::SameLoader`] if both slots name the same loader.
    pub fn new(vars: Efivarfs, a: EfiSlot, b: EfiSlot) -> Result<Self, EfiError> {
        if a.normalized().eq_ignore_ascii_case(&b.normalized()) && a.description == b.description {
            return Err(EfiError::SameLoader(a.loader));
        }
        Ok(Self {
            vars,
            slots: [a, b],
        })
    }

    /// The variables.
    #[must_use]
    pub fn efivarfs(&self) -> &Efivarfs {
        &self.vars
    }

    fn u16_var(&self, name: &'static str) -> Result<Option<u16>, EfiError> {
        self.vars
            .read(name)?
            .map(|v| v.as_u16())
            .transpose()
            .map_err(|source| EfiError::Variable { name, source })
    }

    /// Reads every `Boot####` (all must be valid load options), finds the slots' entries,
    /// and reads `BootOrder`, `BootNext`, `BootCurrent`.
    ///
    /// # Errors
    /// Any malformed variable, a slot without exactly one matching active entry, I/O errors.
    pub fn state(&self) -> Result<EfiState, EfiError> {
        let mut found: [Vec<(u16, bool)>; 2] = [Vec::new(), Vec::new()];
        for n in self.vars.boot_entries(MAX_BOOT_ENTRIES)? {
            let name = boot_entry_name(n);
            let Some(var) = self.vars.read(&name)? else {
                continue; // deleted meanwhile
            };
            let option = load_option::parse(&var.data)
                .map_err(|source| EfiError::LoadOption { name, source })?;
            for (i, slot) in self.slots.iter().enumerate() {
                if slot.matches(&option)
                    && let Some(list) = found.get_mut(i)
                {
                    list.push((n, option.is_active()));
                }
            }
        }
        let mut entries = [0u16; 2];
        for ((slot, list), (entry, cfg)) in [Slot::A, Slot::B]
            .into_iter()
            .zip(&found)
            .zip(entries.iter_mut().zip(&self.slots))
        {
            match list.as_slice() {
                [] => {
                    return Err(EfiError::NoEntry {
                        slot,
                        loader: cfg.loader.clone(),
                    });
                }
                [(n, true)] => *entry = *n,
                [(n, false)] => return Err(EfiError::InactiveEntry { slot, entry: *n }),
                many => {
                    return Err(EfiError::AmbiguousEntry {
                        slot,
                        entries: many.iter().map(|(n, _)| *n).collect(),
                    });
                }
            }
        }
        let boot_order = match self.vars.read("BootOrder")? {
            Some(v) => v.as_u16_list().map_err(|source| EfiError::Variable {
                name: "BootOrder",
                source,
            })?,
            None => Vec::new(),
        };
        if boot_order.len() > MAX_BOOT_ORDER {
            return Err(EfiError::BootOrderTooLong {
                len: boot_order.len(),
                max: MAX_BOOT_ORDER,
            });
        }
        Ok(EfiState {
            entries,
            boot_order,
            boot_next: self.u16_var("BootNext")?,
            boot_current: self.u16_var("BootCurrent")?,
        })
    }

    fn write_boot_order(&self, state: &EfiState, order: &[u16]) -> Result<(), EfiError> {
        if order == state.boot_order {
            return Ok(());
        }
        let attributes = self
            .vars
            .read("BootOrder")?
            .map_or(BOOT_VAR_ATTRIBUTES, |v| v.attributes);
        self.vars.write(
            "BootOrder",
            &Variable {
                attributes,
                data: Variable::u16_data(order),
            },
        )?;
        Ok(())
    }

    /// Deletes `BootNext` if it names one of the slots (a foreign one, e.g. set by an
    /// operator for a PXE boot, is left alone).
    fn clear_boot_next(&self, state: &EfiState) -> Result<(), EfiError> {
        if state.boot_next.is_some_and(|n| state.slot_of(n).is_some()) {
            self.vars.delete("BootNext")?;
        }
        Ok(())
    }

    fn status_inner(&self) -> Result<BootStatus, EfiError> {
        let state = self.state()?;
        let default = state.default_slot()?;
        let armed = state
            .boot_next
            .and_then(|n| state.slot_of(n))
            .filter(|&s| s != default);
        let running = state.booted_slot().filter(|&s| s != default);
        Ok(BootStatus {
            default,
            trial: armed.or(running),
        })
    }

    fn commit_inner(&self, slot: Slot) -> Result<Result<(), BootError>, EfiError> {
        let state = self.state()?;
        let running = state.booted_slot();
        if running != Some(slot) {
            let found = match running {
                Some(s) => s,
                None => state.default_slot()?,
            };
            return Ok(Err(BootError::NotOnTrial { asked: slot, found }));
        }
        // BootOrder first: a cut before the BootNext delete leaves BootNext naming a slot
        // (only ever the slot being committed or the committed one), never an unverified one.
        self.write_boot_order(&state, &state.order_with_first(slot))?;
        self.clear_boot_next(&state)?;
        Ok(Ok(()))
    }
}

impl AbBootloader for EfiBootNext {
    /// Sets `BootNext` to the slot's entry: the firmware deletes it and boots that entry once.
    fn arm_trial(&mut self, slot: Slot) -> Result<(), BootError> {
        let state = self.state()?;
        state.default_slot()?;
        self.vars
            .write(
                "BootNext",
                &Variable::boot(Variable::u16_data(&[state.entry(slot)])),
            )
            .map_err(EfiError::from)?;
        Ok(())
    }

    /// Puts the slot's entry first in `BootOrder` (the other slot second) and clears a
    /// `BootNext` naming a slot. Refused unless `BootCurrent` is the slot's entry: only a
    /// slot that actually booted is committed. Idempotent.
    fn commit(&mut self, slot: Slot) -> Result<(), BootError> {
        self.commit_inner(slot)?
    }

    /// Clears a slot `BootNext`, then puts `keep` first in `BootOrder`.
    fn abort_trial(&mut self, keep: Slot) -> Result<(), BootError> {
        let state = self.state()?;
        // BootNext first: until BootOrder is rewritten the default is still the committed slot.
        self.clear_boot_next(&state)?;
        self.write_boot_order(&state, &state.order_with_first(keep))?;
        Ok(())
    }

    /// `default`: the first slot entry in `BootOrder`. `trial`: the other slot if `BootNext`
    /// names it (armed) or `BootCurrent` is it (running on trial, not committed).
    fn status(&mut self) -> Result<BootStatus, BootError> {
        Ok(self.status_inner()?)
    }

    /// `BootCurrent` when it is a slot's entry (the firmware's record of this boot); otherwise
    /// (a PXE or shell boot, or no `BootCurrent`) the `BootOrder` default. An armed `BootNext`
    /// never counts: the firmware deletes it when it takes it, and sets `BootCurrent`.
    fn booted(&mut self) -> Result<Booted, BootError> {
        let state = self.state().map_err(BootError::from)?;
        Ok(match state.booted_slot() {
            Some(slot) => Booted {
                slot,
                evidence: Evidence::Firmware,
            },
            None => Booted {
                slot: state.default_slot().map_err(BootError::from)?,
                evidence: Evidence::Default,
            },
        })
    }
}
