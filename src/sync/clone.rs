//! The clone's life cycle: opened and checked, built beside the old one and renamed
//! into place (a first clone, or a replacement for a damaged one: an interrupted build
//! is never mistaken for a good clone), its new tips checked object by object, and
//! what a killed fetch left behind removed. All of it runs under the agent's run lock,
//! so no other writer exists.

use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository};
use log::{info, warn};

use crate::config::{redact, Config};
use crate::content::{blob_id, Store};
use crate::error::{Error, Result};
use crate::fleet::source::short;
use crate::host::{sync_dir, write_atomic, Host};
use crate::sync::fetch::{fetch, is_local};
use crate::sync::{clone_dir, tracking_ref, Failure, Synced};

/// A marker in the clone: a later read found it damaged (the next sync replaces it).
const DAMAGED: &str = "fleet-agent-damaged";

/// Opens the clone and checks that its tip commit and tree can be read.
pub(super) fn open(dir: &Path, refname: &str) -> Result<(Repository, Option<Oid>), String> {
    let repo = Repository::open_bare(dir).map_err(|e| e.message().to_string())?;
    let tip = match repo.refname_to_id(refname) {
        Ok(oid) => oid,
        Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok((repo, None)),
        Err(e) => return Err(e.message().to_string()),
    };
    repo.find_commit(tip)
        .and_then(|c| c.tree())
        .map_err(|e| e.message().to_string())?;
    Ok((repo, Some(tip)))
}

/// Reads back every object the tip needs: trees through libgit2 (which checks their
/// ids), blobs as streams hashed on the way (bounded memory whatever their size).
pub(super) fn verify(repo: &Repository, tip: Oid) -> std::result::Result<(), String> {
    let tree = repo
        .find_commit(tip)
        .and_then(|c| c.tree())
        .map_err(|e| format!("commit {}: {}", short(tip), e.message()))?;
    let store = Store::open(&repo.path().join("objects")).map_err(|e| e.to_string())?;
    let mut trees = vec![(String::new(), tree)];
    while let Some((dir, tree)) = trees.pop() {
        for entry in tree.iter() {
            let path = format!("{dir}{}", entry.name().unwrap_or("?"));
            match entry.kind() {
                Some(ObjectType::Tree) => {
                    let sub = repo
                        .find_tree(entry.id())
                        .map_err(|e| format!("{path}/: {}", e.message()))?;
                    trees.push((format!("{path}/"), sub));
                }
                Some(ObjectType::Blob) => {
                    let read = store
                        .blob(entry.id())
                        .and_then(|(size, r)| blob_id(r, size));
                    match read {
                        Ok(id) if id == entry.id() => {}
                        Ok(id) => return Err(format!("{path}: blob {} reads as {id}", entry.id())),
                        Err(e) => return Err(format!("{path}: blob {}: {e}", entry.id())),
                    }
                }
                // A submodule's commit is not in this repository.
                _ => {}
            }
        }
    }
    Ok(())
}

/// Records that a read of the clone failed (the load, a file being written): the next
/// sync clones again instead of failing on the same object at every run.
pub(crate) fn mark_damaged(host: &Host, config: &Config, why: &str) {
    let marker = clone_dir(host, config).join(DAMAGED);
    if let Err(e) = write_atomic(&marker, format!("{why}\n").as_bytes(), 0o644, None) {
        warn!("cannot mark the local clone as damaged: {e}");
    }
}

/// Why the clone was marked damaged, if it was.
pub(super) fn damage_noted(dir: &Path) -> Option<String> {
    let why = std::fs::read_to_string(dir.join(DAMAGED)).ok()?;
    Some(why.trim().to_string())
}

/// The first clone of the branch.
pub(super) fn fresh(dir: &Path, config: &Config) -> Result<Synced> {
    let new = build(dir, config).map_err(|f| f.into_error(config))?;
    std::fs::rename(&new, dir)
        .map_err(|e| Error::io("cannot move the new clone into place at", dir, e))?;
    finish(dir, config, "cloned")
}

