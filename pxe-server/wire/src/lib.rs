//! Shapes that cross a wire, spelled once for every part of tugboot.
//!
//! - [`id`]: machine identifiers (MAC address, SMBIOS UUID) as DHCP, TFTP paths, iPXE
//!   queries, the store, the device API and the agent all write them.
//!
//! This crate has no I/O and depends on serde only: the static agent links it too.

pub mod id;

pub use id::{IdError, Mac, Uuid};
