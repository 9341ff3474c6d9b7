//! Output for people and for scripts: one-line errors, JSON documents, progress bars.

use std::io::Read;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tugboot_firmware::{BlobError, StreamError, VerifyError};

use super::Global;

/// A stable, machine-readable name for the failure, for `--json` and for scripts matching on it.
fn error_code(err: &anyhow::Error) -> &'static str {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<VerifyError>() {
            return e.code();
        }
        let stream = cause.downcast_ref::<StreamError>().or_else(|| {
            match cause.downcast_ref::<BlobError>() {
                Some(BlobError::Stream(e)) => Some(e),
                _ => None,
            }
        });
        if let Some(e) = stream {
            return match e {
                StreamError::TooLong { .. } => "artifact-too-long",
                StreamError::TooShort { .. } => "artifact-too-short",
                StreamError::DigestMismatch { .. } => "artifact-digest-mismatch",
                _ => "artifact-invalid",
            };
        }
        if let Some(BlobError::Missing(_)) = cause.downcast_ref::<BlobError>() {
            return "artifact-missing";
        }
    }
    "error"
}

/// Prints the whole cause chain on one line (`error: outer: inner`), and a JSON object on stdout
/// when scripts asked for JSON.
pub fn report_error(err: &anyhow::Error, json: bool) {
    let code = error_code(err);
    let message = format!("{err:#}").replace('\n', " ");
    if json {
        let doc = serde_json::json!({ "ok": false, "error": { "code": code, "message": message } });
        println!("{doc}");
    }
    eprintln!("error: {message}");
}

/// Prints a JSON document on stdout (pretty, one document per command).
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A byte-progress bar on stderr, hidden when nobody is watching.
pub fn bytes_bar(global: Global, len: u64, what: &str) -> ProgressBar {
    if !global.progress() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{msg:<24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar
}

/// Wraps a reader so that reading it advances a progress bar.
pub fn with_progress<R: Read>(bar: &ProgressBar, reader: R) -> impl Read {
    bar.wrap_read(reader)
}
