//! Credentials that are not certificates: one-time enrollment tokens and the operator's bearer
//! token.
//!
//! Enrollment tokens live in the fleet store (`enrollment_tokens`, schema v3), so every server
//! sharing a PostgreSQL database accepts every token, and single use is a database constraint
//! ([`tugboot_store::enrollment`]). The store keeps only the SHA-256 of a token; the token text
//! is shown once, to the operator who created it. A token expires (default 24 h) and may be
//! bound to the MAC and/or the serial the enrolling device must name.
//!
//! Servers before schema v3 kept tokens in `<state_dir>/enrollment-tokens.json`:
//! [`import_legacy_file`] moves its unused tokens into the store once.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tugboot_store::{Mac, NewEnrollmentToken, Store, StoreError};

/// Largest legacy token file read.
pub const MAX_LEGACY_FILE_BYTES: usize = 8 * 1024 * 1024;
/// Largest operator token file read.
const MAX_OPERATOR_TOKEN_BYTES: usize = 4096;
/// The legacy token file, in the API state directory.
pub const LEGACY_FILE: &str = "enrollment-tokens.json";
/// Lifetime of a token when the operator does not say: one day.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 24 * 3600;
/// Longest lifetime a token may be given: one year.
pub const MAX_TOKEN_TTL_SECS: u64 = 365 * 24 * 3600;
/// Largest token-creation request body.
pub const MAX_TOKEN_REQUEST_BYTES: usize = 4096;

/// Token storage failed, or a token request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// File error.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Which file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The legacy token file does not decode.
    #[error("{path}: {reason}")]
    Corrupt {
        /// Which file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No randomness.
    #[error("random token: {0}")]
    Random(String),
    /// A token-creation request that does not parse or asks for too much.
    #[error("enrollment token request: {0}")]
    BadRequest(String),
    /// The operator token file is empty or too large.
    #[error("{0}: operator token file must hold 16..=4096 bytes of token")]
    BadOperatorToken(PathBuf),
    /// The operator token file is readable by group or others.
    #[error(
        "{path}: the operator token file is readable by group or others (mode {mode:03o}); \
         run `chmod 600 {path}`"
    )]
    OperatorTokenPermissions {
        /// Which file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TokenError + 'a {
    move |source| TokenError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// SHA-256 (lowercase hex) of a token's text: what the store keeps and looks up.
#[must_use]
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// What the operator asks for when creating a token (`POST /api/v1/admin/enrollment-tokens`,
/// body optional): its lifetime and bindings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Seconds until the token expires (default [`DEFAULT_TOKEN_TTL_SECS`], at most
    /// [`MAX_TOKEN_TTL_SECS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
    /// Only a device enrolling with this MAC may use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Only a device enrolling with this serial may use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// A token-creation request, checked: the lifetime and the bindings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    /// Lifetime, seconds.
    pub ttl_secs: u64,
    /// MAC binding.
    pub mac: Option<Mac>,
    /// Serial binding.
    pub serial: Option<String>,
}

impl TokenRequest {
    /// Parses a request body (empty = all defaults), size cap first.
    ///
    /// # Errors
    /// [`TokenError::BadRequest`].
    pub fn parse(body: &[u8], default_ttl_secs: u64) -> Result<TokenSpec, TokenError> {
        if body.len() > MAX_TOKEN_REQUEST_BYTES {
            return Err(TokenError::BadRequest(format!(
                "{} bytes, at most {MAX_TOKEN_REQUEST_BYTES}",
                body.len()
            )));
        }
        let req: Self = if body.iter().all(u8::is_ascii_whitespace) {
            Self::default()
        } else {
            serde_json::from_slice(body).map_err(|e| TokenError::BadRequest(e.to_string()))?
        };
        let ttl_secs = req.expires_in_secs.unwrap_or(default_ttl_secs);
        if !(1..=MAX_TOKEN_TTL_SECS).contains(&ttl_secs) {
            return Err(TokenError::BadRequest(format!(
                "expires_in_secs must be 1..={MAX_TOKEN_TTL_SECS}"
            )));
        }
        let mac = req
            .mac
            .as_deref()
            .map(|m| {
                m.parse::<Mac>()
                    .map_err(|_| TokenError::BadRequest(format!("mac: {m:?} is not a MAC address")))
            })
            .transpose()?;
        let serial = req.serial.filter(|s| !s.is_empty());
        if let Some(s) = &serial
            && (s.len() > tugboot_store::MAX_NAME_LEN || s.chars().any(char::is_control))
        {
            return Err(TokenError::BadRequest(
                "serial: at most 255 bytes, no control characters".into(),
            ));
        }
        Ok(TokenSpec {
            ttl_secs,
            mac,
            serial,
        })
    }
}

