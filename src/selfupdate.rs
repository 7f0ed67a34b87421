//! Self-update: the agent upgrades itself through apt, like any other package.
//!
//! Two paths (docs/self-update.md):
//! - the normal one: a role declares `package: {name: fleet-agent, version: ...}`, the
//!   run's apt transaction upgrades it, the run finishes with the binary it started
//!   with (dpkg renames the new file over the old one; the running process keeps the
//!   old inode) and the next timer run uses the new one. Nothing here is involved but
//!   [`note_installed`], which says so in the journal.
//! - the gate: fleet.yml's `settings.min_agent_version` (src/fleet/gate.rs). It is read
//!   leniently, before the full load, so that an agent too old to understand the rest
//!   of a newer branch still sees it. Such an agent's `pull` on the device performs only its
//!   own upgrade ([`upgrade_and_reexec`]): `apt-get update`, `apt-get install
//!   fleet-agent[=VERSION]`, a check that `/usr/bin/fleet-agent --version` is now new
//!   enough, then `exec` of that binary with the same arguments and
//!   `FLEET_AGENT_REEXEC=1`, so that it cannot loop. Everything else (plan, apply,
//!   `--root` runs, an agent that was already re-executed) only reports.
//!
//! Versions compared here are `X.Y.Z` (three whole numbers); the agent's own version is
//! `crate::VERSION`, fixed at build time.

use std::path::Path;

use log::{info, warn};

use crate::error::{Error, Result};
use crate::fleet::gate::{pin_below, Requirement, Version, PACKAGE};
use crate::host::{apt, Host};
use crate::VERSION;

/// Where the package installs the agent: the binary that is checked and re-executed.
pub(crate) const AGENT_BIN: &str = "/usr/bin/fleet-agent";
/// Set in the environment of the re-executed agent: it never upgrades again.
pub(crate) const REEXEC_ENV: &str = "FLEET_AGENT_REEXEC";

/// Performs the agent's own upgrade, then replaces this process with the new agent.
/// Returns only on failure, with "self-update to >= X failed (fleet-agent Y is the
/// installed agent; ...)", Y being what is installed now, read after the failure;
/// nothing else was changed.
pub(crate) fn upgrade_and_reexec(host: &Host, req: &Requirement, pin: Option<&str>) -> Error {
    let failed = |now: String, why: String| {
        Error::Other(format!(
            "self-update to >= {} failed (fleet-agent {now} is the installed agent; nothing else was applied): {why}",
            req.min
        ))
    };
    if std::env::var_os(REEXEC_ENV).is_some() {
        return failed(
            agent_now(host),
            format!(
                "this agent ({VERSION}) was already started by a self-update ({REEXEC_ENV} is set) and is still too old"
            ),
        );
    }
    info!(
        "{}; upgrading {PACKAGE} first{}",
        req.shortfall(),
        pin.map(|v| format!(" to the pinned version {v}"))
            .unwrap_or_default()
    );
    let installed = match upgrade(host, pin, req.min) {
        Ok(v) => v,
        Err(e) => return failed(agent_now(host), e.to_string()),
    };
    if installed < req.min {
        return failed(
            installed.to_string(),
            format!(
                "{AGENT_BIN} is {installed} after the upgrade (apt had no newer {PACKAGE}{})",
                pin.map(|v| format!(" than the pinned {v}"))
                    .unwrap_or_default()
            ),
        );
    }
    info!("upgraded {PACKAGE} from {VERSION} to {installed}; running the new agent");
    use std::os::unix::process::CommandExt;
    // Every descriptor of this process is close-on-exec (Rust's default), the run lock
    // included: the new agent takes it again.
    let err = std::process::Command::new(AGENT_BIN)
        .args(std::env::args_os().skip(1))
        .env(REEXEC_ENV, "1")
        .exec();
    failed(
        agent_now(host),
        format!("the upgrade succeeded, but {AGENT_BIN} cannot be run: {err}"),
    )
}

/// The agent installed now, for a failure message: what `/usr/bin/fleet-agent
/// --version` says, else dpkg's version of the package, else that it is not known.
fn agent_now(host: &Host) -> String {
    if let Ok(v) = installed_agent_version(host) {
        return v.to_string();
    }
    let dpkg = apt::dpkg_status(host).ok().and_then(|status| {
        status
            .get(PACKAGE)
            .filter(|p| p.is_installed())
            .map(|p| p.version.clone())
    });
    dpkg.unwrap_or_else(|| "of an unknown version".to_string())
}

