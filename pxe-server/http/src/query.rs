//! What iPXE's request for its script says about the machine (pure: strings in, identifiers and
//! observed facts out). Empty values count as absent (iPXE expands an unset setting to nothing).

use tugboot_fleet::facts::{self, FactError, Facts, Observer, keys};
use tugboot_fleet::observe::{ipxe_facts, observed};
use tugboot_wire::{IdError, Mac, Uuid};

/// Longest serial, board or host name accepted.
pub const MAX_VALUE_LEN: usize = 128;

/// The query string, as received.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
pub struct RawQuery {
    pub mac: Option<String>,
    pub uuid: Option<String>,
    pub serial: Option<String>,
    /// iPXE's `${buildarch}`.
    pub arch: Option<String>,
    /// iPXE's `${platform}` (`pcbios`, `efi`).
    pub platform: Option<String>,
    /// A board name, when a board-specific bootstrap script states one.
    pub board: Option<String>,
    pub hostname: Option<String>,
}

/// A query value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// A MAC or UUID that does not parse.
    #[error(transparent)]
    Id(#[from] IdError),
    /// Anything else.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    /// A fact the fleet refuses.
    #[error(transparent)]
    Fact(#[from] FactError),
}

/// Who asks, and what they say about themselves (observed by HTTP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedQuery {
    pub mac: Option<Mac>,
    /// Never the all-zero UUID.
    pub uuid: Option<Uuid>,
    pub serial: Option<String>,
    pub facts: Facts,
}

fn present(s: Option<&String>) -> Option<&str> {
    s.map(String::as_str).filter(|s| !s.is_empty())
}

/// Serials and host names: printable ASCII without spaces (iPXE URI-escapes a serial's spaces
/// on the way, and axum decodes them back: such a serial is refused, not mangled).
fn text(what: &'static str, s: &str) -> Result<String, QueryError> {
    let reason = if s.len() > MAX_VALUE_LEN {
        "too long"
    } else if !s.bytes().all(|b| b.is_ascii_graphic()) {
        "only printable ASCII without spaces is allowed"
    } else {
        return Ok(s.to_owned());
    };
    Err(QueryError::Invalid {
        what,
        value: s.chars().take(64).collect(),
        reason,
    })
}

/// Parses the query into identifiers and observed facts stated at `now`.
///
/// # Errors
/// [`QueryError`] naming the bad value.
pub fn parse(raw: &RawQuery, now: i64) -> Result<ParsedQuery, QueryError> {
    let mac = present(raw.mac.as_ref())
        .map(str::parse::<Mac>)
        .transpose()?;
    let uuid = present(raw.uuid.as_ref())
        .map(str::parse::<Uuid>)
        .transpose()?
        .filter(|u| !u.is_nil());
    let serial = present(raw.serial.as_ref())
        .map(|s| text("serial", s))
        .transpose()?;
    let hostname = present(raw.hostname.as_ref())
        .map(|s| text("hostname", s))
        .transpose()?;
    let board = present(raw.board.as_ref())
        .map(|b| {
            tugboot_fleet::FactKey::new(b)
                .map(|_| b.to_owned())
                .map_err(|_| QueryError::Invalid {
                    what: "board",
                    value: b.chars().take(64).collect(),
                    reason: "not a board name",
                })
        })
        .transpose()?;
    let (arch, firmware) = ipxe_facts(present(raw.arch.as_ref()), present(raw.platform.as_ref()));
    let uuid_text = uuid.map(|u| u.to_string());
    let serial_fact = serial.clone();
    let mut pairs: Vec<(&str, &str)> = vec![(keys::NETBOOT, "ipxe")];
    for (k, v) in [
        (keys::ARCH, arch),
        (keys::FIRMWARE, firmware),
        (keys::HOSTNAME, hostname.as_deref()),
        (keys::BOARD, board.as_deref()),
        (keys::SERIAL, serial_fact.as_deref()),
        (keys::UUID, uuid_text.as_deref()),
    ] {
        if let Some(v) = v {
            facts::check_value(v)?;
            pairs.push((k, v));
        }
    }
    Ok(ParsedQuery {
        mac,
        uuid,
        serial,
        facts: observed(Observer::Http, now, &pairs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(pairs: &[(&str, &str)]) -> RawQuery {
        let mut r = RawQuery::default();
        for (k, v) in pairs {
            let v = Some((*v).to_owned());
            match *k {
                "mac" => r.mac = v,
                "uuid" => r.uuid = v,
                "serial" => r.serial = v,
                "arch" => r.arch = v,
                "platform" => r.platform = v,
                "board" => r.board = v,
                "hostname" => r.hostname = v,
                _ => panic!("{k}"),
            }
        }
        r
    }

    #[test]
    fn ipxe_facts_are_observed_and_normalised() {
        let q = parse(
            &raw(&[
                ("mac", "52-54-00-AB-cd-56"),
                ("uuid", "8A3B1C2D-0000-4000-8000-00000000000A"),
                ("serial", ""),
                ("arch", "i386"),
                ("platform", "pcbios"),
            ]),
            7,
        )
        .unwrap();
        assert_eq!(q.mac.unwrap().to_string(), "52:54:00:ab:cd:56");
        assert_eq!(
            q.uuid.unwrap().to_string(),
            "8a3b1c2d-0000-4000-8000-00000000000a"
        );
        assert_eq!(q.serial, None, "empty means absent");
        assert_eq!(q.facts.value("arch"), Some("x86_64"), "a BIOS PC");
        assert_eq!(q.facts.value("firmware"), Some("bios"));
        assert_eq!(q.facts.value("netboot"), Some("ipxe"));
        let f = q.facts.get("arch").unwrap();
        assert_eq!((f.source.as_str(), f.at), ("observed:http", 7));
        // QEMU's all-zero UUID identifies nothing.
        let q = parse(&raw(&[("uuid", "00000000-0000-0000-0000-000000000000")]), 0).unwrap();
        assert_eq!(q.uuid, None);
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            raw(&[("mac", "52:54:00:ab:cd")]),
            raw(&[("uuid", "8a3b1c2d00004000800000000000000a")]),
            raw(&[("serial", "a b")]),
            raw(&[("board", "../x")]),
            raw(&[("hostname", "h\n")]),
        ] {
            assert!(parse(&bad, 0).is_err(), "{bad:?}");
        }
    }
}
