//! `command`: a program the device runs when its guards say so: `creates` (a path that
//! is not there yet), `only_if` / `unless` (a check's exit status), `on_change` (a
//! resource that changes in this run). A command without a guard would run on every poll
//! and is an error. It runs as an argv (a shell only when asked with `shell:`), in a
//! clean environment, with a timeout, in the commands phase: after every file and
//! download, before the services. Planning runs the checks (never the command): they
//! must be read-only. Applying checks `creates`, `only_if` and `unless` again just
//! before running, since an earlier change of the run may have settled them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use marked_yaml::Spanned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Pos, Result};
use crate::host::accounts::{self, Db};
use crate::host::command::Exec;
use crate::host::{Existing, Host};
use crate::plan::{Change, ChangeAction, ChangeKind, Op, RunCommand, RunPhase};
use crate::resources::path::{checked_path, device_path};
use crate::resources::planner::Planner;
use crate::resources::{Expand, Kind, Resource};

/// How a plan says that `on_change` made a command due (the run records it pending).
pub(crate) const TRIGGERED: &str = "(on_change)";

/// A command's timeout when none is declared.
pub(crate) const DEFAULT_TIMEOUT: u64 = 300;
/// The timeout of `unless` and `only_if` checks.
pub(crate) const CHECK_TIMEOUT: u64 = 60;
/// PATH of a command's environment (a declared `PATH` replaces it).
pub(crate) use crate::host::command::DEFAULT_PATH as PATH;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Spec {
    name: Spanned<String>,
    argv: Option<Vec<Spanned<String>>>,
    shell: Option<Spanned<String>>,
    creates: Option<Spanned<String>>,
    unless: Option<Vec<Spanned<String>>>,
    only_if: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    on_change: Vec<Spanned<String>>,
    timeout: Option<Spanned<u64>>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    cwd: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
}

/// A resource named by `on_change`: its id, and where the reference is written.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Reference {
    pub(crate) id: String,
    #[serde(skip)]
    pub(crate) at: Pos,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Command {
    pub(crate) name: String,
    pub(crate) argv: Vec<String>,
    pub(crate) creates: Option<PathBuf>,
    pub(crate) unless: Option<Vec<String>>,
    pub(crate) only_if: Option<Vec<String>>,
    pub(crate) on_change: Vec<Reference>,
    pub(crate) timeout: u64,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: Option<PathBuf>,
    pub(crate) user: Option<String>,
    /// The argv or the environment renders a secret: never shown.
    #[serde(skip)]
    pub(crate) secret: bool,
}

pub(super) fn expand(s: &Spec, x: &mut dyn Expand) -> Option<Command> {
    let secrets = x.secrets_read();
    let name = x.text(&s.name);
    if matches!(&name, Some(n) if !name_ok(n)) {
        x.problem(
            s.name.span(),
            "expected a command name: letters, digits, `.`, `_` and `-`".into(),
        );
    }
    let argv = program(s, x);
    let list = |x: &mut dyn Expand, l: &Option<Vec<Spanned<String>>>, key: &str| {
        let l = l.as_ref()?;
        let items: Vec<String> = l.iter().filter_map(|a| x.text(a)).collect();
        if items.first().is_none_or(|a| a.is_empty()) {
            x.problem(
                l.first().map(|a| a.span()).unwrap_or(s.name.span()),
                format!("`{key}` is a check's argv: expected a non-empty list such as [test, -x, /usr/bin/x]"),
            );
        }
        Some(items)
    };
    let unless = list(x, &s.unless, "unless");
    let only_if = list(x, &s.only_if, "only_if");
    let creates = s.creates.as_ref().and_then(|c| device_path(x, c));
    let cwd = s.cwd.as_ref().and_then(|c| device_path(x, c));
    let on_change = references(s, x);
    let env = environment(s, x);
    let guarded =
        s.creates.is_some() || s.unless.is_some() || s.only_if.is_some() || !s.on_change.is_empty();
    if !guarded {
        x.problem(
            s.name.span(),
            "a command needs a guard: `creates`, `unless`, `only_if` or `on_change` (without one it would run on every poll)".into(),
        );
    }
    let timeout = match &s.timeout {
        Some(t) if **t == 0 => {
            x.problem(t.span(), "expected a timeout in seconds, above 0".into());
            0
        }
        Some(t) => **t,
        None => DEFAULT_TIMEOUT,
    };
    let user = s.user.as_ref().and_then(|u| x.text(u));
    Some(Command {
        name: name?,
        argv: argv?,
        creates,
        unless,
        only_if,
        on_change,
        timeout,
        env,
        cwd,
        user,
        secret: x.secrets_read() != secrets,
    })
}

