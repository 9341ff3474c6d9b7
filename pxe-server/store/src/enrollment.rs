//! Enrollment as the store keeps it: one-time tokens, the one active enrollment of each machine,
//! and the requests that wait for an operator's approval (schema v3,
//! `migrations/*/0003_enrollment.sql`).
//!
//! The rules are enforced by the database, so they hold with any number of requests and servers
//! at once (docs/security.md):
//!
//! - a token is used by at most one enrollment (`UNIQUE (token_hash)`), and only while unused,
//!   unexpired and, when bound, by the MAC/serial it is bound to (compare-and-set in the same
//!   transaction);
//! - a machine has at most one active enrollment (a partial unique index): one identity, one
//!   enrolled certificate. Another one needs an operator action: revoking the certificate(s)
//!   and approving the machine again ([`crate::Store::set_machine_state`]);
//! - a public key is certified by at most one active enrollment;
//! - an unauthenticated request writes nothing unless it creates something the operator must
//!   see (a new pending machine, under a cap) or it is issued a certificate.

use tugboot_fleet::MachineId;
use tugboot_fleet::facts::Facts;
use tugboot_wire::Mac;

use crate::StoreError;
use crate::model::check_opt_len;

/// A new one-time enrollment token, as stored: only the SHA-256 of the token text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEnrollmentToken {
    /// SHA-256 of the token text, lowercase hex (64 characters).
    pub hash: String,
    /// Creation time.
    pub created_at: i64,
    /// The token is refused from this time on.
    pub expires_at: i64,
    /// Only a device enrolling with this boot MAC may use it.
    pub bound_mac: Option<Mac>,
    /// Only a device enrolling with this serial number may use it.
    pub bound_serial: Option<String>,
}

/// A stored enrollment token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollmentToken {
    /// SHA-256 of the token text, lowercase hex.
    pub hash: String,
    /// Creation time.
    pub created_at: i64,
    /// Expiry.
    pub expires_at: i64,
    /// MAC binding.
    pub bound_mac: Option<Mac>,
    /// Serial binding.
    pub bound_serial: Option<String>,
    /// When it was used.
    pub used_at: Option<i64>,
    /// The machine that used it (`None` also when that machine was deleted since).
    pub used_by: Option<MachineId>,
}

pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_hash(field: &'static str, s: &str) -> Result<(), StoreError> {
    if is_sha256_hex(s) {
        Ok(())
    } else {
        Err(StoreError::invalid(
            field,
            "expected 64 lowercase hex characters",
        ))
    }
}

impl NewEnrollmentToken {
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        check_hash("token hash", &self.hash)?;
        if self.expires_at <= self.created_at {
            return Err(StoreError::invalid(
                "expires_at",
                "a token must expire after it is created",
            ));
        }
        check_opt_len(
            "bound_serial",
            self.bound_serial.as_deref(),
            crate::MAX_NAME_LEN,
        )
    }
}

/// One enrollment request, as the device API hands it to [`crate::Store::enroll`]: what the
/// request claims (nothing of it is authenticated) and the server's limits.
#[derive(Debug, Clone)]
pub struct EnrollAttempt {
    /// The boot MAC the device names: the machine it enrolls as.
    pub mac: Mac,
    /// The serial number it names (checked against a token's binding).
    pub serial: Option<String>,
    /// Facts the request carries, observed by HTTP (recorded only with a write that happens
    /// anyway: a new pending machine or an issued certificate).
    pub facts: Facts,
    /// SHA-256 (hex) of the public key of the CSR.
    pub key_sha256: String,
    /// SHA-256 (hex) of the presented token, if any.
    pub token_hash: Option<String>,
    /// Most machines that may wait for approval (created by enrollment requests, still
    /// `unknown`); a request that would create one more is refused without writing.
    pub max_pending: u64,
    /// A request repeating an issued enrollment (same machine, same key) within this many
    /// seconds gets the same certificate back, not a new one (a retry after a lost answer).
    pub replay_window_secs: i64,
    /// Now.
    pub now: i64,
}

