//! `tugboot serve`: the netboot server (DHCP + TFTP + HTTP) run from one configuration file.
//! See `docs/serve.md`.

pub mod config;
mod dhcp;
mod metrics;
pub mod netboot;
pub mod publish;
mod run;

pub use config::ServeConfig;
pub use run::{load_profiles, serve};
