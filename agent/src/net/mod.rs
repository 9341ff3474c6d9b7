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
//! - `POST {server}/api/v1/enroll` (no client certificate) and `POST
//!   {server}/api/v1/device/renew` (mutual TLS) → the device certificate ([`enroll`]).
//!
//! The device is identified by its client certificate only. Every shape is the device API's
//! one definition in `tugboot_wire::device`; refusals carry `{"error": "…"}`, which ends up in
//! [`NetError::Status`].

pub mod client;
pub mod daemon;
pub mod download;
pub mod enroll;
pub mod health;
pub mod inventory;
pub mod memory;
pub mod queue;

pub use client::{HttpClient, TlsIdentity};
pub use download::{ArtifactDownload, DownloadError, ResumableDownload};
pub use queue::{QueueError, Report, ReportQueue};

/// Path of the assignment, below the server URL.
pub const ASSIGNMENT_PATH: &str = "/api/v1/device/assignment";
/// Path reports are POSTed to, below the server URL.
pub const REPORTS_PATH: &str = "/api/v1/device/reports";
/// Path of enrollment (no client certificate), below the server URL.
pub const ENROLL_PATH: &str = "/api/v1/enroll";
/// Path of certificate renewal (mutual TLS), below the server URL.
pub const RENEW_PATH: &str = "/api/v1/device/renew";
pub use tugboot_wire::device::MAX_ASSIGNMENT_BYTES;

/// What the server wants the device to run (`tugboot_wire::Assignment`): the signed manifest,
/// where each of its artifacts can be downloaded, and the rollout that assigned it.
pub use tugboot_wire::Assignment;

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
    /// The server answered with an unexpected status (and, when it said why in
    /// `{"error": "…"}`, its reason: one line, bounded).
    #[error("{url}: HTTP {status}{}", reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
        /// The server's reason.
        reason: Option<String>,
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

/// Parses an assignment body from `url` (capped, checked: `tugboot_wire::Assignment::parse`).
///
/// # Errors
/// [`NetError::TooLarge`] or [`NetError::Protocol`].
pub fn parse_assignment(url: &str, body: &[u8]) -> Result<Assignment, NetError> {
    Assignment::parse(body).map_err(|e| match e {
        tugboot_wire::WireError::TooLarge { limit, .. } => NetError::TooLarge {
            url: url.to_owned(),
            limit,
        },
        other => NetError::Protocol {
            url: url.to_owned(),
            reason: format!("assignment: {other}"),
        },
    })
}

impl NetError {
    /// The HTTP status, for a refusal.
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server's reason, for a refusal that gave one.
    #[must_use]
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Status { reason, .. } => reason.as_deref(),
            _ => None,
        }
    }
}

/// The entry of the `device_api` fuzz target and of its seed test: the device API's JSON
/// parsers (`tugboot_wire::device`), the certificate and key readers of enrollment, and the
/// inventory's `/proc` text parsers, over the same untrusted bytes. Never panics (the wire
/// crate asserts its round trips).
pub fn fuzz_device_api(data: &[u8]) {
    tugboot_wire::device::fuzz_device_json(data);
    enroll::fuzz_certificate(data);
    inventory::fuzz_texts(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn assignment_errors_name_the_url() {
        let body = format!(
            r#"{{"manifest_url":"/m/1","artifacts":{{"{D}":"https://cdn.example/a"}},"future":1}}"#
        );
        let a = parse_assignment("u", body.as_bytes()).unwrap();
        let d = tugboot_firmware::Sha256Digest::of(b"test");
        assert_eq!(a.artifact_url(&d.to_hex()), Some("https://cdn.example/a"));
        let e = parse_assignment("https://s/a", br#"{"manifest_url":"//evil/x"}"#).unwrap_err();
        assert!(
            matches!(&e, NetError::Protocol { url, reason } if url == "https://s/a" && reason.contains("manifest_url")),
            "{e}"
        );
        let big = vec![b' '; MAX_ASSIGNMENT_BYTES + 1];
        assert!(matches!(
            parse_assignment("u", &big),
            Err(NetError::TooLarge { .. })
        ));
    }
}
