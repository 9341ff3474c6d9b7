//! The trust root: which keys may sign, and how many signatures are needed.

use serde::{Deserialize, Serialize};

use crate::ROOT_TYPE;
use crate::error::FormatError;
use crate::keys::{KeyId, PublicKey};
use crate::manifest::{check_count, check_int};
use crate::time::Timestamp;

/// At most this many keys (and revoked key ids) in a root.
pub const MAX_ROOT_KEYS: usize = 64;

/// A set of ed25519 keys and the number of them that must sign. Revoked key ids never count, even
/// when the key is still listed (revocation can then be published before the key list changes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustRoot {
    /// Starts at 1; each rotation adds exactly one.
    pub version: u64,
    pub expires: Timestamp,
    pub threshold: u32,
    pub keys: Vec<PublicKey>,
    pub revoked: Vec<KeyId>,
}

impl TrustRoot {
    pub fn validate(&self) -> Result<(), FormatError> {
        check_int("version", self.version)?;
        if self.version == 0 {
            return Err(FormatError::Invalid {
                field: "version",
                reason: "must be at least 1",
            });
        }
        if !self.expires.is_representable() {
            return Err(FormatError::Timestamp(self.expires.to_string()));
        }
        check_count("keys", self.keys.len(), MAX_ROOT_KEYS)?;
        for (i, key) in self.keys.iter().enumerate() {
            if self.keys[..i].contains(key) {
                return Err(FormatError::Duplicate {
                    what: "key",
                    value: key.key_id().to_string(),
                });
            }
        }
        if self.revoked.len() > MAX_ROOT_KEYS {
            return Err(FormatError::TooMany {
                what: "revoked",
                count: self.revoked.len(),
                limit: MAX_ROOT_KEYS,
            });
        }
        for (i, id) in self.revoked.iter().enumerate() {
            if self.revoked[..i].contains(id) {
                return Err(FormatError::Duplicate {
                    what: "revoked key id",
                    value: id.to_string(),
                });
            }
        }
        let usable = self.usable_keys().count();
        if self.threshold == 0 || usize::try_from(self.threshold).map_or(true, |t| t > usable) {
            return Err(FormatError::Threshold {
                threshold: self.threshold,
                usable,
            });
        }
        Ok(())
    }

    /// Listed keys whose id is not revoked.
    pub fn usable_keys(&self) -> impl Iterator<Item = &PublicKey> {
        self.keys
            .iter()
            .filter(|k| !self.revoked.contains(&k.key_id()))
    }

    pub fn is_revoked(&self, id: &KeyId) -> bool {
        self.revoked.contains(id)
    }
}

#[derive(Serialize)]
struct WireOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    version: u64,
    expires: Timestamp,
    threshold: u32,
    keys: &'a [PublicKey],
    #[serde(skip_serializing_if = "<[KeyId]>::is_empty")]
    revoked: &'a [KeyId],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireIn {
    #[serde(rename = "type")]
    ty: String,
    version: u64,
    expires: Timestamp,
    threshold: u32,
    keys: Vec<PublicKey>,
    #[serde(default)]
    revoked: Vec<KeyId>,
}

impl Serialize for TrustRoot {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireOut {
            ty: ROOT_TYPE,
            version: self.version,
            expires: self.expires,
            threshold: self.threshold,
            keys: &self.keys,
            revoked: &self.revoked,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for TrustRoot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = WireIn::deserialize(d)?;
        if w.ty != ROOT_TYPE {
            let err = FormatError::WrongType {
                expected: ROOT_TYPE,
                found: w.ty.chars().take(64).collect(),
            };
            return Err(serde::de::Error::custom(err));
        }
        Ok(TrustRoot {
            version: w.version,
            expires: w.expires,
            threshold: w.threshold,
            keys: w.keys,
            revoked: w.revoked,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SecretKey;

    fn root(threshold: u32) -> TrustRoot {
        TrustRoot {
            version: 1,
            expires: Timestamp::from_unix(2_000_000_000),
            threshold,
            keys: (1..=3u8)
                .map(|i| SecretKey::from_seed(&[i; 32]).public())
                .collect(),
            revoked: vec![],
        }
    }

    #[test]
    fn threshold_counts_only_unrevoked_keys() {
        root(1).validate().unwrap();
        root(3).validate().unwrap();
        assert!(matches!(
            root(0).validate(),
            Err(FormatError::Threshold { .. })
        ));
        assert!(matches!(
            root(4).validate(),
            Err(FormatError::Threshold { .. })
        ));
        let mut r = root(3);
        r.revoked.push(r.keys[0].key_id());
        assert!(matches!(
            r.validate(),
            Err(FormatError::Threshold {
                threshold: 3,
                usable: 2
            })
        ));
        r.threshold = 2;
        r.validate().unwrap();
        assert_eq!(r.usable_keys().count(), 2);
    }

    #[test]
    fn duplicates_and_version_refused() {
        let mut r = root(1);
        r.keys.push(r.keys[0].clone());
        assert!(matches!(r.validate(), Err(FormatError::Duplicate { .. })));
        let mut r = root(1);
        r.revoked = vec![r.keys[0].key_id(); 2];
        assert!(matches!(r.validate(), Err(FormatError::Duplicate { .. })));
        let mut r = root(1);
        r.version = 0;
        assert!(r.validate().is_err());
        let mut r = root(1);
        r.keys.clear();
        assert!(matches!(r.validate(), Err(FormatError::Empty { .. })));
    }
}
