//! Faults a device meets in the field, none of which may wedge it: damaged objects in
//! the clone, a server that trickles, a full disk, permission problems, a clone that
//! cannot be cloned again, a missing branch, a first clone that fails. Each case
//! states the exit code and the message now seen (issue 13).

use std::time::Duration;

use crate::support::*;

/// Prints the exit code and the last error or warning line a case shows (run with
/// --nocapture: the closing note of issue 13 quotes them).
fn seen(case: &str, run: &Run) {
    let line = run
        .stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("error:") || l.starts_with("warning:"))
        .unwrap_or("");
    eprintln!("[seen] {case}: exit {}: {line}", run.code);
}

/// The id of a file of the fleet repository at its tip.
fn blob_id(repo: &FleetRepo, path: &str) -> String {
    git(&repo.work, &["rev-parse", &format!("HEAD:{path}")])
}

fn served() -> (FleetRepo, GitHttpServer, Device) {
    let repo = FleetRepo::new(&basic_fleet());
    let server = GitHttpServer::start(repo.server.parent().unwrap(), None);
    let dev = Device::new(&server.url("fleet.git"), "pi-0001", "");
    (repo, server, dev)
}

fn clone_of(dev: &Device) -> std::path::PathBuf {
    dev.path("/var/lib/fleet-agent/repo.git")
}

/// One corrupted blob that the next commit still needs (unchanged): it is found when
/// the new tip is checked, and a fresh clone is built beside the old one and swapped
/// in, over smart HTTP and file://. Before: every later run failed to read it (exit 1).
#[test]
fn a_corrupted_blob_the_tip_still_needs_is_healed_by_a_fresh_clone() {
    let (http_repo, _server, http) = served();
    let file_repo = FleetRepo::new(&basic_fleet());
    let file = Device::new(&file_repo.url(), "pi-0001", "");
    for (repo, dev) in [(&http_repo, &http), (&file_repo, &file)] {
        assert_eq!(dev.run(&["pull"]).code, 0);
        let template = blob_id(repo, "roles/web/templates/web.conf.j2");
        corrupt_packed_object(&clone_of(dev), &template);
        repo.commit(
            &[(
                "group_vars/shop.yml",
                "vars:\n  greeting: after the damage\n",
            )],
            "greeting",
        );
        let run = dev.run(&["pull"]);
        seen("corrupted blob the tip needs", &run);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(
            run.stderr.contains("is damaged") && run.stderr.contains("cloning again beside it"),
            "{run:?}"
        );
        assert_eq!(dev.read("/etc/web/motd"), "after the damage from pi-0001\n");
        assert_eq!(dev.run(&["pull"]).code, 0, "and the next poll is a no-op");
    }
}

/// A corrupted blob that the server's next pack uses as a delta base: the fetch itself
/// fails on it ("missing delta bases" or a failed read of the base), which is damage
/// of the clone, not an unreachable server. Before: exit 3 at every later poll, the
/// device stuck on its old commit while its unit counted every run as a success.
#[test]
fn a_fetch_that_fails_on_a_damaged_delta_base_clones_again() {
    let text: String = (0..300)
        .map(|i| format!("setting_{i} = value {i}\n"))
        .collect();
    let mut files = basic_fleet();
    files[0] = (
        "fleet.yml",
        "format: 1\nvars:\n  greeting: hi\n  port: 1\nroles: [web, extra]\n",
    );
    files.push((
        "roles/extra/role.yml",
        "resources:\n  - file: {path: /etc/web/big.conf, source: big.conf}\n",
    ));
    files.push(("roles/extra/files/big.conf", &text));
    let repo = FleetRepo::new(&files);
    let server = GitHttpServer::start(repo.server.parent().unwrap(), None);
    let dev = Device::new(&server.url("fleet.git"), "pi-0001", "");
    assert_eq!(dev.run(&["pull"]).code, 0);
    corrupt_packed_object(
        &clone_of(&dev),
        &blob_id(&repo, "roles/extra/files/big.conf"),
    );
    let changed = text.replace("value 150\n", "value 150 changed\n");
    repo.commit(
        &[("roles/extra/files/big.conf", changed.as_str())],
        "one line",
    );
    let run = dev.run(&["pull"]);
    seen("damaged delta base", &run);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("cloning again beside it"), "{run:?}");
    assert_eq!(dev.read("/etc/web/big.conf"), changed);
}

