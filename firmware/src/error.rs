//! Typed errors, one enum per area. Every variant names what was wrong so that an operator (or a
//! device report) can act on it without reading source code.

use std::path::PathBuf;

use crate::digest::Sha256Digest;
use crate::stream::StreamError;

/// The bytes are not a well-formed document of the expected kind: JSON syntax, canonical form,
/// type tag, field values, limits. Raised before any signature is looked at (or while building a
/// document to sign), so it never says anything about who signed what.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Input larger than the document kind allows; checked before parsing.
    #[error("document is {actual} bytes, the limit is {limit}")]
    Oversize { limit: usize, actual: usize },
    /// JSON syntax error, wrong field type, missing or unknown field.
    #[error("malformed JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The `signed` object is not byte-for-byte in canonical form.
    #[error("signed object is not in canonical form")]
    NonCanonical,
    /// The format allows no floating-point numbers (and no exponents or fractions).
    #[error("non-integer number in signed object")]
    Float,
    /// The format has no `null`: absent optionals are omitted.
    #[error("null in signed object (omit absent fields instead)")]
    Null,
    /// Integers must lie within ±(2^53 − 1) so that every JSON implementation reads them exactly.
    #[error("integer {field} out of the interoperable range (max 2^53-1)")]
    IntegerRange { field: &'static str },
    /// The `type` field of the signed object names another kind of document.
    #[error("wrong document type {found:?}, expected {expected:?}")]
    WrongType {
        expected: &'static str,
        found: String,
    },
    /// A name, board, artifact name or label key uses characters or a length the format forbids.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    /// The same key, key id, board, artifact name or single-use role appears twice.
    #[error("duplicate {what} {value}")]
    Duplicate { what: &'static str, value: String },
    /// A list is longer than the format allows.
    #[error("too many {what}: {count}, the limit is {limit}")]
    TooMany {
        what: &'static str,
        count: usize,
        limit: usize,
    },
    /// A list that must not be empty is empty.
    #[error("no {what}")]
    Empty { what: &'static str },
    /// Threshold must be at least 1 and at most the number of non-revoked keys.
    #[error("threshold {threshold} is impossible with {usable} usable keys")]
    Threshold { threshold: u32, usable: usize },
    /// Any other constraint between fields (expiry before creation, min_version above version...).
    #[error("invalid {field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    /// A timestamp that is not exactly `YYYY-MM-DDTHH:MM:SSZ`, or is out of range.
    #[error("invalid timestamp {0:?} (expected YYYY-MM-DDTHH:MM:SSZ, years 1970-9999)")]
    Timestamp(String),
    /// A digest, key id, key or signature that is not the exact lowercase hex form.
    #[error("invalid {what}: expected {len} lowercase hex digits")]
    Hex { what: &'static str, len: usize },
    /// A role name that is not one of the known roles.
    #[error("unknown artifact role {0:?}")]
    Role(String),
    /// A public key in a trust root that is not a usable ed25519 key.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// A key that cannot be used, or a key file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// 32 bytes that are not the encoding of a point on the curve.
    #[error("not a valid ed25519 public key")]
    InvalidPublicKey,
    /// A small-order ("weak") point: signatures under it prove nothing.
    #[error("weak ed25519 public key (small order) refused")]
    WeakKey,
    /// PEM / DER that is not an ed25519 key of the expected kind.
    #[error("cannot decode key file: {0}")]
    Pem(String),
    /// The operating system could not provide randomness for key generation.
    #[error("no randomness for key generation: {0}")]
    Random(String),
}

/// Errors of the content-addressed blob store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// A file-system operation failed; `path` says where.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading the source of a `put` failed (network, pipe, ...).
    #[error("reading blob source: {0}")]
    Read(#[source] std::io::Error),
    /// The content does not match the expected size or digest.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// No blob with this digest is stored.
    #[error("blob sha256:{0} is not in the store")]
    Missing(Sha256Digest),
    /// An upload chunk that does not continue the partial upload where it stands.
    #[error("upload of sha256:{digest} is at byte {have}, not {offset}")]
    UploadOffset {
        /// The blob.
        digest: Sha256Digest,
        /// Where the chunk wanted to start.
        offset: u64,
        /// Where the upload stands.
        have: u64,
    },
}

impl BlobError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BlobError::Io {
            path: path.into(),
            source,
        }
    }
}
