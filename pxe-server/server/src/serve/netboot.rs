//! Second-stage boot files over TFTP, for firmware that does not run iPXE (arm64 UEFI, U-Boot).
//!
//! Debian ships no arm64 iPXE, so arm64 machines boot a loader that only speaks TFTP and read a
//! per-machine configuration the server generates (docs/netboot.md):
//!
//! - **GRUB** (AAVMF/UEFI, `grubnetaa64.efi` with prefix `(tftp)/grub`) asks for
//!   `grub/grub.cfg-01-<mac>` first (then the IP in hex, then `grub/grub.cfg`); the MAC form is
//!   answered with `linux`/`initrd` lines naming the image's artifacts by digest.
//! - **U-Boot** runs the DHCP boot file `boot.scr.uimg`, a generic script (legacy image header,
//!   `mkimage -T script` format) that runs `pxe get` + `pxe boot`; `pxe get` asks for
//!   `pxelinux.cfg/01-<mac>`, answered with a PXELINUX-style label.
//! - Both then read `artifacts/sha256/<hex>`: an artifact of a *published* image, from the blob
//!   store (anything else falls through to the TFTP root, where it is normally not found).
//!
//! Everything here except [`NetbootFiles`] (locks, blob reads) is pure: paths in, text or
//! bytes out.
//! The machine is identified by the MAC in the requested path (no lease lookup needed), its
//! profile resolved with the same [`ProfileSet`] and [`Published`] rules as the HTTP side.

use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};

use tugboot_boards::Catalog;
use tugboot_firmware::{BlobStore, Role, Sha256Digest, VerifiedManifest};
use tugboot_http::profiles::{Mac, Template};
use tugboot_http::{Facts, KernelCmdline, ProfileSet, PublishError, Published, PublishedImage};
use tugboot_tftp::{FileProvider, Generated};

/// The directory GRUB's prefix names (`grub-mkimage -p '(tftp)/grub'`, tests/fetch-arm64).
pub const GRUB_DIR: &str = "grub";
/// The DHCP boot file for U-Boot (`[dhcp.boot] uboot_arm64`, board `qemu-arm64-uboot`).
pub const UBOOT_SCRIPT: &str = "boot.scr.uimg";
/// Where published artifacts are read, by hex SHA-256.
pub const ARTIFACT_DIR: &str = "artifacts/sha256";
/// Length of the name field of a legacy U-Boot image header.
const UIMAGE_NAME_LEN: usize = 32;
/// Size of a legacy U-Boot image header.
pub const UIMAGE_HEADER_LEN: usize = 64;
/// Largest script put into a U-Boot script image (U-Boot's own limit is its load area).
pub const MAX_UBOOT_SCRIPT: usize = 64 * 1024;

/// Why a boot configuration cannot be generated for a machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NetbootError {
    #[error("no profile for this machine ({0})")]
    NoProfile(String),
    #[error("profile {0} boots from the local disk, not over the network")]
    LocalBoot(String),
    #[error("profile {0} names no image")]
    NoImage(String),
    #[error("image {0} is not published")]
    NotPublished(String),
    #[error("image {name} v{version} has no kernel")]
    NoKernel { name: String, version: u64 },
    #[error("command line: {0}")]
    Cmdline(String),
    #[error("command line character {0:?} cannot be passed through GRUB or U-Boot")]
    UnsafeChar(char),
    #[error("U-Boot script is {len} bytes, the limit is {limit}")]
    ScriptTooLong { len: usize, limit: usize },
}

/// What a TFTP path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootRequest {
    /// `grub/grub.cfg-01-aa-bb-cc-dd-ee-ff` (Ethernet, hardware type 01).
    GrubConfig(Mac),
    /// `pxelinux.cfg/01-aa-bb-cc-dd-ee-ff`.
    PxelinuxConfig(Mac),
    /// `boot.scr.uimg`.
    UbootScript,
    /// `artifacts/sha256/<64 lowercase hex>`.
    Artifact(Sha256Digest),
}

