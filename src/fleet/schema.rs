//! The typed schema of the fleet repository's YAML files (docs/fleet-format.md). Keys
//! that hold free-form values (vars, role references, params, `os:`) are read by hand
//! elsewhere, with positions; here they are only allowed.

use marked_yaml::Spanned;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::resources::Spec;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FleetDoc {
    pub(super) format: Spanned<u32>,
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    pub(super) settings: Settings,
    // Read by hand (layers.rs): free-form values and role references.
    #[allow(dead_code)]
    vars: Option<IgnoredAny>,
    #[allow(dead_code)]
    roles: Option<IgnoredAny>,
    // Read by `os::read` (positions for every semantic check).
    #[allow(dead_code)]
    os: Option<IgnoredAny>,
}

/// Fleet-wide settings from fleet.yml.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Settings {
    /// Remove files, directories and links the agent created once no role declares them.
    pub(crate) prune: bool,
    /// Package lists older than this many minutes are refreshed (apt-get update) before
    /// a run that installs or removes packages.
    pub(crate) apt_lists_max_age_minutes: u64,
    /// The oldest agent that may apply this branch (`X.Y.Z`); an older agent's `pull`
    /// upgrades itself first (src/selfupdate.rs).
    pub(crate) min_agent_version: Option<Spanned<String>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            prune: true,
            apt_lists_max_age_minutes: 60,
            min_agent_version: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InventoryDoc {
    #[allow(dead_code)]
    groups: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupDoc {
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    pub(super) devices: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) device_types: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct VarsDoc {
    #[allow(dead_code)]
    vars: Option<IgnoredAny>,
    #[allow(dead_code)]
    roles: Option<IgnoredAny>,
    /// host_vars only: the branch this device follows instead of the configured one.
    pub(super) branch: Option<Spanned<String>>,
    /// host_vars only: the device's hardware type, when its agent.toml and Mender don't say.
    pub(super) device_type: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RoleDoc {
    #[allow(dead_code)]
    description: Option<String>,
    #[allow(dead_code)]
    params: Option<IgnoredAny>,
    #[allow(dead_code)]
    include: Option<IgnoredAny>,
    #[serde(default)]
    pub(super) resources: Vec<Spec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ParamDoc {
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    pub(super) required: bool,
    // The default is read by hand: any value.
    #[allow(dead_code)]
    default: Option<IgnoredAny>,
    // Read by hand: a list of plain values.
    #[allow(dead_code)]
    choices: Option<IgnoredAny>,
}
