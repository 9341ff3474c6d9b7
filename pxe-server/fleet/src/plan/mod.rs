//! What one machine boots: [`Fleet::plan`], resolved once and rendered by every front end.
//!
//! The order, for a request that carries a MAC, UUID and/or serial plus what the network
//! observed about the requester:
//!
//! 1. the registry machine it identifies (by MAC, then UUID, then serial); a revoked machine
//!    gets nothing;
//! 2. its facts: the stored ones overlaid with the request's observations (which can only fill
//!    in or refresh observed facts, never change declared or attested ones);
//! 3. the profile: the one the operator assigned (a declared `profile` fact), else the most
//!    specific group whose selector matches (most terms; equal counts by group name), else the
//!    file's `default_profile`, else no boot;
//! 4. for a `linux` profile, the image from the catalogue, and the command line: the board's
//!    console and arguments, the image's cmdline artifact, the profile's cmdline with its
//!    placeholders filled — validated as a whole, so a substituted value never adds syntax.

use std::sync::Arc;

use tugboot_boards::Catalog;
use tugboot_firmware::{Role, Sha256Digest};
use tugboot_wire::{Mac, Uuid};

use crate::catalogue::{Catalogue, CatalogueImage, ImageRef};
use crate::cmdline::KernelCmdline;
use crate::facts::{Facts, keys};
use crate::machine::{Machine, MachineId, MachineState};
use crate::profiles::{CmdlinePart, Placeholder, Profile, ProfileSet, Template};
use crate::registry::Registry;
use crate::selector::{Subject, Trust};

/// One consistent view of the fleet: what every front end reads. Immutable; the shell builds
/// a new one when the store, the profiles file or the trust root changes, and swaps it in.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// Published images.
    pub catalogue: Catalogue,
    /// Profiles and groups (the declarative file).
    pub profiles: ProfileSet,
    /// Machines.
    pub registry: Registry,
    /// Boards.
    pub boards: Catalog,
}

impl Default for Fleet {
    /// Nothing published, no profiles, no machines, the built-in boards.
    fn default() -> Self {
        Self {
            catalogue: Catalogue::default(),
            profiles: ProfileSet::default(),
            registry: Registry::default(),
            boards: Catalog::builtin(),
        }
    }
}

/// Who asks, and what the network says about them right now.
#[derive(Debug, Clone, Copy)]
pub struct BootRequest<'a> {
    /// MAC the request carries.
    pub mac: Option<Mac>,
    /// SMBIOS UUID the request carries.
    pub uuid: Option<Uuid>,
    /// Serial the request carries.
    pub serial: Option<&'a str>,
    /// Observed facts: this request's and recent observations of the same MAC.
    pub observed: &'a Facts,
}

/// How a machine got its profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// The operator assigned it to the machine.
    Machine,
    /// The named group's selector matched.
    Group(String),
    /// Nothing matched; the file's `default_profile`.
    Default,
}

/// A network boot of a Linux image.
#[derive(Clone, Debug)]
pub struct LinuxBoot {
    /// The image.
    pub image: Arc<CatalogueImage>,
    /// Kernel artifact.
    pub kernel: Sha256Digest,
    /// Initrd artifact.
    pub initrd: Option<Sha256Digest>,
    /// Device tree artifacts, by name (boards that need one from the image).
    pub dtbs: Vec<(String, Sha256Digest)>,
    /// Full kernel command line (board, image, profile).
    pub cmdline: KernelCmdline,
}

/// What the machine does.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum BootAction {
    /// Boot this image over the network.
    Linux(LinuxBoot),
    /// Leave the network loader: boot the next device (the local disk).
    Local,
}

/// The answer for one machine.
#[derive(Clone, Debug)]
pub struct BootPlan {
    /// The registry machine, if the request identified one.
    pub machine: Option<MachineId>,
    /// How it is named in logs and scripts.
    pub who: String,
    /// Its MAC (the request's when the registry has none).
    pub mac: Option<Mac>,
    /// The profile.
    pub profile: String,
    /// How the profile was chosen.
    pub via: Via,
    /// Its board, if known.
    pub board: Option<String>,
    /// What it boots.
    pub action: BootAction,
}

