//! tugboot's fleet core: the one place that decides what a machine boots and runs.
//!
//! Sans-IO: no sockets, files, clocks or randomness inside. Rows, manifests and `now` go in;
//! decisions, plans and text come out. DHCP, TFTP, HTTP and the device API are front ends that
//! read one [`Fleet`] snapshot and render its answers; the store persists what it is built from.
//!
//! - [`facts`]: what is known about a machine, each fact with its provenance (observed by
//!   DHCP/HTTP/TFTP, attested by the device over mutual TLS, declared by the operator). A
//!   fact is only ever replaced by one of equal or higher authority.
//! - [`machine`]: the machine registry's record (one identity: MAC, SMBIOS UUID, serial, name)
//!   and [`registry::Registry`], the snapshot front ends look machines up in.
//! - [`selector`]: one selector grammar for netboot groups and rollouts.
//! - [`profiles`]: the declarative profiles file (profiles, groups, declared machines).
//! - [`catalogue`]: published, verified images and the artifacts they list.
//! - [`plan`]: [`plan::BootPlan`] — what one machine boots — resolved once, rendered by every
//!   front end ([`render`]: iPXE, GRUB, PXELINUX, U-Boot, Raspberry Pi) and named by path for
//!   loaders that fetch files ([`netboot`]).
//! - [`observe`]: a bounded table of what the network saw recently, keyed by MAC, so what DHCP
//!   observed (the architecture from option 93) reaches the files TFTP generates.
//! - [`rollout`]: the rollout controller, a pure function of (now, rows) → transitions and
//!   assignments.
//! - [`conn`]: the budget of open connections (global and per client address) the TCP front
//!   ends admit connections against.
//! - [`live`]: the snapshot and observations as one running server shares them (locks only).

pub mod catalogue;
pub mod cmdline;
pub mod conn;
pub mod facts;
pub mod live;
pub mod machine;
pub mod netboot;
pub mod observe;
pub mod plan;
pub mod profiles;
pub mod registry;
pub mod render;
pub mod rollout;
pub mod selector;

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;

#[cfg(test)]
pub(crate) mod testkit;

pub use catalogue::{Catalogue, CatalogueError, CatalogueImage, ImageRef};
pub use cmdline::{CmdlineError, KernelCmdline};
pub use facts::{Declarer, Fact, FactError, FactKey, Facts, Observer, Source};
pub use live::Live;
pub use machine::{Machine, MachineId, MachineState};
pub use plan::{BootAction, BootPlan, BootRequest, Choice, Fleet, NoBoot, Via};
pub use profiles::{ProfileError, ProfileSet, Template};
pub use registry::Registry;
pub use selector::{Selector, SelectorError, Trust};
pub use tugboot_wire::{Mac, Uuid};
