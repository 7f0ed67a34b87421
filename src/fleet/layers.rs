//! The layers of variables and role references (fleet.yml, group_vars, host_vars) and
//! the inventory's groups: read by hand from the YAML, with the position of every value.
//! Also the `when:` conditions of role references and resources, and a layer's
//! `os_image:` (the OS image of one group or device).

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{Node, Spanned};

use crate::error::{span_pos, Invalid, Pos, Result};
use crate::fleet::os::{self, Image};
use crate::fleet::schema::{misplaced_keys, FileKind, GroupDoc, GroupVarsDoc, HostVarsDoc};
use crate::fleet::source::Source;
use crate::fleet::{yaml, HostFacts};

/// A `when:` condition: an expression over vars, params and `device` (facts included),
/// in the file where it is written.
#[derive(Clone, Debug)]
pub(super) struct When {
    pub(super) file: String,
    pub(super) expr: Spanned<String>,
}

impl When {
    /// The `when:` of a mapping (a resource item or a role reference); a problem when it
    /// is not a text.
    pub(super) fn read(file: &str, node: &Node, problems: &mut Vec<Invalid>) -> Option<When> {
        match node {
            Node::Scalar(s) if !s.as_str().trim().is_empty() => Some(When {
                file: file.to_string(),
                expr: Spanned::new(*s.span(), s.as_str().to_string()),
            }),
            _ => {
                problems.push(Invalid::at(
                    file,
                    node.span(),
                    "expected `when:` as a condition: an expression such as `device.facts.architecture == \"arm64\"` or `kiosk_url is defined`",
                ));
                None
            }
        }
    }
}

pub(super) const INVENTORY_FILE: &str = "inventory.yml";

/// A reference to a role: where it is named and the parameters given there.
#[derive(Clone)]
pub(super) struct RoleRef {
    pub(super) name: String,
    pub(super) pos: Pos,
    pub(super) params: Vec<(String, Pos, Node)>,
    /// Where later layers name the same role again (their parameters are merged in).
    pub(super) also_at: Vec<Pos>,
    /// Applied only when this holds (a later layer's `when:` replaces an earlier one).
    pub(super) when: Option<When>,
}

/// One layer of variables and roles: fleet.yml, a group_vars or a host_vars file.
#[derive(Default)]
pub(super) struct Layer {
    pub(super) vars: Vec<(String, Node)>,
    pub(super) roles: Vec<RoleRef>,
    pub(super) facts: HostFacts,
    /// `os_image:` of a group_vars or host_vars file, and where it is written.
    pub(super) os_image: Option<(Image, Pos)>,
    /// `rollout:` and `maintenance:` (fleet.yml and group_vars only).
    pub(super) brakes: crate::release::Brakes,
}

/// An inventory group: device ids or globs, and device types.
pub(super) struct Group {
    pub(super) name: String,
    pub(super) patterns: Vec<(String, Pos)>,
    pub(super) device_types: Vec<String>,
}

pub(super) fn read_layer(file: &str, node: &Node, problems: &mut Vec<Invalid>) -> Layer {
    let map = node.as_mapping().expect("top level is a mapping");
    let vars = match map.get_node("vars") {
        None => vec![],
        Some(Node::Mapping(m)) => m
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.clone()))
            .collect(),
        Some(Node::Scalar(s)) if s.as_str().is_empty() => vec![],
        Some(n) => {
            problems.push(Invalid::at(
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
        os_image: None,
        brakes: super::brakes::read(file, map, problems),
    }
}

pub(super) fn read_vars_file(
    repo: &Source,
    file: &str,
    max: u64,
    problems: &mut Vec<Invalid>,
) -> Result<Option<Layer>> {
    let Some(parsed) = repo.yaml(file, max)? else {
        return Ok(None);
    };
    let host = file.starts_with("host_vars/");
    let kind = if host {
        FileKind::HostVars
    } else {
        FileKind::GroupVars
    };
    let node = match parsed {
        Ok(node) => node,
        Err(p) => {
            problems.push(p);
            return Ok(None);
        }
    };
    let misplaced = misplaced_keys(file, &node, kind);
    if !misplaced.is_empty() {
        problems.extend(misplaced);
        return Ok(None);
    }
    let facts = if host {
        match yaml::typed::<HostVarsDoc>(file, &node) {
            Ok(doc) => host_facts(file, doc, problems),
            Err(p) => {
                problems.push(p);
                return Ok(None);
            }
        }
    } else {
        if let Err(p) = yaml::typed::<GroupVarsDoc>(file, &node) {
            problems.push(p);
            return Ok(None);
        }
        HostFacts::default()
    };
    let mut layer = read_layer(file, &node, problems);
    layer.facts = facts;
    let os_image = node
        .as_mapping()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == "os_image"));
    if let Some((key, n)) = os_image {
        layer.os_image =
            os::read_image_override(file, n, problems).map(|img| (img, span_pos(file, key.span())));
    }
    Ok(Some(layer))
}

