//! Decoding rows into domain types, shared by both backends.
//!
//! [`RowExt`] names the handful of column types the schema uses, implemented for SQLite and
//! PostgreSQL rows; the decoders are written once against it.

use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use crate::model::{addr_from_db, labels_from_db, mac_from_db, u64_from_db};
use crate::{
    DeviceCert, Image, Lease, LeaseState, Machine, MachineId, MachineState, Report, Rollout,
    RolloutId, RolloutState, Slot, StoreError,
};

pub(crate) trait RowExt {
    fn int(&self, col: &'static str) -> Result<i64, StoreError>;
    fn opt_int(&self, col: &'static str) -> Result<Option<i64>, StoreError>;
    fn text(&self, col: &'static str) -> Result<String, StoreError>;
    fn opt_text(&self, col: &'static str) -> Result<Option<String>, StoreError>;
    fn bytes(&self, col: &'static str) -> Result<Vec<u8>, StoreError>;
    fn opt_bytes(&self, col: &'static str) -> Result<Option<Vec<u8>>, StoreError>;
    fn boolean(&self, col: &'static str) -> Result<bool, StoreError>;
}

macro_rules! impl_row_ext {
    ($row:ty) => {
        impl RowExt for $row {
            fn int(&self, col: &'static str) -> Result<i64, StoreError> {
                self.try_get(col).map_err(StoreError::backend("decode"))
            }
            fn opt_int(&self, col: &'static str) -> Result<Option<i64>, StoreError> {
                self.try_get(col).map_err(StoreError::backend("decode"))
            }
            fn text(&self, col: &'static str) -> Result<String, StoreError> {
                self.try_get(col).map_err(StoreError::backend("decode"))
            }
            fn opt_text(&self, col: &'static str) -> Result<Option<String>, StoreError> {
                self.try_get(col).map_err(StoreError::backend("decode"))
            }
            fn bytes(&self, col: &'static str) -> Result<Vec<u8>, StoreError> {
                self.try_get(col).map_err(StoreError::backend("decode"))
            }
            fn opt_bytes(&self, col: &'static str) -> Result<Option<Vec<u8>>, StoreError> {
                self.try_get(col).map_err(StoreError::backend("decode"))
            }
            fn boolean(&self, col: &'static str) -> Result<bool, StoreError> {
                self.try_get(col).map_err(StoreError::backend("decode"))
            }
        }
    };
}

impl_row_ext!(SqliteRow);
impl_row_ext!(PgRow);

fn u32_from_db(table: &'static str, column: &'static str, value: i64) -> Result<u32, StoreError> {
    u32::try_from(value)
        .map_err(|_| StoreError::corrupt(table, column, format!("{value} out of range")))
}

pub(crate) fn machine(r: &impl RowExt) -> Result<Machine, StoreError> {
    Ok(Machine {
        id: MachineId(r.int("id")?),
        mac: mac_from_db("machines", &r.text("mac")?)?,
        smbios_uuid: r.opt_text("smbios_uuid")?,
        serial: r.opt_text("serial")?,
        board: r.opt_text("board")?,
        profile: r.opt_text("profile")?,
        labels: labels_from_db(&r.text("labels")?)?,
        state: MachineState::from_db(&r.text("state")?)?,
        first_seen: r.int("first_seen")?,
        last_seen: r.int("last_seen")?,
        last_booted_image: r.opt_text("last_booted_image")?,
    })
}

pub(crate) fn lease(r: &impl RowExt) -> Result<Lease, StoreError> {
    Ok(Lease {
        pool: r.text("pool")?,
        addr: addr_from_db(r.int("addr")?)?,
        client_id: r.opt_bytes("client_id")?,
        mac: r
            .opt_text("mac")?
            .map(|m| mac_from_db("leases", &m))
            .transpose()?,
        hostname: r.opt_text("hostname")?,
        state: LeaseState::from_db(&r.text("state")?)?,
        expires_at: r.int("expires_at")?,
        updated_at: r.int("updated_at")?,
    })
}

pub(crate) fn image(r: &impl RowExt) -> Result<Image, StoreError> {
    Ok(Image {
        name: r.text("name")?,
        version: u64_from_db("images", "version", r.int("version")?)?,
        manifest_digest: r.text("manifest_digest")?,
        manifest: r.bytes("manifest")?,
        published: r.boolean("published")?,
        created_at: r.int("created_at")?,
    })
}

pub(crate) fn rollout(r: &impl RowExt) -> Result<Rollout, StoreError> {
    Ok(Rollout {
        id: RolloutId(r.int("id")?),
        image_name: r.text("image_name")?,
        image_version: u64_from_db("rollouts", "image_version", r.int("image_version")?)?,
        group_selector: r.text("group_selector")?,
        stages: serde_json::from_str(&r.text("stages")?)
            .map_err(|e| StoreError::corrupt("rollouts", "stages", e.to_string()))?,
        thresholds: serde_json::from_str(&r.text("thresholds")?)
            .map_err(|e| StoreError::corrupt("rollouts", "thresholds", e.to_string()))?,
        state: RolloutState::from_db(&r.text("state")?)?,
        current_stage: u32_from_db("rollouts", "current_stage", r.int("current_stage")?)?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
    })
}

pub(crate) fn report(r: &impl RowExt) -> Result<Report, StoreError> {
    Ok(Report {
        device: MachineId(r.int("device_id")?),
        report_id: r.text("report_id")?,
        boot_id: r.text("boot_id")?,
        slot: Slot::from_db(&r.text("slot")?)?,
        image_version: u64_from_db("reports", "image_version", r.int("image_version")?)?,
        checks: serde_json::from_str(&r.text("checks")?)
            .map_err(|e| StoreError::corrupt("reports", "checks", e.to_string()))?,
        uptime_secs: u64_from_db("reports", "uptime_secs", r.int("uptime_secs")?)?,
        last_error: r.opt_text("last_error")?,
        received_at: r.int("received_at")?,
    })
}

pub(crate) fn cert(r: &impl RowExt) -> Result<DeviceCert, StoreError> {
    Ok(DeviceCert {
        serial: r.text("serial")?,
        device: MachineId(r.int("device_id")?),
        issued_at: r.int("issued_at")?,
        not_after: r.int("not_after")?,
        revoked_at: r.opt_int("revoked_at")?,
    })
}
