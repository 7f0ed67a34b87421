//! What an ansible-pull fleet needs to move over, on a booted Debian: `command` guards
//! across runs (each command runs exactly when its guards say, a failed triggered run
//! is run again), a `download` interrupted (kill -9) and resumed with an HTTP Range
//! request, an archive swapped in whole while a reader watches, and device-held secrets
//! (a missing one stops the run, naming it; a present one never shows) with facts.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Booted, SCRIPTS};
use crate::support::{FleetRepo, GitHttpServer};
use crate::timed;

/// A device pulling a fleet repository served over smart HTTP.
fn device(name: &str, files: &[(&str, &str)]) -> (Booted, FleetRepo, GitHttpServer) {
    let repo = FleetRepo::new(files);
    let git = GitHttpServer::start(repo.server.parent().unwrap(), None);
    let dev = Booted::start(name);
    dev.write(
        "/etc/fleet-agent/agent.toml",
        &format!(
            "repo = \"{}\"\nbranch = \"main\"\ndevice_id = \"{name}\"\n",
            git.url("fleet.git")
        ),
    );
    (dev, repo, git)
}

fn lines(dev: &Booted, path: &str) -> usize {
    dev.sh(&format!("cat {path} 2>/dev/null | wc -l"))
        .parse()
        .unwrap()
}

