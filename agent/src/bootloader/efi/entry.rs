//! The installer's boot entry: one `Boot####` "tugboot" starting the ESP's loader
//! (`HD(1,GPT,<ESP GUID>,<start>,<size>)/File(\EFI\BOOT\BOOTX64.EFI)`), first in `BootOrder`.
//! What `efibootmgr -c -d /dev/vda -p 1 -L tugboot -l '\EFI\BOOT\BOOTX64.EFI'` does, without
//! efibootmgr in the installer.
//!
//! [`plan`] is the sans-IO decision (which number, which order); [`install`] reads and writes
//! efivarfs (the entry first, then `BootOrder`: a power loss between leaves an entry nothing
//! boots, never a `BootOrder` naming a missing one). Installing again (a reinstall with a new
//! ESP GUID) reuses the entry with the same description and loader instead of adding one per
//! install.

use super::bootnext::{EfiError, MAX_BOOT_ENTRIES, MAX_BOOT_ORDER};
use super::efivarfs::{Efivarfs, Variable, boot_entry_name};
use super::load_option::{self, DevicePathNode, HardDrive, LoadOption};

/// Where the entry goes and what `BootOrder` becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPlan {
    /// The `Boot####` number.
    pub number: u16,
    /// Whether an entry of the same description and loader is replaced.
    pub replaces: bool,
    /// The new `BootOrder`: the entry first, then the old order without it.
    pub order: Vec<u16>,
}

/// The device path of a loader on a GPT partition: `HD(number,GPT,guid,start,size)` (LBAs of
/// the disk's logical sectors; `guid` in on-disk byte order), `File(loader)`, end.
#[must_use]
pub fn gpt_loader_path(
    partition_number: u32,
    start: u64,
    size: u64,
    guid: [u8; 16],
    loader: &str,
) -> Vec<DevicePathNode> {
    vec![
        DevicePathNode::HardDrive(HardDrive {
            partition_number,
            start,
            size,
            signature: guid,
            format: 0x02,
            signature_type: 0x02,
        }),
        DevicePathNode::FilePath(loader.replace('/', "\\").encode_utf16().collect()),
        DevicePathNode::EndEntire,
    ]
}

fn same_loader(a: &str, b: &str) -> bool {
    let n = |p: &str| {
        p.replace('/', "\\")
            .trim_start_matches('\\')
            .to_ascii_lowercase()
    };
    n(a) == n(b)
}

/// Decides where `new` goes: the first existing entry with the same description and loader
/// is replaced; otherwise the lowest number neither used by a variable nor listed in
/// `BootOrder`. `existing` are the `Boot####` variables (`None`: one that does not parse, which
/// keeps its number).
///
/// # Errors
/// [`EfiError::BootOrderTooLong`] when every number is taken (impossible in practice).
pub fn plan(
    existing: &[(u16, Option<LoadOption>)],
    order: &[u16],
    new: &LoadOption,
) -> Result<EntryPlan, EfiError> {
    let loader = new.file_path().unwrap_or_default();
    let reuse = existing.iter().find_map(|(n, o)| {
        let o = o.as_ref()?;
        (o.description == new.description
            && o.file_path().is_some_and(|p| same_loader(&p, &loader)))
        .then_some(*n)
    });
    let (number, replaces) = match reuse {
        Some(n) => (n, true),
        None => {
            let taken = |n: u16| existing.iter().any(|(e, _)| *e == n) || order.contains(&n);
            let free = (0..=u16::MAX)
                .find(|n| !taken(*n))
                .ok_or(EfiError::BootOrderTooLong {
                    len: order.len(),
                    max: MAX_BOOT_ORDER,
                })?;
            (free, false)
        }
    };
    let mut new_order = vec![number];
    new_order.extend(order.iter().copied().filter(|n| *n != number));
    Ok(EntryPlan {
        number,
        replaces,
        order: new_order,
    })
}

