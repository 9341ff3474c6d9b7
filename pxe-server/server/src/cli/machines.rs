//! `tugboot machines ...` and `tugboot enroll token create`: the fleet's machines and their
//! enrollment, through the server's operator API.

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
    /// Every machine the server knows (sighted by DHCP or enrolled).
    List,
    /// One machine: its certificates and last reports.
    Show { id: i64 },
    /// Let a pending machine enroll and take part in rollouts.
    Approve { id: i64 },
    /// Refuse the machine from now on and revoke all its certificates.
    Revoke { id: i64 },
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
    /// Create tokens on the server; each is shown once, here.
    Create {
        /// How many.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        count: u32,
    },
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
        cell(&m["mac"]),
        cell(&m["state"]),
        cell(&m["board"]),
        cell(&m["profile"]),
        labels,
        cell(&m["last_booted_image"]),
        time_cell(&m["last_seen"]),
    ]
}

const MACHINE_HEADERS: [&str; 8] = [
    "ID",
    "MAC",
    "STATE",
    "BOARD",
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
        MachinesCommand::Show { id } => {
            let doc = remote.call("GET", &format!("/api/v1/admin/machines/{id}"), None)?;
            if global.json {
                return print_json(&doc);
            }
            print_table(&MACHINE_HEADERS, &[machine_row(&doc["machine"])]);
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
        }
        MachinesCommand::Approve { id } => {
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
        MachinesCommand::Revoke { id } => {
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
    }
    Ok(())
}

pub fn run_enroll(args: EnrollArgs, global: Global) -> anyhow::Result<()> {
    let remote = Remote::connect(&args.remote)?;
    match args.command {
        EnrollCommand::Token(TokenCommand::Create { count }) => {
            let mut tokens = Vec::new();
            for _ in 0..count {
                let doc = remote.call("POST", "/api/v1/admin/enrollment-tokens", Some(b""))?;
                let token = doc["token"]
                    .as_str()
                    .ok_or_else(|| anyhow::anyhow!("the server answered without a token"))?;
                tokens.push(token.to_owned());
            }
            if global.json {
                return print_json(&serde_json::json!({ "tokens": tokens }));
            }
            for t in tokens {
                println!("{t}");
            }
        }
    }
    Ok(())
}
