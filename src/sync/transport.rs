//! git transports for libgit2 without OpenSSL or libssh2 (they would triple the arm
//! binary): smart HTTP(S) over ureq (rustls), and ssh through the system's ssh client,
//! as git itself does. Registered once per process, before the first fetch.
//!
//! Every network operation (a refs request, a fetch) runs under an overall deadline
//! (`with_deadline`), not only a per-read timeout: a server that trickles a byte every
//! few seconds never trips a read timeout, so each HTTP request gets the time left as
//! its whole budget, and an ssh client still running at the deadline is killed.
//!
//! The refs request of a poll over HTTP(S) is the agent's own (`http_tip`), not
//! libgit2's (which speaks protocol v0 only): protocol v2's `ls-refs` with the branch as
//! its prefix, so that a no-op poll's size does not grow with the repository's branches
//! and tags; a server that answers in v0 is read from that answer. An answer 429 or 503
//! leaves its `Retry-After` (seconds) for the backoff (`take_retry_after`).

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};
use git2::{Error as GitError, ErrorClass, ErrorCode};

use crate::config::redact;

/// Settings the transports need; set once per process.
#[derive(Debug, Clone, Default)]
pub(crate) struct TransportSettings {
    /// "user:token" for HTTP basic authentication.
    pub(crate) basic_auth: Option<String>,
    pub(crate) timeout: Duration,
    pub(crate) ssh_command: String,
    pub(crate) ssh_key: Option<String>,
    pub(crate) known_hosts: Option<String>,
}

static SETTINGS: OnceLock<TransportSettings> = OnceLock::new();
static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();

/// Registers the http, https and ssh transports (once; later settings are ignored).
pub(crate) fn register(settings: TransportSettings) -> Result<(), GitError> {
    let _ = SETTINGS.set(settings);
    REGISTERED
        .get_or_init(|| {
            // SAFETY: registration happens once (OnceLock) before any remote is created,
            // so it is not concurrent with transport creation.
            unsafe {
                git2::transport::register("http", |remote| Transport::smart(remote, true, Http))
                    .and_then(|()| {
                        git2::transport::register("https", |remote| {
                            Transport::smart(remote, true, Http)
                        })
                    })
                    .and_then(|()| {
                        git2::transport::register("ssh", |remote| {
                            Transport::smart(remote, false, Ssh)
                        })
                    })
                    .map_err(|e| e.message().to_string())
            }
        })
        .clone()
        .map_err(|m| GitError::new(ErrorCode::GenericError, ErrorClass::Net, m))
}

/// The deadline of the network operation under way, and its length (for messages).
static DEADLINE: Mutex<Option<(Instant, Duration)>> = Mutex::new(None);

/// Runs one network operation under an overall deadline of `limit`.
pub(crate) fn with_deadline<T>(limit: Duration, op: impl FnOnce() -> T) -> T {
    *DEADLINE.lock().expect("not poisoned") = Some((Instant::now() + limit, limit));
    let result = op();
    *DEADLINE.lock().expect("not poisoned") = None;
    result
}

/// The time left before the deadline (None: no deadline); an error once it passed.
fn time_left() -> std::io::Result<Option<Duration>> {
    let Some((at, limit)) = *DEADLINE.lock().expect("not poisoned") else {
        return Ok(None);
    };
    match at.checked_duration_since(Instant::now()) {
        Some(left) if !left.is_zero() => Ok(Some(left)),
        _ => Err(deadline_passed(limit)),
    }
}

fn deadline_passed(limit: Duration) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "no complete answer within the deadline of {} s (agent.toml [http] deadline_secs)",
            limit.as_secs()
        ),
    )
}

/// The deadline's error when it has passed (a transfer cut by it reports this).
fn past_deadline() -> Option<std::io::Error> {
    time_left().err()
}

fn settings() -> &'static TransportSettings {
    SETTINGS
        .get()
        .expect("transport settings are set before registration")
}

fn net_error(message: impl Into<String>) -> GitError {
    GitError::new(ErrorCode::GenericError, ErrorClass::Net, message.into())
}

// ---------------------------------------------------------------- smart HTTP

struct Http;

impl SmartSubtransport for Http {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, GitError> {
        let base = url.trim_end_matches('/');
        let (method_post, url, content_type) = match action {
            Service::UploadPackLs => (
                false,
                format!("{base}/info/refs?service=git-upload-pack"),
                None,
            ),
            Service::UploadPack => (
                true,
                format!("{base}/git-upload-pack"),
                Some("application/x-git-upload-pack-request"),
            ),
            Service::ReceivePackLs | Service::ReceivePack => {
                return Err(net_error(
                    "fleet-agent only fetches; pushing is not supported",
                ))
            }
        };
        Ok(Box::new(HttpStream {
            post: method_post,
            url,
            content_type,
            body: Vec::new(),
            response: None,
            v2: false,
        }))
    }

