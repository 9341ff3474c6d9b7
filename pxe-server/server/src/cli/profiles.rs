//! `tugboot profiles …`: the declarative machines/profiles/groups file that `tugboot serve` boots
//! from (docs/http.md), edited and queried from the command line.
//!
//! Edits append TOML to the file (comments and layout stay as the operator wrote them) and are
//! validated as a whole — the new text must load exactly as `serve` would load it, boards checked
//! against the catalog — before the file is replaced atomically. A running server picks the
//! change up on SIGHUP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tugboot_boards::Catalog;
use tugboot_fleet::facts::{Facts, Observer, keys};
use tugboot_fleet::observe::{ipxe_facts, observed};
use tugboot_fleet::plan::declared_registry;
use tugboot_fleet::{BootRequest, Fleet, ProfileSet, Selector, Via};

use super::Global;
use super::output::print_json;
use super::util::{read_capped, write_atomic};

/// Profiles files are small; the HTTP crate caps them again when parsing.
const MAX_PROFILES_FILE: usize = 4 << 20;

#[derive(Debug, Args)]
pub struct ProfilesArgs {
    /// The profiles file (`profiles = ...` in serve.toml).
    #[arg(long, short, env = "TUGBOOT_PROFILES")]
    file: PathBuf,
    /// Board catalog directory (default: the built-in catalog).
    #[arg(long)]
    boards_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: ProfilesCommand,
}

