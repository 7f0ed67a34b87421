//! `rollout:` and `maintenance:` of fleet.yml and group_vars files (docs/rollouts.md),
//! read by hand with the position of every value. The decisions they feed are in
//! src/release/.

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{Node, Span};

use crate::error::{span_pos, Invalid};
use crate::release::{self, Brakes, Rollout, Window};

/// The brakes a layer declares (none of them when a value is wrong: a problem says why).
pub(super) fn read(file: &str, map: &MarkedMappingNode, problems: &mut Vec<Invalid>) -> Brakes {
    let mut brakes = Brakes::default();
    for (k, v) in map.iter() {
        match k.as_str() {
            "rollout" => brakes.rollout = rollout(file, k.span(), v, problems),
            "maintenance" => brakes.window = window(file, k.span(), v, problems),
            _ => {}
        }
    }
    brakes
}

/// The scalar values of a mapping with exactly the keys `allowed`, each required.
fn fields<'n>(
    file: &str,
    key_span: &Span,
    node: &'n Node,
    allowed: &[&str],
    example: &str,
    problems: &mut Vec<Invalid>,
) -> Option<Vec<&'n marked_yaml::types::MarkedScalarNode>> {
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
        if !allowed.contains(&k.as_str()) {
            problems.push(Invalid::at(
                file,
                k.span(),
                format!(
                    "unknown key `{}`: expected {}",
                    k.as_str(),
                    allowed.join(", ")
                ),
            ));
        }
    }
    let mut values = Vec::new();
    for key in allowed {
        match map.get_node(key) {
            Some(Node::Scalar(s)) => values.push(s),
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
    let (id, percent) = (v[0], v[1]);
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
        &["window"],
        "maintenance: {window: \"02:00-04:00\"}",
        problems,
    )?;
    match release::parse_window(v[0].as_str()) {
        Ok((start, end)) => Some(Window {
            start,
            end,
            declared_at: span_pos(file, key).to_string(),
        }),
        Err(m) => {
            problems.push(Invalid::at(file, v[0].span(), m));
            None
        }
    }
}
