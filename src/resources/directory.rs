//! `directory`: a directory with its mode and owner. Created with its missing parents;
//! a file or link where a directory is declared is an error, never replaced silently.

use std::path::PathBuf;

use marked_yaml::Spanned;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::host::accounts::Principal;
use crate::host::Existing;
use crate::plan::{Change, ChangeAction, Op};
use crate::resources::path::{self, set_metadata};
use crate::resources::planner::Planner;
use crate::resources::{Expand, Resource};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Spec {
    path: Spanned<String>,
    mode: Option<Spanned<String>>,
    owner: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    /// Allows the setuid bit in `mode`.
    setuid: Option<Spanned<bool>>,
    /// Allows the setgid bit in `mode`.
    setgid: Option<Spanned<bool>>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Directory {
    pub(crate) path: PathBuf,
    pub(crate) mode: u32,
    pub(crate) owner: Principal,
    pub(crate) group: Principal,
}

impl Directory {
    pub(super) fn digest_into(&self, h: &mut crate::digest::Sha256) {
        h.update(format!("{:o}:{}:{}", self.mode, self.owner, self.group));
    }
}

pub(super) fn expand(s: &Spec, x: &mut dyn Expand) -> Option<Directory> {
    let path = path::managed_path(x, &s.path);
    let mode = path::mode(x, s.mode.as_ref(), 0o755);
    if let Some(at) = &s.mode {
        path::privileged_bits(x, at, mode, [s.setuid.as_ref(), s.setgid.as_ref()]);
    }
    let owner = path::owner(x, s.owner.as_ref());
    let group = path::owner(x, s.group.as_ref());
    Some(Directory {
        path: path?,
        mode: mode?,
        owner,
        group,
    })
}

pub(super) fn plan(d: &Directory, r: &Resource, p: &mut Planner) -> Result<Option<Change>> {
    let path = &d.path;
    let existing = p.host.inspect(path)?;
    let want = p.wanted_ids(r, &d.owner, &d.group)?;
    let mut details = Vec::new();
    let mut ops = Vec::new();
    let action = match &existing {
        Existing::Missing => {
            p.parents(path, &mut ops, &mut details)?;
            details.push(format!(
                "mode {:04o}, owner {}",
                d.mode,
                p.describe_owner(&d.owner, &d.group)
            ));
            p.planned_dirs.insert(path.clone());
            ops.push(Op::CreateDir {
                path: path.clone(),
                mode: d.mode,
                owner: d.owner.clone(),
                group: d.group.clone(),
            });
            Some(ChangeAction::Create)
        }
        Existing::Directory { mode, uid, gid } => {
            let now = (*mode, *uid, *gid);
            if p.meta_details(now, d.mode, want, (&d.owner, &d.group), &mut details) {
                ops.push(set_metadata(path, d.mode, &d.owner, &d.group));
                Some(ChangeAction::Change)
            } else {
                None
            }
        }
        Existing::File { .. } => return Err(path::conflict(r, path, "a file")),
        Existing::Symlink { .. } => return Err(path::conflict(r, path, "a symlink")),
        Existing::Other => return Err(path::conflict(r, path, "a special file")),
    };
    let owner = p.describe_owner(&d.owner, &d.group);
    details.extend(path::privilege_marks(d.mode, &owner, true));
    Ok(action.map(|action| {
        let mut c = r.change(action, details, ops);
        c.creates = existing == Existing::Missing;
        c
    }))
}
