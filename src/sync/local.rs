//! file:// repositories (and plain paths) as a mirror of object files. libgit2's local
//! transport packs every wanted object in memory (548 MB for a repository with 200 MB
//! of history), so instead the clone copies the source's object files: pack files are
//! immutable and named by their checksum, so each is copied once (the .pack, then its
//! .idx, each through a temporary name, fsync and rename), loose objects likewise, and
//! packs the source no longer has are removed. Then the branch's ref is set. Memory
//! stays at one copy buffer; the tip is checked object by object afterwards like any
//! fetch. A source that borrows objects from another repository (objects/info/
//! alternates) is fetched through libgit2 instead.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use git2::{Oid, Repository};

use crate::config::{redact, Config};
use crate::host::sync_dir;
use crate::sync::fetch::is_local;
use crate::sync::Failure;

/// The source's path, from a file:// URL or a path.
fn source_path(url: &str) -> PathBuf {
    PathBuf::from(url.strip_prefix("file://").unwrap_or(url))
}

/// Whether this repository is fetched by mirroring its object files.
pub(super) fn mirrors(url: &str) -> bool {
    is_local(url)
        && !source_path(url).join("objects/info/alternates").exists()
        && !source_path(url)
            .join(".git/objects/info/alternates")
            .exists()
}

fn open_source(config: &Config) -> Result<Repository, Failure> {
    Repository::open(source_path(&config.repo)).map_err(|e| {
        Failure::Unreachable(format!(
            "cannot open the fleet repository {}: {}",
            redact(&config.repo),
            e.message()
        ))
    })
}

fn branch_tip(src: &Repository, config: &Config) -> Result<Oid, Failure> {
    match src.refname_to_id(&format!("refs/heads/{}", config.branch)) {
        Ok(oid) => Ok(oid),
        Err(e) if e.code() == git2::ErrorCode::NotFound => Err(Failure::NoBranch),
        Err(e) => Err(Failure::Unreachable(format!(
            "cannot read the branch {} of {}: {}",
            config.branch,
            redact(&config.repo),
            e.message()
        ))),
    }
}

/// The source's tip of the branch (its refs, read directly).
pub(super) fn remote_tip(config: &Config) -> Result<Oid, Failure> {
    branch_tip(&open_source(config)?, config)
}

/// Mirrors the source's objects into the clone and points `refname` at the tip.
pub(super) fn fetch(repo: &Repository, config: &Config, refname: &str) -> Result<(), Failure> {
    let src = open_source(config)?;
    let tip = branch_tip(&src, config)?;
    mirror(&src.path().join("objects"), &repo.path().join("objects"))?;
    repo.reference(refname, tip, true, "fleet-agent: mirror")
        .map_err(|e| Failure::Local(format!("cannot set {refname}: {}", e.message())))?;
    Ok(())
}

/// What cannot be read is the source's problem (an unmounted disk is like a server
/// that is down); what cannot be written is the machine's.
fn reading(from: &Path) -> impl Fn(io::Error) -> Failure + '_ {
    move |e| Failure::Unreachable(format!("cannot read {}: {e}", from.display()))
}

fn writing(to: &Path) -> impl Fn(io::Error) -> Failure + '_ {
    move |e| Failure::Local(format!("cannot write {}: {e}", to.display()))
}

fn mirror(from: &Path, to: &Path) -> Result<(), Failure> {
    let packs_from = from.join("pack");
    let packs_to = to.join("pack");
    fs::create_dir_all(&packs_to).map_err(writing(&packs_to))?;
    let mut kept = Vec::new();
    for pack in names(&packs_from, ".pack").map_err(reading(&packs_from))? {
        let stem = pack.trim_end_matches(".pack").to_string();
        // A pack is complete once its index is there (git writes the index last).
        if !packs_from.join(format!("{stem}.idx")).exists() {
            continue;
        }
        for ext in ["pack", "idx"] {
            let name = format!("{stem}.{ext}");
            if !packs_to.join(&name).exists() {
                copy(&packs_from.join(&name), &packs_to.join(&name))?;
            }
        }
        kept.push(stem);
    }
    // Packs the source no longer has (it repacked): everything is in the new ones.
    for name in names(&packs_to, "").map_err(reading(&packs_to))? {
        let stem = name.split('.').next().unwrap_or_default();
        if stem.starts_with("pack-") && !kept.iter().any(|k| k == stem) {
            fs::remove_file(packs_to.join(&name)).map_err(writing(&packs_to))?;
        }
    }
    for dir in names(from, "").map_err(reading(from))? {
        let hex2 = dir.len() == 2 && dir.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex2 {
            continue;
        }
        let (src_dir, dst_dir) = (from.join(&dir), to.join(&dir));
        for object in names(&src_dir, "").map_err(reading(&src_dir))? {
            if !dst_dir.join(&object).exists() {
                fs::create_dir_all(&dst_dir).map_err(writing(&dst_dir))?;
                copy(&src_dir.join(&object), &dst_dir.join(&object))?;
            }
        }
    }
    Ok(())
}

/// Names of a directory's entries ending with `suffix`, sorted.
fn names(dir: &Path, suffix: &str) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in entries {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.ends_with(suffix) && !name.starts_with('.') && !name.starts_with("tmp") {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Copies a file through a temporary name beside the target: fsync, rename, fsync of
/// the directory. Read-only like git's own object files.
fn copy(from: &Path, to: &Path) -> Result<(), Failure> {
    let dir = to.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(
        ".{}.fleet-agent-tmp",
        to.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut src = fs::File::open(from).map_err(reading(from))?;
    let written = (|| -> io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut out = fs::File::create(&tmp)?;
        io::copy(&mut src, &mut out)?;
        out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o444))?;
        out.sync_all()?;
        fs::rename(&tmp, to)?;
        sync_dir(dir)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(writing(to))
}