const COMMANDS: &str = "resources:
  - directory: {path: /var/lib/demo}
  - file: {path: /etc/demo/app.conf, content: \"{{ version }}\\n\"}
  - user: {name: demo, home: /var/lib/demo-home}
  - directory: {path: /var/lib/demo/work, owner: demo}
  - command:
      name: init
      argv: [sh, -c, \"echo initialized; echo run >> /var/lib/demo/init.log; touch /var/lib/demo/initialized\"]
      creates: /var/lib/demo/initialized
  - command:
      name: once-unless
      argv: [sh, -c, \"echo run >> /var/lib/demo/unless.log; touch /var/lib/demo/marker\"]
      unless: [test, -e, /var/lib/demo/marker]
  - command:
      name: as-demo
      shell: \"id -un > whoami; echo $GREETING $PWD $HOME $PATH > env.txt\"
      user: demo
      cwd: /var/lib/demo/work
      env: {GREETING: hello}
      creates: /var/lib/demo/work/whoami
  - command:
      name: reload
      argv: [sh, -c, \"echo run >> /var/lib/demo/reload.log\"]
      on_change: [/etc/demo/app.conf]
  - command:
      name: flaky
      argv: [sh, -c, \"test -e /var/lib/demo/ok || { echo not yet >&2; exit 3; }; echo run >> /var/lib/demo/flaky.log\"]
      on_change: [/etc/demo/app.conf]
";

fn commands_fleet(version: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "fleet.yml",
            format!("format: 1\nvars: {{version: \"{version}\"}}\nroles: [demo]\n"),
        ),
        ("roles/demo/role.yml", COMMANDS.to_string()),
    ]
}

fn commit(repo: &FleetRepo, files: &[(&'static str, String)], message: &str) {
    let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (*a, b.as_str())).collect();
    repo.commit(&refs, message);
}

#[test]
fn each_command_runs_exactly_when_its_guards_say() {
    let files = commands_fleet("v1");
    let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let (dev, repo, _git) = timed("setup", || device("fa-commands", &refs));

    // First pull, under systemd as the timer runs it: every command runs once; flaky
    // fails (exit 3) and fails the run, after the others ran.
    let first = timed("first pull", || {
        dev.exec(&[
            "systemd-run",
            "--wait",
            "-q",
            "-u",
            "fleet-agent-cmd-1",
            "fleet-agent",
            "pull",
        ])
    });
    let _ = first;
    let status = dev.agent(&["status", "--json"]);
    assert!(
        status.stdout.contains("\"outcome\": \"failed\""),
        "the run fails with its command: {status:?}"
    );
    for log in ["init", "unless", "reload"] {
        assert_eq!(lines(&dev, &format!("/var/lib/demo/{log}.log")), 1, "{log}");
    }
    assert_eq!(lines(&dev, "/var/lib/demo/flaky.log"), 0);
    assert_eq!(dev.sh("cat /var/lib/demo/work/whoami"), "demo");
    assert_eq!(
        dev.sh("cat /var/lib/demo/work/env.txt"),
        "hello /var/lib/demo/work /var/lib/demo-home /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    let journal = dev.sh("journalctl --sync && journalctl -q -o cat SYSLOG_IDENTIFIER=fleet-agent");
    for said in [
        "command init: initialized",
        "command flaky: not yet",
        "`command flaky: sh -c",
    ] {
        assert!(
            journal.contains(said),
            "the journal has `{said}`:\n{journal}"
        );
    }
    assert!(status.stdout.contains("exit code 3"), "{status:?}");

    // The flaky command's trigger does not change again, but its run did not finish:
    // the next pull runs it (and nothing else).
    dev.sh("touch /var/lib/demo/ok");
    let plan = dev.agent(&["plan"]);
    assert_eq!(plan.code, 2, "{plan:?}");
    assert!(plan.stdout.contains("! command flaky"), "{plan:?}");
    assert!(
        plan.stdout
            .contains("its last run for a change did not finish"),
        "{plan:?}"
    );
    assert!(!plan.stdout.contains("command reload"), "{plan:?}");
    let second = timed("second pull", || dev.agent(&["pull"]));
    assert_eq!(second.code, 0, "{second:?}");
    assert_eq!(lines(&dev, "/var/lib/demo/flaky.log"), 1);

    // Nothing is due now: a pull runs no command.
    let third = dev.agent(&["pull"]);
    assert!(
        third.code == 0 && third.stderr.contains("no changes"),
        "{third:?}"
    );
    assert_eq!(dev.agent(&["plan"]).code, 0);
    for log in ["init", "unless", "reload", "flaky"] {
        assert_eq!(
            lines(&dev, &format!("/var/lib/demo/{log}.log")),
            1,
            "{log} ran once"
        );
    }

    // A change of the file they follow runs the on_change commands again, only them.
    commit(&repo, &commands_fleet("v2"), "v2");
    let fourth = timed("pull with a change", || dev.agent(&["pull"]));
    assert_eq!(fourth.code, 0, "{fourth:?}");
    assert_eq!(lines(&dev, "/var/lib/demo/reload.log"), 2);
    assert_eq!(lines(&dev, "/var/lib/demo/flaky.log"), 2);
    assert_eq!(lines(&dev, "/var/lib/demo/init.log"), 1);
    assert_eq!(lines(&dev, "/var/lib/demo/unless.log"), 1);
}

/// scripts/range-server.py on 127.0.0.1: Range requests, an optional rate, a request log.
struct RangeServer {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl RangeServer {
    fn start(dir: &Path, rate: Option<u64>) -> RangeServer {
        use std::io::BufRead;
        let log = dir.join("requests.log");
        let mut cmd = Command::new("python3");
        cmd.arg(format!("{SCRIPTS}/range-server.py"))
            .arg(dir)
            .arg(&log);
        if let Some(r) = rate {
            cmd.args(["--rate", &r.to_string()]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().strip_prefix("PORT=").unwrap().parse().unwrap();
        RangeServer { child, port, log }
    }

    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for RangeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn download_fleet(port: u16, file: &str, sha: &str, unpack: &str) -> Vec<(&'static str, String)> {
    vec![
        ("fleet.yml", "format: 1\nroles: [tools]\n".to_string()),
        (
            "roles/tools/role.yml",
            format!("resources:\n  - download:\n      path: /opt/tool\n      url: http://127.0.0.1:{port}/{file}\n      sha256: \"{sha}\"\n{unpack}"),
        ),
    ]
}

#[test]
fn a_download_interrupted_by_kill_9_resumes_where_it_stopped() {
    let served = tempfile::tempdir().unwrap();
    let blob = served.path().join("blob.bin");
    let size: u64 = 6 * 1024 * 1024;
    Command::new("head")
        .args(["-c", &size.to_string(), "/dev/urandom"])
        .stdout(std::fs::File::create(&blob).unwrap())
        .status()
        .unwrap();
    let sha = sha256(&blob);
    let server = RangeServer::start(served.path(), Some(1024 * 1024));
    let files = download_fleet(server.port, "blob.bin", &sha, "      mode: \"0755\"\n");
    let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let (dev, _repo, _git) = timed("setup", || device("fa-download", &refs));

    let part = format!("/var/lib/fleet-agent/downloads/{sha}.part");
    let mut pull = dev.spawn_agent(&["pull"]);
    let start = Instant::now();
    while dev.path(&part).metadata().map(|m| m.len()).unwrap_or(0) < 2 * 1024 * 1024 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the download never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    dev.sh("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^fleet-agent pull' && kill -9 ${p#/proc/}; done; true");
    let _ = pull.wait();
    assert!(
        !dev.path("/opt/tool").exists(),
        "nothing placed by the killed run"
    );
    let had = dev.path(&part).metadata().unwrap().len();
    assert!(had > 0 && had < size, "a partial download: {had}");

    let plan = dev.agent(&["plan"]);
    assert!(
        plan.stdout.contains("resumes a partial download at"),
        "{plan:?}"
    );
    let again = timed("pull resuming the download", || dev.agent(&["pull"]));
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(dev.sh("sha256sum /opt/tool | cut -d' ' -f1"), sha);
    assert_eq!(dev.sh("stat -c %a /opt/tool"), "755");
    assert!(!dev.path(&part).exists(), "the partial download is gone");
    assert!(!dev
        .path(&format!("/var/lib/fleet-agent/downloads/{sha}"))
        .exists());

    let requests = server.requests();
    let resumed = requests.last().unwrap();
    let asked = resumed["range"]
        .as_str()
        .expect("the second request asks for a range");
    let from: u64 = asked
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(from >= had && from < size, "{asked} after {had} bytes");
    assert_eq!(resumed["status"], 206);
    assert_eq!(
        resumed["sent"].as_u64().unwrap(),
        size - from,
        "only the rest was sent"
    );
    eprintln!(
        "[download] killed at {had} bytes, resumed with {asked}, {} requests",
        requests.len()
    );

    // The next pull knows the file without the network (its stamp) and without hashing.
    let noop = dev.agent(&["pull"]);
    assert!(
        noop.code == 0 && noop.stderr.contains("no changes"),
        "{noop:?}"
    );
    assert_eq!(
        server.requests().len(),
        requests.len(),
        "no request for a file in place"
    );
}

/// A tar.gz with a top directory and 200 files that all say `version`.
fn archive(dir: &Path, version: &str) -> (String, String) {
    let top = dir.join(format!("build-{version}/tool-{version}"));
    std::fs::create_dir_all(top.join("bin")).unwrap();
    for i in 0..200 {
        std::fs::write(top.join(format!("file{i:03}")), format!("{version}\n")).unwrap();
    }
    std::fs::write(top.join("bin/tool"), format!("#!/bin/sh\necho {version}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(top.join("bin/tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let name = format!("tool-{version}.tar.gz");
    let ok = Command::new("tar")
        .arg("-czf")
        .arg(dir.join(&name))
        .arg("-C")
        .arg(dir.join(format!("build-{version}")))
        .args(["--owner=1234", "--group=1234", &format!("tool-{version}")])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let sha = sha256(&dir.join(&name));
    (name, sha)
}

#[test]
fn an_unpacked_archive_is_swapped_in_whole() {
    let served = tempfile::tempdir().unwrap();
    let (v1, sha1) = archive(served.path(), "v1");
    let (v2, sha2) = archive(served.path(), "v2");
    let server = RangeServer::start(served.path(), None);
    let unpack = "      unpack: tar.gz\n      strip_components: 1\n      owner: nobody\n";
    let files = download_fleet(server.port, &v1, &sha1, unpack);
    let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let (dev, repo, _git) = timed("setup", || device("fa-unpack", &refs));
    let first = timed("pull with v1", || dev.agent(&["pull"]));
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(dev.sh("/opt/tool/bin/tool"), "v1");
    assert_eq!(
        dev.sh("stat -c '%U %a' /opt/tool /opt/tool/file000"),
        "nobody 755\nnobody 644"
    );

    // A reader that looks at the directory all the time: from inside it (its cwd is
    // the directory it entered), every file must say one version and all must be there.
    dev.sh("cat > /run/watch.sh <<'EOF'
while [ ! -e /run/watch.stop ]; do
  ( cd /opt/tool 2>/dev/null || { echo missing; exit; }
    n=$(ls | grep -c '^file'); v=$(cat file* 2>/dev/null | sort -u | tr '\\n' ' ')
    # Mixed versions, or the new one incomplete, would be a torn directory. Fewer old
    # files are a reader inside the old directory while it is removed after the swap.
    [ \"$(echo $v | wc -w)\" -le 1 ] || echo \"torn: $n files, versions $v\"
    [ \"$(echo $v)\" != v2 ] || [ \"$n\" = 200 ] || echo \"torn: v2 with $n files\"
    echo \"$v\" >> /run/watch.seen )
done >> /run/watch.bad
EOF
nohup sh /run/watch.sh >/dev/null 2>&1 &");
    let files = download_fleet(server.port, &v2, &sha2, unpack);
    let (_, role) = &files[1];
    repo.commit(&[("roles/tools/role.yml", role)], "v2");
    let second = timed("pull swapping in v2", || dev.agent(&["pull"]));
    assert_eq!(second.code, 0, "{second:?}");
    std::thread::sleep(Duration::from_millis(300));
    dev.sh("touch /run/watch.stop; sleep 1");
    assert_eq!(
        dev.sh("cat /run/watch.bad"),
        "",
        "a reader saw the directory torn or missing"
    );
    let seen = dev.sh("sort -u /run/watch.seen");
    assert!(
        seen.contains("v1") && seen.contains("v2"),
        "the reader saw both: {seen}"
    );
    assert_eq!(dev.sh("/opt/tool/bin/tool"), "v2");
    assert_eq!(
        dev.sh("ls -a /opt | grep -c fleet-agent; true"),
        "0",
        "nothing left beside it"
    );
    let reads = dev.sh("wc -l < /run/watch.seen");
    eprintln!("[unpack] the reader looked {reads} times; every look saw one whole version");
}

const SECRET_ROLE: &str = "resources:
  - file:
      path: /etc/demo/api.env
      content: \"API_TOKEN={{ secret('api_token') }}\\n\"
      mode: \"0600\"
  - file:
      path: /etc/demo/facts
      content: \"{{ device.facts.os_id }} {{ device.facts.os_codename }} {{ device.facts.architecture }} {{ device.facts.hostname }}\\n\"
";

#[test]
fn a_missing_secret_stops_the_run_and_a_present_one_never_shows() {
    let (dev, _repo, _git) = timed("setup", || {
        device(
            "fa-secret",
            &[
                ("fleet.yml", "format: 1\nroles: [demo]\n"),
                ("roles/demo/role.yml", SECRET_ROLE),
            ],
        )
    });
    let pull = timed("pull without the secret", || dev.agent(&["pull"]));
    assert_eq!(pull.code, 1, "{pull:?}");
    assert!(
        pull.stderr.contains("secret `api_token` is not on this device: expected the file /etc/fleet-agent/secrets/api_token"),
        "{pull:?}"
    );
    assert!(pull.stderr.contains("nothing was changed"), "{pull:?}");
    assert!(!dev.path("/etc/demo").exists());
    assert!(dev
        .agent(&["status", "--json"])
        .stdout
        .contains("\"outcome\": \"invalid\""));

    // Readable by others: refused.
    let value = "tok-9f8e7d6c5b4a";
    dev.sh(&format!("mkdir -p /etc/fleet-agent/secrets && printf '{value}\\n' > /etc/fleet-agent/secrets/api_token && chmod 644 /etc/fleet-agent/secrets/api_token"));
    let pull = dev.agent(&["pull"]);
    assert_eq!(pull.code, 1, "{pull:?}");
    assert!(
        pull.stderr.contains("readable by its owner only"),
        "{pull:?}"
    );
    assert!(!pull.stderr.contains(value), "{pull:?}");

    dev.sh("chmod 600 /etc/fleet-agent/secrets/api_token");
    let plan = dev.agent(&["plan", "--json"]);
    assert_eq!(plan.code, 2, "{plan:?}");
    let pull = dev.exec(&[
        "systemd-run",
        "--wait",
        "-q",
        "-u",
        "fleet-agent-secret",
        "fleet-agent",
        "-v",
        "pull",
    ]);
    assert_eq!(pull.code, 0, "{pull:?}");
    assert_eq!(
        dev.sh("cat /etc/demo/api.env"),
        format!("API_TOKEN={value}")
    );
    let journal =
        dev.sh("journalctl --sync && journalctl -q -o verbose SYSLOG_IDENTIFIER=fleet-agent");
    let state = dev.sh("cat /var/lib/fleet-agent/state.json");
    for (what, text) in [
        ("plan", &plan.stdout),
        ("journal", &journal),
        ("state", &state),
    ] {
        assert!(!text.contains(value), "the secret's value is in the {what}");
    }
    assert!(
        plan.stdout.contains("content is secret: not shown"),
        "{plan:?}"
    );

    // Facts, read from the device itself.
    let expected = dev.sh(". /etc/os-release; echo $ID $VERSION_CODENAME $(dpkg --print-architecture) $(cat /proc/sys/kernel/hostname)");
    assert_eq!(dev.sh("cat /etc/demo/facts"), expected);
}
