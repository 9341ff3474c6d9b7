//! Credentials that are not certificates: one-time enrollment tokens and the operator's bearer
//! token.
//!
//! Enrollment tokens are kept as SHA-256 hashes in `enrollment-tokens.json` in the API's state
//! directory (the fleet store has no table for them yet). Using a token marks it used in the
//! file (temp file, fsync, rename, fsync of the directory) *before* the certificate is issued,
//! so a token is never accepted twice, even across a crash. With several servers on one
//! PostgreSQL database, each server has its own token file: a token works only on the server
//! that created it.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tugboot_store::MachineId;

/// Largest token file read.
const MAX_TOKEN_FILE_BYTES: usize = 8 * 1024 * 1024;
/// Largest operator token file read.
const MAX_OPERATOR_TOKEN_BYTES: usize = 4096;
const FILE: &str = "enrollment-tokens.json";

/// Token storage failed, or a token was refused.
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
    /// The token file does not decode.
    #[error("{path}: {reason}")]
    Corrupt {
        /// Which file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No such token.
    #[error("unknown enrollment token")]
    Unknown,
    /// Used before.
    #[error("enrollment token already used")]
    Used,
    /// The operator token file is empty or too large.
    #[error("{0}: operator token file must hold 16..=4096 bytes of token")]
    BadOperatorToken(PathBuf),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TokenError + 'a {
    move |source| TokenError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Book {
    tokens: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    sha256: String,
    created_at: i64,
    used_at: Option<i64>,
    device: Option<i64>,
}

/// The enrollment tokens of this server.
#[derive(Debug)]
pub struct TokenBook {
    path: PathBuf,
    book: Book,
}

fn hash_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl TokenBook {
    /// Opens (or starts) the token file in `dir`.
    ///
    /// # Errors
    /// File errors, [`TokenError::Corrupt`].
    pub fn open(dir: &Path) -> Result<Self, TokenError> {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let path = dir.join(FILE);
        let book = match fs::metadata(&path) {
            Ok(meta) => {
                if usize::try_from(meta.len()).map_or(true, |n| n > MAX_TOKEN_FILE_BYTES) {
                    return Err(TokenError::Corrupt {
                        path,
                        reason: "too large".into(),
                    });
                }
                let bytes = fs::read(&path).map_err(io_err("read", &path))?;
                serde_json::from_slice(&bytes).map_err(|e| TokenError::Corrupt {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Book::default(),
            Err(e) => return Err(io_err("stat", &path)(e)),
        };
        Ok(Self { path, book })
    }

    fn persist(&self, book: &Book) -> Result<(), TokenError> {
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(book).map_err(|e| TokenError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io_err("create", &tmp))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &self.path).map_err(io_err("rename", &self.path))?;
        if let Some(dir) = self.path.parent()
            && let Ok(d) = fs::File::open(dir)
        {
            d.sync_all().map_err(io_err("sync", dir))?;
        }
        Ok(())
    }

    /// Creates a new random token (256 bits, base64url) and persists its hash. The token itself
    /// is returned once and never stored.
    ///
    /// # Errors
    /// File errors.
    pub fn create(&mut self, now: i64) -> Result<String, TokenError> {
        use base64::Engine as _;
        let mut raw = [0u8; 32];
        getrandom::getrandom(&mut raw).map_err(|e| TokenError::Io {
            op: "getrandom",
            path: PathBuf::new(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let mut next = self.book.clone();
        next.tokens.push(Entry {
            sha256: hash_hex(&token),
            created_at: now,
            used_at: None,
            device: None,
        });
        self.persist(&next)?;
        self.book = next;
        Ok(token)
    }

    /// Marks `token` used by `device`, durably. Refused if unknown or already used.
    ///
    /// # Errors
    /// [`TokenError::Unknown`], [`TokenError::Used`], file errors (the token then stays unused).
    pub fn consume(&mut self, token: &str, device: MachineId, now: i64) -> Result<(), TokenError> {
        let wanted = Sha256::digest(token.as_bytes());
        let mut next = self.book.clone();
        // Compare every stored hash in constant time (hashes of random tokens, but cheap to do).
        let entry = next
            .tokens
            .iter_mut()
            .find(|e| hex::decode(&e.sha256).is_ok_and(|h| constant_time_eq(&h, &wanted)))
            .ok_or(TokenError::Unknown)?;
        if entry.used_at.is_some() {
            return Err(TokenError::Used);
        }
        entry.used_at = Some(now);
        entry.device = Some(device.0);
        self.persist(&next)?;
        self.book = next;
        Ok(())
    }

    /// Tokens not used yet.
    #[must_use]
    pub fn unused(&self) -> usize {
        self.book
            .tokens
            .iter()
            .filter(|e| e.used_at.is_none())
            .count()
    }
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

    /// Reads the token file.
    ///
    /// # Errors
    /// File errors, [`TokenError::BadOperatorToken`].
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let meta = fs::metadata(path).map_err(io_err("stat", path))?;
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
    fn token_is_single_use_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = TokenBook::open(dir.path()).unwrap();
        let t = book.create(100).unwrap();
        let other = book.create(100).unwrap();
        assert_eq!(book.unused(), 2);
        assert!(matches!(
            book.consume("nope", MachineId(1), 101),
            Err(TokenError::Unknown)
        ));
        book.consume(&t, MachineId(1), 101).unwrap();
        let mut again = TokenBook::open(dir.path()).unwrap();
        assert!(matches!(
            again.consume(&t, MachineId(2), 102),
            Err(TokenError::Used)
        ));
        assert_eq!(again.unused(), 1);
        again.consume(&other, MachineId(2), 102).unwrap();
        let raw = fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(!raw.contains(&t), "tokens are stored hashed");
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
}
