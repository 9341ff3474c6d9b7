//! The `Store` trait: everything the server and fleet logic persist.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;

use crate::{
    DeviceCert, Image, Lease, LeaseClient, LeasePool, LeaseRequest, LeaseState, MacAddr, Machine,
    MachineId, MachineSighting, MachineState, NewRollout, Report, Rollout, RolloutId,
    RolloutTransition, StoreError, WriteOutcome,
};

/// Persistent fleet state, shared by the DHCP, HTTP and device-API shells of one server, and on
/// PostgreSQL by several servers.
///
/// # Shape
///
/// Methods are `async` (returning `Send` futures, so they can be awaited inside `tokio::spawn`)
/// and the trait is `Send + Sync`: share one store behind an `Arc`. The trait is **not**
/// dyn-compatible (async methods); code that must pick the backend at run time uses
/// [`crate::AnyStore`], an enum over both implementations, and generic code takes `S: Store`.
///
/// # Guarantees (both backends)
///
/// - A write has reached durable storage when its future returns `Ok`: an acknowledged lease or
///   report survives a crash of the server process (and, with the documented settings, of the
///   machine). Callers send the DHCPACK / HTTP response only after that.
/// - Every write statement is atomic; the multi-step lease operations are ordered so that any
///   interleaving with other writers (other tasks, other servers) leaves a consistent state.
/// - Inputs are checked against size caps before anything is sent to the database
///   ([`StoreError::InvalidInput`]), and rows that do not decode are reported as
///   [`StoreError::CorruptRow`], never a panic.
/// - No clock inside: every time-dependent method takes `now` (unix seconds).
pub trait Store: Send + Sync {
    // ---- machines ----

    /// Records that a machine was seen on the network: creates it in state
    /// [`MachineState::Unknown`] on first sight, otherwise refreshes `last_seen` and fills in
    /// identifiers this sighting adds (absent ones keep the stored value).
    fn record_sighting(
        &self,
        sighting: &MachineSighting,
        now: i64,
    ) -> impl Future<Output = Result<Machine, StoreError>> + Send;

    /// The machine with this id.
    fn get_machine(
        &self,
        id: MachineId,
    ) -> impl Future<Output = Result<Option<Machine>, StoreError>> + Send;

    /// The machine with this boot MAC.
    fn find_machine_by_mac(
        &self,
        mac: MacAddr,
    ) -> impl Future<Output = Result<Option<Machine>, StoreError>> + Send;

    /// The (oldest) machine with this serial number.
    fn find_machine_by_serial(
        &self,
        serial: &str,
    ) -> impl Future<Output = Result<Option<Machine>, StoreError>> + Send;

    /// All machines, by id.
    fn list_machines(&self) -> impl Future<Output = Result<Vec<Machine>, StoreError>> + Send;

    /// Sets the operator state. [`StoreError::NotFound`] if the machine does not exist.
    fn set_machine_state(
        &self,
        id: MachineId,
        state: MachineState,
    ) -> impl Future<Output = Result<Machine, StoreError>> + Send;

