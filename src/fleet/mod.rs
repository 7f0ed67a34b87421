//! The fleet repository (format v1, docs/fleet-format.md): loaded and validated, and one
//! device's desired state computed from it. Nothing here touches the machine: the input
//! is a [`Source`] (a commit or a directory) and device facts, the output a
//! `DesiredState` or every problem found, each with file:line:column.
//!
//! Submodules: the YAML layer with positions, the typed schema, layers and inventory,
//! roles, templates, expansion, the `os:` declaration and the `min_agent_version` gate.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use marked_yaml::Node;
use minijinja::Value;

use crate::error::{extend_unique, Error, Invalid, Pos, Result};
use crate::resources::{DesiredState, Reserved};
use crate::VERSION;

mod brakes;
mod expand;
pub(crate) mod facts;
pub(crate) mod gate;
mod layers;
pub(crate) mod os;
mod roles;
mod schema;
pub(crate) mod source;
mod template;
pub(crate) mod yaml;

use layers::{read_groups, read_layer, read_vars_file, Group, Layer, RoleRef, INVENTORY_FILE};
use roles::Loaded;
pub(crate) use schema::Settings;
use schema::{misplaced_keys, FileKind, FleetDoc, InventoryDoc};
use source::Source;

pub(crate) const FORMAT_VERSION: u32 = 1;

/// The id `validate` checks a device under that no inventory group names.
pub(crate) const NO_GROUP_DEVICE: &str = "(a device in no group)";

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_roles.rs"));
}

/// The built-in roles: the directory `roles_dir` where the package installed them, or,
/// where there is none (a maintainer's laptop, CI), the copy compiled into the binary.
pub(crate) fn builtin_roles(roles_dir: &std::path::Path) -> Source<'static> {
    if roles_dir.is_dir() {
        Source::Dir(roles_dir.to_path_buf())
    } else {
        Source::Embedded(builtin::BUILTIN_ROLES)
    }
}

/// Who the device is, as the agent configuration says, and how its facts and secrets
/// are read (the run reads the machine; `validate` uses stand-ins).
#[derive(Debug, Clone)]
pub(crate) struct Device {
    pub(crate) id: String,
    pub(crate) device_type: Option<String>,
    pub(crate) reads: Arc<dyn facts::DeviceReads>,
}

/// A device's desired state and the OS image its group_vars or host_vars choose.
pub(crate) struct ForDevice {
    pub(crate) desired: DesiredState,
    /// `os_image:` of the strongest layer that has one, and where it is written.
    pub(crate) os_image: Option<(os::Image, Pos)>,
    /// `rollout:` and `maintenance:` of the strongest layer that has each.
    pub(crate) brakes: crate::release::Brakes,
}

/// Facts about a device that its host_vars file states.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostFacts {
    pub(crate) branch: Option<String>,
    pub(crate) device_type: Option<String>,
}

/// fleet.yml of a source, read and parsed once: the gate is read from it before the
/// full load, which then uses the same parse.
pub(crate) struct FleetFile {
    /// None: there is no fleet.yml.
    node: Option<Result<Node, Invalid>>,
    /// Where it was looked for (a commit or a directory), for the message.
    label: String,
}

impl FleetFile {
    pub(crate) const NAME: &'static str = "fleet.yml";

    pub(crate) fn read(source: &Source) -> Result<FleetFile> {
        Ok(FleetFile {
            // Before its settings are known, fleet.yml is held to the default bound.
            node: source.yaml(Self::NAME, schema::MAX_YAML_BYTES)?,
            label: source.label(),
        })
    }

    /// `settings.min_agent_version`, read leniently (None when fleet.yml does not parse).
    pub(crate) fn requirement(&self) -> Option<gate::Requirement> {
        gate::requirement(self.node.as_ref()?.as_ref().ok()?)
    }
}

/// A parsed fleet repository: everything that does not depend on the device.
pub(crate) struct Fleet<'a> {
    repo: &'a Source<'a>,
    builtin: Option<&'a Source<'a>>,
    pub(crate) settings: Settings,
    /// The `os:` section (Mender A/B OS images); `OsDecl::image_for` picks the device's.
    pub(crate) os: Option<os::OsDecl>,
    all: Layer,
    groups: Vec<Group>,
    group_layers: HashMap<String, Layer>,
    host_ids: Vec<String>,
    roles: std::cell::RefCell<HashMap<String, Loaded>>,
    /// The agent's own files, which no resource may touch (from the device's agent.toml).
    reserved: Reserved,
}

