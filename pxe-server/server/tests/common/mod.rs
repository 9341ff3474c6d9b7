//! Shared by the tests that run the real `tugboot serve` binary.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::Value;

/// A started `tugboot serve` (JSON logs) that has logged `tugboot serve: ready`.
pub struct Started {
    pub child: Child,
    /// Its log lines as they arrive.
    pub log: mpsc::Receiver<String>,
    /// The lines read so far (up to and including the ready line).
    pub lines: Vec<String>,
    /// The ready line, parsed: its `fields` carry the bound addresses.
    pub ready: Value,
}

pub fn start_serve(config: &Path) -> Started {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tugboot"))
        .args(["serve", "--log-format", "json", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let (tx, log) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let ready = loop {
        let line = log
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("serve never became ready:\n{}", lines.join("\n")));
        // JSON logs: one object per line.
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        lines.push(line);
        if v["fields"]["message"] == "tugboot serve: ready" {
            break v;
        }
    };
    Started {
        child,
        log,
        lines,
        ready,
    }
}
