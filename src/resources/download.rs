//! `download`: a file fetched from a URL and checked against its declared sha256, or an
//! archive (`tar.gz`, `tar.xz`, `zip`) unpacked into a directory that is managed as a
//! whole (replaced atomically when the digest changes, never half unpacked). Planning
//! never touches the network: the digest decides. What is on the device is known to
//! match without hashing it when it still looks as it did when it last matched (its
//! stamp in the state: device, inode, size, times); otherwise a file is hashed and a
//! directory is unpacked again. Applying is in src/host/fetch.rs.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use marked_yaml::Spanned;
use serde::{Deserialize, Serialize};

use crate::config::redact;
use crate::error::{Error, Result};
use crate::host::accounts::Principal;
use crate::host::fetch::Fetch;
use crate::host::{Existing, Host};
use crate::plan::{Change, ChangeAction, Op};
use crate::resources::path;
use crate::resources::planner::Planner;
use crate::resources::{Expand, Resource};

/// The archive formats `unpack:` takes.
pub(crate) const FORMATS: [&str; 3] = ["tar.gz", "tar.xz", "zip"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Spec {
    path: Spanned<String>,
    url: Spanned<String>,
    sha256: Spanned<String>,
    unpack: Option<Spanned<String>>,
    strip_components: Option<Spanned<u32>>,
    mode: Option<Spanned<String>>,
    owner: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Download {
    pub(crate) path: PathBuf,
    pub(crate) url: String,
    pub(crate) sha256: String,
    /// The archive format, and the leading path components to strip.
    pub(crate) unpack: Option<(String, u32)>,
    pub(crate) mode: u32,
    pub(crate) owner: Principal,
    pub(crate) group: Principal,
    /// The URL renders a secret (a token): never shown.
    #[serde(skip)]
    pub(crate) secret: bool,
}

pub(super) fn expand(s: &Spec, x: &mut dyn Expand) -> Option<Download> {
    let path = path::device_path(x, &s.path);
    let secrets = x.secrets_read();
    let url = x.text(&s.url);
    let secret = x.secrets_read() != secrets;
    if let Some(u) = &url {
        if !(u.starts_with("http://") || u.starts_with("https://"))
            || u.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            let shown = if secret { "the URL" } else { u.as_str() };
            x.problem(
                s.url.span(),
                format!("`{shown}` is not a download URL: expected http:// or https://"),
            );
        }
    }
    let sha256 = x.text(&s.sha256).map(|h| h.to_ascii_lowercase());
    if matches!(&sha256, Some(h) if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit())) {
        x.problem(
            s.sha256.span(),
            "expected the sha256 of the download: 64 hexadecimal digits".into(),
        );
    }
    let unpack = match &s.unpack {
        None => None,
        Some(u) if FORMATS.contains(&u.as_str()) => Some(u.to_string()),
        Some(u) => {
            x.problem(
                u.span(),
                format!(
                    "`{}` is not an archive format: expected one of {}",
                    u.as_str(),
                    FORMATS.join(", ")
                ),
            );
            None
        }
    };
    let strip = s.strip_components.as_ref().map(|n| **n).unwrap_or(0);
    if let Some(n) = &s.strip_components {
        if unpack.is_none() || unpack.as_deref() == Some("zip") {
            x.problem(
                n.span(),
                "strip_components goes with `unpack: tar.gz` or `unpack: tar.xz`".into(),
            );
        }
    }
    let default_mode = if s.unpack.is_some() { 0o755 } else { 0o644 };
    let mode = path::mode(x, s.mode.as_ref(), default_mode);
    let owner = path::owner(x, s.owner.as_ref());
    let group = path::owner(x, s.group.as_ref());
    Some(Download {
        path: path?,
        url: url?,
        sha256: sha256?,
        unpack: unpack.map(|u| (u, strip)),
        mode: mode?,
        owner,
        group,
        secret,
    })
}

