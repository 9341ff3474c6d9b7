//! Conformance tests: the real server on loopback, spoken to only over UDP by standard clients
//! (atftp, curl, tftp-hpa) and by a raw socket where exact error codes matter.

mod harness;
mod limits;
mod provider;
mod real_clients;
mod refusals;
mod seeds;
