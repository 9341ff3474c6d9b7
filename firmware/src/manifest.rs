//! The manifest: the signed statement that names one image.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::MANIFEST_TYPE;
use crate::canonical::MAX_SAFE_INTEGER;
use crate::digest::Sha256Digest;
use crate::error::FormatError;
use crate::time::Timestamp;

/// At most this many artifacts per manifest.
pub const MAX_ARTIFACTS: usize = 64;
/// At most this many boards per manifest.
pub const MAX_BOARDS: usize = 64;
/// At most this many labels per manifest.
pub const MAX_LABELS: usize = 64;
pub const MAX_NAME_LEN: usize = 128;
pub const MAX_BOARD_LEN: usize = 64;
pub const MAX_LABEL_KEY_LEN: usize = 128;
pub const MAX_LABEL_VALUE_LEN: usize = 1024;

/// One release of one image. Only trust the contents after [`crate::verify_manifest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Image name, e.g. `edge-gateway`. `[A-Za-z0-9._+-]`, starts with a letter or digit.
    pub name: String,
    /// Monotonic release number; the rollback floor compares against it.
    pub version: u64,
    /// Boards (see `boards/*.toml`) this image may run on. `[a-z0-9._-]`.
    pub boards: Vec<String>,
    /// The content, each bound by digest and size.
    pub artifacts: Vec<Artifact>,
    pub created: Timestamp,
    /// After this instant the manifest is refused (freeze protection).
    pub expires: Timestamp,
    /// The device must already run at least this version to install this one (stepping stones).
    pub min_version: Option<u64>,
    /// Free-form metadata, signed. Keys `[a-z0-9._/-]`.
    pub labels: BTreeMap<String, String>,
}

/// One file of an image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub role: Role,
    /// File name under which servers offer it. Same charset as the manifest name.
    pub name: String,
    pub sha256: Sha256Digest,
    pub size: u64,
}

/// What an artifact is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Kernel,
    Initrd,
    Cmdline,
    /// A raw partition image written into the inactive A/B slot.
    Slot,
    /// A device tree blob.
    Dtb,
    /// Any other file (firmware blobs, Raspberry Pi boot files, ...).
    File,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Kernel,
        Role::Initrd,
        Role::Cmdline,
        Role::Slot,
        Role::Dtb,
        Role::File,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Kernel => "kernel",
            Role::Initrd => "initrd",
            Role::Cmdline => "cmdline",
            Role::Slot => "slot",
            Role::Dtb => "dtb",
            Role::File => "file",
        }
    }

    /// Roles that make sense only once per image.
    pub fn is_unique(self) -> bool {
        matches!(
            self,
            Role::Kernel | Role::Initrd | Role::Cmdline | Role::Dtb
        )
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, FormatError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| FormatError::Role(s.chars().take(32).collect()))
    }
}

