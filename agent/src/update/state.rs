//! The agent's persisted state: small, versioned, strictly parsed JSON, replaced atomically.

use serde::{Deserialize, Serialize};
use tugboot_firmware::{MAX_NAME_LEN, Sha256Digest};

use crate::bootloader::Slot;

/// The only `format` this agent reads and writes.
pub const STATE_FORMAT: u32 = 1;
/// Size cap, applied before parsing.
pub const MAX_STATE_BYTES: usize = 64 * 1024;
/// Longest reason or boot id kept (longer ones are cut when recorded, refused when read).
pub const MAX_TEXT_LEN: usize = 1024;

/// Everything the agent must remember across power loss.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentState {
    /// Always [`STATE_FORMAT`].
    pub format: u32,
    /// Rollback floor: the lowest manifest version the device accepts. Rises only on commit.
    pub floor: u64,
    /// The slot the device boots when no trial is pending, and what it holds.
    pub committed: Committed,
    /// The update in progress, if any.
    pub update: Option<UpdateRecord>,
    /// How the last update ended (kept until the next one starts).
    pub last_result: Option<Outcome>,
}

/// The committed slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Committed {
    /// Which slot.
    pub slot: Slot,
    /// Its image; `None` on a device provisioned without a manifest.
    pub image: Option<Image>,
}

/// One installed or installing image: what the signed manifest says about its slot artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Manifest name.
    pub name: String,
    /// Manifest version.
    pub version: u64,
    /// Digest of the `slot` artifact.
    pub sha256: Sha256Digest,
    /// Size of the `slot` artifact.
    pub size: u64,
}

/// An update in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRecord {
    /// The slot being written (never the committed one).
    pub slot: Slot,
    /// The image being installed.
    pub image: Image,
    /// SHA-256 of the verified manifest envelope.
    pub manifest_sha256: Sha256Digest,
    /// How far it got.
    pub phase: Phase,
    /// Phase `downloading`: bytes of the artifact written into the target slot and synced (the
    /// last checkpoint); a later attempt resumes there. 0 otherwise (and omitted from the
    /// file, so states outside a download read the same for older agents).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub downloaded: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` signature
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where an update stands. Each phase is persisted *before* the step it allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Phase {
    /// The target slot is being written; its content is garbage until `Installed`.
    Downloading,
    /// The target slot holds the verified artifact, synced; the bootloader may be armed.
    Installed,
    /// The bootloader is armed for one trial of the target; a reboot was requested in boot
    /// `boot_id`.
    Trying {
        /// Boot in which the reboot was requested: seeing it again means no reboot happened, so
        /// the trial cannot be running. Empty when unknown (power lost between arming and
        /// recording it; the trial boot itself then recorded this phase).
        boot_id: String,
    },
    /// The trial failed; the bootloader is being pointed back at the committed slot.
    RollingBack {
        /// Why.
        reason: String,
    },
}

/// How an update ended: what the agent records in `last_result` and reports, in the device
/// API's one definition (`tugboot_wire::Outcome`; a manifest refused on the device is
/// [`Outcome::Failed`] with `rejected` set, JSON outcome `rejected`).
pub use tugboot_wire::{Outcome, Rejection};

