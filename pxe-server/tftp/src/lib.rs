//! tugboot's TFTP server: read-only, RFC 1350 with options (RFC 2347), `blksize` (RFC 2348),
//! `tsize` and `timeout` (RFC 2349) and `windowsize` (RFC 7440), block-number wraparound, and
//! per-client generated files.
//!
//! Layers, bottom up:
//! - [`packet`]: typed views over untrusted datagrams (parse with caps, emit into buffers);
//! - [`path`]: mapping a requested name onto the root, refusing escapes (no I/O);
//! - [`transfer`]: the sans-IO read-transfer state machine (`now` in, datagrams out);
//! - [`server`]: the tokio shell (sockets, files, timers, counters, shutdown).

#[doc(hidden)]
pub mod fuzzing;
pub mod packet;
pub mod path;
pub mod server;
pub mod transfer;

pub use packet::{ErrorCode, Mode, Options, PacketError, Repr, Request, RequestKind};
pub use path::{CleanPath, PathError};
pub use server::{
    FileProvider, Generated, Server, ServerConfig, ServerError, Stats, StatsSnapshot,
};
pub use transfer::{Limits, Outcome, Transfer, Transmit};
