//! PXELINUX-style configurations, as U-Boot's `pxe get`/`pxe boot` read them.

use crate::plan::{BootAction, BootPlan};
use crate::render::{ARTIFACT_DIR, sanitize_message};

/// Where `pxe get` looks: `pxelinux.cfg/01-<mac>`.
pub const PXELINUX_DIR: &str = "pxelinux.cfg";

/// The configuration that boots `plan`; `None` when the plan is a local boot (U-Boot then
/// finds no configuration and its boot script goes on to the next boot target). Paths are
/// relative to the boot file's directory (the root for `boot.scr.uimg`). Without an `fdt` line
/// U-Boot passes `${fdt_addr}` (QEMU's own device tree, or the board's) to `booti`.
///
/// # Errors
/// The command line is unsafe for U-Boot (`${...}` is expanded in `append`).
pub fn render(plan: &BootPlan) -> Result<Option<String>, crate::cmdline::CmdlineError> {
    let BootAction::Linux(l) = &plan.action else {
        return Ok(None);
    };
    l.cmdline.check_loader()?;
    let mut s = format!(
        "# tugboot: {}\ndefault tugboot\nprompt 0\ntimeout 0\n\nlabel tugboot\n  kernel {ARTIFACT_DIR}/{}\n",
        sanitize_message(&plan.comment()),
        l.kernel
    );
    if let Some(initrd) = &l.initrd {
        s.push_str(&format!("  initrd {ARTIFACT_DIR}/{initrd}\n"));
    }
    if !l.cmdline.is_empty() {
        s.push_str(&format!("  append {}\n", l.cmdline));
    }
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::test_plan;

    #[test]
    fn names_artifacts_relative_to_the_boot_file() {
        let plan = test_plan("console=ttyAMA0,115200n8 panic=-1", true);
        let l = plan.linux().unwrap();
        let expected = format!(
            "# tugboot: {}\n\
             default tugboot\n\
             prompt 0\n\
             timeout 0\n\
             \n\
             label tugboot\n  kernel artifacts/sha256/{}\n  initrd artifacts/sha256/{}\n  append console=ttyAMA0,115200n8 panic=-1\n",
            plan.comment(),
            l.kernel,
            l.initrd.unwrap()
        );
        assert_eq!(render(&plan).unwrap().unwrap(), expected);
        assert!(render(&test_plan("x=$y", true)).is_err());
    }
}