/// `01-aa-bb-cc-dd-ee-ff` (lower or upper case hex) → the MAC.
fn pxe_mac(s: &str) -> Option<Mac> {
    let rest = s.strip_prefix("01-")?;
    let mut out = [0u8; 6];
    let mut parts = rest.split('-');
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(Mac(out))
}

/// Classifies a normalised TFTP path (relative, `/`-separated: `tugboot_tftp::CleanPath`).
/// Anything else is `None` and falls through to the TFTP root.
#[must_use]
pub fn classify(path: &str) -> Option<BootRequest> {
    if path == UBOOT_SCRIPT {
        return Some(BootRequest::UbootScript);
    }
    if let Some(name) = path
        .strip_prefix(GRUB_DIR)
        .and_then(|p| p.strip_prefix("/grub.cfg-"))
    {
        return pxe_mac(name).map(BootRequest::GrubConfig);
    }
    if let Some(name) = path.strip_prefix("pxelinux.cfg/") {
        return pxe_mac(name).map(BootRequest::PxelinuxConfig);
    }
    let hex = path.strip_prefix(ARTIFACT_DIR)?.strip_prefix('/')?;
    // Lowercase only: one name per blob (the store's own spelling).
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    hex.parse().ok().map(BootRequest::Artifact)
}

/// A resolved network boot: what a loader configuration names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPlan {
    pub kernel: Sha256Digest,
    pub initrd: Option<Sha256Digest>,
    /// Validated for iPXE ([`KernelCmdline`]) and for GRUB/U-Boot ([`check_loader_cmdline`]).
    pub cmdline: String,
    /// `machine ... profile ... image ... vN`, for the comment line.
    pub comment: String,
}

/// GRUB single-quotes the command line and U-Boot's PXELINUX parser expands `${...}` in
/// `APPEND`: quotes, backslashes, `$` and backquotes are refused (on top of [`KernelCmdline`]'s
/// rules), so no text of ours or a profile's can become loader syntax.
pub fn check_loader_cmdline(cmdline: &str) -> Result<(), NetbootError> {
    match cmdline.chars().find(|c| {
        matches!(c, '\'' | '"' | '\\' | '$' | '`') || !(c.is_ascii_graphic() || *c == ' ')
    }) {
        Some(c) => Err(NetbootError::UnsafeChar(c)),
        None => Ok(()),
    }
}

/// Text safe inside a GRUB single-quoted word or a U-Boot `echo`: printable ASCII, without
/// quotes, backslashes, `$`, `;` or backquotes, at most 200 characters.
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

/// The GRUB configuration that boots `plan` (all paths on the TFTP server GRUB came from).
#[must_use]
pub fn render_grub(plan: &BootPlan) -> String {
    // One single-quoted word per parameter: GRUB expands nothing inside single quotes, and it
    // joins the words with spaces (a word *containing* a space it would pass in double quotes,
    // which Linux reads as one parameter: the command line has none, KernelCmdline splits it).
    let args: String = plan
        .cmdline
        .split(' ')
        .filter(|t| !t.is_empty())
        .map(|t| format!(" '{t}'"))
        .collect();
    let mut s = format!(
        "# tugboot: {}\nset timeout=0\necho 'tugboot: loading kernel'\nlinux /{ARTIFACT_DIR}/{}{args}\n",
        sanitize_message(&plan.comment),
        plan.kernel,
    );
    if let Some(initrd) = &plan.initrd {
        s.push_str(&format!(
            "echo 'tugboot: loading initrd'\ninitrd /{ARTIFACT_DIR}/{initrd}\n"
        ));
    }
    s.push_str("boot\n");
    s
}

/// The GRUB configuration for a machine that cannot boot: says why, waits, reboots.
#[must_use]
pub fn render_grub_error(reason: &str, retry_secs: u32) -> String {
    format!(
        "# tugboot: cannot boot\necho 'tugboot: {}'\necho 'tugboot: rebooting in {retry_secs} s'\nsleep {retry_secs}\nreboot\n",
        sanitize_message(reason)
    )
}

