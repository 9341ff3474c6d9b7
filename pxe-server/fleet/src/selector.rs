//! One selector grammar, for netboot groups and rollouts alike.
//!
//! A selector is a set of `key=value` terms that must all hold. Text form (CLI, API, rollouts):
//! `arch=arm64,firmware=uefi,rack=r1`; `*` or nothing selects every machine (rollouts only: a
//! netboot group with an empty selector is refused, `default_profile` says that). In a profiles
//! file the same selector may also be written as a TOML table:
//! `{ arch = "arm64", labels = { rack = "r1" } }`.
//!
//! Keys:
//! - identity: `mac`, `uuid`, `serial`, `name` (a MAC or UUID in any accepted spelling);
//! - facts: `board`, `arch`, `firmware`, `netboot`, `hostname`, `profile`, `vendor_class`,
//!   `user_class`, `relay`, `circuit_id`, `remote_id`, `address`;
//! - labels: `label.<key>`, or just `<key>` when it is not one of the names above.
//!
//! Matching reads facts at a [`Trust`] level: netboot groups may use anything the network
//! observed (the whole point of `arch=arm64` for machines nobody declared), rollouts and
//! everything security-relevant only attested or declared facts.

use std::collections::BTreeMap;
use std::fmt;

use tugboot_wire::{Mac, Uuid};

use crate::facts::{FactKey, Facts, check_value, keys, normalize_arch};
use crate::machine::Machine;

/// Longest selector text.
pub const MAX_SELECTOR_LEN: usize = 2048;
/// Most terms in one selector.
pub const MAX_TERMS: usize = 32;

/// Identity keys: matched against the machine's identifiers, not its facts.
pub const IDENTITY_KEYS: [&str; 4] = ["mac", "uuid", "serial", "name"];

/// A selector that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorError {
    /// Longer than [`MAX_SELECTOR_LEN`] or more than [`MAX_TERMS`] terms.
    #[error("selector too long (at most {MAX_TERMS} terms, {MAX_SELECTOR_LEN} bytes)")]
    TooLong,
    /// A term that is not `key=value`.
    #[error("term {0:?} is not key=value")]
    NotATerm(String),
    /// A key or value that breaks the rules.
    #[error("term {key}: {reason}")]
    Invalid {
        /// The key as written.
        key: String,
        /// Why.
        reason: String,
    },
    /// The same key twice.
    #[error("key {0:?} appears twice")]
    Duplicate(String),
    /// A TOML selector that is neither a string nor a table of strings.
    #[error("a selector is a string (\"key=value,...\") or a table of strings")]
    Shape,
}

/// Which facts a match may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Any fact, observed ones included (netboot).
    Any,
    /// Only attested or declared facts (rollouts, anything security-relevant).
    Authenticated,
}

/// What a selector is matched against: a machine's identity and facts.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// Boot MAC.
    pub mac: Option<Mac>,
    /// SMBIOS UUID.
    pub uuid: Option<Uuid>,
    /// Serial number.
    pub serial: Option<&'a str>,
    /// Operator's name.
    pub name: Option<&'a str>,
    /// Facts.
    pub facts: &'a Facts,
}

impl<'a> Subject<'a> {
    /// A registry machine, with `facts` (its own, or its own overlaid with a request's).
    #[must_use]
    pub fn machine(m: &'a Machine, facts: &'a Facts) -> Self {
        Self {
            mac: m.mac,
            uuid: m.uuid,
            serial: m.serial.as_deref(),
            name: m.name.as_deref(),
            facts,
        }
    }
}

/// Conditions that must all hold. Terms are normalised (MACs lowercase with `:`, architectures
/// in one spelling, labels as `label.<key>`), so two spellings of one selector are equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    terms: BTreeMap<String, String>,
}

fn invalid(key: &str, reason: impl Into<String>) -> SelectorError {
    SelectorError::Invalid {
        key: key.chars().take(64).collect(),
        reason: reason.into(),
    }
}