impl BootPlan {
    /// One line for consoles and logs: machine, profile, image.
    #[must_use]
    pub fn comment(&self) -> String {
        match &self.action {
            BootAction::Linux(l) => format!(
                "machine {} profile {} image {} v{}",
                self.who, self.profile, l.image.manifest.name, l.image.manifest.version
            ),
            BootAction::Local => {
                format!("machine {} profile {} local disk", self.who, self.profile)
            }
        }
    }

    /// What "who booted what" records: `name@version`, or `local`.
    #[must_use]
    pub fn booted(&self) -> String {
        match &self.action {
            BootAction::Linux(l) => l.image.label(),
            BootAction::Local => "local".into(),
        }
    }

    /// The Linux boot, if that is what it is.
    #[must_use]
    pub fn linux(&self) -> Option<&LinuxBoot> {
        match &self.action {
            BootAction::Linux(l) => Some(l),
            BootAction::Local => None,
        }
    }
}

/// Why a machine gets no boot plan. Messages are for consoles: they name the machine and the
/// thing the operator has to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoBoot {
    /// The operator revoked the machine.
    #[error("machine {who} is revoked")]
    Revoked {
        /// Machine.
        who: String,
    },
    /// No assigned profile, no group, no default.
    #[error("no profile for machine {who}")]
    NoProfile {
        /// Machine.
        who: String,
    },
    /// The profile's image is not in the catalogue.
    #[error("machine {who}: image {image} of profile {profile} is not published")]
    NotPublished {
        /// Machine.
        who: String,
        /// Profile.
        profile: String,
        /// The image reference.
        image: String,
    },
    /// The image has no kernel artifact.
    #[error("machine {who}: image {image} has no kernel")]
    NoKernel {
        /// Machine.
        who: String,
        /// `name vN`.
        image: String,
    },
    /// The command line cannot be built.
    #[error("machine {who}: command line of profile {profile}: {reason}")]
    Cmdline {
        /// Machine.
        who: String,
        /// Profile.
        profile: String,
        /// Why.
        reason: String,
    },
}

/// Which profile a machine gets, and why ([`Fleet::choose`]): the first half of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The registry machine, if the request identified one.
    pub machine: Option<MachineId>,
    /// How it is named.
    pub who: String,
    /// Its MAC (the request's when the registry has none).
    pub mac: Option<Mac>,
    /// The profile.
    pub profile: String,
    /// How the profile was chosen.
    pub via: Via,
    /// Its board, if known.
    pub board: Option<String>,
}

impl Fleet {
    /// Which profile the machine behind `req` gets (steps 1 to 3 of the module documentation).
    ///
    /// # Errors
    /// [`NoBoot::Revoked`] or [`NoBoot::NoProfile`].
    pub fn choose(&self, req: &BootRequest<'_>) -> Result<Choice, NoBoot> {
        self.decide(req).map(|(c, _)| c)
    }

    /// The boot plan of the machine behind `req`. See the module documentation.
    ///
    /// # Errors
    /// [`NoBoot`] with the reason, for the console of the machine and the log.
    pub fn plan(&self, req: &BootRequest<'_>) -> Result<BootPlan, NoBoot> {
        let (choice, action) = self.decide(req)?;
        let action = action?;
        Ok(BootPlan {
            machine: choice.machine,
            who: choice.who,
            mac: choice.mac,
            profile: choice.profile,
            via: choice.via,
            board: choice.board,
            action,
        })
    }

    /// What machine `id` should install to its disk: the `image` of its `install` profile,
    /// while it has not reported an install. The device API answers the installer's request
    /// for an assignment with it. Chosen from the registry's facts only (an installer asks over
    /// mutual TLS; no network observation is involved).
    #[must_use]
    pub fn install_image(&self, id: MachineId) -> Option<&Arc<CatalogueImage>> {
        let m = self.registry.get(id)?;
        if m.state == MachineState::Revoked || m.facts.trusted_value(keys::INSTALLED).is_some() {
            return None;
        }
        let subject = Subject::machine(m, &m.facts);
        let (profile, _) = self.choose_profile(Some(m), &subject)?;
        if profile.template != Template::Install {
            return None;
        }
        self.catalogue.image(profile.image.as_ref()?)
    }

