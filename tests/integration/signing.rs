//! Signed, forward-moving configuration (docs/signing.md), end to end with real keys
//! (ssh-keygen), commits signed by `git commit -S` (gpg.format=ssh), served over
//! file://, smart HTTP and ssh: what is trusted is applied, everything else is refused
//! with exit 6 and nothing changed; rotations through `.fleet/allowed_signers`; a
//! device that was off for twenty commits and two rotations catches up.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{basic_fleet, git, Device, FleetRepo, GitHttpServer};

const REFUSED: i32 = 6;

struct Key {
    private: PathBuf,
    line: String,
}

fn keygen(dir: &Path, name: &str) -> Key {
    let private = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&private)
        .output()
        .expect("ssh-keygen runs");
    assert!(out.status.success());
    let public = std::fs::read_to_string(private.with_extension("pub")).unwrap();
    let mut w = public.split_whitespace();
    let (kind, b64) = (w.next().unwrap(), w.next().unwrap());
    Key {
        private,
        line: format!("{name}@example.com {kind} {b64}\n"),
    }
}

fn signers(keys: &[&Key]) -> String {
    keys.iter().map(|k| k.line.as_str()).collect()
}

/// Writes `files`, commits (signed with `key` when given) and force-pushes main.
fn commit(repo: &FleetRepo, files: &[(&str, &str)], key: Option<&Key>, message: &str) -> String {
    for (path, content) in files {
        let p = repo.work.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
    }
    git(&repo.work, &["add", "-A"]);
    let signing = key.map(|k| format!("user.signingkey={}", k.private.display()));
    let mut args = vec![];
    if let Some(s) = &signing {
        args.extend(["-c", "gpg.format=ssh", "-c", s.as_str()]);
    }
    args.extend(["commit", "-q", "--allow-empty", "-m", message]);
    if key.is_some() {
        args.push("-S");
    }
    git(&repo.work, &args);
    push(repo, "HEAD")
}

fn push(repo: &FleetRepo, what: &str) -> String {
    git(
        &repo.work,
        &["push", "-q", "-f", "origin", &format!("{what}:main")],
    );
    git(&repo.work, &["rev-parse", what])
}

fn reset(repo: &FleetRepo, to: &str) {
    git(&repo.work, &["reset", "-q", "--hard", to]);
    push(repo, "HEAD");
}

fn greeting(text: &str) -> String {
    format!("vars:\n  greeting: {text}\n")
}

/// How a device reaches the server.
enum Transport {
    File,
    Http,
    Ssh,
}

fn device(
    repo: &FleetRepo,
    transport: &Transport,
    id: &str,
    server: Option<&GitHttpServer>,
    keys: &str,
) -> Device {
    let trust = "[trust]\nallowed_signers = \"/etc/fleet-agent/allowed_signers\"\n";
    let dev = match transport {
        Transport::File => Device::new(&repo.url(), id, trust),
        Transport::Http => Device::new(&server.unwrap().url("fleet.git"), id, trust),
        Transport::Ssh => {
            let fake = repo.server.parent().unwrap().join("fake-ssh");
            std::fs::write(
                &fake,
                "#!/bin/sh\nfor last; do :; done\nexec sh -c \"$last\"\n",
            )
            .unwrap();
            std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            let url = format!("git@fleet.example.com:{}", repo.server.display());
            let ssh = format!("[credentials]\nssh_command = \"{}\"\n", fake.display());
            Device::new(&url, id, &format!("{ssh}{trust}"))
        }
    };
    std::fs::write(dev.path("/etc/fleet-agent/allowed_signers"), keys).unwrap();
    dev
}

