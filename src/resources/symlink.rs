//! `symlink`: a link to a target, created or replaced atomically (a temporary link
//! renamed over the path). A file at the path is replaced; a directory is an error.

use std::path::PathBuf;

use marked_yaml::Spanned;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::host::Existing;
use crate::plan::{Change, ChangeAction, Op};
use crate::resources::planner::Planner;
use crate::resources::{checks, path};
use crate::resources::{Expand, Resource};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Spec {
    path: Spanned<String>,
    target: Spanned<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Symlink {
    pub(crate) path: PathBuf,
    pub(crate) target: PathBuf,
}

pub(super) fn expand(s: &Spec, x: &mut dyn Expand) -> Option<Symlink> {
    let path = path::managed_path(x, &s.path);
    let target = x.text(&s.target);
    match &target {
        Some(t) if t.is_empty() => x.problem(
            s.target.span(),
            "expected the link's target, not an empty string".into(),
        ),
        Some(t) => {
            let why = checks::text_problem(t).or_else(|| {
                (t.len() > checks::PATH_MAX).then(|| {
                    format!(
                        "it is {} bytes long, more than {}",
                        t.len(),
                        checks::PATH_MAX
                    )
                })
            });
            if let Some(why) = why {
                x.problem(
                    s.target.span(),
                    format!("`{}` is not a link target: {why}", checks::shown(t)),
                );
            }
        }
        None => {}
    }
    Some(Symlink {
        path: path?,
        target: target?.into(),
    })
}

pub(super) fn plan(l: &Symlink, r: &Resource, p: &mut Planner) -> Result<Option<Change>> {
    let path = &l.path;
    let target = &l.target;
    let existing = p.host.inspect(path)?;
    let mut details = Vec::new();
    let mut ops = Vec::new();
    let op = Op::Symlink {
        path: path.clone(),
        target: target.clone(),
    };
    let action = match &existing {
        Existing::Missing => {
            p.parents(path, &mut ops, &mut details)?;
            details.push(format!("→ {}", target.display()));
            ops.push(op);
            Some(ChangeAction::Create)
        }
        Existing::Symlink { target: t } if t == target => None,
        Existing::Symlink { target: t } => {
            details.push(format!("target {} → {}", t.display(), target.display()));
            ops.push(op);
            Some(ChangeAction::Change)
        }
        Existing::File { .. } => {
            details.push(format!(
                "replaces a file with a link → {}",
                target.display()
            ));
            ops.push(op);
            Some(ChangeAction::Change)
        }
        Existing::Directory { .. } => return Err(path::conflict(r, path, "a directory")),
        Existing::Other => return Err(path::conflict(r, path, "a special file")),
    };
    Ok(action.map(|action| {
        let mut c = r.change(action, details, ops);
        c.creates = existing == Existing::Missing;
        c
    }))
}