impl Manifest {
    /// Checks every rule of the format that a single manifest can break on its own.
    pub fn validate(&self) -> Result<(), FormatError> {
        check_name("name", &self.name, MAX_NAME_LEN, is_name_char)?;
        check_int("version", self.version)?;
        if let Some(min) = self.min_version {
            check_int("min_version", min)?;
            if min > self.version {
                return Err(FormatError::Invalid {
                    field: "min_version",
                    reason: "greater than version",
                });
            }
        }
        for t in [self.created, self.expires] {
            if !t.is_representable() {
                return Err(FormatError::Timestamp(t.to_string()));
            }
        }
        if self.expires <= self.created {
            return Err(FormatError::Invalid {
                field: "expires",
                reason: "not after created",
            });
        }

        check_count("boards", self.boards.len(), MAX_BOARDS)?;
        for (i, board) in self.boards.iter().enumerate() {
            check_name("board", board, MAX_BOARD_LEN, is_board_char)?;
            if self.boards[..i].contains(board) {
                return Err(FormatError::Duplicate {
                    what: "board",
                    value: board.clone(),
                });
            }
        }

        check_count("artifacts", self.artifacts.len(), MAX_ARTIFACTS)?;
        for (i, a) in self.artifacts.iter().enumerate() {
            check_name("artifact name", &a.name, MAX_NAME_LEN, is_name_char)?;
            check_int("size", a.size)?;
            let earlier = &self.artifacts[..i];
            if earlier.iter().any(|b| b.name == a.name) {
                return Err(FormatError::Duplicate {
                    what: "artifact name",
                    value: a.name.clone(),
                });
            }
            if a.role.is_unique() && earlier.iter().any(|b| b.role == a.role) {
                return Err(FormatError::Duplicate {
                    what: "artifact role",
                    value: a.role.to_string(),
                });
            }
        }

        if self.labels.len() > MAX_LABELS {
            return Err(FormatError::TooMany {
                what: "labels",
                count: self.labels.len(),
                limit: MAX_LABELS,
            });
        }
        for (key, value) in &self.labels {
            check_name("label key", key, MAX_LABEL_KEY_LEN, is_label_key_char)?;
            if value.len() > MAX_LABEL_VALUE_LEN {
                return Err(invalid_name("label value", value, "too long"));
            }
            if value.chars().any(char::is_control) {
                return Err(invalid_name(
                    "label value",
                    value,
                    "contains control characters",
                ));
            }
        }
        Ok(())
    }

    /// The first artifact with this role (unique roles have at most one).
    pub fn artifact(&self, role: Role) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.role == role)
    }
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'+' | b'-')
}

fn is_board_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
}

fn is_label_key_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'/' | b'-')
}

fn invalid_name(what: &'static str, value: &str, reason: &'static str) -> FormatError {
    FormatError::InvalidName {
        what,
        value: value.chars().take(64).collect(),
        reason,
    }
}

/// Names start with a letter or digit (so never `.`, `..`, `-option` or a hidden file) and use
/// only their charset, which never includes `/`, `\`, spaces, quotes or controls.
fn check_name(
    what: &'static str,
    value: &str,
    max: usize,
    allowed: fn(u8) -> bool,
) -> Result<(), FormatError> {
    if value.is_empty() {
        return Err(invalid_name(what, value, "empty"));
    }
    if value.len() > max {
        return Err(invalid_name(what, value, "too long"));
    }
    if !value.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(invalid_name(
            what,
            value,
            "must start with a letter or digit",
        ));
    }
    if !value.bytes().all(allowed) {
        return Err(invalid_name(
            what,
            value,
            "character outside the allowed set",
        ));
    }
    Ok(())
}

pub(crate) fn check_int(field: &'static str, v: u64) -> Result<(), FormatError> {
    if v > MAX_SAFE_INTEGER {
        return Err(FormatError::IntegerRange { field });
    }
    Ok(())
}

pub(crate) fn check_count(
    what: &'static str,
    count: usize,
    limit: usize,
) -> Result<(), FormatError> {
    if count == 0 {
        return Err(FormatError::Empty { what });
    }
    if count > limit {
        return Err(FormatError::TooMany { what, count, limit });
    }
    Ok(())
}

