//! Git sync: file:// and smart HTTP on 127.0.0.1, no-op polls, force-push, damaged
//! clones, an unreachable server, credentials, ssh through the ssh client, branch follow.

use std::process::Command;

use crate::support::*;

/// A fleet repo served over smart HTTP, and a device pulling from it.
fn served(token: Option<&str>) -> (FleetRepo, GitHttpServer, Device) {
    let repo = FleetRepo::new(&basic_fleet());
    let server = GitHttpServer::start(repo.server.parent().unwrap(), token);
    let extra = match token {
        Some(_) => "[credentials]\ntoken_file = \"/etc/fleet-agent/token\"\n".to_string(),
        None => String::new(),
    };
    let dev = Device::new(&server.url("fleet.git"), "pi-0001", &extra);
    if let Some(t) = token {
        std::fs::write(dev.path("/etc/fleet-agent/token"), format!("{t}\n")).unwrap();
    }
    (repo, server, dev)
}

#[test]
fn pull_over_smart_http_and_a_no_op_poll_asks_for_refs_only() {
    let (repo, server, dev) = served(None);
    let first = dev.run(&["pull"]);
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(dev.read("/etc/web/motd"), "hello shop from pi-0001\n");
    let reqs = server.take_requests();
    assert!(
        reqs.iter().any(|r| r == "POST /fleet.git/git-upload-pack"),
        "{reqs:?}"
    );
    // The first clone over HTTP is shallow: one commit.
    let clone = dev.path("/var/lib/fleet-agent/repo.git");
    assert!(
        clone.join("shallow").exists(),
        "shallow clone over smart HTTP"
    );

    let noop = dev.run(&["pull"]);
    assert_eq!(noop.code, 0, "{noop:?}");
    let reqs = server.take_requests();
    assert_eq!(
        reqs,
        vec![
            "GET /fleet.git/info/refs?service=git-upload-pack".to_string(),
            "POST /fleet.git/git-upload-pack".to_string()
        ],
        "a no-op poll is protocol v2's capabilities and ls-refs for the branch"
    );
    // A server without protocol v2: the refs are read from its advertisement.
    server.set_v0_only(true);
    let noop = dev.run(&["pull"]);
    assert_eq!(noop.code, 0, "{noop:?}");
    assert_eq!(
        server.take_requests(),
        vec!["GET /fleet.git/info/refs?service=git-upload-pack".to_string()],
        "with v0, a no-op poll is one refs request"
    );
    server.set_v0_only(false);

    repo.commit(
        &[("group_vars/shop.yml", "vars:\n  greeting: hello again\n")],
        "greeting",
    );
    let update = dev.run(&["pull"]);
    assert_eq!(update.code, 0, "{update:?}");
    assert_eq!(dev.read("/etc/web/motd"), "hello again from pi-0001\n");
    let reqs = server.take_requests();
    assert!(reqs.iter().any(|r| r.starts_with("POST")), "{reqs:?}");
}

#[test]
fn token_authentication_over_http() {
    let (_repo, _server, dev) = served(Some("t0ken"));
    let ok = dev.run(&["pull"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(!ok.text().contains("t0ken"));

    let (_repo2, _server2, bad) = served(Some("t0ken"));
    std::fs::write(bad.path("/etc/fleet-agent/token"), "wrong\n").unwrap();
    let denied = bad.run(&["pull"]);
    assert_eq!(denied.code, 3, "{denied:?}");
    assert!(
        denied.stderr.contains("HTTP 401: authentication failed"),
        "{denied:?}"
    );
    assert!(
        !denied.text().contains("wrong"),
        "the token is never printed"
    );
}

#[test]
fn a_force_pushed_branch_is_followed_with_a_warning() {
    let repo = FleetRepo::new(&basic_fleet());
    let dev = Device::new(&repo.url(), "pi-0001", "");
    assert_eq!(dev.run(&["pull"]).code, 0);
    // Rewrite history: a new root commit with other content, force-pushed.
    git(&repo.work, &["checkout", "-q", "--orphan", "rewritten"]);
    let mut files = basic_fleet();
    files[2] = ("group_vars/shop.yml", "vars:\n  greeting: rewritten\n");
    let tip = repo.commit(&files, "rewritten history");
    let run = dev.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("was force-pushed"), "{run:?}");
    assert_eq!(dev.read("/etc/web/motd"), "rewritten from pi-0001\n");
    assert_eq!(dev.state()["applied_commit"], tip);
}

#[test]
fn a_damaged_clone_is_detected_and_cloned_again() {
    let repo = FleetRepo::new(&basic_fleet());
    let dev = Device::new(&repo.url(), "pi-0001", "");
    assert_eq!(dev.run(&["pull"]).code, 0);
    let clone = dev.path("/var/lib/fleet-agent/repo.git");
    // Half-written: objects lost (a power cut on a careless filesystem).
    std::fs::remove_dir_all(clone.join("objects")).unwrap();
    std::fs::create_dir(clone.join("objects")).unwrap();
    std::fs::remove_file(dev.path("/etc/web/motd")).unwrap();
    let run = dev.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("damaged") && run.stderr.contains("cloning again"),
        "{run:?}"
    );
    assert_eq!(dev.read("/etc/web/motd"), "hello shop from pi-0001\n");

    // Garbage where the clone's HEAD and config should be.
    std::fs::write(clone.join("HEAD"), "garbage").unwrap();
    std::fs::write(clone.join("config"), "[[[").unwrap();
    let run = dev.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("cloning again"), "{run:?}");
    // A clone interrupted before it was moved into place is discarded too.
    std::fs::create_dir_all(dev.path("/var/lib/fleet-agent/repo.git.new/objects")).unwrap();
    std::fs::remove_dir_all(&clone).unwrap();
    assert_eq!(dev.run(&["pull"]).code, 0);
    assert!(!dev.path("/var/lib/fleet-agent/repo.git.new").exists());
}

