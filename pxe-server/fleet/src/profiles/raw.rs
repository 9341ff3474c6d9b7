//! The TOML layer of a profiles file: exactly what it may say (unknown keys are refused).
//! [`super::validate`] turns it into a [`super::ProfileSet`].

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilesFile {
    /// Profile of machines nothing else matches.
    #[serde(default)]
    pub default_profile: Option<String>,
    /// Profiles by name.
    #[serde(default)]
    pub profiles: BTreeMap<String, ProfileEntry>,
    /// Declared machines.
    #[serde(default)]
    pub machines: Vec<MachineEntry>,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<GroupEntry>,
}

/// `[profiles.<name>]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileEntry {
    /// Image name.
    pub image: Option<String>,
    /// Version of `image` (absent: the highest published).
    pub version: Option<u64>,
    /// A manifest by SHA-256 instead of `image`.
    pub manifest: Option<String>,
    /// Extra kernel arguments, with `{{placeholders}}`.
    #[serde(default)]
    pub cmdline: String,
    /// `linux` (default), `local` or `install`.
    pub template: Option<String>,
    /// `install`: the installer image's name (its highest published version).
    pub installer: Option<String>,
}

/// `[[machines]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineEntry {
    /// Operator's name.
    pub name: Option<String>,
    /// Boot MAC.
    pub mac: Option<String>,
    /// SMBIOS UUID.
    pub uuid: Option<String>,
    /// Serial number.
    pub serial: Option<String>,
    /// Board name.
    pub board: Option<String>,
    /// Host name (DHCP option 12 of a reservation, `{{hostname}}`).
    pub hostname: Option<String>,
    /// Profile this machine boots, whatever groups say.
    pub profile: Option<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Fixed IPv4 address: a DHCP reservation (needs `mac`).
    pub address: Option<Ipv4Addr>,
}

/// `[[groups]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Profile its machines boot.
    pub profile: String,
    /// `"key=value,..."` or a table (`crate::selector`).
    pub selector: toml::Value,
}
