//! A real Debian device for tests: scripts/device.sh boots a copy of a cached bookworm
//! root filesystem with systemd-nspawn (systemd as PID 1, the host's network), the
//! agent binary is installed into it, and everything is asserted with the device's own
//! tools (dpkg-query, systemctl, journalctl). Also serves a signed apt repository
//! (scripts/test-apt-repo.sh) on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::support::{to_run, Run};

pub const BIN: &str = env!("CARGO_BIN_EXE_fleet-agent");
pub const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts");

pub struct Booted {
    pub name: String,
    pub root: PathBuf,
}

impl Booted {
    /// Boots a fresh device with the agent installed at /usr/local/bin/fleet-agent.
    pub fn start(name: &str) -> Booted {
        Booted::start_with(name, false)
    }

    /// The same, with Debian's mirror as the device's apt source when `debian_sources`.
    pub fn start_with(name: &str, debian_sources: bool) -> Booted {
        let watch = std::process::id().to_string();
        let instance = instance_name(name);
        let name = instance.as_str();
        let mut args = vec!["start", name, "--watch-pid", &watch];
        if !debian_sources {
            args.push("--no-debian-sources");
        }
        let boot = || {
            Command::new(format!("{SCRIPTS}/device.sh"))
                .args(&args)
                .stderr(Stdio::inherit())
                .output()
                .expect("device.sh runs")
        };
        // Booting the test device is the harness, not the product: a boot that did not
        // finish (seen once in 30 boots with a loaded machine; device.sh says why on
        // stderr and removes the device) is tried once more, loudly.
        let mut out = boot();
        if !out.status.success() {
            eprintln!("harness: device {name} did not boot; trying once more");
            out = boot();
        }
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "device {name} did not boot (twice):\n{stdout}"
        );
        let root = stdout
            .lines()
            .find_map(|l| l.strip_prefix("ROOT="))
            .map(PathBuf::from)
            .expect("device.sh prints ROOT=");
        let dev = Booted {
            name: name.to_string(),
            root,
        };
        let bin = dev.path("/usr/local/bin/fleet-agent");
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::copy(BIN, &bin).unwrap();
        dev
    }

    pub fn path(&self, device_path: &str) -> PathBuf {
        self.root.join(device_path.trim_start_matches('/'))
    }

    pub fn exec(&self, argv: &[&str]) -> Run {
        let out = Command::new(format!("{SCRIPTS}/device.sh"))
            .args(["exec", &self.name, "--"])
            .args(argv)
            .output()
            .expect("device.sh runs");
        to_run(out)
    }

    /// Runs a command that must succeed and returns its trimmed stdout.
    pub fn sh(&self, script: &str) -> String {
        let out = self.exec(&["sh", "-c", script]);
        assert_eq!(out.code, 0, "`{script}` in {}: {out:?}", self.name);
        out.stdout.trim().to_string()
    }

    pub fn agent(&self, args: &[&str]) -> Run {
        let mut argv = vec!["fleet-agent"];
        argv.extend_from_slice(args);
        self.exec(&argv)
    }

    pub fn spawn_agent(&self, args: &[&str]) -> Child {
        Command::new(format!("{SCRIPTS}/device.sh"))
            .args(["exec", &self.name, "--", "fleet-agent"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("device.sh runs")
    }

    pub fn write(&self, device_path: &str, content: &str) {
        let p = self.path(device_path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        let _ = Command::new(format!("{SCRIPTS}/device.sh"))
            .args(["stop", &self.name])
            .stdout(Stdio::null())
            .status();
    }
}

/// The machine name of a test's device: the test's name and this test process, so that
/// test processes of other checkouts on the same machine (developers' worktrees, CI)
/// never meet each other's devices. The device's id in the fleet stays the test's name.
pub fn instance_name(name: &str) -> String {
    format!("{name}-{}", std::process::id() % 100_000)
}

/// A static HTTP server (python3 -m http.server) on 127.0.0.1 for an apt repository.
pub struct StaticServer {
    child: Child,
    pub port: u16,
}

impl StaticServer {
    /// Binds port 0 and reads the port the server reports: no race for a free port.
    pub fn start(dir: &Path) -> StaticServer {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected http.server banner: {line}"));
        StaticServer { child, port }
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `journalctl` arguments that select one invocation of a unit: systemd's own lines
/// about it (they carry INVOCATION_ID) and everything its processes logged (journald
/// adds _SYSTEMD_INVOCATION_ID when it can still read the sender's cgroup; the agent sets
/// INVOCATION_ID itself, because a process that has exited by the time journald reads
/// its message has no cgroup left to read). `extra` narrows both alternatives further,
/// e.g. `SYSLOG_IDENTIFIER=fleet-agent`.
pub fn invocation_match(invocation: &str, extra: &str) -> String {
    assert!(
        !invocation.is_empty() && invocation.bytes().all(|b| b.is_ascii_hexdigit()),
        "not an invocation id: `{invocation}`"
    );
    format!("{extra} _SYSTEMD_INVOCATION_ID={invocation} + {extra} INVOCATION_ID={invocation}")
}

impl Booted {
    /// The journal of one invocation (see [`invocation_match`]), after `journalctl
    /// --sync`: every message sent before it is stored when it returns.
    pub fn invocation_journal(&self, invocation: &str, format: &str, extra: &str) -> String {
        self.sh(&format!(
            "journalctl --sync && journalctl -q -o {format} {}",
            invocation_match(invocation, extra)
        ))
    }
}
