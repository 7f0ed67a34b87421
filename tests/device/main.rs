//! The device suite: fleet-agent on a booted Debian bookworm (systemd as PID 1) with
//! real apt, dpkg and systemd, pulling a fleet repository over smart HTTP from the host
//! and packages from a signed apt repository on 127.0.0.1. Needs root (nspawn).

#[allow(dead_code)]
#[path = "../integration/support.rs"]
mod support;

mod harness;
mod kiosk;
// Run reports, their transport and metrics; fleet status and plan --all.
mod fleet;
mod migration;
mod reporting;
// Rollouts, maintenance windows, the hold file.
mod release;

// A/B OS updates on a simulated Mender device.
mod ab;
mod os_update;
mod self_update;

use std::time::{Duration, Instant};

use harness::{Booted, StaticServer, SCRIPTS};
use support::{FleetRepo, GitHttpServer};

/// The signed test apt repository, built once per test process.
fn apt_repo() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fleet-test-apt-{}", std::process::id()));
        let status = std::process::Command::new(format!("{SCRIPTS}/test-apt-repo.sh"))
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "test-apt-repo.sh");
        dir
    })
}

const SERVICE_UNIT: &str = "[Unit]\nDescription=Fleet demo\n\n[Service]\nExecStart=/bin/sh -c 'while true; do sleep 1; done'\n\n[Install]\nWantedBy=multi-user.target\n";