    fn close(&self) -> Result<(), GitError> {
        Ok(())
    }
}

struct HttpStream {
    post: bool,
    url: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    response: Option<Box<dyn Read + Send>>,
    /// Asks for protocol v2 (`Git-Protocol: version=2`).
    v2: bool,
}

/// The client for `url`. Only an https:// repository loads the system's certificate
/// authorities (about 1.5 ms of a no-op poll); a plain http:// one trusts none, so a
/// redirect from it to https is refused (configure the https:// URL instead).
fn agent(url: &str) -> &'static ureq::Agent {
    static PLAIN: OnceLock<ureq::Agent> = OnceLock::new();
    static TLS: OnceLock<ureq::Agent> = OnceLock::new();
    let https = url.starts_with("https://");
    let cell = if https { &TLS } else { &PLAIN };
    cell.get_or_init(|| {
        let timeout = Some(settings().timeout);
        let tls = match https {
            true => crate::tls::config(),
            false => crate::tls::none(),
        };
        ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(timeout)
            .timeout_per_read(timeout)
            .timeout_recv_response(timeout)
            .user_agent(concat!(
                "git/2.0 (fleet-agent ",
                env!("CARGO_PKG_VERSION"),
                ")"
            ))
            .build()
            .into()
    })
}

impl HttpStream {
    fn send(&mut self) -> std::io::Result<()> {
        let left = time_left()?;
        let auth = settings()
            .basic_auth
            .as_ref()
            .map(|a| format!("Basic {}", base64(a.as_bytes())));
        let result = if self.post {
            let mut req = agent(&self.url)
                .post(&self.url)
                .config()
                .timeout_global(left)
                .build()
                .header("Accept", "application/x-git-upload-pack-result")
                .header(
                    "Content-Type",
                    self.content_type.unwrap_or("application/octet-stream"),
                );
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            if self.v2 {
                req = req.header("Git-Protocol", "version=2");
            }
            req.send(&self.body[..])
        } else {
            let mut req = agent(&self.url)
                .get(&self.url)
                .config()
                .timeout_global(left)
                .build()
                .header("Accept", "*/*");
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            if self.v2 {
                req = req.header("Git-Protocol", "version=2");
            }
            req.call()
        };
        let response = result.map_err(|e| {
            past_deadline()
                .unwrap_or_else(|| std::io::Error::other(format!("{}: {e}", redact(&self.url))))
        })?;
        let status = response.status().as_u16();
        if status != 200 {
            if status == 429 || status == 503 {
                *RETRY_AFTER.lock().expect("not poisoned") = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.trim().parse().ok());
            }
            let why = match status {
                401 | 403 => "authentication failed: check credentials.token_file",
                404 => "no git repository at this address",
                429 | 503 => "the server is overloaded",
                _ => "the server refused",
            };
            return Err(std::io::Error::other(format!(
                "{}: HTTP {status}: {why}",
                redact(&self.url)
            )));
        }
        if !self.post {
            let ct = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if ct != "application/x-git-upload-pack-advertisement" {
                return Err(std::io::Error::other(format!(
                    "{}: not a smart-HTTP git server (content type `{ct}`)",
                    redact(&self.url)
                )));
            }
        }
        self.response = Some(Box::new(response.into_body().into_reader()));
        Ok(())
    }
}

impl Read for HttpStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.response.is_none() {
            self.send()?;
        }
        time_left()?;
        self.response
            .as_mut()
            .expect("sent")
            .read(buf)
            .map_err(|e| past_deadline().unwrap_or(e))
    }
}

