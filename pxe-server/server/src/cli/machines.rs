//! `tugboot machines ...` and `tugboot enroll token create`: the fleet's machines and their
//! enrollment, through the server's operator API.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::Value;

use super::Global;
use super::output::print_json;
use super::remote::{Remote, RemoteArgs, cell, print_table, time_cell};

#[derive(Debug, Args)]
pub struct MachinesArgs {
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(subcommand)]
    command: MachinesCommand,
}

#[derive(Debug, Subcommand)]
enum MachinesCommand {
    /// Every machine the server knows (seen on the network, declared, or enrolled).
    List,
    /// One machine: its facts with who stated them, its certificates and last reports.
    Show { machine: String },
    /// Let a pending machine enroll and take part in rollouts.
    Approve { machine: String },
    /// Refuse the machine from now on and revoke all its certificates.
    Revoke { machine: String },
    /// Set labels (KEY=VALUE) or remove them (KEY=) as the operator: what netboot groups and
    /// rollout selectors match on. Nothing observed or attested overrides them.
    Label {
        machine: String,
        /// KEY=VALUE to set, KEY= to remove (repeatable).
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// Declare what a machine boots or is: its profile, board, host name.
    Assign {
        machine: String,
        #[arg(long)]
        profile: Option<String>,
        #[arg(long)]
        board: Option<String>,
        #[arg(long)]
        hostname: Option<String>,
    },
    /// Withdraw what `assign` declared (the profiles file's or the network's value shows again).
    Unassign {
        machine: String,
        #[arg(long)]
        profile: bool,
        #[arg(long)]
        board: bool,
        #[arg(long)]
        hostname: bool,
    },
}

#[derive(Debug, Args)]
pub struct EnrollArgs {
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(subcommand)]
    command: EnrollCommand,
}

#[derive(Debug, Subcommand)]
enum EnrollCommand {
    /// One-time enrollment tokens (a device holding one is approved at enrollment).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create tokens on the server; each is shown once, here (the server keeps its hash).
    Create {
        /// How many.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        count: u32,
        /// Lifetime: 30m, 12h, 7d, 1y (default: the server's, 24 h).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        /// Only a device enrolling with this boot MAC may use it.
        #[arg(long)]
        mac: Option<String>,
        /// Only a device enrolling with this serial number may use it.
        #[arg(long)]
        serial: Option<String>,
    },
    /// The server's tokens: a hash prefix (never the token), expiry, bindings, use.
    List,
}

/// A machine named by its id, MAC or name.
fn machine_id(remote: &Remote, text: &str) -> anyhow::Result<i64> {
    if let Ok(id) = text.parse::<i64>() {
        return Ok(id);
    }
    let mac = text
        .parse::<tugboot_wire::Mac>()
        .ok()
        .map(|m| m.to_string());
    let list = remote.call("GET", "/api/v1/admin/machines", None)?;
    list.as_array()
        .into_iter()
        .flatten()
        .find(|m| {
            m["name"].as_str() == Some(text)
                || mac
                    .as_deref()
                    .is_some_and(|mac| m["mac"].as_str() == Some(mac))
        })
        .and_then(|m| m["id"].as_i64())
        .ok_or_else(|| anyhow::anyhow!("no machine with id, MAC or name {text:?}"))
}

fn change_facts(
    remote: &Remote,
    machine: &str,
    set: &serde_json::Map<String, Value>,
    withdraw: &[String],
    global: Global,
) -> anyhow::Result<()> {
    let id = machine_id(remote, machine)?;
    let body = serde_json::to_vec(&serde_json::json!({"set": set, "withdraw": withdraw}))?;
    let m = remote.call(
        "POST",
        &format!("/api/v1/admin/machines/{id}/facts"),
        Some(&body),
    )?;
    if global.json {
        return print_json(&m);
    }
    print_table(&MACHINE_HEADERS, &[machine_row(&m)]);
    Ok(())
}