impl EnrollAttempt {
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        check_hash("key_sha256", &self.key_sha256)?;
        if let Some(t) = &self.token_hash {
            check_hash("token hash", t)?;
        }
        check_opt_len("serial", self.serial.as_deref(), crate::MAX_NAME_LEN)?;
        crate::Sighting {
            mac: self.mac,
            facts: self.facts.clone(),
        }
        .validate()
    }
}

/// The certificate the CA made for an enrollment ([`crate::Store::enroll`] asks for it once it
/// knows the machine, inside the transaction that records it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrolledCert {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// PEM of the certificate.
    pub pem: String,
    /// `notAfter`, unix seconds.
    pub not_after: i64,
}

/// What an enrollment request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollOutcome {
    /// A certificate for `device`. `repeated`: the request repeated one already answered (same
    /// machine, same key, within the replay window) and gets the certificate issued then;
    /// nothing was written.
    Issued {
        /// The machine.
        device: MachineId,
        /// Its certificate.
        cert: EnrolledCert,
        /// An earlier answer, repeated.
        repeated: bool,
    },
    /// The machine waits for the operator's approval. `recorded`: this request created the
    /// pending request (the first one); later ones write nothing.
    Pending {
        /// The machine.
        device: MachineId,
        /// Whether this request wrote anything.
        recorded: bool,
    },
    /// Refused; nothing was written (a token stays unused).
    Refused {
        /// The machine, when it exists.
        device: Option<MachineId>,
        /// Why.
        reason: EnrollRefusal,
    },
}

/// Why an enrollment was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnrollRefusal {
    /// No such token.
    UnknownToken,
    /// The token was used before.
    TokenUsed,
    /// The token expired.
    TokenExpired,
    /// The token is bound to another MAC or serial.
    TokenBound,
    /// The machine is revoked.
    MachineRevoked,
    /// The machine has an active enrollment: a new certificate needs an operator action
    /// (revoke, approve again), or renewal over mutual TLS.
    AlreadyEnrolled,
    /// The key is certified for another active enrollment.
    KeyInUse,
    /// Too many machines wait for approval already.
    PendingFull,
}

impl EnrollRefusal {
    /// A short stable name (metrics labels, logs).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UnknownToken => "unknown_token",
            Self::TokenUsed => "token_used",
            Self::TokenExpired => "token_expired",
            Self::TokenBound => "token_bound",
            Self::MachineRevoked => "machine_revoked",
            Self::AlreadyEnrolled => "already_enrolled",
            Self::KeyInUse => "key_in_use",
            Self::PendingFull => "pending_full",
        }
    }
}

impl std::fmt::Display for EnrollRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::UnknownToken => "unknown enrollment token",
            Self::TokenUsed => "enrollment token already used",
            Self::TokenExpired => "enrollment token expired",
            Self::TokenBound => "enrollment token is bound to another MAC or serial",
            Self::MachineRevoked => "machine is revoked",
            Self::AlreadyEnrolled => {
                "device already enrolled; renew over mutual TLS, or ask the operator to revoke \
                 its certificate and approve it again"
            }
            Self::KeyInUse => "this key is already certified for an enrolled device",
            Self::PendingFull => {
                "too many machines wait for approval; ask the operator to approve or delete some"
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_validation() {
        let mut t = NewEnrollmentToken {
            hash: "ab".repeat(32),
            created_at: 10,
            expires_at: 11,
            bound_mac: None,
            bound_serial: Some("SN1".into()),
        };
        assert!(t.validate().is_ok());
        t.expires_at = 10;
        assert!(t.validate().is_err());
        t.expires_at = 11;
        t.hash = "AB".repeat(32);
        assert!(t.validate().is_err());
        t.hash = "ab".repeat(31);
        assert!(t.validate().is_err());
        t.hash = "ab".repeat(32);
        t.bound_serial = Some("x\u{7}".into());
        assert!(t.validate().is_err());
    }
}
