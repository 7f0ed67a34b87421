//! Running the managed system's commands (apt-get, dpkg, systemctl, the account tools,
//! the Mender client, health checks, the fleet's own `command` resources): the one
//! place a process is started, behind a small trait so that a test can script what each
//! command answers. A command may carry [`Exec`] settings (a clean environment, a
//! working directory, a user, a timeout); its output is kept within a bound.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// PATH of the fleet's own commands (a `command` resource may declare another).
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The most of each of stdout and stderr kept of a command (the end of it).
pub(crate) const OUTPUT_LIMIT: usize = 256 * 1024;

/// What a command printed and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Output {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// A command line and where it runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cmd<'a> {
    pub(crate) argv: &'a [&'a str],
    /// Chrooted into this directory (the managed root, when it is not `/`).
    pub(crate) chroot: Option<&'a std::path::Path>,
    /// How a fleet's own command runs (None: the agent's tools, as they always did).
    pub(crate) exec: Option<&'a Exec>,
}

/// How a `command` resource (and its checks) runs: exactly this environment, in this
/// directory, as this user (through the device's `setpriv`, so that its supplementary
/// groups are the user's), killed with its whole process group after the timeout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Exec {
    pub(crate) env: Vec<(String, String)>,
    /// A device path.
    pub(crate) cwd: Option<PathBuf>,
    /// A user name or id of the device, and its primary group.
    pub(crate) user: Option<(String, String)>,
    pub(crate) timeout: Option<Duration>,
}

impl Cmd<'_> {
    /// The command as shown in messages (without the chroot).
    pub(crate) fn line(&self) -> String {
        self.argv.join(" ")
    }
}

/// Runs commands. `System` starts real processes; tests use `Scripted`.
pub(crate) trait Runner: Send + Sync {
    fn run(&self, cmd: Cmd) -> Result<Output>;
}

/// Real processes: stdin from /dev/null, C locale, no debconf questions.
pub(crate) struct System;

impl Runner for System {
    fn run(&self, cmd: Cmd) -> Result<Output> {
        let mut argv: Vec<String> = Vec::new();
        if let Some(root) = cmd.chroot {
            argv.push("chroot".into());
            argv.push(root.display().to_string());
        }
        let exec = cmd.exec.cloned().unwrap_or_default();
        if let (Some(dir), Some(_)) = (&exec.cwd, cmd.chroot) {
            // chroot(8) changes to the new root's /: env changes to the directory after.
            argv.extend(["env".into(), "-C".into(), dir.display().to_string()]);
        }
        if let Some((user, group)) = &exec.user {
            argv.extend(setpriv(user, group));
        }
        argv.extend(cmd.argv.iter().map(|a| a.to_string()));
        let mut c = std::process::Command::new(&argv[0]);
        c.args(&argv[1..]).stdin(std::process::Stdio::null());
        match cmd.exec {
            None => {
                c.env("DEBIAN_FRONTEND", "noninteractive")
                    .env("LC_ALL", "C");
            }
            Some(_) => {
                c.env_clear().envs(exec.env.iter().map(|(k, v)| (k, v)));
                if let (Some(dir), None) = (&exec.cwd, cmd.chroot) {
                    c.current_dir(dir);
                }
            }
        }
        match exec.timeout {
            // A program that is not there exits 127, as through chroot or a shell.
            _ if cmd.exec.is_some() && !program_exists(&argv[0], &exec.env) => Ok(Output {
                code: 127,
                stdout: String::new(),
                stderr: format!("{}: not found\n", argv[0]),
            }),
            None => {
                let out = c.output().map_err(|e| cannot_run(&cmd, e))?;
                Ok(Output {
                    code: out.status.code().unwrap_or(-1),
                    stdout: bounded(&out.stdout),
                    stderr: bounded(&out.stderr),
                })
            }
            Some(limit) => run_with_timeout(c, &cmd, limit),
        }
    }
}

