//! Roles: a role.yml read into its parameters (with defaults and choices), included
//! roles and resource specs, looked up in the fleet repository first and then among the
//! built-in roles; and the role's own files (`files/`, `templates/`), which never leave it.

use std::path::{Component, Path};
use std::rc::Rc;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{Node, Spanned};
use minijinja::Value;

use crate::content::Content;
use crate::error::{span_pos, Invalid, Pos, Result};
use crate::fleet::layers::{read_role_refs, RoleRef, When};
use crate::fleet::schema::{misplaced_keys, FileKind, ParamDoc, RoleDoc};
use crate::fleet::source::Entry;
use crate::fleet::{yaml, Fleet};
use crate::resources::Spec;

pub(super) struct ParamDef {
    pub(super) name: String,
    pub(super) required: bool,
    pub(super) default: Option<Node>,
    /// `choices:` the values the parameter may take: (as written, typed as YAML reads it).
    choices: Option<Vec<(String, Value)>>,
}

pub(super) struct RoleDef {
    pub(super) name: String,
    /// Where the role's files are, relative to its source: "roles/<name>" or "<name>".
    pub(super) dir: String,
    /// The label used in positions: "roles/<name>/role.yml" or "builtin:<name>/role.yml".
    pub(super) file: String,
    pub(super) builtin: bool,
    pub(super) params: Vec<ParamDef>,
    pub(super) includes: Vec<RoleRef>,
    /// Each resource with the position of its kind (`- file:`), its `when:` and
    /// whether it is disruptive (deferred by a maintenance window or the hold file).
    pub(super) resources: Vec<(Pos, Marks, Spec)>,
    /// The role's own `health:` checks, added to the fleet's or group's.
    pub(super) health: Option<crate::release::Health>,
}

/// A role, or why it cannot be used.
pub(super) type RoleLookup = Result<Rc<RoleDef>, Vec<Invalid>>;

/// What loading a role found, cached by name. A role that cannot be found is a problem
/// at every place that names it, so it is not cached as problems of the first one.
#[derive(Clone)]
pub(super) enum Loaded {
    Role(RoleLookup),
    /// No role.yml in the repository or among the built-in roles.
    Missing,
    /// Not a role name.
    BadName,
}

