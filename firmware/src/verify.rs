//! Verification: the only way to a [`TrustedRoot`] or a [`VerifiedManifest`].
//!
//! Order for manifests: size cap → envelope → canonical form → signatures → expiry (manifest, then
//! trust root) → board → rollback floor → minimum version. Content is not looked at before the
//! signatures are known good, so an unsigned document only ever learns "malformed" or a signature
//! error.

use std::ops::Deref;

use crate::envelope::{Document, Signature, Signed};
use crate::error::FormatError;
use crate::keys::KeyId;
use crate::manifest::Manifest;
use crate::root::TrustRoot;
use crate::time::Timestamp;

/// Why a root or manifest is not trusted. [`VerifyError::code`] gives a stable machine name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("document is {actual} bytes, the limit is {limit}")]
    Oversize { limit: usize, actual: usize },
    #[error(transparent)]
    Malformed(#[from] FormatError),
    #[error("signature by key {keyid} does not verify")]
    BadSignature { keyid: KeyId },
    #[error("signature by unknown key {keyid}")]
    UnknownKey { keyid: KeyId },
    #[error("signature by revoked key {keyid}")]
    RevokedKey { keyid: KeyId },
    #[error("{valid} valid signatures, {threshold} required")]
    BelowThreshold { valid: u32, threshold: u32 },
    #[error("{what} expired at {expires} (now {now})")]
    Expired {
        what: &'static str,
        expires: Timestamp,
        now: Timestamp,
    },
    #[error("version {version} is below the rollback floor {floor}")]
    Rollback { version: u64, floor: u64 },
    #[error("requires the installed version to be at least {required}, it is {}", fmt_version(*.current))]
    MinimumVersion { required: u64, current: Option<u64> },
    #[error("image is not for board {board:?} (allowed: {})", allowed.join(", "))]
    WrongBoard { board: String, allowed: Vec<String> },
    #[error("trust root version {found}, expected {expected}")]
    RootVersion { expected: u64, found: u64 },
}

fn fmt_version(v: Option<u64>) -> String {
    v.map_or_else(|| "unknown".to_owned(), |v| v.to_string())
}

impl VerifyError {
    /// Stable kebab-case name for reports, metrics and exit messages.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::Oversize { .. } => "oversize",
            VerifyError::Malformed(_) => "malformed",
            VerifyError::BadSignature { .. } => "bad-signature",
            VerifyError::UnknownKey { .. } => "unknown-key",
            VerifyError::RevokedKey { .. } => "revoked-key",
            VerifyError::BelowThreshold { .. } => "below-threshold",
            VerifyError::Expired { .. } => "expired",
            VerifyError::Rollback { .. } => "rollback",
            VerifyError::MinimumVersion { .. } => "minimum-version",
            VerifyError::WrongBoard { .. } => "wrong-board",
            VerifyError::RootVersion { .. } => "root-version",
        }
    }
}

/// A trust root whose signatures have been checked (by itself on bootstrap, by its predecessor
/// and itself on rotation).
#[derive(Clone, Debug)]
pub struct TrustedRoot {
    signed: Signed<TrustRoot>,
}

/// What the caller knows and wants, besides the trust root.
#[derive(Clone, Debug)]
pub struct Policy<'a> {
    pub now: Timestamp,
    /// The device's board; `None` skips the board check (e.g. on a server serving many boards).
    pub board: Option<&'a str>,
    /// Lowest acceptable manifest version (the highest version ever installed, for a device).
    pub floor: u64,
    /// The installed version. When a manifest sets `min_version`, `None` is refused: an unknown
    /// starting point cannot be shown to be new enough.
    pub current_version: Option<u64>,
}

impl Policy<'_> {
    /// No board check, no floor, no installed version.
    pub fn at(now: Timestamp) -> Self {
        Policy {
            now,
            board: None,
            floor: 0,
            current_version: None,
        }
    }
}

/// A manifest that passed [`verify_manifest`]. Dereferences to the [`Manifest`].
#[derive(Clone, Debug)]
pub struct VerifiedManifest {
    signed: Signed<Manifest>,
    envelope: Vec<u8>,
}

impl VerifiedManifest {
    /// The exact envelope bytes that were verified (to store or forward unchanged).
    pub fn envelope_bytes(&self) -> &[u8] {
        &self.envelope
    }

    pub fn manifest(&self) -> &Manifest {
        self.signed.value()
    }
}

impl Deref for VerifiedManifest {
    type Target = Manifest;
    fn deref(&self) -> &Manifest {
        self.signed.value()
    }
}

fn check_size<T: Document>(bytes: &[u8]) -> Result<(), VerifyError> {
    if bytes.len() > T::MAX_BYTES {
        return Err(VerifyError::Oversize {
            limit: T::MAX_BYTES,
            actual: bytes.len(),
        });
    }
    Ok(())
}