    /// Sets board, profile and labels (replacing the label set).
    fn assign_machine(
        &self,
        id: MachineId,
        board: Option<&str>,
        profile: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<Machine, StoreError>> + Send;

    /// Records the image a machine booted (and that it was seen at `now`).
    fn record_boot(
        &self,
        id: MachineId,
        image: &str,
        now: i64,
    ) -> impl Future<Output = Result<Machine, StoreError>> + Send;

    /// Deletes a machine with its reports and certificates. False if it did not exist.
    fn delete_machine(
        &self,
        id: MachineId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    // ---- DHCP leases ----

    /// Creates a pool (one row per address). Idempotent for the same range; returns how many
    /// addresses were added. A different range under an existing name is
    /// [`StoreError::AlreadyExists`].
    fn add_pool(
        &self,
        pool: &LeasePool,
        now: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Finds an address for a client and holds it, atomically even across servers sharing
    /// PostgreSQL: the client's current address if it has one, else the requested address if
    /// it can be taken, else a free one (never-used first, then the longest-expired).
    /// `Ok(None)` when the pool is exhausted. Two callers never get the same address.
    fn allocate_lease(
        &self,
        request: &LeaseRequest,
        now: i64,
    ) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send;

    /// Holds one specific address for a client (DHCPREQUEST / renewal). `Ok(None)` when the
    /// address is held by someone else or not in the pool: answer DHCPNAK. A client that holds
    /// another address of the pool gives that one up first (one address per client and pool),
    /// even if the requested one then turns out to be taken.
    fn claim_lease(
        &self,
        pool: &str,
        addr: Ipv4Addr,
        client: &LeaseClient,
        state: LeaseState,
        expires_at: i64,
        now: i64,
    ) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send;

    /// DHCPRELEASE: the address becomes reusable (the client keeps its affinity to it).
    /// False when the client did not hold it.
    fn release_lease(
        &self,
        pool: &str,
        addr: Ipv4Addr,
        client_id: &[u8],
        now: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// DHCPDECLINE: the address is in use by someone unknown; quarantine it until `until`.
    /// False when the client did not hold it.
    fn decline_lease(
        &self,
        pool: &str,
        addr: Ipv4Addr,
        client_id: &[u8],
        until: i64,
        now: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// One address of a pool, whatever its state.
    fn get_lease(
        &self,
        pool: &str,
        addr: Ipv4Addr,
    ) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send;

    /// Addresses held (offered or bound, unexpired) at `now`, by address.
    fn list_active_leases(
        &self,
        pool: &str,
        now: i64,
    ) -> impl Future<Output = Result<Vec<Lease>, StoreError>> + Send;

    // ---- images ----

    /// Stores an image. Storing the identical image again is [`WriteOutcome::AlreadyPresent`];
    /// the same name and version with another manifest is [`StoreError::ImageImmutable`].
    /// The `published` flag of an already stored image is left alone.
    fn put_image(
        &self,
        image: &Image,
    ) -> impl Future<Output = Result<WriteOutcome, StoreError>> + Send;

    /// One image.
    fn get_image(
        &self,
        name: &str,
        version: u64,
    ) -> impl Future<Output = Result<Option<Image>, StoreError>> + Send;

    /// All versions of an image, oldest first.
    fn list_images(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Vec<Image>, StoreError>> + Send;

    /// Publishes or withdraws an image. False if it does not exist.
    fn set_image_published(
        &self,
        name: &str,
        version: u64,
        published: bool,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    // ---- rollouts ----

    /// Creates a rollout in state `pending` at stage 0. [`StoreError::NotFound`] if the image
    /// is not stored.
    fn create_rollout(
        &self,
        rollout: &NewRollout,
        now: i64,
    ) -> impl Future<Output = Result<Rollout, StoreError>> + Send;

    /// One rollout.
    fn get_rollout(
        &self,
        id: RolloutId,
    ) -> impl Future<Output = Result<Option<Rollout>, StoreError>> + Send;

    /// All rollouts, by id.
    fn list_rollouts(&self) -> impl Future<Output = Result<Vec<Rollout>, StoreError>> + Send;

    /// Compare-and-set transition: `Ok(None)` if the rollout is no longer in the expected
    /// state and stage (another server moved it first).
    fn transition_rollout(
        &self,
        transition: &RolloutTransition,
        now: i64,
    ) -> impl Future<Output = Result<Option<Rollout>, StoreError>> + Send;

    // ---- reports ----

    /// Stores a health report, idempotently by `(device, report_id)`: a retried report is
    /// [`WriteOutcome::AlreadyPresent`] and the first copy is kept.
    /// [`StoreError::NotFound`] if the device is unknown.
    fn insert_report(
        &self,
        report: &Report,
    ) -> impl Future<Output = Result<WriteOutcome, StoreError>> + Send;

    /// One report.
    fn get_report(
        &self,
        device: MachineId,
        report_id: &str,
    ) -> impl Future<Output = Result<Option<Report>, StoreError>> + Send;

    /// A device's latest reports, newest first.
    fn list_reports(
        &self,
        device: MachineId,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Report>, StoreError>> + Send;

    /// Number of stored reports (all devices).
    fn count_reports(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    // ---- device certificates ----

    /// Records an issued certificate. [`StoreError::AlreadyExists`] for a known serial,
    /// [`StoreError::NotFound`] for an unknown device.
    fn insert_device_cert(
        &self,
        cert: &DeviceCert,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// One certificate by serial.
    fn get_device_cert(
        &self,
        serial: &str,
    ) -> impl Future<Output = Result<Option<DeviceCert>, StoreError>> + Send;

    /// A device's certificates, oldest first.
    fn list_device_certs(
        &self,
        device: MachineId,
    ) -> impl Future<Output = Result<Vec<DeviceCert>, StoreError>> + Send;

    /// Revokes a certificate (the first revocation time is kept). [`StoreError::NotFound`] if
    /// the serial is unknown.
    fn revoke_device_cert(
        &self,
        serial: &str,
        now: i64,
    ) -> impl Future<Output = Result<DeviceCert, StoreError>> + Send;
}
