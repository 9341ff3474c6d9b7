//! tugboot's fleet store: machines, DHCP leases, images, rollouts, health reports and device
//! certificates, behind one [`Store`] trait with two backends:
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

mod any;
mod error;
mod migrations;
pub mod model;
mod postgres;
mod rows;
mod sqlite;
mod store;

pub use any::AnyStore;
pub use error::StoreError;
pub use model::{
    DeviceCert, Image, Lease, LeaseClient, LeasePool, LeaseRequest, LeaseState, MAX_CHECKS_BYTES,
    MAX_CLIENT_ID_LEN, MAX_ERROR_LEN, MAX_LABELS_BYTES, MAX_MANIFEST_BYTES, MAX_NAME_LEN,
    MAX_POOL_SIZE, MAX_ROLLOUT_STAGES, MacAddr, MacParseError, Machine, MachineId, MachineSighting,
    MachineState, NewRollout, Report, Rollout, RolloutId, RolloutStage, RolloutState,
    RolloutThresholds, RolloutTransition, Slot, WriteOutcome,
};
pub use postgres::{DEFAULT_PG_CONNECTIONS, PgStore};
pub use sqlite::SqliteStore;
pub use store::Store;
