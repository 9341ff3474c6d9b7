//! `tugboot rollout ...`: staged rollouts on the server (docs/rollouts.md).

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

use super::Global;
use super::output::print_json;
use super::remote::{Remote, RemoteArgs, cell, print_table, time_cell};

#[derive(Debug, Args)]
pub struct RolloutArgs {
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(subcommand)]
    command: RolloutCommand,
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Move a group of approved machines to a published image, stage by stage.
    Create {
        /// Image name (published with `tugboot images publish`).
        #[arg(long)]
        image: String,
        /// Image version.
        #[arg(long)]
        version: u64,
        /// Group: comma-separated key=value terms (board=, profile=, or a label); `*` = all.
        #[arg(long)]
        selector: String,
        /// A stage as PERCENT[:SOAK_SECS], cumulative share of the group; repeat in rising
        /// order, e.g. --stage 10:3600 --stage 100.
        #[arg(long = "stage", required = true, value_parser = parse_stage)]
        stages: Vec<(u8, u64)>,
        /// Failure rate (per mille of judged devices) above which the rollout pauses itself.
        #[arg(long, default_value_t = 100)]
        max_failure_permille: u16,
        /// Judged devices needed before the failure rate counts (server default if absent).
        #[arg(long)]
        min_reports: Option<u32>,
    },
    /// One rollout (state, stage, device counts), or every rollout without an id.
    Status { id: Option<i64> },
    /// Stop starting new stages (admitted devices keep their assignment).
    Pause { id: i64 },
    /// Continue a paused rollout (report timeouts restart).
    Resume { id: i64 },
    /// Stop the rollout for good: nothing is assigned from it any more.
    Abort { id: i64 },
}

fn parse_stage(text: &str) -> Result<(u8, u64), String> {
    let (p, soak) = match text.split_once(':') {
        Some((p, s)) => (
            p,
            s.parse::<u64>()
                .map_err(|_| format!("soak {s:?} is not a number of seconds"))?,
        ),
        None => (text, 0),
    };
    let percent = p
        .parse::<u8>()
        .ok()
        .filter(|n| (1..=100).contains(n))
        .ok_or_else(|| format!("percent {p:?} must be 1..=100"))?;
    Ok((percent, soak))
}

fn rollout_row(r: &Value) -> Vec<String> {
    let stages = r["stages"].as_array().map_or(0, Vec::len);
    let stage = r["stage"].as_u64().map_or_else(
        || "-".to_owned(),
        |s| format!("{}/{stages}", s.saturating_add(1)),
    );
    let d = &r["devices"];
    let counts = if d.is_null() {
        "-".to_owned()
    } else {
        format!(
            "{}/{}/{}/{}/{}",
            cell(&d["committed"]),
            cell(&d["failed"]),
            cell(&d["timed_out"]),
            cell(&d["pending"]),
            cell(&d["group"])
        )
    };
    vec![
        cell(&r["id"]),
        format!("{} v{}", cell(&r["image_name"]), cell(&r["image_version"])),
        cell(&r["selector"]),
        cell(&r["state"]),
        stage,
        counts,
        time_cell(&r["updated_at"]),
    ]
}

fn print_rollouts(list: &[Value]) {
    let rows: Vec<Vec<String>> = list.iter().map(rollout_row).collect();
    print_table(
        &[
            "ID",
            "IMAGE",
            "SELECTOR",
            "STATE",
            "STAGE",
            "OK/FAILED/TIMED-OUT/PENDING/GROUP",
            "UPDATED",
        ],
        &rows,
    );
}

pub fn run(args: RolloutArgs, global: Global) -> anyhow::Result<()> {
    let remote = Remote::connect(&args.remote)?;
    let doc = match args.command {
        RolloutCommand::Create {
            image,
            version,
            selector,
            stages,
            max_failure_permille,
            min_reports,
        } => {
            if max_failure_permille > 1000 {
                bail!("--max-failure-permille must be 0..=1000");
            }
            let mut body = serde_json::json!({
                "image_name": image,
                "image_version": version,
                "selector": selector,
                "stages": stages
                    .iter()
                    .map(|(p, s)| serde_json::json!({"percent": p, "soak_secs": s}))
                    .collect::<Vec<_>>(),
                "max_failure_permille": max_failure_permille,
            });
            if let Some(n) = min_reports {
                body["min_reports"] = n.into();
            }
            let bytes = serde_json::to_vec(&body).context("encoding the rollout")?;
            remote.call("POST", "/api/v1/admin/rollouts", Some(&bytes))?
        }
        RolloutCommand::Status { id: None } => {
            let list = remote.call("GET", "/api/v1/admin/rollouts", None)?;
            if global.json {
                return print_json(&list);
            }
            print_rollouts(list.as_array().map_or(&[], Vec::as_slice));
            return Ok(());
        }
        RolloutCommand::Status { id: Some(id) } => {
            remote.call("GET", &format!("/api/v1/admin/rollouts/{id}"), None)?
        }
        RolloutCommand::Pause { id } => command(&remote, id, "pause")?,
        RolloutCommand::Resume { id } => command(&remote, id, "resume")?,
        RolloutCommand::Abort { id } => command(&remote, id, "abort")?,
    };
    if global.json {
        return print_json(&doc);
    }
    print_rollouts(std::slice::from_ref(&doc));
    Ok(())
}

fn command(remote: &Remote, id: i64, action: &str) -> anyhow::Result<Value> {
    remote.call(
        "POST",
        &format!("/api/v1/admin/rollouts/{id}/{action}"),
        Some(b""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_parse_percent_and_soak() {
        assert_eq!(parse_stage("10:3600"), Ok((10, 3600)));
        assert_eq!(parse_stage("100"), Ok((100, 0)));
        for bad in ["0", "101", "x", "10:", "10:-1", ":5", ""] {
            assert!(parse_stage(bad).is_err(), "{bad:?} accepted");
        }
    }
}
