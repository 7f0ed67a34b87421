//! Templates: minijinja (Jinja2) with strict undefined variables, for strings of
//! role.yml and for the files under a role's templates/. Every error names the position
//! of the template; undefined variables are all reported, each by name (the template is
//! rendered again with the ones found so far standing in, up to a bound). Rendering is
//! bounded: all the renderings of one device share `max_template_steps` steps
//! (minijinja's fuel), and each gives at most `max_file_bytes` of output (fleet.yml
//! settings); going over is a problem at the template. The `when:` conditions are
//! expressions rendered the same way; `secret(NAME)` reads a device-held secret.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use marked_yaml::Span;
use minijinja::value::ValueKind;
use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value};

use crate::error::{line_column, Invalid, Pos};
use crate::fleet::facts::{secret_function, DeviceReads};

/// How many undefined variables one template reports at most.
const MAX_UNDEFINED: usize = 20;

pub(super) struct Templates {
    env: RefCell<Environment<'static>>,
    max_steps: u64,
    /// The steps left to this device's renderings.
    steps_left: Cell<u64>,
    max_bytes: u64,
    /// How many secrets templates have read so far.
    secrets: Arc<AtomicUsize>,
}

/// A problem of a template, and the variable it lacks when that is the problem.
pub(super) struct TemplateError {
    pub(super) problem: Invalid,
    /// The undefined variable's top-level name (`device` of `device.nmae`).
    pub(super) undefined: Option<String>,
}

impl Templates {
    pub(super) fn new(max_steps: u64, max_bytes: u64, reads: Arc<dyn DeviceReads>) -> Templates {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        let secrets = Arc::new(AtomicUsize::new(0));
        env.add_function("secret", secret_function(reads, secrets.clone()));
        Templates {
            env: RefCell::new(env),
            max_steps,
            steps_left: Cell::new(max_steps),
            max_bytes,
            secrets,
        }
    }

    /// How many secrets have been read so far: a value whose rendering changed it
    /// carries a secret.
    pub(super) fn secrets_read(&self) -> usize {
        self.secrets.load(Ordering::Relaxed)
    }

    /// Evaluates a `when:` expression (`device.facts.architecture == "arm64"`, `kiosk_url
    /// is defined`) to true or false, within the device's steps; errors point at the
    /// expression.
    pub(super) fn condition(
        &self,
        file: &str,
        span: &Span,
        expr: &str,
        ctx: &Value,
    ) -> Result<bool, Vec<TemplateError>> {
        // As a template, so that errors have a range (expressions report none).
        let src = format!("{{% if {expr} %}}1{{% endif %}}");
        match self.bounded(&src, ctx) {
            Ok(out) => Ok(out == "1"),
            Err((e, mut said)) => {
                let mut undefined = undefined_path(&e, &src).and_then(|p| p.into_iter().next());
                if e.kind() == ErrorKind::UndefinedError && undefined.is_none() {
                    if let Some(name) = first_undefined(expr, ctx) {
                        said = format!("undefined variable `{name}`: expected it in vars (fleet.yml, group_vars, host_vars) or the role's params");
                        undefined = name.split('.').next().map(str::to_string);
                    }
                }
                Err(vec![TemplateError {
                    problem: Invalid::at(file, span, format!("when: {said}")),
                    undefined,
                }])
            }
        }
    }

    /// Whether the steps are used up (a problem already says where).
    pub(super) fn exhausted(&self) -> bool {
        self.steps_left.get() == 0
    }

