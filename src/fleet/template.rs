//! Templates: minijinja (Jinja2) with strict undefined variables, for strings of
//! role.yml and for the files under a role's templates/. Every error names the position
//! of the template, and an undefined variable by name.

use marked_yaml::Span;
use minijinja::{Environment, UndefinedBehavior, Value};

use crate::error::{line_column, Invalid, Pos};

pub(super) struct Templates {
    env: Environment<'static>,
}

impl Templates {
    pub(super) fn new() -> Templates {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        Templates { env }
    }

    /// Renders a string from role.yml; errors point at the string.
    pub(super) fn render(
        &self,
        file: &str,
        span: &Span,
        text: &str,
        ctx: &Value,
    ) -> Result<String, Invalid> {
        if !text.contains("{{") && !text.contains("{%") {
            return Ok(text.to_string());
        }
        self.env.render_str(text, ctx).map_err(|e| {
            let mut p = Invalid::at(file, span, message(&e, text));
            if let (Some(line), true) = (e.line(), p.pos.line > 0) {
                if line > 1 {
                    p.message.push_str(&format!(" (line {line} of the value)"));
                }
            }
            p
        })
    }

    /// Renders a template file of a role; `label` names it in positions.
    pub(super) fn render_file(
        &self,
        label: String,
        bytes: &[u8],
        ctx: &Value,
    ) -> Result<Vec<u8>, Invalid> {
        let Ok(src) = std::str::from_utf8(bytes) else {
            return Err(Invalid::new(
                Pos::file(label),
                "a template must be UTF-8 text",
            ));
        };
        self.env
            .render_str(src, ctx)
            .map(String::into_bytes)
            .map_err(|e| {
                let (line, column) = match (e.line(), e.range()) {
                    (_, Some(r)) => line_column(src, r.start),
                    (Some(l), None) => (l, 1),
                    (None, None) => (0, 0),
                };
                Invalid::new(
                    Pos {
                        file: label,
                        line,
                        column,
                    },
                    message(&e, src),
                )
            })
    }
}

/// minijinja's error, with the name of an undefined variable spelled out.
fn message(e: &minijinja::Error, src: &str) -> String {
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