    #[allow(clippy::type_complexity)] // one internal pair: the choice and what it boots
    fn decide(
        &self,
        req: &BootRequest<'_>,
    ) -> Result<(Choice, Result<BootAction, NoBoot>), NoBoot> {
        let machine = self.registry.find(req.mac, req.uuid, req.serial);
        let who = machine.map_or_else(|| request_name(req), Machine::display_name);
        if machine.is_some_and(|m| m.state == MachineState::Revoked) {
            return Err(NoBoot::Revoked { who });
        }
        let stored = machine.map(|m| &m.facts);
        let facts = stored.map_or_else(|| req.observed.clone(), |f| f.overlaid(req.observed));
        let subject = match machine {
            Some(m) => Subject::machine(m, &facts),
            None => Subject {
                mac: req.mac,
                uuid: req.uuid,
                serial: req.serial,
                name: None,
                facts: &facts,
            },
        };
        let (profile, via) = self
            .choose_profile(machine, &subject)
            .ok_or_else(|| NoBoot::NoProfile { who: who.clone() })?;
        let board = facts.value(keys::BOARD).map(str::to_owned);
        let action = match profile.template {
            Template::Local => Ok(BootAction::Local),
            Template::Linux => self
                .linux(
                    profile,
                    profile.image.as_ref(),
                    &subject,
                    board.as_deref(),
                    &who,
                )
                .map(BootAction::Linux),
            // Only the machine's own word over mutual TLS (or the operator's) ends the install:
            // a forged DHCP or HTTP claim cannot make a machine skip it or boot a blank disk.
            Template::Install if facts.trusted_value(keys::INSTALLED).is_some() => {
                Ok(BootAction::Local)
            }
            Template::Install => self
                .linux(
                    profile,
                    profile.installer.as_ref(),
                    &subject,
                    board.as_deref(),
                    &who,
                )
                .map(BootAction::Linux),
        };
        Ok((
            Choice {
                machine: machine.map(|m| m.id),
                who,
                mac: machine.and_then(|m| m.mac).or(req.mac),
                profile: profile.name.clone(),
                via,
                board,
            },
            action,
        ))
    }

    fn choose_profile(
        &self,
        machine: Option<&Machine>,
        subject: &Subject<'_>,
    ) -> Option<(&Profile, Via)> {
        let profiles = &self.profiles;
        if let Some(p) = machine
            .and_then(Machine::profile)
            .and_then(|name| profiles.profile(name))
        {
            return Some((p, Via::Machine));
        }
        if let Some(g) = profiles
            .groups()
            .iter()
            .find(|g| g.selector.matches(subject, Trust::Any))
        {
            return profiles
                .profile(&g.profile)
                .map(|p| (p, Via::Group(g.name.clone())));
        }
        profiles
            .default_profile()
            .and_then(|d| profiles.profile(d))
            .map(|p| (p, Via::Default))
    }

