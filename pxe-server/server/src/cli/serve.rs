//! `tugboot serve` and `tugboot check-config`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::Value;

use super::Global;
use super::output::print_json;
use super::util::read_capped;
use crate::serve as engine;
use crate::serve::{ServeConfig, config::MAX_SERVE_CONFIG_LEN};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line per event for people.
    Human,
    /// One JSON object per line for log collectors.
    Json,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Server configuration (TOML; see docs/serve.md).
    #[arg(long, env = "TUGBOOT_CONFIG")]
    config: PathBuf,
    /// Log format on stderr. Verbosity: RUST_LOG (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// Server configuration (TOML; see docs/serve.md).
    #[arg(long, env = "TUGBOOT_CONFIG")]
    config: PathBuf,
}

fn load(path: &Path) -> anyhow::Result<ServeConfig> {
    let bytes = read_capped(path, MAX_SERVE_CONFIG_LEN)?;
    let text =
        String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", path.display()))?;
    let abs = std::path::absolute(path).with_context(|| format!("{}", path.display()))?;
    let base = abs.parent().unwrap_or(Path::new("/"));
    ServeConfig::from_toml(&text, base).with_context(|| format!("config {}", path.display()))
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for people looking at a terminal, not in files and journals.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A subscriber already installed (tests) is not an error worth stopping for.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

pub fn run_serve(args: ServeArgs, _global: Global) -> anyhow::Result<()> {
    let config = load(&args.config)?;
    init_logging(args.log_format);
    engine::serve(config)
}

/// Flattens a JSON document into `a.b.c = value` lines.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Array(a) if a.iter().any(|x| x.is_object()) => {
            for (i, v) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        Value::Null => out.push(format!("{prefix} = (none)")),
        Value::String(s) => out.push(format!("{prefix} = {s}")),
        other => out.push(format!("{prefix} = {other}")),
    }
}

pub fn run_check(args: CheckConfigArgs, global: Global) -> anyhow::Result<()> {
    let config = load(&args.config)?;
    // The files the server reads at start must load too.
    let root = read_capped(&config.trust_root, tugboot_firmware::MAX_ROOT_BYTES)?;
    tugboot_firmware::TrustedRoot::bootstrap(&root, tugboot_firmware::Timestamp::now())
        .with_context(|| format!("trust root {}", config.trust_root.display()))?;
    let profiles = engine::load_profiles(&config)?;
    let boards = engine::load_boards(&config, &profiles)?;
    let warnings = engine::netboot_warnings(&config, &profiles, &boards);
    let mut value = serde_json::to_value(config.resolved())?;
    if let Value::Object(m) = &mut value {
        m.insert("ok".into(), Value::Bool(true));
        m.insert("warnings".into(), serde_json::to_value(&warnings)?);
    }
    if global.json {
        return print_json(&value);
    }
    let mut lines = Vec::new();
    flatten("", &value, &mut lines);
    for l in lines.iter().filter(|l| !l.starts_with("warnings")) {
        println!("{l}");
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flatten_names_every_leaf_by_its_path() {
        let v = serde_json::json!({"a": {"b": 1, "c": null}, "s": [{"x": "y"}], "l": [1, 2]});
        let mut out = Vec::new();
        flatten("", &v, &mut out);
        assert_eq!(out, ["a.b = 1", "a.c = (none)", "l = [1,2]", "s[0].x = y"]);
    }
}