/// A new token: its text (shown once) and what the store keeps.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// 256 random bits, base64url: the token itself.
    pub text: String,
    /// Its record (hash, expiry, bindings).
    pub record: NewEnrollmentToken,
}

/// Makes a random token for `spec`.
///
/// # Errors
/// [`TokenError::Random`].
pub fn generate(spec: &TokenSpec, now: i64) -> Result<NewToken, TokenError> {
    use base64::Engine as _;
    let mut raw = [0u8; 32];
    getrandom::getrandom(&mut raw).map_err(|e| TokenError::Random(e.to_string()))?;
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let ttl = i64::try_from(spec.ttl_secs).unwrap_or(i64::MAX);
    Ok(NewToken {
        record: NewEnrollmentToken {
            hash: token_hash(&text),
            created_at: now,
            expires_at: now.saturating_add(ttl),
            bound_mac: spec.mac,
            bound_serial: spec.serial.clone(),
        },
        text,
    })
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyBook {
    tokens: Vec<LegacyEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code, reason = "fields of the old file format, read to check it")]
struct LegacyEntry {
    sha256: String,
    created_at: i64,
    used_at: Option<i64>,
    device: Option<i64>,
}

/// The unused token hashes of a legacy token file's content, with their creation times.
///
/// # Errors
/// A description of what does not decode.
pub fn parse_legacy(bytes: &[u8]) -> Result<Vec<(String, i64)>, String> {
    if bytes.len() > MAX_LEGACY_FILE_BYTES {
        return Err(format!("larger than {MAX_LEGACY_FILE_BYTES} bytes"));
    }
    let book: LegacyBook = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    book.tokens
        .into_iter()
        .filter(|e| e.used_at.is_none())
        .map(|e| {
            let h = e.sha256.to_ascii_lowercase();
            if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok((h, e.created_at))
            } else {
                Err(format!("{:?} is not a SHA-256", e.sha256))
            }
        })
        .collect()
}

/// Moves the unused tokens of `<dir>/enrollment-tokens.json` (servers before schema v3) into
/// the store, expiring `ttl_secs` from `now` (the old tokens never expired), then renames the
/// file to `enrollment-tokens.json.imported`. Used tokens are not carried over: a token the
/// store does not know is refused like a used one. Returns how many were imported.
///
/// # Errors
/// File errors, [`TokenError::Corrupt`], store errors.
pub async fn import_legacy_file<S: Store>(
    dir: &Path,
    store: &S,
    now: i64,
    ttl_secs: u64,
) -> Result<usize, TokenError> {
    let path = dir.join(LEGACY_FILE);
    let bytes = match fs::metadata(&path) {
        Ok(meta) => {
            if usize::try_from(meta.len()).map_or(true, |n| n > MAX_LEGACY_FILE_BYTES) {
                return Err(TokenError::Corrupt {
                    path,
                    reason: "too large".into(),
                });
            }
            fs::read(&path).map_err(io_err("read", &path))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err("stat", &path)(e)),
    };
    let unused = parse_legacy(&bytes).map_err(|reason| TokenError::Corrupt {
        path: path.clone(),
        reason,
    })?;
    let ttl = i64::try_from(ttl_secs).unwrap_or(i64::MAX);
    let mut imported = 0;
    for (hash, created_at) in unused {
        let record = NewEnrollmentToken {
            hash,
            created_at: created_at.min(now),
            expires_at: now.saturating_add(ttl),
            bound_mac: None,
            bound_serial: None,
        };
        match store.create_enrollment_token(&record).await {
            Ok(()) => imported += 1,
            // Imported by a run that stopped before the rename.
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let done = dir.join(format!("{LEGACY_FILE}.imported"));
    fs::rename(&path, &done).map_err(io_err("rename", &path))?;
    Ok(imported)
}

/// Equality that takes the same time wherever the first difference is.
#[must_use]
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The operator's bearer token, held as its SHA-256 so that comparing is constant-time and
/// independent of the presented token's length.
#[derive(Clone)]
pub struct OperatorToken {
    sha256: [u8; 32],
}

impl std::fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperatorToken(..)")
    }
}

