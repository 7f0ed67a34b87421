//! The one seam between fleet-agent and the machine it manages: a filesystem root
//! (`/` on a device, a directory in tests and image builds), the primitive reads and
//! changes that plan and apply use, and a command runner. Every write here is atomic:
//! a temporary file in the same directory, fsync, rename over the target, fsync of the
//! directory. Submodules: the accounts (passwd/group), apt and dpkg, systemd, commands.

pub(crate) mod accounts;
pub(crate) mod apt;
pub(crate) mod command;
mod facts;
pub(crate) mod fetch;
pub(crate) mod systemd;

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use std::sync::Arc;

use crate::error::{Error, Result};
use command::{Cmd, Exec, Output, Runner};

#[derive(Clone)]
pub(crate) struct Host {
    root: PathBuf,
    runner: Arc<dyn Runner>,
    /// Tests only: whether systemd manages the system, instead of looking.
    systemd: Option<bool>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("root", &self.root).finish()
    }
}

/// What is at a path right now, without following a final symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Existing {
    Missing,
    File { mode: u32, uid: u32, gid: u32 },
    Directory { mode: u32, uid: u32, gid: u32 },
    Symlink { target: PathBuf },
    Other,
}

impl Host {
    /// The machine at `root`, with real commands.
    pub(crate) fn new(root: impl Into<PathBuf>) -> Host {
        Host {
            root: root.into(),
            runner: Arc::new(command::System),
            systemd: None,
        }
    }

    /// The machine at `root` whose commands `runner` answers (tests).
    #[cfg(test)]
    pub(crate) fn with_runner(root: impl Into<PathBuf>, runner: Arc<dyn Runner>) -> Host {
        Host {
            root: root.into(),
            runner,
            systemd: None,
        }
    }

