//! A/B OS updates on a simulated Mender device (tests/device/ab.rs): the agent installs
//! through the mender-update double, reboots, converges the roles on the new root
//! filesystem, checks health, commits or rolls back; power cuts, bootloader fall-backs,
//! failed downloads, maintenance windows, the 3.x CLI and foreign updates.
//! Each scenario prints its duration (`[timing]`); the happy path and the rollback print
//! their state file and journal lines (run with --nocapture to see them).

use std::time::Instant;

use super::ab::{artifacts, real_artifact, sha256, AbDevice};
use super::harness::StaticServer;
use super::support::{FleetRepo, GitHttpServer};
use super::{commit, SERVICE_UNIT};

const ROLE: &str = "resources:
  - file:
      path: /etc/systemd/system/fleet-demo.service
      source: fleet-demo.service
  - file:
      path: /etc/fleet-demo.conf
      content: \"converged on this root filesystem\\n\"
  - service:
      name: fleet-demo
      enabled: true
      state: started
      restart_on: [/etc/fleet-demo.conf]
";

/// The os: section: one image for pi4-sim.
fn os_yaml(artifact: &str, uri: &str, sha256: Option<&str>, reboot: &str) -> String {
    let sha = sha256
        .map(|s| format!("      sha256: \"{s}\"\n"))
        .unwrap_or_default();
    format!(
        "os:
  images:
    pi4-sim:
      artifact: {artifact}
      uri: \"{uri}\"
{sha}  reboot: \"{reboot}\"
  health:
    timeout_seconds: 6
    units: [fleet-demo.service]
    commands: [\"test -e /etc/fleet-os-healthy\"]
  retry:
    initial_seconds: 3
    max_seconds: 8
"
    )
}

/// agent.toml: the poll backoff after failed polls (src/sync/backoff.rs, up to 60 s
/// after the second failure by default) at most 1 s, for the tests that take the fleet
/// repository away and bring it back: they are about the OS update's offline bound.
const POLL_BACKOFF_1S: &str = "[http]\nbackoff_base_secs = 1\nbackoff_max_secs = 1\n";

fn fleet(os: &str) -> Vec<(String, String)> {
    vec![
        ("fleet.yml".into(), format!("format: 1\nroles: [app]\n{os}")),
        (
            "roles/app/files/fleet-demo.service".into(),
            SERVICE_UNIT.into(),
        ),
        ("roles/app/role.yml".into(), ROLE.into()),
    ]
}

/// A scenario's world: the fleet repository over smart HTTP, the artifacts over HTTP,
/// and the A/B device running fleet-os-1.
struct World {
    dev: AbDevice,
    repo: FleetRepo,
    git: GitHttpServer,
    arts: StaticServer,
    started: Instant,
    name: String,
}

impl World {
    fn new(name: &str, os: impl Fn(&World0) -> String, agent_extra: &str) -> World {
        World::with(name, os, agent_extra, &artifacts().dir, &[])
    }

    fn with(
        name: &str,
        os: impl Fn(&World0) -> String,
        agent_extra: &str,
        served: &std::path::Path,
        create: &[&str],
    ) -> World {
        let started = Instant::now();
        let arts = StaticServer::start(served);
        let w0 = World0 { port: arts.port };
        let repo = FleetRepo::new(&[("README", "A/B device tests\n")]);
        commit(&repo, &fleet(&os(&w0)), "fleet with an OS image");
        let git = GitHttpServer::start(repo.server.parent().unwrap(), None);
        let toml = format!(
            "repo = \"{}\"\nbranch = \"main\"\ndevice_id = \"{name}\"\nstate_dir = \"/data/fleet-agent\"\n{agent_extra}",
            git.url("fleet.git")
        );
        let dev = AbDevice::create(name, &toml, create);
        eprintln!(
            "[timing] {name}: setup {:.1} s",
            started.elapsed().as_secs_f64()
        );
        World {
            dev,
            repo,
            git,
            arts,
            started: Instant::now(),
            name: name.into(),
        }
    }

    fn url(&self, file: &str) -> String {
        format!("http://127.0.0.1:{}/{file}", self.arts.port)
    }

    fn declare(&self, os: &str, message: &str) {
        commit(&self.repo, &fleet(os), message);
    }

    /// Rebuilds the world's `os:` with another artifact (healthy sha256 included).
    fn os(&self, artifact: &str, reboot: &str) -> String {
        let file = format!("{artifact}.mender");
        os_yaml(
            artifact,
            &self.url(&file),
            Some(&artifacts().sha256(&file)),
            reboot,
        )
    }

    fn done(&self) {
        eprintln!(
            "[timing] {}: scenario {:.1} s",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// What `os` closures get before the world exists: the artifact server's port.
struct World0 {
    port: u16,
}

impl World0 {
    fn os(&self, artifact: &str, reboot: &str) -> String {
        let file = format!("{artifact}.mender");
        os_yaml(
            artifact,
            &format!("http://127.0.0.1:{}/{file}", self.port),
            Some(&artifacts().sha256(&file)),
            reboot,
        )
    }
}

fn excerpt(title: &str, text: &str) {
    eprintln!("----- {title} -----\n{}\n-----", text.trim_end());
}

fn os_lines(journal: &str) -> String {
    journal
        .lines()
        .filter(|l| l.contains("OS update") || l.contains("fell back") || l.contains("fleet-os"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn os_update_happy_path_converges_the_new_slot_and_commits() {
    let w = World::new("fa-os-happy", |w| w.os("fleet-os-2", "now"), "");
    let dev = &w.dev;
    assert_eq!(dev.artifact_name(), "fleet-os-1");
    assert_eq!(dev.parts(), [2]);

    // Run 1 (slot A): converge, install fleet-os-2 to slot B, reboot.
    let (part, journal1) = dev.pull_rebooting();
    assert_eq!(part, 3, "the bootloader boots the new slot");
    assert!(journal1.contains("installed fleet-os-2"), "{journal1}");
    assert_eq!(dev.os()["phase"], "rebooting", "{}", dev.os());
    assert_eq!(dev.env("upgrade_available"), "1");
    assert_eq!(dev.sh("cat /etc/fleet-os-release"), "fleet-os-2");
    // The new root filesystem has none of the old configuration yet.
    assert_eq!(dev.exec(&["test", "-e", "/etc/fleet-demo.conf"]).code, 1);
    assert_eq!(dev.artifact_name(), "fleet-os-1", "not committed yet");

    // Run 2 (slot B): converge every role here first, health, commit.
    let (code, journal2) = dev.pull();
    assert_eq!(code, 0, "{journal2}");
    assert_eq!(
        dev.sh("cat /etc/fleet-demo.conf"),
        "converged on this root filesystem"
    );
    assert_eq!(dev.sh("systemctl is-active fleet-demo.service"), "active");
    assert_eq!(dev.artifact_name(), "fleet-os-2");
    assert_eq!(dev.env("upgrade_available"), "0");
    assert_eq!(dev.env("mender_boot_part"), "3");
    let os = dev.os();
    assert_eq!(os["phase"], "idle", "{os}");
    assert_eq!(os["current"], "fleet-os-2", "{os}");
    assert!(os["failed"].as_array().unwrap().is_empty(), "{os}");
    assert!(journal2.contains("committed fleet-os-2"), "{journal2}");

    // Run 3: already on the declared version: nothing to do, no client call that
    // changes anything.
    let (code, journal3) = dev.pull();
    assert_eq!(code, 0, "{journal3}");
    assert!(!journal3.contains("installing"), "{journal3}");
    assert_eq!(dev.parts(), [2, 3]);
    // Committed: a reboot stays on slot B.
    dev.reboot();
    assert_eq!(dev.wait_boot(3), 3);
    assert_eq!(dev.sh("cat /etc/fleet-os-release"), "fleet-os-2");
    w.done();

    excerpt(
        "happy path: state.json os_update after commit",
        &serde_json::to_string_pretty(&os).unwrap(),
    );
    excerpt(
        "happy path: journal of run 1 (slot A)",
        &os_lines(&journal1),
    );
    excerpt("happy path: journal of run 2 (slot B)", &journal2);
}

#[test]
fn os_update_unhealthy_slot_is_rolled_back_and_not_retried() {
    let w = World::new("fa-os-unhealthy", |w| w.os("fleet-os-4", "now"), "");
    let dev = &w.dev;
    let (part, _) = dev.pull_rebooting();
    assert_eq!(part, 3);
    assert_eq!(dev.sh("cat /etc/fleet-os-release"), "fleet-os-4");

    // On slot B the health command fails until the timeout: rollback, reboot to A.
    let (part, journal) = dev.pull_rebooting();
    assert_eq!(part, 2, "back on the old slot");
    assert!(journal.contains("health"), "{journal}");
    assert_eq!(dev.sh("cat /etc/fleet-os-release"), "fleet-os-1");
    assert_eq!(dev.env("upgrade_available"), "0");
    assert_eq!(dev.env("mender_boot_part"), "2");
    assert_eq!(dev.artifact_name(), "fleet-os-1");

    // Back on A: the run records the rollback; fleet-os-4 is never tried again.
    let (code, journal_a) = dev.pull();
    assert_eq!(code, 0, "{journal_a}");
    let os = dev.os();
    assert_eq!(os["phase"], "idle", "{os}");
    assert_eq!(os["current"], "fleet-os-1", "{os}");
    assert_eq!(os["failed"], serde_json::json!(["fleet-os-4"]), "{os}");
    for _ in 0..2 {
        let (code, j) = dev.pull();
        assert_eq!(code, 0, "{j}");
        assert!(!j.contains("installing"), "no retry loop: {j}");
    }
    assert_eq!(dev.parts(), [2, 3, 2]);
    w.done();

    excerpt(
        "rollback: state.json os_update",
        &serde_json::to_string_pretty(&os).unwrap(),
    );
    excerpt("rollback: journal of the run on slot B", &journal);
    excerpt("rollback: journal of the next run on slot A", &journal_a);
}

#[test]
fn os_update_power_cut_during_install_then_retried() {
    let w = World::new("fa-os-powercut", |w| w.os("fleet-os-2", "now"), "");
    let dev = &w.dev;
    // The double waits in ArtifactInstall (state recorded, boot variables not written)
    // while this file exists; the power is cut there.
    dev.sh("echo ArtifactInstall > /run/mender-double.pause");
    let runner = std::process::Command::new(super::ab::AB)
        .args([
            "exec",
            &dev.name,
            "--",
            "systemctl",
            "start",
            "fleet-agent.service",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while dev
        .exec(&["test", "-e", "/run/mender-double.pause.reached"])
        .code
        != 0
    {
        assert!(
            Instant::now() < deadline,
            "the install did not reach ArtifactInstall"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(dev.os()["phase"], "installing");
    dev.powercut();
    let mut runner = runner;
    let _ = runner.wait();
    assert_eq!(
        dev.wait_boot(2),
        2,
        "the boot variables were not written: old slot"
    );
    assert_eq!(dev.env("upgrade_available"), "0");
    assert_eq!(
        dev.os()["phase"],
        "installing",
        "consistent state after the cut"
    );

    // Next run: roll the interrupted install back, install again, reboot.
    let (part, journal) = dev.pull_rebooting();
    assert!(journal.contains("interrupted"), "{journal}");
    assert_eq!(part, 3);
    let (code, j) = dev.pull();
    assert_eq!(code, 0, "{j}");
    assert_eq!(dev.artifact_name(), "fleet-os-2");
    assert_eq!(dev.os()["phase"], "idle");
    assert_eq!(dev.parts(), [2, 2, 3]);
    w.done();
}

#[test]
fn os_update_two_boots_without_commit_fall_back() {
    let w = World::new("fa-os-fallback", |w| w.os("fleet-os-2", "now"), "");
    let dev = &w.dev;
    let (part, _) = dev.pull_rebooting();
    assert_eq!(part, 3);
    // The new slot never commits (no agent run); the second boot falls back.
    dev.reboot();
    assert_eq!(dev.wait_boot(3), 2, "bootcount > bootlimit: altbootcmd");
    assert_eq!(dev.env("upgrade_available"), "0");
    let (code, journal) = dev.pull();
    assert_eq!(code, 0, "{journal}");
    assert!(journal.contains("fell back"), "{journal}");
    let os = dev.os();
    assert_eq!(os["phase"], "idle", "{os}");
    assert_eq!(os["failed"], serde_json::json!(["fleet-os-2"]), "{os}");
    assert_eq!(dev.artifact_name(), "fleet-os-1");
    // The double has nothing in progress any more.
    assert_eq!(dev.exec(&["mender-update", "commit"]).code, 2);
    let (code, j) = dev.pull();
    assert_eq!(code, 0, "{j}");
    assert!(!j.contains("installing"), "{j}");
    assert_eq!(dev.parts(), [2, 3, 2]);
    w.done();
    excerpt("fall-back: journal", &os_lines(&journal));
}

#[test]
fn os_update_failed_download_and_bad_artifact_back_off() {
    // Delays of 10 s and 20 s (not the other tests' 3 s): "a second pull inside the
    // backoff" must still be inside it on a loaded machine, where a run takes seconds.
    let slow = |os: String| {
        let retry = "initial_seconds: 3\n    max_seconds: 8\n";
        assert!(os.contains(retry));
        os.replace(retry, "initial_seconds: 10\n    max_seconds: 40\n")
    };
    let w = World::new(
        "fa-os-backoff",
        |w| {
            slow(os_yaml(
                "fleet-os-2",
                &format!("http://127.0.0.1:{}/missing.mender", w.port),
                None,
                "now",
            ))
        },
        "",
    );
    // Waits until the device's clock reaches the backoff's `after`.
    let wait_out = |after: u64| loop {
        let now = super::ab::device_now(&w.dev);
        if now >= after {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(after - now));
    };
    let dev = &w.dev;
    let (code, j) = dev.pull();
    assert_ne!(code, 0, "a failed download fails the run: {j}");
    let b = dev.os()["backoff"].clone();
    assert_eq!(b["attempts"], 1, "{b}");
    assert_eq!(dev.os()["phase"], "idle");
    // Inside the backoff: no new attempt.
    let (_, j) = dev.pull();
    assert_eq!(dev.os()["backoff"]["attempts"], 1, "{j}");
    assert!(j.contains("retrying after a failed download"), "{j}");

    // A corrupt artifact (served, no sha256 declared): the client refuses it; attempt 2
    // after the first delay (10 s), the next delay doubles.
    w.declare(
        &slow(os_yaml("fleet-os-2", &w.url("garbage.mender"), None, "now")),
        "garbage artifact",
    );
    wait_out(b["after"].as_u64().unwrap());
    // The delay counts from the failure, some time during the run: bracket it by the
    // clock before and after the run (a loaded machine can take seconds per run).
    let before = super::ab::device_now(dev);
    let (code, j) = dev.pull();
    assert_ne!(code, 0, "{j}");
    let b = dev.os()["backoff"].clone();
    assert_eq!(b["attempts"], 2, "{b}");
    let now = super::ab::device_now(dev);
    let after = b["after"].as_u64().unwrap();
    assert!(
        after >= before + 20 && after <= now + 20,
        "second delay 20 s: {b} (run between {before} and {now})"
    );
    assert_eq!(dev.env("upgrade_available"), "0");
    assert_eq!(dev.parts(), [2]);

    // The fixed URL after the backoff: installed.
    w.declare(&w.os("fleet-os-2", "now"), "fixed URL");
    wait_out(after);
    let (part, _) = dev.pull_rebooting();
    assert_eq!(part, 3);
    w.done();
}

#[test]
fn os_update_already_on_declared_version_does_nothing() {
    let w = World::new(
        "fa-os-current",
        |w| {
            os_yaml(
                "fleet-os-1",
                &format!("http://127.0.0.1:{}/fleet-os-1.mender", w.port),
                None,
                "now",
            )
        },
        "",
    );
    let dev = &w.dev;
    let env_before = std::fs::read(dev.dir.join("boot/uboot.env")).unwrap();
    let (code, j) = dev.pull();
    assert_eq!(code, 0, "{j}");
    assert!(!j.contains("installing"), "{j}");
    assert_eq!(dev.os()["phase"], "idle");
    assert_eq!(dev.os()["current"], "fleet-os-1");
    assert_eq!(
        std::fs::read(dev.dir.join("boot/uboot.env")).unwrap(),
        env_before,
        "the boot environment is untouched"
    );
    assert!(!dev.dir.join("data/fleet-agent/os-image").exists());
    assert_eq!(dev.parts(), [2]);
    w.done();
}

/// A daily window in device-local time, `from`..`to` minutes from now.
fn window(dev: &AbDevice, from: i64, to: i64) -> String {
    let now: i64 = dev
        // %-H and %-M: no leading zero, which sh's arithmetic would read as octal.
        .sh("echo $(( $(date +%-H) * 60 + $(date +%-M) ))")
        .parse()
        .unwrap();
    let at = |m: i64| {
        let m = (now + m).rem_euclid(1440);
        format!("{:02}:{:02}", m / 60, m % 60)
    };
    format!("{}-{}", at(from), at(to))
}

#[test]
fn os_update_waits_for_the_maintenance_window() {
    let w = World::new("fa-os-window", |w| w.os("fleet-os-3", "never"), "");
    let dev = &w.dev;
    let closed = window(dev, 120, 180);
    w.declare(&w.os("fleet-os-3", &closed), "window later today");
    let (code, j) = dev.pull();
    assert_eq!(code, 0, "{j}");
    assert_eq!(dev.os()["phase"], "installed", "{}", dev.os());
    assert_eq!(dev.env("upgrade_available"), "1");
    let (code, j) = dev.pull();
    assert_eq!(code, 0, "{j}");
    assert_eq!(dev.parts(), [2], "no reboot outside the window");

    let open = window(dev, -5, 60);
    w.declare(&w.os("fleet-os-3", &open), "window now");
    let (part, _) = dev.pull_rebooting();
    assert_eq!(part, 3);
    let (code, j) = dev.pull();
    assert_eq!(code, 0, "{j}");
    assert_eq!(dev.artifact_name(), "fleet-os-3");
    w.done();
}

#[test]
fn os_update_with_the_3x_cli() {
    let w = World::new(
        "fa-os-cli3",
        |w| w.os("fleet-os-2", "now"),
        "[os_update]\nclient = \"mender\"\n",
    );
    let dev = &w.dev;
    let (part, _) = dev.pull_rebooting();
    assert_eq!(part, 3);
    let (code, j) = dev.pull();
    assert_eq!(code, 0, "{j}");
    assert_eq!(dev.sh("mender show-artifact"), "fleet-os-2");
    assert_eq!(dev.os()["current"], "fleet-os-2");
    assert_eq!(dev.env("upgrade_available"), "0");
    w.done();
}

#[test]
fn os_update_leaves_a_foreign_pending_update_alone() {
    let w = World::new("fa-os-foreign", |w| w.os("fleet-os-2", "now"), "");
    let dev = &w.dev;
    // Someone else installs fleet-os-3 and does not reboot.
    std::fs::copy(
        artifacts().dir.join("fleet-os-3.mender"),
        dev.dir.join("data/f3.mender"),
    )
    .unwrap();
    let run = dev.exec(&[
        "mender-update",
        "install",
        "--reboot-exit-code",
        "/data/f3.mender",
    ]);
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(dev.env("upgrade_available"), "1");
    let part = dev.env("mender_boot_part");
    let (code, j) = dev.pull();
    assert_eq!(code, 0, "{j}");
    assert!(
        j.contains("did not start") && j.contains("left alone"),
        "{j}"
    );
    assert_eq!(dev.os()["phase"], "idle");
    assert_eq!(dev.env("upgrade_available"), "1", "left alone");
    assert_eq!(dev.env("mender_boot_part"), part);
    assert_eq!(dev.parts(), [2]);
    w.done();
}

/// The real Mender 3.x client of Debian bookworm (mender-client 3.4, installed with apt
/// from Debian's mirror) on loop devices as RootfsPartA/B and the same file-backed
/// u-boot environment: the facts the double's 3.x form follows
/// (scripts/mender-double/real-client-probe.sh prints them).
#[test]
fn real_mender_3x_client_on_loop_device_partitions() {
    let started = Instant::now();
    let out = std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/mender-double/real-client-probe.sh"
    ))
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for fact in [
        "PROBE mender install --reboot-exit-code: exit 4",
        "PROBE the image was written to RootfsPartB (/dev/mmcblk0p3)",
        "PROBE boot environment after install: mender_boot_part=3 upgrade_available=1 bootcount=0",
        // 3.x does not refuse a second install while one is pending.
        "PROBE second mender install while one is pending: exit 4",
        "PROBE mender rollback: exit 0",
        "PROBE mender commit with nothing in progress: exit 2",
        "PROBE mender commit after a fall-back: exit 1",
        "PROBE mender commit again: exit 2",
        "PROBE mender show-artifact: fleet-os-1",
    ] {
        assert!(text.contains(fact), "missing {fact:?} in:\n{text}");
    }
    eprintln!(
        "[timing] real mender 3.4 probe: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    excerpt("real mender 3.4 probe", &text);
}

/// The whole A/B update through the real Mender 3.4 client (Debian's mender-client in
/// the images, `[os_update] client = "mender"`), slots as ext4 images on loop devices:
/// first an update that never commits (two boots: the bootloader falls back, the agent
/// reports it and marks the version failed), then `fleet-agent os retry` and the same
/// update committed.
#[test]
fn real_mender_3x_client_update_fall_back_then_commit() {
    let dir = real_artifact();
    let sha = sha256(&dir.join("fleet-os-2.mender"));
    let w = World::with(
        "fa-os-real",
        |w| {
            os_yaml(
                "fleet-os-2",
                &format!("http://127.0.0.1:{}/fleet-os-2.mender", w.port),
                Some(&sha),
                "now",
            )
        },
        "[os_update]\nclient = \"mender\"\n",
        dir,
        &["--client", "real"],
    );
    let dev = &w.dev;
    let (a, b) = (dev.part_a, dev.part_b);
    assert_eq!(
        dev.sh("mount | grep ' on / '"),
        format!("/dev/loop{a} on / type ext4 (rw,relatime)")
    );

    // Installed by the real client into slot B's loop device; the first boot of B is
    // never committed, the second boot falls back to A.
    let (part, journal1) = dev.pull_rebooting();
    assert_eq!(part, b, "{journal1}");
    assert_eq!(dev.sh("cat /etc/fleet-os-release"), "fleet-os-2");
    dev.reboot();
    assert_eq!(dev.wait_boot(3), a, "the bootloader fell back");
    let (code, journal2) = dev.pull();
    assert_eq!(code, 0, "{journal2}");
    assert!(journal2.contains("fell back"), "{journal2}");
    assert_eq!(dev.os()["failed"], serde_json::json!(["fleet-os-2"]));
    assert_eq!(
        dev.sh("mender --no-syslog show-artifact 2>/dev/null"),
        "fleet-os-1"
    );

    // An operator allows it again: installed, rebooted, committed by the real client.
    dev.sh("fleet-agent os retry");
    let (part, _) = dev.pull_rebooting();
    assert_eq!(part, b);
    let (code, journal3) = dev.pull();
    assert_eq!(code, 0, "{journal3}");
    assert!(journal3.contains("committed fleet-os-2"), "{journal3}");
    assert_eq!(
        dev.sh("mender --no-syslog show-artifact 2>/dev/null"),
        "fleet-os-2"
    );
    assert_eq!(dev.env("upgrade_available"), "0");
    assert_eq!(dev.env("mender_boot_part"), b.to_string());
    assert_eq!(dev.parts(), [a, b, a, b]);
    w.done();
    excerpt(
        "real client: journal of the fall-back run",
        &os_lines(&journal2),
    );
    excerpt(
        "real client: journal of the committing run",
        &os_lines(&journal3),
    );
}

/// The world's `os:` with an offline timeout (os.health.offline_timeout_seconds).
fn with_offline_timeout(os: String, seconds: u64) -> String {
    os.replace(
        "  health:\n",
        &format!("  health:\n    offline_timeout_seconds: {seconds}\n"),
    )
}

/// A poor link right after the swap: the fleet repository cannot be reached during the
/// first two runs on the new slot, well past the health timeout (6 s). The slot passes
/// its own checks, so it is unverified, not unhealthy: no rollback. The link comes
/// back: the next run commits (issue 13, item 7).
#[test]
fn os_update_unreachable_during_the_first_runs_on_the_new_slot_then_commits() {
    let w = World::new(
        "fa-os-offline",
        |w| w.os("fleet-os-2", "now"),
        POLL_BACKOFF_1S,
    );
    let dev = &w.dev;
    let (part, _) = dev.pull_rebooting();
    assert_eq!(part, 3);
    w.git.set_offline(true);
    for run in 1..=2 {
        // Offline (exit 3, which the unit counts as a success).
        let (_, journal) = dev.pull();
        assert!(
            journal.contains("converged to the last fetched commit")
                && journal.contains("unverified"),
            "run {run} on the new slot, offline: {journal}"
        );
        let os = dev.os();
        assert_eq!(os["phase"], "verifying", "{os}");
        std::thread::sleep(std::time::Duration::from_secs(4));
    }
    w.git.set_offline(false);
    let (code, journal) = dev.pull();
    assert_eq!(code, 0, "{journal}");
    assert!(journal.contains("committed fleet-os-2"), "{journal}");
    assert_eq!(dev.artifact_name(), "fleet-os-2");
    let os = dev.os();
    assert_eq!(os["phase"], "idle", "{os}");
    assert!(os["failed"].as_array().unwrap().is_empty(), "{os}");
    assert_eq!(dev.parts(), [2, 3]);
    w.done();
    excerpt("poor link: journal of the run that committed", &journal);
}

/// The link stays down past the offline timeout: the new slot is rolled back without
/// blame (not in `failed`), and the artifact is tried again after the backoff; with
/// the link back, the retry commits.
#[test]
fn os_update_unreachable_past_the_offline_timeout_rolls_back_and_retries_later() {
    let w = World::new(
        "fa-os-offline-bound",
        |w| {
            with_offline_timeout(w.os("fleet-os-2", "now"), 12)
                .replace("initial_seconds: 3", "initial_seconds: 20")
                .replace("max_seconds: 8", "max_seconds: 40")
        },
        POLL_BACKOFF_1S,
    );
    let dev = &w.dev;
    let (part, _) = dev.pull_rebooting();
    assert_eq!(part, 3);
    w.git.set_offline(true);
    let (_, journal) = dev.pull();
    assert!(
        journal.contains("converged to the last fetched commit") && journal.contains("unverified"),
        "{journal}"
    );
    // Until the offline timeout has passed since the first run on the new slot.
    let since = dev.os()["verify_since"].as_u64().unwrap();
    while super::ab::device_now(dev) < since + 13 {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let (part, journal) = dev.pull_rebooting();
    assert_eq!(part, 2, "rolled back to the old slot: {journal}");
    assert!(
        journal.contains("could not be reached") && journal.contains("tried again"),
        "{journal}"
    );
    w.git.set_offline(false);
    let (code, journal) = dev.pull();
    assert_eq!(code, 0, "{journal}");
    let os = dev.os();
    assert_eq!(os["phase"], "idle", "{os}");
    assert!(
        os["failed"].as_array().unwrap().is_empty(),
        "not blamed: {os}"
    );
    assert_eq!(os["backoff"]["artifact"], "fleet-os-2", "{os}");
    // After the backoff, the same artifact again, and this time it commits.
    let after = os["backoff"]["after"].as_u64().unwrap();
    while super::ab::device_now(dev) <= after {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let (part, journal) = dev.pull_rebooting();
    assert_eq!(part, 3, "{journal}");
    let (code, journal) = dev.pull();
    assert_eq!(code, 0, "{journal}");
    assert!(journal.contains("committed fleet-os-2"), "{journal}");
    assert_eq!(dev.artifact_name(), "fleet-os-2");
    assert_eq!(dev.parts(), [2, 3, 2, 3]);
    w.done();
    excerpt(
        "offline past the bound: state.json os_update at the end",
        &serde_json::to_string_pretty(&dev.os()).unwrap(),
    );
}