impl OperatorToken {
    /// From the token text (surrounding whitespace ignored, at least 16 bytes).
    #[must_use]
    pub fn new(token: &str) -> Option<Self> {
        let t = token.trim();
        (t.len() >= 16 && t.len() <= MAX_OPERATOR_TOKEN_BYTES).then(|| Self {
            sha256: Sha256::digest(t.as_bytes()).into(),
        })
    }

    /// Reads the token file. A file readable by group or others is refused (like an SSH key):
    /// whoever can read it administers the fleet.
    ///
    /// # Errors
    /// File errors, [`TokenError::OperatorTokenPermissions`], [`TokenError::BadOperatorToken`].
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let meta = fs::metadata(path).map_err(io_err("stat", path))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(TokenError::OperatorTokenPermissions {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        if meta.len() > MAX_OPERATOR_TOKEN_BYTES as u64 {
            return Err(TokenError::BadOperatorToken(path.to_path_buf()));
        }
        let text = fs::read_to_string(path).map_err(io_err("read", path))?;
        Self::new(&text).ok_or_else(|| TokenError::BadOperatorToken(path.to_path_buf()))
    }

    /// Whether `presented` is the token.
    #[must_use]
    pub fn matches(&self, presented: &str) -> bool {
        constant_time_eq(&Sha256::digest(presented.as_bytes()), &self.sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_requests() {
        let d = TokenRequest::parse(b"", 60).unwrap();
        assert_eq!((d.ttl_secs, d.mac, d.serial), (60, None, None));
        let s = TokenRequest::parse(
            br#"{"expires_in_secs": 3600, "mac": "02-00-00-0a-0b-0c", "serial": "SN1"}"#,
            60,
        )
        .unwrap();
        assert_eq!(s.ttl_secs, 3600);
        assert_eq!(s.mac.unwrap().to_string(), "02:00:00:0a:0b:0c");
        assert_eq!(s.serial.as_deref(), Some("SN1"));
        for bad in [
            &br#"{"expires_in_secs": 0}"#[..],
            br#"{"expires_in_secs": 99999999999}"#,
            br#"{"mac": "nope"}"#,
            br#"{"serial": "a\u0007"}"#,
            br#"{"other": 1}"#,
            b"{",
        ] {
            assert!(TokenRequest::parse(bad, 60).is_err(), "{bad:?}");
        }
        assert!(TokenRequest::parse(&[b' '; MAX_TOKEN_REQUEST_BYTES + 1], 60).is_err());
    }

    #[test]
    fn generated_tokens_are_random_and_stored_hashed() {
        let spec = TokenRequest::parse(b"", 100).unwrap();
        let a = generate(&spec, 1000).unwrap();
        let b = generate(&spec, 1000).unwrap();
        assert_ne!(a.text, b.text);
        assert_eq!(a.record.hash, token_hash(&a.text));
        assert_eq!(a.record.expires_at, 1100);
        assert_eq!(a.text.len(), 43);
    }

    #[test]
    fn legacy_file_unused_tokens() {
        let bytes = format!(
            r#"{{"tokens": [{{"sha256": "{}", "created_at": 5, "used_at": null, "device": null}},
                {{"sha256": "{}", "created_at": 6, "used_at": 7, "device": 1}}]}}"#,
            "ab".repeat(32),
            "cd".repeat(32)
        );
        assert_eq!(
            parse_legacy(bytes.as_bytes()).unwrap(),
            vec![("ab".repeat(32), 5)]
        );
        assert!(parse_legacy(br#"{"tokens": [{"sha256": "x", "created_at": 1, "used_at": null, "device": null}]}"#).is_err());
        assert!(parse_legacy(b"[]").is_err());
    }

    #[test]
    fn operator_token_compare() {
        let tok = OperatorToken::new("  correct-horse-battery-staple\n").unwrap();
        assert!(tok.matches("correct-horse-battery-staple"));
        assert!(!tok.matches("correct-horse-battery-stapl"));
        assert!(!tok.matches(""));
        assert!(OperatorToken::new("short").is_none());
        assert!(constant_time_eq(b"ab", b"ab"));
        assert!(!constant_time_eq(b"ab", b"abc"));
    }

    #[test]
    fn operator_token_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("operator-token");
        fs::write(&path, "correct-horse-battery-staple\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = OperatorToken::from_file(&path).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("mode 640"), "{msg}");
        assert!(
            msg.contains(&format!("chmod 600 {}", path.display())),
            "{msg}"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(
            OperatorToken::from_file(&path)
                .unwrap()
                .matches("correct-horse-battery-staple")
        );
    }
}