    /// Tests: pretend that systemd does (or does not) manage this system.
    #[cfg(test)]
    pub(crate) fn with_systemd(mut self, running: bool) -> Host {
        self.systemd = Some(running);
        self
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the host is the running system (root `/`), where services can be started.
    pub(crate) fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    /// Whether systemd manages the running system (not an image build, chroot or --root).
    pub(crate) fn systemd_running(&self) -> bool {
        self.systemd
            .unwrap_or_else(|| self.is_live() && Path::new("/run/systemd/system").is_dir())
    }

    /// Runs a command of the managed system: in a chroot of the root when `in_root` and
    /// the root is not `/`. Returns the exit code, stdout and stderr.
    pub(crate) fn run_status(&self, argv: &[&str], in_root: bool) -> Result<(i32, String, String)> {
        let chroot = (in_root && !self.is_live()).then_some(self.root.as_path());
        let out = self.runner.run(Cmd {
            argv,
            chroot,
            exec: None,
        })?;
        Ok((out.code, out.stdout, out.stderr))
    }

    /// Runs a fleet's own command (a `command` resource or one of its checks) on the
    /// managed system, chrooted under `--root`, with exactly the settings of `exec`.
    pub(crate) fn run_exec(&self, argv: &[&str], exec: &Exec) -> Result<Output> {
        let chroot = (!self.is_live()).then_some(self.root.as_path());
        self.runner.run(Cmd {
            argv,
            chroot,
            exec: Some(exec),
        })
    }

    /// Runs a command that must succeed; its stderr is kept in the error.
    pub(crate) fn run_output(&self, argv: &[&str], in_root: bool) -> Result<String> {
        let (code, stdout, stderr) = self.run_status(argv, in_root)?;
        if code != 0 {
            return Err(Error::Command {
                command: argv.join(" "),
                status: format!("exit code {code}"),
                stderr,
            });
        }
        Ok(stdout)
    }

    /// The real location of a device path (absolute, as the fleet repository names it).
    pub(crate) fn path(&self, device_path: &Path) -> PathBuf {
        let mut p = self.root.clone();
        for c in device_path.components() {
            if let Component::Normal(part) = c {
                p.push(part);
            }
        }
        p
    }

    pub(crate) fn inspect(&self, device_path: &Path) -> Result<Existing> {
        let real = self.path(device_path);
        match fs::symlink_metadata(&real) {
            Ok(m) => {
                let ft = m.file_type();
                let mode = m.mode() & 0o7777;
                Ok(if ft.is_symlink() {
                    let target = fs::read_link(&real)
                        .map_err(|e| Error::io("cannot read the link", &real, e))?;
                    Existing::Symlink { target }
                } else if ft.is_file() {
                    Existing::File {
                        mode,
                        uid: m.uid(),
                        gid: m.gid(),
                    }
                } else if ft.is_dir() {
                    Existing::Directory {
                        mode,
                        uid: m.uid(),
                        gid: m.gid(),
                    }
                } else {
                    Existing::Other
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Existing::Missing),
            // A parent that is a file: the target cannot exist.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOTDIR) => Ok(Existing::Missing),
            Err(e) => Err(Error::io("cannot inspect", &real, e)),
        }
    }

    /// The size of a file, None when there is nothing there.
    pub(crate) fn file_size(&self, device_path: &Path) -> Result<Option<u64>> {
        let real = self.path(device_path);
        match fs::metadata(&real) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("cannot inspect", &real, e)),
        }
    }

    pub(crate) fn read(&self, device_path: &Path) -> Result<Vec<u8>> {
        let real = self.path(device_path);
        fs::read(&real).map_err(|e| Error::io("cannot read", &real, e))
    }

    /// The device paths of a directory's entries.
    pub(crate) fn dir_entries(&self, device_path: &Path) -> Result<Vec<PathBuf>> {
        let real = self.path(device_path);
        let entries = fs::read_dir(&real).map_err(|e| Error::io("cannot list", &real, e))?;
        entries
            .map(|e| {
                e.map(|e| device_path.join(e.file_name()))
                    .map_err(|e| Error::io("cannot list", &real, e))
            })
            .collect()
    }

    /// Missing ancestors of a device path, outermost first.
    pub(crate) fn missing_parents(&self, device_path: &Path) -> Result<Vec<PathBuf>> {
        let mut missing = Vec::new();
        let mut cur = device_path.parent();
        while let Some(dir) = cur {
            if dir.as_os_str().is_empty() || dir == Path::new("/") {
                break;
            }
            match self.inspect(dir)? {
                Existing::Missing => missing.push(dir.to_path_buf()),
                _ => break,
            }
            cur = dir.parent();
        }
        missing.reverse();
        Ok(missing)
    }

    /// Writes a file atomically with its final mode and owner already set when it
    /// appears under its name: an interrupted write leaves the old file or none.
    pub(crate) fn write_file(
        &self,
        device_path: &Path,
        content: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        write_atomic(&self.path(device_path), content, mode, Some((uid, gid)))
    }

    pub(crate) fn set_metadata(
        &self,
        device_path: &Path,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        let real = self.path(device_path);
        let result = (|| -> std::io::Result<()> {
            std::os::unix::fs::lchown(&real, Some(uid), Some(gid))?;
            fs::set_permissions(&real, fs::Permissions::from_mode(mode))?;
            fs::File::open(&real)?.sync_all()
        })();
        result.map_err(|e| Error::io("cannot set mode and owner of", &real, e))
    }

    pub(crate) fn create_dir(
        &self,
        device_path: &Path,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        let real = self.path(device_path);
        let result = (|| -> std::io::Result<()> {
            match fs::create_dir(&real) {
                Ok(()) => {}
                // Repeating an interrupted run: the directory is already there.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && real.is_dir() => {}
                Err(e) => return Err(e),
            }
            std::os::unix::fs::lchown(&real, Some(uid), Some(gid))?;
            fs::set_permissions(&real, fs::Permissions::from_mode(mode))?;
            sync_dir(real.parent().unwrap_or(Path::new("/")))
        })();
        result.map_err(|e| Error::io("cannot create the directory", &real, e))
    }

    /// Creates or replaces a symlink atomically (a temporary link renamed over the path).
    pub(crate) fn symlink(&self, device_path: &Path, target: &Path) -> Result<()> {
        let real = self.path(device_path);
        let tmp = temp_name(&real);
        let result = (|| -> std::io::Result<()> {
            let _ = fs::remove_file(&tmp);
            std::os::unix::fs::symlink(target, &tmp)?;
            fs::rename(&tmp, &real)?;
            sync_dir(real.parent().unwrap_or(Path::new("/")))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(|e| Error::io("cannot create the symlink", &real, e))
    }

    /// Removes a file, symlink or (recursively) a directory. Already gone is success.
    pub(crate) fn remove(&self, device_path: &Path) -> Result<()> {
        let real = self.path(device_path);
        let result = match fs::symlink_metadata(&real) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&real),
            Ok(_) => fs::remove_file(&real),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => Err(e),
        };
        result
            .and_then(|()| sync_dir(real.parent().unwrap_or(Path::new("/"))))
            .map_err(|e| Error::io("cannot remove", &real, e))
    }
}

/// A temporary name beside the target, so that the final rename stays on one filesystem.
fn temp_name(real: &Path) -> PathBuf {
    let name = real
        .file_name()
        .unwrap_or(OsStr::new("file"))
        .to_string_lossy();
    real.with_file_name(format!(".{name}.fleet-agent-tmp"))
}

pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

trait OpenMode {
    fn mode_0600(&mut self) -> &mut Self;
}

impl OpenMode for fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

/// Writes a file atomically with its final mode (and owner) already set when it appears
/// under its name: an interrupted write leaves the old file or none, never a part.
pub(crate) fn write_atomic(
    path: &Path,
    content: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = temp_name(path);
    let result = (|| -> std::io::Result<()> {
        // A temporary file left by a run that was killed.
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode_0600()
            .open(&tmp)?;
        f.write_all(content)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|e| Error::io("cannot write", path, e))
}

impl Host {
    /// A marker file's content (trimmed); None when missing or empty.
    pub(crate) fn read_marker(&self, device_path: &Path) -> Result<Option<String>> {
        let marker = self.path(device_path);
        match fs::read_to_string(&marker) {
            Ok(s) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("cannot read", &marker, e)),
        }
    }

    /// Writes a fresh random marker (atomically, replacing any) and returns it.
    pub(crate) fn new_marker(&self, device_path: &Path) -> Result<String> {
        let marker = self.path(device_path);
        if let Some(dir) = marker.parent() {
            fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
        }
        let id = random_id();
        write_atomic(&marker, format!("{id}\n").as_bytes(), 0o644, None)?;
        Ok(id)
    }
}

/// 128 random bits in hex, for markers.
fn random_id() -> String {
    use std::io::Read;
    let mut random = [0u8; 16];
    if fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .is_err()
    {
        // No /dev/urandom (odd chroot): time and pid are unique enough for a marker.
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        return crate::digest::sha256_hex(seed.as_bytes())[..32].to_string();
    }
    crate::digest::hex(&random)
}
