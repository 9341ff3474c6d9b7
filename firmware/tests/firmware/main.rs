//! Integration tests of the public API, compiled into one binary.

mod attacks;
mod blobstore;
mod common;
mod rotation;
mod stream;
mod vectors;
