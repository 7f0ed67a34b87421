//! Load and validate a fleet repository (format v1, docs/fleet-format.md) and compute
//! one device's desired state from it. Nothing here touches the machine: the input is a
//! `Source` (a commit or a directory) and device facts, the output a `DesiredState` or
//! every problem found, each with file:line:column.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{Node, Span, Spanned};
use minijinja::{Environment, UndefinedBehavior, Value};
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::error::{Error, Invalid, Pos, Result};
use crate::resource::{DesiredState, Enablement, Kind, PackageState, Principal, Resource};
use crate::source::Source;
use crate::yaml::{self, invalid};

pub const FORMAT_VERSION: u32 = 1;

/// Who the device is, as the agent configuration says.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    pub device_type: Option<String>,
}

// ---------------------------------------------------------------- file schemas

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetDoc {
    format: Spanned<u32>,
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    settings: Settings,
    // Read by hand (`vars_and_roles`): free-form values and role references.
    #[allow(dead_code)]
    vars: Option<IgnoredAny>,
    #[allow(dead_code)]
    roles: Option<IgnoredAny>,
    // Read by `osdecl::read` (positions for every semantic check).
    #[allow(dead_code)]
    os: Option<IgnoredAny>,
}

/// Fleet-wide settings from fleet.yml.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Remove files, directories and links the agent created once no role declares them.
    pub prune: bool,
    /// Package lists older than this many minutes are refreshed (apt-get update) before
    /// a run that installs or removes packages.
    pub apt_lists_max_age_minutes: u64,
    /// The oldest agent that may apply this branch (`X.Y.Z`); an older agent's `pull`
    /// upgrades itself first (src/selfupdate.rs).
    pub min_agent_version: Option<Spanned<String>>,
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
struct InventoryDoc {
    #[allow(dead_code)]
    groups: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupDoc {
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    devices: Vec<Spanned<String>>,
    #[serde(default)]
    device_types: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VarsDoc {
    #[allow(dead_code)]
    vars: Option<IgnoredAny>,
    #[allow(dead_code)]
    roles: Option<IgnoredAny>,
    /// host_vars only: the branch this device follows instead of the configured one.
    branch: Option<Spanned<String>>,
    /// host_vars only: the device's hardware type, when its agent.toml and Mender don't say.
    device_type: Option<Spanned<String>>,
}

/// Facts about a device that its host_vars file states.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub branch: Option<String>,
    pub device_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleDoc {
    #[allow(dead_code)]
    description: Option<String>,
    #[allow(dead_code)]
    params: Option<IgnoredAny>,
    #[allow(dead_code)]
    include: Option<IgnoredAny>,
    #[serde(default)]
    resources: Vec<ResourceSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamDoc {
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    required: bool,
    // The default is read by hand: any value.
    #[allow(dead_code)]
    default: Option<IgnoredAny>,
    // Read by hand: a list of plain values.
    #[allow(dead_code)]
    choices: Option<IgnoredAny>,
}

/// A resource as written in role.yml; paths, content, owners and targets are templates.
// Parsed once per role and kept only while loading: variant sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum ResourceSpec {
    File(FileSpec),
    Directory(DirectorySpec),
    Symlink(SymlinkSpec),
    Absent(AbsentSpec),
    #[serde(rename = "apt_source")]
    AptSource(AptSourceSpec),
    Package(PackageSpec),
    Service(ServiceSpec),
    User(UserSpec),
    Group(GroupSpec),
}

/// A deb822 source: /etc/apt/sources.list.d/<name>.sources signed by a key from the
/// role's files/, installed as /etc/apt/keyrings/<name>.gpg (or .asc when armored).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AptSourceSpec {
    name: Spanned<String>,
    uris: Vec<Spanned<String>>,
    suites: Vec<Spanned<String>>,
    #[serde(default)]
    components: Vec<Spanned<String>>,
    #[serde(default)]
    architectures: Vec<Spanned<String>>,
    key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PackageSpec {
    name: Spanned<String>,
    /// present (default) or absent.
    state: Option<Spanned<String>>,
    version: Option<Spanned<String>>,
    #[serde(default)]
    recommends: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSpec {
    name: Spanned<String>,
    /// true, false or masked.
    enabled: Option<Spanned<String>>,
    /// started or stopped.
    state: Option<Spanned<String>>,
    #[serde(default)]
    restart_on: Vec<Spanned<String>>,
    #[serde(default)]
    reload_on: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserSpec {
    name: Spanned<String>,
    #[serde(default = "yes")]
    system: bool,
    uid: Option<u32>,
    home: Option<Spanned<String>>,
    shell: Option<Spanned<String>>,
    #[serde(default)]
    groups: Vec<Spanned<String>>,
    comment: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupSpec {
    name: Spanned<String>,
    #[serde(default = "yes")]
    system: bool,
    gid: Option<u32>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    path: Spanned<String>,
    content: Option<Spanned<String>>,
    source: Option<Spanned<String>>,
    template: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    owner: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    #[serde(default)]
    secret: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DirectorySpec {
    path: Spanned<String>,
    mode: Option<Spanned<String>>,
    owner: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SymlinkSpec {
    path: Spanned<String>,
    target: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AbsentSpec {
    path: Spanned<String>,
}

// ---------------------------------------------------------------- loaded repository

/// A reference to a role: where it is named and the parameters given there.
#[derive(Clone)]
struct RoleRef {
    name: String,
    pos: Pos,
    params: Vec<(String, Pos, Node)>,
}

struct Layer {
    vars: Vec<(String, Node)>,
    roles: Vec<RoleRef>,
    facts: HostFacts,
}

struct Group {
    name: String,
    patterns: Vec<(String, Pos)>,
    device_types: Vec<String>,
}

struct ParamDef {
    name: String,
    required: bool,
    default: Option<Node>,
    /// `choices:` the values the parameter may take: (as written, typed as YAML reads it).
    choices: Option<Vec<(String, Value)>>,
}

struct RoleDef {
    name: String,
    /// Where the role's files are, relative to its source: "roles/<name>" or "<name>".
    dir: String,
    /// The label used in positions: "roles/<name>/role.yml" or "builtin:<name>/role.yml".
    file: String,
    builtin: bool,
    params: Vec<ParamDef>,
    includes: Vec<RoleRef>,
    /// Each resource with the position of its kind (`- file:`).
    resources: Vec<(Pos, ResourceSpec)>,
}

/// A role, or why it cannot be used.
type RoleLookup = Result<Rc<RoleDef>, Vec<Invalid>>;

/// A parsed fleet repository: everything that does not depend on the device.
pub struct Fleet<'a> {
    repo: &'a Source<'a>,
    builtin: Option<&'a Source<'a>>,
    pub settings: Settings,
    /// The `os:` section (Mender A/B OS images); `OsDecl::image_for` picks the device's.
    pub os: Option<crate::osdecl::OsDecl>,
    all: Layer,
    groups: Vec<Group>,
    group_layers: HashMap<String, Layer>,
    host_ids: Vec<String>,
    roles: std::cell::RefCell<HashMap<String, RoleLookup>>,
}

const FLEET_FILE: &str = "fleet.yml";
const INVENTORY_FILE: &str = "inventory.yml";

impl<'a> Fleet<'a> {
    /// Reads fleet.yml, inventory.yml and group_vars/; host_vars and roles are read
    /// when a device needs them.
    pub fn load(repo: &'a Source<'a>, builtin: Option<&'a Source<'a>>) -> Result<Fleet<'a>> {
        if let Some(req) = crate::selfupdate::required(repo)?.filter(|r| !r.is_met()) {
            return Err(crate::selfupdate::too_old(&req));
        }
        let mut problems = Vec::new();
        let fleet_text = repo.read(FLEET_FILE)?.ok_or_else(|| {
            Error::invalid(
                Pos {
                    file: FLEET_FILE.into(),
                    line: 0,
                    column: 0,
                },
                format!(
                    "missing: a fleet repository has a {FLEET_FILE} at its top (in {})",
                    repo.label()
                ),
            )
        })?;
        let mut settings = Settings::default();
        let mut os = None;
        let mut all = Layer {
            vars: vec![],
            roles: vec![],
            facts: HostFacts::default(),
        };
        match yaml::parse(FLEET_FILE, &fleet_text)
            .and_then(|n| Ok((yaml::typed::<FleetDoc>(FLEET_FILE, &n)?, n)))
        {
            Ok((doc, node)) => {
                if *doc.format != FORMAT_VERSION {
                    problems.push(invalid(
                        FLEET_FILE,
                        doc.format.span(),
                        format!(
                            "format {} is not supported by fleet-agent {} (expected format: {FORMAT_VERSION})",
                            *doc.format,
                            crate::selfupdate::VERSION
                        ),
                    ));
                }
                if let Some(p) = crate::selfupdate::check_min_version(&doc.settings) {
                    problems.push(p);
                }
                problems.extend(crate::selfupdate::check_pins(repo, &doc.settings)?);
                settings = doc.settings;
                os = crate::osdecl::read(FLEET_FILE, &node, &mut problems);
                all = read_layer(FLEET_FILE, &node, &mut problems);
            }
            Err(p) => problems.push(p),
        }

        let mut groups = Vec::new();
        match repo.read(INVENTORY_FILE)? {
            None => {}
            Some(text) => match yaml::parse(INVENTORY_FILE, &text)
                .and_then(|n| yaml::typed::<InventoryDoc>(INVENTORY_FILE, &n).map(|_| n))
            {
                Ok(node) => groups = read_groups(&node, &mut problems),
                Err(p) => problems.push(p),
            },
        }

        let mut group_layers = HashMap::new();
        let all_name = "all".to_string();
        for name in repo.list("group_vars")?.unwrap_or_default() {
            let Some(group) = name.strip_suffix(".yml") else {
                continue;
            };
            let file = format!("group_vars/{name}");
            if group != all_name && !groups.iter().any(|g: &Group| g.name == group) {
                problems.push(Invalid {
                    pos: Pos {
                        file: file.clone(),
                        line: 0,
                        column: 0,
                    },
                    message: format!("there is no group `{group}` in {INVENTORY_FILE}"),
                });
                continue;
            }
            if let Some(layer) = read_vars_file(repo, &file, &mut problems)? {
                group_layers.insert(group.to_string(), layer);
            }
        }
        let host_ids = repo
            .list("host_vars")?
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| n.strip_suffix(".yml").map(str::to_string))
            .collect();

        if !problems.is_empty() {
            return Err(Error::Invalid(problems));
        }
        Ok(Fleet {
            repo,
            builtin,
            settings,
            os,
            all,
            groups,
            group_layers,
            host_ids,
            roles: Default::default(),
        })
    }

    /// What the device's host_vars file says about it (branch, device type).
    pub fn host_facts(&self, device_id: &str) -> Result<HostFacts> {
        let mut problems = Vec::new();
        let layer = read_vars_file(
            self.repo,
            &format!("host_vars/{device_id}.yml"),
            &mut problems,
        )?;
        if !problems.is_empty() {
            return Err(Error::Invalid(problems));
        }
        Ok(layer.map(|l| l.facts).unwrap_or_default())
    }

    /// The groups a device belongs to, in inventory order.
    pub fn groups_of(&self, device: &Device) -> Vec<String> {
        self.groups
            .iter()
            .filter(|g| {
                g.patterns
                    .iter()
                    .any(|(p, _)| glob_match::glob_match(p, &device.id))
                    || device
                        .device_type
                        .as_ref()
                        .is_some_and(|t| g.device_types.contains(t))
            })
            .map(|g| g.name.clone())
            .collect()
    }

    /// The device's desired state, or every problem found on the way.
    pub fn desired_state(&self, device: &Device) -> Result<DesiredState> {
        let groups = self.groups_of(device);
        self.desired_state_in(device, groups)
    }

    fn desired_state_in(&self, device: &Device, groups: Vec<String>) -> Result<DesiredState> {
        let mut problems = Vec::new();
        let host_file = format!("host_vars/{}.yml", device.id);
        let host_layer = read_vars_file(self.repo, &host_file, &mut problems)?;

        // Layers, weakest first: all (fleet.yml, group_vars/all.yml), groups, host.
        let mut layers: Vec<&Layer> = vec![&self.all];
        if let Some(l) = self.group_layers.get("all") {
            layers.push(l);
        }
        for g in &groups {
            if let Some(l) = self.group_layers.get(g) {
                layers.push(l);
            }
        }
        if let Some(l) = &host_layer {
            layers.push(l);
        }

        let mut vars: BTreeMap<String, Value> = BTreeMap::new();
        let mut role_refs: Vec<RoleRef> = Vec::new();
        for layer in &layers {
            for (k, v) in &layer.vars {
                vars.insert(k.clone(), yaml::to_value(v));
            }
            for r in &layer.roles {
                // The same role named again in a later layer overrides parameters by name.
                match role_refs.iter_mut().find(|e| e.name == r.name) {
                    Some(existing) => {
                        for p in &r.params {
                            existing.params.retain(|(n, _, _)| n != &p.0);
                            existing.params.push(p.clone());
                        }
                    }
                    None => role_refs.push(r.clone()),
                }
            }
        }
        vars.insert(
            "device".into(),
            Value::from_iter([
                ("id".to_string(), Value::from(device.id.clone())),
                ("type".to_string(), Value::from(device.device_type.clone())),
                ("groups".to_string(), Value::from(groups.clone())),
            ]),
        );

        let mut expander = Expander {
            fleet: self,
            env: template_env(),
            vars,
            instances: HashMap::new(),
            claimed: HashMap::new(),
            resources: Vec::new(),
            roles: Vec::new(),
            problems,
        };
        for r in &role_refs {
            let base = Value::from_iter(expander.vars.clone());
            expander.expand(r, &base, &mut Vec::new())?;
        }
        if !expander.problems.is_empty() {
            return Err(Error::Invalid(expander.problems));
        }
        Ok(DesiredState {
            device_id: device.id.clone(),
            device_type: device.device_type.clone(),
            groups,
            roles: expander.roles,
            resources: expander.resources,
        })
    }

    /// Validates the repository for every device it names: each literal device id of
    /// the inventory, each host_vars file, and for every group one device of that group
    /// alone (globs stand for devices not yet known). Every role under roles/ is read
    /// even if no device uses it. Returns the devices checked.
    pub fn validate_all(&self) -> Result<Vec<String>> {
        let mut problems: Vec<Invalid> = Vec::new();
        let mut checked = Vec::new();
        let mut devices: Vec<String> = Vec::new();
        for g in &self.groups {
            for (p, _) in &g.patterns {
                if !p.contains(['*', '?', '[']) && !devices.contains(p) {
                    devices.push(p.clone());
                }
            }
        }
        for h in &self.host_ids {
            if !devices.contains(h) {
                devices.push(h.clone());
            }
        }
        let push_all = |problems: &mut Vec<Invalid>, e: Error| match e {
            Error::Invalid(ps) => {
                for p in ps {
                    if !problems.contains(&p) {
                        problems.push(p);
                    }
                }
                Ok(())
            }
            other => Err(other),
        };
        for id in &devices {
            let device_type = match self.host_facts(id) {
                Ok(f) => f.device_type,
                Err(e) => {
                    push_all(&mut problems, e)?;
                    None
                }
            };
            let device = Device {
                id: id.clone(),
                device_type,
            };
            if let Err(e) = self.desired_state(&device) {
                push_all(&mut problems, e)?;
            }
            checked.push(id.clone());
        }
        for g in &self.groups {
            let device = Device {
                id: format!("(a device of group {})", g.name),
                device_type: None,
            };
            if let Err(e) = self.desired_state_in(&device, vec![g.name.clone()]) {
                push_all(&mut problems, e)?;
            }
            checked.push(device.id);
        }
        for name in self.repo.list("roles")?.unwrap_or_default() {
            if let Err(ps) = self.role(
                &name,
                &Pos {
                    file: format!("roles/{name}"),
                    line: 0,
                    column: 0,
                },
            )? {
                for p in ps {
                    if !problems.contains(&p) {
                        problems.push(p);
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(checked)
        } else {
            Err(Error::Invalid(problems))
        }
    }

    /// A role by name: the fleet repository's roles/<name> first, then the built-in one.
    fn role(&self, name: &str, used_at: &Pos) -> Result<RoleLookup> {
        if let Some(r) = self.roles.borrow().get(name) {
            return Ok(r.clone());
        }
        let loaded = self.load_role(name, used_at)?;
        self.roles
            .borrow_mut()
            .insert(name.to_string(), loaded.clone());
        Ok(loaded)
    }

    fn load_role(&self, name: &str, used_at: &Pos) -> Result<RoleLookup> {
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name {
            return Ok(Err(vec![Invalid {
                pos: used_at.clone(),
                message: format!("`{name}` is not a role name (letters, digits, - and _)"),
            }]));
        }
        let (dir, file, builtin, text) = match self.repo.read(&format!("roles/{name}/role.yml"))? {
            Some(t) => (format!("roles/{name}"), format!("roles/{name}/role.yml"), false, t),
            None => match self.builtin.map(|b| b.read(&format!("{name}/role.yml"))).transpose()?.flatten() {
                Some(t) => (name.to_string(), format!("builtin:{name}/role.yml"), true, t),
                None => {
                    return Ok(Err(vec![Invalid {
                        pos: used_at.clone(),
                        message: format!(
                            "no role `{name}`: expected roles/{name}/role.yml in the fleet repository or a built-in role"
                        ),
                    }]))
                }
            },
        };
        let mut problems = Vec::new();
        let node = match yaml::parse(&file, &text) {
            Ok(n) => n,
            Err(p) => return Ok(Err(vec![p])),
        };
        let doc = match yaml::typed::<RoleDoc>(&file, &node) {
            Ok(d) => d,
            Err(p) => return Ok(Err(vec![p])),
        };
        let map = node.as_mapping().expect("top level is a mapping");
        let mut params = Vec::new();
        if let Some(pnode) = map.get_node("params") {
            match pnode.as_mapping() {
                Some(pmap) => {
                    for (k, v) in pmap.iter() {
                        let (required, default, choices) = match v {
                            // `name:` alone (null) declares a parameter without default, required.
                            Node::Scalar(s) if s.as_str().is_empty() => (true, None, None),
                            Node::Mapping(m) => {
                                match yaml::typed::<ParamDoc>(&file, v) {
                                    Ok(d) if d.required && m.get_node("default").is_some() => {
                                        problems.push(invalid(&file, k.span(), "a parameter is either required or has a default, not both"));
                                        continue;
                                    }
                                    Ok(d) => match param_choices(&file, m.get_node("choices")) {
                                        Ok(c) => (d.required, m.get_node("default").cloned(), c),
                                        Err(p) => {
                                            problems.push(p);
                                            continue;
                                        }
                                    },
                                    Err(p) => {
                                        problems.push(p);
                                        continue;
                                    }
                                }
                            }
                            _ => {
                                problems.push(invalid(
                                    &file,
                                    v.span(),
                                    "expected a parameter declaration: {default: VALUE} or {required: true}",
                                ));
                                continue;
                            }
                        };
                        params.push(ParamDef {
                            name: k.as_str().to_string(),
                            required,
                            default,
                            choices,
                        });
                    }
                }
                None => problems.push(invalid(
                    &file,
                    pnode.span(),
                    "expected a mapping of parameter names",
                )),
            }
        }
        // Positions of the resources: the key naming each one's kind.
        let positions = map
            .get_sequence("resources")
            .map(|seq| {
                seq.iter()
                    .map(
                        |item| match item.as_mapping().and_then(|m| m.keys().next()) {
                            Some(k) => yaml::pos(&file, k.span()),
                            None => yaml::pos(&file, item.span()),
                        },
                    )
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let includes = match map.get_node("include") {
            Some(n) => read_role_refs(&file, n, &mut problems),
            None => vec![],
        };
        if !problems.is_empty() {
            return Ok(Err(problems));
        }
        Ok(Ok(Rc::new(RoleDef {
            name: name.to_string(),
            dir,
            file,
            builtin,
            params,
            includes,
            resources: positions.into_iter().zip(doc.resources).collect(),
        })))
    }
}

fn template_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env
}

// ---------------------------------------------------------------- reading layers

fn read_layer(file: &str, node: &Node, problems: &mut Vec<Invalid>) -> Layer {
    let map = node.as_mapping().expect("top level is a mapping");
    let vars = match map.get_node("vars") {
        None => vec![],
        Some(Node::Mapping(m)) => m
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.clone()))
            .collect(),
        Some(Node::Scalar(s)) if s.as_str().is_empty() => vec![],
        Some(n) => {
            problems.push(invalid(
                file,
                n.span(),
                "expected a mapping of variable names to values",
            ));
            vec![]
        }
    };
    let roles = match map.get_node("roles") {
        None => vec![],
        Some(n) => read_role_refs(file, n, problems),
    };
    Layer {
        vars,
        roles,
        facts: HostFacts::default(),
    }
}

fn read_vars_file(repo: &Source, file: &str, problems: &mut Vec<Invalid>) -> Result<Option<Layer>> {
    let Some(text) = repo.read(file)? else {
        return Ok(None);
    };
    match yaml::parse(file, &text).and_then(|n| Ok((yaml::typed::<VarsDoc>(file, &n)?, n))) {
        Ok((doc, node)) => {
            let mut layer = read_layer(file, &node, problems);
            let host_only = [("branch", &doc.branch), ("device_type", &doc.device_type)];
            for (key, value) in host_only {
                if let (Some(v), false) = (value, file.starts_with("host_vars/")) {
                    problems.push(invalid(
                        file,
                        v.span(),
                        format!("`{key}` belongs in a host_vars file"),
                    ));
                }
            }
            if let Some(b) = &doc.branch {
                let ok = !b.is_empty()
                    && git2::Reference::is_valid_name(&format!("refs/heads/{}", b.as_str()));
                if !ok {
                    problems.push(invalid(
                        file,
                        b.span(),
                        format!("`{}` is not a branch name", b.as_str()),
                    ));
                }
            }
            layer.facts = HostFacts {
                branch: doc.branch.map(|b| b.to_string()),
                device_type: doc.device_type.map(|t| t.to_string()),
            };
            Ok(Some(layer))
        }
        Err(p) => {
            problems.push(p);
            Ok(None)
        }
    }
}

fn read_groups(node: &Node, problems: &mut Vec<Invalid>) -> Vec<Group> {
    let file = INVENTORY_FILE;
    let map = node.as_mapping().expect("top level is a mapping");
    let Some(gnode) = map.get_node("groups") else {
        return vec![];
    };
    let Some(gmap) = gnode.as_mapping() else {
        problems.push(invalid(
            file,
            gnode.span(),
            "expected a mapping of group names",
        ));
        return vec![];
    };
    let mut groups = Vec::new();
    for (name, g) in gmap.iter() {
        if name.as_str() == "all" {
            problems.push(invalid(
                file,
                name.span(),
                "`all` is the implicit group of every device; choose another name",
            ));
            continue;
        }
        match yaml::typed::<GroupDoc>(file, g) {
            Ok(doc) => groups.push(Group {
                name: name.as_str().to_string(),
                patterns: doc
                    .devices
                    .iter()
                    .map(|d| (d.to_string(), yaml::pos(file, d.span())))
                    .collect(),
                device_types: doc.device_types,
            }),
            Err(p) => problems.push(p),
        }
    }
    groups
}

/// A parameter's `choices:`: a list of plain values, kept as written and typed.
fn param_choices(file: &str, node: Option<&Node>) -> Result<Option<Vec<(String, Value)>>, Invalid> {
    let Some(node) = node else { return Ok(None) };
    let expected = "expected `choices:` as a list of plain values, such as [0, 90, 180, 270]";
    let Some(seq) = node.as_sequence() else {
        return Err(invalid(file, node.span(), expected));
    };
    let mut choices = Vec::new();
    for item in seq.iter() {
        match item {
            Node::Scalar(s) if !s.as_str().is_empty() => {
                choices.push((s.as_str().to_string(), yaml::to_value(item)))
            }
            _ => return Err(invalid(file, item.span(), expected)),
        }
    }
    if choices.is_empty() {
        return Err(invalid(file, node.span(), expected));
    }
    Ok(Some(choices))
}

/// A parameter value checked against its `choices:` (compared as rendered text, so that a
/// templated `"90"` matches a plain 90): the matching choice's own typed value (so that a
/// templated or quoted `"false"` becomes the boolean false a template tests, not a
/// non-empty string), the value itself without choices, or a problem where it is written.
fn as_choice(
    def: &RoleDef,
    name: &str,
    value: Value,
    file: &str,
    node: &Node,
) -> Result<Value, Invalid> {
    let Some(choices) = def
        .params
        .iter()
        .find(|p| p.name == name)
        .and_then(|p| p.choices.as_ref())
    else {
        return Ok(value);
    };
    let text = choice_text(&value);
    if let Some((_, typed)) = choices.iter().find(|(_, c)| choice_text(c) == text) {
        return Ok(typed.clone());
    }
    let shown = match node {
        Node::Scalar(s) if !s.as_str().contains("{{") => s.as_str().to_string(),
        _ => text,
    };
    Err(invalid(
        file,
        node.span(),
        format!(
            "role `{}`: `{shown}` is not a value of its parameter `{name}`: expected one of {}",
            def.name,
            choices
                .iter()
                .map(|(w, _)| w.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

/// A value as text for `choices:`, booleans spelled `true`/`false` whatever their form
/// (minijinja's `Display` and a rendered `{{ flag }}` give `False`; YAML also reads
/// `False` and `FALSE` as the boolean), so that a plain, quoted or templated value compare
/// alike.
fn choice_text(value: &Value) -> String {
    if value.kind() == minijinja::value::ValueKind::Bool {
        return value.is_true().to_string();
    }
    let text = value.to_string();
    match text.as_str() {
        "True" | "TRUE" => "true".to_string(),
        "False" | "FALSE" => "false".to_string(),
        _ => text,
    }
}

/// `roles:` / `include:` entries: `name` or `{role: name, params: {...}}`.
fn read_role_refs(file: &str, node: &Node, problems: &mut Vec<Invalid>) -> Vec<RoleRef> {
    let Some(seq) = node.as_sequence() else {
        if !matches!(node, Node::Scalar(s) if s.as_str().is_empty()) {
            problems.push(invalid(file, node.span(), "expected a list of roles"));
        }
        return vec![];
    };
    let mut refs = Vec::new();
    for item in seq.iter() {
        match item {
            Node::Scalar(s) => refs.push(RoleRef {
                name: s.as_str().to_string(),
                pos: yaml::pos(file, s.span()),
                params: vec![],
            }),
            Node::Mapping(m) => {
                if let Some(r) = read_role_ref_map(file, m, problems) {
                    refs.push(r)
                }
            }
            Node::Sequence(s) => problems.push(invalid(
                file,
                s.span(),
                "expected a role name or {role: NAME, params: {...}}",
            )),
        }
    }
    refs
}

fn read_role_ref_map(
    file: &str,
    m: &MarkedMappingNode,
    problems: &mut Vec<Invalid>,
) -> Option<RoleRef> {
    for (k, _) in m.iter() {
        if !["role", "params"].contains(&k.as_str()) {
            problems.push(invalid(
                file,
                k.span(),
                format!(
                    "unknown key `{}`, expected one of: role, params",
                    k.as_str()
                ),
            ));
            return None;
        }
    }
    let Some(name) = m.get_scalar("role") else {
        problems.push(invalid(file, m.span(), "expected `role: NAME`"));
        return None;
    };
    let params = match m.get_node("params") {
        None => vec![],
        Some(Node::Mapping(p)) => p
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), yaml::pos(file, k.span()), v.clone()))
            .collect(),
        Some(n) => {
            problems.push(invalid(
                file,
                n.span(),
                "expected a mapping of parameter names to values",
            ));
            return None;
        }
    };
    Some(RoleRef {
        name: name.as_str().to_string(),
        pos: yaml::pos(file, name.span()),
        params,
    })
}

// ---------------------------------------------------------------- expanding roles

struct Expander<'f, 'a> {
    fleet: &'f Fleet<'a>,
    env: Environment<'static>,
    vars: BTreeMap<String, Value>,
    /// Instantiated roles: name → (parameters, where first used).
    instances: HashMap<String, (String, Pos)>,
    /// Resource ids → where declared, to find two roles managing one thing.
    claimed: HashMap<String, Pos>,
    resources: Vec<Resource>,
    roles: Vec<String>,
    problems: Vec<Invalid>,
}

impl Expander<'_, '_> {
    /// Expands a role reference with the context of whoever names it; includes first.
    fn expand(&mut self, r: &RoleRef, caller: &Value, stack: &mut Vec<String>) -> Result<()> {
        if let Some(i) = stack.iter().position(|n| n == &r.name) {
            let cycle = stack[i..]
                .iter()
                .chain([&r.name])
                .cloned()
                .collect::<Vec<_>>()
                .join(" → ");
            self.problems.push(Invalid {
                pos: r.pos.clone(),
                message: format!("roles include each other: {cycle}"),
            });
            return Ok(());
        }
        let def = match self.fleet.role(&r.name, &r.pos)? {
            Ok(d) => d,
            Err(ps) => {
                for p in ps {
                    if !self.problems.contains(&p) {
                        self.problems.push(p);
                    }
                }
                return Ok(());
            }
        };

        // Parameters: given ones rendered in the caller's context, then defaults.
        let mut params: BTreeMap<String, Value> = BTreeMap::new();
        let mut ok = true;
        for (name, pos, node) in &r.params {
            if !def.params.iter().any(|p| &p.name == name) {
                let known = def
                    .params
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                self.problems.push(Invalid {
                    pos: pos.clone(),
                    message: format!(
                        "role `{}` has no parameter `{name}` (its parameters: {})",
                        def.name,
                        if known.is_empty() { "none" } else { &known }
                    ),
                });
                ok = false;
                continue;
            }
            match self
                .render_node(&r.pos.file, node, caller)
                .and_then(|v| as_choice(&def, name, v, &r.pos.file, node))
            {
                Ok(v) => {
                    params.insert(name.clone(), v);
                }
                Err(p) => {
                    self.problems.push(p);
                    ok = false;
                }
            }
        }
        let vars_only = Value::from_iter(self.vars.clone());
        for p in &def.params {
            if params.contains_key(&p.name) {
                continue;
            }
            match &p.default {
                Some(d) => match self
                    .render_node(&def.file, d, &vars_only)
                    .and_then(|v| as_choice(&def, &p.name, v, &def.file, d))
                {
                    Ok(v) => {
                        params.insert(p.name.clone(), v);
                    }
                    Err(e) => {
                        self.problems.push(e);
                        ok = false;
                    }
                },
                None if p.required => {
                    self.problems.push(Invalid {
                        pos: r.pos.clone(),
                        message: format!("role `{}` needs the parameter `{}`", def.name, p.name),
                    });
                    ok = false;
                }
                None => {}
            }
        }
        if !ok {
            return Ok(());
        }

        let key = format!("{params:?}");
        if let Some((prev, at)) = self.instances.get(&def.name) {
            if prev != &key {
                self.problems.push(Invalid {
                    pos: r.pos.clone(),
                    message: format!("role `{}` is used with other parameters at {at}; a role is applied once per device", def.name),
                });
            }
            return Ok(());
        }
        self.instances
            .insert(def.name.clone(), (key, r.pos.clone()));

        // The role's context: variables, shadowed by its parameters.
        let mut ctx_map = self.vars.clone();
        ctx_map.extend(params.clone());
        ctx_map.insert("params".into(), Value::from_iter(params));
        let ctx = Value::from_iter(ctx_map);

        stack.push(def.name.clone());
        for inc in &def.includes {
            self.expand(inc, &ctx, stack)?;
        }
        stack.pop();

        self.roles.push(def.name.clone());
        for (pos, spec) in &def.resources {
            let pos = pos.clone();
            match self.resource(&def, spec, &ctx)? {
                Ok(kinds) => {
                    for kind in kinds {
                        let id = kind.id();
                        if let Some(prev) = self.claimed.get(&id) {
                            self.problems.push(Invalid {
                                pos: pos.clone(),
                                message: format!(
                                    "{} is also managed by the resource at {prev}",
                                    kind.subject()
                                ),
                            });
                            continue;
                        }
                        self.claimed.insert(id, pos.clone());
                        self.resources.push(Resource {
                            role: def.name.clone(),
                            declared_at: pos.clone(),
                            kind,
                        });
                    }
                }
                Err(ps) => self.problems.extend(ps),
            }
        }
        Ok(())
    }

    /// A node as a value, every string in it rendered as a template.
    fn render_node(&self, file: &str, node: &Node, ctx: &Value) -> Result<Value, Invalid> {
        match node {
            Node::Scalar(s)
                if !s.may_coerce()
                    || matches!(
                        yaml::to_value(node).kind(),
                        minijinja::value::ValueKind::String
                    ) =>
            {
                self.render_scalar(file, s, ctx).map(Value::from)
            }
            Node::Scalar(_) => Ok(yaml::to_value(node)),
            Node::Sequence(seq) => seq
                .iter()
                .map(|n| self.render_node(file, n, ctx))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::from),
            Node::Mapping(m) => m
                .iter()
                .map(|(k, v)| Ok((k.as_str().to_string(), self.render_node(file, v, ctx)?)))
                .collect::<Result<BTreeMap<_, _>, Invalid>>()
                .map(Value::from_iter),
        }
    }

    fn render_scalar(
        &self,
        file: &str,
        s: &MarkedScalarNode,
        ctx: &Value,
    ) -> Result<String, Invalid> {
        self.render(file, s.span(), s.as_str(), ctx)
    }

    /// Renders a string from role.yml; errors point at the string.
    fn render(&self, file: &str, span: &Span, text: &str, ctx: &Value) -> Result<String, Invalid> {
        if !text.contains("{{") && !text.contains("{%") {
            return Ok(text.to_string());
        }
        self.env.render_str(text, ctx).map_err(|e| {
            let mut p = invalid(file, span, template_message(&e, text));
            if let (Some(line), true) = (e.line(), p.pos.line > 0) {
                if line > 1 {
                    p.message.push_str(&format!(" (line {line} of the value)"));
                }
            }
            p
        })
    }

    fn spanned(&self, file: &str, s: &Spanned<String>, ctx: &Value) -> Result<String, Invalid> {
        self.render(file, s.span(), s.as_str(), ctx)
    }

    fn resource(
        &self,
        def: &RoleDef,
        spec: &ResourceSpec,
        ctx: &Value,
    ) -> Result<Result<Vec<Kind>, Vec<Invalid>>> {
        let file = def.file.as_str();
        let mut problems = Vec::new();
        let text =
            |s: &Spanned<String>, problems: &mut Vec<Invalid>| match self.spanned(file, s, ctx) {
                Ok(t) => Some(t),
                Err(p) => {
                    problems.push(p);
                    None
                }
            };
        let kind = match spec {
            ResourceSpec::File(f) => {
                let path = text(&f.path, &mut problems)
                    .and_then(|p| device_path(file, &f.path, &p, &mut problems));
                let mode = mode(file, f.mode.as_ref(), 0o644, &mut problems);
                let owner = f
                    .owner
                    .as_ref()
                    .and_then(|o| text(o, &mut problems))
                    .map(principal);
                let group = f
                    .group
                    .as_ref()
                    .and_then(|g| text(g, &mut problems))
                    .map(principal);
                let given = [&f.content, &f.source, &f.template]
                    .iter()
                    .filter(|x| x.is_some())
                    .count();
                let content = if given != 1 {
                    problems.push(invalid(
                        file,
                        f.path.span(),
                        "a file needs exactly one of `content`, `source` (a file in the role's files/) or `template` (in templates/)",
                    ));
                    None
                } else if let Some(c) = &f.content {
                    text(c, &mut problems).map(String::into_bytes)
                } else if let Some(s) = &f.source {
                    self.role_file(def, "files", s, &mut problems)?
                } else if let Some(t) = &f.template {
                    match self.role_file(def, "templates", t, &mut problems)? {
                        Some(bytes) => {
                            self.render_template_file(def, t, &bytes, ctx, &mut problems)
                        }
                        None => None,
                    }
                } else {
                    None
                };
                match (path, mode, content) {
                    (Some(path), Some(mode), Some(content)) if problems.is_empty() => Kind::File {
                        path,
                        content,
                        mode,
                        owner: owner.unwrap_or(Principal::Id(0)),
                        group: group.unwrap_or(Principal::Id(0)),
                        secret: f.secret,
                    },
                    _ => return Ok(Err(problems)),
                }
            }
            ResourceSpec::Directory(d) => {
                let path = text(&d.path, &mut problems)
                    .and_then(|p| device_path(file, &d.path, &p, &mut problems));
                let mode = mode(file, d.mode.as_ref(), 0o755, &mut problems);
                let owner = d
                    .owner
                    .as_ref()
                    .and_then(|o| text(o, &mut problems))
                    .map(principal);
                let group = d
                    .group
                    .as_ref()
                    .and_then(|g| text(g, &mut problems))
                    .map(principal);
                match (path, mode) {
                    (Some(path), Some(mode)) if problems.is_empty() => Kind::Directory {
                        path,
                        mode,
                        owner: owner.unwrap_or(Principal::Id(0)),
                        group: group.unwrap_or(Principal::Id(0)),
                    },
                    _ => return Ok(Err(problems)),
                }
            }
            ResourceSpec::Symlink(l) => {
                let path = text(&l.path, &mut problems)
                    .and_then(|p| device_path(file, &l.path, &p, &mut problems));
                let target = text(&l.target, &mut problems);
                if matches!(&target, Some(t) if t.is_empty()) {
                    problems.push(invalid(
                        file,
                        l.target.span(),
                        "expected the link's target, not an empty string",
                    ));
                }
                match (path, target) {
                    (Some(path), Some(target)) if problems.is_empty() => Kind::Symlink {
                        path,
                        target: target.into(),
                    },
                    _ => return Ok(Err(problems)),
                }
            }
            ResourceSpec::Absent(a) => {
                let path = text(&a.path, &mut problems)
                    .and_then(|p| device_path(file, &a.path, &p, &mut problems));
                match path {
                    Some(path) if path.components().count() < 3 => {
                        problems.push(invalid(
                            file,
                            a.path.span(),
                            format!(
                                "refusing to remove the top-level directory {}",
                                path.display()
                            ),
                        ));
                        return Ok(Err(problems));
                    }
                    Some(path) if problems.is_empty() => Kind::Absent { path },
                    _ => return Ok(Err(problems)),
                }
            }
            ResourceSpec::AptSource(a) => return self.apt_source(def, a, ctx),
            ResourceSpec::Package(p) => {
                let name = text(&p.name, &mut problems);
                let state = match p.state.as_ref().map(|s| (s, s.as_str())) {
                    None | Some((_, "present")) => PackageState::Present,
                    Some((_, "absent")) => PackageState::Absent,
                    Some((s, other)) => {
                        problems.push(invalid(
                            file,
                            s.span(),
                            format!("`{other}` is not a package state: expected present or absent"),
                        ));
                        PackageState::Present
                    }
                };
                let version = p.version.as_ref().and_then(|v| text(v, &mut problems));
                if let (Some(v), PackageState::Absent) = (&p.version, state) {
                    problems.push(invalid(
                        file,
                        v.span(),
                        "a version goes with state: present",
                    ));
                }
                if let Some(n) = &name {
                    if !valid_package_name(n) {
                        problems.push(invalid(
                            file,
                            p.name.span(),
                            format!("`{n}` is not a Debian package name"),
                        ));
                    }
                }
                match name {
                    Some(name) if problems.is_empty() => Kind::Package {
                        name,
                        state,
                        version,
                        recommends: p.recommends,
                    },
                    _ => return Ok(Err(problems)),
                }
            }
            ResourceSpec::Service(sv) => {
                let unit = text(&sv.name, &mut problems).map(|u| {
                    if u.contains('.') {
                        u
                    } else {
                        format!("{u}.service")
                    }
                });
                let enabled = match sv.enabled.as_ref().map(|e| (e, e.as_str())) {
                    None => None,
                    Some((_, "true" | "yes")) => Some(Enablement::Enabled),
                    Some((_, "false" | "no")) => Some(Enablement::Disabled),
                    Some((_, "masked")) => Some(Enablement::Masked),
                    Some((e, other)) => {
                        problems.push(invalid(
                            file,
                            e.span(),
                            format!(
                                "`{other}` is not an enablement: expected true, false or masked"
                            ),
                        ));
                        None
                    }
                };
                let running = match sv.state.as_ref().map(|e| (e, e.as_str())) {
                    None => None,
                    Some((_, "started")) => Some(true),
                    Some((_, "stopped")) => Some(false),
                    Some((e, other)) => {
                        problems.push(invalid(
                            file,
                            e.span(),
                            format!(
                                "`{other}` is not a service state: expected started or stopped"
                            ),
                        ));
                        None
                    }
                };
                let paths = |list: &[Spanned<String>], problems: &mut Vec<Invalid>| {
                    list.iter()
                        .filter_map(|p| {
                            text(p, problems).and_then(|t| device_path(file, p, &t, problems))
                        })
                        .collect::<Vec<_>>()
                };
                let restart_on = paths(&sv.restart_on, &mut problems);
                let reload_on = paths(&sv.reload_on, &mut problems);
                match unit {
                    Some(unit) if problems.is_empty() => Kind::Service {
                        unit,
                        enabled,
                        running,
                        restart_on,
                        reload_on,
                    },
                    _ => return Ok(Err(problems)),
                }
            }
            ResourceSpec::Group(g) => {
                let name = text(&g.name, &mut problems);
                if let Some(n) = &name {
                    check_account_name(file, &g.name, n, &mut problems);
                }
                match name {
                    Some(name) if problems.is_empty() => Kind::Group {
                        name,
                        system: g.system,
                        gid: g.gid,
                    },
                    _ => return Ok(Err(problems)),
                }
            }
            ResourceSpec::User(u) => {
                let name = text(&u.name, &mut problems);
                if let Some(n) = &name {
                    check_account_name(file, &u.name, n, &mut problems);
                }
                let home = u.home.as_ref().and_then(|h| {
                    text(h, &mut problems).and_then(|t| device_path(file, h, &t, &mut problems))
                });
                let shell = u.shell.as_ref().and_then(|s| text(s, &mut problems));
                let groups = u
                    .groups
                    .iter()
                    .filter_map(|g| text(g, &mut problems))
                    .collect();
                let comment = u.comment.as_ref().and_then(|c| text(c, &mut problems));
                match name {
                    Some(name) if problems.is_empty() => Kind::User {
                        name,
                        system: u.system,
                        uid: u.uid,
                        home,
                        shell,
                        groups,
                        comment,
                    },
                    _ => return Ok(Err(problems)),
                }
            }
        };
        Ok(Ok(vec![kind]))
    }

    /// An apt source becomes two files: its signing key and its deb822 .sources file.
    fn apt_source(
        &self,
        def: &RoleDef,
        a: &AptSourceSpec,
        ctx: &Value,
    ) -> Result<Result<Vec<Kind>, Vec<Invalid>>> {
        let file = def.file.as_str();
        let mut problems = Vec::new();
        let list = |items: &[Spanned<String>], problems: &mut Vec<Invalid>| -> Vec<String> {
            items
                .iter()
                .filter_map(|i| {
                    self.spanned(file, i, ctx)
                        .map_err(|p| problems.push(p))
                        .ok()
                })
                .collect()
        };
        let name = self
            .spanned(file, &a.name, ctx)
            .map_err(|p| problems.push(p))
            .ok();
        let uris = list(&a.uris, &mut problems);
        let suites = list(&a.suites, &mut problems);
        let components = list(&a.components, &mut problems);
        let architectures = list(&a.architectures, &mut problems);
        if let Some(n) = &name {
            if n.is_empty()
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                problems.push(invalid(
                    file,
                    a.name.span(),
                    format!("`{n}` is not a source name: letters, digits, - _ ."),
                ));
            }
        }
        if uris.is_empty() && problems.is_empty() {
            problems.push(invalid(
                file,
                a.name.span(),
                "an apt source needs at least one of `uris`",
            ));
        }
        let key = self.role_file(def, "files", &a.key, &mut problems)?;
        let (Some(name), Some(key), true) = (name, key, problems.is_empty()) else {
            return Ok(Err(problems));
        };
        let armored = key.starts_with(b"-----BEGIN PGP");
        let key_path = PathBuf::from(format!(
            "/etc/apt/keyrings/{name}.{}",
            if armored { "asc" } else { "gpg" }
        ));
        let mut sources = format!(
            "# Managed by fleet-agent (role {})\nTypes: deb\nURIs: {}\nSuites: {}\n",
            def.name,
            uris.join(" "),
            suites.join(" ")
        );
        if !components.is_empty() {
            sources.push_str(&format!("Components: {}\n", components.join(" ")));
        }
        if !architectures.is_empty() {
            sources.push_str(&format!("Architectures: {}\n", architectures.join(" ")));
        }
        sources.push_str(&format!("Signed-By: {}\n", key_path.display()));
        let meta = |path: PathBuf, content: Vec<u8>| Kind::File {
            path,
            content,
            mode: 0o644,
            owner: Principal::Id(0),
            group: Principal::Id(0),
            secret: false,
        };
        Ok(Ok(vec![
            meta(key_path, key),
            meta(
                PathBuf::from(format!("/etc/apt/sources.list.d/{name}.sources")),
                sources.into_bytes(),
            ),
        ]))
    }

    /// Reads `files/<name>` or `templates/<name>` of a role; the name may not leave it.
    fn role_file(
        &self,
        def: &RoleDef,
        sub: &str,
        name: &Spanned<String>,
        problems: &mut Vec<Invalid>,
    ) -> Result<Option<Vec<u8>>> {
        let rel = Path::new(name.as_str());
        let escapes = name.is_empty()
            || rel.is_absolute()
            || rel.components().any(|c| !matches!(c, Component::Normal(_)));
        if escapes {
            problems.push(invalid(
                &def.file,
                name.span(),
                format!("`{}` leaves the role's {sub}/ directory: expected a relative path inside it, without `..`", name.as_str()),
            ));
            return Ok(None);
        }
        let path = format!("{}/{sub}/{}", def.dir, name.as_str());
        let source = if def.builtin {
            self.fleet.builtin.expect("built-in role has a source")
        } else {
            self.fleet.repo
        };
        match source.read(&path)? {
            Some(bytes) => Ok(Some(bytes)),
            None => {
                let shown = if def.builtin {
                    format!("builtin:{path}")
                } else {
                    path
                };
                problems.push(invalid(
                    &def.file,
                    name.span(),
                    format!("{shown} does not exist"),
                ));
                Ok(None)
            }
        }
    }

    fn render_template_file(
        &self,
        def: &RoleDef,
        name: &Spanned<String>,
        bytes: &[u8],
        ctx: &Value,
        problems: &mut Vec<Invalid>,
    ) -> Option<Vec<u8>> {
        let label = format!(
            "{}{}/templates/{}",
            if def.builtin { "builtin:" } else { "" },
            def.dir,
            name.as_str()
        );
        let Ok(src) = std::str::from_utf8(bytes) else {
            problems.push(Invalid {
                pos: Pos {
                    file: label,
                    line: 0,
                    column: 0,
                },
                message: "a template must be UTF-8 text".into(),
            });
            return None;
        };
        match self.env.render_str(src, ctx) {
            Ok(s) => Some(s.into_bytes()),
            Err(e) => {
                let (line, column) = match (e.line(), e.range()) {
                    (_, Some(r)) => {
                        let before = &src[..r.start.min(src.len())];
                        (
                            before.matches('\n').count() + 1,
                            before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1,
                        )
                    }
                    (Some(l), None) => (l, 1),
                    (None, None) => (0, 0),
                };
                problems.push(Invalid {
                    pos: Pos {
                        file: label,
                        line,
                        column,
                    },
                    message: template_message(&e, src),
                });
                None
            }
        }
    }
}

/// minijinja's error, with the name of an undefined variable spelled out.
fn template_message(e: &minijinja::Error, src: &str) -> String {
    match e.kind() {
        minijinja::ErrorKind::UndefinedError => {
            let expr = e
                .range()
                .and_then(|r| src.get(r))
                .map(str::trim)
                .unwrap_or("");
            if expr.is_empty() {
                "undefined variable in template: expected it in vars (fleet.yml, group_vars, host_vars) or the role's params".into()
            } else {
                format!("undefined variable `{expr}`: expected it in vars (fleet.yml, group_vars, host_vars) or the role's params")
            }
        }
        _ => format!(
            "template error: {}",
            e.detail()
                .map(str::to_string)
                .unwrap_or_else(|| e.kind().to_string())
        ),
    }
}

fn valid_package_name(n: &str) -> bool {
    n.len() >= 2
        && n.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

fn check_account_name(file: &str, at: &Spanned<String>, n: &str, problems: &mut Vec<Invalid>) {
    let ok = !n.is_empty()
        && n.len() <= 32
        && n.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c));
    if !ok {
        problems.push(invalid(
            file,
            at.span(),
            format!("`{n}` is not a user or group name: lowercase letters, digits, - and _"),
        ));
    }
}

fn principal(s: String) -> Principal {
    match s.parse::<u32>() {
        Ok(id) => Principal::Id(id),
        Err(_) if s == "root" => Principal::Id(0),
        Err(_) => Principal::Name(s),
    }
}

fn mode(
    file: &str,
    m: Option<&Spanned<String>>,
    default: u32,
    problems: &mut Vec<Invalid>,
) -> Option<u32> {
    let Some(m) = m else { return Some(default) };
    let s = m.as_str();
    match u32::from_str_radix(s, 8) {
        Ok(v) if (3..=4).contains(&s.len()) && v <= 0o7777 => Some(v),
        _ => {
            problems.push(invalid(
                file,
                m.span(),
                format!(
                    "`{s}` is not a file mode: expected octal digits in quotes, such as \"0644\""
                ),
            ));
            None
        }
    }
}

/// A managed path: absolute, normalized, not the root itself.
fn device_path(
    file: &str,
    at: &Spanned<String>,
    p: &str,
    problems: &mut Vec<Invalid>,
) -> Option<PathBuf> {
    let path = Path::new(p);
    let normal = path.is_absolute()
        && path
            .components()
            .skip(1)
            .all(|c| matches!(c, Component::Normal(_)))
        && path.components().count() > 1
        && !p.ends_with('/');
    if normal {
        Some(path.to_path_buf())
    } else {
        problems.push(invalid(file, at.span(), format!("`{p}` is not a device path: expected an absolute path without `.`, `..` or a trailing /")));
        None
    }
}