/// The PXELINUX-style configuration U-Boot's `pxe get`/`pxe boot` read. Paths are relative to
/// the boot file's directory (the TFTP root for `boot.scr.uimg`). Without an `FDT` line U-Boot
/// passes `${fdt_addr}` (QEMU's own device tree, or the board's) to `booti`.
#[must_use]
pub fn render_pxelinux(plan: &BootPlan) -> String {
    let mut s = format!(
        "# tugboot: {}\ndefault tugboot\nprompt 0\ntimeout 0\n\nlabel tugboot\n  kernel {ARTIFACT_DIR}/{}\n",
        sanitize_message(&plan.comment),
        plan.kernel
    );
    if let Some(initrd) = &plan.initrd {
        s.push_str(&format!("  initrd {ARTIFACT_DIR}/{initrd}\n"));
    }
    if !plan.cmdline.is_empty() {
        s.push_str(&format!("  append {}\n", plan.cmdline));
    }
    s
}

/// The U-Boot script behind `boot.scr.uimg`: the same for every machine, which is then known
/// by the MAC in `pxe get`'s request. On failure it says so and resets after a pause (the DHCP
/// boot runs again, as iPXE's retry does).
#[must_use]
pub fn uboot_script_text(retry_secs: u32) -> String {
    format!(
        "echo tugboot: PXELINUX configuration for ${{ethaddr}}\n\
         if pxe get; then pxe boot; fi\n\
         echo tugboot: no network boot configuration for ${{ethaddr}}, resetting in {retry_secs} s\n\
         sleep {retry_secs}\n\
         reset\n"
    )
}

/// CRC-32 (IEEE 802.3, reflected, as zlib and U-Boot compute it). Headers and scripts are
/// small, so a bitwise loop is enough.
#[must_use]
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffff_u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

/// A legacy U-Boot image of type "script" (what `mkimage -A arm64 -O linux -T script -C none
/// -n NAME -d FILE` writes with `SOURCE_DATE_EPOCH=0`): the 64-byte big-endian header
/// (magic 0x27051956, header CRC, time, size, load, entry, data CRC, OS, arch, type,
/// compression, name), then the multi-file table (the script's length, a zero terminator),
/// then the script. `time` is the header's timestamp (seconds since 1970).
pub fn uimage_script(name: &str, script: &str, time: u32) -> Result<Vec<u8>, NetbootError> {
    let too_long = || NetbootError::ScriptTooLong {
        len: script.len(),
        limit: MAX_UBOOT_SCRIPT,
    };
    if script.len() > MAX_UBOOT_SCRIPT {
        return Err(too_long());
    }
    let script_len = u32::try_from(script.len()).map_err(|_| too_long())?;
    let mut data = Vec::with_capacity(8 + script.len());
    data.extend_from_slice(&script_len.to_be_bytes());
    data.extend_from_slice(&0u32.to_be_bytes());
    data.extend_from_slice(script.as_bytes());
    let data_len = u32::try_from(data.len()).map_err(|_| too_long())?;

    let mut h = [0u8; UIMAGE_HEADER_LEN];
    h[0..4].copy_from_slice(&0x2705_1956_u32.to_be_bytes());
    // 4..8: header CRC, computed over the header with this field zero.
    h[8..12].copy_from_slice(&time.to_be_bytes());
    h[12..16].copy_from_slice(&data_len.to_be_bytes());
    // 16..20 load address, 20..24 entry point: 0 for scripts.
    h[24..28].copy_from_slice(&crc32(&data).to_be_bytes());
    h[28] = 5; // IH_OS_LINUX
    h[29] = 22; // IH_ARCH_ARM64
    h[30] = 6; // IH_TYPE_SCRIPT
    h[31] = 0; // IH_COMP_NONE
    let name = name.as_bytes();
    // NUL-terminated when shorter; mkimage truncates at the field size.
    let n = name.len().min(UIMAGE_NAME_LEN);
    h[32..32 + n].copy_from_slice(&name[..n]);
    let hcrc = crc32(&h);
    h[4..8].copy_from_slice(&hcrc.to_be_bytes());

    let mut out = Vec::with_capacity(UIMAGE_HEADER_LEN + data.len());
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    Ok(out)
}

