//! In-process tests across modules: the planner (`resources`) fed by the fleet loader
//! (`fleet`) on a scratch root with a scripted command runner. Kept here, above both,
//! so that neither module depends on the other for its tests.

mod commands;
mod device_reads;
mod disruptive;
mod paths;
pub(crate) mod planner;
mod undo;
