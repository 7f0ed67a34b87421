//! Sync: bring the device's branch of the fleet repository into a bare clone in the
//! state directory. A poll whose remote tip is unchanged asks the server for its refs
//! only (no pack). A force-pushed branch is followed, with a warning. A clone that
//! cannot be read is replaced by a fresh one. When the server cannot be reached, the
//! last fetched commit stays in use and the caller is told.

use std::path::{Path, PathBuf};

use git2::{AutotagOption, Direction, FetchOptions, Oid, Repository};
use log::{info, warn};

use crate::config::redact;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::fleet::source::short;
use crate::host::Host;

mod transport;
use transport::TransportSettings;

pub(crate) struct Synced {
    pub(crate) repo: Repository,
    pub(crate) commit: Oid,
    /// Why the server could not be reached; the commit is the last one fetched.
    pub(crate) offline: Option<String>,
}

pub(crate) fn clone_dir(host: &Host, config: &Config) -> PathBuf {
    host.path(&config.state_dir).join("repo.git")
}

fn tracking_ref(branch: &str) -> String {
    format!("refs/remotes/origin/{branch}")
}

/// Registers the transports with the credentials of the configuration.
pub(crate) fn setup_transports(host: &Host, config: &Config) -> Result<()> {
    let c = &config.credentials;
    let basic_auth = match &c.token_file {
        Some(f) => {
            let p = host.path(f);
            let token = std::fs::read_to_string(&p)
                .map_err(|e| Error::io("cannot read the token file", &p, e))?;
            Some(format!(
                "{}:{}",
                c.username.as_deref().unwrap_or("fleet-agent"),
                token.trim()
            ))
        }
        None => None,
    };
    transport::register(TransportSettings {
        basic_auth,
        timeout: std::time::Duration::from_secs(config.http.timeout_secs),
        ssh_command: c.ssh_command.clone().unwrap_or_else(|| "ssh".into()),
        ssh_key: c
            .ssh_key
            .as_ref()
            .map(|k| host.path(k).display().to_string()),
        known_hosts: c
            .known_hosts
            .as_ref()
            .map(|k| host.path(k).display().to_string()),
    })
    .map_err(|e| Error::git("cannot set up the git transports", e))
}

pub(crate) fn sync(host: &Host, config: &Config) -> Result<Synced> {
    setup_transports(host, config)?;
    let dir = clone_dir(host, config);
    let refname = tracking_ref(&config.branch);
    clear_stale_locks(&dir);
    let (repo, local_tip) = match open_clone(&dir, &refname) {
        Ok(found) => found,
        Err(why) => {
            if dir.exists() {
                warn!(
                    "the local clone {} is damaged ({why}); cloning again",
                    dir.display()
                );
                discard(&dir)?;
            }
            return initial_clone(&dir, config);
        }
    };
    let Some(local_tip) = local_tip else {
        // First fetch of this branch into the clone (the device follows another branch).
        if let Err(message) = fetch(&repo, config, &refname, !is_local(&config.repo)) {
            return Err(Error::Unreachable {
                url: redact(&config.repo),
                message,
            });
        }
        let commit = repo
            .refname_to_id(&refname)
            .map_err(|e| Error::git("cannot read the fetched branch", e))?;
        info!("fetched branch {} at {}", config.branch, short(commit));
        return Ok(Synced {
            repo,
            commit,
            offline: None,
        });
    };

    update(repo, local_tip, config, &refname)
}

/// A refs-only request first: an unchanged tip fetches nothing. A server that cannot
/// be reached leaves the last fetched commit in use.
fn update(repo: Repository, local_tip: Oid, config: &Config, refname: &str) -> Result<Synced> {
    let updated = remote_tip(&repo, config).and_then(|tip| match tip == local_tip {
        true => Ok(false),
        false => fetch(&repo, config, refname, false).map(|()| true),
    });
    match updated {
        Ok(true) => {}
        Ok(false) => {
            return Ok(Synced {
                repo,
                commit: local_tip,
                offline: None,
            })
        }
        Err(message) => {
            warn!(
                "{message}; staying on the last fetched commit {}",
                short(local_tip)
            );
            return Ok(Synced {
                repo,
                commit: local_tip,
                offline: Some(message),
            });
        }
    }
    let new_tip = repo
        .refname_to_id(refname)
        .map_err(|e| Error::git("cannot read the fetched branch", e))?;
    if !repo
        .graph_descendant_of(new_tip, local_tip)
        .unwrap_or(false)
    {
        warn!(
            "branch {} was force-pushed: {} is not a descendant of {}; following the server",
            config.branch,
            short(new_tip),
            short(local_tip)
        );
    } else {
        info!("fetched {} → {}", short(local_tip), short(new_tip));
    }
    Ok(Synced {
        repo,
        commit: new_tip,
        offline: None,
    })
}