/// A fleet with one role that uses every device resource.
fn device_fleet(apt_port: u16, greeting: &str, packages: &str) -> Vec<(String, String)> {
    vec![
        (
            "fleet.yml".into(),
            format!(
                "format: 1\nvars:\n  apt_port: {apt_port}\n  greeting: {greeting}\nroles: [app]\n"
            ),
        ),
        (
            "roles/app/files/fleet-demo.service".into(),
            SERVICE_UNIT.into(),
        ),
        (
            "roles/app/role.yml".into(),
            format!(
                "resources:
  - apt_source:
      name: fleet-test
      uris: [\"http://127.0.0.1:{{{{ apt_port }}}}/\"]
      suites: [fleet-test]
      components: [main]
      key: fleet-test.gpg
{packages}
  - group: {{name: fleetdata}}
  - user:
      name: fleetapp
      home: /var/lib/fleetapp
      shell: /usr/sbin/nologin
      groups: [fleetdata]
  - file:
      path: /etc/systemd/system/fleet-demo.service
      source: fleet-demo.service
  - file:
      path: /etc/fleet-demo.conf
      content: \"greeting={{{{ greeting }}}}\\n\"
      owner: fleetapp
      group: fleetdata
      mode: \"0640\"
  - service:
      name: fleet-demo
      enabled: true
      state: started
      restart_on: [/etc/fleet-demo.conf]
"
            ),
        ),
    ]
}

const PACKAGES: &str = "  - package: {name: fleet-test-hello, version: \"1.0*\"}\n  - package: {name: fleet-test-service}\n";

fn commit(repo: &FleetRepo, files: &[(String, String)], message: &str) {
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    repo.commit(&refs, message);
}

fn setup(name: &str) -> (Booted, FleetRepo, GitHttpServer, StaticServer) {
    let apt = StaticServer::start(apt_repo());
    let repo = FleetRepo::new(&[("README", "device tests\n")]);
    // The archive key is binary: it goes into the working tree as bytes.
    let key = repo.work.join("roles/app/files/fleet-test.gpg");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    std::fs::copy(apt_repo().join("fleet-test-archive-keyring.gpg"), key).unwrap();
    commit(
        &repo,
        &device_fleet(apt.port, "hello", PACKAGES),
        "device fleet",
    );
    let git = GitHttpServer::start(repo.server.parent().unwrap(), None);
    let dev = Booted::start(name);
    dev.write(
        "/etc/fleet-agent/agent.toml",
        &format!(
            "repo = \"{}\"\nbranch = \"main\"\ndevice_id = \"{name}\"\n",
            git.url("fleet.git")
        ),
    );
    (dev, repo, git, apt)
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let t = f();
    eprintln!("[timing] {what}: {:.1} s", start.elapsed().as_secs_f64());
    t
}

fn starts_of(dev: &Booted, unit: &str) -> usize {
    let out = dev.exec(&["journalctl", "-q", "-o", "cat", "-u", unit]);
    out.stdout
        .lines()
        .filter(|l| l.starts_with("Started "))
        .count()
}

#[test]
fn a_device_converges_then_a_second_pull_changes_nothing() {
    let (dev, repo, _git, apt) = timed("setup", || setup("fa-converge"));

    // plan on the device lists what the pull will do.
    let plan = timed("plan", || dev.agent(&["plan", "--json"]));
    assert_eq!(plan.code, 2, "{plan:?}");
    let planned: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    let subjects: Vec<String> = planned["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c["kind"].as_str().unwrap(),
                c["subject"].as_str().unwrap()
            )
        })
        .collect();
    let apt_details = planned["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "apt" && c["subject"] == "packages")
        .unwrap()["details"]
        .to_string();
    assert!(apt_details.contains("fleet-test-hello"), "{apt_details}");

    let pull = timed("first pull", || dev.agent(&["pull"]));
    assert_eq!(pull.code, 0, "{pull:?}");
    for s in &subjects {
        assert!(
            pull.stderr.contains(s.as_str()),
            "the pull did what the plan said: {s}\n{pull:?}"
        );
    }
    assert!(dev
        .sh("dpkg-query -W -f '${Version}' fleet-test-hello")
        .starts_with("1.0"));
    assert_eq!(
        dev.sh("dpkg-query -W -f '${Status}' fleet-test-service"),
        "install ok installed"
    );
    assert_eq!(dev.sh("systemctl is-enabled fleet-demo.service"), "enabled");
    assert_eq!(dev.sh("systemctl is-active fleet-demo.service"), "active");
    assert_eq!(dev.sh("id -nG fleetapp"), "fleetapp fleetdata");
    assert_eq!(
        dev.sh("getent passwd fleetapp | cut -d: -f6,7"),
        "/var/lib/fleetapp:/usr/sbin/nologin"
    );
    assert_eq!(
        dev.sh("stat -c '%a %U %G' /etc/fleet-demo.conf"),
        "640 fleetapp fleetdata"
    );
    assert!(dev
        .sh("cat /etc/apt/sources.list.d/fleet-test.sources")
        .contains("Signed-By: /etc/apt/keyrings/fleet-test.gpg"));
    assert_eq!(starts_of(&dev, "fleet-demo.service"), 1);

    // A second pull: no apt command, no dpkg lock, nothing changed.
    let history = dev.sh("wc -c < /var/log/apt/history.log");
    let dpkg_log = dev.sh("wc -c < /var/log/dpkg.log");
    let noop = timed("no-op pull", || dev.agent(&["pull"]));
    assert_eq!(noop.code, 0, "{noop:?}");
    assert!(noop.stderr.contains("no changes"), "{noop:?}");
    assert_eq!(dev.sh("wc -c < /var/log/apt/history.log"), history);
    assert_eq!(dev.sh("wc -c < /var/log/dpkg.log"), dpkg_log);
    assert_eq!(dev.agent(&["plan"]).code, 0);

    // The no-op pull inside the device, timed there (not through nsenter): median of 10.
    let ms = dev.sh("for i in 1 2 3 4 5 6 7 8 9 10; do s=$(date +%s%N); fleet-agent -q pull || exit 1; e=$(date +%s%N); echo $(( (e - s) / 1000 )); done");
    let mut times: Vec<u64> = ms.lines().map(|l| l.trim().parse().unwrap()).collect();
    times.sort();
    eprintln!(
        "[timing] no-op pull inside the device, median of 10: {:.1} ms",
        (times[4] + times[5]) as f64 / 2000.0
    );

    // A changed config file restarts its service exactly once.
    let files = device_fleet(apt.port, "bonjour", PACKAGES);
    commit(&repo, &files, "greeting");
    let before = dev.sh("systemctl show -p InvocationID --value fleet-demo.service");
    // Under systemd (as the timer runs it): the journal gets structured fields.
    timed("pull with a config change, as a systemd unit", || {
        dev.sh("systemd-run --wait -q -u fleet-agent-test-pull fleet-agent pull")
    });
    let journal =
        dev.sh("journalctl --sync && journalctl -o verbose SYSLOG_IDENTIFIER=fleet-agent");
    for field in [
        "MESSAGE=changed file /etc/fleet-demo.conf",
        "ROLE=app",
        "RESOURCE=/etc/fleet-demo.conf",
        "COMMIT=",
        "MESSAGE=ran restart fleet-demo.service",
    ] {
        assert!(journal.contains(field), "journal has {field}:\n{journal}");
    }
    assert_eq!(dev.sh("cat /etc/fleet-demo.conf"), "greeting=bonjour");
    assert_ne!(
        dev.sh("systemctl show -p InvocationID --value fleet-demo.service"),
        before
    );
    assert_eq!(
        starts_of(&dev, "fleet-demo.service"),
        2,
        "restarted exactly once"
    );
    assert_eq!(dev.agent(&["pull"]).code, 0);
    assert_eq!(
        starts_of(&dev, "fleet-demo.service"),
        2,
        "an unchanged run restarts nothing"
    );

    // Package removal, then source removal.
    let files = device_fleet(
        apt.port,
        "bonjour",
        "  - package: {name: fleet-test-hello, state: absent}\n",
    );
    commit(&repo, &files, "remove packages");
    let pull = timed("pull removing a package", || dev.agent(&["pull"]));
    assert_eq!(pull.code, 0, "{pull:?}");
    let status = dev.exec(&["dpkg-query", "-W", "-f", "${Status}", "fleet-test-hello"]);
    assert!(
        status.code != 0
            || !status.stdout.contains("installed")
            || status.stdout.contains("config-files"),
        "{status:?}"
    );

    let mut files = device_fleet(apt.port, "bonjour", "");
    let role = files
        .iter_mut()
        .find(|(p, _)| p == "roles/app/role.yml")
        .unwrap();
    let start = role.1.find("  - apt_source:").unwrap();
    let end = role.1.find("  - group:").unwrap();
    role.1.replace_range(start..end, "");
    commit(&repo, &files, "remove the source");
    let pull = timed("pull removing the source", || dev.agent(&["pull"]));
    assert_eq!(pull.code, 0, "{pull:?}");
    assert!(!dev
        .path("/etc/apt/sources.list.d/fleet-test.sources")
        .exists());
    assert!(!dev.path("/etc/apt/keyrings/fleet-test.gpg").exists());
}

