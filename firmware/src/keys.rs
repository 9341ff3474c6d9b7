//! ed25519 keys and their ids.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

use crate::digest::{Sha256Digest, parse_hex};
use crate::error::{FormatError, KeyError};

/// Identifies a public key: SHA-256 of its 32 raw bytes. Text form: 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 32]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for KeyId {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, FormatError> {
        parse_hex(s, "key id").map(KeyId)
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// An ed25519 public key. Small-order ("weak") keys are refused on construction, so every value
/// of this type can carry meaning. JSON: 64 lowercase hex digits of the raw 32 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn from_bytes(b: &[u8; 32]) -> Result<Self, KeyError> {
        let key = VerifyingKey::from_bytes(b).map_err(|_| KeyError::InvalidPublicKey)?;
        if key.is_weak() {
            return Err(KeyError::WeakKey);
        }
        Ok(PublicKey(key))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    pub fn key_id(&self) -> KeyId {
        KeyId(Sha256Digest::of(self.as_bytes()).0)
    }

    /// Strict RFC 8032 verification (`verify_strict`: no malleable or small-order signatures).
    pub(crate) fn verify(&self, message: &[u8], sig: &[u8; 64]) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(sig);
        self.0.verify_strict(message, &sig).is_ok()
    }

    /// SubjectPublicKeyInfo (RFC 8410) as a `PUBLIC KEY` PEM, what `openssl pkey -pubout` writes.
    #[cfg(feature = "keyfile")]
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(self.as_bytes());
        let mut out = String::new();
        pem_encode("PUBLIC KEY", &der, &mut out);
        out
    }

    #[cfg(feature = "keyfile")]
    pub fn from_pem(s: &str) -> Result<Self, KeyError> {
        use ed25519_dalek::pkcs8::DecodePublicKey as _;
        let key = VerifyingKey::from_public_key_pem(s).map_err(|e| KeyError::Pem(e.to_string()))?;
        PublicKey::from_bytes(key.as_bytes())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.as_bytes()))
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.as_bytes()))
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bytes: [u8; 32] =
            parse_hex(&s, "ed25519 public key").map_err(serde::de::Error::custom)?;
        PublicKey::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// An ed25519 signing key. The seed is zeroized on drop and never printed.
pub struct SecretKey(SigningKey);

impl SecretKey {
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        SecretKey(SigningKey::from_bytes(seed))
    }

    pub fn public(&self) -> PublicKey {
        // A key derived from a seed is never small-order (it is a multiple of the base point).
        PublicKey(self.0.verifying_key())
    }

    pub fn key_id(&self) -> KeyId {
        self.public().key_id()
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// A new key from the operating system's random source.
    #[cfg(feature = "keyfile")]
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::getrandom(seed.as_mut()).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SecretKey::from_seed(&seed))
    }

    /// PKCS#8 v1 (RFC 8410) `PRIVATE KEY` PEM, byte-identical to `openssl genpkey -algorithm ed25519`.
    #[cfg(feature = "keyfile")]
    pub fn to_pkcs8_pem(&self) -> zeroize::Zeroizing<String> {
        let mut der = zeroize::Zeroizing::new(Vec::with_capacity(PKCS8_PREFIX.len() + 32));
        der.extend_from_slice(&PKCS8_PREFIX);
        der.extend_from_slice(self.0.as_bytes());
        let mut out = zeroize::Zeroizing::new(String::with_capacity(128));
        pem_encode("PRIVATE KEY", &der, &mut out);
        out
    }

    /// Reads PKCS#8 v1 or v2 (with the public key attached, which must then match).
    #[cfg(feature = "keyfile")]
    pub fn from_pkcs8_pem(s: &str) -> Result<Self, KeyError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey as _;
        SigningKey::from_pkcs8_pem(s)
            .map(SecretKey)
            .map_err(|e| KeyError::Pem(e.to_string()))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

