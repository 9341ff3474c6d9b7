//! tugboot's signed image format: manifests, trust roots, signatures, streaming verification and
//! the content-addressed blob store. The normative specification is `docs/image-format.md`.
//!
//! Everything here except [`BlobStore`] and [`Timestamp::now`] is sans-IO: bytes and `now` in,
//! verdicts out.

mod blobstore;
mod canonical;
mod digest;
mod envelope;
mod error;
mod keys;
mod manifest;
mod root;
mod stream;
mod time;
mod verify;

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;

pub use blobstore::BlobStore;
pub use canonical::MAX_SAFE_INTEGER;
pub use digest::Sha256Digest;
pub use envelope::{Document, MAX_SIGNATURES, SIGNATURE_CONTEXT, Signature, Signed};
pub use error::{BlobError, FormatError, KeyError};
pub use keys::{KeyId, PublicKey, SecretKey};
pub use manifest::{
    Artifact, MAX_ARTIFACTS, MAX_BOARD_LEN, MAX_BOARDS, MAX_LABEL_KEY_LEN, MAX_LABEL_VALUE_LEN,
    MAX_LABELS, MAX_NAME_LEN, Manifest, Role,
};
pub use root::{MAX_ROOT_KEYS, TrustRoot};
pub use stream::{ArtifactVerifier, StreamError, VerifyingReader, VerifyingWriter};
pub use time::Timestamp;
pub use verify::{Policy, TrustedRoot, VerifiedManifest, VerifyError, verify_manifest};

/// The `type` field inside a signed manifest.
pub const MANIFEST_TYPE: &str = "tugboot/manifest@1";
/// The `type` field inside a signed trust root.
pub const ROOT_TYPE: &str = "tugboot/root@1";
/// Size cap of a manifest envelope, applied before any parsing.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// Size cap of a trust-root envelope, applied before any parsing.
pub const MAX_ROOT_BYTES: usize = 256 << 10;
