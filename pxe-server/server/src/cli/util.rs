//! Small helpers shared by the commands: expiry parsing, file reading with caps, atomic writes.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use tugboot_firmware::Timestamp;

/// Reads a whole file, refusing anything larger than `limit` before reading it into memory.
pub fn read_capped(path: &Path, limit: usize) -> anyhow::Result<Vec<u8>> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > limit as u64 {
        bail!(
            "{} is {} bytes, more than the {} bytes allowed for this kind of file",
            path.display(),
            meta.len(),
            limit
        );
    }
    fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one: temp file in
/// the same directory, fsync, rename. `private` files (secret keys) get mode 0600 from creation on.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if private { 0o600 } else { 0o644 });
        }
        let mut file = opts.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if let Err(err) = result {
        let _ = fs::remove_file(&tmp);
        return Err(err).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// Refuses to clobber an existing file unless asked to.
pub fn ensure_absent(path: &Path, force: bool) -> anyhow::Result<()> {
    if !force && path.exists() {
        bail!(
            "{} already exists (use --force to overwrite)",
            path.display()
        );
    }
    Ok(())
}

/// An expiry given either as a duration from now (`90d`, `12h`, `1y`, `3600s`, `2w`) or as an
/// absolute UTC timestamp (`2027-01-01T00:00:00Z`).
pub fn parse_expiry(text: &str, now: Timestamp) -> anyhow::Result<Timestamp> {
    if let Ok(ts) = text.parse::<Timestamp>() {
        return Ok(ts);
    }
    let secs = parse_duration_secs(text).with_context(|| {
        format!("invalid expiry {text:?}: expected e.g. 90d, 12h, 1y or 2027-01-01T00:00:00Z")
    })?;
    now.checked_add_secs(secs)
        .with_context(|| format!("expiry {text:?} is too far in the future"))
}

/// A duration: a number and a unit (`s`, `m`, `h`, `d`, `w`, `y`), e.g. `90d`, `12h`.
pub fn parse_duration_secs(text: &str) -> anyhow::Result<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .context("missing unit (s, m, h, d, w, y)")?;
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().context("missing number")?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "y" => 365 * 86_400,
        _ => bail!("unknown unit {unit:?} (s, m, h, d, w, y)"),
    };
    n.checked_mul(mult).context("duration too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_durations_and_timestamps() {
        let now = Timestamp::from_unix(1_000);
        assert_eq!(parse_expiry("10s", now).unwrap().unix(), 1_010);
        assert_eq!(parse_expiry("2h", now).unwrap().unix(), 1_000 + 7_200);
        assert_eq!(
            parse_expiry("90d", now).unwrap().unix(),
            1_000 + 90 * 86_400
        );
        assert_eq!(
            parse_expiry("1970-01-02T00:00:00Z", now).unwrap().unix(),
            86_400
        );
        for bad in ["", "d", "10", "10x", "-1d", "1.5d", "99999999999999999999d"] {
            assert!(parse_expiry(bad, now).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn atomic_write_replaces_and_keeps_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.key");
        write_atomic(&p, b"one", true).unwrap();
        write_atomic(&p, b"two", true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left behind"
        );
    }
}
