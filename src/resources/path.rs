//! What the path kinds (file, directory, symlink, absent) share: a device path as
//! validated from role.yml, modes and owners; and in planning, what is at the path now,
//! the parents to create, metadata differences and content diffs.

use std::path::{Path, PathBuf};

use marked_yaml::Spanned;

use crate::digest::sha256_hex;
use crate::error::{Error, Result};
use crate::host::accounts::Principal;
use crate::plan::Op;
use crate::resources::planner::Planner;
use crate::resources::{checks, Expand, Resource};

/// A device path from role.yml (rendered): exactly what it looks like (src/resources/checks.rs).
pub(super) fn device_path(x: &mut dyn Expand, at: &Spanned<String>) -> Option<PathBuf> {
    let p = x.text(at)?;
    checked_path(x, at, &p)
}

/// A rendered device path, checked.
pub(super) fn checked_path(x: &mut dyn Expand, at: &Spanned<String>, p: &str) -> Option<PathBuf> {
    match checks::path_problem(p) {
        None => Some(PathBuf::from(p)),
        Some(why) => {
            x.problem(
                at.span(),
                format!("`{}` is not a device path: {why}", checks::shown(p)),
            );
            None
        }
    }
}

/// The path of a path kind: a device path that is not one of the agent's own files.
pub(super) fn managed_path(x: &mut dyn Expand, at: &Spanned<String>) -> Option<PathBuf> {
    let p = device_path(x, at)?;
    not_reserved(x, at, p)
}

/// The path, unless it is one of the agent's own files (a problem at `at`).
pub(super) fn not_reserved(
    x: &mut dyn Expand,
    at: &Spanned<String>,
    p: PathBuf,
) -> Option<PathBuf> {
    if let Some(why) = x.reserved().problem(&p) {
        x.problem(at.span(), why);
        return None;
    }
    Some(p)
}

/// A mode in quotes ("0644"), or the default.
pub(super) fn mode(x: &mut dyn Expand, m: Option<&Spanned<String>>, default: u32) -> Option<u32> {
    let Some(m) = m else { return Some(default) };
    let s = m.as_str();
    match u32::from_str_radix(s, 8) {
        Ok(v) if (3..=4).contains(&s.len()) && v <= 0o7777 => Some(v),
        _ => {
            x.problem(
                m.span(),
                format!(
                    "`{s}` is not a file mode: expected 3 or 4 octal digits, at most 7777, such as 0644"
                ),
            );
            None
        }
    }
}

/// The setuid (04000) and setgid (02000) bits need an opt-in on the resource:
/// `setuid: true`, `setgid: true`; an opt-in without its bit is a mistake too.
pub(super) fn privileged_bits(
    x: &mut dyn Expand,
    at: &Spanned<String>,
    mode: Option<u32>,
    opt_in: [Option<&Spanned<bool>>; 2],
) {
    for ((bit, key), opt) in [(0o4000, "setuid"), (0o2000, "setgid")]
        .into_iter()
        .zip(opt_in)
    {
        let allowed = opt.is_some_and(|o| **o);
        match (mode.map(|m| m & bit != 0), allowed) {
            (Some(true), false) => x.problem(
                at.span(),
                format!(
                    "mode {} sets the {key} bit: add `{key}: true` to the resource to allow it",
                    at.as_str()
                ),
            ),
            (Some(false), true) => x.problem(
                opt.expect("given").span(),
                format!("`{key}: true` but the mode has no {key} bit"),
            ),
            _ => {}
        }
    }
}

/// What the plan says of a mode with the setuid or setgid bit: who the file runs as.
pub(super) fn privilege_marks(mode: u32, owner: &str, directory: bool) -> Vec<String> {
    let (user, group) = owner.split_once(':').unwrap_or((owner, owner));
    let mut marks = Vec::new();
    if mode & 0o4000 != 0 && !directory {
        marks.push(format!("SETUID: runs as user {user}"));
    }
    if mode & 0o2000 != 0 {
        marks.push(if directory {
            format!("SETGID: new entries get group {group}")
        } else {
            format!("SETGID: runs with group {group}")
        });
    }
    marks
}

/// An owner or group (a template), root when not given.
pub(super) fn owner(x: &mut dyn Expand, o: Option<&Spanned<String>>) -> Principal {
    o.and_then(|o| x.text(o))
        .map(Principal::parse)
        .unwrap_or(Principal::Id(0))
}

/// What is at a path declared as another kind: an error, never a silent replacement.
pub(super) fn conflict(r: &Resource, path: &Path, what: &str) -> Error {
    Error::Other(format!(
        "{}: {} is {what} on the device; expected a {} (remove it by hand or in an earlier commit with an `absent` resource)",
        r.declared_at,
        path.display(),
        r.kind.name()
    ))
}

