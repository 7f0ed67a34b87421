//! Trust: whether a synced tip may be applied, when agent.toml names trusted keys
//! (`[trust] allowed_signers`). It sits between sync and load, reads only the clone,
//! and decides apply or refuse (docs/signing.md):
//!
//! - the tip carries a valid SSH signature (sshsig.rs) by a key trusted before it;
//! - the tip descends from the last commit trusted and applied (anti-rollback), or is
//!   itself a signed, explicit rollback (`Fleet-Rollback-To: <commit>` with that
//!   commit's tree);
//! - the trusted keys are the repository's `.fleet/allowed_signers` once it has one
//!   (the provisioned file before that), and a commit that changes that file must be
//!   signed by a key trusted before it: the first-parent chain from the last trusted
//!   commit to the tip is walked, so a device off for months follows every rotation.
//!
//! A tip equal to the last trusted commit is not verified again (a no-op poll costs
//! nothing more with signing on).

use git2::{Commit, Oid, Repository};

use crate::fleet::source::short;

pub(crate) mod signers;
pub(crate) mod sshsig;
#[cfg(test)]
mod tests;

pub(crate) use signers::Signers;
use sshsig::Signature;

/// Where a fleet repository rotates its keys.
pub(crate) const REPO_SIGNERS: &str = ".fleet/allowed_signers";
/// The namespace git signs commits in.
const NAMESPACE: &str = "git";
/// The trailer that marks a signed, explicit rollback.
pub(crate) const ROLLBACK_TRAILER: &str = "Fleet-Rollback-To";

/// What was decided about a tip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Apply it. `signed` is git's own line (`Good "git" signature for ...`);
    /// `rollback` the commit an explicit rollback returns to.
    Trusted {
        signed: String,
        rollback: Option<Oid>,
        rotations: usize,
    },
    /// Apply nothing; the reason, in words.
    Refused(String),
}

/// Decides whether `tip` may be applied on a device whose last trusted commit is
/// `base` (None on a device that never applied a verified commit), with the keys the
/// device was provisioned with.
pub(crate) fn decide(
    repo: &Repository,
    tip: Oid,
    base: Option<Oid>,
    provisioned: &Signers,
) -> Verdict {
    let refused = |why: String| Verdict::Refused(why);
    let tip_commit = match repo.find_commit(tip) {
        Ok(c) => c,
        Err(e) => {
            return refused(format!(
                "cannot read commit {}: {}",
                short(tip),
                e.message()
            ))
        }
    };
    let Some(base) = base else {
        return match verify(repo, &tip_commit, provisioned) {
            Ok(signed) => Verdict::Trusted {
                signed,
                rollback: None,
                rotations: 0,
            },
            Err(why) => refused(why),
        };
    };
    if repo.find_commit(base).is_err() {
        return refused(format!(
            "{} does not descend from the last applied commit {}, which is not in the branch's history (a force-push)",
            short(tip),
            short(base)
        ));
    }
    let descends = tip == base || repo.graph_descendant_of(tip, base).unwrap_or(false);
    let result = if descends {
        walk(repo, &tip_commit, base, provisioned)
    } else {
        rollback(repo, &tip_commit, base, provisioned)
    };
    result.unwrap_or_else(refused)
}

/// A tip on another branch than the last trusted commit (a host_vars `branch:`):
/// descent does not apply across branches; the tip must be signed by a key trusted at
/// the last trusted commit (its rotations carry over), or a provisioned one when that
/// commit is not in the clone.
pub(crate) fn decide_other_branch(
    repo: &Repository,
    tip: Oid,
    base: Oid,
    provisioned: &Signers,
) -> Verdict {
    let keys = match repo.find_commit(base) {
        Ok(c) => keys_at(repo, &c, provisioned),
        Err(_) => Ok(provisioned.clone()),
    };
    let verdict = keys.and_then(|keys| {
        let commit = repo
            .find_commit(tip)
            .map_err(|e| format!("cannot read commit {}: {}", short(tip), e.message()))?;
        verify(repo, &commit, &keys)
    });
    match verdict {
        Ok(signed) => Verdict::Trusted {
            signed,
            rollback: None,
            rotations: 0,
        },
        Err(why) => Verdict::Refused(why),
    }
}

/// The keys in effect at a commit: its `.fleet/allowed_signers`, else the provisioned ones.
pub(crate) fn keys_at(
    repo: &Repository,
    commit: &Commit,
    provisioned: &Signers,
) -> Result<Signers, String> {
    match signers_blob(commit) {
        None => Ok(provisioned.clone()),
        Some(id) => {
            let blob = repo
                .find_blob(id)
                .map_err(|e| format!("cannot read {REPO_SIGNERS}: {}", e.message()))?;
            let text = std::str::from_utf8(blob.content())
                .map_err(|_| format!("{REPO_SIGNERS} at {} is not UTF-8", short(commit.id())))?;
            Ok(Signers::parse(text))
        }
    }
}

fn signers_blob(commit: &Commit) -> Option<Oid> {
    let tree = commit.tree().ok()?;
    let entry = tree.get_path(std::path::Path::new(REPO_SIGNERS)).ok()?;
    Some(entry.id())
}

fn parent_signers_blob(commit: &Commit) -> Option<Oid> {
    commit.parent(0).ok().as_ref().and_then(signers_blob)
}