/// What fleet.yml declares besides the inventory.
#[derive(Default)]
struct Top {
    settings: Settings,
    os: Option<os::OsDecl>,
    all: Layer,
}

impl<'a> Fleet<'a> {
    /// Reads fleet.yml (from `file`), inventory.yml and group_vars/; host_vars and
    /// roles are read when a device needs them. A branch that needs a newer agent is
    /// this one problem only (the rest may be in a format this agent does not know).
    pub(crate) fn load(
        repo: &'a Source<'a>,
        builtin: Option<&'a Source<'a>>,
        file: &FleetFile,
        reserved: Reserved,
    ) -> Result<Fleet<'a>> {
        if let Some(req) = file.requirement().filter(|r| !r.is_met()) {
            return Err(req.too_old());
        }
        let mut problems = Vec::new();
        let top = match &file.node {
            None => {
                return Err(Error::invalid(
                    Pos::file(FleetFile::NAME),
                    format!(
                        "missing: a fleet repository has a {} at its top (in {})",
                        FleetFile::NAME,
                        file.label
                    ),
                ))
            }
            Some(Err(p)) => {
                problems.push(p.clone());
                Top::default()
            }
            Some(Ok(node)) => read_top(repo, node, &mut problems)?,
        };
        let max = top.settings.max_yaml_bytes;
        let groups = read_inventory(repo, max, &mut problems)?;
        let group_layers = read_group_vars(repo, &groups, max, &mut problems)?;
        let host_ids = vars_files(repo, "host_vars", &mut problems)?;
        if !problems.is_empty() {
            return Err(Error::Invalid(problems));
        }
        Ok(Fleet {
            repo,
            builtin,
            settings: top.settings,
            os: top.os,
            all: top.all,
            groups,
            group_layers,
            host_ids,
            roles: Default::default(),
            reserved,
        })
    }

    /// What the device's host_vars file says about it (branch, device type).
    pub(crate) fn host_facts(&self, device_id: &str) -> Result<HostFacts> {
        host_facts(self.repo, device_id)
    }

    /// The groups a device belongs to, in inventory order.
    pub(crate) fn groups_of(&self, device: &Device) -> Vec<String> {
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

    /// The device's desired state and OS image choice, or every problem found.
    pub(crate) fn for_device(&self, device: &Device) -> Result<ForDevice> {
        let groups = self.groups_of(device);
        self.desired_state_in(device, groups)
    }

    fn desired_state_in(&self, device: &Device, groups: Vec<String>) -> Result<ForDevice> {
        let mut problems = Vec::new();
        let host_file = format!("host_vars/{}.yml", device.id);
        let max = self.settings.max_yaml_bytes;
        let host_layer = read_vars_file(self.repo, &host_file, max, &mut problems)?;

        // Layers, weakest first: all (fleet.yml, group_vars/all.yml), groups, host.
        let mut layers: Vec<&Layer> = vec![&self.all];
        layers.extend(self.group_layers.get("all"));
        layers.extend(groups.iter().filter_map(|g| self.group_layers.get(g)));
        layers.extend(host_layer.as_ref());
        let (mut vars, role_refs) = merge(&layers);
        let os_image = layers.iter().rev().find_map(|l| l.os_image.clone());
        let mut brakes = crate::release::Brakes {
            rollout: layers.iter().rev().find_map(|l| l.brakes.rollout.clone()),
            window: layers.iter().rev().find_map(|l| l.brakes.window.clone()),
            health: layers.iter().rev().find_map(|l| l.brakes.health.clone()),
        };
        vars.insert(
            "device".into(),
            Value::from_iter([
                ("id".to_string(), Value::from(device.id.clone())),
                ("type".to_string(), Value::from(device.device_type.clone())),
                ("groups".to_string(), Value::from(groups.clone())),
                (
                    "facts".to_string(),
                    Value::from_object(facts::Facts(device.reads.clone())),
                ),
            ]),
        );

        let mut expander = expand::Expander::new(self, vars, problems, device.reads.clone());
        for r in &role_refs {
            let base = Value::from_iter(expander.vars.clone());
            expander.expand(r, &base, &mut Vec::new())?;
        }
        expander.check_on_change();
        if !expander.problems.is_empty() {
            return Err(Error::Invalid(expander.problems));
        }
        brakes.health = crate::release::combine(brakes.health, &expander.health);
        Ok(ForDevice {
            desired: DesiredState {
                device_id: device.id.clone(),
                device_type: device.device_type.clone(),
                groups,
                roles: expander.roles,
                resources: expander.resources,
            },
            os_image,
            brakes,
        })
    }

    /// Validates the repository for every device it names: each literal device id of
    /// the inventory, each host_vars file, for every group one device of that group
    /// alone (globs stand for devices not yet known), and one device in no group. Every
    /// role under roles/ is read even if no device uses it. Returns the devices checked.
    pub(crate) fn validate_all(&self) -> Result<Vec<String>> {
        // Each problem with the devices it was found for.
        let mut found: Vec<(Invalid, Vec<String>)> = Vec::new();
        let mut checked = Vec::new();
        let mut collect = |id: &str, e: Error| match e {
            Error::Invalid(ps) => {
                for p in ps {
                    match found.iter_mut().find(|(q, _)| *q == p) {
                        Some((_, ids)) if !ids.iter().any(|i| i == id) => ids.push(id.to_string()),
                        Some(_) => {}
                        None => found.push((p, vec![id.to_string()])),
                    }
                }
                Ok(())
            }
            other => Err(other),
        };
        for id in self.named_devices() {
            let device_type = match self.host_facts(&id) {
                Ok(f) => f.device_type,
                Err(e) => {
                    collect(&id, e)?;
                    None
                }
            };
            let device = stand_in(&id, device_type);
            if let Err(e) = self.for_device(&device) {
                collect(&id, e)?;
            }
            checked.push(id);
        }
        // Stand-ins for devices not named: one of each group alone, and one in no group
        // (a device the inventory does not know gets fleet.yml's roles only).
        let stand_ins = self
            .groups
            .iter()
            .map(|g| {
                (
                    format!("(a device of group {})", g.name),
                    vec![g.name.clone()],
                )
            })
            .chain([(NO_GROUP_DEVICE.to_string(), vec![])]);
        for (id, groups) in stand_ins {
            let device = stand_in(&id, None);
            if let Err(e) = self.desired_state_in(&device, groups) {
                collect(&device.id, e)?;
            }
            checked.push(device.id);
        }
        let mut problems: Vec<Invalid> = found
            .into_iter()
            .map(|(mut p, ids)| {
                if ids.len() < checked.len() {
                    p.message.push_str(&format!(
                        " (for {} of {} devices checked: {})",
                        ids.len(),
                        checked.len(),
                        ids.join(", ")
                    ));
                }
                p
            })
            .collect();
        problems.extend(self.check_every_role()?);
        if problems.is_empty() {
            Ok(checked)
        } else {
            Err(Error::Invalid(problems))
        }
    }

    /// Every role under roles/ is read, even if no device uses it; a directory there
    /// without role.yml is a problem (files such as a README are left alone).
    pub(crate) fn check_every_role(&self) -> Result<Vec<Invalid>> {
        let mut problems = Vec::new();
        for name in self.repo.list("roles")?.unwrap_or_default() {
            let dir = format!("roles/{name}");
            if self.repo.list(&dir)?.is_none() {
                continue;
            }
            let max = self.settings.max_yaml_bytes;
            if let source::Entry::Missing = self.repo.get(&format!("{dir}/role.yml"), max)? {
                problems.push(Invalid::new(
                    Pos::file(dir.clone()),
                    format!("a role is a directory with a role.yml (and its files/ and templates/): there is no {dir}/role.yml"),
                ));
                continue;
            }
            if let Err(ps) = self.role(&name, &Pos::file(dir))? {
                extend_unique(&mut problems, ps);
            }
        }
        Ok(problems)
    }

    /// Template problems as reported: an undefined variable that some group_vars or
    /// host_vars files set says which (a device outside them has no value).
    fn explain(&self, errors: Vec<template::TemplateError>) -> Vec<Invalid> {
        errors
            .into_iter()
            .map(|e| {
                let mut p = e.problem;
                if let Some(files) = e.undefined.and_then(|name| self.set_in(&name)) {
                    p.message.push_str(&format!("; it is set only in {files}"));
                }
                p
            })
            .collect()
    }

    /// The group_vars and host_vars files whose `vars:` set a variable (at most a few
    /// named, then how many more), or None.
    fn set_in(&self, name: &str) -> Option<String> {
        let sets = |layer: &Layer| layer.vars.iter().any(|(k, _)| k == name);
        let mut files: Vec<String> = Vec::new();
        let mut groups: Vec<&String> = self.group_layers.keys().collect();
        groups.sort();
        for g in groups {
            if sets(&self.group_layers[g]) {
                files.push(format!("group_vars/{g}.yml"));
            }
        }
        for id in &self.host_ids {
            let file = format!("host_vars/{id}.yml");
            if let Ok(Some(layer)) = read_vars_file(
                self.repo,
                &file,
                self.settings.max_yaml_bytes,
                &mut Vec::new(),
            ) {
                if sets(&layer) {
                    files.push(file);
                }
            }
        }
        const SHOWN: usize = 5;
        match files.len() {
            0 => None,
            n if n > SHOWN => Some(format!(
                "{} and {} more",
                files[..SHOWN].join(", "),
                n - SHOWN
            )),
            _ => Some(files.join(", ")),
        }
    }

    /// The literal device ids of the inventory, then those of host_vars files.
    pub(crate) fn named_devices(&self) -> Vec<String> {
        let mut devices: Vec<String> = Vec::new();
        let literal = self
            .groups
            .iter()
            .flat_map(|g| g.patterns.iter().map(|(p, _)| p))
            .filter(|p| !p.contains(['*', '?', '[']));
        for id in literal.chain(&self.host_ids) {
            if !devices.contains(id) {
                devices.push(id.clone());
            }
        }
        devices
    }
}