/// A pull that must be refused for `why`, changing nothing but the state.
fn refused(dev: &Device, why: &str) -> String {
    // The state directory's parents appear with the first run, whatever it decides.
    let snapshot = || {
        let mut s = dev.snapshot();
        s.retain(|k, _| k != "/var" && k != "/var/lib");
        s
    };
    let before = snapshot();
    let run = dev.run(&["pull"]);
    assert_eq!(run.code, REFUSED, "{run:?}");
    assert!(run.stderr.contains(why), "expected {why:?}: {run:?}");
    assert!(run.stderr.contains("nothing was applied"), "{run:?}");
    assert_eq!(snapshot(), before, "a refused tip changed the device");
    assert_eq!(dev.state()["outcome"], "refused");
    let status = dev.run(&["status"]);
    assert_eq!(status.code, 1, "{status:?}");
    assert!(
        status.stdout.contains("refused: the tip is not trusted"),
        "{status:?}"
    );
    assert!(status.stdout.contains(why), "{status:?}");
    run.stderr
}

fn applied(dev: &Device, motd: &str) {
    let run = dev.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        dev.read("/etc/web/motd"),
        format!("{motd} from {}\n", dev_id(dev))
    );
    assert_eq!(dev.state()["trusted_commit"], dev.state()["applied_commit"]);
}

