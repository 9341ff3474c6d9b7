//! `tugboot serve`: the netboot server (DHCP + TFTP + HTTP) run from one configuration file.
//! See `docs/serve.md`.

mod check;
pub mod config;
mod dhcp;
mod metrics;
pub mod netboot;
pub mod publish;
mod run;

pub use check::netboot_warnings;
pub use config::ServeConfig;
pub use run::{load_boards, load_profiles, serve};