fn name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// `argv:` as given, or `shell:` run by /bin/sh -c: exactly one of them.
fn program(s: &Spec, x: &mut dyn Expand) -> Option<Vec<String>> {
    match (&s.argv, &s.shell) {
        (Some(argv), None) => {
            let rendered: Vec<String> = argv.iter().filter_map(|a| x.text(a)).collect();
            if rendered.len() != argv.len() {
                return None;
            }
            match rendered.first() {
                Some(first) if !first.is_empty() && !first.contains('=') => Some(rendered),
                _ => {
                    x.problem(
                        argv.first().map(|a| a.span()).unwrap_or(s.name.span()),
                        "expected `argv` as a non-empty list: the program, then its arguments (no `=` in the program)".into(),
                    );
                    None
                }
            }
        }
        (None, Some(sh)) => Some(vec!["/bin/sh".into(), "-c".into(), x.text(sh)?]),
        _ => {
            x.problem(
                s.name.span(),
                "a command needs exactly one of `argv` (a list: the program and its arguments) or `shell` (a line for /bin/sh -c)".into(),
            );
            None
        }
    }
}

/// `on_change:` entries as resource ids: a path, or `package:`, `user:`, `group:`,
/// `command:` and a name.
fn references(s: &Spec, x: &mut dyn Expand) -> Vec<Reference> {
    let mut refs = Vec::new();
    for r in &s.on_change {
        let Some(text) = x.text(r) else { continue };
        let id = if text.starts_with('/') {
            checked_path(x, r, &text).map(|p| format!("path:{}", p.display()))
        } else {
            match text.split_once(':') {
                Some(("package" | "user" | "group" | "command", name)) if !name.is_empty() => {
                    Some(text.clone())
                }
                _ => {
                    x.problem(
                        r.span(),
                        format!("`{text}` names no resource: expected a path (of a file, directory, link or download) or package:NAME, user:NAME, group:NAME, command:NAME"),
                    );
                    None
                }
            }
        };
        if let Some(id) = id {
            refs.push(Reference {
                id,
                at: x.pos(r.span()),
            });
        }
    }
    refs
}

fn environment(s: &Spec, x: &mut dyn Expand) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for (k, v) in &s.env {
        let name_ok = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            x.problem(
                v.span(),
                format!(
                    "`{k}` is not an environment variable name: expected letters, digits and _"
                ),
            );
            continue;
        }
        if let Some(v) = x.text(v) {
            env.push((k.clone(), v));
        }
    }
    env
}

/// How the command runs on this device: a clean environment (PATH, HOME, USER, LOGNAME,
/// LANG, then the declared variables), its directory, its user, its timeout.
pub(crate) fn exec(host: &Host, run: &RunCommand, timeout: Duration) -> Result<Exec> {
    let (user, home, group) = match &run.user {
        None => ("root".to_string(), "/root".to_string(), None),
        Some(u) => {
            let users = accounts::read(host, Db::Passwd)?;
            let account = users
                .get(u)
                .or_else(|| users.values().find(|a| a.id.to_string() == *u))
                .ok_or_else(|| {
                    Error::Other(format!(
                        "command {}: the user `{u}` does not exist on the device",
                        run.name
                    ))
                })?;
            (
                account.name.clone(),
                account.home.clone(),
                Some((account.id.to_string(), account.gid.to_string())),
            )
        }
    };
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), PATH.into()),
        ("HOME".into(), home),
        ("USER".into(), user.clone()),
        ("LOGNAME".into(), user),
        ("LANG".into(), "C.UTF-8".into()),
    ];
    for (k, v) in &run.env {
        env.retain(|(e, _)| e != k);
        env.push((k.clone(), v.clone()));
    }
    Ok(Exec {
        env,
        cwd: run.cwd.clone(),
        user: group,
        timeout: Some(timeout),
    })
}

/// What the guards say: Ok(why it runs, a line per guard) or Err(the guard that keeps
/// it from running). `on_change` is decided by the planner; here `creates`, then the
/// checks (run only when the cheaper guards let the command through).
pub(crate) fn guards(host: &Host, run: &RunCommand) -> Result<Result<Vec<String>, String>> {
    let mut why = Vec::new();
    if let Some(path) = &run.creates {
        if host.inspect(path)? != Existing::Missing {
            return Ok(Err(format!("{} exists (creates)", path.display())));
        }
        why.push(format!("{} does not exist (creates)", path.display()));
    }
    if run.only_if.is_none() && run.unless.is_none() {
        return Ok(Ok(why));
    }
    let exec = exec(host, run, Duration::from_secs(CHECK_TIMEOUT))?;
    let check = |argv: &[String]| -> Result<i32> {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        Ok(host.run_exec(&argv, &exec)?.code)
    };
    if let Some(only_if) = &run.only_if {
        let code = check(only_if)?;
        let said = format!("only_if `{}` exits {code}", shown(only_if, run.secret));
        if code != 0 {
            return Ok(Err(said));
        }
        why.push(said);
    }
    if let Some(unless) = &run.unless {
        let code = check(unless)?;
        let said = format!("unless `{}` exits {code}", shown(unless, run.secret));
        if code == 0 {
            return Ok(Err(said));
        }
        why.push(said);
    }
    Ok(Ok(why))
}