/// A server that sends one byte every 2 seconds never trips the per-read timeout; the
/// overall deadline ends the refs request, the fetch (HTTP) and the ssh client, with
/// a clear message and exit 3 (unreachable: the last fetched commit is used). Before:
/// `pull` ran until it was killed.
#[test]
fn a_trickling_server_is_cut_off_at_the_deadline() {
    let trickle = TrickleServer::start(
        Duration::from_secs(2),
        "application/x-git-upload-pack-advertisement",
    );
    let limit = Duration::from_secs(30);
    let deadline = "[http]\ndeadline_secs = 5\n";

    // A device with a clone: the last fetched commit is still applied.
    let (_repo, _server, dev) = served();
    std::fs::write(
        &dev.config,
        std::fs::read_to_string(&dev.config).unwrap() + deadline,
    )
    .unwrap();
    assert_eq!(dev.run(&["pull"]).code, 0);
    dev.set_config("repo", &format!("\"{}\"", trickle.url("fleet.git")));
    std::fs::write(dev.path("/etc/web/motd"), "drifted\n").unwrap();
    let (run, took) = dev.run_within(&["pull"], limit).expect("pull ends");
    seen("trickling server, clone present", &run);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr
            .contains("no complete answer within the deadline of 5 s"),
        "{run:?}"
    );
    assert!(took < Duration::from_secs(12), "took {took:?}");
    assert_eq!(dev.read("/etc/web/motd"), "hello shop from pi-0001\n");

    // A first clone: nothing to fall back on, and the run is recorded.
    let fresh = Device::new(&trickle.url("fleet.git"), "pi-0001", deadline);
    let (run, took) = fresh.run_within(&["pull"], limit).expect("pull ends");
    seen("trickling server, first clone", &run);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(took < Duration::from_secs(12), "took {took:?}");
    let status = fresh.run(&["status"]);
    assert!(status.stdout.contains("deadline"), "{status:?}");

    // ssh: a client that trickles is killed at the deadline.
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("slow-ssh");
    std::fs::write(&fake, "#!/bin/sh\nwhile :; do printf 0; sleep 2; done\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let ssh = Device::new(
        "ssh://git@fleet.example.com/srv/fleet.git",
        "pi-0001",
        &format!(
            "{deadline}[credentials]\nssh_command = \"{}\"\n",
            fake.display()
        ),
    );
    let (run, took) = ssh.run_within(&["pull"], limit).expect("pull ends");
    seen("trickling ssh", &run);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("deadline of 5 s"), "{run:?}");
    assert!(took < Duration::from_secs(12), "took {took:?}");
}

/// A first clone that fails records the run: `status` says why, never "no run
/// recorded yet".
#[test]
fn a_failed_first_clone_is_recorded() {
    let dev = Device::new("http://127.0.0.1:9/fleet.git", "pi-0001", "");
    let run = dev.run(&["pull"]);
    seen("failed first clone", &run);
    assert_eq!(run.code, 3, "{run:?}");
    // The repository is named once: the sentence is not prefixed with another.
    assert_eq!(
        run.stderr.matches("127.0.0.1:9/fleet.git:").count(),
        1,
        "{run:?}"
    );
    let status = dev.run(&["status"]);
    assert!(!status.stdout.contains("no run recorded yet"), "{status:?}");
    assert!(
        status
            .stdout
            .contains("failed (server unreachable: no commit fetched yet)")
            && status
                .stdout
                .contains("cannot fetch from http://127.0.0.1:9/fleet.git"),
        "{status:?}"
    );
}

/// A damaged clone that cannot be cloned again (the server is down) is a failure with
/// the cause (exit 1), not "unreachable" (3, which the unit counts as success), and
/// the damaged clone stays until a new one is complete.
#[test]
fn a_damaged_clone_that_cannot_be_cloned_again_fails_with_the_cause() {
    let (_repo, server, dev) = served();
    assert_eq!(dev.run(&["pull"]).code, 0);
    std::fs::write(clone_of(&dev).join("HEAD"), "garbage").unwrap();
    std::fs::write(clone_of(&dev).join("config"), "[[[").unwrap();
    drop(server);
    std::thread::sleep(Duration::from_millis(50));
    let run = dev.run(&["pull"]);
    seen("damaged clone, server down", &run);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("is damaged")
            && run.stderr.contains("cannot be cloned again")
            && run.stderr.contains("cannot fetch from http://127.0.0.1:"),
        "{run:?}"
    );
    assert!(clone_of(&dev).exists());
    let status = dev.run(&["status"]);
    assert!(
        status.stdout.contains("cannot be cloned again"),
        "{status:?}"
    );
}

/// The configured branch missing on the server is an error (exit 1), not
/// "unreachable"; a branch named by host_vars that the server does not have leaves
/// the device on its configured branch, with a warning in the journal, the state and
/// `status`.
#[test]
fn a_missing_branch_is_not_unreachable() {
    let repo = FleetRepo::new(&basic_fleet());
    let dev = Device::new(&repo.url(), "pi-0001", "");
    dev.set_config("branch", "\"nope\"");
    let run = dev.run(&["pull"]);
    seen("configured branch missing", &run);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("has no branch `nope`"), "{run:?}");

    repo.commit(
        &[("host_vars/pi-0001.yml", "branch: gone\n")],
        "follow a branch",
    );
    let server = GitHttpServer::start(repo.server.parent().unwrap(), None);
    let warning = "host_vars/pi-0001.yml names the branch `gone`, which the fleet repository";
    for url in [repo.url(), server.url("fleet.git")] {
        let dev = Device::new(&url, "pi-0001", "");
        let run = dev.run(&["pull"]);
        seen("followed branch missing", &run);
        assert_eq!(run.code, 0, "{url}: {run:?}");
        assert!(
            run.stderr.contains(warning)
                && run.stderr.contains("staying on the configured branch main"),
            "{run:?}"
        );
        assert_eq!(dev.read("/etc/web/motd"), "hello shop from pi-0001\n");
        let state = dev.state();
        assert!(state["warnings"][0].as_str().unwrap().contains(warning));
        let status = dev.run(&["status"]);
        let line = format!("warning:        {warning}");
        assert!(status.stdout.contains(&line), "{status:?}");
    }
}