fn host_facts(file: &str, doc: HostVarsDoc, problems: &mut Vec<Invalid>) -> HostFacts {
    if let Some(b) = &doc.branch {
        let ok =
            !b.is_empty() && git2::Reference::is_valid_name(&format!("refs/heads/{}", b.as_str()));
        if !ok {
            problems.push(Invalid::at(
                file,
                b.span(),
                format!("`{}` is not a branch name", b.as_str()),
            ));
        }
    }
    HostFacts {
        branch: doc.branch.map(|b| b.to_string()),
        device_type: doc.device_type.map(|t| t.to_string()),
    }
}

pub(super) fn read_groups(node: &Node, problems: &mut Vec<Invalid>) -> Vec<Group> {
    let file = INVENTORY_FILE;
    let map = node.as_mapping().expect("top level is a mapping");
    let Some(gnode) = map.get_node("groups") else {
        return vec![];
    };
    let Some(gmap) = gnode.as_mapping() else {
        problems.push(Invalid::at(
            file,
            gnode.span(),
            "expected a mapping of group names",
        ));
        return vec![];
    };
    let mut groups = Vec::new();
    for (name, g) in gmap.iter() {
        if name.as_str() == "all" {
            problems.push(Invalid::at(
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
                    .map(|d| (d.to_string(), span_pos(file, d.span())))
                    .collect(),
                device_types: doc.device_types,
            }),
            Err(p) => problems.push(p),
        }
    }
    groups
}

/// `roles:` / `include:` entries: `name` or `{role: name, params: {...}}`.
pub(super) fn read_role_refs(file: &str, node: &Node, problems: &mut Vec<Invalid>) -> Vec<RoleRef> {
    let Some(seq) = node.as_sequence() else {
        if !matches!(node, Node::Scalar(s) if s.as_str().is_empty()) {
            problems.push(Invalid::at(file, node.span(), "expected a list of roles"));
        }
        return vec![];
    };
    let mut refs = Vec::new();
    for item in seq.iter() {
        match item {
            Node::Scalar(s) => refs.push(RoleRef {
                name: s.as_str().to_string(),
                pos: span_pos(file, s.span()),
                params: vec![],
                also_at: vec![],
                when: None,
            }),
            Node::Mapping(m) => {
                if let Some(r) = read_role_ref_map(file, m, problems) {
                    refs.push(r)
                }
            }
            Node::Sequence(s) => problems.push(Invalid::at(
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
        if !["role", "params", "when"].contains(&k.as_str()) {
            problems.push(Invalid::at(
                file,
                k.span(),
                format!(
                    "unknown key `{}`, expected one of: role, params, when",
                    k.as_str()
                ),
            ));
            return None;
        }
    }
    let when = match m.get_node("when") {
        Some(n) => Some(When::read(file, n, problems)?),
        None => None,
    };
    let Some(name) = m.get_scalar("role") else {
        problems.push(Invalid::at(file, m.span(), "expected `role: NAME`"));
        return None;
    };
    let params = match m.get_node("params") {
        None => vec![],
        Some(Node::Mapping(p)) => p
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), span_pos(file, k.span()), v.clone()))
            .collect(),
        Some(n) => {
            problems.push(Invalid::at(
                file,
                n.span(),
                "expected a mapping of parameter names to values",
            ));
            return None;
        }
    };
    Some(RoleRef {
        name: name.as_str().to_string(),
        pos: span_pos(file, name.span()),
        params,
        also_at: vec![],
        when,
    })
}
