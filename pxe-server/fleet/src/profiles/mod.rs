//! The profiles file: what groups of machines boot (profiles and groups), and machines the
//! operator declares in a file.
//!
//! Loaded in two layers: [`raw::ProfilesFile`] is exactly what the TOML may say (unknown keys
//! refused); [`validate`] checks the rules types cannot express and builds a [`ProfileSet`].
//! Profiles and groups are configuration the [`crate::Fleet`] snapshot carries; declared
//! machines are one *source* of the machine registry: `serve` syncs them into the store as facts
//! `declared:file` ([`DeclaredMachine::facts`]), and from there they reach every front end and
//! the rollouts like any other machine. What a machine boots is decided in [`crate::plan`].
//!
//! The schema is documented in `docs/fleet.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use tugboot_wire::{Mac, Uuid};

use crate::catalogue::ImageRef;
use crate::facts::{Declarer, Fact, FactKey, Facts, Source, keys};
use crate::selector::Selector;

pub mod raw;
mod validate;

/// Largest profiles file accepted, checked before parsing.
pub const MAX_PROFILES_FILE_BYTES: usize = 4 << 20;
/// Most machines, profiles and groups (each) one file may hold.
pub const MAX_ENTRIES: usize = 65_536;
/// Most labels per machine.
pub const MAX_LABELS: usize = 64;
/// Longest name (profile, group, machine), board, label key, label value, serial or hostname.
pub const MAX_NAME_LEN: usize = 128;

/// Why a profiles file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// Larger than [`MAX_PROFILES_FILE_BYTES`].
    #[error("profiles file is {size} bytes, the limit is {limit}")]
    TooLarge {
        /// Size.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// Not TOML, or not this schema.
    #[error("profiles file, line {line}, column {column}: {message}")]
    Parse {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// Parser message.
        message: String,
    },
    /// A value breaks a rule. `at` is its TOML path, e.g. `profiles.edge.cmdline`.
    #[error("{at}: {reason}")]
    Invalid {
        /// Where.
        at: String,
        /// Why.
        reason: String,
    },
}

/// Which boot a profile renders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Template {
    /// Kernel + initrd of the profile's image.
    Linux,
    /// Leave the network loader so the firmware boots the next device (the local disk).
    Local,
    /// Netboot the profile's `installer` image until the machine reports (over mutual TLS) that
    /// it installed the profile's `image` to its disk; from then on boot the disk (`local`).
    Install,
}

impl Template {
    /// Every template.
    pub const ALL: [Template; 3] = [Template::Linux, Template::Local, Template::Install];

    /// The name written in the file.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Template::Linux => "linux",
            Template::Local => "local",
            Template::Install => "install",
        }
    }
}

/// A placeholder in a profile command line, filled per machine when a plan is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placeholder {
    /// `{{mac}}`.
    Mac,
    /// `{{uuid}}`.
    Uuid,
    /// `{{serial}}`.
    Serial,
    /// `{{hostname}}`.
    Hostname,
    /// `{{board}}`.
    Board,
    /// `{{name}}`: the machine's name.
    Name,
    /// `{{label.<key>}}`.
    Label(String),
}

impl Placeholder {
    pub(crate) fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "mac" => Placeholder::Mac,
            "uuid" => Placeholder::Uuid,
            "serial" => Placeholder::Serial,
            "hostname" => Placeholder::Hostname,
            "board" => Placeholder::Board,
            "name" => Placeholder::Name,
            other => {
                let key = other.strip_prefix(keys::LABEL_PREFIX)?;
                crate::facts::check_ident(key, b"/").ok()?;
                Placeholder::Label(key.to_owned())
            }
        })
    }

    /// The name as written between the braces.
    #[must_use]
    pub fn name(&self) -> String {
        match self {
            Placeholder::Mac => "mac".into(),
            Placeholder::Uuid => "uuid".into(),
            Placeholder::Serial => "serial".into(),
            Placeholder::Hostname => "hostname".into(),
            Placeholder::Board => "board".into(),
            Placeholder::Name => "name".into(),
            Placeholder::Label(k) => format!("label.{k}"),
        }
    }
}

/// One piece of a profile command line: literal text or a `{{placeholder}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CmdlinePart {
    /// Literal text (already checked against the command line rules).
    Text(String),
    /// A placeholder.
    Var(Placeholder),
}

/// What a group of machines boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// Name.
    pub name: String,
    /// The image (none for `local`; for `install` the image installed to the disk).
    pub image: Option<ImageRef>,
    /// `install` only: the image netbooted to install `image` (kernel + initrd with the agent).
    pub installer: Option<ImageRef>,
    /// Extra kernel arguments, appended after the board's and the image's own.
    pub cmdline: Vec<CmdlinePart>,
    /// What it renders.
    pub template: Template,
}

