//! fleet-agent: converge a device to what its branch of the fleet git repository
//! declares. Data flows one way: config → sync → fleet (load and validate) → resources
//! (desired state, plan) → apply → state; `run` orchestrates a run and prints nothing,
//! `cli` parses arguments and renders. docs/architecture.md has the map.

mod apply;
mod cli;
mod config;
mod content;
mod device;
mod digest;
mod error;
mod fleet;
mod fleetwide;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz;
mod host;
mod lock;
mod logging;
mod osupdate;
mod plan;
mod release;
mod report;
mod resources;
mod run;
mod selfupdate;
mod state;
mod sync;
#[cfg(test)]
mod tests;
mod time;
mod tls;
mod trust;

pub use cli::main;

pub(crate) use cli::args::VERSION;
