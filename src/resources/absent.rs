//! `absent`: nothing at a path: a file, a link or a whole directory is removed.
//! Top-level directories such as /etc are refused.

use std::path::PathBuf;

use marked_yaml::Spanned;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::host::Existing;
use crate::plan::{Change, ChangeAction, Op};
use crate::resources::path;
use crate::resources::planner::Planner;
use crate::resources::{Expand, Resource};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Spec {
    path: Spanned<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Absent {
    pub(crate) path: PathBuf,
}

pub(super) fn expand(s: &Spec, x: &mut dyn Expand) -> Option<Absent> {
    let path = path::device_path(x, &s.path)?;
    if path.components().count() < 3 {
        x.problem(
            s.path.span(),
            format!(
                "refusing to remove the top-level directory {}",
                path.display()
            ),
        );
        return None;
    }
    let path = path::not_reserved(x, &s.path, path)?;
    Some(Absent { path })
}

pub(super) fn plan(a: &Absent, r: &Resource, p: &mut Planner) -> Result<Option<Change>> {
    let what = match p.host.inspect(&a.path)? {
        Existing::Missing => return Ok(None),
        Existing::Directory { .. } => "directory and everything in it",
        Existing::Symlink { .. } => "symlink",
        _ => "file",
    };
    Ok(Some(r.change(
        ChangeAction::Remove,
        vec![format!("removes the {what}")],
        vec![Op::Remove {
            path: a.path.clone(),
        }],
    )))
}
