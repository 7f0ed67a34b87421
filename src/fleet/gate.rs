//! The `min_agent_version` gate of fleet.yml: which agent may apply a branch. It is
//! read leniently before the full load ([`FleetFile::requirement`]), so that an agent too
//! old to understand the rest of a newer branch still sees it, and checked strictly by
//! the full load: the version's form, and every fleet-agent pin of the roles against it
//! (a pin below it would make apt downgrade the agent). src/selfupdate.rs performs the
//! upgrade the gate asks for. Versions here are `X.Y.Z` (three whole numbers).

use marked_yaml::Node;

use crate::error::{span_pos, Error, Invalid, Pos, Result};
use crate::fleet::source::Source;
use crate::fleet::{FleetFile, Settings};
use crate::VERSION;

/// The Debian package that carries the agent.
pub(crate) const PACKAGE: &str = "fleet-agent";

/// An agent version: major, minor, patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Version(pub(crate) u64, pub(crate) u64, pub(crate) u64);

impl Version {
    /// Parses exactly `X.Y.Z` (whole numbers, no sign, no suffix).
    pub(crate) fn parse(text: &str) -> Option<Version> {
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
    pub(crate) fn parse_prefix(text: &str) -> Option<Version> {
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
    pub(crate) fn running() -> Version {
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
pub(crate) struct Requirement {
    pub(crate) min: Version,
    /// Where fleet.yml says it.
    pub(crate) pos: Pos,
}

impl Requirement {
    pub(crate) fn is_met(&self) -> bool {
        Version::running() >= self.min
    }

    /// What is missing: the running version against the branch's minimum and where.
    pub(crate) fn shortfall(&self) -> String {
        format!(
            "agent {VERSION} is older than the branch's min_agent_version {} ({})",
            self.min, self.pos
        )
    }

    /// The one-line report of `plan` and the lead of the error of other commands.
    pub(crate) fn report(&self) -> String {
        format!("{}: pull would upgrade the agent first", self.shortfall())
    }

    /// The full load of a branch that needs a newer agent: this one problem only (the
    /// rest of the branch may be in a format this agent does not know).
    pub(crate) fn too_old(&self) -> Error {
        Error::invalid(
            self.pos.clone(),
            format!(
                "fleet-agent {VERSION} is older than min_agent_version {}: only `fleet-agent pull` on the device applies this branch, after upgrading the agent (plan, apply and --root runs do not upgrade it)",
                self.min
            ),
        )
    }
}

/// `settings.min_agent_version` of a parsed fleet.yml, read leniently: a value that is
/// not `X.Y.Z` is None here, and the full load reports it with its position.
pub(crate) fn requirement(node: &Node) -> Option<Requirement> {
    let v = node
        .as_mapping()?
        .get_mapping("settings")?
        .get_scalar("min_agent_version")?;
    Some(Requirement {
        min: Version::parse(v.as_str())?,
        pos: span_pos(FleetFile::NAME, v.span()),
    })
}

/// The full load's check of `settings.min_agent_version`: a version `X.Y.Z`.
pub(crate) fn check_min_version(settings: &Settings) -> Option<Invalid> {
    let value = settings.min_agent_version.as_ref()?;
    Version::parse(value.as_str()).is_none().then(|| {
        Invalid::at(
            FleetFile::NAME,
            value.span(),
            format!(
                "`{}` is not a version: expected X.Y.Z (three whole numbers, e.g. \"1.4.0\")",
                value.as_str()
            ),
        )
    })
}

/// Every `package` declaration of fleet-agent with a `version` in the repository's roles
/// (not `state: absent`), with the position of the version; read leniently: a role
/// that does not parse is skipped (the full load reports it when a device uses it).
fn agent_pins(source: &Source, max: u64) -> Result<Vec<(String, Pos)>> {
    let mut pins = Vec::new();
    for role in source.list("roles")?.unwrap_or_default() {
        let file = format!("roles/{role}/role.yml");
        let Some(Ok(node)) = source.yaml(&file, max)? else {
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
                pins.push((v.as_str().to_string(), span_pos(&file, v.span())));
            }
        }
    }
    Ok(pins)
}

/// The fleet-agent version that roles of the branch pin, when exactly one `package`
/// declaration of fleet-agent in the repository's roles gives a version.
pub(crate) fn pinned_version(source: &Source) -> Result<Option<String>> {
    // Read before the branch's settings are known: the default bound.
    let pins = agent_pins(source, crate::fleet::schema::MAX_YAML_BYTES)?;
    Ok(match pins.as_slice() {
        [(one, _)] => Some(one.clone()),
        _ => None,
    })
}

/// Why a pinned fleet-agent version may not be installed under a minimum: apt would
/// downgrade the agent below what the branch needs. None for a version that is new
/// enough, or that is not a plain version (a glob or a template: checked once
/// resolved, by the upgrade).
pub(crate) fn pin_below(pin: &str, min: Version) -> Option<String> {
    Version::parse_prefix(pin)
        .filter(|v| *v < min)
        .map(|_| format!("{PACKAGE} {pin} is older than settings.min_agent_version {min}"))
}

/// The full load's check of the roles' fleet-agent pins against
/// `settings.min_agent_version`: a pin below it would make the packages phase downgrade
/// the agent (apt runs with --allow-downgrades), as a problem at the pinned version.
/// Every role of the repository counts, as for [`pinned_version`].
pub(crate) fn check_pins(source: &Source, settings: &Settings) -> Result<Vec<Invalid>> {
    let Some(value) = settings.min_agent_version.as_ref() else {
        return Ok(vec![]);
    };
    let Some(min) = Version::parse(value.as_str()) else {
        return Ok(vec![]);
    };
    let at = span_pos(FleetFile::NAME, value.span());
    Ok(agent_pins(source, settings.max_yaml_bytes)?
        .into_iter()
        .filter_map(|(pin, pos)| {
            pin_below(&pin, min).map(|why| Invalid {
                pos,
                message: format!("{why} ({at})"),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::Version;

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
