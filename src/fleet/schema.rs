//! The typed schema of the fleet repository's YAML files (docs/fleet-format.md). Keys
//! that hold free-form values (vars, role references, params, `os:`) are read by hand
//! elsewhere, with positions; here they are only allowed.

use marked_yaml::{Node, Spanned};
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::error::Invalid;
use crate::resources::Spec;

/// The kinds of YAML file in a fleet repository, by the keys their top level takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileKind {
    Fleet,
    Inventory,
    GroupVars,
    HostVars,
    Role,
}

impl FileKind {
    fn keys(self) -> &'static [&'static str] {
        match self {
            FileKind::Fleet => &[
                "format",
                "description",
                "settings",
                "vars",
                "roles",
                "os",
                "rollout",
                "maintenance",
                "health",
            ],
            FileKind::Inventory => &["groups"],
            FileKind::GroupVars => &[
                "vars",
                "roles",
                "os_image",
                "rollout",
                "maintenance",
                "health",
            ],
            FileKind::HostVars => &["vars", "roles", "branch", "device_type", "os_image"],
            FileKind::Role => &["description", "params", "include", "resources", "health"],
        }
    }
}

/// Where a top-level key belongs, for the message when it is written elsewhere.
fn home(key: &str) -> Option<&'static str> {
    Some(match key {
        "format" | "settings" | "os" => "fleet.yml",
        "groups" | "devices" | "device_types" => "inventory.yml",
        "branch" | "device_type" => "a host_vars file",
        "vars" | "roles" => "fleet.yml, group_vars or host_vars",
        "os_image" => {
            "group_vars or host_vars (fleet.yml declares images per device type under `os.images`)"
        }
        "params" | "include" | "resources" => "a role's role.yml",
        "rollout" | "maintenance" => "fleet.yml or group_vars",
        "health" => "fleet.yml, group_vars or a role's role.yml",
        _ => return None,
    })
}

/// The top-level keys of a file that belong in another file, or that a mis-indented
/// `vars:` let through, each at its own position with where it belongs. Other unknown
/// keys are left to the typed schema, which lists what the file takes.
pub(super) fn misplaced_keys(file: &str, node: &Node, kind: FileKind) -> Vec<Invalid> {
    let Some(map) = node.as_mapping() else {
        return vec![];
    };
    let mut empty_vars = false;
    let mut problems = Vec::new();
    for (k, v) in map.iter() {
        let key = k.as_str();
        if key == "vars" {
            empty_vars = matches!(v, Node::Scalar(s) if s.as_str().is_empty());
        }
        if kind.keys().contains(&key) {
            continue;
        }
        let message = match home(key) {
            Some(home) => format!("`{key}` belongs in {home}"),
            None if empty_vars => format!(
                "`{key}` is not a key of this file: the `vars:` above it is empty; indent `{key}` under `vars:` to make it a variable"
            ),
            None => continue,
        };
        problems.push(Invalid::at(file, k.span(), message));
    }
    problems
}

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
    // Read by `brakes::read`.
    #[allow(dead_code)]
    rollout: Option<IgnoredAny>,
    #[allow(dead_code)]
    maintenance: Option<IgnoredAny>,
    #[allow(dead_code)]
    health: Option<IgnoredAny>,
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
    /// Bounds on the work a branch can ask of a device (docs/security.md): the size of
    /// each YAML file (fleet.yml itself is always held to the default), ...
    pub(crate) max_yaml_bytes: u64,
    /// ... of one file's content (inline, from files/, or rendered), and of any
    /// rendered string of role.yml, ...
    pub(crate) max_file_bytes: u64,
    /// ... of all of a device's file contents together, ...
    pub(crate) max_total_file_bytes: u64,
    /// ... and the steps (minijinja's fuel) of one template rendering.
    pub(crate) max_template_steps: u64,
}

/// The defaults of the bounds: what a 512 MiB Raspberry Pi can afford while it also
/// runs its application (docs/security.md measures them).
pub(crate) const MAX_YAML_BYTES: u64 = 8 << 20;
pub(crate) const MAX_FILE_BYTES: u64 = 16 << 20;
pub(crate) const MAX_TOTAL_FILE_BYTES: u64 = 64 << 20;
pub(crate) const MAX_TEMPLATE_STEPS: u64 = 1_000_000;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            prune: true,
            apt_lists_max_age_minutes: 60,
            min_agent_version: None,
            max_yaml_bytes: MAX_YAML_BYTES,
            max_file_bytes: MAX_FILE_BYTES,
            max_total_file_bytes: MAX_TOTAL_FILE_BYTES,
            max_template_steps: MAX_TEMPLATE_STEPS,
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
pub(super) struct GroupVarsDoc {
    #[allow(dead_code)]
    vars: Option<IgnoredAny>,
    #[allow(dead_code)]
    roles: Option<IgnoredAny>,
    // Read by `os::read_image_override` (positions for every check).
    #[allow(dead_code)]
    os_image: Option<IgnoredAny>,
    // Read by `brakes::read`.
    #[allow(dead_code)]
    rollout: Option<IgnoredAny>,
    #[allow(dead_code)]
    maintenance: Option<IgnoredAny>,
    #[allow(dead_code)]
    health: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HostVarsDoc {
    #[allow(dead_code)]
    vars: Option<IgnoredAny>,
    #[allow(dead_code)]
    roles: Option<IgnoredAny>,
    /// The branch this device follows instead of the configured one.
    pub(super) branch: Option<Spanned<String>>,
    /// The device's hardware type, when its agent.toml and Mender don't say.
    pub(super) device_type: Option<Spanned<String>>,
    #[allow(dead_code)]
    os_image: Option<IgnoredAny>,
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
    // Read by `brakes::health`.
    #[allow(dead_code)]
    health: Option<IgnoredAny>,
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
