//! Where a fleet repository's files are read from: a commit of the local clone (what
//! `pull` uses; no working tree, so nothing can be half checked out) or a directory
//! (a maintainer's working tree with `--repo`, the built-in roles). Paths are relative,
//! '/'-separated, and never leave the source.

use std::path::{Path, PathBuf};

use crate::content::Content;
use crate::error::{Error, Result};

pub(crate) enum Source<'r> {
    Commit {
        repo: &'r git2::Repository,
        tree: git2::Tree<'r>,
        label: String,
    },
    Dir(PathBuf),
    /// Files in memory by relative path (in-process tests).
    #[cfg(test)]
    Files(std::collections::BTreeMap<String, Vec<u8>>),
}

impl<'r> Source<'r> {
    pub(crate) fn commit(repo: &'r git2::Repository, commit: git2::Oid) -> Result<Source<'r>> {
        let tree = repo
            .find_commit(commit)
            .and_then(|c| c.tree())
            .map_err(|e| Error::Damaged(format!("commit {commit}: {}", e.message())))?;
        Ok(Source::Commit {
            repo,
            tree,
            label: short(commit),
        })
    }

    /// A human label: the short commit id or the directory.
    pub(crate) fn label(&self) -> String {
        match self {
            Source::Commit { label, .. } => label.clone(),
            Source::Dir(p) => p.display().to_string(),
            #[cfg(test)]
            Source::Files(_) => "memory".into(),
        }
    }

    /// The content of a file, or None when there is no file at that path.
    pub(crate) fn read(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Source::Commit { repo, tree, .. } => {
                let entry = match tree.get_path(Path::new(rel)) {
                    Ok(e) => e,
                    Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
                    Err(e) => return Err(unreadable(rel, e)),
                };
                if entry.kind() != Some(git2::ObjectType::Blob) {
                    return Ok(None);
                }
                let blob = repo.find_blob(entry.id()).map_err(|e| unreadable(rel, e))?;
                Ok(Some(blob.content().to_vec()))
            }
            Source::Dir(dir) => {
                let p = dir.join(rel);
                match std::fs::read(&p) {
                    Ok(b) => Ok(Some(b)),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::IsADirectory
                        ) =>
                    {
                        Ok(None)
                    }
                    Err(e) if e.raw_os_error() == Some(nix::libc::ENOTDIR) => Ok(None),
                    Err(e) => Err(Error::io("cannot read", p, e)),
                }
            }
            #[cfg(test)]
            Source::Files(files) => Ok(files.get(rel).cloned()),
        }
    }

    /// A file as a content reference (read as a stream later), or None when there is
    /// no file at that path: a blob of the clone, or a file of the directory (hashed
    /// now, as a stream).
    pub(crate) fn content(&self, rel: &str) -> Result<Option<Content>> {
        match self {
            Source::Commit { repo, tree, .. } => {
                let entry = match tree.get_path(Path::new(rel)) {
                    Ok(e) => e,
                    Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
                    Err(e) => return Err(unreadable(rel, e)),
                };
                if entry.kind() != Some(git2::ObjectType::Blob) {
                    return Ok(None);
                }
                let id = entry.id();
                let (size, _) = repo
                    .odb()
                    .and_then(|odb| odb.read_header(id))
                    .map_err(|e| Error::Damaged(format!("{rel} (blob {id}): {}", e.message())))?;
                Ok(Some(Content::Blob {
                    objects: repo.path().join("objects"),
                    id,
                    size: size as u64,
                }))
            }
            Source::Dir(dir) => {
                let p = dir.join(rel);
                match std::fs::metadata(&p) {
                    Ok(m) if m.is_file() => Content::file(p).map(Some),
                    Ok(_) => Ok(None),
                    Err(e)
                        if e.kind() == std::io::ErrorKind::NotFound
                            || e.raw_os_error() == Some(nix::libc::ENOTDIR) =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(Error::io("cannot read", p, e)),
                }
            }
            #[cfg(test)]
            Source::Files(files) => Ok(files.get(rel).cloned().map(Content::Bytes)),
        }
    }

    /// Names of the entries of a directory, sorted; None when it does not exist.
    pub(crate) fn list(&self, rel: &str) -> Result<Option<Vec<String>>> {
        let mut names = match self {
            Source::Commit { repo, tree, .. } => {
                let sub = if rel.is_empty() {
                    tree.clone()
                } else {
                    match tree.get_path(Path::new(rel)) {
                        Ok(e) if e.kind() == Some(git2::ObjectType::Tree) => {
                            repo.find_tree(e.id()).map_err(|e| unreadable(rel, e))?
                        }
                        Ok(_) => return Ok(None),
                        Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
                        Err(e) => return Err(unreadable(rel, e)),
                    }
                };
                sub.iter()
                    .filter_map(|e| e.name().ok().map(str::to_string))
                    .collect::<Vec<_>>()
            }
            Source::Dir(dir) => {
                let p = dir.join(rel);
                match std::fs::read_dir(&p) {
                    Ok(rd) => rd
                        .filter_map(|e| e.ok())
                        .filter_map(|e| e.file_name().into_string().ok())
                        .collect(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) if e.raw_os_error() == Some(nix::libc::ENOTDIR) => return Ok(None),
                    Err(e) => return Err(Error::io("cannot list", p, e)),
                }
            }
            #[cfg(test)]
            Source::Files(files) => {
                let prefix = if rel.is_empty() {
                    String::new()
                } else {
                    format!("{rel}/")
                };
                let mut names: Vec<String> = files
                    .keys()
                    .filter_map(|k| k.strip_prefix(&prefix))
                    .map(|rest| rest.split('/').next().unwrap_or(rest).to_string())
                    .collect();
                names.dedup();
                if names.is_empty() {
                    return Ok(None);
                }
                names
            }
        };
        names.sort();
        Ok(Some(names))
    }
}

/// A failed read of the clone's objects: the clone is damaged (it is cloned again).
fn unreadable(rel: &str, e: git2::Error) -> Error {
    Error::Damaged(format!("{rel}: {}", e.message()))
}

pub(crate) fn short(oid: git2::Oid) -> String {
    oid.to_string()[..12].to_string()
}
