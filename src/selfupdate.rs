//! Self-update: the agent upgrades itself through apt, like any other package.
//!
//! Two paths (docs/self-update.md):
//! - the normal one: a role declares `package: {name: fleet-agent, version: ...}`, the
//!   run's apt transaction upgrades it, the run finishes with the binary it started
//!   with (dpkg renames the new file over the old one; the running process keeps the
//!   old inode) and the next timer run uses the new one. Nothing here is involved but
//!   [`note_installed`], which says so in the journal.
//! - the gate: fleet.yml's `settings.min_agent_version`. It is read leniently, before
//!   the full load ([`required`]), so that an agent too old to understand the rest of a
//!   newer branch still sees it. Such an agent's `pull` on the device performs only its
//!   own upgrade ([`upgrade_and_reexec`]): `apt-get update`, `apt-get install
//!   fleet-agent[=VERSION]`, a check that `/usr/bin/fleet-agent --version` is now new
//!   enough, then `exec` of that binary with the same arguments and
//!   `FLEET_AGENT_REEXEC=1`, so that it cannot loop. Everything else (plan, apply,
//!   `--root` runs, an agent that was already re-executed) only reports.
//!
//! Versions compared here are `X.Y.Z` (three whole numbers); the agent's own version is
//! [`VERSION`], fixed at build time.

use std::path::Path;

use log::{info, warn};

use crate::error::{Error, Invalid, Pos, Result};
use crate::host::Host;
use crate::source::Source;
use crate::yaml;