/// Verifies the commits of the first-parent chain from `base` (excluded) to the tip
/// that change the trusted keys, then the tip, each against the keys trusted before it.
fn walk(
    repo: &Repository,
    tip: &Commit,
    base: Oid,
    provisioned: &Signers,
) -> Result<Verdict, String> {
    let cannot = |e: git2::Error| format!("cannot walk the history: {}", e.message());
    let mut walk = repo.revwalk().map_err(cannot)?;
    walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::REVERSE)
        .map_err(cannot)?;
    walk.simplify_first_parent().map_err(cannot)?;
    walk.push(tip.id()).map_err(cannot)?;
    walk.hide(base).map_err(cannot)?;
    let base_commit = repo.find_commit(base).map_err(cannot)?;
    let mut keys = keys_at(repo, &base_commit, provisioned)?;
    let mut rotations = 0;
    let mut signed = None;
    for id in walk {
        let commit = repo.find_commit(id.map_err(cannot)?).map_err(cannot)?;
        let before = keys.clone();
        if signers_blob(&commit) != parent_signers_blob(&commit) {
            verify(repo, &commit, &before).map_err(|why| {
                format!(
                    "commit {} changes {REPO_SIGNERS} but is not signed by a key trusted before it: {why}",
                    short(commit.id())
                )
            })?;
            keys = keys_at(repo, &commit, provisioned)?;
            rotations += 1;
        }
        if commit.id() == tip.id() {
            signed = Some(verify(repo, &commit, &before)?);
        }
    }
    let signed = match signed {
        Some(s) => s,
        // The tip is the base (walked nothing).
        None => verify(repo, tip, &keys)?,
    };
    Ok(Verdict::Trusted {
        signed,
        rollback: None,
        rotations,
    })
}

/// A tip that does not descend from the last trusted commit: refused unless it is a
/// signed, explicit rollback with its target's tree and the same trusted keys.
fn rollback(
    repo: &Repository,
    tip: &Commit,
    base: Oid,
    provisioned: &Signers,
) -> Result<Verdict, String> {
    let force_push = format!(
        "{} does not descend from the last applied commit {} (a force-push or a rollback); an intended rollback is a signed commit with a `{ROLLBACK_TRAILER}: <commit>` trailer and that commit's tree (docs/signing.md)",
        short(tip.id()),
        short(base)
    );
    let Some(target) = rollback_target(tip.message_raw().unwrap_or("")) else {
        return Err(force_push);
    };
    let target = repo
        .revparse_single(&target)
        .and_then(|o| o.peel_to_commit())
        .map_err(|_| {
            format!(
                "{force_push}: its {ROLLBACK_TRAILER} names {target}, which is not in the clone"
            )
        })?;
    if target.tree_id() != tip.tree_id() {
        return Err(format!(
            "{force_push}: its {ROLLBACK_TRAILER} names {}, whose tree differs from the tip's",
            short(target.id())
        ));
    }
    let base_commit = repo
        .find_commit(base)
        .map_err(|e| format!("cannot read {}: {}", short(base), e.message()))?;
    if signers_blob(&base_commit) != signers_blob(tip) {
        return Err(format!(
            "{force_push}: a rollback may not change {REPO_SIGNERS} (roll forward instead)"
        ));
    }
    let keys = keys_at(repo, &base_commit, provisioned)?;
    let signed = verify(repo, tip, &keys)?;
    Ok(Verdict::Trusted {
        signed,
        rollback: Some(target.id()),
        rotations: 0,
    })
}

/// The value of the last `Fleet-Rollback-To:` trailer line.
fn rollback_target(message: &str) -> Option<String> {
    message.lines().rev().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim().eq_ignore_ascii_case(ROLLBACK_TRAILER)).then(|| v.trim().to_string())
    })
}

/// Checks the signature of one commit against `keys`: git's line for a good one, the
/// reason otherwise.
pub(crate) fn verify(repo: &Repository, commit: &Commit, keys: &Signers) -> Result<String, String> {
    let id = commit.id();
    let (sig, data) = match repo.extract_signature(&id, None) {
        Ok(found) => found,
        Err(e) if e.code() == git2::ErrorCode::NotFound => {
            return Err(format!("commit {} is not signed", short(id)))
        }
        Err(e) => {
            return Err(format!(
                "cannot read the signature of {}: {}",
                short(id),
                e.message()
            ))
        }
    };
    let signature = Signature::parse(&sig).map_err(|why| format!("commit {}: {why}", short(id)))?;
    let fingerprint = signature.key.fingerprint();
    let label = key_label(&signature.key.kind);
    let Some(signer) = keys.find(&signature.key, NAMESPACE) else {
        return Err(format!(
            "commit {} is signed by a key that is not trusted ({label} key {fingerprint})",
            short(id)
        ));
    };
    signature
        .verify(&data, NAMESPACE)
        .map_err(|why| format!("commit {}: {why}", short(id)))?;
    Ok(format!(
        "Good \"{NAMESPACE}\" signature for {} with {label} key {fingerprint}",
        signer.principals
    ))
}

fn key_label(kind: &str) -> String {
    match kind {
        sshsig::ED25519 => "ED25519".into(),
        "ssh-rsa" => "RSA".into(),
        k if k.starts_with("ecdsa-") => "ECDSA".into(),
        k => k.to_string(),
    }
}
