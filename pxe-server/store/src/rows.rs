//! Decoding rows into domain types, shared by both backends.
//!
//! [`RowExt`] names the handful of column types the schema uses, implemented for SQLite and
//! PostgreSQL rows; the decoders are written once against it.

use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use tugboot_fleet::facts::{Fact, FactKey, Facts, Source};
use tugboot_fleet::rollout::{RolloutId, RolloutRecord, RolloutState};
use tugboot_fleet::{Machine, MachineId, MachineState};

use crate::model::{mac_from_db, u64_from_db};
use crate::{DeviceCert, Image, OutcomeKind, Report, ReportOutcome, Slot, StoreError};

pub(crate) trait RowExt {
    fn int(&self, col: &'static str) -> Result<i64, StoreError>;
    fn opt_int(&self, col: &'static str) -> Result<Option<i64>, StoreError>;
    fn text(&self, col: &'static str) -> Result<String, StoreError>;
    fn opt_text(&self, col: &'static str) -> Result<Option<String>, StoreError>;
    fn bytes(&self, col: &'static str) -> Result<Vec<u8>, StoreError>;
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

pub(crate) fn machine(r: &impl RowExt, facts: Facts) -> Result<Machine, StoreError> {
    Ok(Machine {
        id: MachineId(r.int("id")?),
        name: r.opt_text("name")?,
        mac: r
            .opt_text("mac")?
            .map(|m| mac_from_db("machines", &m))
            .transpose()?,
        uuid: r
            .opt_text("smbios_uuid")?
            .map(|u| {
                u.parse()
                    .map_err(|_| StoreError::corrupt("machines", "smbios_uuid", format!("{u:?}")))
            })
            .transpose()?,
        serial: r.opt_text("serial")?,
        state: r
            .text("state")?
            .parse::<MachineState>()
            .map_err(|e| StoreError::corrupt("machines", "state", e))?,
        facts,
        first_seen: r.int("first_seen")?,
        last_seen: r.int("last_seen")?,
        last_booted_image: r.opt_text("last_booted_image")?,
    })
}

/// One row of `machine_facts`: the machine, the name and the fact.
pub(crate) fn fact(r: &impl RowExt) -> Result<(i64, FactKey, Fact), StoreError> {
    let key = r.text("key")?;
    let key = FactKey::new(&key)
        .map_err(|e| StoreError::corrupt("machine_facts", "key", e.to_string()))?;
    let source = r
        .text("source")?
        .parse::<Source>()
        .map_err(|e| StoreError::corrupt("machine_facts", "source", e.to_string()))?;
    Ok((
        r.int("machine_id")?,
        key,
        Fact {
            value: r.text("value")?,
            source,
            at: r.int("at")?,
        },
    ))
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

pub(crate) fn rollout(r: &impl RowExt) -> Result<RolloutRecord, StoreError> {
    Ok(RolloutRecord {
        id: RolloutId(r.int("id")?),
        image_name: r.text("image_name")?,
        image_version: u64_from_db("rollouts", "image_version", r.int("image_version")?)?,
        group_selector: r.text("group_selector")?,
        stages: serde_json::from_str(&r.text("stages")?)
            .map_err(|e| StoreError::corrupt("rollouts", "stages", e.to_string()))?,
        thresholds: serde_json::from_str(&r.text("thresholds")?)
            .map_err(|e| StoreError::corrupt("rollouts", "thresholds", e.to_string()))?,
        state: r
            .text("state")?
            .parse::<RolloutState>()
            .map_err(|e| StoreError::corrupt("rollouts", "state", e))?,
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
        slot: r.opt_text("slot")?.map(|s| Slot::from_db(&s)).transpose()?,
        image_version: u64_from_db("reports", "image_version", r.int("image_version")?)?,
        checks: serde_json::from_str(&r.text("checks")?)
            .map_err(|e| StoreError::corrupt("reports", "checks", e.to_string()))?,
        uptime_secs: u64_from_db("reports", "uptime_secs", r.int("uptime_secs")?)?,
        last_error: r.opt_text("last_error")?,
        outcome: match (
            r.opt_text("outcome")?,
            r.opt_text("outcome_name")?,
            r.opt_int("outcome_version")?,
        ) {
            (Some(kind), Some(image_name), Some(version)) => Some(ReportOutcome {
                kind: OutcomeKind::from_db(&kind)?,
                image_name,
                image_version: u64_from_db("reports", "outcome_version", version)?,
            }),
            _ => None,
        },
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

pub(crate) fn enrollment_token(
    r: &impl RowExt,
) -> Result<crate::enrollment::EnrollmentToken, StoreError> {
    Ok(crate::enrollment::EnrollmentToken {
        hash: r.text("hash")?,
        created_at: r.int("created_at")?,
        expires_at: r.int("expires_at")?,
        bound_mac: r
            .opt_text("bound_mac")?
            .map(|m| mac_from_db("enrollment_tokens", &m))
            .transpose()?,
        bound_serial: r.opt_text("bound_serial")?,
        used_at: r.opt_int("used_at")?,
        used_by: r.opt_int("used_by")?.map(MachineId),
    })
}
