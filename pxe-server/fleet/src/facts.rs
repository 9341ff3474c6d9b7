//! Facts about machines, each with its provenance.
//!
//! A fact is a named value (`arch = arm64`, `label.rack = r1`) plus who said it ([`Source`]) and
//! when. Sources are ordered by authority:
//!
//! | rank | source | how it gets here |
//! |---|---|---|
//! | 1 | observed (DHCP, HTTP, TFTP) | anyone on the provisioning network can send it |
//! | 2 | attested | the device itself, over mutual TLS with its certificate |
//! | 3 | declared by the profiles file | the operator's file, synced at start and SIGHUP |
//! | 4 | declared by the operator | `tugboot machines label/assign` through the operator API |
//!
//! The one rule ([`Facts::offer`]): a fact replaces the stored one only if its source ranks at
//! least as high. So nothing unauthenticated ever overwrites a declared or attested value, and
//! anything security-relevant (rollout membership) reads only facts of rank ≥ 2
//! ([`crate::Trust::Authenticated`]). The store applies the same rule in its upserts, so it
//! holds even with several servers writing at once.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Longest fact name.
pub const MAX_KEY_LEN: usize = 128;
/// Longest fact value.
pub const MAX_VALUE_LEN: usize = 255;
/// Most facts one machine carries (labels included).
pub const MAX_FACTS: usize = 256;

/// Well-known fact names. Any other name is either a label (`label.<name>`) or an attested
/// inventory entry the device sends.
pub mod keys {
    /// Board name (a `boards/*.toml` name).
    pub const BOARD: &str = "board";
    /// CPU architecture as the boot images are built: `x86_64`, `arm64`, `arm32`, `riscv64`,
    /// `i386` (see [`crate::facts::normalize_arch`]).
    pub const ARCH: &str = "arch";
    /// Boot firmware family: `bios`, `uefi`, `uboot`, `rpi`.
    pub const FIRMWARE: &str = "firmware";
    /// How the machine netbooted last (`pxe`, `http-boot`, `ipxe`, `uboot`, `rpi`).
    pub const NETBOOT: &str = "netboot";
    /// Host name.
    pub const HOSTNAME: &str = "hostname";
    /// The profile the operator assigned.
    pub const PROFILE: &str = "profile";
    /// DHCP option 60.
    pub const VENDOR_CLASS: &str = "vendor_class";
    /// DHCP option 77.
    pub const USER_CLASS: &str = "user_class";
    /// The relay that forwarded the machine's DHCP (giaddr).
    pub const RELAY: &str = "relay";
    /// Option 82 circuit id (hex).
    pub const CIRCUIT_ID: &str = "circuit_id";
    /// Option 82 remote id (hex).
    pub const REMOTE_ID: &str = "remote_id";
    /// The IPv4 address the machine holds.
    pub const ADDRESS: &str = "address";
    /// The SMBIOS UUID a request carried (identity lookups use the declared one).
    pub const UUID: &str = "uuid";
    /// The serial number a request carried (identity lookups use the declared one).
    pub const SERIAL: &str = "serial";
    /// What a machine installed to its disk (`name@version`), as its installer reported over
    /// mutual TLS: a machine of an `install` profile with it boots from its disk.
    pub const INSTALLED: &str = "installed";
    /// The image the device runs (`name@version`), as it reported.
    pub const IMAGE: &str = "image";
    /// The A/B slot the device runs from (`A` or `B`), as it reported.
    pub const SLOT: &str = "slot";
    /// Kernel release the device runs (`uname -r`).
    pub const KERNEL: &str = "kernel";
    /// Hardware model (device tree or DMI).
    pub const MODEL: &str = "model";
    /// Memory, MiB.
    pub const MEMORY_MIB: &str = "memory_mib";
    /// Online CPUs.
    pub const CPUS: &str = "cpus";
    /// Prefix of operator labels.
    pub const LABEL_PREFIX: &str = "label.";

    /// Names a selector may use without the `label.` prefix meaning something else.
    pub const RESERVED: [&str; 20] = [
        BOARD,
        ARCH,
        FIRMWARE,
        NETBOOT,
        HOSTNAME,
        PROFILE,
        VENDOR_CLASS,
        USER_CLASS,
        RELAY,
        CIRCUIT_ID,
        REMOTE_ID,
        ADDRESS,
        INSTALLED,
        IMAGE,
        SLOT,
        KERNEL,
        MODEL,
        MEMORY_MIB,
        CPUS,
        "name",
    ];
}