/// A clone that cannot be read is cloned again beside it, and swapped in only once
/// the new one is complete and checked. Failing that, the run fails (exit 1) with the
/// cause: a device whose clone is broken is not merely offline.
pub(super) fn replace(dir: &Path, config: &Config, why: &str) -> Result<Synced> {
    warn!(
        "the local clone {} is damaged ({why}); cloning again beside it",
        dir.display()
    );
    let new = build(dir, config).map_err(|f| {
        let cause = f.into_error(config);
        Error::Other(format!(
            "the local clone {} is damaged ({why}) and cannot be cloned again: {cause}",
            dir.display()
        ))
    })?;
    let old = dir.with_extension("git.old");
    discard(&old)?;
    std::fs::rename(dir, &old).map_err(|e| Error::io("cannot move aside", dir, e))?;
    std::fs::rename(&new, dir)
        .map_err(|e| Error::io("cannot move the new clone into place at", dir, e))?;
    discard(&old)?;
    finish(dir, config, "cloned again")
}

/// Builds a checked clone at `<dir>.new` (shallow where the transport allows).
fn build(dir: &Path, config: &Config) -> std::result::Result<PathBuf, Failure> {
    let parent = dir.parent().expect("clone dir has a parent");
    crate::host::private_dir(parent).map_err(|e| Failure::Local(e.to_string()))?;
    let tmp = dir.with_extension("git.new");
    discard(&tmp).map_err(|e| Failure::Local(e.to_string()))?;
    let built = (|| {
        // The clone holds the branch's secrets: root alone may read it.
        crate::host::private_dir(&tmp).map_err(|e| Failure::Local(e.to_string()))?;
        let repo = Repository::init_bare(&tmp).map_err(|e| {
            Failure::Local(format!("cannot create {}: {}", tmp.display(), e.message()))
        })?;
        let refname = tracking_ref(&config.branch);
        // Shallow where the transport allows (smart HTTP, ssh); file:// mirrors files.
        fetch(&repo, config, &refname, !is_local(&config.repo))?;
        let tip = repo
            .refname_to_id(&refname)
            .map_err(|e| Failure::Damaged(e.message().to_string()))?;
        verify(&repo, tip).map_err(Failure::Damaged)
    })();
    if let Err(f) = built {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(f);
    }
    Ok(tmp)
}

fn finish(dir: &Path, config: &Config, what: &str) -> Result<Synced> {
    if let Some(parent) = dir.parent() {
        let _ = sync_dir(parent);
    }
    let repo =
        Repository::open_bare(dir).map_err(|e| Error::git("cannot open the new clone", e))?;
    let commit = repo
        .refname_to_id(&tracking_ref(&config.branch))
        .map_err(|e| Error::git("cannot read the fetched branch", e))?;
    info!(
        "{what} {} branch {} at {}",
        redact(&config.repo),
        config.branch,
        short(commit)
    );
    Ok(Synced {
        repo,
        commit,
        offline: None,
    })
}

/// Removes what a run killed half way leaves: git's lock files (`shallow.lock`,
/// `FETCH_HEAD.lock`, `packed-refs.lock`, `config.lock`, `HEAD.lock`,
/// `refs/**/*.lock`), which would make every later fetch fail; libgit2's temporary
/// pack and object files and this agent's delta files, which would only fill the
/// disk; and a clone moved aside during a swap. Each removal is logged; one that
/// fails is left to the fetch, whose error then names it.
pub(super) fn clear_stale(dir: &Path) {
    let mut stale = Vec::new();
    let top = std::fs::read_dir(dir).into_iter().flatten().flatten();
    stale.extend(top.map(|e| e.path()).filter(|p| {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        (p.is_file() && p.extension().is_some_and(|x| x == "lock"))
            || name.starts_with(".fleet-agent-delta-")
    }));
    let mut dirs = vec![dir.join("refs")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => dirs.push(p),
                Ok(_) if p.extension().is_some_and(|x| x == "lock") => stale.push(p),
                _ => {}
            }
        }
    }
    for (sub, prefix) in [
        ("objects/pack", "pack_git2_"),
        ("objects", "tmp_object_git2_"),
    ] {
        let entries = std::fs::read_dir(dir.join(sub));
        stale.extend(
            entries
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix))
                }),
        );
    }
    for p in stale {
        match std::fs::remove_file(&p) {
            Ok(()) => warn!(
                "removed a stale git lock or temporary file left by an interrupted fetch: {}",
                p.display()
            ),
            Err(e) => warn!("cannot remove the stale {}: {e}", p.display()),
        }
    }
    let old = dir.with_extension("git.old");
    if old.exists() {
        warn!("removing {}, left by an interrupted swap", old.display());
        let _ = discard(&old);
    }
}

/// Removes a damaged or stale clone directory.
fn discard(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot remove", dir, e)),
    }
}
