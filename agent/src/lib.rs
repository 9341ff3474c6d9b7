//! tugboot-agent: the on-device agent. Verifies signed images, installs them into the inactive A/B
//! slot, arms the bootloader for one trial boot, and commits or rolls back after the reboot.
pub mod bootloader;
pub mod cli;
pub mod config;
pub mod install;
pub mod io;
pub mod net;
pub mod slot;
pub mod update;
