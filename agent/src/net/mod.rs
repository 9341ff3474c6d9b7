//! The agent's network side: a small synchronous HTTPS client on ureq with mutual TLS
//! ([`client`]), resumable artifact downloads ([`download`]), the durable report queue
//! ([`queue`]) and the post-reboot health checks ([`health`]).
//!
//! Protocol with the device API (the server follows it; see `docs/agent.md`, "CLI and config"):
//!
//! - `GET  {server}/api/v1/device/assignment` → `204` (nothing assigned) or `200` with
//!   [`Assignment`] JSON.
//! - `GET  <manifest_url>` → the signed manifest envelope (at most `MAX_MANIFEST_BYTES`).
//! - `GET  <artifact url>` (with `Range: bytes=N-` when resuming) → the artifact.
//! - `POST {server}/api/v1/device/reports` with a [`queue::Report`] → any `2xx` acknowledges it.
//!
//! The device is identified by its client certificate only.

pub mod client;
pub mod daemon;
pub mod download;
pub mod health;
pub mod queue;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use client::{HttpClient, TlsIdentity};
pub use download::ResumableDownload;
pub use queue::{QueueError, Report, ReportQueue};

/// Path of the assignment, below the server URL.
pub const ASSIGNMENT_PATH: &str = "/api/v1/device/assignment";
/// Path reports are POSTed to, below the server URL.
pub const REPORTS_PATH: &str = "/api/v1/device/reports";
/// Size cap of an assignment document.
pub const MAX_ASSIGNMENT_BYTES: usize = 64 * 1024;

/// What the server wants the device to run: the signed manifest, and where each of its artifacts
/// can be downloaded. URLs are absolute (`http(s)://…`) or absolute paths on the server
/// (`/…`). Unknown fields are ignored (a newer server may add some); integrity comes from the
/// signed manifest, never from this document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Where the signed manifest envelope is.
    pub manifest_url: String,
    /// Artifact URLs keyed by lowercase hex SHA-256.
    #[serde(default)]
    pub artifacts: BTreeMap<String, String>,
}

/// A network operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// A PEM file of the TLS identity is unusable.
    #[error("{what}: {reason}")]
    Pem {
        /// Which file (ca, cert, key).
        what: String,
        /// Why.
        reason: String,
    },
    /// The request could not be made or the connection broke (TLS refusals land here).
    #[error("{url}: {source}")]
    Transport {
        /// The URL.
        url: String,
        /// ureq's error.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The server answered with an unexpected status.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// A body was larger than its cap.
    #[error("{url}: body larger than {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The cap.
        limit: usize,
    },
    /// A body is not what the protocol says.
    #[error("{url}: {reason}")]
    Protocol {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Reading a body failed.
    #[error("{url}: reading the body: {source}")]
    Body {
        /// The URL.
        url: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl Assignment {
    /// Parses an assignment body (capped).
    ///
    /// # Errors
    /// [`NetError::TooLarge`] or [`NetError::Protocol`].
    pub fn parse(url: &str, body: &[u8]) -> Result<Self, NetError> {
        if body.len() > MAX_ASSIGNMENT_BYTES {
            return Err(NetError::TooLarge {
                url: url.to_owned(),
                limit: MAX_ASSIGNMENT_BYTES,
            });
        }
        let a: Self = serde_json::from_slice(body).map_err(|e| NetError::Protocol {
            url: url.to_owned(),
            reason: format!("assignment: {e}"),
        })?;
        for (digest, target) in &a.artifacts {
            let ok = digest.len() == 64
                && digest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !ok {
                return Err(NetError::Protocol {
                    url: url.to_owned(),
                    reason: format!(
                        "assignment: artifact key {digest:?} is not a lowercase sha256"
                    ),
                });
            }
            check_url(url, target)?;
        }
        check_url(url, &a.manifest_url)?;
        Ok(a)
    }

    /// The URL of the artifact with digest `sha256`.
    #[must_use]
    pub fn artifact_url(&self, sha256: &tugboot_firmware::Sha256Digest) -> Option<&str> {
        self.artifacts.get(&sha256.to_hex()).map(String::as_str)
    }
}

fn check_url(context: &str, u: &str) -> Result<(), NetError> {
    // An absolute URL must name a host: `https:///x` would only fail later, in the transport.
    let has_host = |rest: &str| !rest.is_empty() && !rest.starts_with(['/', '?', '#', '@', ':']);
    let ok = (u.starts_with('/') && !u.starts_with("//"))
        || u.strip_prefix("https://").is_some_and(has_host)
        || u.strip_prefix("http://").is_some_and(has_host);
    if ok && u.len() <= 4096 && !u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Ok(())
    } else {
        Err(NetError::Protocol {
            url: context.to_owned(),
            reason: format!("assignment: bad URL {u:?}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn urls_without_a_host_are_refused() {
        for bad in [
            "https:///x",
            "http://",
            "https://?q",
            "http://:80/x",
            "https://@h/x",
            "//h/x",
        ] {
            assert!(check_url("u", bad).is_err(), "{bad:?} accepted");
        }
        for good in ["/x", "https://h/x", "http://10.0.0.1:8080/a?b"] {
            assert!(check_url("u", good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn assignment_parses_and_finds_artifacts() {
        let body = format!(
            r#"{{"manifest_url":"/m/1","artifacts":{{"{D}":"https://cdn.example/a"}},"future":1}}"#
        );
        let a = Assignment::parse("u", body.as_bytes()).unwrap();
        assert_eq!(a.manifest_url, "/m/1");
        let d = tugboot_firmware::Sha256Digest::of(b"test");
        assert_eq!(a.artifact_url(&d), Some("https://cdn.example/a"));
    }

    #[test]
    fn assignment_rejects_bad_shapes() {
        for body in [
            r#"{"artifacts":{}}"#.to_owned(),
            r#"{"manifest_url":"ftp://x"}"#.to_owned(),
            r#"{"manifest_url":"//evil/x"}"#.to_owned(),
            format!(
                r#"{{"manifest_url":"/m","artifacts":{{"{}":"/a"}}}}"#,
                D.to_uppercase()
            ),
            r#"{"manifest_url":"/m","artifacts":{"abc":"/a"}}"#.to_owned(),
            format!(r#"{{"manifest_url":"/m","artifacts":{{"{D}":"/a b"}}}}"#),
            "[]".to_owned(),
        ] {
            assert!(
                matches!(
                    Assignment::parse("u", body.as_bytes()),
                    Err(NetError::Protocol { .. })
                ),
                "{body}"
            );
        }
        let big = vec![b' '; MAX_ASSIGNMENT_BYTES + 1];
        assert!(matches!(
            Assignment::parse("u", &big),
            Err(NetError::TooLarge { .. })
        ));
    }
}
