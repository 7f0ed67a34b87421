//! Run reports and metrics on booted Debian devices, with the real components: the
//! agent's report goes into the journal namespace `fleet-agent` (journald), the units
//! the .deb ships run the real systemd-journal-upload (Debian's systemd-journal-remote
//! package), which ships to a real systemd-journal-remote on this machine's
//! 127.0.0.1; node_exporter (Debian's prometheus-node-exporter) reads the metrics file.
//! Outages are real too: the receiver is killed, the git server is out of reach.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Booted, BIN, SCRIPTS};
use crate::support::{FleetRepo, GitHttpServer, Run};
use crate::timed;

const REPORT_MESSAGE_ID: &str = "12d25437cee5491ead203d61bd2aea51";
const HERE: &str = env!("CARGO_MANIFEST_DIR");

/// systemd-journal-remote on 127.0.0.1: the fleet's receiver. Killing it is an outage.
pub struct Receiver {
    child: Option<Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Receiver {
    pub fn start() -> Receiver {
        let mut r = Receiver {
            child: None,
            port: 0,
            dir: tempfile::tempdir().unwrap(),
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts it again (on its port, into its directory, unless it has none yet).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the receiver runs already");
        for _ in 0..20 {
            if self.port == 0 {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                self.port = l.local_addr().unwrap().port();
            }
            let mut child = Command::new("/lib/systemd/systemd-journal-remote")
                .arg(format!("--listen-http=127.0.0.1:{}", self.port))
                .arg(format!("--output={}/", self.dir.path().display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("systemd-journal-remote runs (scripts/install-deps.sh installs it)");
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    self.child = Some(child);
                    return;
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "systemd-journal-remote did not listen on 127.0.0.1:{}",
            self.port
        );
    }

    /// An outage: SIGKILL, whatever it was doing.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every report entry stored, in storage order.
    pub fn entries(&self) -> Vec<Entry> {
        let out = Command::new("journalctl")
            .arg(format!("--directory={}", self.dir.path().display()))
            .args([
                "-o",
                "json",
                "--no-pager",
                "-q",
                "--output-fields=FLEET_DEVICE,FLEET_SEQ,FLEET_REPORT_ID",
            ])
            .arg(format!("MESSAGE_ID={REPORT_MESSAGE_ID}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|e| Entry {
                device: e["FLEET_DEVICE"].as_str().unwrap_or("").to_string(),
                seq: e["FLEET_SEQ"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                id: e["FLEET_REPORT_ID"].as_str().unwrap_or("").to_string(),
            })
            .collect()
    }

    /// Waits until every device has its report `seq` stored (the highest it numbered).
    pub fn wait_for(&self, last: &BTreeMap<String, u64>, timeout: Duration) -> Vec<Entry> {
        let deadline = Instant::now() + timeout;
        loop {
            let entries = self.entries();
            let missing: Vec<String> = last
                .iter()
                .filter(|(d, seq)| !entries.iter().any(|e| &e.device == *d && e.seq == **seq))
                .map(|(d, seq)| format!("{d} #{seq}"))
                .collect();
            if missing.is_empty() {
                return entries;
            }
            assert!(
                Instant::now() < deadline,
                "reports not stored after {timeout:?}: {missing:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One stored report entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub device: String,
    pub seq: u64,
    pub id: String,
}

/// What the entries of one device show: each number once, in order, none missing.
pub struct Delivery {
    pub stored: usize,
    pub duplicates: usize,
    pub distinct: Vec<u64>,
    /// The numbers of the reports stored more than once.
    pub twice: Vec<u64>,
}

pub fn delivery(entries: &[Entry], device: &str) -> Delivery {
    let mine: Vec<&Entry> = entries.iter().filter(|e| e.device == device).collect();
    let mut seen = std::collections::HashSet::new();
    let mut distinct = Vec::new();
    let mut twice = Vec::new();
    for e in &mine {
        if seen.insert(e.id.clone()) {
            distinct.push(e.seq);
        } else {
            twice.push(e.seq);
        }
    }
    Delivery {
        stored: mine.len(),
        duplicates: twice.len(),
        distinct,
        twice,
    }
}

/// Asserts that a device's reports 1..=last were stored, each once (by id), in order.
pub fn assert_all_in_order(entries: &[Entry], device: &str, last: u64) -> Delivery {
    let d = delivery(entries, device);
    let want: Vec<u64> = (1..=last).collect();
    assert!(
        d.distinct == want,
        "{device}: reports stored (first time each, in storage order) are not 1..={last}: {:?}",
        d.distinct
    );
    d
}

/// The journald settings of a test's spool (the .deb's, with a smaller bound).
pub struct Spool<'a> {
    pub max_use: &'a str,
    pub max_file: &'a str,
}

/// A booted device that ships its reports to `receiver` the way docs/reporting.md
/// says: Debian's systemd-journal-remote (for systemd-journal-upload), the units and
/// drop-ins the .deb ships (from this checkout), the receiver's URL, and, for the
/// test, retries every second instead of every minute. `packages`: more to install.
pub fn reporting_device(
    name: &str,
    receiver: &Receiver,
    spool: Option<&Spool>,
    packages: &[&str],
) -> Booted {
    let dev = Booted::start_with(name, true);
    let mut install = vec!["systemd-journal-remote"];
    install.extend(packages);
    let apt = dev.exec(&[
        "sh",
        "-c",
        &format!(
            "apt-get update -q >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold {}",
            install.join(" ")
        ),
    ]);
    assert_eq!(apt.code, 0, "apt-get install in {name}: {apt:?}");
    for (src, dest) in [
        (
            "systemd/fleet-agent-upload.service",
            "/usr/lib/systemd/system/fleet-agent-upload.service",
        ),
        (
            "systemd/journald@fleet-agent.conf",
            "/usr/lib/systemd/journald@fleet-agent.conf.d/fleet-agent.conf",
        ),
        (
            "systemd/systemd-journald@fleet-agent.socket.conf",
            "/usr/lib/systemd/system/systemd-journald@fleet-agent.socket.d/fleet-agent.conf",
        ),
    ] {
        dev.write(
            dest,
            &std::fs::read_to_string(Path::new(HERE).join(src)).unwrap(),
        );
    }
    dev.write(
        "/etc/systemd/journal-upload.conf.d/fleet-agent.conf",
        &format!("[Upload]\nURL={}\n", receiver.url()),
    );
    dev.write(
        "/etc/systemd/system/fleet-agent-upload.service.d/test.conf",
        "[Service]\nRestartSec=1\n",
    );
    if let Some(s) = spool {
        dev.write(
            "/etc/systemd/journald@fleet-agent.conf.d/test.conf",
            &format!(
                "[Journal]\nSystemMaxUse={}\nSystemMaxFileSize={}\n",
                s.max_use, s.max_file
            ),
        );
    }
    dev.sh("systemctl daemon-reload && systemctl enable --now fleet-agent-upload.service");
    dev
}

/// The state file of a device under `root` in `dev` ("/" for the device itself).
pub fn state(dev: &Booted, root: &str) -> serde_json::Value {
    let path = format!(
        "{}/var/lib/fleet-agent/state.json",
        root.trim_end_matches('/')
    );
    serde_json::from_str(&std::fs::read_to_string(dev.path(&path)).unwrap()).unwrap()
}

/// The number of the last report of a state: the sum of its runs.
pub fn seq(state: &serde_json::Value) -> u64 {
    state["counters"]["runs"]
        .as_object()
        .map(|runs| runs.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0)
}

/// A `--root` device inside a booted one: its root and an agent.toml that reports.
pub fn root_device(dev: &Booted, id: &str, repo_url: &str, branch: &str) -> String {
    let root = format!("/srv/devices/{id}");
    dev.write(
        &format!("{root}/etc/fleet-agent/agent.toml"),
        &format!(
            "repo = \"{repo_url}\"\nbranch = \"{branch}\"\ndevice_id = \"{id}\"\n[report]\njournal = true\n"
        ),
    );
    root
}

/// A small fleet of files (runs without packages or services, on --root devices).
fn files_fleet(motd: &str) -> Vec<(&'static str, String)> {
    vec![
        ("fleet.yml", "format: 1\nroles: [base]\n".into()),
        ("inventory.yml", "groups:\n  all-devices:\n    devices: [\"*\"]\n".into()),
        (
            "roles/base/role.yml",
            "resources:\n  - directory: {path: /etc/fleet}\n  - file: {path: /etc/fleet/motd, content: \"{{ motd }} {{ device.id }}\\n\"}\n".into(),
        ),
        ("group_vars/all.yml", format!("vars:\n  motd: {motd}\n")),
    ]
}

fn commit(repo: &FleetRepo, files: &[(&str, String)], message: &str) -> String {
    let refs: Vec<(&str, &str)> = files.iter().map(|(a, b)| (*a, b.as_str())).collect();
    repo.commit(&refs, message)
}

/// How many no-op runs a device makes offline: FLEET_REPORT_OFFLINE_DAYS (default 14)
/// days of the timer's 15-minute runs.
fn offline_runs() -> u64 {
    let days: u64 = std::env::var("FLEET_REPORT_OFFLINE_DAYS")
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(14);
    days * 96
}

/// Runs `fleet-agent pull` `n` times in the device under `root`, sampling the spool's
/// size every `every` runs; returns the largest size seen.
fn pulls(dev: &Booted, root: &str, n: u64, every: u64) -> u64 {
    let script = format!(
        "for i in $(seq {n}); do fleet-agent --root {root} -q pull >/dev/null 2>&1; r=$?; \
         if [ $r != 0 ] && [ $r != 3 ]; then echo fail $i $r; exit 1; fi; \
         if [ $((i % {every})) = 0 ]; then du -sb --apparent-size /var/log/journal/*.fleet-agent | cut -f1; fi; done"
    );
    let out = dev.sh(&script);
    out.lines()
        .filter_map(|l| l.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn node_exporter_scrapes_the_metrics_of_each_run() {
    let name = "fa-metrics";
    let dev = timed("setup", || Booted::start_with(name, true));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Its own port on this machine's network (devices share it), set before the
    // package starts it.
    dev.write(
        "/etc/default/prometheus-node-exporter",
        &format!("ARGS=\"--web.listen-address=127.0.0.1:{port} --collector.disable-defaults --collector.textfile\"\n"),
    );
    dev.sh("apt-get update -q >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold prometheus-node-exporter >/dev/null");
    let repo = FleetRepo::new(&[("README", "metrics\n")]);
    let c1 = commit(&repo, &files_fleet("hello"), "fleet");
    let git = GitHttpServer::start(repo.server.parent().unwrap(), None);
    dev.write(
        "/etc/fleet-agent/agent.toml",
        &format!(
            "repo = \"{}\"\ndevice_id = \"{name}\"\n",
            git.url("fleet.git")
        ),
    );
    assert_eq!(dev.agent(&["pull"]).code, 0);
    // Drift: a managed file changed on the device, corrected by the next run of the
    // same commit.
    dev.write("/etc/fleet/motd", "edited by hand\n");
    assert_eq!(dev.agent(&["pull"]).code, 0);
    // A run that waits for another one's lock.
    dev.sh("(flock /var/lib/fleet-agent/lock sleep 2 >/dev/null 2>&1 &) ; sleep 0.3");
    assert_eq!(dev.agent(&["pull", "--wait", "10"]).code, 0);
    // A run that cannot reach the fleet repository.
    drop(git);
    assert_eq!(dev.agent(&["pull"]).code, 3);

    let metrics = scrape(port);
    let st = state(&dev, "/");
    let value = |series: &str| -> String {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {series} in the scrape:\n{metrics}"))
            .to_string()
    };
    assert_eq!(value("node_textfile_scrape_error"), "0");
    assert_eq!(
        value(&format!(
            "fleet_agent_commit_info{{applied=\"{c1}\",branch=\"main\",last=\"{c1}\"}}"
        )),
        "1"
    );
    assert_eq!(value("fleet_agent_runs_total{outcome=\"applied\"}"), "2");
    assert_eq!(value("fleet_agent_runs_total{outcome=\"unchanged\"}"), "2");
    assert_eq!(value("fleet_agent_changes_total"), "3");
    assert_eq!(value("fleet_agent_drift_corrected_changes_total"), "1");
    assert_eq!(value("fleet_agent_fetch_failures_total"), "1");
    assert_eq!(value("fleet_agent_lock_waits_total"), "1");
    let waited: f64 = value("fleet_agent_lock_wait_seconds_total")
        .parse()
        .unwrap();
    assert!((1.0..10.0).contains(&waited), "waited {waited} s");
    assert_eq!(value("fleet_agent_last_run_offline"), "1");
    assert_eq!(value("fleet_agent_last_run_exit_code"), "3");
    assert_eq!(
        value("fleet_agent_last_run_outcome{outcome=\"unchanged\"}"),
        "1"
    );
    assert_eq!(
        value("fleet_agent_last_run_outcome{outcome=\"applied\"}"),
        "0"
    );
    // node_exporter prints values as floats (1.796452891e+09).
    let when: f64 = value("fleet_agent_last_run_timestamp_seconds")
        .parse()
        .unwrap();
    assert_eq!(when as u64, st["time"].as_u64().unwrap());
    assert_eq!(value("fleet_agent_os_update_phase{phase=\"idle\"}"), "1");
    assert_eq!(
        value("fleet_agent_signature_status{status=\"unsigned\"}"),
        "1"
    );
    assert_eq!(
        value("fleet_agent_reboot_required{reason=\"os-update\"}"),
        "0"
    );
    assert!(
        metrics.contains(&format!("fleet_agent_info{{device=\"{name}\"")),
        "{metrics}"
    );
    eprintln!(
        "[metrics] {} fleet_agent_ series scraped",
        metrics
            .lines()
            .filter(|l| l.starts_with("fleet_agent_"))
            .count()
    );
}

/// GET /metrics of node_exporter on 127.0.0.1:port.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
                .unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            if body.contains("fleet_agent_") {
                return body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node_exporter did not answer on {port}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_device_offline_for_14_days_delivers_every_report_once_in_order() {
    let mut receiver = Receiver::start();
    let runs = offline_runs();
    // Up to 14 days, a bound smaller than the .deb's 64M, so that they come close to
    // it; the long form (FLEET_REPORT_OFFLINE_DAYS) runs with the .deb's own bound.
    let (spool, bound) = if runs <= 14 * 96 {
        (
            Some(Spool {
                max_use: "6M",
                max_file: "1M",
            }),
            6 << 20,
        )
    } else {
        (None, 64 << 20)
    };
    let dev = timed("setup", || {
        reporting_device("fa-offline", &receiver, spool.as_ref(), &[])
    });
    let repo = FleetRepo::new(&[("README", "offline\n")]);
    commit(&repo, &files_fleet("hello"), "fleet");
    let git = GitHttpServer::start(repo.server.parent().unwrap(), None);
    let root = root_device(&dev, "offline-1", &git.url("fleet.git"), "main");
    assert_eq!(dev.agent(&["--root", &root, "pull"]).code, 0);
    let last = BTreeMap::from([("offline-1".to_string(), 1)]);
    receiver.wait_for(&last, Duration::from_secs(30));

    // Offline: neither the git server nor the receiver can be reached.
    receiver.kill();
    drop(git);
    let biggest = timed(&format!("{runs} offline runs"), || {
        pulls(&dev, &root, runs, 96)
    });
    let st = state(&dev, &root);
    assert_eq!(seq(&st), runs + 1);
    assert_eq!(st["counters"]["fetch_failures"], runs);
    assert!(
        biggest <= bound,
        "the spool stayed under its bound of {bound} bytes: at most {biggest} bytes"
    );
    eprintln!(
        "[spool] {runs} offline runs: largest spool {biggest} bytes (bound {bound}), {} bytes per report",
        biggest / (runs + 1)
    );

    // Back online.
    receiver.restart();
    let last = BTreeMap::from([("offline-1".to_string(), runs + 1)]);
    let entries = timed("delivery after the outage", || {
        receiver.wait_for(&last, Duration::from_secs(120))
    });
    let d = assert_all_in_order(&entries, "offline-1", runs + 1);
    eprintln!(
        "[delivery] {} reports stored for {} runs, stored twice: {:?}",
        d.stored,
        runs + 1,
        d.twice
    );
    // systemd-journal-upload (since v246, systemd PR #15809) sends the entry at its
    // saved cursor again when it starts: the last report stored before the outage may
    // be stored twice, nothing else. Readers count a report once, by its id.
    assert!(
        d.twice.iter().all(|s| *s == 1),
        "only the report at the uploader's cursor is stored again: {:?}",
        d.twice
    );
    // `fleet status` sees the device's last report, with nothing missing.
    let status = fleet_status(receiver.dir.path(), &repo.work);
    let device = &status["branches"][0]["devices"][0];
    assert_eq!(device["seq"], runs + 1);
    assert_eq!(device["missing_reports"], 0);
    assert_eq!(device["offline"], true);
}

/// `fleet status --json` over stored reports (on this machine, like a maintainer).
pub fn fleet_status(reports: &Path, repo: &Path) -> serde_json::Value {
    let out = fleet_agent(&[
        "fleet",
        "status",
        "--json",
        "--reports",
        reports.to_str().unwrap(),
        "--repo",
        repo.to_str().unwrap(),
    ]);
    assert!(out.code == 0 || out.code == 1, "{out:?}");
    serde_json::from_str(&out.stdout).unwrap()
}

/// The agent on this machine (a maintainer's laptop, CI).
pub fn fleet_agent(args: &[&str]) -> Run {
    crate::support::to_run(
        Command::new(BIN)
            .args(args)
            .env_remove("JOURNAL_STREAM")
            .output()
            .unwrap(),
    )
}

#[test]
fn a_receiver_down_during_a_burst_loses_no_report() {
    let mut receiver = Receiver::start();
    let dev = timed("setup", || {
        reporting_device("fa-burst", &receiver, None, &[])
    });
    let repo = FleetRepo::new(&[("README", "burst\n")]);
    commit(&repo, &files_fleet("hello"), "fleet");
    let git = GitHttpServer::start(repo.server.parent().unwrap(), None);
    let ids = ["burst-1", "burst-2", "burst-3"];
    for id in ids {
        root_device(&dev, id, &git.url("fleet.git"), "main");
    }
    // Three devices run 150 times each at once, while the receiver is killed twice:
    // once before the burst's reports reach it, once while they stream in.
    let n = 150;
    let burst = Command::new(format!("{SCRIPTS}/device.sh"))
        .args(["exec", &dev.name, "--", "sh", "-c"])
        .arg(format!(
            "for d in {}; do (for i in $(seq {n}); do fleet-agent --root /srv/devices/$d -q pull || exit 1; done) & done; wait",
            ids.join(" ")
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    receiver.kill();
    std::thread::sleep(Duration::from_secs(2));
    receiver.restart();
    // Killed again as soon as it holds some of the burst's reports.
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.entries().len() < 50 {
        assert!(Instant::now() < deadline, "no report stored");
        std::thread::sleep(Duration::from_millis(50));
    }
    receiver.kill();
    std::thread::sleep(Duration::from_secs(2));
    receiver.restart();
    let out = burst.wait_with_output().unwrap();
    assert!(out.status.success(), "the burst ran");
    let last: BTreeMap<String, u64> = ids
        .iter()
        .map(|id| {
            (
                id.to_string(),
                seq(&state(&dev, &format!("/srv/devices/{id}"))),
            )
        })
        .collect();
    let entries = timed("delivery", || {
        receiver.wait_for(&last, Duration::from_secs(120))
    });
    for id in ids {
        let d = assert_all_in_order(&entries, id, n);
        eprintln!(
            "[delivery] {id}: {} reports, {} stored, {} stored twice (counted once)",
            n, d.stored, d.duplicates
        );
    }
    let status = fleet_status(receiver.dir.path(), &repo.work);
    for d in status["branches"][0]["devices"].as_array().unwrap() {
        assert_eq!(d["seq"], n, "{d}");
        assert_eq!(d["missing_reports"], 0, "{d}");
    }
}

#[test]
fn a_full_spool_loses_the_oldest_reports_and_fleet_status_counts_them() {
    let mut receiver = Receiver::start();
    let spool = Spool {
        max_use: "1M",
        max_file: "256K",
    };
    let dev = timed("setup", || {
        reporting_device("fa-spool", &receiver, Some(&spool), &[])
    });
    let repo = FleetRepo::new(&[("README", "spool\n")]);
    commit(&repo, &files_fleet("hello"), "fleet");
    let git = GitHttpServer::start(repo.server.parent().unwrap(), None);
    let root = root_device(&dev, "spool-1", &git.url("fleet.git"), "main");
    assert_eq!(dev.agent(&["--root", &root, "pull"]).code, 0);
    receiver.wait_for(
        &BTreeMap::from([("spool-1".to_string(), 1)]),
        Duration::from_secs(30),
    );
    receiver.kill();
    // About 1.3M of reports (2254 bytes each, measured) for a 1M bound.
    let runs = 600;
    let biggest = timed("runs with the receiver down", || {
        pulls(&dev, &root, runs, 50)
    });
    // journald vacuums when it opens or rotates a file, so the spool can pass its bound
    // by a few pages before it does (4 KiB seen under load): within 64 KiB of it.
    assert!(
        biggest <= 1024 * 1024 + 64 * 1024,
        "the spool stayed within its bound of 1M: at most {biggest} bytes"
    );
    receiver.restart();
    let last = BTreeMap::from([("spool-1".to_string(), runs + 1)]);
    let entries = receiver.wait_for(&last, Duration::from_secs(60));
    let d = delivery(&entries, "spool-1");
    let lost = runs + 1 - d.distinct.len() as u64;
    eprintln!(
        "[spool] bound 1M: {} of {} reports delivered, {lost} lost to the bound (largest spool {biggest} bytes)",
        d.distinct.len(),
        runs + 1
    );
    assert!(lost > 0, "{runs} reports do not fit in 1M");
    assert!(
        d.distinct.windows(2).all(|w| w[0] < w[1]),
        "what arrived arrived in order"
    );
    let status = fleet_status(receiver.dir.path(), &repo.work);
    let device = &status["branches"][0]["devices"][0];
    assert_eq!(device["seq"], runs + 1);
    assert_eq!(
        device["missing_reports"], lost,
        "fleet status counts the lost reports"
    );
}