/// A fact name or value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FactError {
    /// A fact name outside `[a-z0-9][a-z0-9._/-]*` or too long.
    #[error("fact name {0:?}: {1}")]
    Key(String, &'static str),
    /// A value with control characters, non-ASCII, or too long.
    #[error("value {0:?}: {1}")]
    Value(String, &'static str),
    /// A source text that is none of the known ones.
    #[error("unknown fact source {0:?}")]
    Source(String),
}

fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Who observed a fact on the network (all unauthenticated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Observer {
    /// A DHCP request (option 93, 60, 77, 97, 82, 12, ...).
    Dhcp,
    /// An HTTP request (iPXE's query string).
    Http,
    /// A TFTP request (a MAC or serial in a path).
    Tftp,
}

/// Who declared a fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Declarer {
    /// The profiles file `serve` reads.
    File,
    /// The operator, through the operator API (CLI, console).
    Operator,
}

/// Who said a fact; see the module documentation for the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// Seen on the network; anyone could have sent it.
    Observed(Observer),
    /// Sent by the device over mutual TLS.
    Attested,
    /// Stated by the operator.
    Declared(Declarer),
}

impl Source {
    /// Authority: a fact replaces another only with a rank at least as high.
    #[must_use]
    pub const fn rank(self) -> u8 {
        match self {
            Self::Observed(_) => 1,
            Self::Attested => 2,
            Self::Declared(Declarer::File) => 3,
            Self::Declared(Declarer::Operator) => 4,
        }
    }

    /// Attested or declared: usable for anything security-relevant.
    #[must_use]
    pub const fn is_authenticated(self) -> bool {
        self.rank() >= 2
    }

    /// Stable text (store, API, console).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Observed(Observer::Dhcp) => "observed:dhcp",
            Self::Observed(Observer::Http) => "observed:http",
            Self::Observed(Observer::Tftp) => "observed:tftp",
            Self::Attested => "attested",
            Self::Declared(Declarer::File) => "declared:file",
            Self::Declared(Declarer::Operator) => "declared:operator",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Source {
    type Err = FactError;
    fn from_str(s: &str) -> Result<Self, FactError> {
        Ok(match s {
            "observed:dhcp" => Self::Observed(Observer::Dhcp),
            "observed:http" => Self::Observed(Observer::Http),
            "observed:tftp" => Self::Observed(Observer::Tftp),
            "attested" => Self::Attested,
            "declared:file" => Self::Declared(Declarer::File),
            "declared:operator" => Self::Declared(Declarer::Operator),
            other => return Err(FactError::Source(shown(other))),
        })
    }
}

/// `[a-z0-9][a-z0-9._/-]*`: fact names, label keys, profile and group names.
pub(crate) fn check_ident(s: &str, extra: &[u8]) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty");
    }
    if s.len() > MAX_KEY_LEN {
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

/// A validated fact name: a well-known name ([`keys`]), `label.<key>`, or an inventory name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FactKey(String);

impl FactKey {
    /// Checks a fact name.
    ///
    /// # Errors
    /// [`FactError::Key`].
    pub fn new(name: &str) -> Result<Self, FactError> {
        check_ident(name, b"/").map_err(|r| FactError::Key(shown(name), r))?;
        Ok(Self(name.to_owned()))
    }

    /// `label.<key>`.
    ///
    /// # Errors
    /// [`FactError::Key`] when the label key is not an identifier.
    pub fn label(key: &str) -> Result<Self, FactError> {
        check_ident(key, b"/").map_err(|r| FactError::Key(shown(key), r))?;
        Self::new(&format!("{}{key}", keys::LABEL_PREFIX))
    }

    /// The name.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The label key, if this is a label.
    #[must_use]
    pub fn label_name(&self) -> Option<&str> {
        self.0.strip_prefix(keys::LABEL_PREFIX)
    }
}

/// Lookups by `&str` (insertion still needs a checked [`FactKey`]).
impl std::borrow::Borrow<str> for FactKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FactKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Values: printable ASCII (spaces allowed), at most [`MAX_VALUE_LEN`] bytes, not empty.
///
/// # Errors
/// [`FactError::Value`].
pub fn check_value(value: &str) -> Result<(), FactError> {
    let reason = if value.is_empty() {
        "empty"
    } else if value.len() > MAX_VALUE_LEN {
        "too long"
    } else if !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        "only printable ASCII is allowed"
    } else {
        return Ok(());
    };
    Err(FactError::Value(shown(value), reason))
}

