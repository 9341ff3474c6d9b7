//! Integration tests of tugboot-http, one binary (hickory-dns style): the router in-process, and
//! the real server on loopback driven by the real `curl`.

mod common;
mod curl;
mod router;