/// An argv for people; a secret one is not shown.
pub(crate) fn shown(argv: &[String], secret: bool) -> String {
    if secret {
        "(not shown: it carries a secret)".into()
    } else {
        argv.join(" ")
    }
}

fn run_command(c: &Command) -> RunCommand {
    RunCommand {
        name: c.name.clone(),
        argv: c.argv.clone(),
        env: c.env.clone(),
        cwd: c.cwd.clone(),
        user: c.user.clone(),
        timeout: Duration::from_secs(c.timeout),
        creates: c.creates.clone(),
        unless: c.unless.clone(),
        only_if: c.only_if.clone(),
        secret: c.secret,
    }
}

/// The commands phase: each command whose guards let it run, in declared order. The
/// cheap guards are looked at first (`on_change`, `creates`); the checks run only when
/// those let the command through.
pub(super) fn plan_phase(commands: &[&Resource], p: &mut Planner) -> Result<()> {
    for r in commands {
        let Kind::Command(c) = &r.kind else { continue };
        let skip = |reason: &str| {
            if !crate::logging::very_verbose() {
                return;
            }
            log::debug!(
                "unchanged: command {} ({}, {}): {reason}",
                c.name,
                r.role,
                r.declared_at
            )
        };
        let mut why = Vec::new();
        let mut triggered_by = Vec::new();
        if !c.on_change.is_empty() {
            match triggered(c, r, p) {
                Some((because, by)) => {
                    why.push(because);
                    triggered_by = by;
                }
                None => {
                    skip("none of its on_change resources changes");
                    continue;
                }
            }
        }
        let run = run_command(c);
        let checks = match user_arrives(c, r, p)? {
            // Its checks run as a user this run creates: they are run when applying.
            true => Ok(vec![format!(
                "its checks run when applying (its user {} is created by this run)",
                c.user.as_deref().unwrap_or("")
            )]),
            false => guards(p.host, &run)?,
        };
        match checks {
            Ok(more) => why.extend(more),
            Err(reason) => {
                skip(&reason);
                continue;
            }
        }
        let mut details = vec![format!("runs: {}", why.join("; "))];
        details.push(format!("argv: {}", shown(&c.argv, c.secret)));
        let mut how = Vec::new();
        if let Some(u) = &c.user {
            how.push(format!("as {u}"));
        }
        if let Some(d) = &c.cwd {
            how.push(format!("in {}", d.display()));
        }
        how.push(format!("timeout {} s", c.timeout));
        details.push(how.join(", "));
        let mut change = r.change(ChangeAction::Run, details, vec![Op::Exec(Box::new(run))]);
        change.secret = c.secret;
        change.triggered_by = triggered_by;
        p.changes.push(change);
    }
    Ok(())
}

/// Whether the command runs as a user that does not exist yet but a `user` resource of
/// this plan creates; a user that neither exists nor is declared is an error.
fn user_arrives(c: &Command, r: &Resource, p: &Planner) -> Result<bool> {
    let Some(user) = &c.user else {
        return Ok(false);
    };
    if p.host.uid(user)?.is_some() {
        return Ok(false);
    }
    if p.declared_users.contains(user) {
        return Ok(c.only_if.is_some() || c.unless.is_some());
    }
    Err(Error::Other(format!(
        "{}: the user `{user}` does not exist on the device (for command {}); declare it with a `user` resource",
        r.declared_at, c.name
    )))
}

/// Why `on_change` makes the command due: which resources change in this run (and
/// their ids), or a triggered run that did not finish. None: it is not due.
fn triggered(c: &Command, r: &Resource, p: &Planner) -> Option<(String, Vec<String>)> {
    let by: Vec<String> = (c.on_change.iter())
        .filter(|reference| p.changes.iter().any(|ch| changes(ch, &reference.id)))
        .map(|reference| reference.id.clone())
        .collect();
    if !by.is_empty() {
        let shown: Vec<&str> = by
            .iter()
            .map(|i| i.strip_prefix("path:").unwrap_or(i))
            .collect();
        return Some((format!("{} changes {TRIGGERED}", shown.join(", ")), by));
    }
    let id = r.kind.id();
    p.previous
        .and_then(|prev| prev.get(&id))
        .filter(|s| s.pending)
        .map(|_| {
            (
                format!("its last run for a change did not finish {TRIGGERED}"),
                vec![],
            )
        })
}

/// Whether a change of the plan changes the resource `id`: its own change, or the
/// package transaction installing, upgrading or removing the package.
pub(crate) fn changes(ch: &Change, id: &str) -> bool {
    if ch.resource_id.as_deref() == Some(id) {
        return true;
    }
    let Some(package) = id.strip_prefix("package:") else {
        return false;
    };
    ch.kind == ChangeKind::Apt
        && ch.phase == RunPhase::Packages
        && ch.ops.iter().any(|op| match op {
            Op::Apt {
                install, remove, ..
            } => install.iter().any(|(n, _)| n == package) || remove.iter().any(|n| n == package),
            _ => false,
        })
}
