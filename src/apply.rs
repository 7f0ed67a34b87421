//! Apply: execute exactly the operations of a plan through the `Host` seam, in the
//! plan's order, stopping at the first failure (the next run plans again from what is
//! there). Owner names are resolved here, after the users phase created them.

use log::info;

use crate::error::{Error, Result};
use crate::host::Host;
use crate::plan::{Op, Plan};
use crate::resource::Principal;

/// Seconds apt waits for a dpkg lock held by someone else before giving up.
pub const DPKG_LOCK_TIMEOUT_SECS: u32 = 120;

/// Executes the plan; returns how many changes were made before any failure.
pub fn apply(host: &Host, plan: &Plan, commit: &str) -> (usize, Result<()>) {
    let mut done = 0;
    for change in &plan.changes {
        for op in &change.ops {
            if let Err(e) = execute(host, op) {
                return (done, Err(e));
            }
        }
        done += 1;
        info!(
            commit = commit, role = change.role.as_str(), resource = change.subject.as_str();
            "{} {} {}", change.action.past_tense(), change.kind, change.subject
        );
    }
    (done, Ok(()))
}

fn id(host: &Host, p: &Principal, group: bool) -> Result<u32> {
    match p {
        Principal::Id(id) => Ok(*id),
        Principal::Name(n) => {
            let found = if group { host.gid(n)? } else { host.uid(n)? };
            found.ok_or_else(|| {
                Error::Other(format!(
                    "the {} `{n}` does not exist",
                    if group { "group" } else { "user" }
                ))
            })
        }
    }
}

fn execute(host: &Host, op: &Op) -> Result<()> {
    match op {
        Op::CreateDir {
            path,
            mode,
            owner,
            group,
        } => host.create_dir(path, *mode, id(host, owner, false)?, id(host, group, true)?),
        Op::WriteFile {
            path,
            content,
            mode,
            owner,
            group,
        } => host.write_file(
            path,
            content,
            *mode,
            id(host, owner, false)?,
            id(host, group, true)?,
        ),
        Op::SetMetadata {
            path,
            mode,
            owner,
            group,
        } => host.set_metadata(path, *mode, id(host, owner, false)?, id(host, group, true)?),
        Op::Symlink { path, target } => host.symlink(path, target),
        Op::Remove { path } => host.remove(path),
        Op::Command { argv, in_root } => host
            .run_output(
                &argv.iter().map(String::as_str).collect::<Vec<_>>(),
                *in_root,
            )
            .map(|_| ()),
        Op::AptUpdate => apt_update(host),
        Op::Apt {
            install,
            remove,
            recommends,
        } => apt_transaction(host, install, remove, *recommends),
    }
}

/// Refreshes apt's package lists, waiting a bounded time for a dpkg lock.
pub(crate) fn apt_update(host: &Host) -> Result<()> {
    let timeout = format!("DPkg::Lock::Timeout={DPKG_LOCK_TIMEOUT_SECS}");
    host.run_output(&["apt-get", "update", "-q", "-o", &timeout], true)
        .map(|_| ())
}

/// One apt transaction: recover an interrupted dpkg first, wait a bounded time for a
/// dpkg lock held by someone else, keep locally edited conffiles (a role that owns a
/// conffile writes it after the packages phase anyway).
pub(crate) fn apt_transaction(
    host: &Host,
    install: &[(String, Option<String>)],
    remove: &[String],
    recommends: bool,
) -> Result<()> {
    let audit = host.run_output(&["dpkg", "--audit"], true)?;
    if !audit.trim().is_empty() {
        log::warn!(
            "dpkg was interrupted; running dpkg --configure -a first:\n{}",
            audit.trim_end()
        );
        host.run_output(
            &[
                "dpkg",
                "--force-confdef",
                "--force-confold",
                "--configure",
                "-a",
            ],
            true,
        )?;
    }
    let mut specs = Vec::new();
    for (name, version) in install {
        match version {
            Some(v) if v.contains(['*', '?', '[']) => {
                match crate::plan::resolve_glob(host, name, v)? {
                    Some(exact) => specs.push(format!("{name}={exact}")),
                    None => {
                        return Err(Error::Other(format!(
                            "no version of {name} matching `{v}` is in the package lists"
                        )))
                    }
                }
            }
            Some(v) => specs.push(format!("{name}={v}")),
            None => specs.push(name.clone()),
        }
    }
    specs.extend(remove.iter().map(|n| format!("{n}-")));
    let timeout = format!("DPkg::Lock::Timeout={DPKG_LOCK_TIMEOUT_SECS}");
    let mut argv = vec![
        "apt-get",
        "install",
        "-y",
        "-q",
        "-o",
        &timeout,
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
        "--allow-downgrades",
    ];
    if !recommends {
        argv.push("--no-install-recommends");
    }
    argv.extend(specs.iter().map(String::as_str));
    host.run_output(&argv, true).map(|_| ())
}
