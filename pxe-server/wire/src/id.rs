//! Machine identifiers: one type each, whatever wire they arrived on.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An identifier that does not parse. The value is shown cut to 64 characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// Not six hex pairs.
    #[error("{0:?} is not a MAC address (expected six hex pairs separated by ':' or '-')")]
    Mac(String),
    /// Not 8-4-4-4-12 hex digits.
    #[error("{0:?} is not a UUID (expected 8-4-4-4-12 hex digits)")]
    Uuid(String),
}

fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A 48-bit Ethernet MAC address.
///
/// Text in: six hex pairs separated by `:` or `-` (one separator throughout), any case: what
/// DHCP logs, iPXE's `${mac}`/`${mac:hexhyp}`, PXELINUX/GRUB file names and operators write.
/// Text out ([`fmt::Display`], serde): lowercase `aa:bb:cc:dd:ee:ff`, so one machine has one
/// spelling in the store, logs and JSON.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The first three bytes (the IEEE OUI).
    #[must_use]
    pub fn oui(self) -> [u8; 3] {
        [self.0[0], self.0[1], self.0[2]]
    }

    /// `aa-bb-cc-dd-ee-ff`: the form of PXELINUX and GRUB configuration file names.
    #[must_use]
    pub fn hyphenated(self) -> String {
        let [a, b, c, d, e, g] = self.0;
        format!("{a:02x}-{b:02x}-{c:02x}-{d:02x}-{e:02x}-{g:02x}")
    }

    /// Parses the `01-aa-bb-cc-dd-ee-ff` form of PXELINUX and GRUB file names (hardware type 1,
    /// Ethernet), any case.
    #[must_use]
    pub fn from_pxe_name(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("01-")?;
        (rest.len() == 17 && rest.as_bytes()[2] == b'-')
            .then(|| rest.parse().ok())
            .flatten()
    }
}

impl FromStr for Mac {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        let err = || IdError::Mac(shown(s));
        let bytes = s.as_bytes();
        if bytes.len() != 17 {
            return Err(err());
        }
        let sep = bytes[2];
        if sep != b':' && sep != b'-' {
            return Err(err());
        }
        let mut out = [0u8; 6];
        for (i, byte) in out.iter_mut().enumerate() {
            let at = i * 3;
            let pair = bytes.get(at..at + 2).ok_or_else(err)?;
            if i < 5 && bytes.get(at + 2) != Some(&sep) {
                return Err(err());
            }
            // from_str_radix alone would accept a sign ("+1").
            if !pair.iter().all(u8::is_ascii_hexdigit) {
                return Err(err());
            }
            let text = std::str::from_utf8(pair).map_err(|_| err())?;
            *byte = u8::from_str_radix(text, 16).map_err(|_| err())?;
        }
        Ok(Self(out))
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

impl From<Mac> for String {
    fn from(m: Mac) -> String {
        m.to_string()
    }
}

impl TryFrom<String> for Mac {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

/// An SMBIOS system UUID in its 8-4-4-4-12 text form (iPXE's `${uuid}`, DHCP option 97 as
/// shown by firmware), any case; shown lowercase. The byte order is not interpreted: the text
/// is the identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// All zero: what QEMU and some firmware send when they have no UUID. Never an identity.
    #[must_use]
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl FromStr for Uuid {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        let err = || IdError::Uuid(shown(s));
        let groups: Vec<&str> = s.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if groups.len() != 5 || groups.iter().zip(lens).any(|(g, l)| g.len() != l) {
            return Err(err());
        }
        let mut out = [0u8; 16];
        let mut i = 0;
        for g in groups {
            let b = g.as_bytes();
            if !b.iter().all(u8::is_ascii_hexdigit) {
                return Err(err());
            }
            for pair in b.chunks(2) {
                let text = std::str::from_utf8(pair).map_err(|_| err())?;
                let slot = out.get_mut(i).ok_or_else(err)?;
                *slot = u8::from_str_radix(text, 16).map_err(|_| err())?;
                i += 1;
            }
        }
        Ok(Self(out))
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<Uuid> for String {
    fn from(u: Uuid) -> String {
        u.to_string()
    }
}

impl TryFrom<String> for Uuid {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_text_forms() {
        let mac: Mac = "02:00:5E:10:00:0a".parse().unwrap();
        assert_eq!(mac.0, [0x02, 0x00, 0x5e, 0x10, 0x00, 0x0a]);
        assert_eq!(mac.to_string(), "02:00:5e:10:00:0a");
        assert_eq!(mac.hyphenated(), "02-00-5e-10-00-0a");
        assert_eq!("02-00-5e-10-00-0A".parse::<Mac>(), Ok(mac));
        assert_eq!(Mac::from_pxe_name("01-02-00-5e-10-00-0a"), Some(mac));
        assert_eq!(Mac::from_pxe_name("01-02:00:5e:10:00:0a"), None);
        assert_eq!(Mac::from_pxe_name("06-02-00-5e-10-00-0a"), None);
        for bad in [
            "",
            "02:00:5e:10:00",
            "02:00:5e:10:00:0a:01",
            "2:00:5e:10:00:0a",
            "zz:00:5e:10:00:0a",
            "+1:00:5e:10:00:0a",
            "02:00-5e:10:00:0a",
            "02:00:5e:10:00:0\u{e9}",
            "020:0:5e:10:00:0a",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&mac).unwrap();
        assert_eq!(json, "\"02:00:5e:10:00:0a\"");
        assert_eq!(serde_json::from_str::<Mac>(&json).unwrap(), mac);
        assert!(serde_json::from_str::<Mac>("\"x\"").is_err());
    }

    #[test]
    fn uuid_text_forms() {
        let u: Uuid = "8A3B1C2D-0000-4000-8000-00000000000A".parse().unwrap();
        assert_eq!(u.to_string(), "8a3b1c2d-0000-4000-8000-00000000000a");
        assert!(!u.is_nil());
        assert!(
            "00000000-0000-0000-0000-000000000000"
                .parse::<Uuid>()
                .unwrap()
                .is_nil()
        );
        for bad in [
            "8a3b1c2d00004000800000000000000a",
            "8a3b1c2d-0000-4000-8000-00000000000",
            "g8a3b1c2-0000-4000-8000-00000000000a",
            "8a3b1c2d-0000-4000-8000-00000000000\u{e9}",
            "+a3b1c2d-0000-4000-8000-00000000000a",
        ] {
            assert!(bad.parse::<Uuid>().is_err(), "{bad}");
        }
    }
}
