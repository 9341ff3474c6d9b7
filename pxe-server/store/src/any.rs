//! Picking the backend at run time from a store location.

use tugboot_fleet::facts::{FactKey, Source};
use tugboot_fleet::profiles::DeclaredMachine;

use crate::{
    DeclareSummary, DeviceCert, DeviceVerdict, Image, Mac, Machine, MachineId, MachineState,
    NewRollout, PgStore, Report, RolloutId, RolloutRecord, RolloutTransition, Sighting,
    SqliteStore, Store, StoreError, WriteOutcome,
};

/// Either backend, chosen from configuration ([`AnyStore::open`]). Implements [`Store`] by
/// dispatching to the backend, which is what the server binary holds.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AnyStore {
    /// Embedded SQLite file.
    Sqlite(SqliteStore),
    /// Shared PostgreSQL database.
    Postgres(PgStore),
}

impl AnyStore {
    /// Opens a store from a location:
    /// `postgres://...` / `postgresql://...` connect to PostgreSQL; `sqlite://PATH`,
    /// `sqlite:PATH` or a plain path open (creating) an SQLite file.
    pub async fn open(location: &str) -> Result<Self, StoreError> {
        if location.starts_with("postgres://") || location.starts_with("postgresql://") {
            return Ok(Self::Postgres(PgStore::connect(location).await?));
        }
        let path = location
            .strip_prefix("sqlite://")
            .or_else(|| location.strip_prefix("sqlite:"))
            .unwrap_or(location);
        if path.is_empty() || path.contains("://") {
            return Err(StoreError::InvalidLocation {
                location: location.to_owned(),
                reason: "expected postgres://..., sqlite://PATH or a file path",
            });
        }
        Ok(Self::Sqlite(SqliteStore::open(path).await?))
    }

    /// Closes the underlying pools.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(s) => s.close().await,
            Self::Postgres(s) => s.close().await,
        }
    }
}

macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            AnyStore::Sqlite(s) => s.$method($($arg),*).await,
            AnyStore::Postgres(s) => s.$method($($arg),*).await,
        }
    };
}

impl Store for AnyStore {
    async fn observe(
        &self,
        sightings: &[Sighting],
        now: i64,
    ) -> Result<Vec<MachineId>, StoreError> {
        dispatch!(self.observe(sightings, now))
    }
    async fn declare_machines(
        &self,
        machines: &[DeclaredMachine],
        now: i64,
    ) -> Result<DeclareSummary, StoreError> {
        dispatch!(self.declare_machines(machines, now))
    }
    async fn set_facts(
        &self,
        id: MachineId,
        facts: &[(FactKey, String)],
        source: Source,
        now: i64,
    ) -> Result<Machine, StoreError> {
        dispatch!(self.set_facts(id, facts, source, now))
    }
    async fn withdraw_facts(
        &self,
        id: MachineId,
        keys: &[FactKey],
        source: Source,
    ) -> Result<Machine, StoreError> {
        dispatch!(self.withdraw_facts(id, keys, source))
    }
    async fn get_machine(&self, id: MachineId) -> Result<Option<Machine>, StoreError> {
        dispatch!(self.get_machine(id))
    }
    async fn find_machine_by_mac(&self, mac: Mac) -> Result<Option<Machine>, StoreError> {
        dispatch!(self.find_machine_by_mac(mac))
    }
    async fn find_machine_by_serial(&self, serial: &str) -> Result<Option<Machine>, StoreError> {
        dispatch!(self.find_machine_by_serial(serial))
    }
    async fn list_machines(&self) -> Result<Vec<Machine>, StoreError> {
        dispatch!(self.list_machines())
    }
    async fn set_machine_state(
        &self,
        id: MachineId,
        state: MachineState,
    ) -> Result<Machine, StoreError> {
        dispatch!(self.set_machine_state(id, state))
    }
    async fn record_boots(
        &self,
        boots: &[(MachineId, String)],
        now: i64,
    ) -> Result<u64, StoreError> {
        dispatch!(self.record_boots(boots, now))
    }
    async fn delete_machine(&self, id: MachineId) -> Result<bool, StoreError> {
        dispatch!(self.delete_machine(id))
    }
    async fn put_image(&self, image: &Image) -> Result<WriteOutcome, StoreError> {
        dispatch!(self.put_image(image))
    }
    async fn get_image(&self, name: &str, version: u64) -> Result<Option<Image>, StoreError> {
        dispatch!(self.get_image(name, version))
    }
    async fn list_images(&self, name: Option<&str>) -> Result<Vec<Image>, StoreError> {
        dispatch!(self.list_images(name))
    }
    async fn set_image_published(
        &self,
        name: &str,
        version: u64,
        published: bool,
    ) -> Result<bool, StoreError> {
        dispatch!(self.set_image_published(name, version, published))
    }
    async fn create_rollout(
        &self,
        rollout: &NewRollout,
        now: i64,
    ) -> Result<RolloutRecord, StoreError> {
        dispatch!(self.create_rollout(rollout, now))
    }
    async fn get_rollout(&self, id: RolloutId) -> Result<Option<RolloutRecord>, StoreError> {
        dispatch!(self.get_rollout(id))
    }
    async fn list_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        dispatch!(self.list_rollouts())
    }
    async fn transition_rollout(
        &self,
        transition: &RolloutTransition,
        now: i64,
    ) -> Result<Option<RolloutRecord>, StoreError> {
        dispatch!(self.transition_rollout(transition, now))
    }
    async fn insert_report(&self, report: &Report) -> Result<WriteOutcome, StoreError> {
        dispatch!(self.insert_report(report))
    }
    async fn get_report(
        &self,
        device: MachineId,
        report_id: &str,
    ) -> Result<Option<Report>, StoreError> {
        dispatch!(self.get_report(device, report_id))
    }
    async fn list_reports(&self, device: MachineId, limit: u32) -> Result<Vec<Report>, StoreError> {
        dispatch!(self.list_reports(device, limit))
    }
    async fn count_reports(&self) -> Result<u64, StoreError> {
        dispatch!(self.count_reports())
    }
    async fn image_outcomes(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Vec<DeviceVerdict>, StoreError> {
        dispatch!(self.image_outcomes(name, version))
    }
    async fn insert_device_cert(&self, cert: &DeviceCert) -> Result<(), StoreError> {
        dispatch!(self.insert_device_cert(cert))
    }
    async fn get_device_cert(&self, serial: &str) -> Result<Option<DeviceCert>, StoreError> {
        dispatch!(self.get_device_cert(serial))
    }
    async fn list_device_certs(&self, device: MachineId) -> Result<Vec<DeviceCert>, StoreError> {
        dispatch!(self.list_device_certs(device))
    }
    async fn revoke_device_cert(&self, serial: &str, now: i64) -> Result<DeviceCert, StoreError> {
        dispatch!(self.revoke_device_cert(serial, now))
    }
    async fn create_enrollment_token(
        &self,
        token: &crate::NewEnrollmentToken,
    ) -> Result<(), StoreError> {
        dispatch!(self.create_enrollment_token(token))
    }
    async fn list_enrollment_tokens(&self) -> Result<Vec<crate::EnrollmentToken>, StoreError> {
        dispatch!(self.list_enrollment_tokens())
    }
    async fn enroll<F>(
        &self,
        attempt: &crate::EnrollAttempt,
        issue: F,
    ) -> Result<crate::EnrollOutcome, StoreError>
    where
        F: FnOnce(MachineId) -> Result<crate::EnrolledCert, String> + Send,
    {
        dispatch!(self.enroll(attempt, issue))
    }
}
