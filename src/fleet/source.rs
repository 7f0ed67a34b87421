//! Where a fleet repository's files are read from: a commit of the local clone (what
//! `pull` uses; no working tree, so nothing can be half checked out) or a directory
//! (a maintainer's working tree with `--repo`, the built-in roles). Paths are relative,
//! '/'-separated, and never leave the source.

use std::io::Read;
use std::path::{Path, PathBuf};

use marked_yaml::Node;

use crate::content::Content;
use crate::error::{Error, Invalid, Pos, Result};
use crate::fleet::yaml;

pub(crate) enum Source<'r> {
    Commit {
        repo: &'r git2::Repository,
        tree: git2::Tree<'r>,
        label: String,
    },
    Dir(PathBuf),
    /// Files compiled into the binary (the built-in roles), by relative path.
    Embedded(&'static [(&'static str, &'static [u8])]),
    /// Files in memory by relative path (in-process tests, fuzzing).
    #[cfg(any(test, feature = "fuzzing"))]
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
            Source::Embedded(_) => "the built-in roles".into(),
            #[cfg(any(test, feature = "fuzzing"))]
            Source::Files(_) => "memory".into(),
        }
    }

    /// What is at a path: a file of at most `max` bytes (its size is looked at before
    /// its content is read), a larger one, a symlink (never followed, for a path or any
    /// directory on the way: `plan --repo` and `pull` treat links alike), or nothing.
    pub(crate) fn get(&self, rel: &str, max: u64) -> Result<Entry> {
        match self {
            Source::Commit { repo, tree, .. } => commit_get(repo, tree, rel, max),
            Source::Dir(dir) => dir_get(dir, rel, max),
            Source::Embedded(files) => Ok(in_memory(
                files.iter().find(|(path, _)| *path == rel).map(|(_, b)| *b),
                max,
            )),
            #[cfg(any(test, feature = "fuzzing"))]
            Source::Files(files) => Ok(in_memory(files.get(rel).map(Vec::as_slice), max)),
        }
    }

    /// A file as a content reference (read as a stream later, so no size bound here:
    /// it is never held in memory), or the entry that is there instead (nothing, a
    /// symlink on the way or at the path, not a regular file): a blob of the clone, or
    /// a file of the directory (hashed now, as a stream).
    pub(crate) fn content(&self, rel: &str) -> Result<std::result::Result<Content, Entry>> {
        match self {
            Source::Commit { repo, tree, .. } => {
                let entry = match tree.get_path(Path::new(rel)) {
                    Ok(e) => e,
                    Err(e) if e.code() == git2::ErrorCode::NotFound => {
                        return Ok(Err(commit_link_on_the_way(tree, rel)))
                    }
                    Err(e) => return Err(unreadable(rel, e)),
                };
                if entry.filemode() == GIT_LINK {
                    return Ok(Err(Entry::Link(rel.to_string())));
                }
                if entry.kind() != Some(git2::ObjectType::Blob) {
                    return Ok(Err(Entry::Missing));
                }
                let id = entry.id();
                let (size, _) = repo
                    .odb()
                    .and_then(|odb| odb.read_header(id))
                    .map_err(|e| Error::Damaged(format!("{rel} (blob {id}): {}", e.message())))?;
                Ok(Ok(Content::Blob {
                    objects: repo.path().join("objects"),
                    id,
                    size: size as u64,
                }))
            }
            Source::Dir(dir) => {
                let (p, meta) = match dir_walk(dir, rel)? {
                    Ok(found) => found,
                    Err(entry) => return Ok(Err(entry)),
                };
                if meta.is_dir() {
                    Ok(Err(Entry::Missing))
                } else if !meta.is_file() {
                    Ok(Err(Entry::Special))
                } else {
                    Content::file(p).map(Ok)
                }
            }
            Source::Embedded(files) => Ok(files
                .iter()
                .find(|(path, _)| *path == rel)
                .map(|(_, b)| Content::Bytes(b.to_vec()))
                .ok_or(Entry::Missing)),
            #[cfg(any(test, feature = "fuzzing"))]
            Source::Files(files) => Ok(files
                .get(rel)
                .cloned()
                .map(Content::Bytes)
                .ok_or(Entry::Missing)),
        }
    }

    /// A YAML file of the repository, parsed: None when there is none; a problem at the
    /// file when it is a link, larger than `max` bytes, or not valid YAML.
    pub(crate) fn yaml(&self, rel: &str, max: u64) -> Result<Option<Result<Node, Invalid>>> {
        Ok(match self.get(rel, max)? {
            Entry::Missing => None,
            Entry::File(text) => Some(yaml::parse(rel, &text)),
            other => Some(Err(other.problem(rel, "max_yaml_bytes", max))),
        })
    }

    /// Names of the entries of a directory, sorted; None when it does not exist.
    pub(crate) fn list(&self, rel: &str) -> Result<Option<Vec<String>>> {
        let mut names = match self {
            Source::Commit { repo, tree, .. } => {
                let sub = if rel.is_empty() {
                    tree.clone()
                } else {
                    match tree.get_path(Path::new(rel)) {
                        Ok(e) if e.filemode() == GIT_LINK => {
                            let link = Entry::Link(rel.to_string());
                            return Err(Error::Invalid(vec![link.problem(rel, "", 0)]));
                        }
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
                if let Err(link @ Entry::Link(_)) = dir_walk(dir, rel)? {
                    return Err(Error::Invalid(vec![link.problem(rel, "", 0)]));
                }
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
            Source::Embedded(files) => match children(files.iter().map(|(p, _)| *p), rel) {
                Some(names) => names,
                None => return Ok(None),
            },
            #[cfg(any(test, feature = "fuzzing"))]
            Source::Files(files) => match children(files.keys().map(String::as_str), rel) {
                Some(names) => names,
                None => return Ok(None),
            },
        };
        names.sort();
        Ok(Some(names))
    }
}

/// The names directly under `rel` among files given by their relative paths; None when
/// there are none (no such directory).
fn children<'p>(paths: impl Iterator<Item = &'p str>, rel: &str) -> Option<Vec<String>> {
    let prefix = if rel.is_empty() {
        String::new()
    } else {
        format!("{rel}/")
    };
    let mut names: Vec<String> = paths
        .filter_map(|k| k.strip_prefix(prefix.as_str()))
        .map(|rest| rest.split('/').next().unwrap_or(rest).to_string())
        .collect();
    names.sort();
    names.dedup();
    (!names.is_empty()).then_some(names)
}

/// A file held in memory, within `max` bytes.
fn in_memory(found: Option<&[u8]>, max: u64) -> Entry {
    match found {
        Some(b) if b.len() as u64 > max => Entry::TooBig(b.len() as u64),
        Some(b) => Entry::File(b.to_vec()),
        None => Entry::Missing,
    }
}

/// What is at a path of a source.
#[derive(Debug)]
pub(crate) enum Entry {
    Missing,
    File(Vec<u8>),
    /// A file larger than the limit asked for, and its size.
    TooBig(u64),
    /// A symlink at this path (the path itself or a directory on the way).
    Link(String),
    /// A FIFO, socket or device (working trees only).
    Special,
}

impl Entry {
    /// The problem with an entry that is not a file within its limit (`setting` names
    /// the limit in fleet.yml `settings:`).
    pub(crate) fn problem(&self, rel: &str, setting: &str, max: u64) -> Invalid {
        let (at, message) = match self {
            Entry::TooBig(size) => (
                rel,
                format!("{size} bytes, more than {setting} ({max} bytes; fleet.yml settings)"),
            ),
            Entry::Link(at) => (
                at.as_str(),
                "a symlink: links in the fleet repository are never followed (commit the file itself)".to_string(),
            ),
            Entry::Special => (rel, "not a regular file".to_string()),
            Entry::Missing | Entry::File(_) => (rel, "does not exist".to_string()),
        };
        Invalid::new(Pos::file(at), message)
    }
}

/// A git symlink: a blob with mode 120000.
const GIT_LINK: i32 = 0o120000;

fn commit_get(repo: &git2::Repository, tree: &git2::Tree, rel: &str, max: u64) -> Result<Entry> {
    let entry = match tree.get_path(Path::new(rel)) {
        Ok(e) => e,
        // A directory on the way may be a link (a blob, so the path is not found).
        Err(e) if e.code() == git2::ErrorCode::NotFound => {
            return Ok(commit_link_on_the_way(tree, rel))
        }
        Err(e) => return Err(unreadable(rel, e)),
    };
    if entry.filemode() == GIT_LINK {
        return Ok(Entry::Link(rel.to_string()));
    }
    if entry.kind() != Some(git2::ObjectType::Blob) {
        return Ok(Entry::Missing);
    }
    let odb = repo.odb().map_err(|e| unreadable(rel, e))?;
    let (size, _) = odb
        .read_header(entry.id())
        .map_err(|e| unreadable(rel, e))?;
    if size as u64 > max {
        return Ok(Entry::TooBig(size as u64));
    }
    let blob = repo.find_blob(entry.id()).map_err(|e| unreadable(rel, e))?;
    Ok(Entry::File(blob.content().to_vec()))
}

/// A link among the directories of `rel`, or Missing.
fn commit_link_on_the_way(tree: &git2::Tree, rel: &str) -> Entry {
    let mut at = String::new();
    for part in rel.split('/') {
        if !at.is_empty() {
            at.push('/');
        }
        at.push_str(part);
        match tree.get_path(Path::new(&at)) {
            Ok(e) if e.filemode() == GIT_LINK => return Entry::Link(at),
            Ok(e) if e.kind() == Some(git2::ObjectType::Tree) => continue,
            _ => return Entry::Missing,
        }
    }
    Entry::Missing
}

fn dir_get(dir: &Path, rel: &str, max: u64) -> Result<Entry> {
    let (p, meta) = match dir_walk(dir, rel)? {
        Ok(found) => found,
        Err(entry) => return Ok(entry),
    };
    if meta.is_dir() {
        return Ok(Entry::Missing);
    }
    if !meta.is_file() {
        return Ok(Entry::Special);
    }
    if meta.len() > max {
        return Ok(Entry::TooBig(meta.len()));
    }
    let mut content = Vec::new();
    std::fs::File::open(&p)
        .and_then(|f| f.take(max.saturating_add(1)).read_to_end(&mut content))
        .map_err(|e| Error::io("cannot read", &p, e))?;
    if content.len() as u64 > max {
        return Ok(Entry::TooBig(content.len() as u64));
    }
    Ok(Entry::File(content))
}

/// Looks at each component of `rel` under `dir` without following links: the path and
/// what is there, or the entry that ends the walk (missing, a link on the way).
fn dir_walk(
    dir: &Path,
    rel: &str,
) -> Result<std::result::Result<(PathBuf, std::fs::Metadata), Entry>> {
    let mut p = dir.to_path_buf();
    let mut at = String::new();
    let mut meta = None;
    for part in rel.split('/').filter(|s| !s.is_empty()) {
        if meta
            .as_ref()
            .is_some_and(|m: &std::fs::Metadata| !m.is_dir())
        {
            return Ok(Err(Entry::Missing));
        }
        p.push(part);
        if !at.is_empty() {
            at.push('/');
        }
        at.push_str(part);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => return Ok(Err(Entry::Link(at))),
            Ok(m) => meta = Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Err(Entry::Missing)),
            Err(e) => return Err(Error::io("cannot read", &p, e)),
        }
    }
    match meta {
        Some(m) => Ok(Ok((p, m))),
        None => std::fs::symlink_metadata(&p)
            .map(|m| Ok((p.clone(), m)))
            .map_err(|e| Error::io("cannot read", &p, e)),
    }
}

/// A failed read of the clone's objects: the clone is damaged (it is cloned again).
fn unreadable(rel: &str, e: git2::Error) -> Error {
    Error::Damaged(format!("{rel}: {}", e.message()))
}

pub(crate) fn short(oid: git2::Oid) -> String {
    oid.to_string()[..12].to_string()
}
