//! From [`raw::ProfilesFile`] to a [`ProfileSet`]: every rule the types cannot express, each
//! error naming the TOML path of the offending value.

use std::collections::{BTreeMap, BTreeSet};

use tugboot_wire::{Mac, Uuid};

use super::raw::{self, ProfilesFile};
use super::{
    CmdlinePart, DeclaredMachine, Group, MAX_ENTRIES, MAX_LABELS, MAX_NAME_LEN,
    MAX_PROFILES_FILE_BYTES, Placeholder, Profile, ProfileError, ProfileSet, Template,
};
use crate::catalogue::ImageRef;
use crate::cmdline::KernelCmdline;
use crate::facts::{FactKey, check_ident};
use crate::selector::Selector;

fn invalid(at: impl Into<String>, reason: impl Into<String>) -> ProfileError {
    ProfileError::Invalid {
        at: at.into(),
        reason: reason.into(),
    }
}

fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

pub(super) fn from_toml(text: &str) -> Result<ProfileSet, ProfileError> {
    if text.len() > MAX_PROFILES_FILE_BYTES {
        return Err(ProfileError::TooLarge {
            size: text.len(),
            limit: MAX_PROFILES_FILE_BYTES,
        });
    }
    let raw: ProfilesFile = toml::from_str(text).map_err(|e| {
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

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Serials, hostnames and label values: printable ASCII without spaces, at most
/// [`MAX_NAME_LEN`] bytes; label values also without `,` and `=` (selector syntax).
fn text(at: &str, what: &str, s: &str, selector_safe: bool) -> Result<String, ProfileError> {
    let reason = if s.is_empty() {
        "empty"
    } else if s.len() > MAX_NAME_LEN {
        "too long"
    } else if !s.bytes().all(|b| b.is_ascii_graphic()) {
        "only printable ASCII without spaces is allowed"
    } else if selector_safe && s.contains([',', '=']) {
        "',' and '=' are not allowed"
    } else {
        return Ok(s.to_owned());
    };
    Err(invalid(at, format!("{what} {:?}: {reason}", shown(s))))
}

fn ident(at: &str, s: &str) -> Result<String, ProfileError> {
    check_ident(s, b"").map_err(|r| invalid(at, format!("{:?}: {r}", shown(s))))?;
    Ok(s.to_owned())
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
        let place = format!("{at}.{k}");
        FactKey::label(k).map_err(|e| invalid(&place, format!("label key: {e}")))?;
        text(&place, "label value", v, true)?;
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

/// Splits `a {{mac}} b` into parts; refuses unknown placeholders and unbalanced braces. The
/// literal text is checked with the command line rules here, so errors show at load time.
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
                    "unknown placeholder {{{{{}}}}} (known: mac, uuid, serial, hostname, board, name, label.<key>)",
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

fn profile(name: String, p: raw::ProfileEntry) -> Result<Profile, ProfileError> {
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
                    format!(
                        "unknown template {:?} (known: linux, local, install)",
                        shown(t)
                    ),
                )
            })?,
    };
    let image = match (p.image, p.version, p.manifest) {
        (None, None, None) => None,
        (Some(image), version, None) => {
            check_image_name(&format!("{at}.image"), &image)?;
            Some(match version {
                None => ImageRef::Latest { name: image },
                Some(version) => ImageRef::Version {
                    name: image,
                    version,
                },
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
        (Template::Install, None) => {
            return Err(invalid(
                &at,
                "template \"install\" needs the `image` (or `manifest`) to install",
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
    let installer = match (template, p.installer) {
        (Template::Install, Some(i)) => {
            check_image_name(&format!("{at}.installer"), &i)?;
            Some(ImageRef::Latest { name: i })
        }
        (Template::Install, None) => {
            return Err(invalid(
                &at,
                "template \"install\" needs `installer`: the image netbooted to install (`tugboot installer build`)",
            ));
        }
        (_, Some(_)) => {
            return Err(invalid(
                format!("{at}.installer"),
                "only template \"install\" netboots an installer",
            ));
        }
        (_, None) => None,
    };
    let cmdline = parse_cmdline(&format!("{at}.cmdline"), &p.cmdline)?;
    Ok(Profile {
        name,
        image,
        installer,
        cmdline,
        template,
    })
}

fn machine(
    at: &str,
    m: raw::MachineEntry,
    known: &dyn Fn(String, &str) -> Result<String, ProfileError>,
) -> Result<DeclaredMachine, ProfileError> {
    fn fact<T>(
        at: &str,
        what: &str,
        r: Result<T, tugboot_wire::IdError>,
    ) -> Result<T, ProfileError> {
        r.map_err(|e| invalid(format!("{at}.{what}"), e.to_string()))
    }
    let machine = DeclaredMachine {
        name: m
            .name
            .map(|n| ident(&format!("{at}.name"), &n))
            .transpose()?,
        mac: m
            .mac
            .map(|v| fact(at, "mac", v.parse::<Mac>()))
            .transpose()?,
        uuid: m
            .uuid
            .map(|v| fact(at, "uuid", v.parse::<Uuid>()))
            .transpose()?,
        serial: m
            .serial
            .map(|v| text(&format!("{at}.serial"), "serial", &v, true))
            .transpose()?,
        board: m
            .board
            .map(|b| ident(&format!("{at}.board"), &b))
            .transpose()?,
        hostname: m
            .hostname
            .map(|v| text(&format!("{at}.hostname"), "hostname", &v, true))
            .transpose()?,
        profile: m
            .profile
            .map(|p| known(format!("{at}.profile"), &p))
            .transpose()?,
        labels: labels(&format!("{at}.labels"), m.labels)?,
        address: m.address,
    };
    if machine.mac.is_none() && machine.uuid.is_none() && machine.serial.is_none() {
        return Err(invalid(at, "a machine needs a `mac`, `uuid` or `serial`"));
    }
    if machine.uuid.is_some_and(|u| u.is_nil()) {
        return Err(invalid(
            format!("{at}.uuid"),
            "the all-zero UUID identifies no machine (QEMU and some firmware send it)",
        ));
    }
    if machine.address.is_some() && machine.mac.is_none() {
        return Err(invalid(
            format!("{at}.address"),
            "a fixed address is a DHCP reservation and needs the machine's `mac`",
        ));
    }
    Ok(machine)
}

impl TryFrom<ProfilesFile> for ProfileSet {
    type Error = ProfileError;

    fn try_from(raw: ProfilesFile) -> Result<ProfileSet, ProfileError> {
        count("profiles", raw.profiles.len())?;
        count("machines", raw.machines.len())?;
        count("groups", raw.groups.len())?;

        let mut profiles = BTreeMap::new();
        for (name, p) in raw.profiles {
            profiles.insert(name.clone(), profile(name, p)?);
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

        let mut machines: Vec<DeclaredMachine> = Vec::with_capacity(raw.machines.len());
        let mut seen_mac = BTreeMap::new();
        let mut seen_uuid = BTreeMap::new();
        let mut seen_serial = BTreeMap::new();
        let mut seen_address = BTreeMap::new();
        let mut seen_name = BTreeSet::new();
        for (i, m) in raw.machines.into_iter().enumerate() {
            let at = format!("machines[{i}]");
            let machine = machine(&at, m, &known)?;
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
            if let Some(v) = machine.address
                && let Some(first) = seen_address.insert(v, i)
            {
                return Err(dup("address", first));
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
            let sat = format!("{at}.selector");
            let selector =
                Selector::from_toml(&g.selector).map_err(|e| invalid(&sat, e.to_string()))?;
            if selector.is_all() {
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
                .len()
                .cmp(&a.selector.len())
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