/// Makes untrusted bytes (a DHCP vendor class, a query value) into a storable value: printable
/// ASCII kept, anything else becomes `?`, cut at [`MAX_VALUE_LEN`]. `None` when nothing is left.
#[must_use]
pub fn sanitize_value(bytes: &[u8]) -> Option<String> {
    let s: String = bytes
        .iter()
        .take(MAX_VALUE_LEN)
        .map(|&b| {
            if b == b' ' || b.is_ascii_graphic() {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect();
    let s = s.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

/// The architecture names boot images are built for. iPXE says `i386` for its BIOS build and
/// `x86_64`/`arm64` for EFI builds; Debian says `amd64`/`arm64`; firmware (option 93) says
/// "x86 BIOS", "x64 UEFI", "ARM 64-bit UEFI". One spelling each.
#[must_use]
pub fn normalize_arch(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "x86_64" | "amd64" | "x64" | "x86-64" => "x86_64",
        "i386" | "i486" | "i586" | "i686" | "ia32" | "x86" => "i386",
        "arm64" | "aarch64" | "armv8" => "arm64",
        "arm32" | "arm" | "armhf" | "armv7" | "armel" => "arm32",
        "riscv64" => "riscv64",
        "riscv32" => "riscv32",
        _ => return None,
    })
}

/// One fact: value, source and when it was stated (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    /// The value (checked by [`check_value`]).
    pub value: String,
    /// Who said it.
    pub source: Source,
    /// When (unix seconds).
    pub at: i64,
}

/// The facts of one machine, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts(BTreeMap<FactKey, Fact>);

impl Facts {
    /// No facts.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Offers a fact: stored when no fact of that name is known, or the known one's source
    /// ranks no higher (equal rank: the newer statement wins). Returns whether it was stored.
    /// Beyond [`MAX_FACTS`] names, new names are refused (known ones can still change).
    pub fn offer(&mut self, key: FactKey, fact: Fact) -> bool {
        match self.0.get(&key) {
            Some(old) if old.source.rank() > fact.source.rank() => false,
            Some(old) if old.source.rank() == fact.source.rank() && old.at > fact.at => false,
            None if self.0.len() >= MAX_FACTS => false,
            _ => {
                self.0.insert(key, fact);
                true
            }
        }
    }

    /// [`Facts::offer`] of a value checked with [`check_value`].
    ///
    /// # Errors
    /// [`FactError`] for a bad name or value.
    pub fn offer_value(
        &mut self,
        key: &str,
        value: &str,
        source: Source,
        at: i64,
    ) -> Result<bool, FactError> {
        check_value(value)?;
        Ok(self.offer(
            FactKey::new(key)?,
            Fact {
                value: value.to_owned(),
                source,
                at,
            },
        ))
    }

    /// Every fact of `other` offered to a copy of these (observations of a request layered over
    /// the stored facts: the request can only fill in or refresh what it may).
    #[must_use]
    pub fn overlaid(&self, other: &Facts) -> Facts {
        let mut out = self.clone();
        for (k, f) in &other.0 {
            out.offer(k.clone(), f.clone());
        }
        out
    }

    /// Removes a fact if it was stated by `source` (a declarer withdrawing its own statement);
    /// returns whether it was removed.
    pub fn withdraw(&mut self, key: &str, source: Source) -> bool {
        let hit = self
            .0
            .iter()
            .find(|(k, f)| k.as_str() == key && f.source == source)
            .map(|(k, _)| k.clone());
        hit.is_some_and(|k| self.0.remove(&k).is_some())
    }

    /// The fact of that name.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Fact> {
        self.0.get(key)
    }

    /// The value of that name, whoever said it.
    #[must_use]
    pub fn value(&self, key: &str) -> Option<&str> {
        self.get(key).map(|f| f.value.as_str())
    }

    /// The value of that name if its source is attested or declared.
    #[must_use]
    pub fn trusted_value(&self, key: &str) -> Option<&str> {
        self.get(key)
            .filter(|f| f.source.is_authenticated())
            .map(|f| f.value.as_str())
    }

    /// Labels (`label.<key>` facts), by key.
    pub fn labels(&self) -> impl Iterator<Item = (&str, &Fact)> {
        self.0
            .iter()
            .filter_map(|(k, f)| k.label_name().map(|n| (n, f)))
    }

    /// Every fact, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&FactKey, &Fact)> {
        self.0.iter()
    }

    /// Number of facts.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No facts.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(FactKey, Fact)> for Facts {
    fn from_iter<I: IntoIterator<Item = (FactKey, Fact)>>(iter: I) -> Self {
        let mut out = Facts::new();
        for (k, f) in iter {
            out.offer(k, f);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(value: &str, source: Source, at: i64) -> Fact {
        Fact {
            value: value.into(),
            source,
            at,
        }
    }

    const DHCP: Source = Source::Observed(Observer::Dhcp);
    const HTTP: Source = Source::Observed(Observer::Http);
    const FILE: Source = Source::Declared(Declarer::File);
    const OPERATOR: Source = Source::Declared(Declarer::Operator);

    #[test]
    fn nothing_unauthenticated_overwrites_declared_or_attested() {
        let mut f = Facts::new();
        let board = FactKey::new(keys::BOARD).unwrap();
        assert!(f.offer(board.clone(), fact("x86_64-uefi", FILE, 10)));
        assert!(!f.offer(board.clone(), fact("raspberrypi-4", HTTP, 20)));
        assert!(!f.offer(board.clone(), fact("raspberrypi-4", Source::Attested, 20)));
        assert_eq!(f.value(keys::BOARD), Some("x86_64-uefi"));
        assert!(f.offer(board.clone(), fact("arm64-uefi", OPERATOR, 5)));
        assert!(
            !f.offer(board.clone(), fact("x", FILE, 99)),
            "file < operator"
        );
        assert_eq!(f.trusted_value(keys::BOARD), Some("arm64-uefi"));

        let arch = FactKey::new(keys::ARCH).unwrap();
        assert!(f.offer(arch.clone(), fact("arm64", DHCP, 10)));
        assert!(
            f.offer(arch.clone(), fact("x86_64", HTTP, 11)),
            "same rank, newer"
        );
        assert!(
            !f.offer(arch.clone(), fact("i386", DHCP, 9)),
            "same rank, older"
        );
        assert_eq!(f.trusted_value(keys::ARCH), None, "observed only");
        assert!(f.offer(arch, fact("arm64", Source::Attested, 1)));
        assert_eq!(f.trusted_value(keys::ARCH), Some("arm64"));
    }

    #[test]
    fn overlay_and_withdraw() {
        let mut stored = Facts::new();
        stored.offer_value("label.rack", "r1", FILE, 1).unwrap();
        stored.offer_value(keys::ARCH, "arm64", DHCP, 1).unwrap();
        let mut request = Facts::new();
        request.offer_value("label.rack", "evil", HTTP, 2).unwrap();
        request.offer_value(keys::ARCH, "x86_64", HTTP, 2).unwrap();
        let merged = stored.overlaid(&request);
        assert_eq!(merged.value("label.rack"), Some("r1"));
        assert_eq!(merged.value(keys::ARCH), Some("x86_64"));
        let labels: Vec<(&str, &str)> = merged
            .labels()
            .map(|(k, f)| (k, f.value.as_str()))
            .collect();
        assert_eq!(labels, [("rack", "r1")]);
        assert!(!stored.withdraw("label.rack", OPERATOR));
        assert!(stored.withdraw("label.rack", FILE));
        assert_eq!(stored.value("label.rack"), None);
    }

    #[test]
    fn names_values_sources() {
        for bad in ["", "Board", "-x", "a b", "x\n", &"a".repeat(129)] {
            assert!(FactKey::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(FactKey::label("rack").unwrap().label_name(), Some("rack"));
        assert!(FactKey::label("Rack").is_err());
        for bad in ["", "a\nb", "caf\u{e9}", &"v".repeat(256)] {
            assert!(check_value(bad).is_err(), "{bad:?}");
        }
        assert!(check_value("PXEClient:Arch:00007:UNDI:003016").is_ok());
        assert!(check_value("with space").is_ok());
        for s in [
            DHCP,
            HTTP,
            Source::Observed(Observer::Tftp),
            Source::Attested,
            FILE,
            OPERATOR,
        ] {
            assert_eq!(s.as_str().parse::<Source>().unwrap(), s);
        }
        assert!("declared".parse::<Source>().is_err());
        assert_eq!(sanitize_value(b"iPXE\x00\xff x"), Some("iPXE?? x".into()));
        assert_eq!(sanitize_value(b"  "), None);
        assert_eq!(normalize_arch("AArch64"), Some("arm64"));
        assert_eq!(normalize_arch("i386"), Some("i386"));
        assert_eq!(normalize_arch("sparc"), None);
    }

    #[test]
    fn fact_count_is_capped() {
        let mut f = Facts::new();
        for i in 0..MAX_FACTS + 10 {
            f.offer_value(&format!("label.k{i}"), "v", FILE, 0).unwrap();
        }
        assert_eq!(f.len(), MAX_FACTS);
        // A known name can still change.
        assert!(f.offer_value("label.k0", "w", FILE, 1).unwrap());
    }
}