/// A device as `validate` (and `plan --all`) checks it, off the device: stand-in
/// facts and secrets.
pub(crate) fn stand_in(id: &str, device_type: Option<String>) -> Device {
    Device {
        id: id.to_string(),
        device_type,
        reads: Arc::new(facts::StandIn {
            hostname: id.to_string(),
        }),
    }
}

/// What a device's host_vars file says about it (branch, device type), read alone:
/// which branch to follow is decided before the branch is loaded.
pub(crate) fn host_facts(repo: &Source, device_id: &str) -> Result<HostFacts> {
    let mut problems = Vec::new();
    let file = format!("host_vars/{device_id}.yml");
    // Read before the branch's settings are known: the default bound.
    let layer = read_vars_file(repo, &file, schema::MAX_YAML_BYTES, &mut problems)?;
    if !problems.is_empty() {
        return Err(Error::Invalid(problems));
    }
    Ok(layer.map(|l| l.facts).unwrap_or_default())
}

/// Variables replace by top-level name; a role named again in a later layer overrides
/// its parameters by name.
fn merge(layers: &[&Layer]) -> (BTreeMap<String, Value>, Vec<RoleRef>) {
    let mut vars: BTreeMap<String, Value> = BTreeMap::new();
    let mut role_refs: Vec<RoleRef> = Vec::new();
    for layer in layers {
        for (k, v) in &layer.vars {
            vars.insert(k.clone(), yaml::to_value(v));
        }
        for r in &layer.roles {
            match role_refs.iter_mut().find(|e| e.name == r.name) {
                Some(existing) => {
                    existing.also_at.push(r.pos.clone());
                    if r.when.is_some() {
                        existing.when = r.when.clone();
                    }
                    for p in &r.params {
                        existing.params.retain(|(n, _, _)| n != &p.0);
                        existing.params.push(p.clone());
                    }
                }
                None => role_refs.push(r.clone()),
            }
        }
    }
    (vars, role_refs)
}

