//! Sync: bring the device's branch of the fleet repository into a bare clone in the
//! state directory. A poll whose remote tip is unchanged asks the server for its refs
//! only (no pack). A force-pushed branch is followed, with a warning. When the server
//! cannot be reached (or does not answer within the deadline), the last fetched commit
//! stays in use and the caller is told.
//!
//! Faults never wedge the clone: lock files a killed fetch left are removed first
//! (clone.rs); every object of a new tip is read back and checked against its id; a
//! clone that cannot be read, or a fetch that fails on its objects ("missing delta
//! bases"), is cloned again beside it and swapped in. A full disk or a permission
//! problem is a failure of the run, never "unreachable". Submodules: the fetch over
//! libgit2 and its failures (fetch.rs), file:// as a mirror of object files (local.rs),
//! the clone's life cycle (clone.rs), the transports (transport.rs), and the backoff
//! after failed polls, kept across runs (backoff.rs).

use std::path::PathBuf;
use std::time::Duration;

use git2::{Oid, Repository};
use log::{debug, info, warn};

use crate::config::redact;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::fleet::source::short;
use crate::host::Host;

mod backoff;
mod clone;
mod fetch;
mod local;
mod transport;
use transport::TransportSettings;

pub(crate) use clone::mark_damaged;

pub(crate) struct Synced {
    pub(crate) repo: Repository,
    pub(crate) commit: Oid,
    /// Why the server could not be reached; the commit is the last one fetched.
    pub(crate) offline: Option<String>,
}

/// Why a fetch failed, which decides what the run does next.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server could not be reached or did not answer within the deadline: the
    /// last fetched commit stays in use (exit 3). A whole sentence naming the repository.
    Unreachable(String),
    /// The server has no such branch.
    NoBranch,
    /// The clone's objects cannot be read (a corrupt object, a missing delta base):
    /// it is cloned again.
    Damaged(String),
    /// The machine refused: no space left, permission denied, a read-only filesystem.
    Local(String),
}

impl Failure {
    /// The run's error, when no fetched commit can stand in.
    fn into_error(self, config: &Config) -> Error {
        let url = redact(&config.repo);
        match self {
            Failure::Unreachable(message) => Error::Unreachable { message },
            Failure::NoBranch => Error::NoBranch {
                url,
                branch: config.branch.clone(),
            },
            Failure::Damaged(m) => Error::Other(format!(
                "cannot clone the fleet repository {url}: what it sent cannot be read: {m}"
            )),
            Failure::Local(m) => Error::Other(m),
        }
    }
}

pub(crate) fn clone_dir(host: &Host, config: &Config) -> PathBuf {
    host.path(&config.state_dir).join("repo.git")
}

fn tracking_ref(branch: &str) -> String {
    format!("refs/remotes/origin/{branch}")
}