/// The key and value of one term, normalised.
fn term(key: &str, value: &str) -> Result<(String, String), SelectorError> {
    let (key, value) = (key.trim(), value.trim());
    check_value(value).map_err(|e| invalid(key, e.to_string()))?;
    if value.contains([',', '=']) {
        return Err(invalid(key, "values cannot contain ',' or '='"));
    }
    let normalised = match key {
        "mac" => (
            key.to_owned(),
            value
                .parse::<Mac>()
                .map_err(|e| invalid(key, e.to_string()))?
                .to_string(),
        ),
        "uuid" => (
            key.to_owned(),
            value
                .parse::<Uuid>()
                .map_err(|e| invalid(key, e.to_string()))?
                .to_string(),
        ),
        "serial" | "name" => (key.to_owned(), value.to_owned()),
        keys::ARCH => (
            key.to_owned(),
            normalize_arch(value).map_or_else(|| value.to_ascii_lowercase(), str::to_owned),
        ),
        k if keys::RESERVED.contains(&k) => (k.to_owned(), value.to_owned()),
        k => {
            let fact = match k.strip_prefix(keys::LABEL_PREFIX) {
                Some(label) => FactKey::label(label),
                None => FactKey::label(k),
            }
            .map_err(|e| invalid(k, e.to_string()))?;
            (fact.as_str().to_owned(), value.to_owned())
        }
    };
    Ok(normalised)
}

impl Selector {
    /// Every machine.
    #[must_use]
    pub fn all() -> Self {
        Self::default()
    }

    /// Parses the text form. `*` or empty (after trimming) selects everything.
    ///
    /// # Errors
    /// [`SelectorError`].
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        if text.len() > MAX_SELECTOR_LEN {
            return Err(SelectorError::TooLong);
        }
        let text = text.trim();
        if text.is_empty() || text == "*" {
            return Ok(Self::all());
        }
        let mut s = Self::default();
        for raw in text.split(',') {
            let (k, v) = raw
                .split_once('=')
                .ok_or_else(|| SelectorError::NotATerm(raw.chars().take(64).collect()))?;
            s.insert(k, v)?;
        }
        Ok(s)
    }

    /// The TOML form of a profiles file: the text form as a string, or a table of strings
    /// (with `labels` as a table of label values).
    ///
    /// # Errors
    /// [`SelectorError`].
    pub fn from_toml(value: &toml::Value) -> Result<Self, SelectorError> {
        match value {
            toml::Value::String(text) => Self::parse(text),
            toml::Value::Table(table) => {
                let mut s = Self::default();
                for (k, v) in table {
                    match (k.as_str(), v) {
                        ("labels", toml::Value::Table(labels)) => {
                            for (lk, lv) in labels {
                                let lv = lv.as_str().ok_or(SelectorError::Shape)?;
                                s.insert(&format!("{}{lk}", keys::LABEL_PREFIX), lv)?;
                            }
                        }
                        (k, toml::Value::String(v)) => s.insert(k, v)?,
                        _ => return Err(SelectorError::Shape),
                    }
                }
                Ok(s)
            }
            _ => Err(SelectorError::Shape),
        }
    }

    fn insert(&mut self, key: &str, value: &str) -> Result<(), SelectorError> {
        if self.terms.len() >= MAX_TERMS {
            return Err(SelectorError::TooLong);
        }
        let (k, v) = term(key, value)?;
        if self.terms.insert(k.clone(), v).is_some() {
            return Err(SelectorError::Duplicate(k));
        }
        Ok(())
    }

    /// Selects every machine.
    #[must_use]
    pub fn is_all(&self) -> bool {
        self.terms.is_empty()
    }

    /// Number of terms: the specificity that ranks netboot groups.
    #[must_use]
    pub fn len(&self) -> usize {
        self.terms.len()
    }

    /// No terms (same as [`Selector::is_all`]).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The value a key must have (normalised key: `label.rack`, `mac`, `arch`, ...).
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.terms.get(key).map(String::as_str)
    }

    /// Terms, by normalised key.
    pub fn terms(&self) -> impl Iterator<Item = (&str, &str)> {
        self.terms.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether every term holds for `subject`, reading facts at `trust`.
    #[must_use]
    pub fn matches(&self, subject: &Subject<'_>, trust: Trust) -> bool {
        self.terms.iter().all(|(k, want)| {
            let have: Option<String> = match k.as_str() {
                "mac" => subject.mac.map(|m| m.to_string()),
                "uuid" => subject.uuid.map(|u| u.to_string()),
                "serial" => subject.serial.map(str::to_owned),
                "name" => subject.name.map(str::to_owned),
                fact => match trust {
                    Trust::Any => subject.facts.value(fact),
                    Trust::Authenticated => subject.facts.trusted_value(fact),
                }
                .map(str::to_owned),
            };
            have.as_deref() == Some(want.as_str())
        })
    }
}