/// `setpriv` to run as a user of the device: its uid, the group, its supplementary
/// groups (`--init-groups`, looked up in the device's own /etc/group).
fn setpriv(user: &str, group: &str) -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--reuid={user}"),
        format!("--regid={group}"),
        "--init-groups".into(),
        "--".into(),
    ]
}

/// Whether a program name resolves (a path that exists, or a name on PATH).
fn program_exists(program: &str, env: &[(String, String)]) -> bool {
    if program.contains('/') {
        return std::path::Path::new(program).exists();
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("/usr/bin:/bin");
    std::env::split_paths(path).any(|d| d.join(program).exists())
}

fn cannot_run(cmd: &Cmd, e: std::io::Error) -> Error {
    Error::Command {
        command: cmd.line(),
        status: format!("cannot run: {e}"),
        stderr: String::new(),
    }
}

/// The end of an output, at most [`OUTPUT_LIMIT`] bytes, as text.
fn bounded(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(OUTPUT_LIMIT);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Reads a pipe to its end in a thread, keeping only its last [`OUTPUT_LIMIT`] bytes.
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let Some(mut pipe) = pipe else { return kept };
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > 2 * OUTPUT_LIMIT {
                kept.drain(..kept.len() - OUTPUT_LIMIT);
            }
        }
        kept
    })
}

/// Runs in its own process group; after `limit`, the whole group is killed (SIGKILL).
fn run_with_timeout(mut c: std::process::Command, cmd: &Cmd, limit: Duration) -> Result<Output> {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let mut child = c
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| cannot_run(cmd, e))?;
    let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(cannot_run(cmd, e)),
        }
    };
    let Some(status) = status else {
        let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        // Not joined: a process that left the group may still hold the pipes open.
        drop((out, err));
        return Err(Error::Command {
            command: cmd.line(),
            status: format!("timed out after {} s, killed", limit.as_secs()),
            stderr: String::new(),
        });
    };
    Ok(Output {
        code: status.code().unwrap_or(-1),
        stdout: bounded(&out.join().unwrap_or_default()),
        stderr: bounded(&err.join().unwrap_or_default()),
    })
}

/// A scripted runner for in-process tests: each rule answers the commands whose line
/// starts with its prefix; a command no rule answers is an error, so that a test sees
/// every command the code under test runs. Every command line is recorded.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Scripted {
    rules: Vec<(String, Output)>,
    log: std::sync::Mutex<Vec<String>>,
}

#[cfg(test)]
impl Scripted {
    pub(crate) fn new() -> Scripted {
        Scripted::default()
    }

    /// Commands starting with `prefix` exit with `code` and print `stdout`.
    pub(crate) fn on(mut self, prefix: &str, code: i32, stdout: &str) -> Scripted {
        self.rules.push((
            prefix.to_string(),
            Output {
                code,
                stdout: stdout.to_string(),
                stderr: String::new(),
            },
        ));
        self
    }

    /// Commands starting with `prefix` exit with `code` and print `stderr` on stderr.
    pub(crate) fn fails(mut self, prefix: &str, code: i32, stderr: &str) -> Scripted {
        self.rules.push((
            prefix.to_string(),
            Output {
                code,
                stdout: String::new(),
                stderr: stderr.to_string(),
            },
        ));
        self
    }

    /// Every command line run so far.
    pub(crate) fn commands(&self) -> Vec<String> {
        self.log.lock().expect("not poisoned").clone()
    }
}

#[cfg(test)]
impl Runner for Scripted {
    fn run(&self, cmd: Cmd) -> Result<Output> {
        let line = cmd.line();
        self.log.lock().expect("not poisoned").push(line.clone());
        self.rules
            .iter()
            .find(|(prefix, _)| line.starts_with(prefix.as_str()))
            .map(|(_, out)| out.clone())
            .ok_or_else(|| Error::Command {
                command: line,
                status: "not scripted in this test".into(),
                stderr: String::new(),
            })
    }
}
