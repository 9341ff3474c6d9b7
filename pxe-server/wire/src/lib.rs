//! Shapes that cross a wire, spelled once for every part of tugboot.
//!
//! - [`id`]: machine identifiers (MAC address, SMBIOS UUID) as DHCP, TFTP paths, iPXE
//!   queries, the store, the device API and the agent all write them.
//! - [`device`]: the device API's JSON, the one definition the on-device agent and the server
//!   both use: the assignment, update outcomes, device reports (outcome, status, inventory),
//!   enrollment and renewal. Each document from the other side is parsed with a size cap and
//!   checked here.
//!
//! This crate has no I/O and depends on serde only: the static agent links it too.

pub mod device;
pub mod id;

pub use device::{
    Assignment, CheckResult, DeviceReport, Disk, EnrollRequest, EnrollResponse, Enrolled,
    ErrorBody, Interface, Inventory, Outcome, Rejection, RenewRequest, Slot, SlotParseError,
    UpdateStatus, WireError,
};
pub use id::{IdError, Mac, Uuid};
