//! tugboot's fleet store: machines and their facts, images (the catalogue), rollouts, health
//! reports and device certificates, behind one [`Store`] trait with two backends:
//!
//! - [`SqliteStore`]: the embedded default, one file, zero set-up;
//! - [`PgStore`]: PostgreSQL, for several tugboot servers (one per rack or L2 segment) sharing
//!   one fleet.
//!
//! [`AnyStore`] picks one from a location string at run time.
//!
//! Queries are built at run time (no compile-time checked macros, no `DATABASE_URL` at build
//! time); migrations are embedded per backend. *Nothing acknowledged is lost*: a write has
//! reached durable storage before its future returns. The store holds no clock: callers pass
//! `now` (unix seconds). See `docs/store.md` for the schema and the reasoning.

#[macro_use]
mod sql;
#[macro_use]
mod enroll_sql;

mod any;
pub mod enrollment;
mod error;
mod migrations;
pub mod model;
mod postgres;
mod rows;
mod snapshot;
mod sqlite;
mod store;

/// Seconds after which a repeated sighting refreshes a machine's `last_seen` and an unchanged
/// fact's `at` (both are "to the minute"): the SQL of `observe` and of fact offers spells it.
pub const REFRESH_SECS: i64 = 60;

pub use any::AnyStore;
pub use enrollment::{
    EnrollAttempt, EnrollOutcome, EnrollRefusal, EnrolledCert, EnrollmentToken, NewEnrollmentToken,
};
pub use error::StoreError;
pub use model::{
    DeclareSummary, DeviceCert, DeviceVerdict, Image, MAX_CHECKS_BYTES, MAX_ERROR_LEN,
    MAX_MANIFEST_BYTES, MAX_NAME_LEN, MAX_SIGHTINGS_PER_BATCH, OutcomeKind, Report, ReportOutcome,
    Sighting, Slot, WriteOutcome,
};
pub use postgres::{DEFAULT_PG_CONNECTIONS, PgStore};
pub use snapshot::{
    CatalogueProblem, PublishError, load_catalogue, load_fleet, prepare as prepare_image,
    refresh_live,
};
pub use sqlite::SqliteStore;
pub use store::Store;
// The fleet's domain types, persisted here.
pub use tugboot_fleet::rollout::{
    NewRollout, RolloutId, RolloutRecord, RolloutStage, RolloutState, RolloutThresholds,
    RolloutTransition,
};
pub use tugboot_fleet::{Machine, MachineId, MachineState};
pub use tugboot_wire::Mac;