#[derive(Debug, Subcommand)]
enum ProfilesCommand {
    /// Validate the file and list its profiles, machines and groups.
    List,
    /// Register a machine (by MAC, SMBIOS UUID and/or serial) with its board, profile and labels.
    AddMachine {
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        mac: Option<String>,
        #[arg(long)]
        uuid: Option<String>,
        #[arg(long)]
        serial: Option<String>,
        #[arg(long)]
        hostname: Option<String>,
        #[arg(long)]
        board: Option<String>,
        #[arg(long)]
        profile: Option<String>,
        /// Label KEY=VALUE (repeatable): what group selectors match on.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Define a profile: what a machine boots.
    AddProfile {
        name: String,
        /// Image name: the highest published version boots (or --version).
        #[arg(long, conflicts_with_all = ["manifest", "local"])]
        image: Option<String>,
        /// Pin one version of --image.
        #[arg(long, requires = "image")]
        version: Option<u64>,
        /// Pin a manifest by its SHA-256.
        #[arg(long, conflicts_with = "local")]
        manifest: Option<String>,
        /// Boot from the local disk instead of an image.
        #[arg(long)]
        local: bool,
        /// Extra kernel arguments (after the image's own).
        #[arg(long, default_value = "")]
        cmdline: String,
    },
    /// Define a group: machines matching every selector term boot the profile.
    AddGroup {
        name: String,
        #[arg(long)]
        profile: String,
        #[arg(long)]
        board: Option<String>,
        /// `x86_64`, `arm64`, ... (BIOS PXE machines count as `x86_64`).
        #[arg(long)]
        arch: Option<String>,
        /// `bios`, `uefi`, `uboot`, `rpi`.
        #[arg(long)]
        firmware: Option<String>,
        #[arg(long)]
        mac: Option<String>,
        #[arg(long)]
        hostname: Option<String>,
        /// Label KEY=VALUE the machine must carry (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Which profile a machine with these facts gets, and why (as `serve` decides it; facts
    /// given here count as observed by the network).
    Resolve {
        #[arg(long)]
        mac: Option<String>,
        #[arg(long)]
        uuid: Option<String>,
        #[arg(long)]
        serial: Option<String>,
        /// iPXE's `${buildarch}` (`i386`, `x86_64`, `arm64`).
        #[arg(long)]
        arch: Option<String>,
        /// iPXE's `${platform}` (`pcbios`, `efi`).
        #[arg(long)]
        platform: Option<String>,
        #[arg(long)]
        board: Option<String>,
        #[arg(long)]
        hostname: Option<String>,
    },
}

fn catalog(dir: Option<&Path>) -> anyhow::Result<Catalog> {
    match dir {
        Some(d) => Catalog::load_dir(d).with_context(|| format!("board catalog {}", d.display())),
        None => Ok(Catalog::builtin()),
    }
}

/// Loads a profiles text exactly as `serve` does: parse, validate, check boards.
fn load(text: &str, catalog: &Catalog, what: &Path) -> anyhow::Result<ProfileSet> {
    let set = ProfileSet::from_toml(text).with_context(|| format!("{}", what.display()))?;
    set.check_boards(catalog)
        .with_context(|| format!("{}", what.display()))?;
    Ok(set)
}

fn read_text(path: &Path) -> anyhow::Result<String> {
    if !path.exists() {
        return Ok(String::new());
    }
    let bytes = read_capped(path, MAX_PROFILES_FILE)?;
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", path.display()))
}

/// A TOML basic string with every character escaped as TOML requires.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn labels_table(labels: &[String]) -> anyhow::Result<Option<String>> {
    let mut map = BTreeMap::new();
    for l in labels {
        let (k, v) = l
            .split_once('=')
            .with_context(|| format!("label {l:?} is not KEY=VALUE"))?;
        map.insert(k.to_owned(), v.to_owned());
    }
    if map.is_empty() {
        return Ok(None);
    }
    let items: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{} = {}", quote(k), quote(v)))
        .collect();
    Ok(Some(format!("{{ {} }}", items.join(", "))))
}

fn push_kv(block: &mut String, key: &str, value: Option<&str>) {
    if let Some(v) = value {
        block.push_str(&format!("{key} = {}\n", quote(v)));
    }
}

/// Appends `block` to the file if the result loads; otherwise nothing is written.
fn append(path: &Path, catalog: &Catalog, block: &str) -> anyhow::Result<ProfileSet> {
    let old = read_text(path)?;
    let mut new = old.clone();
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push('\n');
    new.push_str(block);
    let set = load(&new, catalog, path)
        .context("the change would make the file invalid; nothing written")?;
    write_atomic(path, new.as_bytes(), false)?;
    Ok(set)
}

pub fn run(args: ProfilesArgs, global: Global) -> anyhow::Result<()> {
    let catalog = catalog(args.boards_dir.as_deref())?;
    let path = &args.file;
    match args.command {
        ProfilesCommand::List => {
            let set = load(&read_text(path)?, &catalog, path)?;
            print_set(&set, global)
        }
        ProfilesCommand::AddMachine {
            name,
            mac,
            uuid,
            serial,
            hostname,
            board,
            profile,
            labels,
        } => {
            if mac.is_none() && uuid.is_none() && serial.is_none() {
                bail!("a machine needs at least one of --mac, --uuid, --serial");
            }
            let existing = load(&read_text(path)?, &catalog, path)?;
            let registry = declared_registry(&existing, 0);
            let mac_id = mac
                .as_deref()
                .map(str::parse::<tugboot_wire::Mac>)
                .transpose()
                .context("--mac")?;
            let uuid_id = uuid
                .as_deref()
                .map(str::parse::<tugboot_wire::Uuid>)
                .transpose()
                .context("--uuid")?;
            if let Some(m) = registry.find(mac_id, uuid_id, serial.as_deref()) {
                bail!(
                    "machine {} is already registered in {}",
                    m.display_name(),
                    path.display()
                );
            }
            let mut block = String::from("[[machines]]\n");
            push_kv(&mut block, "name", name.as_deref());
            push_kv(&mut block, "mac", mac.as_deref());
            push_kv(&mut block, "uuid", uuid.as_deref());
            push_kv(&mut block, "serial", serial.as_deref());
            push_kv(&mut block, "hostname", hostname.as_deref());
            push_kv(&mut block, "board", board.as_deref());
            push_kv(&mut block, "profile", profile.as_deref());
            if let Some(t) = labels_table(&labels)? {
                block.push_str(&format!("labels = {t}\n"));
            }
            let set = append(path, &catalog, &block)?;
            done(global, path, "machine", &set)
        }
        ProfilesCommand::AddProfile {
            name,
            image,
            version,
            manifest,
            local,
            cmdline,
        } => {
            let existing = load(&read_text(path)?, &catalog, path)?;
            if existing.profile(&name).is_some() {
                bail!("profile {name:?} already exists in {}", path.display());
            }
            if image.is_none() && manifest.is_none() && !local {
                bail!("say what the profile boots: --image NAME, --manifest SHA256 or --local");
            }
            let mut block = format!("[profiles.{}]\n", quote(&name));
            push_kv(&mut block, "image", image.as_deref());
            if let Some(v) = version {
                block.push_str(&format!("version = {v}\n"));
            }
            push_kv(&mut block, "manifest", manifest.as_deref());
            if local {
                block.push_str("template = \"local\"\n");
            }
            if !cmdline.is_empty() {
                push_kv(&mut block, "cmdline", Some(&cmdline));
            }
            let set = append(path, &catalog, &block)?;
            done(global, path, "profile", &set)
        }
        ProfilesCommand::AddGroup {
            name,
            profile,
            board,
            arch,
            firmware,
            mac,
            hostname,
            labels,
        } => {
            let existing = load(&read_text(path)?, &catalog, path)?;
            if existing.groups().iter().any(|g| g.name == name) {
                bail!("group {name:?} already exists in {}", path.display());
            }
            // One selector grammar: the terms are checked and written in their canonical form.
            let mut terms: Vec<String> = [
                ("board", board),
                ("arch", arch),
                ("firmware", firmware),
                ("mac", mac),
                ("hostname", hostname),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
            .collect();
            for l in &labels {
                let (k, v) = l
                    .split_once('=')
                    .with_context(|| format!("--label {l:?}: expected KEY=VALUE"))?;
                terms.push(format!("label.{k}={v}"));
            }
            let selector = Selector::parse(&terms.join(",")).context("selector")?;
            if selector.is_all() {
                bail!(
                    "a group needs at least one selector term (--arch, --firmware, --board, --label, ...)"
                );
            }
            let mut block = String::from("[[groups]]\n");
            push_kv(&mut block, "name", Some(&name));
            push_kv(&mut block, "profile", Some(&profile));
            push_kv(&mut block, "selector", Some(&selector.to_string()));
            let set = append(path, &catalog, &block)?;
            done(global, path, "group", &set)
        }
        ProfilesCommand::Resolve {
            mac,
            uuid,
            serial,
            arch,
            platform,
            board,
            hostname,
        } => {
            let set = load(&read_text(path)?, &catalog, path)?;
            let mac = mac
                .as_deref()
                .map(str::parse::<tugboot_wire::Mac>)
                .transpose()
                .context("--mac")?;
            let uuid = uuid
                .as_deref()
                .map(str::parse::<tugboot_wire::Uuid>)
                .transpose()
                .context("--uuid")?;
            let facts = request_facts(arch.as_deref(), platform.as_deref(), board, hostname);
            let fleet = Fleet {
                registry: declared_registry(&set, 0),
                profiles: set,
                boards: catalog,
                ..Fleet::default()
            };
            let choice = fleet.choose(&BootRequest {
                mac,
                uuid,
                serial: serial.as_deref(),
                observed: &facts,
            });
            let choice = match choice {
                Ok(c) => c,
                Err(e) => {
                    if global.json {
                        return print_json(
                            &serde_json::json!({ "profile": null, "reason": e.to_string() }),
                        );
                    }
                    println!("no profile: {e} (this machine gets the unknown-machine script)");
                    return Ok(());
                }
            };
            let via = match &choice.via {
                Via::Machine => "machine entry".to_owned(),
                Via::Group(g) => format!("group {g}"),
                Via::Default => "default_profile".to_owned(),
            };
            let machine = choice.machine.map(|_| choice.who.clone());
            if global.json {
                print_json(&serde_json::json!({
                    "profile": choice.profile, "via": via, "machine": machine, "board": choice.board,
                }))
            } else {
                println!("profile  {}", choice.profile);
                println!("via      {via}");
                println!("machine  {}", machine.as_deref().unwrap_or("-"));
                println!("board    {}", choice.board.as_deref().unwrap_or("-"));
                Ok(())
            }
        }
    }
}

/// What the command line says about the machine, as facts observed the way iPXE's request
/// would state them.
fn request_facts(
    arch: Option<&str>,
    platform: Option<&str>,
    board: Option<String>,
    hostname: Option<String>,
) -> Facts {
    let (arch, firmware) = ipxe_facts(arch, platform);
    let pairs: Vec<(&str, &str)> = [
        (keys::ARCH, arch),
        (keys::FIRMWARE, firmware),
        (keys::BOARD, board.as_deref()),
        (keys::HOSTNAME, hostname.as_deref()),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    observed(Observer::Http, 0, &pairs)
}

fn done(global: Global, path: &Path, what: &str, set: &ProfileSet) -> anyhow::Result<()> {
    if global.json {
        return print_json(&serde_json::json!({
            "ok": true, "file": path, "added": what,
            "profiles": set.profiles().count(), "machines": set.machines().len(),
            "groups": set.groups().len(),
        }));
    }
    println!(
        "{what} added to {} ({} profile(s), {} machine(s), {} group(s)); reload a running server with SIGHUP",
        path.display(),
        set.profiles().count(),
        set.machines().len(),
        set.groups().len()
    );
    Ok(())
}

fn print_set(set: &ProfileSet, global: Global) -> anyhow::Result<()> {
    if global.json {
        let machines: Vec<_> = set
            .machines()
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.display_name(), "mac": m.mac.map(|x| x.to_string()),
                    "uuid": m.uuid.map(|x| x.to_string()), "serial": m.serial,
                    "board": m.board, "profile": m.profile, "labels": m.labels,
                })
            })
            .collect();
        let groups: Vec<_> = set
            .groups()
            .iter()
            .map(|g| serde_json::json!({ "name": g.name, "profile": g.profile, "selector": g.selector.to_string(), "terms": g.selector.len() }))
            .collect();
        return print_json(&serde_json::json!({
            "default_profile": set.default_profile(),
            "profiles": set.profiles().map(|p| p.name.clone()).collect::<Vec<_>>(),
            "machines": machines, "groups": groups,
        }));
    }
    println!("default profile: {}", set.default_profile().unwrap_or("-"));
    for p in set.profiles() {
        let boots = match (&p.image, &p.installer) {
            (Some(i), Some(installer)) => format!("install {i} (installer {installer})"),
            (Some(i), None) => i.to_string(),
            (None, _) => p.template.as_str().to_owned(),
        };
        println!("profile  {:<20} {boots}", p.name);
    }
    for m in set.machines() {
        println!(
            "machine  {:<20} board {:<18} profile {}",
            m.display_name(),
            m.board.as_deref().unwrap_or("-"),
            m.profile.as_deref().unwrap_or("-")
        );
    }
    for g in set.groups() {
        println!(
            "group    {:<20} profile {:<12} selector {}",
            g.name, g.profile, g.selector
        );
    }
    Ok(())
}
