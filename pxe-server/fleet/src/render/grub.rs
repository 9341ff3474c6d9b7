//! GRUB configurations: per machine, an error configuration, and the dispatch configuration a
//! GRUB image with a fixed configuration path reads.
//!
//! GRUB network images built with a `(tftp)` prefix search `$prefix/grub.cfg-01-<mac>` (then
//! the IP in hex, then `$prefix/grub.cfg`); Debian's stock monolithic `grubnet*.efi` images
//! (prefix `/grub`, an embedded configuration that sources `$prefix/grub.cfg`) read
//! `grub.cfg` only, and over HTTP no GRUB searches at all. So `grub.cfg` itself is generated
//! too: when the server knows the requester's MAC from its address it is that machine's
//! configuration, otherwise [`render_dispatch`], which loads the per-MAC file by GRUB's own
//! `$net_default_mac`.

use crate::plan::{BootAction, BootPlan};
use crate::render::{ARTIFACT_DIR, sanitize_message};

/// The directory GRUB's prefix names (`(tftp)/grub`, or `/grub` on HTTP).
pub const GRUB_DIR: &str = "grub";

/// The configuration that boots `plan`. Paths are absolute on the server GRUB came from.
///
/// # Errors
/// The command line is unsafe for GRUB ([`crate::cmdline::KernelCmdline::check_loader`]).
pub fn render(plan: &BootPlan) -> Result<String, crate::cmdline::CmdlineError> {
    let comment = sanitize_message(&plan.comment());
    let BootAction::Linux(l) = &plan.action else {
        // `exit` returns to the firmware, which boots the next boot option (the disk).
        return Ok(format!(
            "# tugboot: {comment}\necho 'tugboot: booting from the next boot device'\nexit\n"
        ));
    };
    l.cmdline.check_loader()?;
    // One single-quoted word per parameter: GRUB expands nothing inside single quotes, and it
    // joins the words with spaces (a word *containing* a space it would pass in double quotes,
    // which Linux reads as one parameter: the command line has none, KernelCmdline splits it).
    let args: String = l
        .cmdline
        .as_str()
        .split(' ')
        .filter(|t| !t.is_empty())
        .map(|t| format!(" '{t}'"))
        .collect();
    let mut s = format!(
        "# tugboot: {comment}\nset timeout=0\necho 'tugboot: loading kernel'\nlinux /{ARTIFACT_DIR}/{}{args}\n",
        l.kernel,
    );
    if let Some(initrd) = &l.initrd {
        s.push_str(&format!(
            "echo 'tugboot: loading initrd'\ninitrd /{ARTIFACT_DIR}/{initrd}\n"
        ));
    }
    s.push_str("boot\n");
    Ok(s)
}

/// The configuration for a machine that cannot boot: says why, waits, reboots.
#[must_use]
pub fn render_error(reason: &str, retry_secs: u32) -> String {
    format!(
        "# tugboot: cannot boot\necho 'tugboot: {}'\necho 'tugboot: rebooting in {retry_secs} s'\nsleep {retry_secs}\nreboot\n",
        sanitize_message(reason)
    )
}

/// `grub.cfg` for a requester the server cannot tell by its address: loads the per-MAC file
/// from the same place by GRUB's own `$net_default_mac` (set by GRUB's network stack to the MAC
/// of the interface it booted from, `aa:bb:cc:dd:ee:ff`; `regexp` turns it into the
/// `01-aa-bb-...` form). `$prefix` is wherever this file came from, so TFTP and HTTP work
/// alike. Checked with Debian's stock `grubnetaa64.efi` and `grubnetx64.efi` (2.06).
#[must_use]
pub fn render_dispatch(retry_secs: u32) -> String {
    format!(
        "# tugboot: per-machine configuration by MAC\n\
         if regexp --set=1:m1 --set=2:m2 --set=3:m3 --set=4:m4 --set=5:m5 --set=6:m6 \
         '^(..):(..):(..):(..):(..):(..)$' \"$net_default_mac\"; then\n\
         \x20 configfile \"$prefix/grub.cfg-01-$m1-$m2-$m3-$m4-$m5-$m6\"\n\
         fi\n\
         echo 'tugboot: no network boot configuration for this machine (MAC unknown to GRUB)'\n\
         echo 'tugboot: rebooting in {retry_secs} s'\n\
         sleep {retry_secs}\n\
         reboot\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::test_plan;

    #[test]
    fn loads_kernel_and_initrd_by_digest_with_one_word_per_parameter() {
        let plan = test_plan("console=ttyAMA0,115200n8 panic=-1", true);
        let l = plan.linux().unwrap();
        let expected = format!(
            "# tugboot: {}\n\
             set timeout=0\n\
             echo 'tugboot: loading kernel'\n\
             linux /artifacts/sha256/{} 'console=ttyAMA0,115200n8' 'panic=-1'\n\
             echo 'tugboot: loading initrd'\n\
             initrd /artifacts/sha256/{}\n\
             boot\n",
            plan.comment(),
            l.kernel,
            l.initrd.unwrap()
        );
        assert_eq!(render(&plan).unwrap(), expected);
        let plan = test_plan("", false);
        let text = render(&plan).unwrap();
        assert!(text.contains(&format!(
            "linux /artifacts/sha256/{}\n",
            plan.linux().unwrap().kernel
        )));
        assert!(!text.contains("initrd"), "{text}");
        let plan = test_plan("a=$x", true);
        assert!(render(&plan).is_err(), "unsafe for GRUB");
    }

    #[test]
    fn error_config_cannot_be_escaped_by_the_reason() {
        let text = render_error("image 'x'; reboot $foo \\ \"q\"\nline", 7);
        assert_eq!(
            text,
            "# tugboot: cannot boot\n\
             echo 'tugboot: image  x   reboot  foo    q  line'\n\
             echo 'tugboot: rebooting in 7 s'\n\
             sleep 7\n\
             reboot\n"
        );
    }

    #[test]
    fn dispatch_reads_the_file_named_by_grubs_mac() {
        let text = render_dispatch(5);
        assert!(
            text.contains("configfile \"$prefix/grub.cfg-01-$m1-$m2-$m3-$m4-$m5-$m6\"\n"),
            "{text}"
        );
        assert!(text.contains("'^(..):(..):(..):(..):(..):(..)$' \"$net_default_mac\"; then\n"));
        assert!(text.ends_with("sleep 5\nreboot\n"));
    }
}