/// These faults need root (a tmpfs mount, another user); the project's test command
/// runs as root (README), so without it they fail and say why, never pass unrun.
fn require_root(why: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{why} needs root: run scripts/test.sh as root"
    );
}

struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A state directory on a small tmpfs that the fleet repository does not fit on: the
/// first clone (file:// and HTTP) and a later fetch fail with "No space left on
/// device", exit 1, and the run is recorded. Before: exit 3, "unreachable".
#[test]
fn no_space_left_is_a_failure_not_unreachable() {
    require_root("mounting a tmpfs");
    // 3 MiB that do not compress: more than the 2 MiB the state directory has.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let big: Vec<u8> = (0..3 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let repo = FleetRepo::new(&basic_fleet());
    let server = GitHttpServer::start(repo.server.parent().unwrap(), None);
    for url in [repo.url(), server.url("fleet.git")] {
        let dev = Device::new(&url, "pi-0001", "");
        let state = dev.path("/var/lib/fleet-agent");
        std::fs::create_dir_all(&state).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(&state)
            .status()
            .unwrap();
        assert!(mounted.success());
        let _umount = Mounted(state.clone());
        // A clone that fits, then a commit that does not.
        assert_eq!(dev.run(&["pull"]).code, 0, "{url}");
        std::fs::create_dir_all(repo.work.join("roles/web/files")).unwrap();
        std::fs::write(repo.work.join("roles/web/files/big.bin"), &big).unwrap();
        repo.commit(&[], "big");
        let run = dev.run(&["pull"]);
        seen("no space left, fetch", &run);
        assert_eq!(run.code, 1, "{url}: {run:?}");
        assert!(
            run.stderr.contains("No space left on device"),
            "{url}: {run:?}"
        );
        // The first clone of a repository that does not fit.
        std::process::Command::new("rm")
            .arg("-rf")
            .arg(state.join("repo.git"))
            .status()
            .unwrap();
        std::fs::remove_file(state.join("state.json")).unwrap();
        let run = dev.run(&["pull"]);
        seen("no space left, first clone", &run);
        assert_eq!(run.code, 1, "{url}: {run:?}");
        assert!(
            run.stderr.contains("No space left on device"),
            "{url}: {run:?}"
        );
        let status = dev.run(&["status"]);
        assert!(
            status.stdout.contains("outcome:        failed")
                && status.stdout.contains("No space left on device"),
            "{url}: {status:?}"
        );
        git(&repo.work, &["rm", "-q", "roles/web/files/big.bin"]);
        repo.commit(&[], "not big");
    }
}

/// A clone whose objects directory the agent may not write (it runs as another user
/// than the one that made it): "Permission denied", exit 1. Before: exit 3.
#[test]
fn permission_denied_is_a_failure_not_unreachable() {
    require_root("running the agent as another user");
    let (repo, _server, dev) = served();
    assert_eq!(dev.run(&["pull"]).code, 0);
    // Everything the agent reads is readable by nobody; the state directory is
    // nobody's, the clone's objects are root's.
    let mut dir = dev.root.clone();
    while dir.parent().is_some() {
        let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        if dir == std::env::temp_dir() {
            break;
        }
        dir = dir.parent().unwrap().to_path_buf();
    }
    let state = dev.path("/var/lib/fleet-agent");
    let chown = |owner: &str, path: &std::path::Path| {
        let ok = std::process::Command::new("chown")
            .args(["-R", owner])
            .arg(path)
            .status()
            .unwrap();
        assert!(ok.success());
    };
    chown("65534:65534", &state);
    chown("0:0", &clone_of(&dev).join("objects"));
    repo.commit(
        &[("group_vars/shop.yml", "vars:\n  greeting: unseen\n")],
        "change",
    );
    let mut c = std::process::Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
        .arg("--root")
        .arg(&dev.root)
        .arg("pull")
        // A home that user can read: only the clone's permissions are in question.
        .env("HOME", &dev.root)
        .env_remove("JOURNAL_STREAM");
    let run = to_run(c.output().unwrap());
    seen("permission denied", &run);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("error: cannot write the fetched objects into the local clone")
            && run.stderr.contains("Permission denied"),
        "{run:?}"
    );
}
