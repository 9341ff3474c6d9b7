//! U-Boot: the generic boot script behind `boot.scr.uimg` (legacy image, byte-identical to
//! `mkimage -T script`), which runs `pxe get` + `pxe boot`; `pxe get` then asks for the
//! machine's PXELINUX configuration by MAC ([`crate::render::pxelinux`]).

/// The DHCP boot file for U-Boot (`[dhcp.boot] uboot_arm64`, board `qemu-arm64-uboot`).
pub const UBOOT_SCRIPT: &str = "boot.scr.uimg";
/// Length of the name field of a legacy U-Boot image header.
const UIMAGE_NAME_LEN: usize = 32;
/// Size of a legacy U-Boot image header.
pub const UIMAGE_HEADER_LEN: usize = 64;
/// Largest script put into a U-Boot script image (U-Boot's own limit is its load area).
pub const MAX_UBOOT_SCRIPT: usize = 64 * 1024;

/// A script too large for a script image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("U-Boot script is {len} bytes, the limit is {limit}")]
pub struct ScriptTooLong {
    /// Length.
    pub len: usize,
    /// Limit.
    pub limit: usize,
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
pub fn uimage_script(name: &str, script: &str, time: u32) -> Result<Vec<u8>, ScriptTooLong> {
    let too_long = || ScriptTooLong {
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

#[cfg(test)]
mod tests {
    use super::*;

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
            Err(ScriptTooLong { .. })
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
}
