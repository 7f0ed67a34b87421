//! Expansion: a device's role references, through parameters, includes and templates,
//! into typed resources. Each resource kind expands its own spec (src/resources); this
//! gives it the role's context ([`Expand`]) and checks what spans resources: a role used
//! twice with other parameters, two resources managing one thing, include cycles.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use marked_yaml::{Node, Span, Spanned};
use minijinja::Value;

use crate::content::Content;
use crate::error::{extend_unique, span_pos, Invalid, Pos, Result};
use crate::fleet::facts::DeviceReads;
use crate::fleet::layers::{RoleRef, When};
use crate::fleet::roles::{as_choice, RoleDef};
use crate::fleet::template::Templates;
use crate::fleet::{yaml, Fleet};
use crate::resources::{Expand, Kind, Reserved, Resource};

pub(super) struct Expander<'f, 'a> {
    fleet: &'f Fleet<'a>,
    templates: Templates,
    pub(super) vars: BTreeMap<String, Value>,
    /// Instantiated roles: name → (parameters, where first used).
    instances: HashMap<String, (String, Pos)>,
    /// Resource ids → where declared, to find two roles managing one thing.
    claimed: HashMap<String, Pos>,
    pub(super) resources: Vec<Resource>,
    pub(super) roles: Vec<String>,
    /// The `health:` checks of the roles applied.
    pub(super) health: Vec<crate::release::Health>,
    pub(super) problems: Vec<Invalid>,
    /// The bytes of the device's file contents so far (max_total_file_bytes).
    file_bytes: u64,
}

impl<'f, 'a> Expander<'f, 'a> {
    pub(super) fn new(
        fleet: &'f Fleet<'a>,
        vars: BTreeMap<String, Value>,
        problems: Vec<Invalid>,
        reads: Arc<dyn DeviceReads>,
    ) -> Expander<'f, 'a> {
        Expander {
            fleet,
            templates: Templates::new(
                fleet.settings.max_template_steps,
                fleet.settings.max_file_bytes,
                reads,
            ),
            vars,
            instances: HashMap::new(),
            claimed: HashMap::new(),
            resources: Vec::new(),
            roles: Vec::new(),
            health: Vec::new(),
            problems,
            file_bytes: 0,
        }
    }

