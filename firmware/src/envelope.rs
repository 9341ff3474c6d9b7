//! The signed envelope: `{"signatures":[...],"signed":{...}}`.
//!
//! The `signed` object is kept as the exact bytes that were signed; the parsed value is only a
//! view of them. Parsing goes size cap → JSON → canonical check → type tag → strict fields →
//! validation → re-encode and compare, so a document has exactly one accepted byte form.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::canonical;
use crate::digest::parse_hex;
use crate::error::FormatError;
use crate::keys::{KeyId, SecretKey};
use crate::manifest::Manifest;
use crate::root::TrustRoot;
use crate::{MANIFEST_TYPE, MAX_MANIFEST_BYTES, MAX_ROOT_BYTES, ROOT_TYPE};

/// Prefix of every signed message (domain separation: a tugboot signature can never be replayed
/// as a signature over something else, nor the other way round).
pub const SIGNATURE_CONTEXT: &[u8] = b"tugboot-signature-v1\n";

/// At most this many signatures per envelope: bounds the verification work an attacker can ask for.
pub const MAX_SIGNATURES: usize = 64;

/// Bytes one signature entry takes in the envelope, comma included.
const SIGNATURE_ENTRY_BYTES: usize = 214;
/// Room left in the size cap for the envelope around the signed object.
const ENVELOPE_RESERVE: usize = MAX_SIGNATURES * SIGNATURE_ENTRY_BYTES + 32;

/// One signature. JSON: `{"keyid": "<64 hex>", "sig": "<128 hex>"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    pub keyid: KeyId,
    pub sig: [u8; 64],
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureWire {
    keyid: KeyId,
    sig: String,
}

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SignatureWire {
            keyid: self.keyid,
            sig: hex::encode(self.sig),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = SignatureWire::deserialize(d)?;
        let sig = parse_hex(&w.sig, "ed25519 signature").map_err(serde::de::Error::custom)?;
        Ok(Signature {
            keyid: w.keyid,
            sig,
        })
    }
}

/// A kind of signed document.
pub trait Document: serde::Serialize + serde::de::DeserializeOwned {
    /// The `type` field inside the signed object.
    const TYPE: &'static str;
    /// Size cap of the whole envelope file, applied before parsing.
    const MAX_BYTES: usize;
    fn validate(&self) -> Result<(), FormatError>;
}

impl Document for Manifest {
    const TYPE: &'static str = MANIFEST_TYPE;
    const MAX_BYTES: usize = MAX_MANIFEST_BYTES;
    fn validate(&self) -> Result<(), FormatError> {
        Manifest::validate(self)
    }
}

impl Document for TrustRoot {
    const TYPE: &'static str = ROOT_TYPE;
    const MAX_BYTES: usize = MAX_ROOT_BYTES;
    fn validate(&self) -> Result<(), FormatError> {
        TrustRoot::validate(self)
    }
}

/// A document with its signatures. Holding one says nothing about trust: see
/// [`crate::verify_manifest`] and [`crate::TrustedRoot`].
#[derive(Clone)]
pub struct Signed<T: Document> {
    signed: Vec<u8>,
    value: T,
    pub signatures: Vec<Signature>,
}

/// Shows the signed bytes as text (they are canonical JSON) rather than a list of numbers.
impl<T: Document + std::fmt::Debug> std::fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signed")
            .field("signed", &String::from_utf8_lossy(&self.signed))
            .field("value", &self.value)
            .field("signatures", &self.signatures)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeIn<'a> {
    signatures: Vec<Signature>,
    #[serde(borrow)]
    signed: &'a RawValue,
}

impl<T: Document> Signed<T> {
    /// Validates `value` and fixes its canonical encoding; no signatures yet.
    pub fn new(value: T) -> Result<Self, FormatError> {
        value.validate()?;
        let signed = canonical::to_canonical(&value)?;
        let limit = T::MAX_BYTES.saturating_sub(ENVELOPE_RESERVE);
        if signed.len() > limit {
            return Err(FormatError::Oversize {
                limit,
                actual: signed.len(),
            });
        }
        Ok(Signed {
            signed,
            value,
            signatures: Vec::new(),
        })
    }

    /// The parsed content. UNVERIFIED unless this came out of a verification function.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The canonical bytes the signatures cover (without [`SIGNATURE_CONTEXT`]).
    pub fn signed_bytes(&self) -> &[u8] {
        &self.signed
    }

    /// The exact message an ed25519 signature is made over.
    pub fn signing_message(&self) -> Vec<u8> {
        [SIGNATURE_CONTEXT, &self.signed].concat()
    }

    /// Adds this key's signature, replacing an earlier one by the same key.
    pub fn sign(&mut self, key: &SecretKey) {
        let sig = Signature {
            keyid: key.key_id(),
            sig: key.sign(&self.signing_message()),
        };
        match self.signatures.iter_mut().find(|s| s.keyid == sig.keyid) {
            Some(old) => *old = sig,
            None => self.signatures.push(sig),
        }
    }

    /// The envelope file: compact JSON (itself canonical) and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.signed.len() + 64 + self.signatures.len() * SIGNATURE_ENTRY_BYTES,
        );
        out.extend_from_slice(b"{\"signatures\":[");
        for (i, s) in self.signatures.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"keyid\":\"");
            out.extend_from_slice(s.keyid.to_string().as_bytes());
            out.extend_from_slice(b"\",\"sig\":\"");
            out.extend_from_slice(hex::encode(s.sig).as_bytes());
            out.extend_from_slice(b"\"}");
        }
        out.extend_from_slice(b"],\"signed\":");
        out.extend_from_slice(&self.signed);
        out.extend_from_slice(b"}\n");
        out
    }

    /// Parses an envelope: size cap, JSON, canonical form, type tag, fields, validation. Does not
    /// look at the signatures beyond their syntax.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() > T::MAX_BYTES {
            return Err(FormatError::Oversize {
                limit: T::MAX_BYTES,
                actual: bytes.len(),
            });
        }
        let envelope: EnvelopeIn<'_> = serde_json::from_slice(bytes)?;
        if envelope.signatures.len() > MAX_SIGNATURES {
            return Err(FormatError::TooMany {
                what: "signatures",
                count: envelope.signatures.len(),
                limit: MAX_SIGNATURES,
            });
        }
        let raw = envelope.signed.get();
        let json: serde_json::Value = serde_json::from_str(raw)?;
        if canonical::encode(&json)? != raw.as_bytes() {
            return Err(FormatError::NonCanonical);
        }
        match json.get("type").and_then(serde_json::Value::as_str) {
            Some(t) if t == T::TYPE => {}
            other => {
                let found =
                    other.map_or_else(|| "<missing>".to_owned(), |t| t.chars().take(64).collect());
                return Err(FormatError::WrongType {
                    expected: T::TYPE,
                    found,
                });
            }
        }
        let value: T = serde_json::from_value(json)?;
        value.validate()?;
        // Catches what the generic check cannot: e.g. `"labels":{}` where the canonical form omits it.
        if canonical::to_canonical(&value)? != raw.as_bytes() {
            return Err(FormatError::NonCanonical);
        }
        Ok(Signed {
            signed: raw.as_bytes().to_vec(),
            value,
            signatures: envelope.signatures,
        })
    }
}
