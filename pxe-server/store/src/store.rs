//! The `Store` trait: everything the server and fleet logic persist.

use std::future::Future;

use tugboot_fleet::facts::{FactKey, Source};
use tugboot_fleet::profiles::DeclaredMachine;
use tugboot_fleet::rollout::{NewRollout, RolloutId, RolloutRecord, RolloutTransition};
use tugboot_fleet::{Machine, MachineId, MachineState};
use tugboot_wire::Mac;

use crate::enrollment::{
    EnrollAttempt, EnrollOutcome, EnrolledCert, EnrollmentToken, NewEnrollmentToken,
};
use crate::{
    DeclareSummary, DeviceCert, DeviceVerdict, Image, Report, Sighting, StoreError, WriteOutcome,
};

/// Persistent fleet state, shared by the DHCP, TFTP, HTTP and device-API shells of one server,
/// and on PostgreSQL by several servers.
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
/// - A write has reached durable storage when its future returns `Ok`: an acknowledged report
///   survives a crash of the server process (and, with the documented settings, of the
///   machine). Callers answer only after that.
/// - Every write is atomic (one statement or one transaction).
/// - Facts keep their provenance and the authority rule of `tugboot_fleet::facts`: a fact is
///   replaced only by one of equal or higher rank, enforced in the SQL itself, so it holds with
///   several writers.
/// - Inputs are checked against size caps before anything is sent to the database
///   ([`StoreError::InvalidInput`]), and rows that do not decode are reported as
///   [`StoreError::CorruptRow`], never a panic.
/// - No clock inside: every time-dependent method takes `now` (unix seconds).
pub trait Store: Send + Sync {
    // ---- machines ----

    /// Records what the network saw (one transaction for the whole batch, at most
    /// `MAX_SIGHTINGS_PER_BATCH`): each machine is created in state `unknown` on first sight
    /// (keyed by MAC), `last_seen` is raised to `now`, and its observed facts are offered under
    /// the authority rule. Returns the machine ids, in input order.
    fn observe(
        &self,
        sightings: &[Sighting],
        now: i64,
    ) -> impl Future<Output = Result<Vec<MachineId>, StoreError>> + Send;

    /// Syncs the machines of a profiles file: each is found by MAC, else UUID, else serial,
    /// else name, or created (state `adopted`); its identity (name, UUID, serial, and the MAC
    /// if it had none) is set as declared; its facts `declared:file` become exactly what the
    /// file states (file facts of machines or keys the file no longer names are withdrawn).
    /// Facts the operator declared through the API rank higher and are left alone.
    fn declare_machines(
        &self,
        machines: &[DeclaredMachine],
        now: i64,
    ) -> impl Future<Output = Result<DeclareSummary, StoreError>> + Send;

    /// Offers facts from one authenticated or declaring `source` (attested by the device,
    /// declared by the operator) under the authority rule. [`StoreError::NotFound`] if the
    /// machine does not exist.
    fn set_facts(
        &self,
        id: MachineId,
        facts: &[(FactKey, String)],
        source: Source,
        now: i64,
    ) -> impl Future<Output = Result<Machine, StoreError>> + Send;

    /// Withdraws facts that `source` stated (a fact stated by anyone else stays).
    fn withdraw_facts(
        &self,
        id: MachineId,
        keys: &[FactKey],
        source: Source,
    ) -> impl Future<Output = Result<Machine, StoreError>> + Send;

    /// The machine with this id.
    fn get_machine(
        &self,
        id: MachineId,
    ) -> impl Future<Output = Result<Option<Machine>, StoreError>> + Send;

    /// The machine with this boot MAC.
    fn find_machine_by_mac(
        &self,
        mac: Mac,
    ) -> impl Future<Output = Result<Option<Machine>, StoreError>> + Send;

    /// The (oldest) machine with this declared or attested serial number.
    fn find_machine_by_serial(
        &self,
        serial: &str,
    ) -> impl Future<Output = Result<Option<Machine>, StoreError>> + Send;

    /// All machines with their facts, by id.
    fn list_machines(&self) -> impl Future<Output = Result<Vec<Machine>, StoreError>> + Send;

