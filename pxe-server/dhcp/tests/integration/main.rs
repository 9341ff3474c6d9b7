//! Integration tests of the DHCP core: real firmware captures and full protocol flows.

mod fixtures;
mod flows;
mod observe;
mod support;
