//! The tryboot A/B backend: `autoboot.txt` edits written atomically through [`Io`].

use std::io;
use std::path::{Path, PathBuf};

use super::autoboot::{self, AbPartitions, Autoboot, AutobootError, MAX_PARTITION};
use super::devicetree::{self, BootInfo, DeviceTreeError};
use crate::bootloader::{BootEnvError, Slot};
use crate::io::{Io, read_file, write_atomic};
use crate::update::boot::{AbBootloader, BootError, BootStatus, Booted, Evidence};

/// The file name on the autoboot partition.
pub const AUTOBOOT_FILE: &str = "autoboot.txt";
/// The argument the shell must pass to `reboot` (`reboot(2)` `LINUX_REBOOT_CMD_RESTART2`,
/// `systemctl reboot "0 tryboot"`, or `reboot "0 tryboot"`) after [`RpiTryboot::arm_trial`]:
/// `0` = the default partition, `tryboot` = set the firmware's one-shot flag. A plain reboot
/// boots the committed slot again (and the agent reports the trial as fallen back).
pub const REBOOT_ARG: &str = "0 tryboot";

/// The boot partition of each slot (board `[[slots]] boot_partition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpiPartitions {
    /// Slot A's boot partition.
    pub a: u32,
    /// Slot B's boot partition.
    pub b: u32,
}

impl RpiPartitions {
    /// The partition of `slot`.
    #[must_use]
    pub fn of(self, slot: Slot) -> u32 {
        match slot {
            Slot::A => self.a,
            Slot::B => self.b,
        }
    }

    /// The slot booted from `partition`, if any.
    #[must_use]
    pub fn slot_of(self, partition: u32) -> Option<Slot> {
        if partition == self.a {
            Some(Slot::A)
        } else if partition == self.b {
            Some(Slot::B)
        } else {
            None
        }
    }
}

/// The tryboot backend failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrybootError {
    /// `autoboot.txt` is malformed or not an A/B file (it is never overwritten then).
    #[error("{path}: {source}")]
    Autoboot {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: AutobootError,
    },
    /// `autoboot.txt` does not exist (see [`RpiTryboot::initialize`]).
    #[error("{path}: missing (is the autoboot partition mounted?)")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// An operating-system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `autoboot.txt` or the device tree names a partition that is neither slot's.
    #[error("partition {partition} is neither slot A's ({a}) nor slot B's ({b})")]
    UnknownPartition {
        /// The partition found.
        partition: u32,
        /// Slot A's partition.
        a: u32,
        /// Slot B's partition.
        b: u32,
    },
    /// The board's slot partitions are unusable.
    #[error("slot boot partitions {a} and {b} must differ and lie in 1..={MAX_PARTITION}")]
    BadPartitions {
        /// Slot A's partition.
        a: u32,
        /// Slot B's partition.
        b: u32,
    },
    /// The firmware's device-tree properties could not be read.
    #[error(transparent)]
    DeviceTree(#[from] DeviceTreeError),
}

