//! Applying a `download`: the URL fetched into the state directory's `downloads/` (a
//! partial file is resumed with an HTTP Range request after an interruption), hashed
//! while it streams (bounded memory), checked against the declared sha256, then placed:
//! a file is copied beside its target and renamed over it; an archive is unpacked by
//! the device's own `tar` (gzip, xz) or `unzip` into a directory beside the target,
//! synced, and swapped in with one rename (RENAME_EXCHANGE), so that the directory is
//! always whole, the old one or the new one. Leftovers of an interrupted run are removed
//! by the next.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::digest::Sha256;

use crate::digest::{hex, sha256_copy};
use crate::error::{Error, Result};
use crate::host::accounts::Principal;
use crate::host::command::{Exec, DEFAULT_PATH};
use crate::host::{sync_dir, Host};

/// What applying a `download` does.
#[derive(Debug, Clone)]
pub(crate) struct Fetch {
    pub(crate) url: String,
    pub(crate) sha256: String,
    pub(crate) path: PathBuf,
    /// `tar.gz`, `tar.xz` or `zip`, and how many leading components to strip.
    pub(crate) unpack: Option<(String, u32)>,
    pub(crate) mode: u32,
    pub(crate) owner: Principal,
    pub(crate) group: Principal,
    /// Where partial and verified downloads wait (a device path, in the state directory).
    pub(crate) cache: PathBuf,
    pub(crate) timeout: Duration,
    /// The URL as messages show it (credentials and secrets left out).
    pub(crate) shown: String,
}

/// How long unpacking an archive may take.
const UNPACK_TIMEOUT: Duration = Duration::from_secs(1800);

impl Host {
    /// Fetches, checks and places a download; `uid`/`gid` own what is placed.
    pub(crate) fn download(&self, f: &Fetch, uid: u32, gid: u32) -> Result<()> {
        let archive = self.fetch_verified(f)?;
        match &f.unpack {
            None => self.place_file(f, &archive, uid, gid)?,
            Some((format, strip)) => self.unpack(f, format, *strip, uid, gid)?,
        }
        let done = self.path(&archive);
        fs::remove_file(&done).map_err(|e| Error::io("cannot remove", &done, e))?;
        Ok(())
    }

    /// The verified download in the cache (a device path): already there and still
    /// matching, or fetched now (resuming a partial one).
    fn fetch_verified(&self, f: &Fetch) -> Result<PathBuf> {
        let cache = self.path(&f.cache);
        fs::create_dir_all(&cache).map_err(|e| Error::io("cannot create", &cache, e))?;
        let _ = fs::set_permissions(&cache, fs::Permissions::from_mode(0o700));
        let done = f.cache.join(&f.sha256);
        if let Ok(file) = fs::File::open(self.path(&done)) {
            let got = sha256_copy(file, None).map_err(|e| Error::io("cannot read", &done, e))?;
            if got == f.sha256 {
                return Ok(done);
            }
            log::warn!("{}: its sha256 is {got}: fetched again", done.display());
            let _ = fs::remove_file(self.path(&done));
        }
        let part = cache.join(format!("{}.part", f.sha256));
        let got = fetch(f, &part)?;
        if got != f.sha256 {
            let _ = fs::remove_file(&part);
            return Err(Error::Other(format!(
                "download {}: its sha256 is {got}, expected {} (the partial download was removed)",
                shown(f),
                f.sha256
            )));
        }
        fs::rename(&part, self.path(&done))
            .and_then(|()| sync_dir(&cache))
            .map_err(|e| Error::io("cannot write", &part, e))?;
        Ok(done)
    }

