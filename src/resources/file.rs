//! `file`: a file's content (inline, a file of the role, or a rendered template), mode
//! and owner. Written atomically; replaced only where content or metadata differ; a
//! `secret` file's content is never printed, diffed or logged.

use std::path::PathBuf;

use marked_yaml::Spanned;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::digest::sha256_hex;
use crate::error::Result;
use crate::host::accounts::Principal;
use crate::host::Existing;
use crate::plan::{Change, ChangeAction, Op};
use crate::resources::path::{self, content_diff, set_metadata};
use crate::resources::planner::Planner;
use crate::resources::{Expand, Resource};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Spec {
    path: Spanned<String>,
    content: Option<Spanned<String>>,
    source: Option<Spanned<String>>,
    template: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    owner: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    #[serde(default)]
    secret: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct File {
    pub(crate) path: PathBuf,
    #[serde(skip)]
    pub(crate) content: Vec<u8>,
    pub(crate) mode: u32,
    pub(crate) owner: Principal,
    pub(crate) group: Principal,
    /// Never printed, diffed or logged.
    pub(crate) secret: bool,
}

impl File {
    /// A root-owned 0644 file (what an apt source becomes).
    pub(crate) fn plain(path: PathBuf, content: Vec<u8>) -> File {
        File {
            path,
            content,
            mode: 0o644,
            owner: Principal::Id(0),
            group: Principal::Id(0),
            secret: false,
        }
    }

    pub(super) fn digest_into(&self, h: &mut sha2::Sha256) {
        h.update(sha256_hex(&self.content));
        h.update(format!("{:o}:{}:{}", self.mode, self.owner, self.group));
    }
}

pub(super) fn expand(s: &Spec, x: &mut dyn Expand) -> Result<Option<File>> {
    let path = path::device_path(x, &s.path);
    let mode = path::mode(x, s.mode.as_ref(), 0o644);
    let owner = path::owner(x, s.owner.as_ref());
    let group = path::owner(x, s.group.as_ref());
    let secrets = x.secrets_read();
    let given = [&s.content, &s.source, &s.template]
        .iter()
        .filter(|c| c.is_some())
        .count();
    let content = if given != 1 {
        x.problem(
            s.path.span(),
            "a file needs exactly one of `content`, `source` (a file in the role's files/) or `template` (in templates/)".into(),
        );
        None
    } else if let Some(c) = &s.content {
        x.text(c).map(String::into_bytes)
    } else if let Some(name) = &s.source {
        x.source(name)?
    } else if let Some(name) = &s.template {
        x.template(name)?
    } else {
        None
    };
    Ok(match (path, mode, content) {
        (Some(path), Some(mode), Some(content)) => Some(File {
            path,
            content,
            mode,
            owner,
            group,
            // Content that renders a device-held secret is secret whatever it says.
            secret: s.secret || x.secrets_read() != secrets,
        }),
        _ => None,
    })
}

pub(super) fn plan(f: &File, r: &Resource, p: &mut Planner) -> Result<Option<Change>> {
    let path = &f.path;
    let existing = p.host.inspect(path)?;
    let want = p.wanted_ids(r, &f.owner, &f.group)?;
    let owner = (&f.owner, &f.group);
    let mut details = Vec::new();
    let mut ops = Vec::new();
    let mut diff = None;
    let write = Op::WriteFile {
        path: path.clone(),
        content: f.content.clone(),
        mode: f.mode,
        owner: f.owner.clone(),
        group: f.group.clone(),
    };
    let action = match &existing {
        Existing::Missing => {
            p.parents(path, &mut ops, &mut details)?;
            details.push(format!(
                "mode {:04o}, owner {}, {} bytes",
                f.mode,
                p.describe_owner(&f.owner, &f.group),
                f.content.len()
            ));
            diff = content_diff(path, b"", &f.content, f.secret, &mut details);
            ops.push(write);
            Some(ChangeAction::Create)
        }
        Existing::File { mode, uid, gid } => {
            let now = (*mode, *uid, *gid);
            let current = p.host.read(path)?;
            if current != f.content {
                diff = content_diff(path, &current, &f.content, f.secret, &mut details);
                p.meta_details(now, f.mode, want, owner, &mut details);
                ops.push(write);
                Some(ChangeAction::Change)
            } else if p.meta_details(now, f.mode, want, owner, &mut details) {
                ops.push(set_metadata(path, f.mode, &f.owner, &f.group));
                Some(ChangeAction::Change)
            } else {
                None
            }
        }
        Existing::Symlink { target } => {
            details.push(format!("replaces a symlink to {}", target.display()));
            diff = content_diff(path, b"", &f.content, f.secret, &mut details);
            ops.push(write);
            Some(ChangeAction::Change)
        }
        Existing::Directory { .. } => return Err(path::conflict(r, path, "a directory")),
        Existing::Other => return Err(path::conflict(r, path, "a special file")),
    };
    Ok(action.map(|action| {
        let mut c = r.change(action, details, ops);
        c.diff = diff;
        c.secret = f.secret;
        c.creates = existing == Existing::Missing;
        c
    }))
}