/// DER of SubjectPublicKeyInfo { algorithm: id-Ed25519 (1.3.101.112) }, BIT STRING header; the 32
/// key bytes follow.
#[cfg(feature = "keyfile")]
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER of OneAsymmetricKey v1 { version 0, id-Ed25519, OCTET STRING { OCTET STRING seed } }; the
/// 32 seed bytes follow.
#[cfg(feature = "keyfile")]
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// RFC 7468 PEM with 64-column lines and LF endings. Writes into `out` so that secret material
/// only ever lives in the caller's (zeroizing) buffer.
#[cfg(feature = "keyfile")]
fn pem_encode(label: &str, der: &[u8], out: &mut String) {
    use base64::Engine as _;
    let mut b64 = zeroize::Zeroizing::new(String::with_capacity(der.len() * 4 / 3 + 4));
    base64::engine::general_purpose::STANDARD.encode_string(der, &mut b64);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    let mut rest: &str = &b64;
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secret() {
        let seed = [0x5au8; 32];
        let key = SecretKey::from_seed(&seed);
        let text = format!("{key:?}");
        assert!(!text.contains(&hex::encode(seed)), "{text}");
        assert!(text.contains(&key.key_id().to_string()));
    }

    #[test]
    fn key_id_is_sha256_of_raw_key() {
        let key = SecretKey::from_seed(&[1; 32]).public();
        assert_eq!(key.key_id().0, Sha256Digest::of(key.as_bytes()).0);
        let text = key.key_id().to_string();
        assert_eq!(text.parse::<KeyId>().unwrap(), key.key_id());
        assert!(text.to_uppercase().parse::<KeyId>().is_err());
    }

    #[test]
    fn weak_and_invalid_public_keys_refused() {
        // The identity point (y = 1) has order 1.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            PublicKey::from_bytes(&identity),
            Err(KeyError::WeakKey)
        ));
        // y = 2 is not the y coordinate of any curve point.
        let mut off_curve = [0u8; 32];
        off_curve[0] = 2;
        assert!(matches!(
            PublicKey::from_bytes(&off_curve),
            Err(KeyError::InvalidPublicKey)
        ));
    }

    #[test]
    fn signatures_verify_and_tampering_fails() {
        let key = SecretKey::from_seed(&[9; 32]);
        let sig = key.sign(b"hello");
        assert!(key.public().verify(b"hello", &sig));
        assert!(!key.public().verify(b"hellp", &sig));
        let mut bad = sig;
        bad[10] ^= 1;
        assert!(!key.public().verify(b"hello", &bad));
        assert!(
            !SecretKey::from_seed(&[8; 32])
                .public()
                .verify(b"hello", &sig)
        );
    }

    /// Generated with `openssl genpkey -algorithm ed25519` and `openssl pkey -pubout` (OpenSSL 3).
    #[cfg(feature = "keyfile")]
    const OPENSSL_PRIVATE: &str = include_str!("../../tests/fixtures/root/openssl-ed25519.pem");
    #[cfg(feature = "keyfile")]
    const OPENSSL_PUBLIC: &str = include_str!("../../tests/fixtures/root/openssl-ed25519.pub.pem");

    #[cfg(feature = "keyfile")]
    #[test]
    fn pem_matches_openssl_byte_for_byte() {
        let key = SecretKey::from_pkcs8_pem(OPENSSL_PRIVATE).unwrap();
        assert_eq!(key.to_pkcs8_pem().as_str(), OPENSSL_PRIVATE);
        assert_eq!(key.public().to_pem(), OPENSSL_PUBLIC);
        assert_eq!(PublicKey::from_pem(OPENSSL_PUBLIC).unwrap(), key.public());
        assert!(PublicKey::from_pem(OPENSSL_PRIVATE).is_err());
        assert!(SecretKey::from_pkcs8_pem(OPENSSL_PUBLIC).is_err());
        assert!(
            SecretKey::from_pkcs8_pem(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            )
            .is_err()
        );
    }

    #[cfg(feature = "keyfile")]
    #[test]
    fn generated_keys_round_trip() {
        let a = SecretKey::generate().unwrap();
        let b = SecretKey::generate().unwrap();
        assert_ne!(a.key_id(), b.key_id());
        let back = SecretKey::from_pkcs8_pem(&a.to_pkcs8_pem()).unwrap();
        assert_eq!(back.public(), a.public());
        assert_eq!(
            PublicKey::from_pem(&a.public().to_pem()).unwrap(),
            a.public()
        );
    }
}
