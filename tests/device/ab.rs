//! A simulated Mender A/B device for the OS-update scenarios (scripts/ab-device.sh):
//! two root-filesystem slots, a persistent /data, a file-backed u-boot environment and
//! a bootloader loop that boots the selected slot with systemd-nspawn. The agent runs
//! as on a device: `systemctl start fleet-agent.service` (the packaged oneshot unit),
//! logging to the slot's journal; the Mender client is the double
//! (scripts/mender-double), installed in every image.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::harness::{instance_name, invocation_match, BIN};
use crate::support::{to_run, Run};

pub const AB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ab-device.sh");

fn ab(args: &[&str]) -> Run {
    to_run(
        Command::new(AB)
            .args(args)
            .output()
            .expect("ab-device.sh runs"),
    )
}

/// The OS artifacts of the scenarios, built once per test process.
pub struct Artifacts {
    pub dir: PathBuf,
    /// Marker file the health checks look for (`test -e /etc/fleet-os-healthy`).
    pub healthy: PathBuf,
}

impl Artifacts {
    pub fn sha256(&self, file: &str) -> String {
        sha256(&self.dir.join(file))
    }
}

/// The sha256 of a file, as `sha256sum` prints it.
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// fleet-os-2 and fleet-os-3 (healthy), fleet-os-4 (no health marker: its health
/// checks fail), fleet-os-9 (for another device type), garbage.mender (not an artifact).
pub fn artifacts() -> &'static Artifacts {
    static A: OnceLock<Artifacts> = OnceLock::new();
    A.get_or_init(|| {
        // A static is never dropped: remove what earlier test processes left (about
        // 1 GB each), then build this process's set.
        if let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if let Some(pid) = name.strip_prefix("fleet-os-artifacts-") {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let dir = std::env::temp_dir().join(format!("fleet-os-artifacts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let healthy = dir.join("healthy");
        std::fs::write(&healthy, "ok\n").unwrap();
        let add = format!("{}:/etc/fleet-os-healthy", healthy.display());
        for (name, device_type, healthy) in [
            ("fleet-os-2", "pi4-sim", true),
            ("fleet-os-3", "pi4-sim", true),
            ("fleet-os-4", "pi4-sim", false),
            ("fleet-os-9", "pi2-sim", true),
        ] {
            let out = dir.join(format!("{name}.mender"));
            let mut args = vec![
                "artifact",
                out.to_str().unwrap(),
                "--name",
                name,
                "--device-type",
                device_type,
                "--agent",
                BIN,
            ];
            if healthy {
                args.extend(["--add", add.as_str()]);
            }
            let run = ab(&args);
            assert_eq!(run.code, 0, "artifact {name}: {run:?}");
        }
        std::fs::write(
            dir.join("garbage.mender"),
            "this is not a Mender artifact\n",
        )
        .unwrap();
        Artifacts { dir, healthy }
    })
}

/// The real-client (`--client real`) artifact: fleet-os-2 as an ext4 image with Debian's
/// mender-client 3.4, built once per test process.
pub fn real_artifact() -> &'static Path {
    static A: OnceLock<PathBuf> = OnceLock::new();
    A.get_or_init(|| {
        let arts = artifacts();
        let dir = arts.dir.join("real");
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("fleet-os-2.mender");
        let add = format!("{}:/etc/fleet-os-healthy", arts.healthy.display());
        let run = ab(&[
            "artifact",
            out.to_str().unwrap(),
            "--client",
            "real",
            "--name",
            "fleet-os-2",
            "--agent",
            BIN,
            "--add",
            &add,
        ]);
        assert_eq!(run.code, 0, "real artifact: {run:?}");
        dir
    })
}

pub struct AbDevice {
    pub name: String,
    pub dir: PathBuf,
    /// The partition numbers of slots A and B (2 and 3; the loop device numbers with
    /// `--client real`).
    pub part_a: u32,
    pub part_b: u32,
}

impl AbDevice {
    /// Creates and boots a device running fleet-os-1 (healthy) with this agent.toml.
    /// `extra`: more ab-device.sh options (`--client real`).
    pub fn create(name: &str, agent_toml: &str, extra: &[&str]) -> AbDevice {
        let instance = instance_name(name);
        let name = instance.as_str();
        let arts = artifacts();
        let toml = arts.dir.join(format!("agent-{name}.toml"));
        std::fs::write(&toml, agent_toml).unwrap();
        let add = format!("{}:/etc/fleet-os-healthy", arts.healthy.display());
        let pid = std::process::id().to_string();
        let mut args = vec![
            "create",
            name,
            "--agent",
            BIN,
            "--agent-toml",
            toml.to_str().unwrap(),
            "--add",
            &add,
            "--watch-pid",
            &pid,
        ];
        args.extend_from_slice(extra);
        let run = ab(&args);
        assert_eq!(run.code, 0, "A/B device {name} did not boot: {run:?}");
        let dir = run
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("DIR="))
            .map(PathBuf::from)
            .expect("ab-device.sh prints DIR=");
        let part = |key: &str| -> u32 {
            run.stdout
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("ab-device.sh prints {key}"))
        };
        AbDevice {
            name: name.to_string(),
            dir,
            part_a: part("PART_A="),
            part_b: part("PART_B="),
        }
    }

    pub fn exec(&self, argv: &[&str]) -> Run {
        let mut args = vec!["exec", self.name.as_str(), "--"];
        args.extend_from_slice(argv);
        ab(&args)
    }

    /// Runs a shell command that must succeed; its trimmed stdout.
    pub fn sh(&self, script: &str) -> String {
        let out = self.exec(&["sh", "-c", script]);
        assert_eq!(out.code, 0, "`{script}` on {}: {out:?}", self.name);
        out.stdout.trim().to_string()
    }

    /// The partition of every boot so far, in order (2 = slot A, 3 = slot B).
    pub fn parts(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.join("boots.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("exit"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect()
    }

    /// Waits for boot number `n`; the partition it booted.
    pub fn wait_boot(&self, n: usize) -> u32 {
        let run = ab(&["wait-boot", &self.name, "--boot", &n.to_string()]);
        assert_eq!(run.code, 0, "{} boot {n}: {run:?}", self.name);
        run.stdout
            .lines()
            .find_map(|l| l.strip_prefix("PART="))
            .and_then(|p| p.parse().ok())
            .expect("PART=")
    }

    /// One variable of the u-boot environment, read on the host.
    pub fn env(&self, var: &str) -> String {
        let run = ab(&["env", &self.name]);
        assert_eq!(run.code, 0, "{run:?}");
        run.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{var}=")))
            .unwrap_or_default()
            .to_string()
    }

    pub fn reboot(&self) {
        let run = ab(&["reboot", &self.name]);
        assert_eq!(run.code, 0, "{run:?}");
    }

    pub fn powercut(&self) {
        let run = ab(&["powercut", &self.name]);
        assert_eq!(run.code, 0, "{run:?}");
    }

    /// The agent's state file, on the data partition (read from the host).
    pub fn state(&self) -> serde_json::Value {
        let p = self.dir.join("data/fleet-agent/state.json");
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        serde_json::from_str(&text).unwrap()
    }

    pub fn os(&self) -> serde_json::Value {
        self.state()["os_update"].clone()
    }

    pub fn artifact_name(&self) -> String {
        self.sh("mender-update show-artifact")
    }

    /// `systemctl start fleet-agent.service`. On this host's hybrid cgroups, systemd in
    /// the device sometimes cannot set up the unit's cgroup right after the previous run
    /// (exit status 219/CGROUP, the agent never ran): start it again, at most twice.
    fn start_run(&self) -> Run {
        let mut started = None;
        for _ in 0..3 {
            let boots = self.parts().len();
            let start = self.exec(&["systemctl", "start", "fleet-agent.service"]);
            let start = started.insert(start);
            if self.parts().len() != boots {
                break;
            }
            let st = self.exec(&[
                "systemctl",
                "show",
                "-P",
                "ExecMainStatus",
                "fleet-agent.service",
            ]);
            if st.code != 0 || st.stdout.trim() != "219" {
                break;
            }
            eprintln!(
                "{}: fleet-agent.service did not get its cgroup (219/CGROUP); starting it again ({start:?})",
                self.name
            );
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        started.expect("started at least once")
    }

    /// One agent run that must not reboot: the exit status of fleet-agent.service's
    /// run and its journal lines.
    pub fn pull(&self) -> (i32, String) {
        let boots = self.parts().len();
        let slot = *self.parts().last().unwrap();
        let started = self.start_run();
        let status = self.exec(&[
            "systemctl",
            "show",
            "-P",
            "ExecMainStatus",
            "fleet-agent.service",
        ]);
        let code: i32 = status.stdout.trim().parse().unwrap_or(-1);
        if status.code != 0 || code == 5 || self.parts().len() != boots {
            // The device is going down: the run asked for a reboot.
            self.wait_boot(boots + 1);
            panic!(
                "{}: the run rebooted the device; its journal:\n{}",
                self.name,
                self.last_run_journal(slot)
            );
        }
        // The invocation from systemd's own lines about the unit (the unit's
        // InvocationID property is gone once the oneshot run has ended).
        // Under load journald can be slow to answer `--sync` (which then fails): read the
        // journal anyway, and again for a while until systemd's lines are there (up to
        // 60 s: 20 s was once not enough right after a reboot, with two suites running).
        let mut invocation = None;
        for _ in 0..120 {
            let units =
                self.sh("journalctl --sync; journalctl -q -o json UNIT=fleet-agent.service");
            invocation = last_invocation(&units);
            if invocation.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        let invocation = invocation.unwrap_or_else(|| {
            let seen = |cmd: &str| {
                let r = self.exec(&["sh", "-c", cmd]);
                format!("$ {cmd} (exit {})\n{}{}", r.code, r.stdout, r.stderr)
            };
            panic!(
                "{}: no run of fleet-agent.service in the journal after 60 s\n\
                 `systemctl start fleet-agent.service`: {started:?}\n\
                 ExecMainStatus: {status:?}\nboots: {:?}\nloop.log: {}\n{}\n{}\n{}",
                self.name,
                self.parts(),
                std::fs::read_to_string(self.dir.join("loop.log")).unwrap_or_default(),
                seen("systemctl status --no-pager -l fleet-agent.service"),
                seen("ls -la /var/log/journal /run/log/journal; journalctl --disk-usage; journalctl --header | head -20"),
                seen("journalctl -b -q --no-pager -o short-monotonic -n 60"),
            )
        });
        let journal = self.sh(&format!(
            "journalctl --sync; journalctl -q -o short-monotonic {}",
            invocation_match(&invocation, "")
        ));
        (code, journal)
    }

    /// One agent run that reboots the device (the OS step asked for it): waits for the
    /// next boot; the partition it booted and the run's journal lines (read from the
    /// slot it ran on).
    pub fn pull_rebooting(&self) -> (u32, String) {
        let boots = self.parts().len();
        let slot = *self.parts().last().unwrap();
        self.start_run();
        let part = self.wait_boot(boots + 1);
        (part, self.last_run_journal(slot))
    }

    /// The journal of a slot's last agent run (read on the host from the slot's files,
    /// which the slot's systemd flushed when it went down): the last invocation of
    /// fleet-agent.service that systemd logged there, matched by its id.
    pub fn last_run_journal(&self, part: u32) -> String {
        let dir = self.dir.join(format!("slots/p{part}/var/log/journal"));
        let units = journalctl(&dir, &["-o", "json", "UNIT=fleet-agent.service"]);
        // With `--client real` the slots are loop-device images, unmounted once the
        // slot is down: there is no journal to read on the host.
        let Some(invocation) = last_invocation(&units) else {
            return format!("(no run of fleet-agent.service in {})", dir.display());
        };
        let selection = invocation_match(&invocation, "");
        let args: Vec<&str> = ["-o", "short-monotonic"]
            .into_iter()
            .chain(selection.split_whitespace())
            .collect();
        journalctl(&dir, &args)
    }
}

/// The INVOCATION_ID of the last of systemd's lines about the unit (`-o json` lines).
fn last_invocation(units: &str) -> Option<String> {
    units
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["INVOCATION_ID"].as_str().map(str::to_string))
}

fn journalctl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("journalctl")
        .arg("-q")
        .arg("-D")
        .arg(dir)
        .args(args)
        .output()
        .expect("journalctl");
    String::from_utf8_lossy(&out.stdout).to_string()
}

impl Drop for AbDevice {
    fn drop(&mut self) {
        let _ = Command::new(AB)
            .args(["stop", &self.name])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

/// The device's clock (seconds since the epoch), as the agent reads it.
pub fn device_now(dev: &AbDevice) -> u64 {
    dev.sh("date +%s").parse().unwrap()
}
