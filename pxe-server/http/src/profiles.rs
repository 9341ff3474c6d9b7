//! Machines, profiles and groups: who boots what (pure: text in, decisions out).
//!
//! Loaded in two layers, like the board catalog: [`raw::ProfilesFile`] is exactly what the TOML
//! may say (unknown keys refused); `TryFrom<ProfilesFile> for ProfileSet` checks the rules types
//! cannot express. [`ProfileSet::resolve`] answers "what does this request boot?":
//!
//! 1. a machine entry that matches the request (by MAC, then SMBIOS UUID, then serial) and names
//!    a profile;
//! 2. otherwise the most specific matching group: the one whose selector has the most terms
//!    (each label counts as one term); equal counts are decided by group name, in byte order;
//! 3. otherwise `default_profile`, if set;
//! 4. otherwise nothing.
//!
//! The schema is documented in `docs/http.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use tugboot_firmware::Sha256Digest;

use crate::ipxe::{KernelCmdline, RenderError};

/// Largest profiles file accepted, checked before parsing.
pub const MAX_PROFILES_FILE_BYTES: usize = 4 << 20;
/// Most machines, profiles and groups (each) one file may hold.
pub const MAX_ENTRIES: usize = 65_536;
/// Most labels per machine or selector.
pub const MAX_LABELS: usize = 64;
/// Longest name (profile, group, machine), board, label key, label value, serial or hostname.
pub const MAX_NAME_LEN: usize = 128;

/// Why a profiles file or a request fact was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    #[error("profiles file is {size} bytes, the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("profiles file, line {line}, column {column}: {message}")]
    Parse {
        line: usize,
        column: usize,
        message: String,
    },
    /// `at` is the TOML path of the offending value, e.g. `profiles.edge.cmdline`.
    #[error("{at}: {reason}")]
    Invalid { at: String, reason: String },
}

fn invalid(at: impl Into<String>, reason: impl Into<String>) -> ProfileError {
    ProfileError::Invalid {
        at: at.into(),
        reason: reason.into(),
    }
}

fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A request fact (query parameter) that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FactError {
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// A MAC address. Text: six hex pairs separated by `:` or `-` (iPXE's `${mac:hexhyp}`), any
/// case; shown as lowercase `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = FactError;
    fn from_str(s: &str) -> Result<Self, FactError> {
        let err = || FactError::Invalid {
            what: "MAC address",
            value: shown(s),
            reason: "expected six hex pairs separated by ':' or '-'",
        };
        if s.len() != 17 {
            return Err(err());
        }
        let sep = s.as_bytes()[2];
        if sep != b':' && sep != b'-' {
            return Err(err());
        }
        let mut out = [0u8; 6];
        for (i, part) in s.split(char::from(sep)).enumerate() {
            let slot = out.get_mut(i).ok_or_else(err)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An SMBIOS system UUID in its 8-4-4-4-12 text form (as iPXE's `${uuid}` prints it), any case;
/// stored and shown lowercase. Byte order is not interpreted: the text is the identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid(pub [u8; 16]);

impl FromStr for Uuid {
    type Err = FactError;
    fn from_str(s: &str) -> Result<Self, FactError> {
        let err = || FactError::Invalid {
            what: "UUID",
            value: shown(s),
            reason: "expected 8-4-4-4-12 hex digits",
        };
        let groups: Vec<&str> = s.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if groups.len() != 5 || groups.iter().zip(lens).any(|(g, l)| g.len() != l) {
            return Err(err());
        }
        let mut out = [0u8; 16];
        hex::decode_to_slice(groups.concat(), &mut out).map_err(|_| err())?;
        Ok(Uuid(out))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = hex::encode(self.0);
        let (a, rest) = h.split_at(8);
        let (b, rest) = rest.split_at(4);
        let (c, rest) = rest.split_at(4);
        let (d, e) = rest.split_at(4);
        write!(f, "{a}-{b}-{c}-{d}-{e}")
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Serials, hostnames and label values: printable ASCII without spaces, at most
/// [`MAX_NAME_LEN`] bytes. (Serials with spaces are rare; iPXE URI-escapes them on the way.)
fn check_text(what: &'static str, s: &str) -> Result<(), FactError> {
    let reason = if s.is_empty() {
        "empty"
    } else if s.len() > MAX_NAME_LEN {
        "too long"
    } else if !s.bytes().all(|b| b.is_ascii_graphic()) {
        "only printable ASCII without spaces is allowed"
    } else {
        return Ok(());
    };
    Err(FactError::Invalid {
        what,
        value: shown(s),
        reason,
    })
}

/// Profile, group and machine names, boards, architectures and label keys:
/// `[a-z0-9._/-]`-style identifiers starting with a letter or digit.
fn check_ident(s: &str, extra: &[u8]) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty");
    }
    if s.len() > MAX_NAME_LEN {
        return Err("too long");
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("must start with a letter or digit");
    }
    if !s.bytes().all(|b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b) || extra.contains(&b)
    }) {
        return Err("only a-z, 0-9 and . _ - are allowed");
    }
    Ok(())
}

/// What a request tells about the machine asking. Empty strings count as absent (iPXE expands an
/// unset setting to nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub mac: Option<Mac>,
    pub uuid: Option<Uuid>,
    pub serial: Option<String>,
    /// iPXE's `${buildarch}`: `x86_64`, `i386`, `arm64`, `arm32`, ...
    pub arch: Option<String>,
    /// A board name, when the client states one (e.g. a board-specific bootstrap script).
    pub board: Option<String>,
    pub hostname: Option<String>,
}

/// The raw text of the facts, as received.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct RawFacts {
    pub mac: Option<String>,
    pub uuid: Option<String>,
    pub serial: Option<String>,
    pub arch: Option<String>,
    pub board: Option<String>,
    pub hostname: Option<String>,
}

