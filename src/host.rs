//! The one seam between fleet-agent and the machine it manages: a filesystem root
//! (`/` on a device, a directory in tests and image builds) plus the primitive reads and
//! changes the plan and apply stages use. Every write here is atomic: a temporary file
//! in the same directory, fsync, rename over the target, fsync of the directory.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
}

/// What is at a path right now, without following a final symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Existing {
    Missing,
    File { mode: u32, uid: u32, gid: u32 },
    Directory { mode: u32, uid: u32, gid: u32 },
    Symlink { target: PathBuf },
    Other,
}

impl Host {
    pub fn new(root: impl Into<PathBuf>) -> Host {
        Host { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the host is the running system (root `/`), where services can be started.
    pub fn is_live(&self) -> bool {
        self.root == Path::new("/")
    }

    /// Whether systemd manages the running system (not an image build, chroot or --root).
    pub fn systemd_running(&self) -> bool {
        self.is_live() && Path::new("/run/systemd/system").is_dir()
    }

    /// Runs a command of the managed system: in a chroot of the root when `in_root` and
    /// the root is not `/`. Returns the exit code, stdout and stderr.
    pub fn run_status(&self, argv: &[&str], in_root: bool) -> Result<(i32, String, String)> {
        let mut cmd = if in_root && !self.is_live() {
            let mut c = std::process::Command::new("chroot");
            c.arg(&self.root).args(argv);
            c
        } else {
            let mut c = std::process::Command::new(argv[0]);
            c.args(&argv[1..]);
            c
        };
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null());
        let out = cmd.output().map_err(|e| Error::Command {
            command: argv.join(" "),
            status: format!("cannot run: {e}"),
            stderr: String::new(),
        })?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Runs a command that must succeed; its stderr is kept in the error.
    pub fn run_output(&self, argv: &[&str], in_root: bool) -> Result<String> {
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
    pub fn path(&self, device_path: &Path) -> PathBuf {
        let mut p = self.root.clone();
        for c in device_path.components() {
            if let Component::Normal(part) = c {
                p.push(part);
            }
        }
        p
    }

    pub fn inspect(&self, device_path: &Path) -> Result<Existing> {
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

    pub fn read(&self, device_path: &Path) -> Result<Vec<u8>> {
        let real = self.path(device_path);
        fs::read(&real).map_err(|e| Error::io("cannot read", &real, e))
    }

    pub fn dir_is_empty(&self, device_path: &Path) -> Result<bool> {
        let real = self.path(device_path);
        let mut entries = fs::read_dir(&real).map_err(|e| Error::io("cannot list", &real, e))?;
        Ok(entries.next().is_none())
    }

    /// Missing ancestors of a device path, outermost first.
    pub fn missing_parents(&self, device_path: &Path) -> Result<Vec<PathBuf>> {
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
    pub fn write_file(
        &self,
        device_path: &Path,
        content: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        write_atomic(&self.path(device_path), content, mode, Some((uid, gid)))
    }

    pub fn set_metadata(&self, device_path: &Path, mode: u32, uid: u32, gid: u32) -> Result<()> {
        let real = self.path(device_path);
        let result = (|| -> std::io::Result<()> {
            std::os::unix::fs::lchown(&real, Some(uid), Some(gid))?;
            fs::set_permissions(&real, fs::Permissions::from_mode(mode))?;
            fs::File::open(&real)?.sync_all()
        })();
        result.map_err(|e| Error::io("cannot set mode and owner of", &real, e))
    }

    pub fn create_dir(&self, device_path: &Path, mode: u32, uid: u32, gid: u32) -> Result<()> {
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
    pub fn symlink(&self, device_path: &Path, target: &Path) -> Result<()> {
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
    pub fn remove(&self, device_path: &Path) -> Result<()> {
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

    /// Looks a user up in the device's own /etc/passwd (not the agent's NSS: under
    /// `--root` the device is not the machine the agent runs on).
    pub fn uid(&self, name: &str) -> Result<Option<u32>> {
        self.lookup_id("/etc/passwd", name)
    }

    pub fn gid(&self, name: &str) -> Result<Option<u32>> {
        self.lookup_id("/etc/group", name)
    }

    pub fn user_name(&self, uid: u32) -> Option<String> {
        self.lookup_name("/etc/passwd", uid)
    }

    pub fn group_name(&self, gid: u32) -> Option<String> {
        self.lookup_name("/etc/group", gid)
    }

    fn lookup_id(&self, db: &str, name: &str) -> Result<Option<u32>> {
        if let Ok(id) = name.parse::<u32>() {
            return Ok(Some(id));
        }
        // root exists on every Debian system, also in a not yet populated image root.
        if name == "root" {
            return Ok(Some(0));
        }
        let real = self.path(Path::new(db));
        let text = match fs::read_to_string(&real) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("cannot read", &real, e)),
        };
        Ok(text.lines().find_map(|line| {
            let mut fields = line.split(':');
            (fields.next() == Some(name)).then(|| fields.nth(1).and_then(|id| id.parse().ok()))?
        }))
    }

    fn lookup_name(&self, db: &str, id: u32) -> Option<String> {
        let text = fs::read_to_string(self.path(Path::new(db))).unwrap_or_default();
        text.lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.len() > 2 && fields[2].parse() == Ok(id)).then(|| fields[0].to_string())
            })
            .or_else(|| (id == 0).then(|| "root".to_string()))
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

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
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
pub fn write_atomic(
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
