//! Apply: execute exactly the operations of a plan through the `Host` seam, in the
//! plan's order, stopping at the first failure (the next run plans again from what is
//! there). Owner names are resolved here, after the users phase created them.

use log::info;

use crate::content::Content;
use crate::error::{Error, Result};
use crate::host::command::Output;
use crate::host::{apt, Host};
use crate::plan::{Op, Plan, RunCommand};
use crate::resources::command;

/// The most lines of a command's stdout and of its stderr logged (its last ones).
const LOGGED_LINES: usize = 200;

/// Executes the plan; returns how many changes were made before any failure.
pub(crate) fn apply(host: &Host, plan: &Plan, commit: &str) -> (usize, Result<()>) {
    let mut done = 0;
    for change in &plan.changes {
        for op in &change.ops {
            log::debug!("apply: {}", describe(op));
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

/// An operation in words, for `-v` (never a file's content).
fn describe(op: &Op) -> String {
    match op {
        Op::CreateDir { path, mode, .. } => format!("mkdir {} ({mode:04o})", path.display()),
        Op::WriteFile {
            path,
            content,
            mode,
            ..
        } => {
            format!(
                "write {} ({} bytes, {mode:04o})",
                path.display(),
                content.len()
            )
        }
        Op::SetMetadata { path, mode, .. } => {
            format!("chmod/chown {} ({mode:04o})", path.display())
        }
        Op::Symlink { path, target } => format!("ln -s {} {}", target.display(), path.display()),
        Op::Remove { path } => format!("remove {}", path.display()),
        Op::Command { argv, .. } => argv.join(" "),
        Op::AptUpdate => "apt-get update".into(),
        Op::Exec(run) => format!(
            "command {}: {}",
            run.name,
            command::shown(&run.argv, run.secret)
        ),
        Op::Download(f) => format!("download into {}", f.path.display()),
        Op::Apt {
            install, remove, ..
        } => format!(
            "apt-get install ({} to install, {} to remove)",
            install.len(),
            remove.len()
        ),
    }
}

fn execute(host: &Host, op: &Op) -> Result<()> {
    match op {
        Op::CreateDir {
            path,
            mode,
            owner,
            group,
        } => host.create_dir(
            path,
            *mode,
            host.resolve(owner, false)?,
            host.resolve(group, true)?,
        ),
        Op::WriteFile {
            path,
            content,
            mode,
            owner,
            group,
        } => {
            let (uid, gid) = (host.resolve(owner, false)?, host.resolve(group, true)?);
            if let Content::Bytes(bytes) = content {
                return host.write_file(path, bytes, *mode, uid, gid);
            }
            let mut stream = content.open()?;
            // A damaged object or a changed working-tree file is the error to report,
            // not the write it interrupted (nothing was written: it is atomic).
            host.write_file_from(path, &mut stream, *mode, uid, gid)
                .map_err(|e| stream.take_failure().unwrap_or(e))
        }
        Op::SetMetadata {
            path,
            mode,
            owner,
            group,
        } => host.set_metadata(
            path,
            *mode,
            host.resolve(owner, false)?,
            host.resolve(group, true)?,
        ),
        Op::Symlink { path, target } => host.symlink(path, target),
        Op::Remove { path } => host.remove(path),
        Op::Command { argv, in_root } => host
            .run_output(
                &argv.iter().map(String::as_str).collect::<Vec<_>>(),
                *in_root,
            )
            .map(|_| ()),
        Op::AptUpdate => apt::update(host),
        Op::Exec(run) => run_command(host, run),
        Op::Download(f) => host.download(
            f,
            host.resolve(&f.owner, false)?,
            host.resolve(&f.group, true)?,
        ),
        Op::Apt {
            install,
            remove,
            recommends,
        } => apt::transaction(host, install, remove, *recommends),
    }
}

/// Runs a `command` whose guards still let it run; its output goes to the log (the
/// journal under systemd), and a failure carries its stderr.
fn run_command(host: &Host, run: &RunCommand) -> Result<()> {
    if let Err(reason) = command::guards(host, run)? {
        info!("command {}: not run: {reason} now", run.name);
        return Ok(());
    }
    let exec = command::exec(host, run, run.timeout)?;
    let argv: Vec<&str> = run.argv.iter().map(String::as_str).collect();
    let named = |e: Error| match e {
        Error::Command { status, stderr, .. } => Error::Command {
            command: format!(
                "command {}: {}",
                run.name,
                command::shown(&run.argv, run.secret)
            ),
            status,
            stderr,
        },
        other => other,
    };
    let out = host.run_exec(&argv, &exec).map_err(named)?;
    log_output(&run.name, &out);
    if out.code != 0 {
        return Err(named(Error::Command {
            command: String::new(),
            status: format!("exit code {}", out.code),
            stderr: out.stderr,
        }));
    }
    Ok(())
}

fn log_output(name: &str, out: &Output) {
    for (stream, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let lines: Vec<&str> = text.lines().collect();
        let skipped = lines.len().saturating_sub(LOGGED_LINES);
        if skipped > 0 {
            info!("command {name}: ({skipped} earlier lines of {stream} not logged)");
        }
        for line in &lines[skipped..] {
            info!("command {name}: {line}");
        }
    }
}