/// A machine declared in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredMachine {
    /// Name (unique in the file).
    pub name: Option<String>,
    /// Boot MAC.
    pub mac: Option<Mac>,
    /// SMBIOS UUID.
    pub uuid: Option<Uuid>,
    /// Serial number.
    pub serial: Option<String>,
    /// Board.
    pub board: Option<String>,
    /// Host name.
    pub hostname: Option<String>,
    /// Profile (whatever groups say).
    pub profile: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Fixed IPv4 address (a DHCP reservation).
    pub address: Option<Ipv4Addr>,
}

impl DeclaredMachine {
    /// How it is named in logs: its name, else its first identifier.
    #[must_use]
    pub fn display_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        match (&self.mac, &self.uuid, &self.serial) {
            (Some(m), _, _) => m.to_string(),
            (None, Some(u), _) => u.to_string(),
            (None, None, Some(s)) => s.clone(),
            (None, None, None) => String::from("?"),
        }
    }

    /// What the file states about this machine, as facts `declared:file` stated at `at`.
    /// Values were validated when the file was loaded.
    #[must_use]
    pub fn facts(&self, at: i64) -> Facts {
        let source = Source::Declared(Declarer::File);
        let mut out = Facts::new();
        let mut put = |key: Option<FactKey>, value: &str| {
            if let Some(key) = key {
                out.offer(
                    key,
                    Fact {
                        value: value.to_owned(),
                        source,
                        at,
                    },
                );
            }
        };
        for (k, v) in [
            (keys::BOARD, &self.board),
            (keys::HOSTNAME, &self.hostname),
            (keys::PROFILE, &self.profile),
        ] {
            if let Some(v) = v {
                put(FactKey::new(k).ok(), v);
            }
        }
        if let Some(a) = self.address {
            put(FactKey::new(keys::ADDRESS).ok(), &a.to_string());
        }
        for (k, v) in &self.labels {
            put(FactKey::label(k).ok(), v);
        }
        out
    }
}

/// A named set of machines (by selector) and the profile they boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// Name.
    pub name: String,
    /// Profile.
    pub profile: String,
    /// Which machines (never empty).
    pub selector: Selector,
}

/// A validated profiles file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfileSet {
    default_profile: Option<String>,
    profiles: BTreeMap<String, Profile>,
    machines: Vec<DeclaredMachine>,
    /// Sorted by precedence: most terms first, then name.
    groups: Vec<Group>,
}

impl ProfileSet {
    /// Parses and validates a profiles file.
    ///
    /// # Errors
    /// [`ProfileError`].
    pub fn from_toml(text: &str) -> Result<ProfileSet, ProfileError> {
        validate::from_toml(text)
    }

    /// A profile by name.
    #[must_use]
    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    /// Every profile, by name.
    pub fn profiles(&self) -> impl Iterator<Item = &Profile> {
        self.profiles.values()
    }

    /// Declared machines, in file order.
    #[must_use]
    pub fn machines(&self) -> &[DeclaredMachine] {
        &self.machines
    }

    /// Groups, in precedence order.
    #[must_use]
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The profile of machines nothing else matches.
    #[must_use]
    pub fn default_profile(&self) -> Option<&str> {
        self.default_profile.as_deref()
    }

    /// Boards named anywhere in the file, to check against the board catalog.
    #[must_use]
    pub fn boards(&self) -> BTreeSet<&str> {
        self.machines
            .iter()
            .filter_map(|m| m.board.as_deref())
            .chain(
                self.groups
                    .iter()
                    .filter_map(|g| g.selector.get(keys::BOARD)),
            )
            .collect()
    }

    /// Checks that every board the file names is in `catalog`.
    ///
    /// # Errors
    /// [`ProfileError::Invalid`] naming the place.
    pub fn check_boards(&self, catalog: &tugboot_boards::Catalog) -> Result<(), ProfileError> {
        let places = self
            .machines
            .iter()
            .enumerate()
            .filter_map(|(i, m)| Some((format!("machines[{i}].board"), m.board.as_deref()?)))
            .chain(self.groups.iter().filter_map(|g| {
                Some((
                    format!("group {:?} selector.board", g.name),
                    g.selector.get(keys::BOARD)?,
                ))
            }));
        for (at, board) in places {
            if catalog.get(board).is_none() {
                let known: Vec<&str> = catalog.iter().map(|b| b.name.as_str()).collect();
                return Err(ProfileError::Invalid {
                    at,
                    reason: format!("unknown board {board:?} (known: {})", known.join(", ")),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
