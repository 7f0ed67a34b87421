//! Test support: real git repositories (the git CLI), a real smart-HTTP git server on
//! 127.0.0.1 (git's own http-backend behind a small HTTP/1.1 front), and a scratch
//! device (a root directory and an agent.toml) on which the real binary runs.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_fleet-agent");

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=Test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A fleet repository: a working tree that commits and pushes to a bare "server" repo.
pub struct FleetRepo {
    pub _tmp: tempfile::TempDir,
    pub work: PathBuf,
    pub server: PathBuf,
}

impl FleetRepo {
    pub fn new(files: &[(&str, &str)]) -> FleetRepo {
        let tmp = tempfile::tempdir().unwrap();
        let server = tmp.path().join("fleet.git");
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(tmp.path(), &["init", "-q", "--bare", "fleet.git"]);
        git(&work, &["init", "-q"]);
        git(
            &work,
            &["remote", "add", "origin", server.to_str().unwrap()],
        );
        let repo = FleetRepo {
            _tmp: tmp,
            work,
            server,
        };
        repo.commit(files, "initial fleet");
        repo
    }

    /// Writes the files (None content: delete), commits, and pushes main.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (path, content) in files {
            let p = self.work.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
        }
        self.commit_all(message)
    }

    fn commit_all(&self, message: &str) -> String {
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        git(&self.work, &["push", "-q", "-f", "origin", "HEAD:main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.server.display())
    }
}

/// A scratch device: a root directory with an agent.toml inside it.
pub struct Device {
    pub _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub config: PathBuf,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Device {
    pub fn new(repo_url: &str, device_id: &str, extra_config: &str) -> Device {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("etc/fleet-agent")).unwrap();
        let config = root.join("etc/fleet-agent/agent.toml");
        std::fs::write(
            &config,
            format!("repo = \"{repo_url}\"\nbranch = \"main\"\ndevice_id = \"{device_id}\"\n{extra_config}"),
        )
        .unwrap();
        Device {
            _tmp: tmp,
            root,
            config,
        }
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.command(args).output().expect("fleet-agent runs");
        to_run(out)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--root")
            .arg(&self.root)
            .args(args)
            .env_remove("JOURNAL_STREAM");
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }

    pub fn path(&self, device_path: &str) -> PathBuf {
        self.root.join(device_path.trim_start_matches('/'))
    }

    pub fn read(&self, device_path: &str) -> String {
        std::fs::read_to_string(self.path(device_path))
            .unwrap_or_else(|e| panic!("{device_path}: {e}"))
    }

    pub fn state(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.path("/var/lib/fleet-agent/state.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Every file, link and directory under the root except the agent's own state,
    /// with content and mode: to prove that a run changed nothing.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        snapshot_into(&self.root, &self.root, &mut out);
        out.retain(|k, _| !k.starts_with("/var/lib/fleet-agent"));
        out
    }
}

fn snapshot_into(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    use std::os::unix::fs::MetadataExt;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let p = entry.path();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let key = format!("/{}", p.strip_prefix(root).unwrap().display());
        if meta.file_type().is_symlink() {
            out.insert(
                key,
                format!("-> {}", std::fs::read_link(&p).unwrap().display()),
            );
        } else if meta.is_dir() {
            out.insert(key, format!("dir {:o}", meta.mode() & 0o7777));
            snapshot_into(root, &p, out);
        } else {
            let content = std::fs::read(&p).unwrap();
            out.insert(
                key,
                format!(
                    "{:o} ino {} {}",
                    meta.mode() & 0o7777,
                    meta.ino(),
                    String::from_utf8_lossy(&content)
                ),
            );
        }
    }
}

pub fn to_run(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A smart-HTTP git server on 127.0.0.1: `git http-backend` (CGI) behind a minimal
/// HTTP/1.1 front that closes each connection. Records every request line.
pub struct GitHttpServer {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    /// While set, every connection is closed at once (the link is down).
    offline: Arc<AtomicBool>,
    /// While set, every request is answered with this status line and headers (an
    /// overloaded server: `503 Service Unavailable\r\nRetry-After: 120`).
    overload: Arc<Mutex<Option<String>>>,
    /// While set, the client's Git-Protocol header is not passed on (protocol v0 only).
    v0: Arc<AtomicBool>,
}

impl GitHttpServer {
    /// Serves the bare repositories in `project_root`; `token` requires basic auth.
    pub fn start(project_root: &Path, token: Option<&str>) -> GitHttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let offline = Arc::new(AtomicBool::new(false));
        let (root, reqs, stopping) = (project_root.to_path_buf(), requests.clone(), stop.clone());
        let down = offline.clone();
        let overload: Arc<Mutex<Option<String>>> = Arc::default();
        let busy = overload.clone();
        let v0 = Arc::new(AtomicBool::new(false));
        let only_v0 = v0.clone();
        let auth = token.map(|t| format!("Basic {}", base64(&format!("fleet-agent:{t}"))));
        std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) if down.load(Ordering::SeqCst) => drop(stream),
                    Ok((stream, _)) => {
                        let (root, reqs, auth) = (root.clone(), reqs.clone(), auth.clone());
                        let busy = busy.lock().unwrap().clone();
                        let v0 = only_v0.load(Ordering::SeqCst);
                        std::thread::spawn(move || {
                            let how = (auth.as_deref(), busy.as_deref(), v0);
                            serve(stream, &root, &reqs, how)
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        GitHttpServer {
            port,
            requests,
            stop,
            offline,
            overload,
            v0,
        }
    }

    /// Speaks protocol v0 only (a server without v2), or both again.
    pub fn set_v0_only(&self, v0: bool) {
        self.v0.store(v0, Ordering::SeqCst);
    }

    /// Answers every request with `answer` (a status line and headers), or serves
    /// again (None).
    pub fn set_overload(&self, answer: Option<&str>) {
        *self.overload.lock().unwrap() = answer.map(str::to_string);
    }

    /// Takes the link down (every connection closed at once) or up again.
    pub fn set_offline(&self, down: bool) {
        self.offline.store(down, Ordering::SeqCst);
    }

    pub fn url(&self, repo: &str) -> String {
        format!("http://127.0.0.1:{}/{repo}", self.port)
    }

    pub fn take_requests(&self) -> Vec<String> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn serve(
    stream: TcpStream,
    root: &Path,
    requests: &Mutex<Vec<String>>,
    (auth, overload, v0): (Option<&str>, Option<&str>, bool),
) {
    stream.set_nonblocking(false).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || line.is_empty() {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    requests.lock().unwrap().push(format!("{method} {target}"));
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut out = stream;
    if let Some(answer) = overload {
        let _ = out.write_all(
            format!("HTTP/1.1 {answer}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        return;
    }
    if let Some(expected) = auth {
        if headers.get("authorization").map(String::as_str) != Some(expected) {
            let _ = out.write_all(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return;
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).unwrap();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut child = Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env(
            "CONTENT_TYPE",
            headers.get("content-type").cloned().unwrap_or_default(),
        )
        .env("CONTENT_LENGTH", len.to_string())
        .env(
            "GIT_PROTOCOL",
            match v0 {
                true => String::new(),
                false => headers.get("git-protocol").cloned().unwrap_or_default(),
            },
        )
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&body).unwrap();
    let mut cgi = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut cgi).unwrap();
    child.wait().unwrap();
    let split = cgi
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| cgi.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((at, sep)) = split else { return };
    let head = String::from_utf8_lossy(&cgi[..at]).to_string();
    let payload = &cgi[at + sep..];
    let mut status = "200 OK".to_string();
    let mut response = String::new();
    for h in head.lines() {
        match h.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_string(),
            Some(_) => response.push_str(&format!("{h}\r\n")),
            None => {}
        }
    }
    let _ = out.write_all(
        format!(
            "HTTP/1.1 {status}\r\n{response}Content-Length: {}\r\nConnection: close\r\n\r\n",
            payload.len()
        )
        .as_bytes(),
    );
    let _ = out.write_all(payload);
}

pub fn base64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A small fleet: one role `web` for every device, one file from a template and one
/// inline, a directory, a symlink, and a group override.
pub fn basic_fleet() -> Vec<(&'static str, &'static str)> {
    vec![
        ("fleet.yml", "format: 1\nvars:\n  greeting: hello\n  port: 8080\nroles:\n  - web\n"),
        (
            "inventory.yml",
            "groups:\n  shop:\n    devices: [\"pi-*\"]\n",
        ),
        ("group_vars/shop.yml", "vars:\n  greeting: hello shop\n"),
        (
            "roles/web/role.yml",
            concat!(
                "params:\n  listen:\n    default: \"{{ port }}\"\n",
                "resources:\n",
                "  - directory:\n      path: /etc/web\n      mode: \"0750\"\n",
                "  - file:\n      path: /etc/web/web.conf\n      template: web.conf.j2\n      mode: \"0640\"\n",
                "  - file:\n      path: /etc/web/motd\n      content: \"{{ greeting }} from {{ device.id }}\\n\"\n",
                "  - symlink:\n      path: /etc/web/current\n      target: web.conf\n",
            ),
        ),
        ("roles/web/templates/web.conf.j2", "listen = {{ listen }}\ngreeting = {{ greeting }}\n"),
    ]
}

impl Device {
    /// Runs the agent and returns, with its outcome, its peak resident memory in KiB,
    /// as GNU time reports it (ru_maxrss). Through `/usr/bin/time`, a small process,
    /// because a child forked from this big test process would inherit its resident
    /// size into ru_maxrss.
    pub fn run_measured(&self, args: &[&str]) -> (Run, u64) {
        let out = tempfile::tempdir().unwrap();
        let report = out.path().join("rss");
        let mut c = Command::new("/usr/bin/time");
        c.arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(&report)
            .arg(BIN)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .env_remove("JOURNAL_STREAM");
        let run = to_run(
            c.output()
                .expect("/usr/bin/time runs (apt-get install time)"),
        );
        let kib = std::fs::read_to_string(&report)
            .unwrap()
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .expect("time -f %M prints the peak");
        (run, kib)
    }

    /// Runs the agent, killing it after `limit`: None when it had to be killed.
    pub fn run_within(&self, args: &[&str], limit: Duration) -> Option<(Run, Duration)> {
        let start = std::time::Instant::now();
        let mut child = self.command(args).spawn().expect("fleet-agent runs");
        loop {
            if child.try_wait().unwrap().is_some() {
                return Some((to_run(child.wait_with_output().unwrap()), start.elapsed()));
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Replaces a key's line in agent.toml (or adds it at the top).
    pub fn set_config(&self, key: &str, value: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with(&format!("{key} =")))
            .map(str::to_string)
            .collect();
        lines.insert(0, format!("{key} = {value}"));
        std::fs::write(&self.config, lines.join("\n") + "\n").unwrap();
    }
}

/// A server on 127.0.0.1 that answers every request with an HTTP response sent one
/// byte every `every` (a flaky link, or a server that trickles): it never stops
/// sending, so no per-read timeout ever fires.
pub struct TrickleServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl TrickleServer {
    pub fn start(every: Duration, content_type: &'static str) -> TrickleServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let stopping = stopping.clone();
                std::thread::spawn(move || {
                    stream.set_nonblocking(false).unwrap();
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                        line.clear();
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: 100000000\r\n\r\n"
                    );
                    let mut out = stream;
                    let bytes = head.into_bytes().into_iter().chain(std::iter::repeat(b'0'));
                    for b in bytes {
                        if stopping.load(Ordering::SeqCst) || out.write_all(&[b]).is_err() {
                            return;
                        }
                        std::thread::sleep(every);
                    }
                });
            }
        });
        TrickleServer { port, stop }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for TrickleServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Flips bytes inside the compressed data of `object` in a bare repository (a loose
/// object or a pack), as a failing SD card would.
pub fn corrupt_packed_object(repo: &Path, object: &str) {
    let loose = repo.join("objects").join(&object[..2]).join(&object[2..]);
    if loose.exists() {
        let mut bytes = std::fs::read(&loose).unwrap();
        let (mid, len) = (bytes.len() / 2, bytes.len());
        for b in &mut bytes[mid.saturating_sub(4)..(mid + 4).min(len)] {
            *b ^= 0xa5;
        }
        std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        std::fs::write(&loose, bytes).unwrap();
        return;
    }
    let pack_dir = repo.join("objects/pack");
    for idx in std::fs::read_dir(&pack_dir).unwrap() {
        let idx = idx.unwrap().path();
        if idx.extension().is_none_or(|x| x != "idx") {
            continue;
        }
        let listing = Command::new("git")
            .arg("show-index")
            .stdin(std::fs::File::open(&idx).unwrap())
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout).to_string();
        let mut offsets: Vec<(u64, String)> = listing
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?.parse().ok()?, f.next()?.to_string()))
            })
            .collect();
        offsets.sort();
        let Some(i) = offsets.iter().position(|(_, id)| id == object) else {
            continue;
        };
        let pack = idx.with_extension("pack");
        let start = offsets[i].0;
        let end = offsets
            .get(i + 1)
            .map(|o| o.0)
            .unwrap_or(std::fs::metadata(&pack).unwrap().len() - 20);
        let mut bytes = std::fs::read(&pack).unwrap();
        // Past the entry's header (a few bytes), inside its zlib stream.
        let from = (start + 4).min(end - 1) as usize;
        for b in &mut bytes[from..(from + 16).min(end as usize)] {
            *b ^= 0xa5;
        }
        std::fs::set_permissions(&pack, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        std::fs::write(&pack, bytes).unwrap();
        return;
    }
    panic!("object {object} is not in a pack of {}", repo.display());
}
