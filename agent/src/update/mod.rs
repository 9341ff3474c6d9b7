//! Verified A/B updates: the sans-IO state machine ([`machine`]), its persisted state
//! ([`state`]), the bootloader adapters ([`boot`]), the shell that runs it on a device
//! ([`agent`]), installer mode ([`install`]) and simulated bootloaders for tests and simulations
//! ([`sim`]).
//!
//! The guarantees (never boot unverified content, always keep a bootable slot, raise the floor
//! only on commit, report success only after the post-reboot commit) and why every power-loss
//! point is safe are argued in `docs/agent.md`.

pub mod agent;
pub mod boot;
pub mod install;
pub mod kernels;
pub mod machine;
pub mod sim;
pub mod state;

pub use agent::{Agent, AgentConfig, AgentError, Next};
pub use boot::{AbBootloader, BootError, BootStatus, Booted, Evidence, Grub, PlainFileEnv, Uboot};
pub use install::{InstallConfig, InstallError, install_from_files};
pub use kernels::{KernelError, SlotKernels};
pub use machine::{Action, Event, Progress, UpdateError, UpdateMachine, image_of};
pub use state::{
    AgentState, Committed, Image, Outcome, Phase, Rejection, StateError, UpdateRecord,
};
