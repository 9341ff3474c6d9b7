//! SHA-256 digests: the address of every artifact and blob.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::FormatError;

/// A SHA-256 digest. Text form: exactly 64 lowercase hex digits (no prefix), the same in JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Hashes `data` in one go (streams use [`crate::ArtifactVerifier`]).
    pub fn of(data: &[u8]) -> Self {
        Sha256Digest(Sha256::digest(data).into())
    }

    /// The 64-digit lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Strict lowercase hex of exactly `N` bytes. `hex::decode` also accepts uppercase, which would
/// give one value two spellings; the format wants exactly one.
pub(crate) fn parse_hex<const N: usize>(
    s: &str,
    what: &'static str,
) -> Result<[u8; N], FormatError> {
    let err = || FormatError::Hex { what, len: 2 * N };
    if s.len() != 2 * N || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(err());
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|_| err())?;
    Ok(out)
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for Sha256Digest {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, FormatError> {
        parse_hex(s, "sha256 digest").map(Sha256Digest)
    }
}

impl serde::Serialize for Sha256Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Sha256Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest_and_strict_text() {
        // FIPS 180-2 example "abc".
        let d = Sha256Digest::of(b"abc");
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(d.to_string(), hex);
        assert_eq!(format!("{d:?}"), hex);
        assert_eq!(hex.parse::<Sha256Digest>().unwrap(), d);
        assert!(hex.to_uppercase().parse::<Sha256Digest>().is_err());
        assert!(hex[..63].parse::<Sha256Digest>().is_err());
        assert!(format!("{hex}0").parse::<Sha256Digest>().is_err());
        assert!(format!("sha256:{hex}").parse::<Sha256Digest>().is_err());
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{hex}\""));
        assert_eq!(serde_json::from_str::<Sha256Digest>(&json).unwrap(), d);
    }
}