    /// Expands a role reference with the context of whoever names it; includes first.
    pub(super) fn expand(
        &mut self,
        r: &RoleRef,
        caller: &Value,
        stack: &mut Vec<String>,
    ) -> Result<()> {
        if self.templates.exhausted() {
            return Ok(());
        }
        if let Some(i) = stack.iter().position(|n| n == &r.name) {
            let cycle = stack[i..]
                .iter()
                .chain([&r.name])
                .cloned()
                .collect::<Vec<_>>()
                .join(" → ");
            self.problems.push(Invalid::new(
                r.pos.clone(),
                format!("roles include each other: {cycle}"),
            ));
            return Ok(());
        }
        let def = match self.fleet.role(&r.name, &r.pos)? {
            Ok(d) => d,
            Err(ps) => {
                // A role that is not there is a problem at every place naming it.
                extend_unique(&mut self.problems, ps);
                for at in &r.also_at {
                    if let Err(ps) = self.fleet.role(&r.name, at)? {
                        extend_unique(&mut self.problems, ps);
                    }
                }
                return Ok(());
            }
        };
        if let Some(w) = &r.when {
            if !self.holds(w, caller) {
                return Ok(());
            }
        }
        let Some(params) = self.params(&def, r, caller) else {
            return Ok(());
        };
        let key = format!("{params:?}");
        if let Some((prev, at)) = self.instances.get(&def.name) {
            if prev != &key {
                self.problems.push(Invalid::new(
                    r.pos.clone(),
                    format!("role `{}` is used with other parameters at {at}; a role is applied once per device", def.name),
                ));
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
        self.health.extend(def.health.clone());
        self.add_resources(&def, &ctx)
    }

    /// The role's parameters: given ones rendered in the caller's context, then
    /// defaults. None when a problem was found.
    fn params(
        &mut self,
        def: &RoleDef,
        r: &RoleRef,
        caller: &Value,
    ) -> Option<BTreeMap<String, Value>> {
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
                self.problems.push(Invalid::new(
                    pos.clone(),
                    format!(
                        "role `{}` has no parameter `{name}` (its parameters: {})",
                        def.name,
                        if known.is_empty() { "none" } else { &known }
                    ),
                ));
                ok = false;
                continue;
            }
            // The parameter's own file: a later layer may give it (group_vars over
            // fleet.yml), and its node's position is in that file.
            match self
                .render_node(&pos.file, node, caller)
                .and_then(|v| as_choice(def, name, v, &pos.file, node).map_err(|p| vec![p]))
            {
                Ok(v) => {
                    params.insert(name.clone(), v);
                }
                Err(ps) => {
                    self.problems.extend(ps);
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
                    .and_then(|v| as_choice(def, &p.name, v, &def.file, d).map_err(|e| vec![e]))
                {
                    Ok(v) => {
                        params.insert(p.name.clone(), v);
                    }
                    Err(es) => {
                        self.problems.extend(es);
                        ok = false;
                    }
                },
                None if p.required => {
                    self.problems.push(Invalid::new(
                        r.pos.clone(),
                        format!("role `{}` needs the parameter `{}`", def.name, p.name),
                    ));
                    ok = false;
                }
                None => {}
            }
        }
        ok.then_some(params)
    }

    /// Whether a `when:` holds in a context; a problem (and false) when it cannot be
    /// evaluated.
    fn holds(&mut self, w: &When, ctx: &Value) -> bool {
        match self
            .templates
            .condition(&w.file, w.expr.span(), w.expr.as_str(), ctx)
        {
            Ok(b) => b,
            Err(errors) => {
                let explained = self.fleet.explain(errors);
                extend_unique(&mut self.problems, explained);
                false
            }
        }
    }

    /// Expands the role's resources (those whose `when:` holds); two resources on one
    /// thing is a problem.
    fn add_resources(&mut self, def: &RoleDef, ctx: &Value) -> Result<()> {
        if self.templates.exhausted() {
            return Ok(());
        }
        for (pos, (when, disruptive), spec) in &def.resources {
            // The template steps are used up: a problem says where; nothing more renders.
            if self.templates.exhausted() {
                break;
            }
            if let Some(w) = when {
                if !self.holds(w, ctx) {
                    continue;
                }
            }
            let mut cx = RoleContext {
                fleet: self.fleet,
                templates: &self.templates,
                def,
                ctx,
                problems: Vec::new(),
            };
            let kinds = spec.expand(&mut cx)?;
            self.problems.append(&mut cx.problems);
            for kind in kinds.unwrap_or_default() {
                let id = kind.id();
                if let Some(prev) = self.claimed.get(&id) {
                    self.problems.push(Invalid::new(
                        pos.clone(),
                        format!(
                            "{} is also managed by the resource at {prev}",
                            kind.subject()
                        ),
                    ));
                    continue;
                }
                self.claimed.insert(id, pos.clone());
                let max = self.fleet.settings.max_total_file_bytes;
                if let Some(p) = count_bytes(&mut self.file_bytes, max, &kind, pos) {
                    self.problems.push(p);
                }
                self.resources.push(Resource {
                    disruptive: *disruptive,
                    role: def.name.clone(),
                    declared_at: pos.clone(),
                    kind,
                });
            }
        }
        Ok(())
    }

    /// Every `on_change` of a command names a resource declared for this device (a
    /// resource that a `when:` leaves out is not declared), and a command it names comes
    /// before it (commands run in declared order).
    pub(super) fn check_on_change(&mut self) {
        let mut problems = Vec::new();
        for (i, r) in self.resources.iter().enumerate() {
            let Kind::Command(c) = &r.kind else { continue };
            for reference in &c.on_change {
                let at = self
                    .resources
                    .iter()
                    .position(|o| o.kind.id() == reference.id);
                let message = match at {
                    None => format!(
                        "on_change: `{}` is not declared for this device (a resource that a `when:` leaves out is not declared)",
                        reference.id.strip_prefix("path:").unwrap_or(&reference.id)
                    ),
                    Some(j) if matches!(self.resources[j].kind, Kind::Command(_)) && j >= i => format!(
                        "on_change: `{}` is not a command declared before this one (commands run in declared order)",
                        reference.id
                    ),
                    Some(j) if matches!(self.resources[j].kind, Kind::Service(_) | Kind::Absent(_)) => format!(
                        "on_change: `{}` is not a resource whose change a command can follow",
                        reference.id
                    ),
                    Some(_) => continue,
                };
                problems.push(Invalid::new(reference.at.clone(), message));
            }
        }
        extend_unique(&mut self.problems, problems);
    }

    /// A node as a value, every string in it rendered as a template.
    fn render_node(&self, file: &str, node: &Node, ctx: &Value) -> Result<Value, Vec<Invalid>> {
        match node {
            Node::Scalar(s)
                if !s.may_coerce()
                    || matches!(
                        yaml::to_value(node).kind(),
                        minijinja::value::ValueKind::String
                    ) =>
            {
                self.templates
                    .render(file, s.span(), s.as_str(), ctx)
                    .map(Value::from)
                    .map_err(|errors| self.fleet.explain(errors))
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
                .collect::<Result<BTreeMap<_, _>, Vec<Invalid>>>()
                .map(Value::from_iter),
        }
    }
}

/// Adds a file's content to the device's total; the resource that crosses `max` (the
/// fleet's `max_total_file_bytes`) is a problem.
fn count_bytes(total: &mut u64, max: u64, kind: &Kind, pos: &Pos) -> Option<Invalid> {
    let Kind::File(f) = kind else { return None };
    let before = *total;
    *total += f.content.len();
    (before <= max && *total > max).then(|| {
        Invalid::new(
            pos.clone(),
            format!("the device's files add up to more than {max} bytes with this one (max_total_file_bytes; fleet.yml settings)"),
        )
    })
}

/// One role's context for its resources: templates render with its variables and
/// parameters, files come from its directory, problems point into its role.yml.
struct RoleContext<'x, 'a> {
    fleet: &'x Fleet<'a>,
    templates: &'x Templates,
    def: &'x RoleDef,
    ctx: &'x Value,
    problems: Vec<Invalid>,
}

impl Expand for RoleContext<'_, '_> {
    fn role(&self) -> &str {
        &self.def.name
    }

    fn text(&mut self, s: &Spanned<String>) -> Option<String> {
        match self
            .templates
            .render(&self.def.file, s.span(), s.as_str(), self.ctx)
        {
            Ok(text) => Some(text),
            Err(errors) => {
                let explained = self.fleet.explain(errors);
                self.problems.extend(explained);
                None
            }
        }
    }

    fn source(&mut self, name: &Spanned<String>) -> Result<Option<Content>> {
        Ok(self
            .fleet
            .role_file(self.def, "files", name)?
            .map_err(|p| self.problems.push(p))
            .ok())
    }

    fn template(&mut self, name: &Spanned<String>) -> Result<Option<Vec<u8>>> {
        let bytes = match self.fleet.role_file(self.def, "templates", name)? {
            Ok(c) => c.read_all()?,
            Err(p) => {
                self.problems.push(p);
                return Ok(None);
            }
        };
        let label = format!(
            "{}{}/templates/{}",
            if self.def.builtin { "builtin:" } else { "" },
            self.def.dir,
            name.as_str()
        );
        match self.templates.render_file(label, &bytes, self.ctx) {
            Ok(rendered) => Ok(Some(rendered)),
            Err(errors) => {
                let explained = self.fleet.explain(errors);
                self.problems.extend(explained);
                Ok(None)
            }
        }
    }

    fn problem(&mut self, span: &Span, message: String) {
        self.problems
            .push(Invalid::at(&self.def.file, span, message));
    }

    fn problems(&self) -> usize {
        self.problems.len()
    }

    fn reserved(&self) -> &Reserved {
        &self.fleet.reserved
    }

    fn secrets_read(&self) -> usize {
        self.templates.secrets_read()
    }

    fn pos(&self, span: &Span) -> Pos {
        span_pos(&self.def.file, span)
    }
}
