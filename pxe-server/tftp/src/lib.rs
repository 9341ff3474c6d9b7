//! tugboot's TFTP server: read-only, RFC 1350 with options (RFC 2347), `blksize` (RFC 2348),
//! `tsize` and `timeout` (RFC 2349) and `windowsize` (RFC 7440), block-number wraparound, and
//! per-client generated files.
//!
//! Layers, bottom up:
//! - [`packet`]: typed views over untrusted datagrams (parse with caps, emit into buffers);
//! - [`path`]: mapping a requested name onto the root, refusing escapes (no I/O);
//! - [`transfer`]: the sans-IO read-transfer state machine (`now` in, datagrams out);
//! - [`budget`]: the sans-IO caps on transfer slots (global, per peer) and buffer memory;
//! - [`server`]: the tokio shell (sockets, files, timers, counters, shutdown).

pub mod budget;
#[doc(hidden)]
pub mod fuzzing;
pub mod packet;
pub mod path;
pub mod server;
pub mod transfer;

pub use packet::{ErrorCode, Mode, Options, PacketError, Repr, Request, RequestKind};
pub use path::{CleanPath, PathError};
pub use server::{
    DEFAULT_MAX_TRANSFERS, FileProvider, MAX_GENERATED_LEN, Provided, Server, ServerConfig,
    ServerError, Stats, StatsSnapshot,
};
pub use transfer::{Limits, Outcome, Transfer, Transmit};