fn dev_id(dev: &Device) -> String {
    let text = std::fs::read_to_string(&dev.config).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("device_id = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string()
}

/// A commit whose tree is replaced under the signature of `signed`.
fn tampered(repo: &FleetRepo, signed: &str, evil_tree: &str) -> String {
    let raw = git(&repo.work, &["cat-file", "commit", signed]);
    let tree = git(&repo.work, &["rev-parse", &format!("{signed}^{{tree}}")]);
    let forged = raw.replacen(&format!("tree {tree}"), &format!("tree {evil_tree}"), 1);
    let file = repo.work.join("../forged");
    std::fs::write(&file, format!("{forged}\n")).unwrap();
    let id = git(
        &repo.work,
        &["hash-object", "-t", "commit", "-w", file.to_str().unwrap()],
    );
    push(repo, &id)
}

fn scenarios(transport: Transport) {
    let repo = FleetRepo::new(&basic_fleet());
    let server = matches!(transport, Transport::Http)
        .then(|| GitHttpServer::start(repo.server.parent().unwrap(), None));
    let tmp = tempfile::tempdir().unwrap();
    let [k1, k2, k3, mallory] = ["k1", "k2", "k3", "mallory"].map(|n| keygen(tmp.path(), n));
    let provisioned = signers(&[&k1]);
    let dev = device(&repo, &transport, "pi-0001", server.as_ref(), &provisioned);
    let away = device(&repo, &transport, "pi-0002", server.as_ref(), &provisioned);
    let gv = "group_vars/shop.yml";

    // The unsigned initial commit is refused; a signed one is applied.
    refused(&dev, "is not signed");
    let c1 = commit(&repo, &[(gv, &greeting("v1"))], Some(&k1), "v1");
    applied(&dev, "v1");
    applied(&away, "v1");

    commit(&repo, &[(gv, &greeting("unsigned"))], None, "unsigned");
    let message = refused(&dev, "is not signed");
    eprintln!("refused unsigned commit:\n{message}");
    // While it refuses, the device still corrects drift from its last trusted commit.
    std::fs::write(dev.path("/etc/web/motd"), "drifted\n").unwrap();
    let run = dev.run(&["pull"]);
    assert_eq!(run.code, REFUSED, "{run:?}");
    assert_eq!(dev.read("/etc/web/motd"), "v1 from pi-0001\n");
    assert_eq!(dev.state()["applied_commit"], c1.as_str());
    assert_eq!(dev.state()["last_commit"].as_str().unwrap().len(), 40);
    assert_ne!(dev.state()["last_commit"], c1.as_str());
    let evil_tree = git(&repo.work, &["rev-parse", "HEAD^{tree}"]);
    reset(&repo, &c1);
    commit(
        &repo,
        &[(gv, &greeting("mallory"))],
        Some(&mallory),
        "unknown key",
    );
    refused(
        &dev,
        "is signed by a key that is not trusted (ED25519 key SHA256:",
    );
    reset(&repo, &c1);
    let c2 = commit(&repo, &[(gv, &greeting("v2"))], Some(&k1), "v2");
    reset(&repo, &c1);
    tampered(&repo, &c2, &evil_tree);
    refused(&dev, "bad signature");

    // Forward to v2, then a force-push back to the older, signed v1.
    reset(&repo, &c2);
    applied(&dev, "v2");
    push(&repo, &c1);
    let message = refused(&dev, "does not descend from the last applied commit");
    eprintln!("refused force-push:\n{message}");
    // An explicit rollback: signed, with the trailer and v1's tree.
    git(&repo.work, &["reset", "-q", "--hard", &c1]);
    let back = format!("roll back to v1\n\nFleet-Rollback-To: {c1}");
    commit(&repo, &[], Some(&k1), &back);
    applied(&dev, "v1");

    // A valid rotation (k1 adds k2 and retires itself) ...
    let c3 = commit(
        &repo,
        &[
            (".fleet/allowed_signers", &signers(&[&k2])),
            (gv, &greeting("v3")),
        ],
        Some(&k1),
        "rotate to k2",
    );
    applied(&dev, "v3");
    // ... then the retired k1 signs a rotation, or anything.
    commit(
        &repo,
        &[(".fleet/allowed_signers", &signers(&[&k1, &mallory]))],
        Some(&k1),
        "take over",
    );
    refused(
        &dev,
        "changes .fleet/allowed_signers but is not signed by a key trusted before it",
    );
    reset(&repo, &c3);
    commit(
        &repo,
        &[(gv, &greeting("old key"))],
        Some(&k1),
        "by a retired key",
    );
    refused(&dev, "is signed by a key that is not trusted");
    reset(&repo, &c3);

    // Twenty commits, a second rotation among them (k2 → k3), most unsigned; the tip
    // signed by k3. The device that was away walks from v1 through both rotations.
    for i in 1..=20 {
        let (files, key) = match i {
            7 => (vec![(".fleet/allowed_signers", signers(&[&k3]))], Some(&k2)),
            20 => (vec![(gv, greeting("v20"))], Some(&k3)),
            _ => (vec![("notes.txt", format!("{i}\n"))], None),
        };
        let files: Vec<(&str, &str)> = files.iter().map(|(a, b)| (*a, b.as_str())).collect();
        commit(&repo, &files, key, &format!("step {i}"));
    }
    applied(&away, "v20");
    applied(&dev, "v20");
    let run = dev.run(&["pull"]);
    assert_eq!(run.code, 0, "a no-op poll: {run:?}");
}

#[test]
fn signed_forward_commits_over_file() {
    scenarios(Transport::File);
}

#[test]
fn signed_forward_commits_over_smart_http() {
    scenarios(Transport::Http);
}

#[test]
fn signed_forward_commits_over_ssh() {
    scenarios(Transport::Ssh);
}

/// `plan` shows the signature of what it plans; `status` the trusted commit.
#[test]
fn plan_and_status_show_the_signature() {
    let repo = FleetRepo::new(&basic_fleet());
    let tmp = tempfile::tempdir().unwrap();
    let k1 = keygen(tmp.path(), "k1");
    let dev = device(&repo, &Transport::File, "pi-0001", None, &signers(&[&k1]));
    commit(&repo, &[], Some(&k1), "signed");
    let plan = dev.run(&["plan"]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(
        plan.stdout.contains(
            "Signature: Good \"git\" signature for k1@example.com with ED25519 key SHA256:"
        ),
        "{plan:?}"
    );
    assert_eq!(dev.run(&["pull"]).code, 0);
    let status = dev.run(&["status"]);
    assert!(status.stdout.contains("trusted commit:"), "{status:?}");
    assert!(
        status.stdout.contains("signature:      Good \"git\""),
        "{status:?}"
    );
    std::fs::write(repo.work.join(".fleet/allowed_signers"), signers(&[&k1])).ok();
    let plan = dev.run(&["plan", "--repo", repo.work.to_str().unwrap()]);
    assert!(plan.stdout.contains("Signature: HEAD "), "{plan:?}");
}

/// A tip older than `max_commit_age_secs` is a stale feed (state, status, metrics),
/// judged only once the clock is synchronized.
#[test]
fn an_old_tip_is_reported_as_a_stale_feed() {
    let repo = FleetRepo::new(&basic_fleet());
    let tmp = tempfile::tempdir().unwrap();
    let k1 = keygen(tmp.path(), "k1");
    let signing = format!("user.signingkey={}", k1.private.display());
    let out = Command::new("git")
        .current_dir(&repo.work)
        .env("GIT_COMMITTER_DATE", "2020-01-01T00:00:00Z")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "gpg.format=ssh",
            "-c",
            &signing,
        ])
        .args(["commit", "-q", "-S", "--allow-empty", "-m", "old"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    push(&repo, "HEAD");
    let dev = device(&repo, &Transport::File, "pi-0001", None, &signers(&[&k1]));
    let mut config = std::fs::read_to_string(&dev.config).unwrap();
    config.push_str("max_commit_age_secs = 86400\n");
    std::fs::write(&dev.config, config).unwrap();
    std::fs::create_dir_all(dev.path("/var/lib/prometheus/node-exporter")).unwrap();
    // No synchronized clock: not judged.
    assert_eq!(dev.run(&["pull"]).code, 0);
    assert!(dev.state().get("stale").is_none());
    std::fs::create_dir_all(dev.path("/run/systemd/timesync")).unwrap();
    std::fs::write(dev.path("/run/systemd/timesync/synchronized"), "").unwrap();
    let run = dev.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("committed 2020-01-01T00:00:00Z"),
        "{run:?}"
    );
    assert!(dev.state()["stale"]
        .as_str()
        .unwrap()
        .contains("the feed may be frozen"));
    let status = dev.run(&["status"]);
    assert!(status.stdout.contains("stale feed:"), "{status:?}");
    let metrics = dev.read("/var/lib/prometheus/node-exporter/fleet_agent.prom");
    assert!(
        metrics.lines().any(|l| l == "fleet_agent_feed_stale 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == "fleet_agent_signature_status{status=\"verified\"} 1"),
        "{metrics}"
    );
}

/// A clone made again (shallow, at the new tip) no longer holds the last trusted
/// commit: the whole history is fetched to judge descent.
#[test]
fn a_shallow_clone_made_again_is_deepened_to_judge_descent() {
    let repo = FleetRepo::new(&basic_fleet());
    let server = GitHttpServer::start(repo.server.parent().unwrap(), None);
    let tmp = tempfile::tempdir().unwrap();
    let k1 = keygen(tmp.path(), "k1");
    let dev = device(
        &repo,
        &Transport::Http,
        "pi-0001",
        Some(&server),
        &signers(&[&k1]),
    );
    let gv = "group_vars/shop.yml";
    let c1 = commit(&repo, &[(gv, &greeting("v1"))], Some(&k1), "v1");
    applied(&dev, "v1");
    let clone = dev.path("/var/lib/fleet-agent/repo.git");
    for i in 2..=4 {
        commit(
            &repo,
            &[(gv, &greeting(&format!("v{i}")))],
            Some(&k1),
            "next",
        );
    }
    std::fs::remove_dir_all(&clone).unwrap();
    let run = dev.run(&["-v", "pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("fetching the whole history"), "{run:?}");
    assert_eq!(dev.read("/etc/web/motd"), "v4 from pi-0001\n");
    // The same with a force-push back to v1: refused after deepening.
    push(&repo, &c1);
    std::fs::remove_dir_all(&clone).unwrap();
    refused(&dev, "does not descend from the last applied commit");
}
