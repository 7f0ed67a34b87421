//! A/B OS updates end to end: the real binary on a scratch root, a real fleet repository,
//! real Mender artifacts (mender-artifact) served over HTTP on 127.0.0.1, and the
//! mender-update double (scripts/mender-double) on a simulated A/B device whose u-boot
//! environment is a file read and written by the real libubootenv tools. A "boot" runs
//! the simulated bootloader (uboot-sim), gives the kernel a new boot id, and swaps the
//! agent's markers (rootfs-id, os-update-slot) for the ones of the slot booted (each
//! slot has its own /etc).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use crate::support::*;

const DEVICE: &str = "pi-7";

/// Path → HTTP status and body.
type Files = Arc<Mutex<HashMap<String, (u16, Vec<u8>)>>>;

/// Files served on 127.0.0.1 (path → status and body); records each request path.
struct StaticServer {
    port: u16,
    files: Files,
    requests: Arc<Mutex<Vec<String>>>,
}

impl StaticServer {
    fn start() -> StaticServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let files: Files = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let (f, r) = (files.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                }
                r.lock().unwrap().push(path.clone());
                let (status, body) = f
                    .lock()
                    .unwrap()
                    .get(&path)
                    .cloned()
                    .unwrap_or((404, b"not found\n".to_vec()));
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(&body);
            }
        });
        StaticServer {
            port,
            files,
            requests,
        }
    }

    fn serve(&self, path: &str, status: u16, body: Vec<u8>) {
        self.files
            .lock()
            .unwrap()
            .insert(path.to_string(), (status, body));
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn count(&self, path: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }
}

/// The simulated A/B device: slots p2 and p3, a u-boot environment, Mender's datastore
/// on "/data", the double configured for them, and the agent's --root.
struct Sim {
    t: tempfile::TempDir,
    device: Device,
    repo: FleetRepo,
    server: StaticServer,
    boots: u32,
}

fn double_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mender-double")
}