impl From<TrybootError> for BootError {
    /// [`BootError`] has no tryboot variant yet: the typed error travels as the source of an
    /// `io::Error` (downcast with `get_ref()`), kind `InvalidData` for bad content.
    fn from(e: TrybootError) -> Self {
        let (op, path, kind) = match &e {
            TrybootError::Autoboot { path, .. } => {
                ("parse", path.clone(), io::ErrorKind::InvalidData)
            }
            TrybootError::Missing { path } => ("read", path.clone(), io::ErrorKind::NotFound),
            TrybootError::Io { op, path, source } => (*op, path.clone(), source.kind()),
            TrybootError::DeviceTree(_) => (
                "read",
                PathBuf::from(devicetree::PROC_DEVICE_TREE),
                io::ErrorKind::InvalidData,
            ),
            _ => (
                "check",
                PathBuf::from(AUTOBOOT_FILE),
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

/// `/dev/mmcblk0` + 1 → `/dev/mmcblk0p1`; `/dev/sda` + 1 → `/dev/sda1` (the kernel adds `p`
/// when the disk name ends in a digit).
#[must_use]
pub fn partition_device(disk: &str, partition: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{partition}")
    } else {
        format!("{disk}{partition}")
    }
}

/// Raspberry Pi tryboot A/B over a mounted `autoboot.txt`.
///
/// All writes go through [`write_atomic`]: `autoboot.txt.tmp`, `fsync`, `rename`, `fsync` of
/// the directory. On FAT the rename is not atomic in the journaled sense; `docs/bootloaders.md`
/// explains why the firmware still sees the old or the new file.
#[derive(Debug)]
pub struct RpiTryboot<I> {
    io: I,
    path: PathBuf,
    parts: RpiPartitions,
    device_tree: Option<PathBuf>,
}

impl<I: Io> RpiTryboot<I> {
    /// The backend for `autoboot.txt` at `path` (on the mounted autoboot partition).
    ///
    /// # Errors
    /// [`TrybootError::BadPartitions`] unless the two partitions differ and are in range.
    pub fn new(
        io: I,
        path: impl Into<PathBuf>,
        parts: RpiPartitions,
    ) -> Result<Self, TrybootError> {
        let range = 1..=MAX_PARTITION;
        if parts.a == parts.b || !range.contains(&parts.a) || !range.contains(&parts.b) {
            return Err(TrybootError::BadPartitions {
                a: parts.a,
                b: parts.b,
            });
        }
        Ok(Self {
            io,
            path: path.into(),
            parts,
            device_tree: None,
        })
    }

    /// Also consult the firmware's device tree under `root` (normally
    /// [`devicetree::PROC_DEVICE_TREE`]): [`AbBootloader::commit`] then refuses to commit a
    /// slot that is not the one running.
    #[must_use]
    pub fn with_device_tree(mut self, root: impl Into<PathBuf>) -> Self {
        self.device_tree = Some(root.into());
        self
    }

    /// The file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The argument for `reboot` after arming: [`REBOOT_ARG`].
    #[must_use]
    pub fn reboot_argument(&self) -> &'static str {
        REBOOT_ARG
    }

    /// The I/O backend.
    pub fn io_mut(&mut self) -> &mut I {
        &mut self.io
    }

    fn slot_of(&self, partition: u32) -> Result<Slot, TrybootError> {
        self.parts
            .slot_of(partition)
            .ok_or(TrybootError::UnknownPartition {
                partition,
                a: self.parts.a,
                b: self.parts.b,
            })
    }

    /// Writes a fresh A/B `autoboot.txt` booting `default` with no trial armed, replacing
    /// whatever was there (installer use; the only write that needs no readable file).
    ///
    /// # Errors
    /// I/O errors.
    pub fn initialize(&mut self, default: Slot) -> Result<(), TrybootError> {
        let p = self.parts.of(default);
        let doc = Autoboot::new_ab(AbPartitions {
            default: p,
            tryboot: p,
        })
        .map_err(|source| TrybootError::Autoboot {
            path: self.path.clone(),
            source,
        })?;
        self.write(&doc)
    }

    /// Reads and checks `autoboot.txt`: the parsed file and its partitions, both a slot's.
    ///
    /// # Errors
    /// A missing, oversized, malformed or non-A/B file, or partitions that are not the slots'.
    pub fn load(&mut self) -> Result<(Autoboot, AbPartitions), TrybootError> {
        let bytes = read_file(&mut self.io, &self.path, autoboot::MAX_AUTOBOOT_LEN)
            // An oversized file comes back as `InvalidData` ("N bytes is larger than the
            // 512-byte cap") before any of it is read.
            .map_err(|source| TrybootError::Io {
                op: "read",
                path: self.path.clone(),
                source,
            })?
            .ok_or_else(|| TrybootError::Missing {
                path: self.path.clone(),
            })?;
        let bad = |source| TrybootError::Autoboot {
            path: self.path.clone(),
            source,
        };
        let doc = autoboot::parse(&bytes).map_err(bad)?;
        let parts = doc.ab().map_err(bad)?;
        self.slot_of(parts.default)?;
        self.slot_of(parts.tryboot)?;
        Ok((doc, parts))
    }

    fn write(&mut self, doc: &Autoboot) -> Result<(), TrybootError> {
        write_atomic(&mut self.io, &self.path, &doc.encode()).map_err(|source| TrybootError::Io {
            op: "write",
            path: self.path.clone(),
            source,
        })
    }

    /// Sets both partitions, writing only if something changes.
    fn set(&mut self, default: Slot, tryboot: Slot) -> Result<(), TrybootError> {
        let (mut doc, old) = self.load()?;
        let new = AbPartitions {
            default: self.parts.of(default),
            tryboot: self.parts.of(tryboot),
        };
        if new == old {
            return Ok(());
        }
        doc.set_ab(new).map_err(|source| TrybootError::Autoboot {
            path: self.path.clone(),
            source,
        })?;
        self.write(&doc)
    }

    /// The firmware's report on the running boot; `None` without a device tree configured.
    ///
    /// # Errors
    /// Missing or malformed device-tree properties.
    pub fn boot_info(&self) -> Result<Option<BootInfo>, TrybootError> {
        match &self.device_tree {
            Some(root) => Ok(Some(devicetree::read_boot_info(root)?)),
            None => Ok(None),
        }
    }

    /// The slot running now according to the firmware; `None` without a device tree.
    ///
    /// # Errors
    /// Device-tree errors, or a booted partition that is neither slot's.
    pub fn booted_slot(&self) -> Result<Option<Slot>, TrybootError> {
        self.boot_info()?
            .map(|info| self.slot_of(info.partition))
            .transpose()
    }

    fn status_inner(&mut self) -> Result<BootStatus, TrybootError> {
        let (_, parts) = self.load()?;
        let default = self.slot_of(parts.default)?;
        let tryboot = self.slot_of(parts.tryboot)?;
        Ok(BootStatus {
            default,
            trial: (tryboot != default).then_some(tryboot),
        })
    }

    fn commit_inner(&mut self, slot: Slot) -> Result<Result<(), BootError>, TrybootError> {
        let status = self.status_inner()?;
        let configured = status.trial.unwrap_or(status.default);
        if configured != slot {
            return Ok(Err(BootError::NotOnTrial {
                asked: slot,
                found: configured,
            }));
        }
        if let Some(running) = self.booted_slot()?
            && running != slot
        {
            return Ok(Err(BootError::NotOnTrial {
                asked: slot,
                found: running,
            }));
        }
        self.set(slot, slot)?;
        Ok(Ok(()))
    }
}

impl<I: Io> AbBootloader for RpiTryboot<I> {
    /// Points `[tryboot]` at `slot`; `[all]` keeps the committed slot. The shell must then
    /// reboot with [`REBOOT_ARG`].
    fn arm_trial(&mut self, slot: Slot) -> Result<(), BootError> {
        let status = self.status_inner()?;
        Ok(self.set(status.default, slot)?)
    }

    /// Makes `slot` the partition of both sections. Refused unless `slot` is the armed trial
    /// (or, with none armed, already the default: commit is idempotent) and, with a device
    /// tree, is running now.
    fn commit(&mut self, slot: Slot) -> Result<(), BootError> {
        self.commit_inner(slot)?
    }

    /// Points both sections at `keep`.
    fn abort_trial(&mut self, keep: Slot) -> Result<(), BootError> {
        Ok(self.set(keep, keep)?)
    }

    /// `default` is the `[all]` slot; `trial` the `[tryboot]` slot when it differs: armed, or
    /// running on trial, until commit or abort (the firmware's one-shot flag is not visible
    /// in the file; [`RpiTryboot::boot_info`] reports it for the running boot).
    fn status(&mut self) -> Result<BootStatus, BootError> {
        Ok(self.status_inner()?)
    }

    /// The device tree's `partition` (the firmware's record of this boot; the trial partition
    /// is only ever reached with the one-shot `tryboot` flag, since `[all]` names the committed
    /// one); without a device tree, the `[all]` default.
    fn booted(&mut self) -> Result<Booted, BootError> {
        if let Some(slot) = self.booted_slot()? {
            return Ok(Booted {
                slot,
                evidence: Evidence::Firmware,
            });
        }
        Ok(Booted {
            slot: self.status_inner()?.default,
            evidence: Evidence::Default,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::FaultyIo;

    const PARTS: RpiPartitions = RpiPartitions { a: 2, b: 3 };

    fn backend(text: &[u8]) -> (FaultyIo, RpiTryboot<FaultyIo>) {
        let io = FaultyIo::new();
        io.add_file("/boot/autoboot/autoboot.txt", text);
        let b = RpiTryboot::new(io.clone(), "/boot/autoboot/autoboot.txt", PARTS).unwrap();
        (io, b)
    }

    #[test]
    fn partition_devices() {
        assert_eq!(partition_device("/dev/mmcblk0", 1), "/dev/mmcblk0p1");
        assert_eq!(partition_device("/dev/nvme0n1", 2), "/dev/nvme0n1p2");
        assert_eq!(partition_device("/dev/sda", 3), "/dev/sda3");
    }

    #[test]
    fn bad_partitions_are_refused() {
        for (a, b) in [(2, 2), (0, 3), (2, 64)] {
            assert!(RpiTryboot::new(FaultyIo::new(), "/x", RpiPartitions { a, b }).is_err());
        }
    }

    #[test]
    fn arm_commit_abort_edit_only_the_values() {
        let text =
            b"# tugboot A/B\n[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=2\n";
        let (io, mut b) = backend(text);
        let path = Path::new("/boot/autoboot/autoboot.txt");
        assert_eq!(
            b.status().unwrap(),
            BootStatus {
                default: Slot::A,
                trial: None
            }
        );
        b.arm_trial(Slot::B).unwrap();
        assert_eq!(
            io.durable_contents(path).unwrap(),
            b"# tugboot A/B\n[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"
        );
        let steps = io.steps();
        // Like U-Boot and GRUB: while B is armed only B can be committed.
        assert!(matches!(
            b.commit(Slot::A),
            Err(BootError::NotOnTrial {
                asked: Slot::A,
                found: Slot::B
            })
        ));
        assert_eq!(io.steps(), steps);
        b.commit(Slot::B).unwrap();
        let steps = io.steps();
        b.commit(Slot::B).unwrap();
        assert_eq!(io.steps(), steps, "a repeated commit writes nothing");
        assert_eq!(
            io.durable_contents(path).unwrap(),
            b"# tugboot A/B\n[all]\ntryboot_a_b=1\nboot_partition=3\n[tryboot]\nboot_partition=3\n"
        );
        b.arm_trial(Slot::A).unwrap();
        b.abort_trial(Slot::B).unwrap();
        assert_eq!(
            b.status().unwrap(),
            BootStatus {
                default: Slot::B,
                trial: None
            }
        );
    }

    #[test]
    fn commit_of_a_slot_neither_armed_nor_committed_is_refused() {
        let (io, mut b) =
            backend(b"[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=2\n");
        let steps = io.steps();
        assert!(matches!(
            b.commit(Slot::B),
            Err(BootError::NotOnTrial {
                asked: Slot::B,
                found: Slot::A
            })
        ));
        assert_eq!(io.steps(), steps, "nothing written");
    }

    #[test]
    fn foreign_partitions_and_garbage_are_never_overwritten() {
        for text in [
            &b"[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=5\n"[..],
            b"[all]\nboot_partition=2\n",
            b"\xff\xfe garbage [",
        ] {
            let (io, mut b) = backend(text);
            assert!(b.arm_trial(Slot::B).is_err());
            assert!(b.abort_trial(Slot::A).is_err());
            assert_eq!(io.steps(), 0);
        }
    }

    #[test]
    fn power_cut_at_every_step_leaves_old_or_new() {
        use crate::io::LossMode;
        let idle_a = &b"[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=2\n"[..];
        let armed_b = &b"[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"[..];
        let idle_b = &b"[all]\ntryboot_a_b=1\nboot_partition=3\n[tryboot]\nboot_partition=3\n"[..];
        type Op = fn(&mut RpiTryboot<FaultyIo>) -> Result<(), BootError>;
        let ops: [(&str, &[u8], &[u8], Op); 3] = [
            ("arm", idle_a, armed_b, |b| b.arm_trial(Slot::B)),
            ("commit", armed_b, idle_b, |b| b.commit(Slot::B)),
            ("abort", armed_b, idle_a, |b| b.abort_trial(Slot::A)),
        ];
        let path = Path::new("/boot/autoboot/autoboot.txt");
        for mode in [LossMode::DropUnsynced, LossMode::KeepWrites] {
            for (name, old, new, op) in ops {
                let mut completed_at = None;
                for n in 0..8 {
                    let (io, mut b) = backend(old);
                    io.set_loss_mode(mode);
                    io.cut_power_after(n);
                    let result = op(&mut b);
                    io.power_cycle();
                    let got = io.contents(path).unwrap();
                    assert!(got == old || got == new, "{name} cut {n} {mode:?}: {got:?}");
                    if result.is_ok() {
                        assert_eq!(got, new, "{name} cut {n}: Ok but not durable");
                        completed_at.get_or_insert(n);
                    }
                }
                assert_eq!(
                    completed_at,
                    Some(5),
                    "{name}: create, write, sync, rename, sync_dir"
                );
            }
        }
    }
}