    /// Copies the verified download beside the target (checking it again on the way),
    /// with its mode and owner, and renames it over the target.
    fn place_file(&self, f: &Fetch, archive: &Path, uid: u32, gid: u32) -> Result<()> {
        let target = self.verified_parent(&f.path)?.join(file_name(&f.path));
        let tmp = beside(&target, "tmp");
        let result = (|| -> std::io::Result<String> {
            let _ = fs::remove_file(&tmp);
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            let got = sha256_copy(fs::File::open(self.path(archive))?, Some(&mut out))?;
            std::os::unix::fs::fchown(&out, Some(uid), Some(gid))?;
            out.set_permissions(fs::Permissions::from_mode(f.mode))?;
            out.sync_all()?;
            Ok(got)
        })();
        let got = result.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io("cannot write", &tmp, e)
        })?;
        if got != f.sha256 {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Other(format!(
                "{}: changed while it was copied",
                archive.display()
            )));
        }
        fs::rename(&tmp, &target)
            .and_then(|()| sync_dir(target.parent().unwrap_or(Path::new("/"))))
            .map_err(|e| Error::io("cannot write", &target, e))
    }

    /// Unpacks the archive into a new directory beside the target with the device's own
    /// tools, sets its owner and mode, syncs it, and swaps it in.
    fn unpack(&self, f: &Fetch, format: &str, strip: u32, uid: u32, gid: u32) -> Result<()> {
        let target = self.verified_parent(&f.path)?.join(file_name(&f.path));
        let new_dev = device_beside(&f.path, "new");
        let new = self.path(&new_dev);
        if new.exists() {
            fs::remove_dir_all(&new).map_err(|e| Error::io("cannot remove", &new, e))?;
        }
        fs::create_dir(&new)
            .and_then(|()| fs::set_permissions(&new, fs::Permissions::from_mode(0o700)))
            .map_err(|e| Error::io("cannot create", &new, e))?;
        let archive = f.cache.join(&f.sha256);
        let argv = unpack_argv(format, strip, &archive, &new_dev);
        self.require_tools(format)?;
        let exec = Exec {
            env: vec![
                ("PATH".into(), DEFAULT_PATH.into()),
                ("LC_ALL".into(), "C".into()),
            ],
            cwd: None,
            user: None,
            timeout: Some(UNPACK_TIMEOUT),
        };
        let argv_ref: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = self.run_exec(&argv_ref, &exec)?;
        if out.code != 0 {
            let _ = fs::remove_dir_all(&new);
            return Err(Error::Command {
                command: argv.join(" "),
                status: format!(
                    "exit code {}; {} was left as it was",
                    out.code,
                    f.path.display()
                ),
                stderr: out.stderr,
            });
        }
        let settle = (|| -> std::io::Result<()> {
            if (uid, gid) != (0, 0) {
                chown_tree(&new, uid, gid)?;
            }
            fs::set_permissions(&new, fs::Permissions::from_mode(f.mode))?;
            nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&fs::File::open(&new)?))?;
            Ok(())
        })();
        settle.map_err(|e| Error::io("cannot finish unpacking into", &new, e))?;
        swap_in(&new, &target)
    }

    /// tar is on every Debian system (gzip too); xz and unzip may not be.
    fn require_tools(&self, format: &str) -> Result<()> {
        let (tool, package) = match format {
            "tar.xz" => ("xz", "xz-utils"),
            "zip" => ("unzip", "unzip"),
            _ => ("tar", "tar"),
        };
        let found = ["/usr/bin", "/bin"]
            .iter()
            .any(|d| self.path(&Path::new(d).join(tool)).exists());
        if found {
            return Ok(());
        }
        Err(Error::Other(format!(
            "unpacking {format} needs `{tool}` on the device: declare `- package: {{name: {package}}}` (packages are installed before downloads are placed)"
        )))
    }
}

/// The device's command that unpacks `archive` into `into` (device paths).
fn unpack_argv(format: &str, strip: u32, archive: &Path, into: &Path) -> Vec<String> {
    let (archive, into) = (archive.display().to_string(), into.display().to_string());
    if format == "zip" {
        return vec!["unzip".into(), "-q".into(), archive, "-d".into(), into];
    }
    let mut argv = vec![
        "tar".into(),
        "-x".into(),
        if format == "tar.xz" { "-J" } else { "-z" }.into(),
        "--no-same-owner".into(),
        "-f".into(),
        archive,
        "-C".into(),
        into,
    ];
    if strip > 0 {
        argv.push(format!("--strip-components={strip}"));
    }
    argv
}

