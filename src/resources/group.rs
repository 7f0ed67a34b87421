//! `group`: a system account group, created with `groupadd` (under `--root`, with
//! `--root`). Never removed; a different gid is an error, not a silent renumbering.

use marked_yaml::Spanned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::host::accounts::{self, Db};
use crate::plan::{Change, ChangeAction, Op};
use crate::resources::planner::Planner;
use crate::resources::{Expand, Resource};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Spec {
    name: Spanned<String>,
    #[serde(default = "yes")]
    system: bool,
    gid: Option<u32>,
}

pub(super) fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Group {
    pub(crate) name: String,
    pub(crate) system: bool,
    pub(crate) gid: Option<u32>,
}

pub(super) fn expand(s: &Spec, x: &mut dyn Expand) -> Option<Group> {
    let name = x.text(&s.name)?;
    check_name(x, &s.name, &name);
    Some(Group {
        name,
        system: s.system,
        gid: s.gid,
    })
}

/// A user or group name as Debian's tools accept it.
pub(super) fn check_name(x: &mut dyn Expand, at: &Spanned<String>, n: &str) {
    let ok = !n.is_empty()
        && n.len() <= 32
        && n.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c));
    if !ok {
        x.problem(
            at.span(),
            format!(
                "`{}` is not a user or group name: lowercase letters, digits, - and _",
                crate::resources::checks::shown(n)
            ),
        );
    }
}

/// A change made by groupadd, useradd or usermod.
pub(super) fn account_change(
    r: &Resource,
    p: &Planner,
    action: ChangeAction,
    details: Vec<String>,
    argv: Vec<String>,
) -> Change {
    let argv = p.host.account_tool(argv);
    let mut c = r.change(
        action,
        details,
        vec![Op::Command {
            argv,
            in_root: false,
        }],
    );
    c.creates = action == ChangeAction::Create;
    c
}

pub(super) fn plan(g: &Group, r: &Resource, p: &mut Planner) -> Result<Option<Change>> {
    let groups = accounts::read(p.host, Db::Group)?;
    if let Some(existing) = groups.get(&g.name) {
        if let Some(want) = g.gid.filter(|w| *w != existing.id) {
            return Err(Error::Other(format!(
                "{}: group `{}` has gid {} on the device, not {want}; changing a gid is not done automatically",
                r.declared_at, g.name, existing.id
            )));
        }
        return Ok(None);
    }
    let mut argv = vec!["groupadd".to_string()];
    if g.system {
        argv.push("--system".into());
    }
    if let Some(gid) = g.gid {
        argv.extend(["--gid".into(), gid.to_string()]);
    }
    argv.extend(["--".into(), g.name.clone()]);
    let details = vec![format!(
        "{}group{}",
        if g.system { "system " } else { "" },
        g.gid.map(|gid| format!(", gid {gid}")).unwrap_or_default()
    )];
    Ok(Some(account_change(
        r,
        p,
        ChangeAction::Create,
        details,
        argv,
    )))
}
