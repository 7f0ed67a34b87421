//! fleet-agent: converge a device to what its branch of the fleet git repository
//! declares. The stages follow the data: config → sync → load → plan → apply → state.

pub mod apply;
pub mod cli;
pub mod config;
pub mod error;
pub mod host;
pub mod load;
pub mod lock;
pub mod logging;
pub mod oscli;
pub mod osdecl;
pub mod osupdate;
pub mod plan;
pub mod resource;
pub mod selfupdate;
pub mod source;
pub mod state;
pub mod sync;
pub mod system;
pub mod transport;
pub mod yaml;

pub use cli::main;