/// Puts `new` in the place of `target` in one step: exchanged with an existing directory
/// (which is then removed from `new`'s name), or renamed when there is none.
fn swap_in(new: &Path, target: &Path) -> Result<()> {
    let parent = target.parent().unwrap_or(Path::new("/"));
    let result = if target.exists() {
        exchange(new, target).and_then(|()| {
            sync_dir(parent)?;
            fs::remove_dir_all(new)
        })
    } else {
        fs::rename(new, target)
    };
    result
        .and_then(|()| sync_dir(parent))
        .map_err(|e| Error::io("cannot swap in", target, e))
}

/// renameat2(RENAME_EXCHANGE): both names stay, their contents trade places at once.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use nix::libc;
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both paths are NUL-terminated C strings that outlive the call; the
    // syscall only reads them. Called directly: musl's wrapper may be missing.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            chown_tree(&entry.path(), uid, gid)?;
        } else {
            std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

/// `.NAME.fleet-agent-WHAT` beside a path (one filesystem, so renames are atomic).
fn beside(path: &Path, what: &str) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.fleet-agent-{what}"))
}

fn device_beside(device_path: &Path, what: &str) -> PathBuf {
    beside(device_path, what)
}

fn shown(f: &Fetch) -> &str {
    &f.shown
}

/// Streams the URL into `part`, resuming after what is there (HTTP Range); returns the
/// sha256 of the whole file.
fn fetch(f: &Fetch, part: &Path) -> Result<String> {
    let failed = |e: String| Error::Other(format!("download {}: {e}", shown(f)));
    let have = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(crate::tls::config())
        .http_status_as_error(false)
        .timeout_connect(Some(f.timeout))
        .timeout_per_read(Some(f.timeout))
        .timeout_recv_response(Some(f.timeout))
        .build()
        .into();
    let mut request = agent.get(&f.url);
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let response = request.call().map_err(|e| failed(e.to_string()))?;
    let status = response.status().as_u16();
    let resumed = match status {
        206 if have > 0 && content_range_start(&response) == Some(have) => true,
        200..=299 => false,
        // The part is already whole (or not this file): its hash decides.
        416 if have > 0 => return hash_file(part),
        _ => return Err(failed(format!("HTTP {status}"))),
    };
    if resumed {
        log::info!("download {}: resuming at {have} bytes", shown(f));
    }
    let mut body = response.into_body().into_reader();
    stream(&mut body, part, resumed).map_err(|e| failed(e.to_string()))
}

fn content_range_start(r: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    let v = r.headers().get("content-range")?.to_str().ok()?;
    v.strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

fn hash_file(path: &Path) -> Result<String> {
    let file = fs::File::open(path).map_err(|e| Error::io("cannot read", path, e))?;
    sha256_copy(file, None).map_err(|e| Error::io("cannot read", path, e))
}

/// Appends the body to `part` (after hashing what is there) or replaces it; syncs it.
fn stream(body: &mut dyn Read, part: &Path, resumed: bool) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut out = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(!resumed)
        .mode(0o600)
        .open(part)?;
    let mut buf = vec![0u8; 64 * 1024];
    if resumed {
        loop {
            let n = out.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        out.seek(std::io::SeekFrom::End(0))?;
    }
    loop {
        let n = body.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    out.sync_all()?;
    Ok(hex(&hasher.finalize()))
}

/// The last component of a device path (a managed path always has one).
fn file_name(device_path: &Path) -> &std::ffi::OsStr {
    device_path.file_name().unwrap_or(std::ffi::OsStr::new("."))
}
