//! tugboot's HTTP(S) boot server: per-machine iPXE scripts and the artifacts of verified,
//! published images. Endpoints, the profiles schema and the script format are in `docs/http.md`.
//!
//! The parts that decide are pure and tested with byte fixtures: [`profiles`] (who boots what),
//! [`ipxe`] (script text, safe against iPXE syntax injection), [`range`] (HTTP ranges and
//! conditional requests) and [`published`] (which artifacts may be served at all). [`server`] is
//! the axum shell around them and [`tls`] the rustls listener.

pub mod ipxe;
pub mod profiles;
pub mod published;
pub mod range;
pub mod server;
pub mod tls;

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;

pub use ipxe::{BaseUrl, ErrorAction, KernelCmdline, RenderError};
pub use profiles::{FactError, Facts, ProfileError, ProfileSet, RawFacts, Resolution, Via};
pub use published::{BlobCheck, PublishError, Published, PublishedImage, publish};
pub use range::{RangeDecision, decide_range};
pub use server::{
    BootObserver, BootRecord, BootServer, Counters, CountersSnapshot, HttpConfig, MetricsSource,
    Scheme, serve, serve_tls,
};
pub use tls::{TlsError, TlsListener, server_config};
