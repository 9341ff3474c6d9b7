//! Renderings of one [`crate::BootPlan`] for every loader that netboots: iPXE scripts (HTTP),
//! GRUB and PXELINUX configurations and a U-Boot script image (TFTP or HTTP), and a Raspberry Pi
//! boot tree (TFTP). Pure text and bytes; where the files are served from is in
//! [`crate::netboot`].

pub mod grub;
pub mod ipxe;
pub mod pxelinux;
pub mod rpi;
pub mod uboot;

/// Where published artifacts are named, by lowercase hex SHA-256, on TFTP and HTTP alike.
pub const ARTIFACT_DIR: &str = "artifacts/sha256";

/// Text safe inside a GRUB single-quoted word, a U-Boot `echo` or a config comment: printable
/// ASCII without quotes, backslashes, `$`, `;` or backquotes, at most 200 characters.
#[must_use]
pub fn sanitize_message(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '\'' | '"' | '\\' | '$' | '`' | ';') {
                c
            } else {
                ' '
            }
        })
        .take(200)
        .collect()
}

/// A plan booting a test image with `cmdline` (and an initrd or not).
#[cfg(test)]
pub(crate) fn test_plan(cmdline: &str, initrd: bool) -> crate::BootPlan {
    use std::sync::Arc;
    let image = crate::testkit::catalogue(&[("edge", 7, "")]);
    let image = Arc::clone(image.images().next().expect("one image"));
    let l = crate::plan::LinuxBoot {
        kernel: image
            .artifact_digest(tugboot_firmware::Role::Kernel)
            .expect("kernel"),
        initrd: if initrd {
            image.artifact_digest(tugboot_firmware::Role::Initrd)
        } else {
            None
        },
        dtbs: Vec::new(),
        cmdline: crate::KernelCmdline::parse(cmdline).expect("cmdline"),
        image,
    };
    crate::BootPlan {
        machine: None,
        who: "vm1".into(),
        mac: None,
        profile: "p".into(),
        via: crate::Via::Default,
        board: None,
        action: crate::BootAction::Linux(l),
    }
}
