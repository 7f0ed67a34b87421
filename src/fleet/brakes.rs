//! `rollout:` and `maintenance:` of fleet.yml and group_vars files (docs/rollouts.md),
//! read by hand with the position of every value. The decisions they feed are in
//! src/release/.

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{Node, Span};

use crate::error::{span_pos, Invalid};
use crate::release::{self, Brakes, Health, Rollout, Window};

/// The brakes a layer declares (none of them when a value is wrong: a problem says why).
pub(super) fn read(file: &str, map: &MarkedMappingNode, problems: &mut Vec<Invalid>) -> Brakes {
    let mut brakes = Brakes::default();
    for (k, v) in map.iter() {
        match k.as_str() {
            "rollout" => brakes.rollout = rollout(file, k.span(), v, problems),
            "maintenance" => brakes.window = window(file, k.span(), v, problems),
            "health" => brakes.health = health(file, k.span(), v, problems),
            _ => {}
        }
    }
    brakes
}

/// The scalar values of a mapping with the keys `allowed` only, each required unless
/// its name ends in `?` (then None when missing).
fn fields<'n>(
    file: &str,
    key_span: &Span,
    node: &'n Node,
    allowed: &[&str],
    example: &str,
    problems: &mut Vec<Invalid>,
) -> Option<Vec<Option<&'n marked_yaml::types::MarkedScalarNode>>> {
    let names: Vec<&str> = allowed.iter().map(|k| k.trim_end_matches('?')).collect();
    let Some(map) = node.as_mapping() else {
        problems.push(Invalid::at(
            file,
            node.span(),
            format!("expected a mapping such as `{example}`"),
        ));
        return None;
    };
    let before = problems.len();
    for (k, _) in map.iter() {
        if !names.contains(&k.as_str()) {
            problems.push(Invalid::at(
                file,
                k.span(),
                format!(
                    "unknown key `{}`: expected {}",
                    k.as_str(),
                    names.join(", ")
                ),
            ));
        }
    }
    let mut values = Vec::new();
    for (key, optional) in names.iter().zip(allowed.iter().map(|k| k.ends_with('?'))) {
        match map.get_node(key) {
            Some(Node::Scalar(s)) => values.push(Some(s)),
            None if optional => values.push(None),
            Some(n) => problems.push(Invalid::at(
                file,
                n.span(),
                format!("expected `{key}:` as a single value"),
            )),
            None => problems.push(Invalid::at(
                file,
                key_span,
                format!("missing `{key}:` (for example `{example}`)"),
            )),
        }
    }
    (problems.len() == before).then_some(values)
}

fn rollout(file: &str, key: &Span, node: &Node, problems: &mut Vec<Invalid>) -> Option<Rollout> {
    let example = "rollout: {id: 2026-12-release, percent: 10}";
    let v = fields(file, key, node, &["id", "percent"], example, problems)?;
    let (Some(id), Some(percent)) = (v[0], v[1]) else {
        return None;
    };
    if id.as_str().trim().is_empty() {
        problems.push(Invalid::at(
            file,
            id.span(),
            "expected a rollout identifier: a name for this release, such as `2026-12-release`",
        ));
        return None;
    }
    let Some(basis_points) = release::parse_percent(percent.as_str()) else {
        problems.push(Invalid::at(
            file,
            percent.span(),
            format!(
                "expected a percentage from 0 to 100 (at most two decimals), not `{}`",
                percent.as_str()
            ),
        ));
        return None;
    };
    Some(Rollout {
        id: id.as_str().trim().to_string(),
        basis_points,
        declared_at: span_pos(file, key).to_string(),
    })
}

fn window(file: &str, key: &Span, node: &Node, problems: &mut Vec<Invalid>) -> Option<Window> {
    let v = fields(
        file,
        key,
        node,
        &["window", "unsynchronized_clock?"],
        "maintenance: {window: \"02:00-04:00\"}",
        problems,
    )?;
    let text = v[0]?;
    let trust_clock = match v[1].map(|c| c.as_str()) {
        None | Some("defer") => false,
        Some("trust") => true,
        Some(other) => {
            problems.push(Invalid::at(
                file,
                v[1]?.span(),
                format!("expected `unsynchronized_clock:` as `defer` (the default) or `trust`, not `{other}`"),
            ));
            return None;
        }
    };
    match release::parse_window(text.as_str()) {
        Ok((start, end)) => Some(Window {
            start,
            end,
            trust_clock,
            declared_at: span_pos(file, key).to_string(),
        }),
        Err(m) => {
            problems.push(Invalid::at(file, text.span(), m));
            None
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthDoc {
    timeout_seconds: Option<u64>,
    #[serde(default)]
    units: Vec<String>,
    #[serde(default)]
    commands: Vec<String>,
    #[serde(default)]
    urls: Vec<String>,
}

/// `health: {timeout_seconds: 60, units: [...], commands: [...], urls: [...]}` of
/// fleet.yml, a group_vars file or a role's role.yml. The values are not templates.
pub(super) fn health(
    file: &str,
    key: &Span,
    node: &Node,
    problems: &mut Vec<Invalid>,
) -> Option<Health> {
    let doc = match crate::fleet::yaml::typed::<HealthDoc>(file, node) {
        Ok(d) => d,
        Err(p) => {
            problems.push(p);
            return None;
        }
    };
    let timeout_seconds = doc.timeout_seconds.unwrap_or(60);
    let bad_url = doc
        .urls
        .iter()
        .find(|u| !(u.starts_with("http://") || u.starts_with("https://")));
    let problem = if timeout_seconds == 0 {
        Some("health.timeout_seconds: expected a whole number of seconds above 0".to_string())
    } else if doc.units.is_empty() && doc.commands.is_empty() && doc.urls.is_empty() {
        Some("health: expected at least one check: units, commands or urls".into())
    } else if let Some(t) =
        (doc.units.iter().chain(&doc.commands).chain(&doc.urls)).find(|c| c.contains("{{"))
    {
        Some(format!(
            "health: checks are not templates: expected the value itself, not `{t}`"
        ))
    } else {
        bad_url.map(|u| format!("health.urls: expected an http:// or https:// URL, not `{u}`"))
    };
    if let Some(m) = problem {
        problems.push(Invalid::at(file, key, m));
        return None;
    }
    Some(Health {
        timeout_seconds,
        units: doc.units,
        commands: doc.commands,
        urls: doc.urls,
    })
}