    fn linux(
        &self,
        profile: &Profile,
        image_ref: Option<&ImageRef>,
        subject: &Subject<'_>,
        board: Option<&str>,
        who: &str,
    ) -> Result<LinuxBoot, NoBoot> {
        let image_ref = image_ref.ok_or_else(|| NoBoot::NotPublished {
            who: who.to_owned(),
            profile: profile.name.clone(),
            image: "(none)".into(),
        })?;
        let image = self
            .catalogue
            .image(image_ref)
            .ok_or_else(|| NoBoot::NotPublished {
                who: who.to_owned(),
                profile: profile.name.clone(),
                image: image_ref.to_string(),
            })?;
        let m = &image.manifest;
        let kernel = image
            .artifact_digest(Role::Kernel)
            .ok_or_else(|| NoBoot::NoKernel {
                who: who.to_owned(),
                image: format!("{} v{}", m.name, m.version),
            })?;
        let bad = |reason: String| NoBoot::Cmdline {
            who: who.to_owned(),
            profile: profile.name.clone(),
            reason,
        };
        let mut cmdline = KernelCmdline::default();
        if let Some(b) = board.and_then(|b| self.boards.get(b)) {
            cmdline
                .append(&b.kernel.console_args())
                .map_err(|e| bad(format!("board {} console: {e}", b.name)))?;
            if let Some(extra) = &b.kernel.cmdline {
                cmdline
                    .append(extra)
                    .map_err(|e| bad(format!("board {}: {e}", b.name)))?;
            }
        }
        cmdline
            .append(image.cmdline.as_str())
            .map_err(|e| bad(format!("image: {e}")))?;
        let own = fill_cmdline(&profile.cmdline, subject, board).map_err(bad)?;
        cmdline.append(&own).map_err(|e| bad(e.to_string()))?;
        let dtbs = m
            .artifacts
            .iter()
            .filter(|a| a.role == Role::Dtb)
            .map(|a| (a.name.clone(), a.sha256))
            .collect();
        Ok(LinuxBoot {
            image: Arc::clone(image),
            kernel,
            initrd: image.artifact_digest(Role::Initrd),
            dtbs,
            cmdline,
        })
    }
}

fn request_name(req: &BootRequest<'_>) -> String {
    match (req.mac, req.uuid, req.serial) {
        (Some(m), _, _) => m.to_string(),
        (None, Some(u), _) => u.to_string(),
        (None, None, Some(s)) => s.to_owned(),
        (None, None, None) => "(unidentified)".into(),
    }
}

/// A profile command line with its placeholders filled from the machine. A substituted value
/// must be one printable token: whitespace or controls would split or end the command line.
fn fill_cmdline(
    parts: &[CmdlinePart],
    subject: &Subject<'_>,
    board: Option<&str>,
) -> Result<String, String> {
    let mut text = String::new();
    for part in parts {
        match part {
            CmdlinePart::Text(t) => text.push_str(t),
            CmdlinePart::Var(p) => {
                let value = match p {
                    Placeholder::Mac => subject.mac.map(|m| m.to_string()),
                    Placeholder::Uuid => subject.uuid.map(|u| u.to_string()),
                    Placeholder::Serial => subject.serial.map(str::to_owned),
                    Placeholder::Name => subject.name.map(str::to_owned),
                    Placeholder::Hostname => subject.facts.value(keys::HOSTNAME).map(str::to_owned),
                    Placeholder::Board => board.map(str::to_owned),
                    Placeholder::Label(k) => subject
                        .facts
                        .trusted_value(&format!("{}{k}", keys::LABEL_PREFIX))
                        .map(str::to_owned),
                };
                let Some(value) = value else {
                    return Err(format!(
                        "placeholder {{{{{}}}}} has no value for this machine",
                        p.name()
                    ));
                };
                if value.bytes().any(|b| !b.is_ascii_graphic()) {
                    return Err(format!(
                        "placeholder {{{{{}}}}}: whitespace or a control character in {:?}",
                        p.name(),
                        value.chars().take(64).collect::<String>()
                    ));
                }
                text.push_str(&value);
            }
        }
    }
    Ok(text)
}

/// Registry machines declared by a profiles file, for tests and tools that have no store: ids
/// from 1 in file order, state `approved`, facts `declared:file` at `at`.
#[must_use]
pub fn declared_registry(profiles: &ProfileSet, at: i64) -> Registry {
    Registry::new(
        profiles
            .machines()
            .iter()
            .zip(1..)
            .map(|(d, id)| Machine {
                id: MachineId(id),
                name: d.name.clone(),
                mac: d.mac,
                uuid: d.uuid,
                serial: d.serial.clone(),
                state: MachineState::Approved,
                facts: d.facts(at),
                first_seen: at,
                last_seen: at,
                last_booted_image: None,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests;