    /// Renders `src` into at most `max_bytes`, with the steps left; an error comes with
    /// the words for it (which bound was crossed, or minijinja's error).
    fn bounded(&self, src: &str, ctx: &Value) -> Result<String, (minijinja::Error, String)> {
        let mut out = Capped {
            out: Vec::new(),
            max: self.max_bytes,
            over: false,
        };
        self.env
            .borrow_mut()
            .set_fuel(Some(self.steps_left.get().max(1)));
        let env = self.env.borrow();
        let rendered = env.template_from_str(src).and_then(|t| {
            let captured = t.render_captured_to(ctx, &mut out)?;
            let (used, _) = captured.state().fuel_levels().unwrap_or_default();
            self.steps_left
                .set(self.steps_left.get().saturating_sub(used).max(1));
            Ok(())
        });
        if matches!(&rendered, Err(e) if e.kind() == ErrorKind::OutOfFuel) {
            self.steps_left.set(0);
        }
        match rendered {
            Ok(()) => Ok(String::from_utf8(out.out).expect("templates render UTF-8")),
            Err(e) if out.over => {
                let why = format!(
                    "the rendered text is more than {} bytes (max_file_bytes; fleet.yml settings)",
                    self.max_bytes
                );
                Err((e, why))
            }
            Err(e) => {
                let why = message(&e, src, self.max_steps);
                Err((e, why))
            }
        }
    }

    /// Renders a string from role.yml; errors point at the string.
    pub(super) fn render(
        &self,
        file: &str,
        span: &Span,
        text: &str,
        ctx: &Value,
    ) -> Result<String, Vec<TemplateError>> {
        if !text.contains("{{") && !text.contains("{%") {
            return Ok(text.to_string());
        }
        self.render_all(text, ctx).map_err(|errors| {
            errors
                .into_iter()
                .map(|(e, why, undefined)| {
                    let mut p = Invalid::at(file, span, why);
                    if let (Some(line), true) = (e.line(), p.pos.line > 0) {
                        if line > 1 {
                            p.message.push_str(&format!(" (line {line} of the value)"));
                        }
                    }
                    TemplateError {
                        problem: p,
                        undefined,
                    }
                })
                .collect()
        })
    }

    /// Renders a template file of a role; `label` names it in positions.
    pub(super) fn render_file(
        &self,
        label: String,
        bytes: &[u8],
        ctx: &Value,
    ) -> Result<Vec<u8>, Vec<TemplateError>> {
        let Ok(src) = std::str::from_utf8(bytes) else {
            return Err(vec![TemplateError {
                problem: Invalid::new(Pos::file(label), "a template must be UTF-8 text"),
                undefined: None,
            }]);
        };
        match self.render_all(src, ctx) {
            Ok(s) => Ok(s.into_bytes()),
            Err(errors) => Err(errors
                .into_iter()
                .map(|(e, why, undefined)| {
                    let (line, column) = match (e.line(), e.range()) {
                        (_, Some(r)) => line_column(src, r.start),
                        (Some(l), None) => (l, 1),
                        (None, None) => (0, 0),
                    };
                    let pos = Pos {
                        file: label.clone(),
                        line,
                        column,
                    };
                    TemplateError {
                        problem: Invalid::new(pos, why),
                        undefined,
                    }
                })
                .collect()),
        }
    }

    /// Renders; on an undefined variable, renders again with it standing in (an empty
    /// mapping) to find the next one. Each error with the top-level name it lacks.
    fn render_all(
        &self,
        src: &str,
        ctx: &Value,
    ) -> Result<String, Vec<(minijinja::Error, String, Option<String>)>> {
        let mut errors = Vec::new();
        let mut ctx = ctx.clone();
        loop {
            let (e, why) = match self.bounded(src, &ctx) {
                Ok(s) if errors.is_empty() => return Ok(s),
                Ok(_) => return Err(errors),
                Err(e) => e,
            };
            let path = undefined_path(&e, src);
            let next = path.as_ref().and_then(|p| with_stand_in(&ctx, p));
            let name = path.and_then(|p| p.into_iter().next());
            errors.push((e, why, name));
            match next {
                Some(c) if errors.len() < MAX_UNDEFINED => ctx = c,
                _ => return Err(errors),
            }
        }
    }
}