fn present(s: Option<&String>) -> Option<&str> {
    s.map(String::as_str).filter(|s| !s.is_empty())
}

impl TryFrom<&RawFacts> for Facts {
    type Error = FactError;
    fn try_from(raw: &RawFacts) -> Result<Facts, FactError> {
        let ident = |what: &'static str, s: Option<&String>| -> Result<Option<String>, FactError> {
            present(s)
                .map(|v| {
                    check_ident(v, b"").map_err(|reason| FactError::Invalid {
                        what,
                        value: shown(v),
                        reason,
                    })?;
                    Ok(v.to_owned())
                })
                .transpose()
        };
        let text = |what: &'static str, s: Option<&String>| -> Result<Option<String>, FactError> {
            present(s)
                .map(|v| check_text(what, v).map(|()| v.to_owned()))
                .transpose()
        };
        Ok(Facts {
            mac: present(raw.mac.as_ref()).map(str::parse).transpose()?,
            uuid: present(raw.uuid.as_ref()).map(str::parse).transpose()?,
            serial: text("serial", raw.serial.as_ref())?,
            arch: ident(
                "arch",
                raw.arch.as_ref().map(|a| a.to_ascii_lowercase()).as_ref(),
            )?,
            board: ident("board", raw.board.as_ref())?,
            hostname: text("hostname", raw.hostname.as_ref())?,
        })
    }
}

/// Which image a profile boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// The highest published version of this image.
    Latest { name: String },
    /// Exactly this version.
    Version { name: String, version: u64 },
    /// Exactly this manifest (SHA-256 of the envelope bytes).
    Manifest(Sha256Digest),
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Latest { name } => write!(f, "{name} (latest)"),
            ImageRef::Version { name, version } => write!(f, "{name} v{version}"),
            ImageRef::Manifest(d) => write!(f, "manifest sha256:{d}"),
        }
    }
}

/// Which iPXE script a profile renders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Template {
    /// Kernel + initrd of the profile's image, then `boot`.
    Linux,
    /// Leave iPXE so the firmware boots the next device (the local disk).
    Local,
}

impl Template {
    pub const ALL: [Template; 2] = [Template::Linux, Template::Local];

    pub fn as_str(self) -> &'static str {
        match self {
            Template::Linux => "linux",
            Template::Local => "local",
        }
    }
}

/// A placeholder in a profile command line, replaced per machine at render time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placeholder {
    Mac,
    Uuid,
    Serial,
    Hostname,
    Board,
    Label(String),
}

impl Placeholder {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "mac" => Placeholder::Mac,
            "uuid" => Placeholder::Uuid,
            "serial" => Placeholder::Serial,
            "hostname" => Placeholder::Hostname,
            "board" => Placeholder::Board,
            other => {
                let key = other.strip_prefix("label.")?;
                check_ident(key, b"/").ok()?;
                Placeholder::Label(key.to_owned())
            }
        })
    }
}

/// One piece of a profile command line: literal text or a `{{placeholder}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CmdlinePart {
    Text(String),
    Var(Placeholder),
}

/// What a group of machines boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub image: Option<ImageRef>,
    /// Extra kernel arguments, appended after the image's own command line.
    pub cmdline: Vec<CmdlinePart>,
    pub template: Template,
}

/// One real device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    pub name: Option<String>,
    pub mac: Option<Mac>,
    pub uuid: Option<Uuid>,
    pub serial: Option<String>,
    pub board: Option<String>,
    pub hostname: Option<String>,
    pub profile: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl Machine {
    /// How it is shown in logs and scripts: its name, else its first identifier.
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
}

/// Conditions that must all hold for a group to apply. Never empty (use `default_profile`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Selector {
    pub mac: Option<Mac>,
    pub uuid: Option<Uuid>,
    pub serial: Option<String>,
    pub board: Option<String>,
    pub arch: Option<String>,
    pub hostname: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl Selector {
    /// Number of terms: the specificity used to rank groups.
    pub fn terms(&self) -> usize {
        usize::from(self.mac.is_some())
            + usize::from(self.uuid.is_some())
            + usize::from(self.serial.is_some())
            + usize::from(self.board.is_some())
            + usize::from(self.arch.is_some())
            + usize::from(self.hostname.is_some())
            + self.labels.len()
    }

    fn matches(&self, f: &Effective<'_>) -> bool {
        fn term<T: PartialEq + ?Sized>(want: Option<&T>, have: Option<&T>) -> bool {
            want.is_none_or(|w| have == Some(w))
        }
        term(self.mac.as_ref(), f.mac)
            && term(self.uuid.as_ref(), f.uuid)
            && term(self.serial.as_deref(), f.serial)
            && term(self.board.as_deref(), f.board)
            && term(self.arch.as_deref(), f.arch)
            && term(self.hostname.as_deref(), f.hostname)
            && self.labels.iter().all(|(k, v)| {
                f.labels
                    .is_some_and(|labels| labels.get(k).is_some_and(|have| have == v))
            })
    }
}

