//! Apply: execute exactly the operations of a plan through the `Host` seam, in order,
//! stopping at the first failure (the next run plans again from what is there).

use log::info;

use crate::error::Result;
use crate::host::Host;
use crate::plan::{Op, Plan};

/// Executes the plan; returns how many changes were made before any failure.
pub fn apply(host: &Host, plan: &Plan, commit: &str) -> (usize, Result<()>) {
    let mut done = 0;
    for change in &plan.changes {
        for op in &change.ops {
            let result = match op {
                Op::CreateDir {
                    path,
                    mode,
                    uid,
                    gid,
                } => host.create_dir(path, *mode, *uid, *gid),
                Op::WriteFile {
                    path,
                    content,
                    mode,
                    uid,
                    gid,
                } => host.write_file(path, content, *mode, *uid, *gid),
                Op::SetMetadata {
                    path,
                    mode,
                    uid,
                    gid,
                } => host.set_metadata(path, *mode, *uid, *gid),
                Op::Symlink { path, target } => host.symlink(path, target),
                Op::Remove { path } => host.remove(path),
            };
            if let Err(e) = result {
                return (done, Err(e));
            }
        }
        done += 1;
        let path = change.path.display().to_string();
        info!(
            commit = commit, role = change.role.as_str(), resource = path.as_str();
            "{} {} {}", change.action.past_tense(), change.kind, path
        );
    }
    (done, Ok(()))
}