/// What a machine boots: its profile resolved like the HTTP side does (docs/http.md), the
/// board's console first, then the image's command line, then the profile's.
pub fn plan_for(
    mac: Mac,
    profiles: &ProfileSet,
    published: &Published,
    catalog: &Catalog,
) -> Result<BootPlan, NetbootError> {
    let facts = Facts {
        mac: Some(mac),
        ..Facts::default()
    };
    let res = profiles
        .resolve(&facts)
        .ok_or_else(|| NetbootError::NoProfile(format!("mac {mac}")))?;
    let profile = &res.profile.name;
    if res.profile.template == Template::Local {
        return Err(NetbootError::LocalBoot(profile.clone()));
    }
    let image_ref = res
        .profile
        .image
        .as_ref()
        .ok_or_else(|| NetbootError::NoImage(profile.clone()))?;
    let image = published
        .image(image_ref)
        .ok_or_else(|| NetbootError::NotPublished(image_ref.to_string()))?;
    let m = &image.manifest;
    let kernel = image
        .artifact_digest(Role::Kernel)
        .ok_or_else(|| NetbootError::NoKernel {
            name: m.name.clone(),
            version: m.version,
        })?;
    let mut cmdline = KernelCmdline::default();
    let bad = |what: &str, e: &dyn std::fmt::Display| NetbootError::Cmdline(format!("{what}: {e}"));
    if let Some(board) = res.board.and_then(|b| catalog.get(b)) {
        cmdline
            .append(&board.kernel.console_args())
            .map_err(|e| bad(&format!("board {} console", board.name), &e))?;
        if let Some(extra) = &board.kernel.cmdline {
            cmdline
                .append(extra)
                .map_err(|e| bad(&format!("board {}", board.name), &e))?;
        }
    }
    cmdline
        .append(image.cmdline.as_str())
        .map_err(|e| bad("image", &e))?;
    let part = res
        .cmdline(&facts)
        .map_err(|e| bad(&format!("profile {profile}"), &e))?;
    cmdline
        .append(part.as_str())
        .map_err(|e| bad(&format!("profile {profile}"), &e))?;
    check_loader_cmdline(cmdline.as_str())?;
    let who = res
        .machine
        .map_or_else(|| format!("mac {mac}"), |mm| mm.display_name());
    Ok(BootPlan {
        kernel,
        initrd: image.artifact_digest(Role::Initrd),
        cmdline: cmdline.as_str().to_owned(),
        comment: format!(
            "machine {who} profile {profile} image {} v{}",
            m.name, m.version
        ),
    })
}

/// The TFTP server's [`FileProvider`]: generated loader configurations and published artifacts.
///
/// Holds its own view of the published images and profiles, kept in step with the HTTP
/// server's by `serve` (both are updated from the same verified manifests and profiles file).
#[derive(Debug)]
pub struct NetbootFiles {
    blobs: BlobStore,
    published: RwLock<Published>,
    profiles: RwLock<Arc<ProfileSet>>,
    catalog: Catalog,
    retry_secs: u32,
}

impl NetbootFiles {
    #[must_use]
    pub fn new(blobs: BlobStore, profiles: ProfileSet, catalog: Catalog, retry_secs: u32) -> Self {
        NetbootFiles {
            blobs,
            published: RwLock::new(Published::new()),
            profiles: RwLock::new(Arc::new(profiles)),
            catalog,
            retry_secs,
        }
    }

    /// Adds an image that the HTTP side has published (same manifest, same command line).
    pub fn publish(&self, image: &PublishedImage) -> Result<(), PublishError> {
        let manifest: VerifiedManifest = image.manifest.clone();
        self.published
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(manifest, image.cmdline.clone())
            .map(drop)
    }

    pub fn set_profiles(&self, profiles: ProfileSet) {
        *self
            .profiles
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(profiles);
    }

    fn plan(&self, mac: Mac) -> Result<BootPlan, NetbootError> {
        let profiles = Arc::clone(&self.profiles.read().unwrap_or_else(PoisonError::into_inner));
        let published = self
            .published
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        plan_for(mac, &profiles, &published, &self.catalog)
    }