/// Registers the transports with the credentials of the configuration, and bounds
/// libgit2's memory.
pub(crate) fn setup_transports(host: &Host, config: &Config) -> Result<()> {
    bound_libgit2_memory();
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
        timeout: Duration::from_secs(config.http.timeout_secs),
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

/// No git configuration but the clone's own; and libgit2 reads packs through mapped windows (1 GiB each, up to 8 GiB, by default)
/// and caches objects up to 256 MiB; small windows and a small cache keep reading a
/// large clone within a few MiB. (Its indexer does not keep to the window limit while
/// it checksums an object it received: `git_indexer_append` takes its pack out of the
/// windows' LRU list, so a received object of N MB is mapped whole, as N MB of page
/// cache counted in the resident size, until the next append; see docs/sync.md.)
fn bound_libgit2_memory() {
    // SAFETY: set before any repository is opened, from the one thread using libgit2.
    unsafe {
        // The clone is the agent's own: no user's or system's git configuration
        // ($HOME/.gitconfig, /etc/gitconfig) applies to it, nor may a missing or
        // unreadable one stop a run.
        for level in [
            git2::ConfigLevel::System,
            git2::ConfigLevel::XDG,
            git2::ConfigLevel::Global,
            git2::ConfigLevel::ProgramData,
        ] {
            let _ = git2::opts::set_search_path(level, "");
        }
        let _ = git2::opts::set_mwindow_size(4 << 20);
        let _ = git2::opts::set_mwindow_mapped_limit(16 << 20);
        let _ = git2::opts::set_cache_max_size(4 << 20);
    }
}

/// Syncs, unless a failed poll's backoff (backoff.rs) still runs: then the last
/// fetched commit is used without asking the server. file:// is never backed off.
pub(crate) fn sync(host: &Host, config: &Config) -> Result<Synced> {
    if fetch::is_local(&config.repo) {
        return sync_now(host, config);
    }
    if let Some(why) = backoff::waiting(host, config) {
        warn!("{why}");
        let opened = clone::open(&clone_dir(host, config), &tracking_ref(&config.branch));
        return match opened {
            Ok((repo, Some(commit))) => Ok(Synced {
                repo,
                commit,
                offline: Some(why),
            }),
            _ => Err(Failure::Unreachable(format!(
                "cannot reach the fleet repository {}: {why}",
                redact(&config.repo)
            ))
            .into_error(config)),
        };
    }
    transport::take_retry_after();
    let synced = sync_now(host, config);
    match &synced {
        Ok(Synced { offline: None, .. }) => backoff::succeeded(host, config),
        Ok(_) | Err(Error::Unreachable { .. }) => {
            backoff::failed(host, config, transport::take_retry_after())
        }
        Err(_) => {}
    }
    synced
}

fn sync_now(host: &Host, config: &Config) -> Result<Synced> {
    setup_transports(host, config)?;
    let dir = clone_dir(host, config);
    clone::clear_stale(&dir);
    let refname = tracking_ref(&config.branch);
    debug!(
        "sync: branch {} of {} into the clone {}",
        config.branch,
        redact(&config.repo),
        dir.display()
    );
    let opened = match clone::damage_noted(&dir) {
        Some(why) => Err(why),
        None => clone::open(&dir, &refname),
    };
    let (repo, local_tip) = match opened {
        Ok(found) => found,
        Err(why) if dir.exists() => return clone::replace(&dir, config, &why),
        Err(_) => return clone::fresh(&dir, config),
    };
    let synced = match local_tip {
        // First fetch of this branch into the clone (the device follows another one).
        None => first_fetch(repo, config, &refname),
        Some(tip) => update(repo, tip, config, &refname),
    };
    match synced {
        Ok(s) => Ok(s),
        Err(Failure::Damaged(why)) => clone::replace(&dir, config, &why),
        Err(f) => Err(f.into_error(config)),
    }
}

/// The whole history of the branch, for a clone that was cloned shallow again (after
/// damage) and no longer holds the last trusted commit (src/trust walks from it). A
/// file:// clone mirrors every object already.
pub(crate) fn deepen(host: &Host, config: &Config, repo: &Repository) -> Result<()> {
    setup_transports(host, config)?;
    if local::mirrors(&config.repo) || !repo.is_shallow() {
        return Ok(());
    }
    info!(
        "fetching the whole history of branch {} (the clone is shallow)",
        config.branch
    );
    fetch::fetch_depth(
        repo,
        config,
        &tracking_ref(&config.branch),
        fetch::UNSHALLOW,
    )
    .map_err(|f| f.into_error(config))
}

fn first_fetch(repo: Repository, config: &Config, refname: &str) -> Result<Synced, Failure> {
    fetch::fetch(&repo, config, refname, !fetch::is_local(&config.repo))?;
    let commit = fetched_tip(&repo, refname)?;
    clone::verify(&repo, commit).map_err(Failure::Damaged)?;
    info!("fetched branch {} at {}", config.branch, short(commit));
    Ok(Synced {
        repo,
        commit,
        offline: None,
    })
}

fn fetched_tip(repo: &Repository, refname: &str) -> Result<Oid, Failure> {
    repo.refname_to_id(refname)
        .map_err(|e| Failure::Damaged(format!("cannot read the fetched branch: {}", e.message())))
}

/// A refs-only request first: an unchanged tip fetches nothing. A server that cannot
/// be reached leaves the last fetched commit in use.
fn update(
    repo: Repository,
    local_tip: Oid,
    config: &Config,
    refname: &str,
) -> Result<Synced, Failure> {
    let offline = |repo: Repository, message: String| {
        warn!(
            "{message}; staying on the last fetched commit {}",
            short(local_tip)
        );
        Ok(Synced {
            repo,
            commit: local_tip,
            offline: Some(message),
        })
    };
    debug!(
        "sync: the clone is at {}; asking the server for its refs",
        short(local_tip)
    );
    let fetched = fetch::remote_tip(&repo, config).and_then(|tip| match tip == local_tip {
        true => {
            debug!("sync: the server's tip is {}: nothing to fetch", short(tip));
            Ok(false)
        }
        false => {
            debug!("sync: the server's tip is {}: fetching", short(tip));
            fetch::fetch(&repo, config, refname, false).map(|()| true)
        }
    });
    match fetched {
        Ok(true) => {}
        Ok(false) => {
            return Ok(Synced {
                repo,
                commit: local_tip,
                offline: None,
            })
        }
        Err(Failure::Unreachable(message)) => return offline(repo, message),
        Err(f) => return Err(f),
    }
    let new_tip = fetched_tip(&repo, refname)?;
    clone::verify(&repo, new_tip).map_err(Failure::Damaged)?;
    if !repo
        .graph_descendant_of(new_tip, local_tip)
        .unwrap_or(false)
    {
        // With [trust], src/trust decides (against the last applied commit).
        let then = match config.trust.allowed_signers {
            Some(_) => "the trusted keys decide",
            None => "following the server",
        };
        warn!(
            "branch {} was force-pushed: {} is not a descendant of {}; {then}",
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