impl Write for HttpStream {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.body.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The `Retry-After` seconds of the last 429 or 503 answer (an HTTP date counts as
/// none: the backoff's own delay applies).
static RETRY_AFTER: Mutex<Option<u64>> = Mutex::new(None);

pub(crate) fn take_retry_after() -> Option<u64> {
    RETRY_AFTER.lock().expect("not poisoned").take()
}

/// The server's tip of `refs/heads/BRANCH` (None: no such branch) over smart HTTP:
/// the advertisement asked for with protocol v2, then `ls-refs` for that one ref; a
/// server that answers in v0 advertises every ref in its first answer.
pub(crate) fn http_tip(base: &str, branch: &str) -> std::io::Result<Option<git2::Oid>> {
    let base = base.trim_end_matches('/');
    let wanted = format!("refs/heads/{branch}");
    let request = |post: bool, url: String, body: Vec<u8>| {
        let mut stream = HttpStream {
            post,
            url,
            content_type: Some("application/x-git-upload-pack-request"),
            body,
            response: None,
            v2: true,
        };
        read_bounded(&mut stream, MOST_REFS_ANSWER)
    };
    let advertised = request(
        false,
        format!("{base}/info/refs?service=git-upload-pack"),
        vec![],
    )?;
    let lines = pkt_lines(&advertised)?;
    let refs = match lines.iter().any(|l| *l == b"version 2") {
        false => lines,
        true => {
            // command=ls-refs, a delimiter, the prefix, a flush.
            let prefix = format!("ref-prefix {wanted}\n");
            let body = format!(
                "0014command=ls-refs\n0001{:04x}{prefix}0000",
                prefix.len() + 4
            );
            let listed = request(true, format!("{base}/git-upload-pack"), body.into_bytes())?;
            return find_ref(&pkt_lines(&listed)?, &wanted);
        }
    };
    find_ref(&refs, &wanted)
}

/// The most a refs answer may be: a hostile or broken server cannot make the agent
/// hold more (a v0 advertisement of 5,000 refs is about 330 KB).
const MOST_REFS_ANSWER: u64 = 16 << 20;

/// All of `from`, refused when it is over `most` bytes.
fn read_bounded(from: &mut impl Read, most: u64) -> std::io::Result<Vec<u8>> {
    let mut answer = Vec::new();
    from.take(most + 1).read_to_end(&mut answer)?;
    if answer.len() as u64 > most {
        return Err(std::io::Error::other(format!(
            "the server's refs answer is over {} MiB",
            most >> 20
        )));
    }
    Ok(answer)
}

/// The id of `wanted` among ref lines (`<id> <name>[ attributes][\0capabilities]`).
fn find_ref(lines: &[&[u8]], wanted: &str) -> std::io::Result<Option<git2::Oid>> {
    for line in lines {
        let line = line.split(|b| *b == 0).next().unwrap_or(line);
        let mut words = line.split(|b| *b == b' ');
        let (id, name) = (words.next().unwrap_or(b""), words.next());
        if name == Some(wanted.as_bytes()) {
            let id = std::str::from_utf8(id)
                .ok()
                .and_then(|i| git2::Oid::from_str(i).ok());
            return id.map(Some).ok_or_else(bad_answer);
        }
    }
    Ok(None)
}

fn bad_answer() -> std::io::Error {
    std::io::Error::other("the server's answer is not in git's pkt-line format")
}

/// The lines of a pkt-line stream without their newline; a flush or delimiter packet is
/// an empty line.
fn pkt_lines(mut data: &[u8]) -> std::io::Result<Vec<&[u8]>> {
    let mut lines = Vec::new();
    while !data.is_empty() {
        let len = (data.get(..4))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| usize::from_str_radix(h, 16).ok())
            .ok_or_else(bad_answer)?;
        let line = match len {
            0..=3 => &data[..0],
            _ => data.get(4..len).ok_or_else(bad_answer)?,
        };
        lines.push(line.strip_suffix(b"\n").unwrap_or(line));
        data = &data[len.max(4)..];
    }
    Ok(lines)
}

fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

// ---------------------------------------------------------------- ssh via the ssh client

struct Ssh;

impl SmartSubtransport for Ssh {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, GitError> {
        if action != Service::UploadPackLs {
            return Err(net_error(
                "fleet-agent only fetches; pushing is not supported",
            ));
        }
        let rest = url
            .strip_prefix("ssh://")
            .ok_or_else(|| net_error(format!("not an ssh:// URL: {url}")))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => (h, Some(p)),
            _ => (authority, None),
        };
        // ssh://host/~/x means x in the remote user's home (what scp-style host:x means).
        let path = path.strip_prefix("/~/").unwrap_or(path);
        if path.contains('\'') {
            return Err(net_error("the repository path may not contain a quote"));
        }
        let s = settings();
        let mut cmd = Command::new(&s.ssh_command);
        cmd.args([
            "-o",
            "BatchMode=yes",
            "-o",
            &format!("ConnectTimeout={}", s.timeout.as_secs().max(1)),
        ]);
        if let Some(p) = port {
            cmd.args(["-p", p]);
        }
        if let Some(k) = &s.ssh_key {
            cmd.args(["-i", k, "-o", "IdentitiesOnly=yes"]);
        }
        if let Some(kh) = &s.known_hosts {
            cmd.args([
                "-o",
                &format!("UserKnownHostsFile={kh}"),
                "-o",
                "StrictHostKeyChecking=yes",
            ]);
        }
        cmd.arg(host).arg(format!("git-upload-pack '{path}'"));
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| net_error(format!("cannot run {}: {e}", s.ssh_command)))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let child = Arc::new(Mutex::new(child));
        let expired = Arc::new(AtomicBool::new(false));
        let left = time_left().map_err(|e| net_error(e.to_string()))?;
        let stop = left.map(|left| watchdog(child.clone(), expired.clone(), left));
        Ok(Box::new(SshStream {
            child,
            stdin,
            stdout,
            expired,
            _watchdog: stop,
        }))
    }

    fn close(&self) -> Result<(), GitError> {
        Ok(())
    }
}