/// The persisted state is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Larger than [`MAX_STATE_BYTES`].
    #[error("state file is {0} bytes, larger than the {MAX_STATE_BYTES}-byte cap")]
    TooLarge(usize),
    /// Not valid JSON of the expected shape.
    #[error("state file: {0}")]
    Json(#[from] serde_json::Error),
    /// A format this agent does not know.
    #[error("state file format {0}, this agent reads format {STATE_FORMAT}")]
    Format(u32),
    /// Parsed, but contradicts itself.
    #[error("state file is inconsistent: {0}")]
    Invalid(&'static str),
}

impl AgentState {
    /// A device whose committed slot is `slot`, with `image` if known, and floor `floor`.
    #[must_use]
    pub fn provisioned(slot: Slot, image: Option<Image>, floor: u64) -> Self {
        Self {
            format: STATE_FORMAT,
            floor,
            committed: Committed { slot, image },
            update: None,
            last_result: None,
        }
    }

    /// Parses and checks a state file.
    ///
    /// # Errors
    /// See [`StateError`].
    pub fn parse(bytes: &[u8]) -> Result<Self, StateError> {
        if bytes.len() > MAX_STATE_BYTES {
            return Err(StateError::TooLarge(bytes.len()));
        }
        let state: Self = serde_json::from_slice(bytes)?;
        if state.format != STATE_FORMAT {
            return Err(StateError::Format(state.format));
        }
        state.validate()?;
        Ok(state)
    }

    fn validate(&self) -> Result<(), StateError> {
        let image_ok = |i: &Image| !i.name.is_empty() && i.name.len() <= MAX_NAME_LEN;
        if self.committed.image.as_ref().is_some_and(|i| !image_ok(i)) {
            return Err(StateError::Invalid("bad committed image name"));
        }
        if let Some(c) = &self.committed.image
            && c.version > self.floor
        {
            return Err(StateError::Invalid("committed version above the floor"));
        }
        if let Some(u) = &self.update {
            if u.slot == self.committed.slot {
                return Err(StateError::Invalid("update targets the committed slot"));
            }
            if !image_ok(&u.image) {
                return Err(StateError::Invalid("bad update image name"));
            }
            if u.image.version < self.floor {
                return Err(StateError::Invalid("update below the floor"));
            }
            if u.downloaded > u.image.size || (u.downloaded > 0 && u.phase != Phase::Downloading) {
                return Err(StateError::Invalid("download checkpoint out of place"));
            }
            match &u.phase {
                Phase::Trying { boot_id: t } | Phase::RollingBack { reason: t }
                    if t.len() > MAX_TEXT_LEN =>
                {
                    return Err(StateError::Invalid("text too long"));
                }
                _ => {}
            }
        }
        if let Some(o) = &self.last_result {
            if o.reason().is_some_and(|r| r.len() > MAX_TEXT_LEN) {
                return Err(StateError::Invalid("text too long"));
            }
            if o.validate().is_err() {
                return Err(StateError::Invalid("bad last result"));
            }
        }
        Ok(())
    }

    /// The serialized form (pretty JSON, newline-terminated).
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain structs of strings and integers into memory cannot fail.
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// Cuts `text` to at most [`MAX_TEXT_LEN`] bytes on a character boundary.
#[must_use]
pub fn clip(text: &str) -> String {
    let mut end = text.len().min(MAX_TEXT_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AgentState {
        let image = Image {
            name: "edge".into(),
            version: 41,
            sha256: Sha256Digest::of(b"a"),
            size: 1,
        };
        let mut s = AgentState::provisioned(Slot::A, Some(image.clone()), 41);
        s.update = Some(UpdateRecord {
            slot: Slot::B,
            image: Image {
                version: 42,
                ..image
            },
            manifest_sha256: Sha256Digest::of(b"m"),
            phase: Phase::Trying {
                boot_id: "b1".into(),
            },
            downloaded: 0,
        });
        s.last_result = Some(Outcome::Failed {
            name: "edge".into(),
            version: 40,
            reason: "x".into(),
            rejected: None,
        });
        s
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let bytes = s.to_bytes();
        assert_eq!(AgentState::parse(&bytes).unwrap(), s);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("\"slot\": \"B\""), "{text}");
        assert!(text.contains("\"trying\""), "{text}");
        assert!(text.contains("\"outcome\": \"failed\""), "{text}");
    }

    #[test]
    fn strict() {
        let good = String::from_utf8(sample().to_bytes()).unwrap();
        let cases = [
            good.replacen("\"format\": 1", "\"format\": 2", 1),
            good.replacen("\"floor\": 41", "\"floor\": 41, \"extra\": 1", 1),
            good.replacen("\"slot\": \"A\"", "\"slot\": \"C\"", 1),
            good.replacen("\"slot\": \"B\"", "\"slot\": \"A\"", 1),
            good.replacen("\"floor\": 41", "\"floor\": 43", 1),
            good.replacen("\"floor\": 41", "\"floor\": 40", 1),
            good.replacen("\"outcome\": \"failed\"", "\"outcome\": \"won\"", 1),
            good[..good.len() / 2].to_owned(),
            String::new(),
        ];
        for (i, bad) in cases.iter().enumerate() {
            assert_ne!(bad, &good, "case {i} did not change anything");
            assert!(
                AgentState::parse(bad.as_bytes()).is_err(),
                "case {i}: {bad}"
            );
        }
        let huge = vec![b' '; MAX_STATE_BYTES + 1];
        assert!(matches!(
            AgentState::parse(&huge),
            Err(StateError::TooLarge(_))
        ));
    }

    #[test]
    fn every_single_byte_corruption_is_refused_or_round_trips() {
        let good = sample().to_bytes();
        for i in 0..good.len() {
            for b in [b'"', b'}', b'0', b'x', 0xff] {
                let mut bad = good.clone();
                bad[i] = b;
                if let Ok(s) = AgentState::parse(&bad) {
                    // Whatever is accepted is a valid state that survives a rewrite.
                    assert_eq!(AgentState::parse(&s.to_bytes()).unwrap(), s);
                }
            }
            // Every cut before the closing brace (the final newline is optional).
            if i + 1 < good.len() {
                assert!(AgentState::parse(&good[..i]).is_err(), "prefix {i}");
            }
        }
    }

    #[test]
    fn clip_respects_char_boundaries() {
        let long = "é".repeat(MAX_TEXT_LEN);
        let c = clip(&long);
        assert!(c.len() <= MAX_TEXT_LEN);
        assert_eq!(c.len(), MAX_TEXT_LEN);
        assert_eq!(clip("short"), "short");
    }
}