/// The JSON shape: the struct plus its `type` tag. Optional fields are omitted when absent/empty
/// so that each manifest has exactly one canonical encoding.
#[derive(Serialize)]
struct WireOut<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    name: &'a str,
    version: u64,
    boards: &'a [String],
    artifacts: &'a [Artifact],
    created: Timestamp,
    expires: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_version: Option<u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireIn {
    #[serde(rename = "type")]
    ty: String,
    name: String,
    version: u64,
    boards: Vec<String>,
    artifacts: Vec<Artifact>,
    created: Timestamp,
    expires: Timestamp,
    #[serde(default)]
    min_version: Option<u64>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

impl Serialize for Manifest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireOut {
            ty: MANIFEST_TYPE,
            name: &self.name,
            version: self.version,
            boards: &self.boards,
            artifacts: &self.artifacts,
            created: self.created,
            expires: self.expires,
            min_version: self.min_version,
            labels: &self.labels,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Manifest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = WireIn::deserialize(d)?;
        if w.ty != MANIFEST_TYPE {
            let err = FormatError::WrongType {
                expected: MANIFEST_TYPE,
                found: w.ty.chars().take(64).collect(),
            };
            return Err(serde::de::Error::custom(err));
        }
        Ok(Manifest {
            name: w.name,
            version: w.version,
            boards: w.boards,
            artifacts: w.artifacts,
            created: w.created,
            expires: w.expires,
            min_version: w.min_version,
            labels: w.labels,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            name: "edge-gw".into(),
            version: 7,
            boards: vec!["rpi4".into(), "x86-64-uefi".into()],
            artifacts: vec![
                Artifact {
                    role: Role::Kernel,
                    name: "vmlinuz".into(),
                    sha256: Sha256Digest::of(b"k"),
                    size: 1,
                },
                Artifact {
                    role: Role::Initrd,
                    name: "initrd.img".into(),
                    sha256: Sha256Digest::of(b"i"),
                    size: 1,
                },
            ],
            created: Timestamp::from_unix(1_700_000_000),
            expires: Timestamp::from_unix(1_800_000_000),
            min_version: None,
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn role_text() {
        for r in Role::ALL {
            assert_eq!(r.to_string().parse::<Role>().unwrap(), r);
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        assert!("Kernel".parse::<Role>().is_err());
    }

    #[test]
    fn validation_rules() {
        sample().validate().unwrap();
        type Mutation = fn(&mut Manifest);
        let cases: Vec<(&str, Mutation)> = vec![
            ("empty name", |m| m.name.clear()),
            ("slash in name", |m| m.name = "a/b".into()),
            ("dot name", |m| m.name = "..".into()),
            ("long name", |m| m.name = "a".repeat(129)),
            ("uppercase board", |m| m.boards[0] = "RPI4".into()),
            ("no boards", |m| m.boards.clear()),
            ("duplicate board", |m| m.boards[1] = "rpi4".into()),
            ("no artifacts", |m| m.artifacts.clear()),
            ("two kernels", |m| m.artifacts[1].role = Role::Kernel),
            ("same artifact name", |m| {
                m.artifacts[1].name = "vmlinuz".into()
            }),
            ("artifact name with slash", |m| {
                m.artifacts[0].name = "../vmlinuz".into()
            }),
            ("expires before created", |m| m.expires = m.created),
            ("min above version", |m| m.min_version = Some(8)),
            ("huge version", |m| m.version = 1 << 53),
            ("huge size", |m| m.artifacts[0].size = u64::MAX),
            ("label key uppercase", |m| {
                m.labels.insert("Team".into(), "x".into());
            }),
            ("label value newline", |m| {
                m.labels.insert("team".into(), "a\nb".into());
            }),
            ("too many artifacts", |m| {
                m.artifacts = (0..65)
                    .map(|i| Artifact {
                        role: Role::File,
                        name: format!("f{i}"),
                        sha256: Sha256Digest::of(b""),
                        size: 0,
                    })
                    .collect();
            }),
        ];
        for (what, mutate) in cases {
            let mut m = sample();
            mutate(&mut m);
            assert!(m.validate().is_err(), "{what} accepted");
        }
        let mut m = sample();
        m.artifacts.push(Artifact {
            role: Role::File,
            name: "a".into(),
            sha256: Sha256Digest::of(b""),
            size: 0,
        });
        m.artifacts.push(Artifact {
            role: Role::File,
            name: "b".into(),
            sha256: Sha256Digest::of(b""),
            size: 0,
        });
        m.labels.insert("build/commit".into(), "abc123 é".into());
        m.min_version = Some(7);
        m.validate().unwrap();
    }
}
