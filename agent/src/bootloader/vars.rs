//! The variables of a bootloader environment, independent of the on-disk format.
//!
//! Names and values are bytes, not `String`s: U-Boot and GRUB store whatever bytes they were
//! given, and refusing a valid environment because one unrelated value is Latin-1 would leave the
//! agent unable to arm a trial boot. The typed A/B helpers read their own variables as text.
//!
//! Order is kept (first insertion wins the position, a later `set` only replaces the value):
//! GRUB's `grub-editenv` appends new variables and edits existing ones in place, and keeping the
//! order lets us write blocks byte-identical to it. U-Boot's encoder sorts by name instead, as
//! libubootenv does.

use std::collections::BTreeMap;
use std::fmt;

/// Why a name or value cannot be stored in a bootloader environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VarError {
    /// U-Boot would import `=value` as garbage and GRUB cannot express it.
    #[error("variable name is empty")]
    EmptyName,
    /// The name contains `=`, NUL or a newline, which end a name in one format or the other.
    #[error("variable name {name:?} contains a forbidden byte 0x{byte:02x} ('=', NUL or newline)")]
    ForbiddenNameByte {
        /// The name, lossily decoded for the message.
        name: String,
        /// The offending byte.
        byte: u8,
    },
    /// A NUL ends an entry in U-Boot and a C string in GRUB, so it cannot be in a value.
    #[error("value of variable {name:?} contains a NUL byte")]
    NulInValue {
        /// The variable name, lossily decoded for the message.
        name: String,
    },
}

/// Checks a name against the rules shared by every backend.
pub(crate) fn check_name(name: &[u8]) -> Result<(), VarError> {
    if name.is_empty() {
        return Err(VarError::EmptyName);
    }
    if let Some(&byte) = name.iter().find(|b| matches!(b, b'=' | 0 | b'\n')) {
        return Err(VarError::ForbiddenNameByte {
            name: String::from_utf8_lossy(name).into_owned(),
            byte,
        });
    }
    Ok(())
}

/// An ordered set of environment variables with unique names.
///
/// Invariant: every name passes [`check_name`], no value contains NUL, and `index` maps each
/// name to its position in `entries`.
#[derive(Clone, Default)]
pub struct Vars {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    index: BTreeMap<Vec<u8>, usize>,
}

impl Vars {
    /// An empty set.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of variables.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no variables.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The raw value of `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.get_bytes(name.as_bytes())
    }

    /// The raw value of a name given as bytes.
    #[must_use]
    pub fn get_bytes(&self, name: &[u8]) -> Option<&[u8]> {
        let &i = self.index.get(name)?;
        self.entries.get(i).map(|(_, v)| v.as_slice())
    }

    /// The value of `name` as text; `None` if absent or not UTF-8.
    #[must_use]
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Sets `name` to `value`, keeping the position of an existing variable.
    ///
    /// # Errors
    /// [`VarError`] if the name is empty or contains `=`, NUL or newline, or the value has a NUL.
    pub fn set(
        &mut self,
        name: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), VarError> {
        let name = name.into();
        let value = value.into();
        check_name(&name)?;
        if value.contains(&0) {
            return Err(VarError::NulInValue {
                name: String::from_utf8_lossy(&name).into_owned(),
            });
        }
        match self.index.get(&name) {
            Some(&i) => {
                if let Some(entry) = self.entries.get_mut(i) {
                    entry.1 = value;
                }
            }
            None => {
                self.index.insert(name.clone(), self.entries.len());
                self.entries.push((name, value));
            }
        }
        Ok(())
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<Vec<u8>> {
        let i = self.index.remove(name.as_bytes())?;
        let (_, value) = self.entries.remove(i);
        for pos in self.index.values_mut() {
            if *pos > i {
                *pos -= 1;
            }
        }
        Some(value)
    }

    /// Variables in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
    }

    /// Variables sorted by name (byte order, the order of C `strcmp`).
    pub fn iter_sorted(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.index.iter().filter_map(|(name, &i)| {
            self.entries
                .get(i)
                .map(|(_, v)| (name.as_slice(), v.as_slice()))
        })
    }

    /// Whether both hold the same variables in the same order (`==` ignores order).
    #[must_use]
    pub fn eq_ordered(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

/// Equality of the variable *sets*: the same names with the same values, in any order.
impl PartialEq for Vars {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter_sorted().eq(other.iter_sorted())
    }
}

impl Eq for Vars {}

impl fmt::Debug for Vars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(n, v)| (String::from_utf8_lossy(n), String::from_utf8_lossy(v))),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_keeps_position_and_replaces_value() {
        let mut v = Vars::new();
        v.set("b", "1").unwrap();
        v.set("a", "2").unwrap();
        v.set("b", "3").unwrap();
        let got: Vec<_> = v.iter().collect();
        assert_eq!(got, vec![(&b"b"[..], &b"3"[..]), (&b"a"[..], &b"2"[..])]);
        let sorted: Vec<_> = v.iter_sorted().map(|(n, _)| n).collect();
        assert_eq!(sorted, vec![&b"a"[..], &b"b"[..]]);
    }

    #[test]
    fn remove_reindexes() {
        let mut v = Vars::new();
        for (n, val) in [("x", "1"), ("y", "2"), ("z", "3")] {
            v.set(n, val).unwrap();
        }
        assert_eq!(v.remove("x").as_deref(), Some(&b"1"[..]));
        assert_eq!(v.remove("x"), None);
        assert_eq!(v.get("z"), Some(&b"3"[..]));
        assert_eq!(v.get("y"), Some(&b"2"[..]));
        v.set("x", "4").unwrap();
        let names: Vec<_> = v.iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec![&b"y"[..], &b"z"[..], &b"x"[..]]);
    }

    #[test]
    fn rejects_bad_names_and_values() {
        let mut v = Vars::new();
        assert_eq!(v.set("", "x"), Err(VarError::EmptyName));
        for bad in ["a=b", "a\nb", "a\0b"] {
            assert!(matches!(
                v.set(bad, "x"),
                Err(VarError::ForbiddenNameByte { .. })
            ));
        }
        assert!(matches!(
            v.set("a", "x\0y"),
            Err(VarError::NulInValue { .. })
        ));
        assert!(v.is_empty());
    }

    #[test]
    fn equality_ignores_order_but_eq_ordered_does_not() {
        let mut a = Vars::new();
        a.set("p", "1").unwrap();
        a.set("q", "2").unwrap();
        let mut b = Vars::new();
        b.set("q", "2").unwrap();
        b.set("p", "1").unwrap();
        assert_eq!(a, b);
        assert!(!a.eq_ordered(&b));
        b.set("p", "9").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn get_str_needs_utf8() {
        let mut v = Vars::new();
        v.set("l", vec![0xe9]).unwrap();
        assert_eq!(v.get("l"), Some(&[0xe9][..]));
        assert_eq!(v.get_str("l"), None);
    }
}