#[test]
fn a_package_that_does_not_exist_applies_nothing() {
    let (dev, repo, _git, apt) = timed("setup", || setup("fa-missing"));
    assert_eq!(timed("first pull", || dev.agent(&["pull"])).code, 0);
    let mut files = device_fleet(
        apt.port,
        "changed",
        &format!("{PACKAGES}  - package: {{name: fleet-test-nonexistent}}\n"),
    );
    files.push(("roles/app/files/x".into(), "x".into()));
    commit(&repo, &files, "a package that does not exist");
    let pull = timed("pull with a missing package", || dev.agent(&["pull"]));
    assert_eq!(pull.code, 1, "{pull:?}");
    assert!(pull.stderr.contains("fleet-test-nonexistent"), "{pull:?}");
    assert!(pull.stderr.contains("nothing was changed"), "{pull:?}");
    assert_eq!(
        dev.sh("cat /etc/fleet-demo.conf"),
        "greeting=hello",
        "no file of that run was written"
    );
}

#[test]
fn an_interrupted_dpkg_is_recovered_by_the_next_run() {
    let (dev, repo, _git, apt) = timed("setup", || setup("fa-dpkg"));
    // fleet-test-slow's postinst waits while /run/fleet-test-slow exists: the run is
    // killed (agent, apt, dpkg) while dpkg configures it.
    dev.sh("touch /run/fleet-test-slow");
    commit(
        &repo,
        &device_fleet(
            apt.port,
            "hello",
            &format!("{PACKAGES}  - package: {{name: fleet-test-slow}}\n"),
        ),
        "slow package",
    );
    let mut pull = dev.spawn_agent(&["pull"]);
    let start = Instant::now();
    // minbase has no procps: processes are found in /proc.
    // The first character in brackets: the pattern does not match this shell itself.
    let pids = |pattern: &str| {
        let (first, rest) = pattern.split_at(1);
        format!("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q -- '[{first}]{rest}' && echo ${{p#/proc/}}; done; true")
    };
    while dev.sh(&pids("fleet-test-slow.postinst")).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the postinst never ran"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for pattern in [
        "fleet-agent pull",
        "apt-get install",
        "dpkg --status-fd",
        "/usr/bin/dpkg",
        "fleet-test-slow.postinst",
    ] {
        dev.sh(&format!("kill -9 $({}) 2>/dev/null; true", pids(pattern)));
    }
    let _ = pull.wait();
    dev.sh("rm -f /run/fleet-test-slow");
    let audit = dev.exec(&["dpkg", "--audit"]);
    assert!(
        audit.stdout.contains("fleet-test-slow"),
        "dpkg was interrupted: {audit:?}"
    );

    let pull = timed("pull after an interrupted dpkg", || dev.agent(&["pull"]));
    assert_eq!(pull.code, 0, "{pull:?}");
    assert!(pull.stderr.contains("dpkg was interrupted"), "{pull:?}");
    assert_eq!(
        dev.exec(&["dpkg", "--audit"]).stdout.trim(),
        "",
        "dpkg is clean again"
    );
    assert_eq!(
        dev.sh("dpkg-query -W -f '${Status}' fleet-test-slow"),
        "install ok installed"
    );
    assert_eq!(dev.sh("systemctl is-active fleet-demo.service"), "active");
    let again = dev.agent(&["pull"]);
    assert!(
        again.code == 0 && again.stderr.contains("no changes"),
        "{again:?}"
    );
}