/// The canonical text form: terms sorted by key, labels without their prefix unless that would
/// read as another key. `Selector::parse(&s.to_string()) == s`.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return f.write_str("*");
        }
        for (i, (k, v)) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            // The short form only where it parses back to the same key (`label.label.x`
            // shown as `label.x` would come back as the label `x`: found by the fuzzer).
            let shown = match k.strip_prefix(keys::LABEL_PREFIX) {
                Some(l)
                    if !keys::RESERVED.contains(&l)
                        && !IDENTITY_KEYS.contains(&l)
                        && !l.starts_with(keys::LABEL_PREFIX) =>
                {
                    l
                }
                _ => k.as_str(),
            };
            write!(f, "{shown}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{Declarer, Observer, Source};

    fn facts(list: &[(&str, &str, Source)]) -> Facts {
        let mut f = Facts::new();
        for (k, v, s) in list {
            f.offer_value(k, v, *s, 1).unwrap();
        }
        f
    }

    const DHCP: Source = Source::Observed(Observer::Dhcp);
    const OP: Source = Source::Declared(Declarer::Operator);

    #[test]
    fn text_and_table_forms_are_one_grammar() {
        let a =
            Selector::parse(" arch=AArch64 , rack=r1,label.role=gw,mac=52-54-00-AB-cd-01").unwrap();
        let table: toml::Value = toml::from_str::<toml::Table>(
            r#"s = { arch = "arm64", labels = { rack = "r1", role = "gw" }, mac = "52:54:00:ab:cd:01" }"#,
        )
        .unwrap()["s"]
            .clone();
        let b = Selector::from_toml(&table).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a.to_string(),
            "arch=arm64,rack=r1,role=gw,mac=52:54:00:ab:cd:01"
        );
        assert_eq!(Selector::parse(&a.to_string()).unwrap(), a);
        assert_eq!(a.len(), 4);
        assert_eq!(a.get("label.rack"), Some("r1"));
        let as_string = toml::Value::String("arch=arm64".into());
        assert_eq!(
            Selector::from_toml(&as_string).unwrap(),
            Selector::parse("arch=arm64").unwrap()
        );
        // A label called like a reserved key keeps its prefix in the text form.
        let s = Selector::parse("label.board=x").unwrap();
        assert_eq!(s.to_string(), "label.board=x");
        // A label whose own name starts with `label.` keeps its prefix.
        let s = Selector::parse("label.label.pboard=x").unwrap();
        assert_eq!(s.to_string(), "label.label.pboard=x");
        assert_eq!(Selector::parse(&s.to_string()).unwrap(), s);
        assert_eq!(Selector::parse(&s.to_string()).unwrap(), s);
        assert!(Selector::parse("*").unwrap().is_all());
        assert!(Selector::parse("  ").unwrap().is_all());
        assert_eq!(Selector::all().to_string(), "*");
    }

    #[test]
    fn bad_selectors_are_refused_with_the_reason() {
        for (text, want) in [
            ("arch", "not key=value"),
            ("arch=arm64,arch=x86_64", "twice"),
            ("mac=zz", "MAC"),
            ("Rack=1", "Rack"),
            ("rack=a,b", "key=value"),
            ("rack=", "empty"),
            ("rack=caf\u{e9}", "ASCII"),
        ] {
            let e = Selector::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let many: Vec<String> = (0..=MAX_TERMS).map(|i| format!("k{i}=v")).collect();
        assert_eq!(
            Selector::parse(&many.join(",")),
            Err(SelectorError::TooLong)
        );
        let bad: toml::Value =
            toml::from_str::<toml::Table>("s = { rack = 1 }").unwrap()["s"].clone();
        assert_eq!(Selector::from_toml(&bad), Err(SelectorError::Shape));
    }

    #[test]
    fn matching_respects_trust() {
        let f = facts(&[
            ("arch", "arm64", DHCP),
            ("board", "raspberrypi-4", DHCP),
            ("label.site", "lab", OP),
        ]);
        let mac: Mac = "52:54:00:00:00:01".parse().unwrap();
        let s = Subject {
            mac: Some(mac),
            uuid: None,
            serial: Some("SN1"),
            name: None,
            facts: &f,
        };
        let by_arch = Selector::parse("arch=arm64").unwrap();
        assert!(by_arch.matches(&s, Trust::Any));
        assert!(!by_arch.matches(&s, Trust::Authenticated), "observed only");
        let by_board = Selector::parse("board=raspberrypi-4").unwrap();
        assert!(!by_board.matches(&s, Trust::Authenticated));
        let by_label = Selector::parse("site=lab,mac=52:54:00:00:00:01,serial=SN1").unwrap();
        assert!(by_label.matches(&s, Trust::Authenticated));
        assert!(
            !Selector::parse("site=prod")
                .unwrap()
                .matches(&s, Trust::Any)
        );
        assert!(!Selector::parse("name=x").unwrap().matches(&s, Trust::Any));
        assert!(Selector::all().matches(&s, Trust::Authenticated));
    }
}
