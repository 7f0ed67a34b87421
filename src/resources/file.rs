//! `file`: a file's content (inline, a file of the role, or a rendered template), mode
//! and owner. Written atomically; replaced only where content or metadata differ; a
//! `secret` file's content is never printed, diffed or logged.

use std::path::{Path, PathBuf};

use marked_yaml::Spanned;
use serde::{Deserialize, Serialize};

use crate::content::{self, Content, DIFF_LIMIT};
use crate::digest::sha256_hex;
use crate::error::{Error, Result};
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
    /// Allows the setuid bit in `mode`.
    setuid: Option<Spanned<bool>>,
    /// Allows the setgid bit in `mode`.
    setgid: Option<Spanned<bool>>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct File {
    pub(crate) path: PathBuf,
    /// In memory (inline, templates) or a reference to a file of the fleet repository.
    #[serde(skip)]
    pub(crate) content: Content,
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
            content: Content::Bytes(content),
            mode: 0o644,
            owner: Principal::Id(0),
            group: Principal::Id(0),
            secret: false,
        }
    }

    /// Content in memory by its sha256; a file of the repository by its git blob id
    /// (known without reading it).
    pub(super) fn digest_into(&self, h: &mut crate::digest::Sha256) {
        // A secret's content is left out: the state and `status --json` never show a
        // digest from which it could be guessed (the plan compares the content itself).
        match &self.content {
            _ if self.secret => h.update("secret"),
            Content::Bytes(b) => h.update(sha256_hex(b)),
            other => h.update(format!("git-blob:{}", other.id())),
        }
        h.update(format!("{:o}:{}:{}", self.mode, self.owner, self.group));
    }
}

pub(super) fn expand(s: &Spec, x: &mut dyn Expand) -> Result<Option<File>> {
    let path = path::managed_path(x, &s.path);
    // A secret is for root alone unless its mode says otherwise.
    let mode = path::mode(x, s.mode.as_ref(), if s.secret { 0o600 } else { 0o644 });
    if let Some(at) = &s.mode {
        path::privileged_bits(x, at, mode, [s.setuid.as_ref(), s.setgid.as_ref()]);
    }
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
        x.text(c).map(|t| Content::Bytes(t.into_bytes()))
    } else if let Some(name) = &s.source {
        x.source(name)?
    } else if let Some(name) = &s.template {
        x.template(name)?.map(Content::Bytes)
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
            diff = new_content_diff(f, None, &mut details)?;
            ops.push(write);
            Some(ChangeAction::Create)
        }
        Existing::File { mode, uid, gid } => {
            let now = (*mode, *uid, *gid);
            let (size, id) = device_content(p, path)?;
            if id != f.content.id() {
                diff = new_content_diff(f, Some((p, size)), &mut details)?;
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
            diff = new_content_diff(f, None, &mut details)?;
            ops.push(write);
            Some(ChangeAction::Change)
        }
        Existing::Directory { .. } => return Err(path::conflict(r, path, "a directory")),
        Existing::Other => return Err(path::conflict(r, path, "a special file")),
    };
    let owner = p.describe_owner(&f.owner, &f.group);
    details.extend(path::privilege_marks(f.mode, &owner, false));
    Ok(action.map(|action| {
        let mut c = r.change(action, details, ops);
        c.diff = diff;
        c.secret = f.secret;
        c.creates = existing == Existing::Missing;
        c
    }))
}

/// The size and git blob id of the file on the device, read as a stream.
fn device_content(p: &Planner, path: &Path) -> Result<(u64, git2::Oid)> {
    let f = p.host.open(path)?;
    let real = p.host.path(path);
    let size = f
        .metadata()
        .map_err(|e| Error::io("cannot inspect", &real, e))?
        .len();
    let id = content::blob_id(f, size).map_err(|e| Error::io("cannot read", &real, e))?;
    Ok((size, id))
}

/// The diff from the device's content (`old`: its size; None when there is none) to
/// the declared one. Content too large to diff is described by its sizes.
fn new_content_diff(
    f: &File,
    old: Option<(&Planner, u64)>,
    details: &mut Vec<String>,
) -> Result<Option<String>> {
    let new_len = f.content.len();
    let old_len = old.map_or(0, |(_, n)| n);
    if f.secret || (new_len <= DIFF_LIMIT && old_len <= DIFF_LIMIT) {
        let current = match old {
            Some((p, _)) if !f.secret => p.host.read(&f.path)?,
            Some(_) => b"-".to_vec(),
            None => Vec::new(),
        };
        let new = match f.secret {
            true => Vec::new(),
            false => f.content.read_all()?,
        };
        return Ok(content_diff(&f.path, &current, &new, f.secret, details));
    }
    details.push(format!(
        "content: {old_len} → {new_len} bytes (over {} KiB: not diffed)",
        DIFF_LIMIT / 1024
    ));
    Ok(None)
}