/// The agent's version: `FLEET_AGENT_VERSION` at build time (tests build versions N and
/// N+1 from one source tree), else the crate's version.
pub const VERSION: &str = match option_env!("FLEET_AGENT_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// The Debian package that carries the agent.
pub const PACKAGE: &str = "fleet-agent";
/// Where the package installs the agent: the binary that is checked and re-executed.
pub const AGENT_BIN: &str = "/usr/bin/fleet-agent";
/// Set in the environment of the re-executed agent: it never upgrades again.
pub const REEXEC_ENV: &str = "FLEET_AGENT_REEXEC";

/// An agent version: major, minor, patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u64, pub u64, pub u64);

impl Version {
    /// Parses exactly `X.Y.Z` (whole numbers, no sign, no suffix).
    pub fn parse(text: &str) -> Option<Version> {
        let mut parts = text.split('.');
        let mut next = || -> Option<u64> {
            let p = parts.next()?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse().ok()
        };
        let v = Version(next()?, next()?, next()?);
        parts.next().is_none().then_some(v)
    }

    /// The `X.Y.Z` at the start of a version that may carry more (`0.2.0-1`,
    /// `1:0.2.0~rc1`: an epoch is dropped, anything after the third number ignored).
    pub fn parse_prefix(text: &str) -> Option<Version> {
        let text = text.split_once(':').map_or(text, |(_, rest)| rest);
        let end = text
            .char_indices()
            .filter(|(_, c)| !c.is_ascii_digit() && *c != '.')
            .map(|(i, _)| i)
            .next()
            .unwrap_or(text.len());
        let mut head = &text[..end];
        // "0.2.0.1" or "0.2.0." : keep the first three numbers.
        if let Some((i, _)) = head.match_indices('.').nth(2) {
            head = &head[..i];
        }
        Version::parse(head)
    }

    /// The running agent's version.
    pub fn running() -> Version {
        Version::parse_prefix(VERSION).unwrap_or(Version(0, 0, 0))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// What a branch requires of the agent.
#[derive(Debug, Clone)]
pub struct Requirement {
    pub min: Version,
    /// Where fleet.yml says it.
    pub pos: Pos,
}

impl Requirement {
    pub fn is_met(&self) -> bool {
        Version::running() >= self.min
    }

    /// What is missing: the running version against the branch's minimum and where.
    pub fn shortfall(&self) -> String {
        format!(
            "agent {VERSION} is older than the branch's min_agent_version {} ({})",
            self.min, self.pos
        )
    }

    /// The one-line report of `plan` and the lead of the error of other commands.
    pub fn report(&self) -> String {
        format!("{}: pull would upgrade the agent first", self.shortfall())
    }
}

/// `settings.min_agent_version` of fleet.yml, read leniently: any problem (no such
/// file, YAML the agent does not understand, a value that is not `X.Y.Z`) is None here,
/// and the full load reports it with its position.
pub fn required(source: &Source) -> Result<Option<Requirement>> {
    let Some(text) = source.read("fleet.yml")? else {
        return Ok(None);
    };
    let Ok(node) = yaml::parse("fleet.yml", &text) else {
        return Ok(None);
    };
    let found = node
        .as_mapping()
        .and_then(|m| m.get_mapping("settings"))
        .and_then(|s| s.get_scalar("min_agent_version"))
        .and_then(|v| {
            Some(Requirement {
                min: Version::parse(v.as_str())?,
                pos: yaml::pos("fleet.yml", v.span()),
            })
        });
    Ok(found)
}

/// The full load's check of `settings.min_agent_version`: a version `X.Y.Z`.
pub fn check_min_version(settings: &crate::load::Settings) -> Option<Invalid> {
    let value = settings.min_agent_version.as_ref()?;
    Version::parse(value.as_str()).is_none().then(|| {
        yaml::invalid(
            "fleet.yml",
            value.span(),
            format!(
                "`{}` is not a version: expected X.Y.Z (three whole numbers, e.g. \"1.4.0\")",
                value.as_str()
            ),
        )
    })
}

/// The full load of a branch that needs a newer agent: this one problem only (the rest
/// of the branch may be in a format this agent does not know).
pub fn too_old(req: &Requirement) -> Error {
    Error::invalid(
        req.pos.clone(),
        format!(
            "fleet-agent {VERSION} is older than min_agent_version {}: only `fleet-agent pull` on the device applies this branch, after upgrading the agent (plan, apply and --root runs do not upgrade it)",
            req.min
        ),
    )
}

/// Every `package` declaration of fleet-agent with a `version` in the repository's roles
/// (not `state: absent`), with the position of the version; read leniently, like
/// [`required`]: a role that does not parse is skipped (the full load reports it when a
/// device uses it).
fn agent_pins(source: &Source) -> Result<Vec<(String, Pos)>> {
    let mut pins = Vec::new();
    for role in source.list("roles")?.unwrap_or_default() {
        let file = format!("roles/{role}/role.yml");
        let Some(text) = source.read(&file)? else {
            continue;
        };
        let Ok(node) = yaml::parse(&file, &text) else {
            continue;
        };
        let Some(resources) = node.as_mapping().and_then(|m| m.get_sequence("resources")) else {
            continue;
        };
        for r in resources.iter() {
            let Some(p) = r.as_mapping().and_then(|m| m.get_mapping("package")) else {
                continue;
            };
            let is_agent = p.get_scalar("name").map(|n| n.as_str()) == Some(PACKAGE);
            let absent = p.get_scalar("state").map(|s| s.as_str()) == Some("absent");
            if let (true, false, Some(v)) = (is_agent, absent, p.get_scalar("version")) {
                pins.push((v.as_str().to_string(), yaml::pos(&file, v.span())));
            }
        }
    }
    Ok(pins)
}

/// The fleet-agent version that roles of the branch pin, when exactly one `package`
/// declaration of fleet-agent in the repository's roles gives a version (read
/// leniently, like [`required`]; a role that does not parse is skipped).
pub fn pinned_version(source: &Source) -> Result<Option<String>> {
    let pins = agent_pins(source)?;
    Ok(match pins.as_slice() {
        [(one, _)] => Some(one.clone()),
        _ => None,
    })
}

/// Why a pinned fleet-agent version may not be installed under a minimum: apt would
/// downgrade the agent below what the branch needs. None for a version that is new
/// enough, or that is not a plain version (a glob or a template: checked once
/// resolved, by the upgrade).
fn pin_below(pin: &str, min: Version) -> Option<String> {
    Version::parse_prefix(pin)
        .filter(|v| *v < min)
        .map(|_| format!("{PACKAGE} {pin} is older than settings.min_agent_version {min}"))
}

/// The full load's check of the roles' fleet-agent pins against
/// `settings.min_agent_version`: a pin below it would make the packages phase downgrade
/// the agent (apt runs with --allow-downgrades), as a problem at the pinned version.
/// Every role of the repository counts, as for [`pinned_version`].
pub fn check_pins(source: &Source, settings: &crate::load::Settings) -> Result<Vec<Invalid>> {
    let Some(value) = settings.min_agent_version.as_ref() else {
        return Ok(vec![]);
    };
    let Some(min) = Version::parse(value.as_str()) else {
        return Ok(vec![]);
    };
    let at = yaml::pos("fleet.yml", value.span());
    Ok(agent_pins(source)?
        .into_iter()
        .filter_map(|(pin, pos)| {
            pin_below(&pin, min).map(|why| Invalid {
                pos,
                message: format!("{why} ({at})"),
            })
        })
        .collect())
}

/// Performs the agent's own upgrade, then replaces this process with the new agent.
/// Returns only on failure, with "self-update to >= X failed (fleet-agent Y is the
/// installed agent; ...)", Y being what is installed now, read after the failure;
/// nothing else was changed.
pub fn upgrade_and_reexec(host: &Host, req: &Requirement, pin: Option<&str>) -> Error {
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
    let dpkg = crate::system::dpkg_status(host).ok().and_then(|status| {
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
    crate::apply::apt_update(host)?;
    let version = match pin {
        Some(v) if v.contains(['*', '?', '[']) => {
            let resolved = crate::plan::resolve_glob(host, PACKAGE, v)?.ok_or_else(|| {
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
    crate::apply::apt_transaction(host, &[(PACKAGE.to_string(), version)], &[], false)?;
    installed_agent_version(host)
}

/// What `/usr/bin/fleet-agent --version` prints ("fleet-agent X.Y.Z").
pub fn installed_agent_version(host: &Host) -> Result<Version> {
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
pub fn note_installed(host: &Host) {
    if !host.is_live() {
        return;
    }
    let Ok(status) = crate::system::dpkg_status(host) else {
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
pub fn may_upgrade(host: &Host) -> bool {
    host.is_live() && Path::new(AGENT_BIN).is_file()
}

#[cfg(test)]
mod tests {
    use super::{upgrade, upgrade_and_reexec, Requirement, Version};
    use crate::error::Pos;
    use crate::host::Host;

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
        assert!(!err.contains(super::VERSION), "{err}");
    }

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(Version::parse("1.2.3"), Some(Version(1, 2, 3)));
        for bad in [
            "1.2", "1.2.3.4", "1.2.x", "", "1..3", "-1.2.3", "1.2.3-1", " 1.2.3",
        ] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
        assert!(Version(0, 10, 0) > Version(0, 9, 9));
        assert_eq!(Version::parse_prefix("0.2.0-1"), Some(Version(0, 2, 0)));
        assert_eq!(Version::parse_prefix("1:0.2.0~rc1"), Some(Version(0, 2, 0)));
        assert_eq!(Version::parse_prefix("0.2.0.1"), Some(Version(0, 2, 0)));
        assert_eq!(Version::parse_prefix("0.2"), None);
    }
}