/// A named set of machines (by selector) and the profile they boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub profile: String,
    pub selector: Selector,
}

/// A validated profiles file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfileSet {
    default_profile: Option<String>,
    profiles: BTreeMap<String, Profile>,
    machines: Vec<Machine>,
    /// Sorted by precedence: most terms first, then name.
    groups: Vec<Group>,
}

/// How a request got its profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via<'a> {
    /// The machine entry names the profile.
    Machine,
    /// The named group's selector matched.
    Group(&'a str),
    /// Nothing matched; the file's `default_profile`.
    Default,
}

/// The answer of [`ProfileSet::resolve`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolution<'a> {
    pub profile: &'a Profile,
    /// The machine entry the request matched, if any.
    pub machine: Option<&'a Machine>,
    pub via: Via<'a>,
    /// The request's board, or the machine entry's (which wins).
    pub board: Option<&'a str>,
}

/// Request facts with the holes filled from the identified machine.
struct Effective<'a> {
    mac: Option<&'a Mac>,
    uuid: Option<&'a Uuid>,
    serial: Option<&'a str>,
    board: Option<&'a str>,
    arch: Option<&'a str>,
    hostname: Option<&'a str>,
    labels: Option<&'a BTreeMap<String, String>>,
}

impl ProfileSet {
    /// Parses and validates a profiles file.
    pub fn from_toml(text: &str) -> Result<ProfileSet, ProfileError> {
        if text.len() > MAX_PROFILES_FILE_BYTES {
            return Err(ProfileError::TooLarge {
                size: text.len(),
                limit: MAX_PROFILES_FILE_BYTES,
            });
        }
        let raw: raw::ProfilesFile = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map_or((0, 0), |span| line_column(text, span.start));
            ProfileError::Parse {
                line,
                column,
                message: e.message().trim().to_owned(),
            }
        })?;
        ProfileSet::try_from(raw)
    }

    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    pub fn profiles(&self) -> impl Iterator<Item = &Profile> {
        self.profiles.values()
    }

    pub fn machines(&self) -> &[Machine] {
        &self.machines
    }

    /// In precedence order.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    pub fn default_profile(&self) -> Option<&str> {
        self.default_profile.as_deref()
    }

    /// Boards named anywhere in the file, to check against the board catalog.
    pub fn boards(&self) -> BTreeSet<&str> {
        self.machines
            .iter()
            .filter_map(|m| m.board.as_deref())
            .chain(
                self.groups
                    .iter()
                    .filter_map(|g| g.selector.board.as_deref()),
            )
            .collect()
    }

    /// Checks that every board the file names is in `catalog`.
    pub fn check_boards(&self, catalog: &tugboot_boards::Catalog) -> Result<(), ProfileError> {
        let places = self
            .machines
            .iter()
            .enumerate()
            .filter_map(|(i, m)| Some((format!("machines[{i}].board"), m.board.as_deref()?)))
            .chain(self.groups.iter().filter_map(|g| {
                Some((
                    format!("group {:?} selector.board", g.name),
                    g.selector.board.as_deref()?,
                ))
            }));
        for (at, board) in places {
            if catalog.get(board).is_none() {
                let known: Vec<&str> = catalog.iter().map(|b| b.name.as_str()).collect();
                return Err(invalid(
                    at,
                    format!("unknown board {board:?} (known: {})", known.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// The machine entry a request identifies: by MAC first, then UUID, then serial.
    pub fn machine(&self, facts: &Facts) -> Option<&Machine> {
        let by = |f: &dyn Fn(&Machine) -> bool| self.machines.iter().find(|m| f(m));
        facts
            .mac
            .and_then(|mac| by(&|m| m.mac == Some(mac)))
            .or_else(|| facts.uuid.and_then(|uuid| by(&|m| m.uuid == Some(uuid))))
            .or_else(|| {
                facts
                    .serial
                    .as_deref()
                    .and_then(|s| by(&|m| m.serial.as_deref() == Some(s)))
            })
    }

    /// What this request boots. See the module documentation for the order.
    pub fn resolve<'a>(&'a self, facts: &'a Facts) -> Option<Resolution<'a>> {
        let machine = self.machine(facts);
        let board = machine
            .and_then(|m| m.board.as_deref())
            .or(facts.board.as_deref());
        let done = |profile: &'a str, via| {
            self.profiles.get(profile).map(|profile| Resolution {
                profile,
                machine,
                via,
                board,
            })
        };
        if let Some(name) = machine.and_then(|m| m.profile.as_deref()) {
            return done(name, Via::Machine);
        }
        let eff = Effective {
            mac: facts.mac.as_ref().or(machine.and_then(|m| m.mac.as_ref())),
            uuid: facts
                .uuid
                .as_ref()
                .or(machine.and_then(|m| m.uuid.as_ref())),
            serial: facts
                .serial
                .as_deref()
                .or(machine.and_then(|m| m.serial.as_deref())),
            board,
            arch: facts.arch.as_deref(),
            hostname: facts
                .hostname
                .as_deref()
                .or(machine.and_then(|m| m.hostname.as_deref())),
            labels: machine.map(|m| &m.labels),
        };
        if let Some(g) = self.groups.iter().find(|g| g.selector.matches(&eff)) {
            return done(&g.profile, Via::Group(&g.name));
        }
        self.default_profile
            .as_deref()
            .and_then(|d| done(d, Via::Default))
    }
}

/// Why a profile command line could not be filled in for a machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CmdlineError {
    #[error("placeholder {{{{{name}}}}} has no value for this machine")]
    Missing { name: String },
    #[error(transparent)]
    Render(#[from] RenderError),
}

impl Resolution<'_> {
    /// The profile's command line with placeholders filled from the machine and request. The
    /// result is validated as a whole, so a substituted value can never add iPXE syntax.
    pub fn cmdline(&self, facts: &Facts) -> Result<KernelCmdline, CmdlineError> {
        let m = self.machine;
        let mut text = String::new();
        for part in &self.profile.cmdline {
            match part {
                CmdlinePart::Text(t) => text.push_str(t),
                CmdlinePart::Var(p) => {
                    let value = match p {
                        Placeholder::Mac => {
                            facts.mac.or(m.and_then(|m| m.mac)).map(|v| v.to_string())
                        }
                        Placeholder::Uuid => {
                            facts.uuid.or(m.and_then(|m| m.uuid)).map(|v| v.to_string())
                        }
                        Placeholder::Serial => {
                            facts.serial.clone().or(m.and_then(|m| m.serial.clone()))
                        }
                        Placeholder::Hostname => m
                            .and_then(|m| m.hostname.clone())
                            .or(facts.hostname.clone()),
                        Placeholder::Board => self.board.map(str::to_owned),
                        Placeholder::Label(k) => m.and_then(|m| m.labels.get(k).cloned()),
                    };
                    let Some(value) = value else {
                        return Err(CmdlineError::Missing {
                            name: placeholder_name(p),
                        });
                    };
                    if value.bytes().any(|b| !b.is_ascii_graphic()) {
                        return Err(RenderError::UnsafeToken {
                            what: "whitespace or a control character in a substituted value",
                            token: shown(&value),
                        }
                        .into());
                    }
                    text.push_str(&value);
                }
            }
        }
        Ok(KernelCmdline::parse(&text)?)
    }
}

fn placeholder_name(p: &Placeholder) -> String {
    match p {
        Placeholder::Mac => "mac".into(),
        Placeholder::Uuid => "uuid".into(),
        Placeholder::Serial => "serial".into(),
        Placeholder::Hostname => "hostname".into(),
        Placeholder::Board => "board".into(),
        Placeholder::Label(k) => format!("label.{k}"),
    }
}

/// Splits `a {{mac}} b` into parts; refuses unknown placeholders and unbalanced braces. The
/// literal text is checked with the iPXE rules here, so configuration errors show at load time.
fn parse_cmdline(at: &str, text: &str) -> Result<Vec<CmdlinePart>, ProfileError> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let (lit, after) = rest.split_at(open);
        if !lit.is_empty() {
            parts.push(CmdlinePart::Text(lit.to_owned()));
        }
        let after = &after[2..];
        let close = after
            .find("}}")
            .ok_or_else(|| invalid(at, "`{{` without a closing `}}`"))?;
        let name = &after[..close];
        let p = Placeholder::parse(name).ok_or_else(|| {
            invalid(
                at,
                format!(
                    "unknown placeholder {{{{{}}}}} (known: mac, uuid, serial, hostname, board, label.<key>)",
                    shown(name)
                ),
            )
        })?;
        parts.push(CmdlinePart::Var(p));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        parts.push(CmdlinePart::Text(rest.to_owned()));
    }
    // Check the literal skeleton (placeholders as a harmless stand-in).
    let skeleton: String = parts
        .iter()
        .map(|p| match p {
            CmdlinePart::Text(t) => t.as_str(),
            CmdlinePart::Var(_) => "x",
        })
        .collect();
    if skeleton.contains("}}") {
        return Err(invalid(at, "`}}` without an opening `{{`"));
    }
    KernelCmdline::parse(&skeleton).map_err(|e| invalid(at, e.to_string()))?;
    Ok(parts)
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The TOML layer: exactly what a profiles file may say.
pub mod raw {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ProfilesFile {
        #[serde(default)]
        pub default_profile: Option<String>,
        #[serde(default)]
        pub profiles: BTreeMap<String, ProfileEntry>,
        #[serde(default)]
        pub machines: Vec<MachineEntry>,
        #[serde(default)]
        pub groups: Vec<GroupEntry>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ProfileEntry {
        pub image: Option<String>,
        pub version: Option<u64>,
        pub manifest: Option<String>,
        #[serde(default)]
        pub cmdline: String,
        pub template: Option<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct MachineEntry {
        pub name: Option<String>,
        pub mac: Option<String>,
        pub uuid: Option<String>,
        pub serial: Option<String>,
        pub board: Option<String>,
        pub hostname: Option<String>,
        pub profile: Option<String>,
        #[serde(default)]
        pub labels: BTreeMap<String, String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct GroupEntry {
        pub name: String,
        pub profile: String,
        pub selector: SelectorEntry,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SelectorEntry {
        pub mac: Option<String>,
        pub uuid: Option<String>,
        pub serial: Option<String>,
        pub board: Option<String>,
        pub arch: Option<String>,
        pub hostname: Option<String>,
        #[serde(default)]
        pub labels: BTreeMap<String, String>,
    }
}

fn ident(at: &str, s: &str) -> Result<String, ProfileError> {
    check_ident(s, b"").map_err(|r| invalid(at, format!("{:?}: {r}", shown(s))))?;
    Ok(s.to_owned())
}

fn fact<T>(at: &str, r: Result<T, FactError>) -> Result<T, ProfileError> {
    r.map_err(|e| invalid(at, e.to_string()))
}

fn labels(
    at: &str,
    raw: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ProfileError> {
    if raw.len() > MAX_LABELS {
        return Err(invalid(
            at,
            format!("{} labels, the limit is {MAX_LABELS}", raw.len()),
        ));
    }
    for (k, v) in &raw {
        check_ident(k, b"/")
            .map_err(|r| invalid(format!("{at}.{k}"), format!("label key: {r}")))?;
        fact(&format!("{at}.{k}"), check_text("label value", v))?;
    }
    Ok(raw)
}

fn count(at: &str, n: usize) -> Result<(), ProfileError> {
    if n > MAX_ENTRIES {
        return Err(invalid(
            at,
            format!("{n} entries, the limit is {MAX_ENTRIES}"),
        ));
    }
    Ok(())
}

impl TryFrom<raw::ProfilesFile> for ProfileSet {
    type Error = ProfileError;

    fn try_from(raw: raw::ProfilesFile) -> Result<ProfileSet, ProfileError> {
        count("profiles", raw.profiles.len())?;
        count("machines", raw.machines.len())?;
        count("groups", raw.groups.len())?;

        let mut profiles = BTreeMap::new();
        for (name, p) in raw.profiles {
            let at = format!("profiles.{name}");
            ident(&at, &name)?;
            let template = match p.template.as_deref() {
                None => Template::Linux,
                Some(t) => Template::ALL
                    .into_iter()
                    .find(|x| x.as_str() == t)
                    .ok_or_else(|| {
                        invalid(
                            format!("{at}.template"),
                            format!("unknown template {:?} (known: linux, local)", shown(t)),
                        )
                    })?,
            };
            let image = match (p.image, p.version, p.manifest) {
                (None, None, None) => None,
                (Some(name), version, None) => {
                    let field = format!("{at}.image");
                    check_image_name(&field, &name)?;
                    Some(match version {
                        None => ImageRef::Latest { name },
                        Some(version) => ImageRef::Version { name, version },
                    })
                }
                (None, None, Some(d)) => {
                    Some(ImageRef::Manifest(d.parse().map_err(|e| {
                        invalid(format!("{at}.manifest"), format!("{e}"))
                    })?))
                }
                (None, Some(_), _) => {
                    return Err(invalid(format!("{at}.version"), "version needs `image`"));
                }
                (Some(_), _, Some(_)) => {
                    return Err(invalid(
                        &at,
                        "give either `image` (and `version`) or `manifest`, not both",
                    ));
                }
            };
            match (template, &image) {
                (Template::Linux, None) => {
                    return Err(invalid(
                        &at,
                        "template \"linux\" needs an `image` or a `manifest`",
                    ));
                }
                (Template::Local, Some(_)) => {
                    return Err(invalid(
                        &at,
                        "template \"local\" boots no image: remove `image`/`manifest`",
                    ));
                }
                _ => {}
            }
            let cmdline = parse_cmdline(&format!("{at}.cmdline"), &p.cmdline)?;
            profiles.insert(
                name.clone(),
                Profile {
                    name,
                    image,
                    cmdline,
                    template,
                },
            );
        }
        let known = |at: String, name: &str| -> Result<String, ProfileError> {
            if profiles.contains_key(name) {
                Ok(name.to_owned())
            } else {
                Err(invalid(at, format!("no profile called {:?}", shown(name))))
            }
        };

        let default_profile = raw
            .default_profile
            .map(|d| known("default_profile".into(), &d))
            .transpose()?;

        let mut machines: Vec<Machine> = Vec::with_capacity(raw.machines.len());
        let mut seen_mac = BTreeMap::new();
        let mut seen_uuid = BTreeMap::new();
        let mut seen_serial = BTreeMap::new();
        let mut seen_name = BTreeSet::new();
        for (i, m) in raw.machines.into_iter().enumerate() {
            let at = format!("machines[{i}]");
            let machine = Machine {
                name: m
                    .name
                    .map(|n| ident(&format!("{at}.name"), &n))
                    .transpose()?,
                mac: m
                    .mac
                    .map(|v| fact(&format!("{at}.mac"), v.parse()))
                    .transpose()?,
                uuid: m
                    .uuid
                    .map(|v| fact(&format!("{at}.uuid"), v.parse()))
                    .transpose()?,
                serial: m
                    .serial
                    .map(|v| fact(&format!("{at}.serial"), check_text("serial", &v)).map(|()| v))
                    .transpose()?,
                board: m
                    .board
                    .map(|b| ident(&format!("{at}.board"), &b))
                    .transpose()?,
                hostname: m
                    .hostname
                    .map(|v| {
                        fact(&format!("{at}.hostname"), check_text("hostname", &v)).map(|()| v)
                    })
                    .transpose()?,
                profile: m
                    .profile
                    .map(|p| known(format!("{at}.profile"), &p))
                    .transpose()?,
                labels: labels(&format!("{at}.labels"), m.labels)?,
            };
            if machine.mac.is_none() && machine.uuid.is_none() && machine.serial.is_none() {
                return Err(invalid(at, "a machine needs a `mac`, `uuid` or `serial`"));
            }
            let dup = |what: &str, first: usize| {
                invalid(
                    format!("{at}.{what}"),
                    format!("same {what} as machines[{first}]"),
                )
            };
            if let Some(v) = machine.mac
                && let Some(first) = seen_mac.insert(v, i)
            {
                return Err(dup("mac", first));
            }
            if let Some(v) = machine.uuid
                && let Some(first) = seen_uuid.insert(v, i)
            {
                return Err(dup("uuid", first));
            }
            if let Some(v) = &machine.serial
                && let Some(first) = seen_serial.insert(v.clone(), i)
            {
                return Err(dup("serial", first));
            }
            if let Some(n) = &machine.name
                && !seen_name.insert(n.clone())
            {
                return Err(invalid(
                    format!("{at}.name"),
                    "another machine has this name",
                ));
            }
            machines.push(machine);
        }

        let mut groups: Vec<Group> = Vec::with_capacity(raw.groups.len());
        for (i, g) in raw.groups.into_iter().enumerate() {
            let at = format!("groups[{i}]");
            let s = g.selector;
            let sat = format!("{at}.selector");
            let selector = Selector {
                mac: s
                    .mac
                    .map(|v| fact(&format!("{sat}.mac"), v.parse()))
                    .transpose()?,
                uuid: s
                    .uuid
                    .map(|v| fact(&format!("{sat}.uuid"), v.parse()))
                    .transpose()?,
                serial: s
                    .serial
                    .map(|v| fact(&format!("{sat}.serial"), check_text("serial", &v)).map(|()| v))
                    .transpose()?,
                board: s
                    .board
                    .map(|b| ident(&format!("{sat}.board"), &b))
                    .transpose()?,
                arch: s
                    .arch
                    .map(|b| ident(&format!("{sat}.arch"), &b))
                    .transpose()?,
                hostname: s
                    .hostname
                    .map(|v| {
                        fact(&format!("{sat}.hostname"), check_text("hostname", &v)).map(|()| v)
                    })
                    .transpose()?,
                labels: labels(&format!("{sat}.labels"), s.labels)?,
            };
            if selector.terms() == 0 {
                return Err(invalid(
                    sat,
                    "an empty selector matches everything: use `default_profile` instead",
                ));
            }
            let group = Group {
                name: ident(&format!("{at}.name"), &g.name)?,
                profile: known(format!("{at}.profile"), &g.profile)?,
                selector,
            };
            if let Some(j) = groups.iter().position(|o| o.name == group.name) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!("groups[{j}] has the same name"),
                ));
            }
            if let Some(o) = groups.iter().find(|o| o.selector == group.selector) {
                return Err(invalid(
                    sat,
                    format!(
                        "same selector as group {:?}: which one applies would be arbitrary",
                        o.name
                    ),
                ));
            }
            groups.push(group);
        }
        groups.sort_by(|a, b| {
            b.selector
                .terms()
                .cmp(&a.selector.terms())
                .then_with(|| a.name.cmp(&b.name))
        });

        Ok(ProfileSet {
            default_profile,
            profiles,
            machines,
            groups,
        })
    }
}

/// Same rule as manifest names: `[A-Za-z0-9._+-]`, starting with a letter or digit.
fn check_image_name(at: &str, name: &str) -> Result<(), ProfileError> {
    let ok = !name.is_empty()
        && name.len() <= tugboot_firmware::MAX_NAME_LEN
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(at, format!("invalid image name {:?}", shown(name))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../tests/fixtures/http/profiles/example.toml");

    fn facts(
        mac: Option<&str>,
        uuid: Option<&str>,
        serial: Option<&str>,
        arch: Option<&str>,
    ) -> Facts {
        Facts::try_from(&RawFacts {
            mac: mac.map(Into::into),
            uuid: uuid.map(Into::into),
            serial: serial.map(Into::into),
            arch: arch.map(Into::into),
            board: None,
            hostname: None,
        })
        .unwrap()
    }

    fn err_at(text: &str) -> String {
        match ProfileSet::from_toml(text) {
            Err(ProfileError::Invalid { at, .. }) => at,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn example_file_loads() {
        let set = ProfileSet::from_toml(EXAMPLE).unwrap();
        assert_eq!(set.default_profile(), Some("rescue"));
        assert_eq!(set.machines().len(), 3);
        let names: Vec<&str> = set.groups().iter().map(|g| g.name.as_str()).collect();
        // Most terms first, then by name.
        assert_eq!(names, ["rack1-gateways", "arm64-any", "rack1"]);
        assert_eq!(
            set.profile("edge").unwrap().image,
            Some(ImageRef::Version {
                name: "edge-gateway".into(),
                version: 42
            })
        );
        assert_eq!(
            set.boards().into_iter().collect::<Vec<_>>(),
            ["raspberrypi-4", "x86_64-uefi"]
        );
    }

    #[test]
    fn boards_checked_against_the_catalog() {
        let catalog = tugboot_boards::Catalog::builtin();
        ProfileSet::from_toml(EXAMPLE)
            .unwrap()
            .check_boards(&catalog)
            .unwrap();
        let text = EXAMPLE.replace("board = \"raspberrypi-4\"", "board = \"raspberrypi-9\"");
        match ProfileSet::from_toml(&text).unwrap().check_boards(&catalog) {
            Err(ProfileError::Invalid { at, reason }) => {
                assert_eq!(at, "machines[1].board");
                assert!(reason.contains("raspberrypi-9"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn facts_parse_and_normalise() {
        let f = facts(
            Some("52-54-00-AB-cd-56"),
            Some("8A3B1C2D-0000-4000-8000-00000000000A"),
            Some(""),
            Some("X86_64"),
        );
        assert_eq!(f.mac.unwrap().to_string(), "52:54:00:ab:cd:56");
        assert_eq!(
            f.uuid.unwrap().to_string(),
            "8a3b1c2d-0000-4000-8000-00000000000a"
        );
        assert_eq!(f.serial, None, "empty means absent");
        assert_eq!(f.arch.as_deref(), Some("x86_64"));
        for bad in [
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:5g",
            "52:54-00:ab:cd:56",
            "525400abcd56ab",
            "52:54:00:ab:cd:56:",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        for bad in [
            "8a3b1c2d00004000800000000000000a",
            "8a3b1c2d-0000-4000-8000-00000000000",
            "g8a3b1c2-0000-4000-8000-00000000000a",
        ] {
            assert!(bad.parse::<Uuid>().is_err(), "{bad}");
        }
        let raw = RawFacts {
            serial: Some("a b".into()),
            ..RawFacts::default()
        };
        assert!(Facts::try_from(&raw).is_err());
        let raw = RawFacts {
            board: Some("../x".into()),
            ..RawFacts::default()
        };
        assert!(Facts::try_from(&raw).is_err());
    }

    #[test]
    fn precedence_machine_then_group_then_default() {
        let set = ProfileSet::from_toml(EXAMPLE).unwrap();
        // gw-1 names its profile explicitly even though rack1 groups match it too.
        let f = facts(Some("52:54:00:00:00:01"), None, None, Some("x86_64"));
        let r = set.resolve(&f).unwrap();
        assert_eq!((r.profile.name.as_str(), r.via), ("pinned", Via::Machine));
        assert_eq!(r.board, Some("x86_64-uefi"));
        // gw-2 has no profile: labels rack=r1 + role=gateway (2 terms) beat rack=r1 (1 term).
        let f = facts(
            None,
            Some("8a3b1c2d-0000-4000-8000-000000000002"),
            None,
            None,
        );
        let r = set.resolve(&f).unwrap();
        assert_eq!(r.via, Via::Group("rack1-gateways"));
        assert_eq!(r.machine.unwrap().name.as_deref(), Some("gw-2"));
        // node-3 (by serial): only rack=r1.
        let f = facts(None, None, Some("SN-0003"), Some("x86_64"));
        assert_eq!(set.resolve(&f).unwrap().via, Via::Group("rack1"));
        // Unknown arm64 machine: the arch group.
        let f = facts(Some("02:00:00:00:00:09"), None, None, Some("arm64"));
        assert_eq!(set.resolve(&f).unwrap().via, Via::Group("arm64-any"));
        // Unknown x86 machine: the default.
        let f = facts(Some("02:00:00:00:00:09"), None, None, Some("x86_64"));
        let r = set.resolve(&f).unwrap();
        assert_eq!(
            (r.profile.name.as_str(), r.via, r.machine),
            ("rescue", Via::Default, None)
        );
        // No default: nothing.
        let no_default = EXAMPLE.replace("default_profile = \"rescue\"", "");
        let set = ProfileSet::from_toml(&no_default).unwrap();
        assert_eq!(set.resolve(&f), None);
    }

    #[test]
    fn mac_identifies_before_uuid() {
        let set = ProfileSet::from_toml(EXAMPLE).unwrap();
        // MAC of gw-1, UUID of gw-2: the MAC wins.
        let f = facts(
            Some("52:54:00:00:00:01"),
            Some("8a3b1c2d-0000-4000-8000-000000000002"),
            None,
            None,
        );
        assert_eq!(set.machine(&f).unwrap().name.as_deref(), Some("gw-1"));
    }

    #[test]
    fn cmdline_placeholders_are_filled_and_checked() {
        let set = ProfileSet::from_toml(EXAMPLE).unwrap();
        let f = facts(
            None,
            Some("8a3b1c2d-0000-4000-8000-000000000002"),
            None,
            None,
        );
        let r = set.resolve(&f).unwrap();
        assert_eq!(
            r.cmdline(&f).unwrap().as_str(),
            "console=ttyS0 tugboot.rack=r1 tugboot.host=gw-2 tugboot.mac=52:54:00:00:00:02"
        );
        // A serial substituted into a command line can never become iPXE syntax.
        let text = r#"
            [profiles.p]
            image = "x"
            cmdline = "sn={{serial}} {{serial}}"
            [[groups]]
            name = "all-x86"
            profile = "p"
            selector = { arch = "x86_64" }
        "#;
        let set = ProfileSet::from_toml(text).unwrap();
        for (serial, ok) in [
            ("ABC", true),
            (";", false),
            ("${x}", false),
            ("#1", false),
            ("||", false),
        ] {
            let f = facts(None, None, Some(serial), Some("x86_64"));
            let r = set.resolve(&f).unwrap();
            assert_eq!(r.cmdline(&f).is_ok(), ok, "{serial}");
        }
        let f = facts(None, None, None, Some("x86_64"));
        assert!(matches!(
            set.resolve(&f).unwrap().cmdline(&f),
            Err(CmdlineError::Missing { .. })
        ));
    }

    #[test]
    fn errors_name_the_place() {
        let cases = [
            (
                "[profiles.a]\nimage = \"x\"\ncmdline = \"a\\nb\"",
                "profiles.a.cmdline",
            ),
            (
                "[profiles.a]\nimage = \"x\"\ncmdline = \"${x}\"",
                "profiles.a.cmdline",
            ),
            (
                "[profiles.a]\nimage = \"x\"\ncmdline = \"{{nope}}\"",
                "profiles.a.cmdline",
            ),
            (
                "[profiles.a]\nimage = \"x\"\ncmdline = \"{{mac\"",
                "profiles.a.cmdline",
            ),
            (
                "[profiles.a]\nimage = \"x\"\ncmdline = \"a}}\"",
                "profiles.a.cmdline",
            ),
            ("[profiles.a]\ntemplate = \"linux\"", "profiles.a"),
            (
                "[profiles.a]\ntemplate = \"pxelinux\"",
                "profiles.a.template",
            ),
            (
                "[profiles.a]\ntemplate = \"local\"\nimage = \"x\"",
                "profiles.a",
            ),
            ("[profiles.a]\nversion = 3", "profiles.a.version"),
            (
                "[profiles.a]\nimage = \"x\"\nmanifest = \"00\"",
                "profiles.a",
            ),
            ("[profiles.a]\nmanifest = \"00\"", "profiles.a.manifest"),
            ("[profiles.a]\nimage = \"../x\"", "profiles.a.image"),
            ("[profiles.A]\nimage = \"x\"", "profiles.A"),
            ("default_profile = \"nope\"", "default_profile"),
            ("[[machines]]\nname = \"m\"", "machines[0]"),
            ("[[machines]]\nmac = \"zz\"", "machines[0].mac"),
            (
                "[[machines]]\nmac = \"02:00:00:00:00:01\"\nprofile = \"x\"",
                "machines[0].profile",
            ),
            (
                "[[machines]]\nmac = \"02:00:00:00:00:01\"\n[[machines]]\nmac = \"02-00-00-00-00-01\"",
                "machines[1].mac",
            ),
            (
                "[[machines]]\nserial = \"a\"\nlabels = { Rack = \"1\" }",
                "machines[0].labels.Rack",
            ),
            (
                "[[machines]]\nserial = \"a\"\nlabels = { rack = \"a b\" }",
                "machines[0].labels.rack",
            ),
            (
                "[profiles.p]\nimage = \"x\"\n[[groups]]\nname = \"g\"\nprofile = \"p\"\nselector = {}",
                "groups[0].selector",
            ),
            (
                "[profiles.p]\nimage = \"x\"\n[[groups]]\nname = \"g\"\nprofile = \"p\"\nselector = { arch = \"arm64\" }\n[[groups]]\nname = \"h\"\nprofile = \"p\"\nselector = { arch = \"arm64\" }",
                "groups[1].selector",
            ),
            (
                "[profiles.p]\nimage = \"x\"\n[[groups]]\nname = \"g\"\nprofile = \"p\"\nselector = { arch = \"arm64\" }\n[[groups]]\nname = \"g\"\nprofile = \"p\"\nselector = { arch = \"x86_64\" }",
                "groups[1].name",
            ),
        ];
        for (text, at) in cases {
            assert_eq!(err_at(text), at, "{text}");
        }
    }

    #[test]
    fn parse_errors_have_positions_and_caps() {
        match ProfileSet::from_toml("[profiles.a]\nimage = \"x\"\ncolour = \"red\"\n") {
            Err(ProfileError::Parse { line, message, .. }) => {
                assert_eq!(line, 3);
                assert!(message.contains("colour"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let big = " ".repeat(MAX_PROFILES_FILE_BYTES + 1);
        assert!(matches!(
            ProfileSet::from_toml(&big),
            Err(ProfileError::TooLarge { .. })
        ));
        assert_eq!(ProfileSet::from_toml("").unwrap(), ProfileSet::default());
    }
}
