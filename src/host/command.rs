//! Running the managed system's commands (apt-get, dpkg, systemctl, the account tools,
//! the Mender client, health checks): the one place a process is started, behind a
//! small trait so that a test can script what each command answers.

use crate::error::{Error, Result};

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
        let mut c = match cmd.chroot {
            Some(root) => {
                let mut c = std::process::Command::new("chroot");
                c.arg(root).args(cmd.argv);
                c
            }
            None => {
                let mut c = std::process::Command::new(cmd.argv[0]);
                c.args(&cmd.argv[1..]);
                c
            }
        };
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null());
        let out = c.output().map_err(|e| Error::Command {
            command: cmd.line(),
            status: format!("cannot run: {e}"),
            stderr: String::new(),
        })?;
        Ok(Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
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