pub(super) fn set_metadata(path: &Path, mode: u32, owner: &Principal, group: &Principal) -> Op {
    Op::SetMetadata {
        path: path.to_path_buf(),
        mode,
        owner: owner.clone(),
        group: group.clone(),
    }
}

impl Planner<'_> {
    /// A user or group name: it exists, or a user/group resource of this plan makes it.
    pub(super) fn check_principal(
        &self,
        r: &Resource,
        p: &Principal,
        group: bool,
    ) -> Result<Option<u32>> {
        let name = match p {
            Principal::Id(id) => return Ok(Some(*id)),
            Principal::Name(name) => name,
        };
        let found = if group {
            self.host.gid(name)?
        } else {
            self.host.uid(name)?
        };
        let declared = if group {
            self.declared_groups.contains(name)
        } else {
            self.declared_users.contains(name)
        };
        match (found, declared) {
            (Some(id), _) => Ok(Some(id)),
            (None, true) => Ok(None),
            (None, false) => Err(Error::Other(format!(
                "{}: the {} `{name}` does not exist on the device (for {}); declare it with a `{}` resource",
                r.declared_at,
                if group { "group" } else { "user" },
                r.kind.subject(),
                if group { "group" } else { "user" },
            ))),
        }
    }

    /// The ids an owner and group resolve to now (None: made by this plan).
    pub(super) fn wanted_ids(
        &self,
        r: &Resource,
        owner: &Principal,
        group: &Principal,
    ) -> Result<(Option<u32>, Option<u32>)> {
        Ok((
            self.check_principal(r, owner, false)?,
            self.check_principal(r, group, true)?,
        ))
    }

    pub(super) fn describe_owner(&self, owner: &Principal, group: &Principal) -> String {
        let name = |p: &Principal, group: bool| match p {
            Principal::Name(n) => n.clone(),
            Principal::Id(id) => {
                let n = if group {
                    self.host.group_name(*id)
                } else {
                    self.host.user_name(*id)
                };
                n.unwrap_or_else(|| id.to_string())
            }
        };
        format!("{}:{}", name(owner, false), name(group, true))
    }

    fn describe_ids(&self, uid: u32, gid: u32) -> String {
        let u = self.host.user_name(uid).unwrap_or_else(|| uid.to_string());
        let g = self.host.group_name(gid).unwrap_or_else(|| gid.to_string());
        format!("{u}:{g}")
    }

    /// Creates the missing parents of a path, except those an earlier change creates.
    pub(super) fn parents(
        &mut self,
        path: &Path,
        ops: &mut Vec<Op>,
        details: &mut Vec<String>,
    ) -> Result<()> {
        for dir in self.host.missing_parents(path)? {
            if !self.planned_dirs.insert(dir.clone()) {
                continue;
            }
            details.push(format!("creates parent {} (0755 root:root)", dir.display()));
            ops.push(Op::CreateDir {
                path: dir,
                mode: 0o755,
                owner: Principal::Id(0),
                group: Principal::Id(0),
            });
        }
        Ok(())
    }

    /// Describes how mode and owner differ; true when they do.
    pub(super) fn meta_details(
        &self,
        (m, u, g): (u32, u32, u32),
        mode: u32,
        want: (Option<u32>, Option<u32>),
        owner: (&Principal, &Principal),
        details: &mut Vec<String>,
    ) -> bool {
        let mut differs = false;
        if m != mode {
            details.push(format!("mode {m:04o} → {mode:04o}"));
            differs = true;
        }
        if want.0 != Some(u) || want.1 != Some(g) {
            details.push(format!(
                "owner {} → {}",
                self.describe_ids(u, g),
                self.describe_owner(owner.0, owner.1)
            ));
            differs = true;
        }
        differs
    }
}

/// A unified diff of text content; for binary content or a secret, a line in `details`.
pub(super) fn content_diff(
    path: &Path,
    old: &[u8],
    new: &[u8],
    secret: bool,
    details: &mut Vec<String>,
) -> Option<String> {
    if secret {
        if !old.is_empty() {
            details.push("content changed (secret: not shown)".into());
        } else {
            details.push("content is secret: not shown".into());
        }
        return None;
    }
    match (std::str::from_utf8(old), std::str::from_utf8(new)) {
        (Ok(o), Ok(n)) if !o.contains('\0') && !n.contains('\0') => {
            let name = path.display().to_string();
            let d = similar::TextDiff::from_lines(o, n)
                .unified_diff()
                .context_radius(3)
                .header(&name, &name)
                .to_string();
            Some(d)
        }
        _ => {
            details.push(format!(
                "binary content: sha256 {} → {}",
                &sha256_hex(old)[..12],
                &sha256_hex(new)[..12]
            ));
            None
        }
    }
}