fn check_expiry(what: &'static str, expires: Timestamp, now: Timestamp) -> Result<(), VerifyError> {
    if now >= expires {
        return Err(VerifyError::Expired { what, expires, now });
    }
    Ok(())
}

/// Counts distinct keys of `root` with a valid signature over `message`. Revoked ids never count.
/// Below the threshold the most specific reason wins: a known key's signature that does not
/// verify, then a revoked key, then an unknown key, then plain "not enough".
fn check_threshold(
    message: &[u8],
    signatures: &[Signature],
    root: &TrustRoot,
) -> Result<(), VerifyError> {
    let keys: Vec<_> = root.usable_keys().map(|k| (k.key_id(), k)).collect();
    let mut valid: Vec<KeyId> = Vec::new();
    let (mut bad, mut revoked, mut unknown) = (None, None, None);
    for s in signatures {
        if root.is_revoked(&s.keyid) {
            revoked.get_or_insert(s.keyid);
            continue;
        }
        if valid.contains(&s.keyid) {
            continue;
        }
        match keys.iter().find(|(id, _)| *id == s.keyid) {
            None => {
                unknown.get_or_insert(s.keyid);
            }
            Some((_, key)) if key.verify(message, &s.sig) => valid.push(s.keyid),
            Some(_) => {
                bad.get_or_insert(s.keyid);
            }
        }
    }
    let count = u32::try_from(valid.len()).unwrap_or(u32::MAX);
    if count >= root.threshold {
        return Ok(());
    }
    Err(match (bad, revoked, unknown) {
        (Some(keyid), _, _) => VerifyError::BadSignature { keyid },
        (None, Some(keyid), _) => VerifyError::RevokedKey { keyid },
        (None, None, Some(keyid)) => VerifyError::UnknownKey { keyid },
        (None, None, None) => VerifyError::BelowThreshold {
            valid: count,
            threshold: root.threshold,
        },
    })
}

impl TrustedRoot {
    /// A trust anchor installed out of band: must carry a threshold of valid signatures by its own
    /// keys and not be expired.
    pub fn bootstrap(bytes: &[u8], now: Timestamp) -> Result<Self, VerifyError> {
        check_size::<TrustRoot>(bytes)?;
        let signed = Signed::<TrustRoot>::from_bytes(bytes)?;
        check_threshold(
            &signed.signing_message(),
            &signed.signatures,
            signed.value(),
        )?;
        check_expiry("trust root", signed.value().expires, now)?;
        Ok(TrustedRoot { signed })
    }

    /// Root N+1: version must be exactly N+1, signed by a threshold of root N's keys AND a
    /// threshold of its own keys. The current root may itself have expired: rotating is how a
    /// device recovers from that. The new root must not be expired.
    pub fn rotate(&self, next: &[u8], now: Timestamp) -> Result<Self, VerifyError> {
        check_size::<TrustRoot>(next)?;
        let signed = Signed::<TrustRoot>::from_bytes(next)?;
        // The version is checked first: a replayed or skipped root is refused as such, whatever
        // its signatures say (it must pass both thresholds below as well).
        let expected = self.root().version.saturating_add(1);
        if signed.value().version != expected {
            return Err(VerifyError::RootVersion {
                expected,
                found: signed.value().version,
            });
        }
        let message = signed.signing_message();
        check_threshold(&message, &signed.signatures, self.root())?;
        check_threshold(&message, &signed.signatures, signed.value())?;
        check_expiry("trust root", signed.value().expires, now)?;
        Ok(TrustedRoot { signed })
    }

    pub fn root(&self) -> &TrustRoot {
        self.signed.value()
    }

    /// The envelope, to persist and later [`TrustedRoot::bootstrap`] from again.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.signed.to_bytes()
    }
}

/// Verifies a manifest envelope against a trusted root and the caller's policy.
pub fn verify_manifest(
    bytes: &[u8],
    root: &TrustedRoot,
    policy: &Policy<'_>,
) -> Result<VerifiedManifest, VerifyError> {
    check_size::<Manifest>(bytes)?;
    let signed = Signed::<Manifest>::from_bytes(bytes)?;
    check_threshold(&signed.signing_message(), &signed.signatures, root.root())?;
    let m = signed.value();
    check_expiry("manifest", m.expires, policy.now)?;
    check_expiry("trust root", root.root().expires, policy.now)?;
    if let Some(board) = policy.board
        && !m.boards.iter().any(|b| b == board)
    {
        return Err(VerifyError::WrongBoard {
            board: board.to_owned(),
            allowed: m.boards.clone(),
        });
    }
    if m.version < policy.floor {
        return Err(VerifyError::Rollback {
            version: m.version,
            floor: policy.floor,
        });
    }
    if let Some(required) = m.min_version
        && policy.current_version.is_none_or(|c| c < required)
    {
        return Err(VerifyError::MinimumVersion {
            required,
            current: policy.current_version,
        });
    }
    Ok(VerifiedManifest {
        signed,
        envelope: bytes.to_vec(),
    })
}