/// What a file or directory looks like, for knowing it unchanged without hashing it.
pub(crate) fn stamp(host: &Host, device_path: &Path) -> Option<String> {
    let m = std::fs::symlink_metadata(host.path(device_path)).ok()?;
    Some(format!(
        "{}:{}:{}:{}.{}:{}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

impl Download {
    /// The URL for people (credentials and secrets left out).
    pub(crate) fn shown_url(&self) -> String {
        if self.secret {
            "(a URL that carries a secret)".into()
        } else {
            redact(&self.url)
        }
    }
}

pub(super) fn plan(d: &Download, r: &Resource, p: &mut Planner) -> Result<Option<Change>> {
    let existing = p.host.inspect(&d.path)?;
    let want = p.wanted_ids(r, &d.owner, &d.group)?;
    let mut details = Vec::new();
    let mut ops = Vec::new();
    let is_dir = d.unpack.is_some();
    let action = match (&existing, is_dir) {
        (Existing::Missing, _) => {
            p.parents(&d.path, &mut ops, &mut details)?;
            Some(ChangeAction::Create)
        }
        (Existing::File { mode, uid, gid }, false)
        | (Existing::Directory { mode, uid, gid }, true) => {
            if matches_here(d, r, p)? {
                let now = (*mode, *uid, *gid);
                if p.meta_details(now, d.mode, want, (&d.owner, &d.group), &mut details) {
                    ops.push(path::set_metadata(&d.path, d.mode, &d.owner, &d.group));
                    let mut c = r.change(ChangeAction::Change, details, ops);
                    c.secret = d.secret;
                    return Ok(Some(c));
                }
                return Ok(None);
            }
            details.push(if is_dir {
                "its archive's sha256 is not the one recorded: unpacked again and swapped in whole"
                    .to_string()
            } else {
                "its sha256 differs: downloaded again".to_string()
            });
            Some(ChangeAction::Change)
        }
        (Existing::Directory { .. }, false) => {
            return Err(path::conflict(r, &d.path, "a directory"))
        }
        (Existing::File { .. }, true) => return Err(path::conflict(r, &d.path, "a file")),
        (Existing::Symlink { .. }, _) => return Err(path::conflict(r, &d.path, "a symlink")),
        (Existing::Other, _) => return Err(path::conflict(r, &d.path, "a special file")),
    };
    describe(d, p, &mut details)?;
    ops.push(Op::Download(Box::new(Fetch {
        url: d.url.clone(),
        sha256: d.sha256.clone(),
        path: d.path.clone(),
        unpack: d.unpack.clone(),
        mode: d.mode,
        owner: d.owner.clone(),
        group: d.group.clone(),
        cache: p.options.cache_dir(),
        timeout: p.options.http_timeout,
        shown: d.shown_url(),
    })));
    Ok(action.map(|action| {
        let mut c = r.change(action, details, ops);
        c.secret = d.secret;
        c.creates = existing == Existing::Missing;
        c
    }))
}

/// Whether what is at the path is the declared download: it looks as when it last
/// matched (its stamp) under the same declaration, or (a file) its sha256 is the one
/// declared. A file found to match gets its stamp recorded.
fn matches_here(d: &Download, r: &Resource, p: &mut Planner) -> Result<bool> {
    let id = r.kind.id();
    let now = stamp(p.host, &d.path);
    let known = p
        .previous
        .and_then(|prev| prev.get(&id))
        .is_some_and(|s| s.digest == r.kind.digest() && s.stamp.is_some() && s.stamp == now);
    if known {
        p.stamps.insert(id, now.unwrap_or_default());
        return Ok(true);
    }
    if d.unpack.is_some() {
        return Ok(false);
    }
    let real = p.host.path(&d.path);
    let file = p.host.open(&d.path)?;
    let got =
        crate::digest::sha256_copy(file, None).map_err(|e| Error::io("cannot read", &real, e))?;
    if got == d.sha256 {
        p.stamps.insert(id, now.unwrap_or_default());
        return Ok(true);
    }
    Ok(false)
}

fn describe(d: &Download, p: &Planner, details: &mut Vec<String>) -> Result<()> {
    details.push(format!("from {}", d.shown_url()));
    details.push(format!("sha256 {}", d.sha256));
    let part = p.options.cache_dir().join(format!("{}.part", d.sha256));
    if let Some(n) = p.host.file_size(&part)?.filter(|n| *n > 0) {
        details.push(format!("resumes a partial download at {n} bytes"));
    }
    match &d.unpack {
        Some((format, 0)) => details.push(format!("unpacks the {format} archive into it, swapped in whole")),
        Some((format, n)) => details.push(format!(
            "unpacks the {format} archive into it (without its first {n} path component{}), swapped in whole",
            if *n == 1 { "" } else { "s" }
        )),
        None => {}
    }
    details.push(format!(
        "mode {:04o}, owner {}",
        d.mode,
        p.describe_owner(&d.owner, &d.group)
    ));
    Ok(())
}
