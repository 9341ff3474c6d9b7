//! tugboot's device API: HTTPS with client certificates for the on-device agents, a built-in
//! certificate authority that enrolls devices, operator endpoints, and the staged-rollout logic
//! that decides which device runs which image.
//!
//! - [`ca`]: the CA (ECDSA P-256, rcgen): `ca init`, device certificates from CSRs, the server
//!   certificate, identity extraction from a verified peer certificate.
//! - [`server`]: axum on rustls/tokio-rustls; the identity of a request is taken only from the
//!   verified client certificate.
//! - [`wire`]: the JSON shapes (shared with the agent), parsed with size caps.
//! - [`tokens`]: one-time enrollment tokens and the operator bearer token.
//! - [`client`]: a small mTLS client (tests, benchmark, tooling).
//!
//! See `docs/device-api.md` and `docs/rollouts.md`.

pub mod ca;
pub mod client;
pub mod metrics;
pub mod server;
pub mod tokens;
pub mod wire;

pub use ca::{CaError, CertAuthority, IssuedCert, PeerIdentity, ServerCert};
pub use server::{ApiConfig, ApiError, ApiParts, ApiServer, ApiState, ServerHandle};