impl Sim {
    fn new(os_yaml: &str) -> Sim {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        for dir in [
            "slots/p2",
            "slots/p3",
            "data/mender",
            "boot",
            "bin",
            "art",
            "markers",
        ] {
            std::fs::create_dir_all(d.join(dir)).unwrap();
        }
        std::fs::write(
            d.join("boot/fw_env.config"),
            format!("{} 0x0000 0x4000\n", d.join("boot/uboot.env").display()),
        )
        .unwrap();
        std::fs::write(d.join("boot/uboot.env"), vec![0u8; 16384]).unwrap();
        std::fs::write(
            d.join("double.conf"),
            format!(
                "ROOTFS_PART_A={0}/slots/p2\nROOTFS_PART_B={0}/slots/p3\nROOT_PART_FILE={0}/boot/root\nFW_ENV_CONFIG={0}/boot/fw_env.config\nDATASTORE={0}/data/mender\nPAUSE_FILE={0}/pause\n",
                d.display()
            ),
        )
        .unwrap();
        std::fs::write(d.join("data/mender/device_type"), "device_type=pi4-sim\n").unwrap();
        // The double, except that a verb fails (exit 1) while d/fail-VERB exists.
        let client = d.join("bin/mender-update");
        std::fs::write(
            &client,
            format!(
                "#!/bin/sh\nif [ -e {0}/fail-\"$1\" ]; then echo \"injected $1 failure\" >&2; exit 1; fi\nexec {1} \"$@\"\n",
                d.display(),
                double_dir().join("mender-update").display()
            ),
        )
        .unwrap();
        // The reboot command fails while d/fail-reboot exists.
        let reboot = d.join("bin/reboot");
        std::fs::write(
            &reboot,
            format!(
                "#!/bin/sh\nif [ -e {0}/fail-reboot ]; then echo 'injected reboot failure' >&2; exit 1; fi\necho reboot >> {0}/reboots\n",
                d.display()
            ),
        )
        .unwrap();
        for f in [&client, &reboot] {
            std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        uboot(
            d,
            &[
                "init",
                &format!("{}/boot/fw_env.config", d.display()),
                "2",
                "3",
            ],
        );

        let server = StaticServer::start();
        server.serve("/health", 200, b"ok\n".to_vec());
        server.serve("/sick", 500, b"sick\n".to_vec());
        for (name, content) in [("fleet-os-2", "os 2\n"), ("fleet-os-3", "os 3\n")] {
            let art = artifact(d, name, content);
            server.serve(&format!("/{name}.mender"), 200, art);
        }

        let repo = FleetRepo::new(&[
            ("fleet.yml", &fleet_yml(&server, os_yaml)),
            (
                "roles/base/role.yml",
                "resources:\n  - file:\n      path: /etc/motd\n      content: \"fleet\\n\"\n",
            ),
        ]);
        let device = Device::new(
            &repo.url(),
            DEVICE,
            &format!(
                "device_type = \"pi4-sim\"\nstate_dir = \"/data/fleet-agent\"\n[os_update]\nclient = \"{0}/bin/mender-update\"\nreboot_command = [\"{0}/bin/reboot\"]\n",
                d.display()
            ),
        );
        // Under --root the agent reads the root's fw_env.config (as a device reads /etc's).
        std::fs::copy(
            d.join("boot/fw_env.config"),
            device.path("/etc/fw_env.config"),
        )
        .unwrap();
        let mut sim = Sim {
            t,
            device,
            repo,
            server,
            boots: 0,
        };
        sim.boot();
        sim
    }

    fn dir(&self) -> &Path {
        self.t.path()
    }

    /// Power on or reset: the bootloader picks a slot, the kernel mounts it, a new boot id.
    fn boot(&mut self) -> u32 {
        let d = self.dir().to_path_buf();
        let slot: u32 = uboot(
            &d,
            &["boot", &format!("{}/boot/fw_env.config", d.display())],
        )
        .trim()
        .parse()
        .unwrap();
        let root_file = d.join("boot/root");
        // Keep the markers of the slot left; bring the booted slot's (none if new).
        let previous = std::fs::read_to_string(&root_file)
            .ok()
            .map(|p| p.trim().rsplit('/').next().unwrap().to_string());
        for name in ["rootfs-id", "os-update-slot"] {
            let marker = self.device.path(&format!("/etc/fleet-agent/{name}"));
            if let Some(previous) = &previous {
                let kept = d.join("markers").join(previous);
                std::fs::create_dir_all(&kept).unwrap();
                if let Ok(id) = std::fs::read(&marker) {
                    std::fs::write(kept.join(name), id).unwrap();
                }
            }
            let _ = std::fs::remove_file(&marker);
            if let Ok(id) = std::fs::read(d.join(format!("markers/p{slot}/{name}"))) {
                std::fs::write(&marker, id).unwrap();
            }
        }
        std::fs::write(&root_file, format!("{}/slots/p{slot}\n", d.display())).unwrap();
        self.boots += 1;
        let boot_id = self.device.path("/proc/sys/kernel/random/boot_id");
        std::fs::create_dir_all(boot_id.parent().unwrap()).unwrap();
        std::fs::write(&boot_id, format!("boot-{}\n", self.boots)).unwrap();
        slot
    }

    fn run(&self, args: &[&str]) -> Run {
        let out = self
            .device
            .command(args)
            .env("MENDER_DOUBLE_CONF", self.dir().join("double.conf"))
            .env("TZ", "UTC")
            .output()
            .unwrap();
        to_run(out)
    }

    fn os_state(&self) -> serde_json::Value {
        let text =
            std::fs::read_to_string(self.device.path("/data/fleet-agent/state.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["os_update"].clone()
    }

    fn env(&self, name: &str) -> String {
        let out = Command::new("fw_printenv")
            .args([
                "-c",
                self.dir().join("boot/fw_env.config").to_str().unwrap(),
                "-n",
                name,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn reboots(&self) -> usize {
        std::fs::read_to_string(self.dir().join("reboots"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn show_artifact(&self) -> String {
        let out = Command::new(double_dir().join("mender-update"))
            .arg("show-artifact")
            .env("MENDER_DOUBLE_CONF", self.dir().join("double.conf"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// While `on`, the client verb (or `reboot`) fails with exit 1.
    fn fail(&self, verb: &str, on: bool) {
        let flag = self.dir().join(format!("fail-{verb}"));
        if on {
            std::fs::write(flag, "").unwrap();
        } else {
            let _ = std::fs::remove_file(flag);
        }
    }

    fn declare(&self, os_yaml: &str) {
        self.repo
            .commit(&[("fleet.yml", &fleet_yml(&self.server, os_yaml))], "os");
    }
}

fn fleet_yml(server: &StaticServer, os_yaml: &str) -> String {
    format!(
        "format: 1\nroles: [base]\n{}",
        os_yaml.replace("URL", &server.url(""))
    )
}

fn uboot(_d: &Path, args: &[&str]) -> String {
    let out = Command::new(double_dir().join("uboot-sim"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "uboot-sim {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A real rootfs-image artifact whose payload is a tar of a tiny root filesystem.
fn artifact(d: &Path, name: &str, os: &str) -> Vec<u8> {
    let img = d.join("art").join(name);
    std::fs::create_dir_all(img.join("etc")).unwrap();
    std::fs::write(img.join("os"), os).unwrap();
    let tar = d.join("art").join(format!("{name}.tar"));
    let out = d.join("art").join(format!("{name}.mender"));
    assert!(Command::new("tar")
        .arg("-C")
        .arg(&img)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let status = Command::new("mender-artifact")
        .args(["write", "rootfs-image", "-t", "pi4-sim", "-n", name, "-f"])
        .arg(&tar)
        .arg("-o")
        .arg(&out)
        .output()
        .expect("mender-artifact runs (scripts/install-deps.sh)");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    std::fs::read(out).unwrap()
}

const NOW_2: &str = "os:\n  images:\n    pi4-sim:\n      artifact: fleet-os-2\n      uri: URL/fleet-os-2.mender\n  reboot: now\n  health:\n    timeout_seconds: 2\n    urls: [\"URL/health\"]\n";

#[test]
fn os_declaration_errors_name_the_place_and_change_nothing() {
    let sim = Sim::new("");
    sim.declare("os:\n  images:\n    pi4-sim:\n      artifact: fleet-os-2\n      uri: URL/fleet-os-2.mender\n  reboot: \"25:00-04:00\"\n");
    // Everything but the agent's own state (on /data here).
    let snapshot = || {
        let mut s = sim.device.snapshot();
        s.retain(|k, _| !k.starts_with("/data"));
        s
    };
    let before = snapshot();
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("fleet.yml:8:11: os.reboot: expected now, never or a window \"HH:MM-HH:MM\""),
        "{run:?}"
    );
    assert_eq!(snapshot(), before);
    assert_eq!(sim.env("upgrade_available"), "0");
    assert_eq!(sim.server.count("/fleet-os-2.mender"), 0);
    // The fleet repository's CI sees the same error.
    let validate = sim.run(&["validate", sim.repo.work.to_str().unwrap()]);
    assert_eq!(validate.code, 1, "{validate:?}");
    assert!(
        validate.stderr.contains("fleet.yml:8:11: os.reboot"),
        "{validate:?}"
    );
    // An unknown key in agent.toml's [os_update] is a configuration error.
    let config = sim.device.read("/etc/fleet-agent/agent.toml");
    std::fs::write(
        &sim.device.config,
        config.replace("reboot_command", "reboot_cmd"),
    )
    .unwrap();
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 64, "{run:?}");
    assert!(run.stderr.contains("unknown field `reboot_cmd`"), "{run:?}");
}

#[test]
fn plan_shows_the_os_update_and_counts_it_as_a_change() {
    let sim = Sim::new(NOW_2);
    let run = sim.run(&["plan"]);
    assert_eq!(run.code, 2, "{run:?}");
    // No run recorded yet: the current artifact is not known to plan (it runs nothing).
    assert!(
        run.stdout
            .contains("OS: unknown → fleet-os-2 (pi4-sim), reboot: now"),
        "{run:?}"
    );
    let json = sim.run(&["plan", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["os"]["artifact"], "fleet-os-2");
    assert_eq!(v["os"]["pending"], true);
    assert_eq!(v["os"]["reboot"], "now");
    sim.declare(&NOW_2.replace("reboot: now", "reboot: 02:00-04:00"));
    let run = sim.run(&["plan"]);
    assert!(
        run.stdout
            .contains("OS: unknown → fleet-os-2 (pi4-sim), reboot: in window 02:00-04:00"),
        "{run:?}"
    );
    sim.declare(&NOW_2.replace("reboot: now", "reboot: never"));
    let run = sim.run(&["plan"]);
    assert!(
        run.stdout
            .contains("OS: unknown → fleet-os-2 (pi4-sim), reboot: never (operator)"),
        "{run:?}"
    );
    // Nothing was installed by planning.
    assert_eq!(sim.env("upgrade_available"), "0");
    assert_eq!(sim.server.count("/fleet-os-2.mender"), 0);
}

#[test]
fn an_update_installs_reboots_verifies_and_commits_then_nothing_more() {
    let mut sim = Sim::new(NOW_2);
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert_eq!(sim.reboots(), 1);
    let os = sim.os_state();
    assert_eq!(os["phase"], "rebooting", "{os}");
    assert_eq!(os["target"], "fleet-os-2");
    assert_eq!(sim.env("upgrade_available"), "1");
    assert_eq!(sim.env("mender_boot_part"), "3");
    // Pending: the client still reports the old artifact until commit.
    assert_eq!(sim.show_artifact(), "unknown");
    // The downloaded image is kept on /data until the update ends.
    assert!(sim.device.path("/data/fleet-agent/os-image").is_file());
    assert!(
        run.stderr.contains("OS update: rebooting into fleet-os-2"),
        "{run:?}"
    );

    assert_eq!(sim.boot(), 3);
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("OS update: committed fleet-os-2"),
        "{run:?}"
    );
    let os = sim.os_state();
    assert_eq!(os["phase"], "idle", "{os}");
    assert_eq!(os["current"], "fleet-os-2");
    assert_eq!(os["failed"], serde_json::json!([]));
    assert_eq!(sim.env("upgrade_available"), "0");
    assert_eq!(sim.show_artifact(), "fleet-os-2");
    assert_eq!(
        std::fs::read_to_string(sim.dir().join("slots/p3/os")).unwrap(),
        "os 2\n"
    );
    assert!(!sim.device.path("/data/fleet-agent/os-image").exists());
    // The roles were converged on the new slot (its /etc had none of it).
    assert_eq!(sim.device.read("/etc/motd"), "fleet\n");

    // Already current: nothing to do, no download, no reboot.
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(sim.reboots(), 1);
    assert_eq!(sim.server.count("/fleet-os-2.mender"), 1);
    // And within this boot the no-op poll does not even ask the client (it would fail).
    std::fs::write(sim.dir().join("fail-show-artifact"), "").unwrap();
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    // After a reboot it asks again.
    assert_eq!(sim.boot(), 3);
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("injected show-artifact failure"),
        "{run:?}"
    );
    std::fs::remove_file(sim.dir().join("fail-show-artifact")).unwrap();
    assert_eq!(sim.run(&["pull"]).code, 0);
    let plan = sim.run(&["plan"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    assert!(
        plan.stdout.contains("OS: fleet-os-2 (pi4-sim), up to date"),
        "{plan:?}"
    );
    let status = sim.run(&["os", "status"]);
    assert!(status.stdout.contains("phase:    idle"), "{status:?}");
    assert!(status.stdout.contains("current:  fleet-os-2"), "{status:?}");
    let json = sim.run(&["os", "status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["current"], "fleet-os-2");
    assert_eq!(v["phase"], "idle");
}

#[test]
fn a_fall_back_marks_the_version_failed_and_it_is_not_retried_until_os_retry() {
    let mut sim = Sim::new(NOW_2);
    assert_eq!(sim.run(&["pull"]).code, 5);
    // The new slot never gets to run the agent: a reset, then the boot limit is passed
    // and the bootloader returns to the old slot (same rootfs id, new boot id).
    assert_eq!(sim.boot(), 3);
    assert_eq!(sim.boot(), 2);
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    // Said once, as a warning.
    assert_eq!(run.stderr.matches("fell back").count(), 1, "{run:?}");
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains("warning") && l.contains("fell back")),
        "{run:?}"
    );
    let os = sim.os_state();
    assert_eq!(os["phase"], "idle", "{os}");
    assert_eq!(os["failed"], serde_json::json!(["fleet-os-2"]));
    assert_eq!(sim.show_artifact(), "unknown");

    // Not retried.
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(sim.server.count("/fleet-os-2.mender"), 1);
    assert_eq!(sim.reboots(), 1);
    let plan = sim.run(&["plan"]);
    assert!(
        plan.stdout
            .contains("fleet-os-2 failed before, not retried"),
        "{plan:?}"
    );
    assert_eq!(plan.code, 0, "{plan:?}");

    // A newer artifact is installed.
    sim.declare(&NOW_2.replace("fleet-os-2", "fleet-os-3"));
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert_eq!(sim.server.count("/fleet-os-3.mender"), 1);
    assert_eq!(sim.boot(), 3);
    assert_eq!(sim.run(&["pull"]).code, 0);
    assert_eq!(sim.show_artifact(), "fleet-os-3");

    // Back to fleet-os-2: still failed, until `os retry`.
    sim.declare(NOW_2);
    assert_eq!(sim.run(&["pull"]).code, 0);
    assert_eq!(sim.server.count("/fleet-os-2.mender"), 1);
    let retry = sim.run(&["os", "retry"]);
    assert_eq!(retry.code, 0, "{retry:?}");
    assert!(
        retry.stdout.contains("allowed again: fleet-os-2"),
        "{retry:?}"
    );
    assert_eq!(sim.os_state()["failed"], serde_json::json!([]));
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert_eq!(sim.server.count("/fleet-os-2.mender"), 2);
}

#[test]
fn failed_health_checks_roll_back_to_the_old_slot() {
    let mut sim = Sim::new(&NOW_2.replace("URL/health", "URL/sick"));
    assert_eq!(sim.run(&["pull"]).code, 5);
    assert_eq!(sim.boot(), 3);
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(
        run.stderr
            .contains("rolling back fleet-os-2: health checks failed"),
        "{run:?}"
    );
    assert!(run.stderr.contains("/sick answered 500"), "{run:?}");
    let os = sim.os_state();
    assert_eq!(os["phase"], "rolling-back", "{os}");
    assert_eq!(os["failed"], serde_json::json!(["fleet-os-2"]));
    assert_eq!(sim.reboots(), 2);
    assert_eq!(sim.env("mender_boot_part"), "2");

    assert_eq!(sim.boot(), 2);
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    let os = sim.os_state();
    assert_eq!(os["phase"], "idle", "{os}");
    assert!(os["message"]
        .as_str()
        .unwrap()
        .contains("rolled back from fleet-os-2"));
    assert_eq!(sim.show_artifact(), "unknown");
    assert_eq!(sim.env("upgrade_available"), "0");
    // And it is not retried.
    assert_eq!(sim.run(&["pull"]).code, 0);
    assert_eq!(sim.reboots(), 2);
}

#[test]
fn failed_downloads_back_off_and_os_retry_clears_the_backoff() {
    let sim = Sim::new(&NOW_2.replace("fleet-os-2.mender", "missing.mender"));
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("HTTP 404"), "{run:?}");
    let os = sim.os_state();
    assert_eq!(os["phase"], "idle", "{os}");
    assert_eq!(os["backoff"]["attempts"], 1);
    let after = os["backoff"]["after"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!((now + 590..=now + 600).contains(&after), "{after} vs {now}");
    // During the backoff: no new attempt.
    assert_eq!(sim.run(&["pull"]).code, 0);
    assert_eq!(sim.server.count("/missing.mender"), 1);
    let status = sim.run(&["os", "status"]);
    assert!(
        status.stdout.contains("retry:    fleet-os-2 after"),
        "{status:?}"
    );
    let retry = sim.run(&["os", "retry"]);
    assert!(
        retry.stdout.contains("backoff of fleet-os-2 cleared"),
        "{retry:?}"
    );
    assert_eq!(sim.run(&["pull"]).code, 1);
    assert_eq!(sim.server.count("/missing.mender"), 2);

    // A wrong sha256 is a failed download too; the second failure doubles the delay.
    sim.declare(&NOW_2.replace(
        "uri: URL/fleet-os-2.mender",
        "uri: URL/fleet-os-2.mender\n      sha256: \"0000000000000000000000000000000000000000000000000000000000000000\"",
    ));
    std::fs::write(sim.dir().join("unused"), "").unwrap();
    let run = sim.run(&["os", "retry"]);
    assert_eq!(run.code, 0);
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("sha256 is "), "{run:?}");
    assert_eq!(sim.env("upgrade_available"), "0");
    assert!(!sim.device.path("/data/fleet-agent/os-image").exists());
}

#[test]
fn a_closed_reboot_window_waits_and_an_open_one_reboots() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let at = |offset_minutes: i64| {
        let m = ((now / 60) as i64 + offset_minutes).rem_euclid(1440);
        format!("{:02}:{:02}", m / 60, m % 60)
    };
    let closed = format!("\"{}-{}\"", at(120), at(180));
    let open = format!("\"{}-{}\"", at(-60), at(60));
    let sim = Sim::new(&NOW_2.replace("reboot: now", &format!("reboot: {closed}")));
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(sim.os_state()["phase"], "installed");
    assert_eq!(sim.reboots(), 0);
    // Again: still waiting, nothing installed twice.
    assert_eq!(sim.run(&["pull"]).code, 0);
    assert_eq!(sim.server.count("/fleet-os-2.mender"), 1);
    sim.declare(&NOW_2.replace("reboot: now", &format!("reboot: {open}")));
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert_eq!(sim.reboots(), 1);
    assert_eq!(sim.server.count("/fleet-os-2.mender"), 1);
}

#[test]
fn reboot_never_waits_for_the_operator_then_verifies() {
    let mut sim = Sim::new(&NOW_2.replace("reboot: now", "reboot: never"));
    assert_eq!(sim.run(&["pull"]).code, 0);
    assert_eq!(sim.os_state()["phase"], "installed");
    assert_eq!(sim.reboots(), 0);
    // The operator reboots.
    assert_eq!(sim.boot(), 3);
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(sim.os_state()["current"], "fleet-os-2");
    assert_eq!(sim.show_artifact(), "fleet-os-2");
}

#[test]
fn a_power_cut_during_install_is_rolled_back_and_the_install_retried() {
    use std::os::unix::process::CommandExt;
    let mut sim = Sim::new(NOW_2);
    // The double stops once it has recorded the update and before the boot variables.
    let pause = sim.dir().join("pause");
    std::fs::write(&pause, "ArtifactInstall").unwrap();
    let mut child = sim
        .device
        .command(&["pull"])
        .env("MENDER_DOUBLE_CONF", sim.dir().join("double.conf"))
        .process_group(0)
        .spawn()
        .unwrap();
    let reached = sim.dir().join("pause.reached");
    for _ in 0..600 {
        if reached.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        reached.exists(),
        "the install did not reach ArtifactInstall"
    );
    // Power cut: the agent and the client die at once.
    let pgid = child.id();
    assert!(Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status()
        .unwrap()
        .success());
    let _ = child.wait();
    std::fs::remove_file(&pause).unwrap();
    assert_eq!(sim.os_state()["phase"], "installing");

    assert_eq!(sim.boot(), 2);
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(
        run.stderr
            .contains("cancelled fleet-os-2: an install was interrupted"),
        "{run:?}"
    );
    assert_eq!(sim.os_state()["phase"], "rebooting");
    assert_eq!(sim.server.count("/fleet-os-2.mender"), 2);
    assert_eq!(sim.boot(), 3);
    assert_eq!(sim.run(&["pull"]).code, 0);
    assert_eq!(sim.show_artifact(), "fleet-os-2");
}

#[test]
fn a_branch_that_breaks_while_verifying_rolls_back_after_the_health_timeout() {
    let mut sim = Sim::new(NOW_2);
    assert_eq!(sim.run(&["pull"]).code, 5);
    // Before the device comes back, someone pushes a branch that does not load.
    let broken = format!("{}roles: [no-such-role]\n", fleet_yml(&sim.server, NOW_2))
        .replace("roles: [base]\n", "");
    sim.repo.commit(&[("fleet.yml", &broken)], "broken");
    assert_eq!(sim.boot(), 3);
    // The new slot cannot converge: unhealthy, but within its 2 s it waits.
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("no-such-role"), "{run:?}");
    assert_eq!(sim.os_state()["phase"], "verifying", "{}", sim.os_state());
    assert_eq!(sim.reboots(), 1);
    // Past the health timeout recorded at install: rollback and reboot.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 5, "{run:?}");
    let os = sim.os_state();
    assert_eq!(os["phase"], "rolling-back", "{os}");
    assert_eq!(os["failed"], serde_json::json!(["fleet-os-2"]));
    assert_eq!(sim.reboots(), 2);
    assert_eq!(sim.env("mender_boot_part"), "2");
    // Back on the old slot, still with the broken branch: the rollback completes.
    assert_eq!(sim.boot(), 2);
    assert_eq!(sim.run(&["pull"]).code, 1);
    assert_eq!(sim.os_state()["phase"], "idle", "{}", sim.os_state());
    assert_eq!(sim.env("upgrade_available"), "0");
    assert_eq!(sim.reboots(), 2);
}

#[test]
fn a_power_cut_before_rollback_still_clears_the_clients_pending_update() {
    let mut sim = Sim::new(&NOW_2.replace("URL/health", "URL/sick"));
    assert_eq!(sim.run(&["pull"]).code, 5);
    assert_eq!(sim.boot(), 3);
    // rolling-back is saved, then the power is cut before `rollback` (simulated by a
    // rollback that fails, before any reboot is asked for).
    sim.fail("rollback", true);
    let run = sim.run(&["pull"]);
    assert_eq!(sim.os_state()["phase"], "rolling-back", "{run:?}");
    assert_eq!(sim.env("upgrade_available"), "1");
    sim.fail("rollback", false);
    // The bootloader falls back on its own (the boot limit was reached on slot 3).
    assert_eq!(sim.boot(), 2);
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    let os = sim.os_state();
    assert_eq!(os["phase"], "idle", "{os}");
    assert_eq!(os["failed"], serde_json::json!(["fleet-os-2"]));
    // The client no longer has a pending update: a newer artifact installs.
    sim.declare(&NOW_2.replace("fleet-os-2", "fleet-os-3"));
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert_eq!(sim.os_state()["phase"], "rebooting");
    assert_eq!(sim.boot(), 3);
    assert_eq!(sim.run(&["pull"]).code, 0);
    assert_eq!(sim.show_artifact(), "fleet-os-3");
}

#[test]
fn a_failed_install_keeps_the_state_of_the_slot_and_prunes_later() {
    let sim = Sim::new(&NOW_2.replace("fleet-os-2.mender", "missing.mender"));
    let rootfs_id = || sim.device.read("/etc/fleet-agent/rootfs-id");
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(sim.device.read("/etc/motd"), "fleet\n");
    let id = rootfs_id();
    // The fall-back marker was written on this slot, apart from rootfs-id.
    assert!(sim.device.path("/etc/fleet-agent/os-update-slot").is_file());
    assert_eq!(sim.os_state()["backoff"]["attempts"], 1);
    // The role no longer declares /etc/motd; the next run (same slot, backing off)
    // still knows the agent created it and prunes it.
    sim.repo.commit(
        &[(
            "roles/base/role.yml",
            "resources:\n  - file:\n      path: /etc/issue.fleet\n      content: \"x\\n\"\n",
        )],
        "drop motd",
    );
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        !run.stderr.contains("not the one of the last run"),
        "{run:?}"
    );
    assert!(!sim.device.path("/etc/motd").exists(), "{run:?}");
    assert_eq!(sim.device.read("/etc/issue.fleet"), "x\n");
    assert_eq!(rootfs_id(), id);
}

#[test]
fn show_artifact_failing_on_the_new_slot_counts_against_its_health() {
    let mut sim = Sim::new(NOW_2);
    assert_eq!(sim.run(&["pull"]).code, 5);
    assert_eq!(sim.boot(), 3);
    sim.fail("show-artifact", true);
    // Every other check passes, but the client cannot say what runs: past the health
    // timeout, the update is rolled back instead of staying in rebooting.
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(
        run.stderr
            .contains("the Mender client cannot say what runs"),
        "{run:?}"
    );
    let os = sim.os_state();
    assert_eq!(os["phase"], "rolling-back", "{os}");
    assert_eq!(os["failed"], serde_json::json!(["fleet-os-2"]));
    assert_eq!(sim.reboots(), 2);
    assert_eq!(sim.env("mender_boot_part"), "2");
    assert_eq!(sim.boot(), 2);
    assert_eq!(sim.run(&["pull"]).code, 0);
    assert_eq!(sim.os_state()["phase"], "idle");
    // Idle, nothing under way: a failing client is an error and nothing starts.
    sim.declare(&NOW_2.replace("fleet-os-2", "fleet-os-3"));
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("injected show-artifact failure"),
        "{run:?}"
    );
    assert_eq!(sim.server.count("/fleet-os-3.mender"), 0);
}

#[test]
fn a_failing_rollback_still_reboots_to_the_old_slot() {
    let mut sim = Sim::new(&NOW_2.replace("URL/health", "URL/sick"));
    assert_eq!(sim.run(&["pull"]).code, 5);
    assert_eq!(sim.boot(), 3);
    sim.fail("rollback", true);
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.stderr.contains("rebooting anyway"), "{run:?}");
    assert_eq!(sim.os_state()["phase"], "rolling-back");
    assert_eq!(sim.reboots(), 2);
    // The bootloader falls back by itself (the new slot was never committed).
    sim.fail("rollback", false);
    assert_eq!(sim.boot(), 2);
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(sim.os_state()["phase"], "idle");
    assert_eq!(sim.env("upgrade_available"), "0");
    assert_eq!(sim.show_artifact(), "unknown");
}

#[test]
fn a_cancel_whose_rollback_fails_goes_idle_with_a_backoff() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let m = ((now / 60) as i64 + 120).rem_euclid(1440);
    let closed = format!(
        "\"{:02}:{:02}-{:02}:{:02}\"",
        m / 60,
        m % 60,
        (m / 60 + 1) % 24,
        m % 60
    );
    let waiting = NOW_2.replace("reboot: now", &format!("reboot: {closed}"));
    let sim = Sim::new(&waiting);
    assert_eq!(sim.run(&["pull"]).code, 0);
    assert_eq!(sim.os_state()["phase"], "installed");
    // The branch moves on; the cancel's rollback keeps failing.
    sim.declare(&waiting.replace("fleet-os-2", "fleet-os-3"));
    sim.fail("rollback", true);
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("injected rollback failure"), "{run:?}");
    let os = sim.os_state();
    assert_eq!(os["phase"], "idle", "{os}");
    assert_eq!(os["target"], serde_json::Value::Null, "{os}");
    assert_eq!(os["backoff"]["artifact"], "fleet-os-2", "{os}");
    assert_eq!(os["backoff"]["attempts"], 1, "{os}");
    assert!(
        os["message"].as_str().unwrap().contains("rollback failed"),
        "{os}"
    );
    assert!(!sim.device.path("/data/fleet-agent/os-image").exists());
}

#[test]
fn a_branch_that_breaks_before_an_operator_reboot_still_verifies_the_new_slot() {
    let mut sim = Sim::new(&NOW_2.replace("reboot: now", "reboot: never"));
    assert_eq!(sim.run(&["pull"]).code, 0);
    assert_eq!(sim.os_state()["phase"], "installed");
    let broken = format!(
        "{}roles: [no-such-role]\n",
        fleet_yml(&sim.server, &NOW_2.replace("reboot: now", "reboot: never"))
    )
    .replace("roles: [base]\n", "");
    sim.repo.commit(&[("fleet.yml", &broken)], "broken");
    // Same boot: the broken branch does not cancel the good install.
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(sim.os_state()["phase"], "installed", "{}", sim.os_state());
    assert_eq!(sim.env("upgrade_available"), "1");
    // The operator reboots into the new slot: it is verifying, and unhealthy since the
    // branch cannot converge; past the health timeout it rolls back.
    assert_eq!(sim.boot(), 3);
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(sim.os_state()["phase"], "verifying", "{}", sim.os_state());
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 5, "{run:?}");
    let os = sim.os_state();
    assert_eq!(os["phase"], "rolling-back", "{os}");
    assert_eq!(sim.reboots(), 1);
    assert_eq!(sim.env("mender_boot_part"), "2");
}

#[test]
fn a_failing_os_step_after_a_branch_error_shows_both_errors() {
    let mut sim = Sim::new(NOW_2);
    assert_eq!(sim.run(&["pull"]).code, 5);
    let broken = format!("{}roles: [no-such-role]\n", fleet_yml(&sim.server, NOW_2))
        .replace("roles: [base]\n", "");
    sim.repo.commit(&[("fleet.yml", &broken)], "broken");
    assert_eq!(sim.boot(), 3);
    assert_eq!(sim.run(&["pull"]).code, 1);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    // Past the timeout the rollback's reboot fails: the run says why the branch did
    // not load, and why the reboot failed.
    sim.fail("reboot", true);
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("no-such-role"), "{run:?}");
    assert!(run.stderr.contains("injected reboot failure"), "{run:?}");
    assert_eq!(sim.os_state()["phase"], "rolling-back");
    // The reboot works again: the interrupted rollback goes on.
    sim.fail("reboot", false);
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert_eq!(sim.reboots(), 2);
}

/// The fleet repository out of reach during the first runs on the new slot (issue 13,
/// item 7): the slot passes its checks, so it is unverified, not unhealthy, also past
/// the health timeout; once the repository is back, the update commits.
#[test]
fn an_unreachable_fleet_repository_leaves_the_new_slot_unverified_until_it_is_back() {
    let mut sim = Sim::new(NOW_2);
    assert_eq!(sim.run(&["pull"]).code, 5);
    assert_eq!(sim.boot(), 3);
    let off = sim.repo.server.with_extension("off");
    std::fs::rename(&sim.repo.server, &off).unwrap();
    for _ in 0..2 {
        let run = sim.run(&["pull"]);
        assert_eq!(run.code, 3, "{run:?}");
        assert!(run.stderr.contains("unverified"), "{run:?}");
        assert_eq!(sim.os_state()["phase"], "verifying");
        // Past the health timeout (2 s).
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    std::fs::rename(&off, &sim.repo.server).unwrap();
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("OS update: committed fleet-os-2"),
        "{run:?}"
    );
    assert_eq!(sim.os_state()["failed"], serde_json::json!([]));
    assert_eq!(sim.reboots(), 1);
}

/// Out of reach past the offline timeout: rolled back without blame, and the same
/// artifact is installed again after the backoff.
#[test]
fn unreachable_past_the_offline_timeout_rolls_back_and_retries_after_the_backoff() {
    let os = NOW_2.replace(
        "  health:\n",
        "  retry: {initial_seconds: 5, max_seconds: 10}\n  health:\n    offline_timeout_seconds: 3\n",
    );
    let mut sim = Sim::new(&os);
    assert_eq!(sim.run(&["pull"]).code, 5);
    assert_eq!(sim.boot(), 3);
    let off = sim.repo.server.with_extension("off");
    std::fs::rename(&sim.repo.server, &off).unwrap();
    assert_eq!(sim.run(&["pull"]).code, 3);
    std::thread::sleep(std::time::Duration::from_secs(4));
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(
        run.stderr
            .contains("could not be reached from the new root filesystem")
            && run.stderr.contains("it will be tried again in 5s"),
        "{run:?}"
    );
    let state = sim.os_state();
    assert_eq!(state["failed"], serde_json::json!([]), "{state}");
    assert_eq!(sim.boot(), 2);
    std::fs::rename(&off, &sim.repo.server).unwrap();
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("it will be tried again after"),
        "{run:?}"
    );
    assert_eq!(sim.reboots(), 2, "not yet: the backoff holds it");
    std::thread::sleep(std::time::Duration::from_secs(5));
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 5, "installed again: {run:?}");
    assert_eq!(sim.boot(), 3);
    let run = sim.run(&["pull"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("OS update: committed fleet-os-2"),
        "{run:?}"
    );
}
