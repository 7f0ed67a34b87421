//! The trust decision over real repositories: keys from ssh-keygen, commits signed by
//! `git commit -S` (gpg.format=ssh), every verdict checked against `git verify-commit`
//! on the same commit with the same allowed-signers file.

use std::path::{Path, PathBuf};
use std::process::Command;

use git2::{Oid, Repository};

use super::*;

pub(crate) struct Key {
    pub(crate) private: PathBuf,
    /// `principal ssh-ed25519 AAAA...`
    pub(crate) line: String,
}

pub(crate) fn keygen(dir: &Path, name: &str) -> Key {
    let private = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&private)
        .output()
        .expect("ssh-keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(private.with_extension("pub")).unwrap();
    let mut words = public.split_whitespace();
    let (kind, b64) = (words.next().unwrap(), words.next().unwrap());
    Key {
        private,
        line: format!("{name}@example.com {kind} {b64}"),
    }
}

struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let r = Repo { dir };
        r.git(&["init", "-q", "-b", "main"]);
        r
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .current_dir(self.path())
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Writes `files` and commits them, signed with `key` when given.
    fn commit(&self, files: &[(&str, &str)], key: Option<&Key>, message: &str) -> Oid {
        for (name, content) in files {
            let p = self.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        self.git(&["add", "-A"]);
        let mut args = vec!["commit", "-q", "--allow-empty", "-m", message];
        let signing;
        if let Some(k) = key {
            signing = format!("user.signingkey={}", k.private.display());
            args = [
                &["-c", "gpg.format=ssh", "-c", &signing][..],
                &args,
                &["-S"],
            ]
            .concat();
        }
        self.git(&args);
        self.head()
    }

    fn head(&self) -> Oid {
        Oid::from_str(&self.git(&["rev-parse", "HEAD"])).unwrap()
    }

    fn open(&self) -> Repository {
        Repository::open(self.path()).unwrap()
    }

    /// `git verify-commit` with `signers` as the allowed-signers file: git's line on
    /// success.
    fn git_verify(&self, commit: Oid, signers: &str) -> Result<String, String> {
        let file = self.path().join("../allowed_signers.git-verify");
        std::fs::write(&file, signers).unwrap();
        let out = Command::new("git")
            .current_dir(self.path())
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .arg("-c")
            .arg(format!("gpg.ssh.allowedSignersFile={}", file.display()))
            .args(["verify-commit", &commit.to_string()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        match out.status.success() {
            true => Ok(stderr),
            false => Err(stderr),
        }
    }
}

fn keys(lines: &[&Key]) -> String {
    lines.iter().map(|k| format!("{}\n", k.line)).collect()
}

/// Our verdict on one commit and git's must agree, and a good one reads the same.
fn agree(repo: &Repo, commit: Oid, signers: &str) -> Result<String, String> {
    let r = repo.open();
    let ours = verify(
        &r,
        &r.find_commit(commit).unwrap(),
        &Signers::parse(signers),
    );
    let gits = repo.git_verify(commit, signers);
    match (&ours, &gits) {
        (Ok(a), Ok(b)) => assert!(b.contains(a.as_str()), "ours: {a}\ngit:  {b}"),
        (Err(_), Err(_)) => {}
        _ => panic!("ours {ours:?}, git {gits:?}"),
    }
    ours
}

#[test]
fn signatures_agree_with_git_verify_commit() {
    let scratch = tempfile::tempdir().unwrap();
    let (alice, mallory) = (
        keygen(scratch.path(), "alice"),
        keygen(scratch.path(), "mallory"),
    );
    let repo = Repo::new();
    let trusted = keys(&[&alice]);
    let signed = repo.commit(&[("a", "1")], Some(&alice), "signed");
    let good = agree(&repo, signed, &trusted).unwrap();
    assert!(
        good.starts_with("Good \"git\" signature for alice@example.com with ED25519 key SHA256:")
    );
    let unsigned = repo.commit(&[("a", "2")], None, "unsigned");
    assert_eq!(
        agree(&repo, unsigned, &trusted).unwrap_err(),
        format!("commit {} is not signed", short(unsigned))
    );
    let unknown = repo.commit(&[("a", "3")], Some(&mallory), "unknown key");
    assert!(agree(&repo, unknown, &trusted)
        .unwrap_err()
        .contains("is signed by a key that is not trusted (ED25519 key SHA256:"));
    // A namespace option that leaves out git trusts the key for nothing here.
    let other_ns = format!(
        "alice@example.com namespaces=\"file\" {}\n",
        &alice.line[18..]
    );
    assert!(agree(&repo, signed, &other_ns).is_err());
    let with_ns = format!(
        "alice@example.com namespaces=\"file,git\" {}\n",
        &alice.line[18..]
    );
    agree(&repo, signed, &with_ns).unwrap();
}

/// A commit rewritten by hand with the signature of another one, or with its content
/// changed under its signature, is refused by both.
#[test]
fn tampered_commits_are_refused_like_git() {
    let scratch = tempfile::tempdir().unwrap();
    let alice = keygen(scratch.path(), "alice");
    let repo = Repo::new();
    let trusted = keys(&[&alice]);
    let signed = repo.commit(&[("a", "1")], Some(&alice), "deploy v1");
    let raw = repo.git(&["cat-file", "commit", &signed.to_string()]);
    for (what, forged) in [
        ("message", raw.replace("deploy v1", "deploy v2")),
        (
            "author",
            raw.replace("author t <t@example.com>", "author x <x@example.com>"),
        ),
    ] {
        let path = repo.path().join("../forged");
        std::fs::write(&path, format!("{forged}\n")).unwrap();
        let id = repo.git(&["hash-object", "-t", "commit", "-w", path.to_str().unwrap()]);
        let id = Oid::from_str(&id).unwrap();
        let why = agree(&repo, id, &trusted).unwrap_err();
        assert!(why.contains("bad signature"), "{what}: {why}");
    }
}

fn trusted(v: Verdict) -> usize {
    match v {
        Verdict::Trusted { rotations, .. } => rotations,
        Verdict::Refused(why) => panic!("refused: {why}"),
    }
}

fn refused(v: Verdict) -> String {
    match v {
        Verdict::Refused(why) => why,
        v => panic!("trusted: {v:?}"),
    }
}

#[test]
fn tips_must_descend_from_the_last_trusted_commit() {
    let scratch = tempfile::tempdir().unwrap();
    let alice = keygen(scratch.path(), "alice");
    let provisioned = Signers::parse(&keys(&[&alice]));
    let repo = Repo::new();
    let old = repo.commit(&[("a", "1")], Some(&alice), "v1");
    let base = repo.commit(&[("a", "2")], Some(&alice), "v2");
    let r = repo.open();
    assert_eq!(trusted(decide(&r, base, Some(old), &provisioned)), 0);
    // Unsigned commits between are fine; the tip must be signed.
    repo.commit(&[("a", "3")], None, "wip");
    let tip = repo.commit(&[("a", "4")], Some(&alice), "v4");
    assert_eq!(trusted(decide(&r, tip, Some(base), &provisioned)), 0);
    // A force-push back to an older signed commit.
    let why = refused(decide(&r, old, Some(base), &provisioned));
    assert!(
        why.contains(&format!(
            "{} does not descend from the last applied commit {}",
            short(old),
            short(base)
        )),
        "{why}"
    );
    // An explicit, signed rollback with the old commit's tree.
    repo.git(&["checkout", "-q", "-B", "rollback", &old.to_string()]);
    let message = format!("roll back to v1\n\n{ROLLBACK_TRAILER}: {old}");
    let back = repo.commit(&[], Some(&alice), &message);
    match decide(&r, back, Some(base), &provisioned) {
        Verdict::Trusted { rollback, .. } => assert_eq!(rollback, Some(old)),
        v => panic!("{v:?}"),
    }
    // The same rollback with another tree, or unsigned, is refused.
    let changed = repo.commit(&[("a", "5")], Some(&alice), &message);
    assert!(refused(decide(&r, changed, Some(base), &provisioned)).contains("whose tree differs"));
    repo.git(&["checkout", "-q", "-B", "rollback2", &old.to_string()]);
    let unsigned = repo.commit(&[], None, &message);
    assert!(refused(decide(&r, unsigned, Some(base), &provisioned)).contains("is not signed"));
}

#[test]
fn keys_rotate_through_the_repository() {
    let scratch = tempfile::tempdir().unwrap();
    let k: Vec<Key> = ["k1", "k2", "k3", "mallory"]
        .iter()
        .map(|n| keygen(scratch.path(), n))
        .collect();
    let provisioned = Signers::parse(&keys(&[&k[0]]));
    let repo = Repo::new();
    let base = repo.commit(&[("a", "0")], Some(&k[0]), "start");
    let r = repo.open();
    // Twenty commits; k1 adds k2, then k2 retires k1 and adds k3; the tip by k3.
    for i in 1..=20 {
        let (files, key): (Vec<(&str, String)>, &Key) = match i {
            5 => (vec![(REPO_SIGNERS, keys(&[&k[0], &k[1]]))], &k[0]),
            12 => (vec![(REPO_SIGNERS, keys(&[&k[1], &k[2]]))], &k[1]),
            _ => (vec![("a", i.to_string())], &k[2]),
        };
        let files: Vec<(&str, &str)> = files.iter().map(|(a, b)| (*a, b.as_str())).collect();
        repo.commit(
            &files,
            (i % 3 == 0 || i > 12 || i == 5 || i == 12).then_some(key),
            "step",
        );
    }
    let tip = repo.head();
    assert_eq!(trusted(decide(&r, tip, Some(base), &provisioned)), 2);
    // A rotation signed by the retired k1 is refused.
    let bad = repo.commit(
        &[(REPO_SIGNERS, &keys(&[&k[0], &k[3]]))],
        Some(&k[0]),
        "re-add",
    );
    let why = refused(decide(&r, bad, Some(tip), &provisioned));
    assert!(
        why.contains("changes .fleet/allowed_signers but is not signed by a key trusted before it"),
        "{why}"
    );
    // Signed by the current key k3, it is a valid rotation; then mallory's key signs.
    repo.git(&["reset", "-q", "--hard", &tip.to_string()]);
    repo.commit(
        &[(REPO_SIGNERS, &keys(&[&k[2], &k[3]]))],
        Some(&k[2]),
        "add mallory",
    );
    let next = repo.commit(&[("a", "x")], Some(&k[3]), "by the new key");
    assert_eq!(trusted(decide(&r, next, Some(tip), &provisioned)), 1);
    // A device that never applied a verified commit trusts only its provisioned keys.
    assert!(refused(decide(&r, next, None, &provisioned)).contains("not trusted"));
}
