//! Reading the fleet repository's YAML with positions: every problem is reported as
//! file:line:column with what was expected. Plain scalars are typed as YAML 1.2's core
//! schema does (true/false, null, numbers); quoted scalars are always strings.

use marked_yaml::{LoaderOptions, Node, Span};
use serde::de::DeserializeOwned;

use crate::error::{span_pos, Invalid, Pos};

/// Parses a YAML document whose top level is a mapping; an empty file is an empty mapping.
pub(crate) fn parse(file: &str, text: &[u8]) -> Result<Node, Invalid> {
    let text = std::str::from_utf8(text).map_err(|e| Invalid {
        pos: Pos::file(file),
        message: format!("not UTF-8 text: {e}"),
    })?;
    if text.trim().is_empty()
        || text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(Node::Mapping(
            marked_yaml::types::MarkedMappingNode::new_empty(Span::new_blank()),
        ));
    }
    // prevent_coercion: quoted scalars stay strings ("0644", "1.10", "true").
    let options = LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .toplevel_mapping()
        .prevent_coercion(true);
    marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| {
        use marked_yaml::LoadError::*;
        let (marker, message) = match &e {
            TopLevelMustBeMapping(m) => (
                *m,
                "expected a mapping (key: value) at the top level".to_string(),
            ),
            TopLevelMustBeSequence(m) => (*m, "expected a sequence at the top level".to_string()),
            UnexpectedAnchor(m) => (*m, "YAML anchors and aliases are not supported".to_string()),
            MappingKeyMustBeScalar(m) => (*m, "mapping keys must be plain strings".to_string()),
            UnexpectedTag(m) => (*m, "YAML tags (!tag) are not supported".to_string()),
            ScanError(m, err) => (*m, format!("YAML syntax error: {}", err.info())),
            DuplicateKey(inner) => (
                *inner
                    .key
                    .span()
                    .start()
                    .expect("parsed keys have a position"),
                format!("duplicate key `{}`", inner.key.as_str()),
            ),
        };
        Invalid {
            pos: Pos {
                file: file.to_string(),
                line: marker.line(),
                column: marker.column(),
            },
            message,
        }
    })
}

/// Deserializes a node into a typed value; unknown keys and wrong types are errors.
pub(crate) fn typed<T: DeserializeOwned>(file: &str, node: &Node) -> Result<T, Invalid> {
    marked_yaml::from_node::<T>(node).map_err(|e| {
        use marked_yaml::Error::*;
        let message = match &*e {
            UnknownFieldError(field, expected, _) => {
                format!(
                    "unknown key `{field}`, expected one of: {}",
                    expected.join(", ")
                )
            }
            NotBoolean(_) => "expected true or false".to_string(),
            IntegerParseFailure(..) => "expected a whole number".to_string(),
            FloatParseFailure(..) => "expected a number".to_string(),
            Other(m, _) => m.replace("invalid type: string", "invalid type: text"),
        };
        // marked-yaml places an unknown key at its mapping; find the key itself.
        let found = match &*e {
            UnknownFieldError(field, expected, _) => {
                find_key(node, field, expected).map(|s| span_pos(file, s))
            }
            Other(m, _) if m.starts_with("unknown variant `") => m["unknown variant `".len()..]
                .split('`')
                .next()
                .and_then(|name| find_key(node, name, &[]))
                .map(|s| span_pos(file, s)),
            _ => None,
        };
        let pos = match (found, e.start_mark()) {
            (Some(p), _) => p,
            (None, Some(m)) => Pos {
                file: file.to_string(),
                line: m.line(),
                column: m.column(),
            },
            (None, None) => span_pos(file, node.span()),
        };
        Invalid { pos, message }
    })
}

/// The key `name` in the first mapping (depth first) that has it and whose other keys
/// are all `expected` (the mapping the error is about); with no `expected`, the first.
fn find_key<'n>(node: &'n Node, name: &str, expected: &[&str]) -> Option<&'n Span> {
    match node {
        Node::Scalar(_) => None,
        Node::Sequence(seq) => seq.iter().find_map(|n| find_key(n, name, expected)),
        Node::Mapping(map) => {
            let fits = expected.is_empty()
                || map
                    .keys()
                    .all(|k| k.as_str() == name || expected.contains(&k.as_str()));
            let here = map
                .iter()
                .find_map(|(k, _)| (fits && k.as_str() == name).then(|| k.span()));
            here.or_else(|| map.iter().find_map(|(_, v)| find_key(v, name, expected)))
        }
    }
}

/// Converts a node to a template value with the core-schema typing of plain scalars.
pub(crate) fn to_value(node: &Node) -> minijinja::Value {
    use minijinja::Value;
    match node {
        Node::Scalar(s) => {
            let text = s.as_str();
            if !s.may_coerce() {
                return Value::from(text);
            }
            match text {
                "true" | "True" | "TRUE" => Value::from(true),
                "false" | "False" | "FALSE" => Value::from(false),
                "" | "~" | "null" | "Null" | "NULL" => Value::from(()),
                _ => {
                    if let Ok(i) = text.parse::<i64>() {
                        Value::from(i)
                    } else if let Ok(f) = text.parse::<f64>().map_err(|_| ()).and_then(|f| {
                        if text.chars().any(|c| c.is_ascii_digit())
                            && !text.contains(char::is_alphabetic)
                        {
                            Ok(f)
                        } else {
                            Err(())
                        }
                    }) {
                        Value::from(f)
                    } else {
                        Value::from(text)
                    }
                }
            }
        }
        Node::Sequence(seq) => Value::from(seq.iter().map(to_value).collect::<Vec<_>>()),
        Node::Mapping(map) => Value::from_iter(
            map.iter()
                .map(|(k, v)| (k.as_str().to_string(), to_value(v))),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_scalars_stay_strings_and_plain_ones_are_typed() {
        let node = parse(
            "t.yml",
            b"a: \"0644\"\nb: 12\nc: \"true\"\nd: true\ne: ~\nf: \"1.10\"\ng: 1.5\n",
        )
        .unwrap();
        let v = to_value(&node);
        let kind = |k: &str| v.get_attr(k).unwrap().kind();
        use minijinja::value::ValueKind::*;
        assert_eq!(
            [
                kind("a"),
                kind("b"),
                kind("c"),
                kind("d"),
                kind("e"),
                kind("f"),
                kind("g")
            ],
            [String, Number, String, Bool, None, String, Number]
        );
        assert_eq!(v.get_attr("f").unwrap().as_str(), Some("1.10"));
    }

    #[test]
    fn an_unknown_key_is_found_in_the_mapping_that_has_it() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            path: String,
        }
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Outer {
            description: String,
            items: Vec<Inner>,
        }
        let node = parse(
            "r.yml",
            b"description: top\nitems:\n  - path: /x\n    description: misplaced\n",
        )
        .unwrap();
        let err = typed::<Outer>("r.yml", &node).unwrap_err();
        assert_eq!(
            err.to_string(),
            "r.yml:4:5: unknown key `description`, expected one of: path"
        );
    }
}