fn machine_row(m: &Value) -> Vec<String> {
    let labels = m["labels"]
        .as_object()
        .map(|l| {
            l.iter()
                .map(|(k, v)| format!("{k}={}", cell(v)))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".into());
    vec![
        cell(&m["id"]),
        cell(&m["name"]),
        cell(&m["mac"]),
        cell(&m["state"]),
        cell(&m["board"]),
        cell(&m["facts"]["arch"]["value"]),
        cell(&m["profile"]),
        labels,
        cell(&m["last_booted_image"]),
        time_cell(&m["last_seen"]),
    ]
}

const MACHINE_HEADERS: [&str; 10] = [
    "ID",
    "NAME",
    "MAC",
    "STATE",
    "BOARD",
    "ARCH",
    "PROFILE",
    "LABELS",
    "LAST BOOTED",
    "LAST SEEN",
];

pub fn run(args: MachinesArgs, global: Global) -> anyhow::Result<()> {
    let remote = Remote::connect(&args.remote)?;
    match args.command {
        MachinesCommand::List => {
            let list = remote.call("GET", "/api/v1/admin/machines", None)?;
            if global.json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .as_array()
                .map(|a| a.iter().map(machine_row).collect())
                .unwrap_or_default();
            print_table(&MACHINE_HEADERS, &rows);
        }
        MachinesCommand::Show { machine } => {
            let id = machine_id(&remote, &machine)?;
            let doc = remote.call("GET", &format!("/api/v1/admin/machines/{id}"), None)?;
            if global.json {
                return print_json(&doc);
            }
            print_table(&MACHINE_HEADERS, &[machine_row(&doc["machine"])]);
            let facts: Vec<Vec<String>> = doc["machine"]["facts"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, f)| {
                            vec![
                                k.clone(),
                                cell(&f["value"]),
                                cell(&f["source"]),
                                time_cell(&f["at"]),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            println!();
            print_table(&["FACT", "VALUE", "SOURCE", "SINCE"], &facts);
            let certs: Vec<Vec<String>> = doc["certificates"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|c| {
                            vec![
                                cell(&c["serial"]),
                                time_cell(&c["issued_at"]),
                                time_cell(&c["not_after"]),
                                time_cell(&c["revoked_at"]),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            println!();
            print_table(&["CERTIFICATE", "ISSUED", "NOT AFTER", "REVOKED"], &certs);
            let reports: Vec<Vec<String>> = doc["reports"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| {
                            let outcome = &r["report"]["outcome"];
                            vec![
                                cell(&r["id"]),
                                time_cell(&r["received_at"]),
                                match outcome {
                                    Value::Null => "status".into(),
                                    o => format!(
                                        "{} {} v{}",
                                        cell(&o["outcome"]),
                                        cell(&o["name"]),
                                        cell(&o["version"])
                                    ),
                                },
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            println!();
            print_table(&["REPORT", "RECEIVED", "OUTCOME"], &reports);
            println!();
            for line in health_lines(&doc) {
                println!("{line}");
            }
        }
        MachinesCommand::Approve { machine } => {
            let id = machine_id(&remote, &machine)?;
            let m = remote.call(
                "POST",
                &format!("/api/v1/admin/machines/{id}/approve"),
                Some(b""),
            )?;
            if global.json {
                return print_json(&m);
            }
            println!(
                "machine {} ({}) is {}",
                cell(&m["id"]),
                cell(&m["mac"]),
                cell(&m["state"])
            );
        }
        MachinesCommand::Revoke { machine } => {
            let id = machine_id(&remote, &machine)?;
            let doc = remote.call(
                "POST",
                &format!("/api/v1/admin/machines/{id}/revoke"),
                Some(b""),
            )?;
            if global.json {
                return print_json(&doc);
            }
            let n = doc["revoked_certificates"].as_array().map_or(0, Vec::len);
            println!(
                "machine {} ({}) is {}; {n} certificate(s) revoked",
                cell(&doc["machine"]["id"]),
                cell(&doc["machine"]["mac"]),
                cell(&doc["machine"]["state"])
            );
        }
        MachinesCommand::Label { machine, labels } => {
            let mut set = serde_json::Map::new();
            let mut withdraw = Vec::new();
            for l in &labels {
                let (k, v) = l
                    .split_once('=')
                    .with_context(|| format!("{l:?}: expected KEY=VALUE (or KEY= to remove)"))?;
                let key = format!("label.{}", k.strip_prefix("label.").unwrap_or(k));
                if v.is_empty() {
                    withdraw.push(key);
                } else {
                    set.insert(key, Value::from(v));
                }
            }
            change_facts(&remote, &machine, &set, &withdraw, global)?;
        }
        MachinesCommand::Assign {
            machine,
            profile,
            board,
            hostname,
        } => {
            let mut set = serde_json::Map::new();
            for (k, v) in [
                ("profile", profile),
                ("board", board),
                ("hostname", hostname),
            ] {
                if let Some(v) = v {
                    set.insert(k.into(), Value::from(v));
                }
            }
            if set.is_empty() {
                anyhow::bail!("say what to assign: --profile, --board and/or --hostname");
            }
            change_facts(&remote, &machine, &set, &[], global)?;
        }
        MachinesCommand::Unassign {
            machine,
            profile,
            board,
            hostname,
        } => {
            let withdraw: Vec<String> = [
                ("profile", profile),
                ("board", board),
                ("hostname", hostname),
            ]
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(k, _)| k.to_owned())
            .collect();
            if withdraw.is_empty() {
                anyhow::bail!("say what to withdraw: --profile, --board and/or --hostname");
            }
            change_facts(
                &remote,
                &machine,
                &serde_json::Map::new(),
                &withdraw,
                global,
            )?;
        }
    }
    Ok(())
}

pub fn run_enroll(args: EnrollArgs, global: Global) -> anyhow::Result<()> {
    let remote = Remote::connect(&args.remote)?;
    match args.command {
        EnrollCommand::Token(TokenCommand::Create {
            count,
            expires,
            mac,
            serial,
        }) => {
            let mut options = serde_json::Map::new();
            if let Some(e) = expires {
                let secs = super::util::parse_duration_secs(&e).with_context(|| {
                    format!("--expires {e:?}: expected a duration such as 30m, 12h, 7d or 1y")
                })?;
                options.insert("expires_in_secs".into(), secs.into());
            }
            if let Some(m) = mac {
                let m: tugboot_wire::Mac = m
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--mac {m:?} is not a MAC address"))?;
                options.insert("mac".into(), m.to_string().into());
            }
            if let Some(s) = serial {
                options.insert("serial".into(), s.into());
            }
            let body = serde_json::to_vec(&options)?;
            let mut tokens = Vec::new();
            for _ in 0..count {
                let doc = remote.call("POST", "/api/v1/admin/enrollment-tokens", Some(&body))?;
                let token = doc["token"]
                    .as_str()
                    .ok_or_else(|| anyhow::anyhow!("the server answered without a token"))?;
                tokens.push((token.to_owned(), doc["expires_at"].clone()));
            }
            if global.json {
                let list: Vec<&str> = tokens.iter().map(|(t, _)| t.as_str()).collect();
                let expires = tokens.first().map_or(Value::Null, |(_, e)| e.clone());
                return print_json(&serde_json::json!({ "tokens": list, "expires_at": expires }));
            }
            for (t, _) in &tokens {
                println!("{t}");
            }
            if let Some((_, e)) = tokens.first() {
                eprintln!("expires {}", time_cell(e));
            }
        }
        EnrollCommand::Token(TokenCommand::List) => {
            let list = remote.call("GET", "/api/v1/admin/enrollment-tokens", None)?;
            if global.json {
                return print_json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    vec![
                        cell(&t["id"]),
                        cell(&t["state"]),
                        time_cell(&t["expires_at"]),
                        cell(&t["mac"]),
                        cell(&t["serial"]),
                        cell(&t["used_by"]),
                    ]
                })
                .collect();
            print_table(
                &["ID", "STATE", "EXPIRES", "MAC", "SERIAL", "USED BY"],
                &rows,
            );
        }
    }
    Ok(())
}

/// "12 s", "5 min", "3 h", "2 d".
fn age(secs: &Value) -> String {
    let Some(s) = secs.as_i64() else {
        return "-".into();
    };
    match s {
        ..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// The machine's latest status and inventory with their age, and a line when it went silent.
fn health_lines(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let st = &doc["status"];
    if st.is_null() {
        out.push("status:    none reported".into());
    } else {
        let checks = st["checks"].as_object().map_or_else(
            || "-".to_owned(),
            |c| {
                c.iter()
                    .map(|(k, v)| {
                        let r = match (v["ok"].as_bool(), v.as_str()) {
                            (Some(true), _) => "ok",
                            (Some(false), _) => "FAILED",
                            (None, Some(text)) => text,
                            (None, None) => "?",
                        };
                        format!("{k}={r}")
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            },
        );
        out.push(format!(
            "status:    {} ago: slot {}, image {}, up {} s, checks {checks}, last error {}",
            age(&st["age_secs"]),
            cell(&st["slot"]),
            cell(&st["image"]),
            cell(&st["uptime_secs"]),
            cell(&st["last_error"]),
        ));
    }
    let inv = &doc["inventory"];
    if !inv.is_null() {
        let macs: Vec<String> = inv["interfaces"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| format!("{} {}", cell(&i["name"]), cell(&i["mac"])))
            .collect();
        let disks: Vec<String> = inv["disks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                format!(
                    "{} {} MiB",
                    cell(&d["name"]),
                    d["size_bytes"].as_u64().map_or(0, |b| b >> 20)
                )
            })
            .collect();
        out.push(format!(
            "inventory: {} ago: board {}, arch {}, kernel {}, {} CPUs, {} MiB, disks [{}], interfaces [{}]",
            age(&inv["age_secs"]),
            cell(&inv["board"]),
            cell(&inv["arch"]),
            cell(&inv["kernel"]),
            cell(&inv["cpus"]),
            inv["memory_bytes"].as_u64().map_or(0, |b| b >> 20),
            disks.join(", "),
            macs.join(", "),
        ));
    }
    let silent = &doc["silent"];
    if silent["silent"].as_bool() == Some(true) {
        out.push(format!(
            "SILENT:    no report for {} (deadline {})",
            match silent["last_report_age_secs"] {
                Value::Null => "ever".to_owned(),
                ref a => age(a),
            },
            age(&silent["after_secs"]),
        ));
    }
    out
}