/// fleet.yml's schema, format, gate, settings, `os:` and its layer.
fn read_top(repo: &Source, node: &Node, problems: &mut Vec<Invalid>) -> Result<Top> {
    let misplaced = misplaced_keys(FleetFile::NAME, node, FileKind::Fleet);
    if !misplaced.is_empty() {
        problems.extend(misplaced);
        return Ok(Top::default());
    }
    let doc = match yaml::typed::<FleetDoc>(FleetFile::NAME, node) {
        Ok(doc) => doc,
        Err(p) => {
            problems.push(p);
            return Ok(Top::default());
        }
    };
    if *doc.format != FORMAT_VERSION {
        problems.push(Invalid::at(
            FleetFile::NAME,
            doc.format.span(),
            format!(
                "format {} is not supported by fleet-agent {VERSION} (expected format: {FORMAT_VERSION})",
                *doc.format,
            ),
        ));
    }
    problems.extend(gate::check_min_version(&doc.settings));
    problems.extend(gate::check_pins(repo, &doc.settings)?);
    let os = os::read(FleetFile::NAME, node, problems);
    let all = read_layer(FleetFile::NAME, node, problems);
    Ok(Top {
        settings: doc.settings,
        os,
        all,
    })
}

fn read_inventory(repo: &Source, max: u64, problems: &mut Vec<Invalid>) -> Result<Vec<Group>> {
    let Some(parsed) = repo.yaml(INVENTORY_FILE, max)? else {
        return Ok(vec![]);
    };
    match parsed.and_then(|n| {
        if let Some(p) = misplaced_keys(INVENTORY_FILE, &n, FileKind::Inventory).pop() {
            return Err(p);
        }
        yaml::typed::<InventoryDoc>(INVENTORY_FILE, &n).map(|_| n)
    }) {
        Ok(node) => Ok(read_groups(&node, problems)),
        Err(p) => {
            problems.push(p);
            Ok(vec![])
        }
    }
}