    /// The bytes of a published artifact, read whole (see docs/netboot.md: the TFTP provider
    /// hook takes in-memory files). `None` when not published, missing or of the wrong size.
    fn artifact(&self, digest: &Sha256Digest) -> Option<Vec<u8>> {
        let size = self
            .published
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .artifact_size(digest)?;
        let path = self.blobs.path(digest);
        let mut bytes = Vec::new();
        let read = std::fs::File::open(&path)
            .and_then(|f| f.take(size.saturating_add(1)).read_to_end(&mut bytes));
        match read {
            Ok(_) if u64::try_from(bytes.len()).ok() == Some(size) => Some(bytes),
            Ok(n) => {
                tracing::error!(%digest, size, read = n, "stored blob does not have its published size; not serving it");
                None
            }
            Err(e) => {
                tracing::error!(%digest, error = %e, "cannot read published blob");
                None
            }
        }
    }
}

impl FileProvider for NetbootFiles {
    fn lookup(&self, peer: SocketAddr, path: &str) -> Option<Generated> {
        match classify(path)? {
            BootRequest::UbootScript => {
                let script = uboot_script_text(self.retry_secs);
                match uimage_script("tugboot", &script, 0) {
                    Ok(bytes) => Some(Generated::new(bytes)),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot build the U-Boot script");
                        None
                    }
                }
            }
            BootRequest::GrubConfig(mac) => Some(Generated::from(match self.plan(mac) {
                Ok(plan) => {
                    tracing::info!(%peer, %mac, plan = %plan.comment, "grub config");
                    render_grub(&plan)
                }
                Err(e) => {
                    tracing::warn!(%peer, %mac, reason = %e, "grub config: cannot boot");
                    render_grub_error(&e.to_string(), self.retry_secs)
                }
            })),
            BootRequest::PxelinuxConfig(mac) => match self.plan(mac) {
                Ok(plan) => {
                    tracing::info!(%peer, %mac, plan = %plan.comment, "pxelinux config");
                    Some(Generated::from(render_pxelinux(&plan)))
                }
                Err(e) => {
                    // Not found: U-Boot tries its other names, then the script says why.
                    tracing::warn!(%peer, %mac, reason = %e, "pxelinux config: cannot boot");
                    None
                }
            },
            BootRequest::Artifact(digest) => {
                let bytes = self.artifact(&digest);
                if bytes.is_none() {
                    tracing::debug!(%peer, %digest, "artifact not published");
                }
                bytes.map(Generated::new)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = Mac([0x52, 0x54, 0x00, 0x12, 0x34, 0x01]);

    fn digest(byte: u8) -> Sha256Digest {
        format!("{byte:02x}").repeat(32).parse().expect("digest")
    }

    fn plan() -> BootPlan {
        BootPlan {
            kernel: digest(0xab),
            initrd: Some(digest(0xcd)),
            cmdline: "console=ttyAMA0,115200n8 panic=-1".into(),
            comment: "machine vm1 profile p image edge v7".into(),
        }
    }

    #[test]
    fn paths_are_classified_and_everything_else_falls_through() {
        assert_eq!(
            classify("grub/grub.cfg-01-52-54-00-12-34-01"),
            Some(BootRequest::GrubConfig(MAC))
        );
        // GRUB prints the MAC in lower case; upper case is the same machine.
        assert_eq!(
            classify("grub/grub.cfg-01-52-54-00-12-34-0A"),
            Some(BootRequest::GrubConfig(Mac([
                0x52, 0x54, 0, 0x12, 0x34, 0x0a
            ])))
        );
        assert_eq!(
            classify("pxelinux.cfg/01-52-54-00-12-34-01"),
            Some(BootRequest::PxelinuxConfig(MAC))
        );
        assert_eq!(classify("boot.scr.uimg"), Some(BootRequest::UbootScript));
        let hex = "ab".repeat(32);
        assert_eq!(
            classify(&format!("artifacts/sha256/{hex}")),
            Some(BootRequest::Artifact(digest(0xab)))
        );
        for other in [
            "grub/grub.cfg",
            "grub/grub.cfg-0A4D0064",
            "grub/arm64-efi/command.lst",
            "grub/grub.cfg-01-52-54-00-12-34",
            "grub/grub.cfg-01-52-54-00-12-34-01-02",
            "grub/grub.cfg-01-52-54-00-12-34-1",
            "grub/grub.cfg-01-52-54-00-12-34-zz",
            "grub/grub.cfg-06-52-54-00-12-34-01",
            "other/grub.cfg-01-52-54-00-12-34-01",
            "pxelinux.cfg/default",
            "pxelinux.cfg/0A4D0064",
            "sub/boot.scr.uimg",
            "grubnetaa64.efi",
            &format!("artifacts/sha256/{}", "AB".repeat(32)),
            &format!("artifacts/sha256/{}", "ab".repeat(31)),
            &format!("artifacts/sha256/{}/x", "ab".repeat(32)),
            "artifacts/sha256/",
        ] {
            assert_eq!(classify(other), None, "{other}");
        }
    }

    #[test]
    fn grub_config_loads_kernel_and_initrd_by_digest_with_one_word_per_parameter() {
        let expected = format!(
            "# tugboot: machine vm1 profile p image edge v7\n\
             set timeout=0\n\
             echo 'tugboot: loading kernel'\n\
             linux /artifacts/sha256/{k} 'console=ttyAMA0,115200n8' 'panic=-1'\n\
             echo 'tugboot: loading initrd'\n\
             initrd /artifacts/sha256/{i}\n\
             boot\n",
            k = "ab".repeat(32),
            i = "cd".repeat(32)
        );
        assert_eq!(render_grub(&plan()), expected);
        let no_initrd = BootPlan {
            initrd: None,
            cmdline: String::new(),
            ..plan()
        };
        let text = render_grub(&no_initrd);
        assert!(text.contains(&format!("linux /artifacts/sha256/{}\n", "ab".repeat(32))));
        assert!(!text.contains("initrd"), "{text}");
    }

    #[test]
    fn grub_error_config_cannot_be_escaped_by_the_reason() {
        let text = render_grub_error("image 'x'; reboot $foo \\ \"q\"\nline", 7);
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
    fn pxelinux_config_names_artifacts_relative_to_the_boot_file() {
        let expected = format!(
            "# tugboot: machine vm1 profile p image edge v7\n\
             default tugboot\n\
             prompt 0\n\
             timeout 0\n\
             \n\
             label tugboot\n  kernel artifacts/sha256/{k}\n  initrd artifacts/sha256/{i}\n  append console=ttyAMA0,115200n8 panic=-1\n",
            k = "ab".repeat(32),
            i = "cd".repeat(32)
        );
        assert_eq!(render_pxelinux(&plan()), expected);
    }

    #[test]
    fn loader_cmdline_refuses_quotes_expansion_and_controls() {
        assert_eq!(
            check_loader_cmdline("console=ttyAMA0 root=/dev/vda1 a;b #c"),
            Ok(())
        );
        for (bad, c) in [
            ("a='b'", '\''),
            ("a=\"b\"", '"'),
            ("x=${y}", '$'),
            ("x=$y", '$'),
            ("x=\\n", '\\'),
            ("x=`id`", '`'),
            ("x=\u{e9}", '\u{e9}'),
            ("x\ty", '\t'),
        ] {
            assert_eq!(
                check_loader_cmdline(bad),
                Err(NetbootError::UnsafeChar(c)),
                "{bad}"
            );
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn uimage_script_header_fields() {
        let script = "echo hi\n";
        let img = uimage_script("tugboot", script, 0x1122_3344).expect("image");
        assert_eq!(img.len(), UIMAGE_HEADER_LEN + 8 + script.len());
        let be = |at: usize| u32::from_be_bytes(img[at..at + 4].try_into().expect("4 bytes"));
        assert_eq!(be(0), 0x2705_1956);
        assert_eq!(be(8), 0x1122_3344);
        assert_eq!(be(12), 16);
        assert_eq!(be(24), crc32(&img[64..]));
        assert_eq!(&img[28..32], &[5, 22, 6, 0]);
        assert_eq!(&img[32..40], b"tugboot\0");
        let mut header = img[..64].to_vec();
        header[4..8].fill(0);
        assert_eq!(be(4), crc32(&header));
        assert_eq!(be(64), 8);
        assert_eq!(be(68), 0);
        assert_eq!(&img[72..], script.as_bytes());
        // A name longer than the field is cut at 32 bytes, without a terminator (as mkimage).
        let long = uimage_script(&"n".repeat(40), script, 0).expect("image");
        assert_eq!(&long[32..64], "n".repeat(32).as_bytes());
        let big = "x".repeat(MAX_UBOOT_SCRIPT + 1);
        assert!(matches!(
            uimage_script("t", &big, 0),
            Err(NetbootError::ScriptTooLong { .. })
        ));
    }

    /// Byte for byte what Debian's `mkimage` writes, and `dumpimage -l` reads it back
    /// (u-boot-tools, installed by tests/setup).
    #[test]
    fn uimage_script_is_what_mkimage_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = uboot_script_text(10);
        let src = dir.path().join("boot.cmd");
        std::fs::write(&src, &script).expect("write");
        let out = dir.path().join("boot.scr.uimg");
        let status = std::process::Command::new("mkimage")
            .env("SOURCE_DATE_EPOCH", "0")
            .args(["-A", "arm64", "-O", "linux", "-T", "script", "-C", "none"])
            .args(["-n", "tugboot", "-d"])
            .arg(&src)
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run mkimage (Debian package u-boot-tools, see tests/setup)");
        assert!(status.success());
        let ours = uimage_script("tugboot", &script, 0).expect("image");
        assert_eq!(ours, std::fs::read(&out).expect("read mkimage output"));

        let ours_path = dir.path().join("ours.uimg");
        std::fs::write(&ours_path, &ours).expect("write");
        let list = std::process::Command::new("dumpimage")
            .arg("-l")
            .arg(&ours_path)
            .output()
            .expect("run dumpimage");
        let text = String::from_utf8_lossy(&list.stdout);
        assert!(list.status.success(), "{text}");
        assert!(text.contains("Image Name:   tugboot"), "{text}");
        assert!(
            text.contains("AArch64 Linux Script (uncompressed)"),
            "{text}"
        );
        assert!(
            text.contains(&format!("Image 0: {} Bytes", script.len())),
            "{text}"
        );
    }

    #[test]
    fn uboot_script_runs_pxe_and_resets_on_failure() {
        let s = uboot_script_text(5);
        assert!(s.contains("if pxe get; then pxe boot; fi\n"), "{s}");
        assert!(s.ends_with("sleep 5\nreset\n"), "{s}");
    }

    fn profiles(text: &str) -> ProfileSet {
        ProfileSet::from_toml(text).expect("profiles")
    }

    #[test]
    fn plans_fail_with_the_reason_when_a_machine_cannot_boot() {
        let published = Published::new();
        let catalog = Catalog::builtin();
        let none = plan_for(MAC, &profiles(""), &published, &catalog);
        assert_eq!(
            none,
            Err(NetbootError::NoProfile("mac 52:54:00:12:34:01".into()))
        );
        let local = profiles("default_profile = \"d\"\n[profiles.d]\ntemplate = \"local\"\n");
        assert_eq!(
            plan_for(MAC, &local, &published, &catalog),
            Err(NetbootError::LocalBoot("d".into()))
        );
        let unpublished = profiles("default_profile = \"d\"\n[profiles.d]\nimage = \"edge\"\n");
        assert!(matches!(
            plan_for(MAC, &unpublished, &published, &catalog),
            Err(NetbootError::NotPublished(_))
        ));
    }

    /// Odd names (non-ASCII inside the hex, empty fields) are refused, never a panic.
    #[test]
    fn classify_never_panics_on_odd_names() {
        for name in [
            "",
            "/",
            "grub/grub.cfg-",
            "grub/grub.cfg-01-",
            "grub/grub.cfg-01-----",
            "pxelinux.cfg/01-\u{e9}\u{e9}-00-00-00-00-00",
            "artifacts/sha256/\u{e9}",
            "artifacts/sha256/+b",
        ] {
            assert_eq!(classify(name), None, "{name:?}");
        }
    }
}
