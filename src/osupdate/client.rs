//! The Mender client behind a trait: `mender-update` (4.x) or `mender` (3.x), run in
//! the agent's own environment (not chrooted under --root). Exit codes as in
//! mendersoftware/mender (see osupdate/mod.rs): 4 reboot required (install with
//! `--reboot-exit-code`), 2 no update in progress (commit, rollback).

use crate::error::{Error, Result};
use crate::host::Host;
use crate::osupdate::OsUpdateConfig;

/// What the OS update needs of the Mender client.
pub(crate) trait Mender {
    /// `show-artifact`: the committed artifact's name (None when it prints nothing).
    fn show_artifact(&self) -> Result<Option<String>>;
    /// `install --reboot-exit-code FILE`: true when a reboot is needed.
    fn install(&self, file: &str) -> Result<bool>;
    /// `commit`: false for 2, "no update in progress".
    fn commit(&self) -> Result<bool>;
    /// `rollback`: false for 2, "no update in progress".
    fn rollback(&self) -> Result<bool>;
}

/// The client's command line, run through the host's command runner.
pub(crate) struct Cli<'h> {
    host: &'h Host,
    program: String,
}

impl<'h> Cli<'h> {
    pub(crate) fn resolve(host: &'h Host, config: &OsUpdateConfig) -> Cli<'h> {
        let program = match &config.client {
            Some(c) => c.clone(),
            None if on_path("mender-update") => "mender-update".into(),
            None => "mender".into(),
        };
        // No --datastore: 3.x only knows --data, and the client's own configuration
        // names its datastore (under --root too; tests point the double at theirs).
        Cli { host, program }
    }

    fn run(&self, args: &[&str]) -> Result<(i32, String, String)> {
        let mut argv = vec![self.program.as_str()];
        argv.extend_from_slice(args);
        self.host.run_status(&argv, false)
    }

    fn failed(&self, args: &[&str], code: i32, stderr: String) -> Error {
        Error::Command {
            command: format!("{} {}", self.program, args.join(" ")),
            status: format!("exit code {code}"),
            stderr,
        }
    }

    /// `commit` or `rollback`: true when done, false for 2 "no update in progress".
    fn finish(&self, verb: &str) -> Result<bool> {
        match self.run(&[verb])? {
            (0, ..) => Ok(true),
            (2, ..) => Ok(false),
            (code, _, err) => Err(self.failed(&[verb], code, err)),
        }
    }
}

impl Mender for Cli<'_> {
    fn show_artifact(&self) -> Result<Option<String>> {
        let (code, out, err) = self.run(&["show-artifact"])?;
        if code != 0 {
            return Err(self.failed(&["show-artifact"], code, err));
        }
        let name = out.lines().next().unwrap_or("").trim().to_string();
        Ok((!name.is_empty()).then_some(name))
    }

    fn install(&self, file: &str) -> Result<bool> {
        let args = ["install", "--reboot-exit-code", file];
        match self.run(&args)? {
            (4, ..) => Ok(true),
            (0, ..) => Ok(false),
            (code, _, err) => Err(self.failed(&args, code, err)),
        }
    }

    fn commit(&self) -> Result<bool> {
        self.finish("commit")
    }

    fn rollback(&self) -> Result<bool> {
        self.finish("rollback")
    }
}

/// Whether an executable of this name is on PATH.
pub(crate) fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| {
            std::fs::metadata(d.join(program)).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    })
}