fn read_group_vars(
    repo: &Source,
    groups: &[Group],
    max: u64,
    problems: &mut Vec<Invalid>,
) -> Result<HashMap<String, Layer>> {
    let mut layers = HashMap::new();
    for group in vars_files(repo, "group_vars", problems)? {
        let group = group.as_str();
        let file = format!("group_vars/{group}.yml");
        if group != "all" && !groups.iter().any(|g| g.name == group) {
            problems.push(Invalid::new(
                Pos::file(file),
                format!("there is no group `{group}` in {INVENTORY_FILE}"),
            ));
            continue;
        }
        if let Some(layer) = read_vars_file(repo, &file, max, problems)? {
            layers.insert(group.to_string(), layer);
        }
    }
    Ok(layers)
}

/// The fuzz target of the YAML layer (src/fuzz.rs): parse, then type the document as
/// every kind of file of the repository (with the checks of misplaced keys), and read
/// its layer as the loader does.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_yaml(data: &[u8]) {
    let Ok(node) = yaml::parse("fuzz.yml", data) else {
        return;
    };
    let _ = yaml::typed::<FleetDoc>("fuzz.yml", &node);
    let _ = yaml::typed::<schema::GroupVarsDoc>("fuzz.yml", &node);
    let _ = yaml::typed::<schema::HostVarsDoc>("fuzz.yml", &node);
    let _ = yaml::typed::<schema::RoleDoc>("fuzz.yml", &node);
    for kind in [
        FileKind::Fleet,
        FileKind::Inventory,
        FileKind::GroupVars,
        FileKind::HostVars,
        FileKind::Role,
    ] {
        let _ = misplaced_keys("fuzz.yml", &node, kind);
    }
    let _ = yaml::to_value(&node);
    let mut problems = Vec::new();
    let _ = read_layer("fuzz.yml", &node, &mut problems);
    let _ = os::read("fuzz.yml", &node, &mut problems);
    let _ = gate::requirement(&node);
}

/// The names of the `<name>.yml` files of group_vars/ or host_vars/. Anything else
/// there (`canary.yaml`, `README.md`, a subdirectory) is a problem at its path, so that a
/// misnamed override is never dropped without a word; hidden files (`.gitkeep`) are
/// ignored.
fn vars_files(repo: &Source, dir: &str, problems: &mut Vec<Invalid>) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for name in repo.list(dir)?.unwrap_or_default() {
        if name.starts_with('.') {
            continue;
        }
        match name.strip_suffix(".yml").filter(|s| !s.is_empty()) {
            Some(stem) => names.push(stem.to_string()),
            None => {
                let hint = match name.strip_suffix(".yaml") {
                    Some(stem) => format!(": rename it to {dir}/{stem}.yml"),
                    None => String::new(),
                };
                problems.push(Invalid::new(
                    Pos::file(format!("{dir}/{name}")),
                    format!("not a vars file: {dir}/ holds only <name>.yml files (hidden files are ignored){hint}"),
                ));
            }
        }
    }
    Ok(names)
}

#[cfg(test)]
pub(crate) mod tests;