impl Fleet<'_> {
    /// A role by name: the fleet repository's roles/<name> first, then the built-in one.
    pub(super) fn role(&self, name: &str, used_at: &Pos) -> Result<RoleLookup> {
        let cached = self.roles.borrow().get(name).cloned();
        let loaded = match cached {
            Some(l) => l,
            None => {
                let l = self.load_role(name)?;
                self.roles.borrow_mut().insert(name.to_string(), l.clone());
                l
            }
        };
        let problem = |message: String| Ok(Err(vec![Invalid::new(used_at.clone(), message)]));
        match loaded {
            Loaded::Role(r) => Ok(r),
            Loaded::BadName => problem(format!(
                "`{name}` is not a role name (letters, digits, - and _)"
            )),
            Loaded::Missing => problem(format!(
                "no role `{name}`: expected roles/{name}/role.yml in the fleet repository or a built-in role"
            )),
        }
    }

    fn load_role(&self, name: &str) -> Result<Loaded> {
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid_name {
            return Ok(Loaded::BadName);
        }
        let max = self.settings.max_yaml_bytes;
        let rel = format!("roles/{name}/role.yml");
        let (dir, file, builtin, entry) = match self.repo.get(&rel, max)? {
            Entry::Missing => {
                let found = match self.builtin {
                    Some(b) => b.get(&format!("{name}/role.yml"), max)?,
                    None => Entry::Missing,
                };
                let file = format!("builtin:{name}/role.yml");
                (name.to_string(), file, true, found)
            }
            found => (format!("roles/{name}"), rel, false, found),
        };
        let text = match entry {
            Entry::File(text) => text,
            Entry::Missing => return Ok(Loaded::Missing),
            other => {
                let problem = other.problem(&file, "max_yaml_bytes", max);
                return Ok(Loaded::Role(Err(vec![problem])));
            }
        };
        Ok(Loaded::Role(
            self.parse_role(name, dir, file, builtin, &text),
        ))
    }

    fn parse_role(
        &self,
        name: &str,
        dir: String,
        file: String,
        builtin: bool,
        text: &[u8],
    ) -> RoleLookup {
        let mut node = match yaml::parse(&file, text) {
            Ok(n) => n,
            Err(p) => return Err(vec![p]),
        };
        let mut problems = Vec::new();
        let whens = take_whens(&file, &mut node, &mut problems);
        let mut shape = misplaced_keys(&file, &node, FileKind::Role);
        shape.extend(one_key_resources(&file, &node));
        if !shape.is_empty() {
            return Err(shape);
        }
        let doc = match yaml::typed::<RoleDoc>(&file, &node) {
            Ok(d) => d,
            Err(p) => return Err(vec![p]),
        };
        let map = node.as_mapping().expect("top level is a mapping");
        let params = read_params(&file, map, &mut problems);
        let positions = resource_positions(&file, map);
        let includes = match map.get_node("include") {
            Some(n) => read_role_refs(&file, n, &mut problems),
            None => vec![],
        };
        let health = (map.iter().find(|(k, _)| k.as_str() == "health"))
            .and_then(|(k, v)| super::brakes::health(&file, k.span(), v, &mut problems));
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Rc::new(RoleDef {
            name: name.to_string(),
            dir,
            file,
            builtin,
            params,
            includes,
            health,
            resources: positions
                .into_iter()
                .zip(whens)
                .zip(doc.resources)
                .map(|((pos, marks), spec)| (pos, marks, spec))
                .collect(),
        }))
    }

    /// Reads `files/<name>` or `templates/<name>` of a role; the name may not leave it.
    /// Ok(Err(problem)) when the name escapes or there is no such file.
    pub(super) fn role_file(
        &self,
        def: &RoleDef,
        sub: &str,
        name: &Spanned<String>,
    ) -> Result<Result<Content, Invalid>> {
        let rel = Path::new(name.as_str());
        let escapes = name.is_empty()
            || rel.is_absolute()
            || rel.components().any(|c| !matches!(c, Component::Normal(_)));
        if escapes {
            return Ok(Err(Invalid::at(
                &def.file,
                name.span(),
                format!("`{}` leaves the role's {sub}/ directory: expected a relative path inside it, without `..`", name.as_str()),
            )));
        }
        let path = format!("{}/{sub}/{}", def.dir, name.as_str());
        let source = if def.builtin {
            self.builtin.expect("built-in role has a source")
        } else {
            self.repo
        };
        let max = self.settings.max_file_bytes;
        let shown = if def.builtin {
            format!("builtin:{path}")
        } else {
            path.clone()
        };
        // A problem with the file is shown where role.yml names it.
        let problem = |p: Invalid| {
            let builtin = if def.builtin { "builtin:" } else { "" };
            let message = format!("{builtin}{}: {}", p.pos.file, p.message);
            Ok(Err(Invalid::at(&def.file, name.span(), message)))
        };
        match source.content(&path)? {
            // A file of files/ is streamed (never held in memory whole), a template is
            // rendered in memory: both are held to max_file_bytes, which also bounds
            // what a branch can make a device download and write.
            Ok(content) if content.len() > max => {
                problem(Entry::TooBig(content.len()).problem(&path, "max_file_bytes", max))
            }
            Ok(content) => Ok(Ok(content)),
            Err(Entry::Missing) => Ok(Err(Invalid::at(
                &def.file,
                name.span(),
                format!("{shown} does not exist"),
            ))),
            Err(other) => problem(other.problem(&path, "max_file_bytes", max)),
        }
    }
}