/// Creates (or replaces, see [`plan`]) the entry `description` booting `path`, active, with
/// NV+BS+RT attributes, and puts it first in `BootOrder`. Returns the plan carried out.
///
/// # Errors
/// efivarfs errors (the immutable flag of existing variables is cleared by
/// [`Efivarfs::write`]), a malformed `BootOrder`, a description or path that cannot be
/// encoded.
pub fn install(
    vars: &Efivarfs,
    description: &str,
    path: &[DevicePathNode],
) -> Result<EntryPlan, EfiError> {
    let option = LoadOption::new(description, path).map_err(|source| EfiError::LoadOption {
        name: "new boot entry".into(),
        source,
    })?;
    let mut existing = Vec::new();
    for n in vars.boot_entries(MAX_BOOT_ENTRIES)? {
        let parsed = vars
            .read(&boot_entry_name(n))?
            .and_then(|v| load_option::parse(&v.data).ok());
        existing.push((n, parsed));
    }
    let order = match vars.read("BootOrder")? {
        Some(v) => v.as_u16_list().map_err(|source| EfiError::Variable {
            name: "BootOrder",
            source,
        })?,
        None => Vec::new(),
    };
    if order.len() > MAX_BOOT_ORDER {
        return Err(EfiError::BootOrderTooLong {
            len: order.len(),
            max: MAX_BOOT_ORDER,
        });
    }
    let plan = plan(&existing, &order, &option)?;
    let bytes = option.encode().map_err(|source| EfiError::LoadOption {
        name: boot_entry_name(plan.number),
        source,
    })?;
    vars.write(&boot_entry_name(plan.number), &Variable::boot(bytes))?;
    vars.write(
        "BootOrder",
        &Variable::boot(Variable::u16_data(&plan.order)),
    )?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootloader::efi::load_option::parse;

    const GUID: [u8; 16] = [
        0x3c, 0x9a, 0x5d, 0x6e, 0x2b, 0x1f, 0x47, 0x4c, 0x9c, 0x1e, 0x8a, 0x2d, 0x61, 0x0b, 0x47,
        0x01,
    ];

    fn tugboot() -> LoadOption {
        LoadOption::new(
            "tugboot",
            &gpt_loader_path(1, 2048, 131_072, GUID, "\\EFI\\BOOT\\BOOTX64.EFI"),
        )
        .unwrap()
    }

    #[test]
    fn the_entry_in_efibootmgr_form_and_bytes() {
        let o = tugboot();
        assert_eq!(
            o.to_string(),
            "tugboot\tHD(1,GPT,6e5d9a3c-1f2b-4c47-9c1e-8a2d610b4701,0x800,0x20000)/File(\\EFI\\BOOT\\BOOTX64.EFI)"
        );
        let bytes = o.encode().unwrap();
        // Attributes ACTIVE, path list 42 + 4 + 2 * 21 + 2 + 4 = 94 bytes, "tugboot\0" in UCS-2.
        assert_eq!(&bytes[..6], &[1, 0, 0, 0, 94, 0]);
        assert_eq!(&bytes[6..22], b"t\0u\0g\0b\0o\0o\0t\0\0\0");
        assert_eq!(&bytes[22..26], &[0x04, 0x01, 42, 0]);
        assert_eq!(bytes.len(), 22 + 94);
        assert_eq!(&bytes[bytes.len() - 4..], &[0x7f, 0xff, 4, 0]);
        assert_eq!(parse(&bytes).unwrap(), o, "round trip");
        // Forward slashes become backslashes.
        let slashed = LoadOption::new(
            "tugboot",
            &gpt_loader_path(1, 2048, 131_072, GUID, "/EFI/BOOT/BOOTX64.EFI"),
        )
        .unwrap();
        assert_eq!(slashed, o);
    }

    #[test]
    fn new_number_and_order() {
        let other = LoadOption::new(
            "UEFI Shell",
            &gpt_loader_path(1, 2048, 10, [1; 16], "\\shell.efi"),
        )
        .unwrap();
        let existing = [(0, Some(other.clone())), (1, None), (3, Some(other))];
        let p = plan(&existing, &[3, 0, 2, 1], &tugboot()).unwrap();
        assert_eq!(
            p,
            EntryPlan {
                number: 4,
                replaces: false,
                order: vec![4, 3, 0, 2, 1]
            },
            "2 is in BootOrder, so it is taken too"
        );
        assert_eq!(plan(&[], &[], &tugboot()).unwrap().order, vec![0]);
        // A second install replaces its own entry (another ESP GUID, same loader).
        let old = LoadOption::new(
            "tugboot",
            &gpt_loader_path(1, 2048, 65_536, [9; 16], "\\efi\\boot\\bootx64.efi"),
        )
        .unwrap();
        let existing = [(0, None), (7, Some(old))];
        let p = plan(&existing, &[0, 7], &tugboot()).unwrap();
        assert_eq!(
            p,
            EntryPlan {
                number: 7,
                replaces: true,
                order: vec![7, 0]
            }
        );
    }
}