    /// Sets the operator state. [`StoreError::NotFound`] if the machine does not exist.
    ///
    /// Approving (`Approved`) is also the operator action that lets an enrolled machine enroll
    /// once more: if none of its certificates is unrevoked any more, its enrollment ends (in
    /// the same transaction). A machine with a live certificate stays enrolled.
    fn set_machine_state(
        &self,
        id: MachineId,
        state: MachineState,
    ) -> impl Future<Output = Result<Machine, StoreError>> + Send;

    /// Records the images machines booted (and that they were seen at `now`), in one
    /// transaction; a machine named twice keeps its last image. Returns how many machines were
    /// updated: a machine deleted meanwhile is skipped. At most [`MAX_SIGHTINGS_PER_BATCH`]
    /// boots per call.
    ///
    /// [`MAX_SIGHTINGS_PER_BATCH`]: crate::MAX_SIGHTINGS_PER_BATCH
    fn record_boots(
        &self,
        boots: &[(MachineId, String)],
        now: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Deletes a machine with its facts, reports and certificates. False if it did not exist.
    fn delete_machine(
        &self,
        id: MachineId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    // ---- images: the catalogue ----

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

    /// Images by name then version (oldest first); all names when `name` is `None`.
    fn list_images(
        &self,
        name: Option<&str>,
    ) -> impl Future<Output = Result<Vec<Image>, StoreError>> + Send;

    /// Publishes or withdraws (yanks) an image. False if it does not exist.
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
    ) -> impl Future<Output = Result<RolloutRecord, StoreError>> + Send;

    /// One rollout.
    fn get_rollout(
        &self,
        id: RolloutId,
    ) -> impl Future<Output = Result<Option<RolloutRecord>, StoreError>> + Send;

    /// All rollouts, by id.
    fn list_rollouts(&self) -> impl Future<Output = Result<Vec<RolloutRecord>, StoreError>> + Send;

    /// Compare-and-set transition: `Ok(None)` if the rollout is no longer in the expected
    /// state and stage (another server moved it first).
    fn transition_rollout(
        &self,
        transition: &RolloutTransition,
        now: i64,
    ) -> impl Future<Output = Result<Option<RolloutRecord>, StoreError>> + Send;

    // ---- reports ----

    /// Stores a report, idempotently by `(device, report_id)`: a retried report is
    /// [`WriteOutcome::AlreadyPresent`] and the first copy is kept (and nothing else changes).
    /// A `committed` or `installed` outcome also records the boot it tells of (the machine's
    /// `last_booted_image` becomes `name@version`, `last_seen` moves to the report's time if
    /// later) in the same transaction: a crash never leaves the report stored without it.
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

    /// The latest update outcome of every device that reported one for `name@version`: what a
    /// rollout of that image needs, in one query.
    fn image_outcomes(
        &self,
        name: &str,
        version: u64,
    ) -> impl Future<Output = Result<Vec<DeviceVerdict>, StoreError>> + Send;

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

    // ---- enrollment (schema v3; docs/security.md) ----

    /// Stores a new one-time enrollment token (its hash). [`StoreError::AlreadyExists`] for a
    /// known hash.
    fn create_enrollment_token(
        &self,
        token: &NewEnrollmentToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every enrollment token, oldest first.
    fn list_enrollment_tokens(
        &self,
    ) -> impl Future<Output = Result<Vec<EnrollmentToken>, StoreError>> + Send;

    /// One enrollment request, decided and recorded in one transaction (see
    /// [`crate::enrollment`]): with a token, the token is spent and a certificate issued;
    /// without, an approved machine with no active enrollment gets a certificate and any other
    /// waits (the first request of a new machine creates it, up to `max_pending`). `issue` is
    /// called at most once, with the machine, when a certificate is to be recorded: it returns
    /// what the CA signed. Refusals are `Ok(EnrollOutcome::Refused)` with nothing written.
    fn enroll<F>(
        &self,
        attempt: &EnrollAttempt,
        issue: F,
    ) -> impl Future<Output = Result<EnrollOutcome, StoreError>> + Send
    where
        F: FnOnce(MachineId) -> Result<EnrolledCert, String> + Send;
}