/// Removes what a fetch killed half way leaves in the clone: git's lock files
/// (`shallow.lock`, `FETCH_HEAD.lock`, `packed-refs.lock`, `config.lock`, `HEAD.lock`,
/// `refs/**/*.lock`), which would make every later fetch fail, and libgit2's temporary
/// pack files, which would only fill the disk. Called under the agent's run lock, so no
/// other writer exists. Each removal is logged; one that fails is left to the fetch,
/// whose error then names it.
fn clear_stale_locks(dir: &Path) {
    let mut stale = Vec::new();
    let top = std::fs::read_dir(dir).into_iter().flatten().flatten();
    stale.extend(
        top.map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "lock")),
    );
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
}

/// Opens the clone and checks that its tip commit and tree can be read.
fn open_clone(dir: &Path, refname: &str) -> std::result::Result<(Repository, Option<Oid>), String> {
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

/// The server's tip of the branch: a refs-only request.
fn remote_tip(repo: &Repository, config: &Config) -> std::result::Result<Oid, String> {
    let url = &config.repo;
    let mut remote = repo
        .remote_anonymous(url)
        .map_err(|e| e.message().to_string())?;
    remote.connect(Direction::Fetch).map_err(|e| {
        format!(
            "cannot reach the fleet repository {}: {}",
            redact(url),
            e.message()
        )
    })?;
    let wanted = format!("refs/heads/{}", config.branch);
    let heads = remote
        .list()
        .map_err(|e| format!("cannot list the refs of {}: {}", redact(url), e.message()))?;
    let tip = heads.iter().find(|h| h.name() == wanted).map(|h| h.oid());
    let _ = remote.disconnect();
    tip.ok_or_else(|| {
        format!(
            "the fleet repository {} has no branch `{}`",
            redact(url),
            config.branch
        )
    })
}

fn fetch(
    repo: &Repository,
    config: &Config,
    refname: &str,
    shallow: bool,
) -> std::result::Result<(), String> {
    let mut remote = repo
        .remote_anonymous(&config.repo)
        .map_err(|e| e.message().to_string())?;
    let mut options = FetchOptions::new();
    options.download_tags(AutotagOption::None);
    if shallow {
        options.depth(1);
    }
    let refspec = format!("+refs/heads/{}:{refname}", config.branch);
    remote
        .fetch(&[refspec.as_str()], Some(&mut options), None)
        .map_err(|e| {
            format!(
                "cannot fetch from {}: {}",
                redact(&config.repo),
                e.message()
            )
        })?;
    repo.refname_to_id(refname).map(|_| ()).map_err(|_| {
        format!(
            "the fleet repository {} has no branch `{}`",
            redact(&config.repo),
            config.branch
        )
    })
}

/// Clones into a new directory and renames it into place: a clone interrupted half way
/// is never mistaken for a good one.
fn initial_clone(dir: &Path, config: &Config) -> Result<Synced> {
    let parent = dir.parent().expect("clone dir has a parent");
    std::fs::create_dir_all(parent)
        .map_err(|e| Error::io("cannot create the state directory", parent, e))?;
    let tmp = dir.with_extension("git.new");
    discard(&tmp)?;
    let repo = Repository::init_bare(&tmp)
        .map_err(|e| Error::git(format!("cannot create {}", tmp.display()), e))?;
    let refname = tracking_ref(&config.branch);
    // Shallow where the transport allows (smart HTTP, ssh); libgit2's local transport
    // does not, so file:// and paths fetch whole.
    let shallow = !is_local(&config.repo);
    if let Err(message) = fetch(&repo, config, &refname, shallow) {
        drop(repo);
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(Error::Unreachable {
            url: redact(&config.repo),
            message,
        });
    }
    drop(repo);
    std::fs::rename(&tmp, dir)
        .map_err(|e| Error::io("cannot move the new clone into place at", dir, e))?;
    let _ = crate::host::sync_dir(parent);
    let repo =
        Repository::open_bare(dir).map_err(|e| Error::git("cannot open the new clone", e))?;
    let commit = repo
        .refname_to_id(&refname)
        .map_err(|e| Error::git("cannot read the fetched branch", e))?;
    info!(
        "cloned {} branch {} at {}",
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

fn is_local(url: &str) -> bool {
    url.starts_with("file://") || url.starts_with('/') || !url.contains("://")
}

/// Removes a damaged or stale clone directory.
pub(crate) fn discard(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot remove", dir, e)),
    }
}