#[test]
fn an_unreachable_server_keeps_the_last_commit_and_exits_3() {
    let (repo, server, dev) = served(None);
    assert_eq!(dev.run(&["pull"]).code, 0);
    let applied = dev.state()["applied_commit"].clone();
    repo.commit(
        &[("group_vars/shop.yml", "vars:\n  greeting: unseen\n")],
        "not fetched",
    );
    server.set_offline(true);
    // Drift is still corrected from the last fetched commit while offline.
    std::fs::write(dev.path("/etc/web/motd"), "drifted\n").unwrap();
    let run = dev.run(&["pull"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("cannot reach the fleet repository"),
        "{run:?}"
    );
    assert_eq!(dev.read("/etc/web/motd"), "hello shop from pi-0001\n");
    let state = dev.state();
    assert_eq!(state["applied_commit"], applied);
    assert_eq!(state["offline"], true);
    let status = dev.run(&["status"]);
    assert!(status.stdout.contains("server unreachable"), "{status:?}");

    // Never reached at all: nothing to fall back on, nothing applied.
    let fresh = Device::new("http://127.0.0.1:9/fleet.git", "pi-0001", "");
    let run = fresh.run(&["pull"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(!fresh.path("/etc/web").exists());
}

#[test]
fn ssh_urls_go_through_the_ssh_client() {
    let repo = FleetRepo::new(&basic_fleet());
    // A stand-in for ssh that runs the remote command locally: what crosses the pipe is
    // the real git protocol spoken by the real git-upload-pack.
    let tmp = tempfile::tempdir().unwrap();
    let fake = tmp.path().join("fake-ssh");
    let log = tmp.path().join("ssh.log");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\nfor last; do :; done\nexec sh -c \"$last\"\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let url = format!("git@fleet.example.com:{}", repo.server.display());
    let dev = Device::new(&url, "pi-0001", &format!("[credentials]\nssh_command = \"{}\"\nssh_key = \"/etc/fleet-agent/id_ed25519\"\nknown_hosts = \"/etc/fleet-agent/known_hosts\"\n", fake.display()));
    let run = dev.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(dev.read("/etc/web/motd"), "hello shop from pi-0001\n");
    let args = std::fs::read_to_string(&log).unwrap();
    assert!(
        args.contains("BatchMode=yes") && args.contains("StrictHostKeyChecking=yes"),
        "{args}"
    );
    assert!(
        args.contains(&format!(
            "-i {}",
            dev.path("/etc/fleet-agent/id_ed25519").display()
        )),
        "{args}"
    );
    assert!(
        args.contains(&format!(
            "git@fleet.example.com git-upload-pack '{}'",
            repo.server.display()
        )),
        "{args}"
    );
    assert!(
        dev.path("/var/lib/fleet-agent/repo.git/shallow").exists(),
        "shallow over ssh"
    );
    assert_eq!(dev.run(&["pull"]).code, 0);
}

#[test]
fn a_device_follows_the_branch_its_host_vars_name() {
    let repo = FleetRepo::new(&basic_fleet());
    git(&repo.work, &["push", "-q", "origin", "HEAD:production"]);
    repo.commit(
        &[("group_vars/shop.yml", "vars:\n  greeting: from main\n")],
        "main only",
    );
    // production says: pi-0009 follows main.
    git(&repo.work, &["fetch", "-q", "origin"]);
    git(
        &repo.work,
        &["checkout", "-q", "-b", "prod", "origin/production"],
    );
    std::fs::create_dir_all(repo.work.join("host_vars")).unwrap();
    std::fs::write(repo.work.join("host_vars/pi-0009.yml"), "branch: main\n").unwrap();
    git(&repo.work, &["add", "-A"]);
    git(&repo.work, &["commit", "-q", "-m", "pi-0009 follows main"]);
    git(&repo.work, &["push", "-q", "origin", "HEAD:production"]);

    let on_production = |id: &str| {
        let dev = Device::new(&repo.url(), id, "");
        let text = std::fs::read_to_string(&dev.config)
            .unwrap()
            .replace("branch = \"main\"", "branch = \"production\"");
        std::fs::write(&dev.config, text).unwrap();
        dev
    };
    let follower = on_production("pi-0009");
    let run = follower.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("following branch main instead of production"),
        "{run:?}"
    );
    assert_eq!(follower.read("/etc/web/motd"), "from main from pi-0009\n");
    assert_eq!(follower.run(&["pull"]).code, 0, "and stays there");
    assert_eq!(follower.read("/etc/web/motd"), "from main from pi-0009\n");

    let other = on_production("pi-0001");
    assert_eq!(other.run(&["pull"]).code, 0);
    assert_eq!(other.read("/etc/web/motd"), "hello shop from pi-0001\n");
}

/// A broken fleet.yml on the configured branch does not make a device that follows
/// another branch fall back to the configured one (which branch to follow is read from
/// its host_vars file alone), so it keeps applying the branch it follows.
#[test]
fn a_broken_configured_branch_does_not_stop_a_device_following_another() {
    let repo = FleetRepo::new(&basic_fleet());
    repo.commit(
        &[("group_vars/shop.yml", "vars:\n  greeting: from main\n")],
        "main",
    );
    git(&repo.work, &["checkout", "-q", "-b", "prod"]);
    std::fs::create_dir_all(repo.work.join("host_vars")).unwrap();
    std::fs::write(repo.work.join("host_vars/pi-0009.yml"), "branch: main\n").unwrap();
    std::fs::write(repo.work.join("fleet.yml"), "format: 1\nroles: [web\n").unwrap();
    git(&repo.work, &["add", "-A"]);
    git(&repo.work, &["commit", "-q", "-m", "broken production"]);
    git(&repo.work, &["push", "-q", "origin", "HEAD:production"]);

    let dev = Device::new(&repo.url(), "pi-0009", "");
    let text = std::fs::read_to_string(&dev.config)
        .unwrap()
        .replace("branch = \"main\"", "branch = \"production\"");
    std::fs::write(&dev.config, text).unwrap();
    let run = dev.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("following branch main instead of production"),
        "{run:?}"
    );
    assert_eq!(dev.read("/etc/web/motd"), "from main from pi-0009\n");
}

/// Lock files a fetch killed half way leaves in the clone: under the agent's own run
/// lock no other writer exists, so the next pull removes them (and says so) instead of
/// failing on them, over smart HTTP (shallow) and file://.
#[test]
fn stale_git_lock_files_left_by_a_killed_fetch_are_removed() {
    let locks = [
        "shallow.lock",
        "FETCH_HEAD.lock",
        "packed-refs.lock",
        "config.lock",
        "refs/remotes/origin/main.lock",
    ];
    let (repo, _server, http) = served(None);
    let file_repo = FleetRepo::new(&basic_fleet());
    let file = Device::new(&file_repo.url(), "pi-0001", "");
    for (repo, dev) in [(&repo, &http), (&file_repo, &file)] {
        assert_eq!(dev.run(&["pull"]).code, 0);
        let clone = dev.path("/var/lib/fleet-agent/repo.git");
        for lock in locks {
            std::fs::write(clone.join(lock), "").unwrap();
        }
        repo.commit(
            &[("group_vars/shop.yml", "vars:\n  greeting: after the kill\n")],
            "new",
        );
        let run = dev.run(&["pull"]);
        assert_eq!(run.code, 0, "{run:?}");
        assert_eq!(dev.read("/etc/web/motd"), "after the kill from pi-0001\n");
        assert!(
            run.stderr.contains("removed a stale git lock")
                && run.stderr.contains("refs/remotes/origin/main.lock"),
            "{run:?}"
        );
        for lock in locks {
            assert!(!clone.join(lock).exists(), "{lock}");
        }
    }
}

/// HTTPS trusts the system's certificate authorities (src/tls.rs), or the PEM bundle
/// that `SSL_CERT_FILE` names: a server whose certificate a private CA issued is refused
/// (unknown issuer) until that CA is trusted, and then the TLS handshake succeeds (the
/// stand-in server, `openssl s_server -WWW`, is no git server: the error comes after
/// TLS). Nothing is compiled in.
#[test]
fn https_trusts_the_system_authorities_or_the_bundle_ssl_cert_file_names() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(d)
            .args(args)
            .output()
            .expect("openssl (scripts/install-deps.sh installs it)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=fleet test CA",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "leaf.key",
                "-out",
                "leaf.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        d.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("openssl")
        .current_dir(d)
        .args([
            "s_server", "-quiet", "-WWW", "-cert", "leaf.pem", "-key", "leaf.key",
        ])
        .arg("-accept")
        .arg(port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "openssl s_server listens"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let dev = Device::new(
        &format!("https://127.0.0.1:{port}/fleet.git"),
        "pi-0001",
        "",
    );
    let untrusted = to_run(
        dev.command(&["pull"])
            .env("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")
            .output()
            .unwrap(),
    );
    let trusted = to_run(
        dev.command(&["pull"])
            .env("SSL_CERT_FILE", d.join("ca.pem"))
            .output()
            .unwrap(),
    );
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        untrusted
            .stderr
            .contains("invalid peer certificate: UnknownIssuer"),
        "{untrusted:?}"
    );
    assert!(
        trusted.stderr.contains("not a smart-HTTP git server")
            && !trusted.stderr.contains("certificate"),
        "{trusted:?}"
    );
}

/// The backoff file of a device: failures and the time before which it does not poll.
fn backoff(dev: &Device) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(dev.path("/var/lib/fleet-agent/backoff")).ok()?;
    let mut w = text.split_whitespace().map(|w| w.parse().unwrap());
    Some((w.next()?, w.next()?))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Moves the device's backoff into the past (time passed), keeping its failures.
fn expire_backoff(dev: &Device) {
    let (failures, _) = backoff(dev).unwrap();
    std::fs::write(
        dev.path("/var/lib/fleet-agent/backoff"),
        format!("{failures} 1\n"),
    )
    .unwrap();
}

#[test]
fn an_overloaded_server_is_left_alone_for_its_retry_after_and_the_wait_survives_the_process() {
    let repo = FleetRepo::new(&basic_fleet());
    let server = GitHttpServer::start(repo.server.parent().unwrap(), None);
    let extra = "[http]\nbackoff_base_secs = 10\nbackoff_max_secs = 25\n";
    let dev = Device::new(&server.url("fleet.git"), "pi-0001", extra);
    assert_eq!(dev.run(&["pull"]).code, 0);
    assert_eq!(backoff(&dev), None, "no backoff after a good poll");
    server.take_requests();

    // 503 with Retry-After: the run uses the last commit; the next polls wait that
    // long (a first failure adds no jitter).
    server.set_overload(Some("503 Service Unavailable\r\nRetry-After: 120"));
    let before = now();
    let busy = dev.run(&["pull"]);
    assert_eq!(busy.code, 3, "{busy:?}");
    assert!(
        busy.stderr.contains("HTTP 503: the server is overloaded"),
        "{busy:?}"
    );
    let (failures, until) = backoff(&dev).unwrap();
    assert_eq!(failures, 1);
    assert!(
        until >= before + 120 && until <= now() + 120,
        "{until} vs {before}"
    );
    assert_eq!(server.take_requests().len(), 1);

    // A new process (the timer's next run) does not ask the server at all, even
    // though it is back.
    server.set_overload(None);
    let waiting = dev.run(&["pull"]);
    assert_eq!(waiting.code, 3, "{waiting:?}");
    assert!(
        waiting.stderr.contains("not asking the server before"),
        "{waiting:?}"
    );
    assert_eq!(server.take_requests(), Vec::<String>::new());

    // Without Retry-After (the link down): exponential from the second failure in a
    // row, full jitter, capped.
    server.set_offline(true);
    for (n, window) in [(2, 10), (3, 20), (4, 25)] {
        expire_backoff(&dev);
        let before = now();
        assert_eq!(dev.run(&["pull"]).code, 3);
        let (failures, until) = backoff(&dev).unwrap();
        assert_eq!(failures, n);
        assert!(
            until >= before && until <= now() + window,
            "{n}: {until} vs {before}"
        );
    }
    // 429 without Retry-After: the same backoff.
    server.set_offline(false);
    server.set_overload(Some("429 Too Many Requests"));
    expire_backoff(&dev);
    let limited = dev.run(&["pull"]);
    assert_eq!(limited.code, 3, "{limited:?}");
    assert!(limited.stderr.contains("HTTP 429"), "{limited:?}");
    assert_eq!(backoff(&dev).unwrap().0, 5);

    // Once the wait is over and the server answers, the backoff is gone.
    server.set_overload(None);
    expire_backoff(&dev);
    assert_eq!(dev.run(&["pull"]).code, 0);
    assert_eq!(backoff(&dev), None);
}
