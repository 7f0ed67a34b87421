//! The two network operations of a sync, through libgit2 and the project's transports
//! (or, for file://, the mirror in local.rs): the server's tip of the branch (a
//! refs-only request) and a fetch. Each runs under the `[http] deadline_secs` deadline,
//! and its failure is classified: the network (unreachable), a missing branch, the
//! clone's own objects (damaged), or the machine (no space, permission denied).

use std::time::Duration;

use git2::{AutotagOption, Direction, ErrorClass, FetchOptions, Oid, Repository};

use crate::config::{redact, Config};
use crate::sync::{local, transport, Failure};

/// Whether the repository is on this machine (file://, a path).
pub(super) fn is_local(url: &str) -> bool {
    url.starts_with("file://") || url.starts_with('/') || !url.contains("://")
}

fn deadline(config: &Config) -> Duration {
    Duration::from_secs(config.http.deadline_secs)
}

/// The server's tip of the branch: a refs-only request (over HTTP(S), the agent's own
/// protocol v2 `ls-refs` for that one branch, transport.rs).
pub(super) fn remote_tip(repo: &Repository, config: &Config) -> Result<Oid, Failure> {
    if local::mirrors(&config.repo) {
        return local::remote_tip(config);
    }
    let url = &config.repo;
    let shown = redact(url);
    if url.starts_with("http://") || url.starts_with("https://") {
        let tip = transport::with_deadline(deadline(config), || {
            transport::http_tip(url, &config.branch)
        });
        return match tip {
            Ok(tip) => tip.ok_or(Failure::NoBranch),
            Err(e) => Err(Failure::Unreachable(format!(
                "cannot reach the fleet repository {shown}: {e}"
            ))),
        };
    }
    transport::with_deadline(deadline(config), || {
        let mut remote = repo
            .remote_anonymous(url)
            .map_err(|e| Failure::Local(e.message().to_string()))?;
        remote.connect(Direction::Fetch).map_err(|e| {
            Failure::Unreachable(format!(
                "cannot reach the fleet repository {shown}: {}",
                e.message()
            ))
        })?;
        let wanted = format!("refs/heads/{}", config.branch);
        let heads = remote.list().map_err(|e| {
            Failure::Unreachable(format!("cannot list the refs of {shown}: {}", e.message()))
        })?;
        let tip = heads.iter().find(|h| h.name() == wanted).map(|h| h.oid());
        let _ = remote.disconnect();
        tip.ok_or(Failure::NoBranch)
    })
}

/// Fetches the branch into `refname` (shallow: only the tip's objects).
pub(super) fn fetch(
    repo: &Repository,
    config: &Config,
    refname: &str,
    shallow: bool,
) -> Result<(), Failure> {
    fetch_depth(repo, config, refname, if shallow { 1 } else { 0 })
}

/// libgit2's GIT_FETCH_DEPTH_UNSHALLOW: the whole history behind a shallow clone.
pub(super) const UNSHALLOW: i32 = i32::MAX;

/// Fetches the branch with `depth` (0: what the server has beyond the clone's
/// commits; 1: the tip only; UNSHALLOW: the whole history).
pub(super) fn fetch_depth(
    repo: &Repository,
    config: &Config,
    refname: &str,
    depth: i32,
) -> Result<(), Failure> {
    if local::mirrors(&config.repo) {
        return local::fetch(repo, config, refname);
    }
    let mut remote = repo
        .remote_anonymous(&config.repo)
        .map_err(|e| Failure::Local(e.message().to_string()))?;
    let mut options = FetchOptions::new();
    options.download_tags(AutotagOption::None);
    if depth > 0 {
        options.depth(depth);
    }
    let refspec = format!("+refs/heads/{}:{refname}", config.branch);
    log::debug!(
        "sync: fetching {refspec}{}",
        match depth {
            0 => "",
            1 => " (depth 1)",
            _ => " (the whole history)",
        }
    );
    transport::with_deadline(deadline(config), || {
        remote.fetch(&[refspec.as_str()], Some(&mut options), None)
    })
    .map_err(|e| classify(&e, config))?;
    match repo.refname_to_id(refname) {
        Ok(_) => Ok(()),
        Err(e) if e.code() == git2::ErrorCode::NotFound => Err(Failure::NoBranch),
        Err(e) => Err(Failure::Damaged(e.message().to_string())),
    }
}

/// What a failed fetch means. The transports report network errors (and the
/// deadline) in the Net class. The indexer's complaints about the pack's own framing
/// are a transfer cut short; its other complaints, and every failed read of an object,
/// come from the clone's objects (a thin pack's delta bases are local objects). Errors
/// of the operating system are the machine's: no space, permission, a read-only disk.
pub(super) fn classify(e: &git2::Error, config: &Config) -> Failure {
    let shown = redact(&config.repo);
    let message = e.message();
    let cut_short = [
        "early EOF",
        "incomplete pack header",
        "missing trailer",
        "trailer mismatch",
        "unexpected data at the end",
        "wrong pack signature",
        "wrong pack version",
    ];
    match e.class() {
        ErrorClass::Net | ErrorClass::Http | ErrorClass::Ssh | ErrorClass::Ssl => {
            Failure::Unreachable(format!("cannot fetch from {shown}: {message}"))
        }
        ErrorClass::Indexer if cut_short.iter().any(|c| message.contains(c)) => {
            Failure::Unreachable(format!(
                "cannot fetch from {shown}: the transfer was cut short: {message}"
            ))
        }
        ErrorClass::Indexer | ErrorClass::Odb | ErrorClass::Zlib | ErrorClass::Object => {
            Failure::Damaged(format!("fetching from {shown}: {message}"))
        }
        _ => Failure::Local(format!(
            "cannot write the fetched objects into the local clone: {message}"
        )),
    }
}