struct SshStream {
    child: Arc<Mutex<Child>>,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    /// Set when the watchdog killed ssh at the deadline.
    expired: Arc<AtomicBool>,
    /// Dropping it tells the watchdog that the stream is done.
    _watchdog: Option<mpsc::Sender<()>>,
}

/// Kills the ssh client when it is still running `left` from now (a stalled or
/// trickling server keeps it reading forever); the returned sender, dropped, stops it.
fn watchdog(
    child: Arc<Mutex<Child>>,
    expired: Arc<AtomicBool>,
    left: Duration,
) -> mpsc::Sender<()> {
    let (stop, stopped) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(left) {
            expired.store(true, Ordering::SeqCst);
            if let Ok(mut c) = child.lock() {
                let _ = c.kill();
            }
        }
    });
    stop
}

impl SshStream {
    /// When ssh ends early, its stderr says why (unknown host key, permission denied),
    /// or the deadline killed it.
    fn failure(&mut self) -> std::io::Error {
        if self.expired.load(Ordering::SeqCst) {
            if let Some((_, limit)) = *DEADLINE.lock().expect("not poisoned") {
                return deadline_passed(limit);
            }
        }
        let mut child = self.child.lock().expect("not poisoned");
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
        std::io::Error::other(format!("ssh ended ({status}): {}", stderr.trim()))
    }
}

impl Read for SshStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.stdout.as_mut().expect("stdout is piped").read(buf)?;
        if n == 0 && !buf.is_empty() {
            return Err(self.failure());
        }
        Ok(n)
    }
}

impl Write for SshStream {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self.stdin.as_mut().expect("stdin is piped").write(data) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(self.failure()),
            Err(e) => Err(e),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stdin.as_mut().expect("stdin is piped").flush()
    }
}

impl Drop for SshStream {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn refs_are_read_from_v0_and_v2_answers() {
        let id = "3e78248117692c50b387268db39206e2b1a28dd2";
        let v0 = format!(
            "001e# service=git-upload-pack\n0000\
             004b{id} refs/heads/main-old\0multi_ack\n\
             003d{id} refs/heads/main\n0000"
        );
        let lines = pkt_lines(v0.as_bytes()).unwrap();
        assert_eq!(lines[0], b"# service=git-upload-pack");
        assert_eq!(lines[1], b"");
        let found = find_ref(&lines, "refs/heads/main").unwrap();
        assert_eq!(found.unwrap().to_string(), id);
        assert_eq!(find_ref(&lines, "refs/heads/other").unwrap(), None);
        // v2's ls-refs answer: attributes after the name, a response end.
        let v2 = format!("0058{id} refs/heads/main symref-target:refs/heads/x\n0000");
        let found = find_ref(&pkt_lines(v2.as_bytes()).unwrap(), "refs/heads/main");
        assert_eq!(found.unwrap().unwrap().to_string(), id);
        assert!(pkt_lines(b"00zz").is_err());
        assert!(pkt_lines(b"0050short").is_err());
        // A truncated length is an error, not a crash.
        assert!(pkt_lines(b"0000000").is_err());
        assert!(pkt_lines(b"00").is_err());
    }

    #[test]
    fn a_refs_answer_is_bounded() {
        let mut endless = std::io::repeat(b'0');
        let e = read_bounded(&mut endless, 2 << 20).unwrap_err();
        assert_eq!(e.to_string(), "the server's refs answer is over 2 MiB");
        let mut small: &[u8] = b"0000";
        assert_eq!(read_bounded(&mut small, 4).unwrap(), b"0000");
    }
}