/// The expression an error points at, with the names before a `.attribute` it starts
/// with (an undefined attribute of an object is reported from its dot).
fn expression_at<'s>(e: &minijinja::Error, src: &'s str) -> Option<&'s str> {
    let range = e.range()?;
    let mut start = range.start;
    if src.get(range.clone())?.starts_with('.') {
        while start > 0 {
            let c = src.as_bytes()[start - 1];
            if !(c.is_ascii_alphanumeric() || c == b'_' || c == b'.') {
                break;
            }
            start -= 1;
        }
    }
    src.get(start..range.end).map(str::trim)
}

/// The dotted name of an undefined variable (`device.nmae` → [device, nmae]).
fn undefined_path(e: &minijinja::Error, src: &str) -> Option<Vec<String>> {
    if e.kind() != ErrorKind::UndefinedError {
        return None;
    }
    let expr = expression_at(e, src)?;
    let parts: Vec<String> = expr.split('.').map(str::to_string).collect();
    let ident = |p: &String| {
        p.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    parts.iter().all(ident).then_some(parts)
}

/// The context with an empty mapping at `path` (created where missing); None when a
/// value on the way is not a mapping.
fn with_stand_in(ctx: &Value, path: &[String]) -> Option<Value> {
    let (first, rest) = path.split_first()?;
    let mut entries: Vec<(String, Value)> = Vec::new();
    if ctx.kind() != ValueKind::Map {
        return None;
    }
    for key in ctx.try_iter().ok()? {
        let k = key.as_str()?.to_string();
        let v = ctx.get_item(&key).ok()?;
        entries.push((k, v));
    }
    let inner = match entries.iter().position(|(k, _)| k == first) {
        Some(_) if rest.is_empty() => return None,
        Some(i) => with_stand_in(&entries[i].1, rest)?,
        None => nested_stand_in(rest),
    };
    entries.retain(|(k, _)| k != first);
    entries.push((first.clone(), inner));
    Some(Value::from_iter(entries))
}

fn nested_stand_in(rest: &[String]) -> Value {
    match rest.split_first() {
        None => Value::from_iter(Vec::<(String, Value)>::new()),
        Some((k, more)) => Value::from_iter([(k.clone(), nested_stand_in(more))]),
    }
}

/// The rendered text, refused past its bound.
struct Capped {
    out: Vec<u8>,
    max: u64,
    over: bool,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if (self.out.len() + buf.len()) as u64 > self.max {
            self.over = true;
            return Err(std::io::Error::other("over max_file_bytes"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The first name of an expression that the context does not define (with its dotted
/// attributes), for a message when the engine points at the whole condition. Names in
/// quotes, after `.`, `|` or `is`, and the language's words are not variables.
fn first_undefined(expr: &str, ctx: &Value) -> Option<String> {
    const WORDS: [&str; 12] = [
        "and", "or", "not", "in", "is", "if", "else", "true", "false", "none", "True", "False",
    ];
    let b = expr.as_bytes();
    let (mut i, mut quote, mut after_is) = (0, None, false);
    while i < b.len() {
        let c = b[i];
        if let Some(q) = quote {
            quote = (c != q).then_some(q);
            i += 1;
            continue;
        }
        if c == b'"' || c == b'\'' {
            quote = Some(c);
            i += 1;
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == b'_') {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
            i += 1;
        }
        let path = expr[start..i].trim_end_matches('.');
        let before = expr[..start].trim_end();
        let word = path.split('.').next().unwrap_or(path);
        let skip = before.ends_with('.') || before.ends_with('|') || after_is;
        after_is = word == "is" || (after_is && word == "not");
        if skip || WORDS.contains(&word) {
            continue;
        }
        if ctx.get_attr(word).map_or(true, |v| v.is_undefined()) {
            return Some(path.to_string());
        }
    }
    None
}

/// minijinja's error, with the name of an undefined variable spelled out.
fn message(e: &minijinja::Error, src: &str, max_steps: u64) -> String {
    match e.kind() {
        ErrorKind::OutOfFuel => format!(
            "the device's templates take more than {max_steps} steps with this one (max_template_steps; fleet.yml settings)"
        ),
        ErrorKind::UndefinedError => {
            let expr = expression_at(e, src).unwrap_or("");
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