/// On the running system (root `/`), a link that a user planted on the way to a managed
/// path is not followed; Debian's own `/var/run -> /run` (root's) is (docs/security.md).
#[test]
fn on_a_booted_device_a_link_in_a_users_home_is_never_followed() {
    let dev = timed("boot", || Booted::start("fa-links"));
    dev.sh("useradd --create-home kiosk && runuser -u kiosk -- ln -s /etc /home/kiosk/.config");
    dev.write("/srv/fleet/fleet.yml", "format: 1\nroles: [app]\n");
    dev.write(
        "/srv/fleet/inventory.yml",
        "groups:\n  all-devices:\n    devices: [\"*\"]\n",
    );
    dev.write(
        "/srv/fleet/roles/app/role.yml",
        "resources:\n  - file: {path: /home/kiosk/.config/evil.conf, content: \"pwned\\n\"}\n",
    );
    let uid = dev.sh("id -u kiosk");
    let expected = format!(
        "cannot inspect /home/kiosk/.config/evil.conf: the symlink /home/kiosk/.config → /etc on the way is not followed: its directory belongs to uid {uid}, and on the running system only links that root alone can change are followed"
    );
    for verb in ["plan", "apply"] {
        let run = dev.agent(&[verb, "--repo", "/srv/fleet"]);
        assert_eq!(run.code, 1, "{verb}: {run:?}");
        assert!(run.stderr.contains(&expected), "{verb}: {run:?}");
    }
    assert_eq!(dev.exec(&["test", "-e", "/etc/evil.conf"]).code, 1);

    dev.write(
        "/srv/fleet/roles/app/role.yml",
        "resources:\n  - file: {path: /var/run/fleet-agent-test, content: \"ok\\n\"}\n",
    );
    let run = dev.agent(&["apply", "--repo", "/srv/fleet"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        dev.sh("readlink /var/run && cat /run/fleet-agent-test"),
        "/run\nok"
    );
}

/// `apt-get update` exits 0 when it cannot fetch a source: the run still stops at the
/// packages phase, naming the source and why (not with a later "Unable to locate
/// package"), and writes no file of that commit. Removing the source refreshes the
/// lists in the same run, so they no longer list it (issue 13, item 5).
#[test]
fn an_apt_source_that_cannot_be_fetched_stops_the_run_and_its_removal_refreshes_the_lists() {
    let (dev, repo, _git, apt) = timed("setup", || setup("fa-apt-fetch"));
    assert_eq!(timed("first pull", || dev.agent(&["pull"])).code, 0);

    // The source moves to a port where nothing listens, and a package from it is added.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let packages = format!("{PACKAGES}  - package: {{name: fleet-test-dep}}\n");
    commit(
        &repo,
        &device_fleet(port, "unreachable", &packages),
        "moved source",
    );
    let pull = timed("pull with an unreachable source", || dev.agent(&["pull"]));
    assert_eq!(pull.code, 1, "{pull:?}");
    assert!(
        pull.stderr
            .contains("`apt-get update` could not fetch every source")
            && pull.stderr.contains(&format!("http://127.0.0.1:{port}/"))
            && pull.stderr.contains("Connection refused"),
        "{pull:?}"
    );
    assert!(
        !pull.stderr.contains("Unable to locate package"),
        "{pull:?}"
    );
    assert_eq!(dev.sh("cat /etc/fleet-demo.conf"), "greeting=hello");
    // `status` exits 1 after a failed run.
    assert_eq!(dev.agent(&["status", "--json"]).code, 1);

    // The source removed (the packages stay installed): the same run refreshes the
    // lists, which then hold nothing of it.
    let mut files = device_fleet(apt.port, "removed", PACKAGES);
    let role = files
        .iter_mut()
        .find(|(p, _)| p == "roles/app/role.yml")
        .unwrap();
    let start = role.1.find("  - apt_source:").unwrap();
    let end = role.1.find("  - group:").unwrap();
    role.1.replace_range(start..end, "");
    commit(&repo, &files, "remove the source");
    let pull = timed("pull removing the source", || dev.agent(&["pull"]));
    assert_eq!(pull.code, 0, "{pull:?}");
    assert!(pull.stderr.contains("ran apt update"), "{pull:?}");
    let lists = dev.sh("ls /var/lib/apt/lists");
    assert!(!lists.contains("127.0.0.1"), "{lists}");
    assert_eq!(dev.sh("cat /etc/fleet-demo.conf"), "greeting=removed");
}
