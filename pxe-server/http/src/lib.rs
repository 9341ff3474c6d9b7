//! tugboot's HTTP(S) front end: per-machine iPXE scripts, loader files for UEFI HTTP boot and
//! the artifacts of published images, rendered from the fleet core (`tugboot-fleet`).
//! Endpoints and the script format are in `docs/http.md`.
//!
//! The parts that decide are pure and tested with byte fixtures: [`query`] (what a request
//! says about the machine) and [`range`] (HTTP ranges and conditional requests); what a machine
//! boots is the fleet's. [`server`] is the axum shell, `files` the streaming of artifacts, `conn` the plain-HTTP connection loop
//! (file bodies with `sendfile(2)`, or copied from a map (`mapped`) for clients on this host),
//! and
//! [`tls`] the rustls listener.

mod conn;
mod files;
mod mapped;
pub mod query;
pub mod range;
pub mod server;
pub mod tls;

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;

pub use conn::FileSend;
pub use range::{RangeDecision, decide_range};
pub use server::{
    Admitted, BootObserver, BootServer, Clock, Counters, CountersSnapshot, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_PEER, HttpConfig, MetricsSource, Scheme, serve, serve_tls,
    system_clock,
};
pub use tls::{TlsError, TlsListener, server_config};
pub use tugboot_fleet::render::ipxe::{BaseUrl, ErrorAction};