/// apt-get update, then one apt transaction installing fleet-agent (pinned or the
/// candidate); returns the version the installed binary reports. A pin below `min` is
/// refused before apt runs: apt would downgrade the agent (the full load reports such
/// a pin too; this read of the pin is the lenient one, before it).
fn upgrade(host: &Host, pin: Option<&str>, min: Version) -> Result<Version> {
    let refuse = |why: String| {
        Error::Other(format!(
            "{why}: not installing it, apt would downgrade the agent"
        ))
    };
    if let Some(why) = pin.and_then(|v| pin_below(v, min)) {
        return Err(refuse(why));
    }
    apt::update(host)?;
    let version = match pin {
        Some(v) if apt::is_glob(v) => {
            let resolved = apt::resolve_glob(host, PACKAGE, v)?.ok_or_else(|| {
                Error::Other(format!(
                    "no version of {PACKAGE} matching `{v}` is in the package lists"
                ))
            })?;
            if let Some(why) = pin_below(&resolved, min) {
                return Err(refuse(format!("{why} (the pin `{v}`)")));
            }
            Some(resolved)
        }
        Some(v) => Some(v.to_string()),
        None => None,
    };
    apt::transaction(host, &[(PACKAGE.to_string(), version)], &[], false)?;
    installed_agent_version(host)
}

/// What `/usr/bin/fleet-agent --version` prints ("fleet-agent X.Y.Z").
pub(crate) fn installed_agent_version(host: &Host) -> Result<Version> {
    let out = host.run_output(&[AGENT_BIN, "--version"], true)?;
    out.split_whitespace()
        .nth(1)
        .and_then(Version::parse_prefix)
        .ok_or_else(|| {
            Error::Other(format!(
                "`{AGENT_BIN} --version` printed `{}`, expected `fleet-agent X.Y.Z`",
                out.trim()
            ))
        })
}

/// After an apply on the device: when dpkg now has another fleet-agent than the one
/// running, say that this run finishes with the old binary and the next uses the new.
pub(crate) fn note_installed(host: &Host) {
    if !host.is_live() {
        return;
    }
    let Ok(status) = apt::dpkg_status(host) else {
        return;
    };
    let Some(p) = status.get(PACKAGE).filter(|p| p.is_installed()) else {
        return;
    };
    match Version::parse_prefix(&p.version) {
        Some(v) if v != Version::running() => info!(
            "{PACKAGE} {} is installed; this run finishes with {VERSION}, the next run uses the new agent",
            p.version
        ),
        Some(_) => {}
        None => warn!("{PACKAGE} {} has a version this agent cannot read", p.version),
    }
}

/// Whether this process is the agent of the machine it runs on (not a `--root` run):
/// only then may it upgrade itself.
pub(crate) fn may_upgrade(host: &Host) -> bool {
    host.is_live() && Path::new(AGENT_BIN).is_file()
}

#[cfg(test)]
mod tests {
    use super::{upgrade, upgrade_and_reexec, Requirement, Version};
    use crate::error::Pos;
    use crate::host::Host;
    use crate::VERSION;

    /// A scratch root whose dpkg has fleet-agent `version` installed (and no apt).
    fn root_with_agent(version: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("var/lib/dpkg/status");
        std::fs::create_dir_all(status.parent().unwrap()).unwrap();
        std::fs::write(
            status,
            format!("Package: fleet-agent\nStatus: install ok installed\nVersion: {version}\n\n"),
        )
        .unwrap();
        dir
    }

    #[test]
    fn a_pin_below_the_minimum_is_refused_before_apt_runs() {
        let dir = root_with_agent("0.0.7-1");
        let host = Host::new(dir.path());
        // No apt in the scratch root: reaching apt would fail with another message.
        let err = upgrade(&host, Some("0.0.9-1"), Version(0, 2, 0))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "fleet-agent 0.0.9-1 is older than settings.min_agent_version 0.2.0: not installing it, apt would downgrade the agent"
        );
        // A pin that meets the minimum goes on to apt (which is missing here).
        let err = upgrade(&host, Some("0.2.0-1"), Version(0, 2, 0))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("older than"), "{err}");
    }

    #[test]
    fn a_failed_self_update_names_the_agent_installed_now() {
        let dir = root_with_agent("0.0.7-1");
        let host = Host::new(dir.path());
        let req = Requirement {
            min: Version(0, 2, 0),
            pos: Pos {
                file: "fleet.yml".into(),
                line: 3,
                column: 22,
            },
        };
        let err = upgrade_and_reexec(&host, &req, Some("0.0.9-1")).to_string();
        assert!(
            err.starts_with(
                "self-update to >= 0.2.0 failed (fleet-agent 0.0.7-1 is the installed agent; nothing else was applied): fleet-agent 0.0.9-1 is older than"
            ),
            "{err}"
        );
        assert!(!err.contains(VERSION), "{err}");
    }
}