/// `params:` of a role.yml: each a `{default: V}`, `{required: true}` (with optional
/// `choices:`), or `name:` alone (required).
fn read_params(file: &str, map: &MarkedMappingNode, problems: &mut Vec<Invalid>) -> Vec<ParamDef> {
    let Some(pnode) = map.get_node("params") else {
        return vec![];
    };
    let Some(pmap) = pnode.as_mapping() else {
        problems.push(Invalid::at(
            file,
            pnode.span(),
            "expected a mapping of parameter names",
        ));
        return vec![];
    };
    let mut params = Vec::new();
    for (k, v) in pmap.iter() {
        let (required, default, choices) = match v {
            // `name:` alone (null) declares a parameter without default, required.
            Node::Scalar(s) if s.as_str().is_empty() => (true, None, None),
            Node::Mapping(m) => match yaml::typed::<ParamDoc>(file, v) {
                Ok(d) if d.required && m.get_node("default").is_some() => {
                    problems.push(Invalid::at(
                        file,
                        k.span(),
                        "a parameter is either required or has a default, not both",
                    ));
                    continue;
                }
                Ok(d) => match param_choices(file, m.get_node("choices")) {
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
            },
            _ => {
                problems.push(Invalid::at(
                    file,
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
    params
}

/// Takes each resource's `when:` and `disruptive:` out of its mapping (a resource is
/// otherwise one key, its kind), in resource order.
fn take_whens(file: &str, node: &mut Node, problems: &mut Vec<Invalid>) -> Vec<Marks> {
    let Some(items) = node
        .as_mapping_mut()
        .and_then(|m| m.get_mut("resources"))
        .and_then(Node::as_sequence_mut)
    else {
        return vec![];
    };
    let mut marks = Vec::new();
    for item in items.iter_mut() {
        let Some(map) = item.as_mapping_mut() else {
            marks.push((None, false));
            continue;
        };
        let when = (map.remove("when")).and_then(|w| When::read(file, &w, problems));
        let disruptive = match map.remove("disruptive") {
            None => false,
            Some(Node::Scalar(s)) if ["true", "false"].contains(&s.as_str()) => {
                s.as_str() == "true"
            }
            Some(n) => {
                problems.push(Invalid::at(
                    file,
                    n.span(),
                    "expected `disruptive:` as true or false",
                ));
                false
            }
        };
        marks.push((when, disruptive));
    }
    marks
}

/// A resource's `when:` and whether it is marked `disruptive: true`.
type Marks = (Option<When>, bool);

/// Each resource is a mapping with one key, its kind, and its settings under it. The
/// commonest slip (from Ansible's task syntax) writes the settings at the level of the
/// kind; say so where it happens.
fn one_key_resources(file: &str, node: &Node) -> Vec<Invalid> {
    let Some(items) = node.as_mapping().and_then(|m| m.get_sequence("resources")) else {
        return vec![];
    };
    let mut problems = Vec::new();
    for item in items.iter() {
        let Some(map) = item.as_mapping() else {
            continue;
        };
        let keys: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        let Some((kind, settings)) = keys.split_first().filter(|(_, rest)| !rest.is_empty()) else {
            continue;
        };
        let first = map.keys().next().expect("a key");
        let empty_kind =
            matches!(map.get_node(kind), Some(Node::Scalar(s)) if s.as_str().is_empty());
        let hint = if empty_kind {
            format!("indent {} under `{kind}:`", settings.join(", "))
        } else {
            "give each resource its own `- KIND:` item".to_string()
        };
        problems.push(Invalid::at(
            file,
            first.span(),
            format!(
                "a resource is one key naming its kind, with its settings under it (`- {kind}: {{...}}`); this one has {} keys ({}): {hint}",
                keys.len(),
                keys.join(", ")
            ),
        ));
    }
    problems
}

/// Positions of the resources: the key naming each one's kind.
fn resource_positions(file: &str, map: &MarkedMappingNode) -> Vec<Pos> {
    map.get_sequence("resources")
        .map(|seq| {
            seq.iter()
                .map(
                    |item| match item.as_mapping().and_then(|m| m.keys().next()) {
                        Some(k) => span_pos(file, k.span()),
                        None => span_pos(file, item.span()),
                    },
                )
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
}

/// A parameter's `choices:`: a list of plain values, kept as written and typed.
fn param_choices(file: &str, node: Option<&Node>) -> Result<Option<Vec<(String, Value)>>, Invalid> {
    let Some(node) = node else { return Ok(None) };
    let expected = "expected `choices:` as a list of plain values, such as [0, 90, 180, 270]";
    let Some(seq) = node.as_sequence() else {
        return Err(Invalid::at(file, node.span(), expected));
    };
    let mut choices = Vec::new();
    for item in seq.iter() {
        match item {
            Node::Scalar(s) if !s.as_str().is_empty() => {
                choices.push((s.as_str().to_string(), yaml::to_value(item)))
            }
            _ => return Err(Invalid::at(file, item.span(), expected)),
        }
    }
    if choices.is_empty() {
        return Err(Invalid::at(file, node.span(), expected));
    }
    Ok(Some(choices))
}

/// A parameter value checked against its `choices:` (compared as rendered text, so that a
/// templated `"90"` matches a plain 90): the matching choice's own typed value (so that a
/// templated or quoted `"false"` becomes the boolean false a template tests, not a
/// non-empty string), the value itself without choices, or a problem where it is written.
pub(super) fn as_choice(
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
    Err(Invalid::at(
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
