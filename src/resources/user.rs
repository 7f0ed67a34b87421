//! `user`: a system account, created with `useradd --user-group` (system accounts by
//! default) and brought to the declared home, shell, comment and supplementary groups
//! with `usermod`. Never removed; a different uid is an error, not a renumbering.

use std::path::{Path, PathBuf};

use marked_yaml::Spanned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::host::accounts::{self, Account, Db};
use crate::plan::{Change, ChangeAction};
use crate::resources::group::{account_change, check_name, yes};
use crate::resources::path::device_path;
use crate::resources::planner::Planner;
use crate::resources::{checks, Expand, Resource};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Spec {
    name: Spanned<String>,
    #[serde(default = "yes")]
    system: bool,
    uid: Option<u32>,
    home: Option<Spanned<String>>,
    shell: Option<Spanned<String>>,
    #[serde(default)]
    groups: Vec<Spanned<String>>,
    comment: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) system: bool,
    pub(crate) uid: Option<u32>,
    pub(crate) home: Option<PathBuf>,
    pub(crate) shell: Option<String>,
    pub(crate) groups: Vec<String>,
    pub(crate) comment: Option<String>,
}

pub(super) fn expand(s: &Spec, x: &mut dyn Expand) -> Option<User> {
    let name = x.text(&s.name);
    if let Some(n) = &name {
        check_name(x, &s.name, n);
    }
    let home = s
        .home
        .as_ref()
        .and_then(|h| passwd_path(x, h))
        .map(PathBuf::from);
    let shell = s.shell.as_ref().and_then(|sh| passwd_path(x, sh));
    let groups = s
        .groups
        .iter()
        .filter_map(|g| {
            let name = x.text(g)?;
            check_name(x, g, &name);
            Some(name)
        })
        .collect();
    let comment = s.comment.as_ref().and_then(|c| {
        let text = x.text(c)?;
        if let Some(why) = passwd_field_problem(&text) {
            x.problem(
                c.span(),
                format!("`{}` is not a comment: {why}", checks::shown(&text)),
            );
        }
        Some(text)
    });
    Some(User {
        name: name?,
        system: s.system,
        uid: s.uid,
        home,
        shell,
        groups,
        comment,
    })
}

/// A home or shell: a device path that fits in a passwd field.
fn passwd_path(x: &mut dyn Expand, at: &Spanned<String>) -> Option<String> {
    let p = device_path(x, at)?.display().to_string();
    if let Some(why) = passwd_field_problem(&p) {
        x.problem(
            at.span(),
            format!("`{}` is not a home or shell: {why}", checks::shown(&p)),
        );
    }
    Some(p)
}

/// What /etc/passwd cannot hold in a field: its separator, control characters.
fn passwd_field_problem(text: &str) -> Option<String> {
    checks::text_problem(text).or_else(|| {
        text.contains(':')
            .then(|| "`:` separates the fields of /etc/passwd".to_string())
    })
}

pub(super) fn plan(u: &User, r: &Resource, p: &mut Planner) -> Result<Option<Change>> {
    let users = accounts::read(p.host, Db::Passwd)?;
    let all_groups = accounts::read(p.host, Db::Group)?;
    for g in &u.groups {
        if !all_groups.contains_key(g) && !p.declared_groups.contains(g) {
            return Err(Error::Other(format!(
                "{}: user `{}`: the group `{g}` does not exist on the device; declare it with a `group` resource",
                r.declared_at, u.name
            )));
        }
    }
    match users.get(&u.name) {
        None => Ok(Some(create(u, r, p))),
        Some(existing) => modify(u, existing, &all_groups, r, p),
    }
}

fn create(u: &User, r: &Resource, p: &Planner) -> Change {
    let mut argv = vec!["useradd".to_string()];
    if u.system {
        argv.push("--system".into());
    }
    if let Some(uid) = u.uid {
        argv.extend(["--uid".into(), uid.to_string()]);
    }
    argv.push("--user-group".into());
    if let Some(h) = &u.home {
        argv.extend([
            "--home-dir".into(),
            h.display().to_string(),
            "--create-home".into(),
        ]);
    } else if !u.system {
        argv.push("--create-home".into());
    }
    if let Some(s) = &u.shell {
        argv.extend(["--shell".into(), s.clone()]);
    }
    if !u.groups.is_empty() {
        argv.extend(["--groups".into(), u.groups.join(",")]);
    }
    if let Some(c) = &u.comment {
        argv.extend(["--comment".into(), c.clone()]);
    }
    argv.extend(["--".into(), u.name.clone()]);
    let mut details = vec![format!("{}user", if u.system { "system " } else { "" })];
    if let Some(h) = &u.home {
        details.push(format!("home {}", h.display()));
    }
    if let Some(s) = &u.shell {
        details.push(format!("shell {s}"));
    }
    if !u.groups.is_empty() {
        details.push(format!("groups {}", u.groups.join(", ")));
    }
    account_change(r, p, ChangeAction::Create, details, argv)
}

fn modify(
    u: &User,
    existing: &Account,
    all_groups: &std::collections::HashMap<String, Account>,
    r: &Resource,
    p: &Planner,
) -> Result<Option<Change>> {
    let name = &u.name;
    if let Some(want) = u.uid.filter(|w| *w != existing.id) {
        return Err(Error::Other(format!(
            "{}: user `{name}` has uid {} on the device, not {want}; changing a uid is not done automatically",
            r.declared_at, existing.id
        )));
    }
    let mut argv = vec!["usermod".to_string()];
    let mut details = Vec::new();
    if let Some(h) = u
        .home
        .as_ref()
        .filter(|h| Path::new(&existing.home) != h.as_path())
    {
        details.push(format!("home {} → {}", existing.home, h.display()));
        argv.extend(["--home".into(), h.display().to_string()]);
    }
    if let Some(s) = u.shell.as_ref().filter(|s| **s != existing.shell) {
        details.push(format!("shell {} → {s}", existing.shell));
        argv.extend(["--shell".into(), s.clone()]);
    }
    if let Some(c) = u.comment.as_ref().filter(|c| **c != existing.comment) {
        details.push(format!("comment `{}` → `{c}`", existing.comment));
        argv.extend(["--comment".into(), c.clone()]);
    }
    let mut wanted = u.groups.clone();
    wanted.sort();
    let mut current: Vec<String> = all_groups
        .values()
        .filter(|g| g.members.contains(name) && g.id != existing.gid)
        .map(|g| g.name.clone())
        .collect();
    current.sort();
    if current != wanted {
        details.push(format!(
            "groups {} → {}",
            current.join(", "),
            wanted.join(", ")
        ));
        argv.extend(["--groups".into(), wanted.join(",")]);
    }
    if details.is_empty() {
        return Ok(None);
    }
    argv.extend(["--".into(), name.clone()]);
    Ok(Some(account_change(
        r,
        p,
        ChangeAction::Change,
        details,
        argv,
    )))
}
