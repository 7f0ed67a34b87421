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
mod resolve;
pub(crate) mod systemd;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};

use std::collections::HashMap;

use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{symlinkat, unlinkat, UnlinkatFlags};

use crate::error::{Error, Result};
use command::{Cmd, Exec, Output, Runner};
use resolve::{Fail, Policy};

#[derive(Clone)]
pub(crate) struct Host {
    root: PathBuf,
    /// The root directory, opened on first use: every path is resolved from it.
    root_fd: Arc<OnceLock<OwnedFd>>,
    /// How links on the way to a managed path are treated (src/host/resolve.rs).
    links: Policy,
    runner: Arc<dyn Runner>,
    /// Tests only: whether systemd manages the system, instead of looking.
    systemd: Option<bool>,
    /// Planning from a device's report (`plan --all`): what the report says is at these
    /// paths, in place of the scratch root's own metadata (whose owners cannot be set
    /// without root). The content is the scratch root's.
    recorded: Option<Arc<HashMap<PathBuf, Existing>>>,
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
        Host::with(root.into(), Arc::new(command::System))
    }

    fn with(root: PathBuf, runner: Arc<dyn Runner>) -> Host {
        // On the running system, users other than root own directories on the way to
        // managed paths (their homes): a link there is refused.
        let refuse_user_links = root == Path::new("/");
        Host {
            root,
            root_fd: Arc::new(OnceLock::new()),
            links: Policy {
                refuse_user_links,
                walk_only: false,
            },
            runner,
            systemd: None,
            recorded: None,
        }
    }

    /// A device as its report describes it (`plan --all`): a scratch root holding the
    /// content, the recorded metadata of managed paths, and a runner that answers
    /// from the report.
    pub(crate) fn from_report(
        root: impl Into<PathBuf>,
        runner: Arc<dyn Runner>,
        systemd: bool,
        recorded: HashMap<PathBuf, Existing>,
    ) -> Host {
        Host {
            systemd: Some(systemd),
            recorded: Some(Arc::new(recorded)),
            ..Host::with(root.into(), runner)
        }
    }

    /// The machine at `root` whose commands `runner` answers (tests).
    #[cfg(test)]
    pub(crate) fn with_runner(root: impl Into<PathBuf>, runner: Arc<dyn Runner>) -> Host {
        Host::with(root.into(), runner)
    }

    /// Tests: treat links on the way as on the running system (`refuse_user_links`),
    /// and resolve by the O_NOFOLLOW walk even where the kernel has openat2 (`walk_only`).
    #[cfg(test)]
    pub(crate) fn with_links(mut self, refuse_user_links: bool, walk_only: bool) -> Host {
        self.links = Policy {
            refuse_user_links,
            walk_only,
        };
        self
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

    /// The root directory, opened once.
    fn root_fd(&self) -> std::result::Result<&OwnedFd, Fail> {
        if let Some(fd) = self.root_fd.get() {
            return Ok(fd);
        }
        let fd = resolve::open_root(&self.root).map_err(Fail::Io)?;
        Ok(self.root_fd.get_or_init(|| fd))
    }

    /// A directory inside the root, resolved without leaving it.
    fn open_dir(&self, device_dir: &Path) -> std::result::Result<OwnedFd, Fail> {
        let dirs = resolve::components(device_dir)?;
        resolve::open_dir(self.root_fd()?, &dirs, self.links)
    }

    /// The directory that holds a device path (resolved inside the root) and its name
    /// there, which is never followed.
    fn at(&self, device_path: &Path) -> std::result::Result<At, Fail> {
        let mut parts = resolve::components(device_path)?;
        let Some(name) = parts.pop() else {
            return Err(Fail::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the root itself is not a managed path",
            )));
        };
        let dir = resolve::open_dir(self.root_fd()?, &parts, self.links)?;
        Ok(At {
            dir,
            name: name.to_os_string(),
        })
    }

    /// An error of a read or change of `device_path`.
    /// The directory that holds a device path, as a path on this machine, after the
    /// same resolution as every other change (no link out of the root, none a user can
    /// change on the running system): the path must name the very directory that the
    /// resolution opened. For the steps that work by path (a download placed or
    /// unpacked beside its target by the device's own tools); docs/security.md.
    pub(crate) fn verified_parent(&self, device_path: &Path) -> Result<PathBuf> {
        let at = self
            .at(device_path)
            .map_err(|f| self.fail("cannot write", device_path, f))?;
        let parent = self.path(device_path.parent().unwrap_or(Path::new("/")));
        let opened = nix::sys::stat::fstat(at.raw())
            .map_err(|e| self.fail("cannot inspect", device_path, e.into()))?;
        let by_path = fs::metadata(&parent).map_err(|e| Error::io("cannot inspect", &parent, e))?;
        use std::os::unix::fs::MetadataExt as _;
        if (by_path.dev(), by_path.ino()) != (opened.st_dev, opened.st_ino) {
            return Err(Error::Other(format!(
                "cannot write {}: {} is not the directory it resolves to inside the root (a link on the way)",
                device_path.display(),
                parent.display()
            )));
        }
        Ok(parent)
    }

    fn fail(&self, context: &str, device_path: &Path, f: Fail) -> Error {
        match f {
            Fail::Io(e) => Error::io(context, self.path(device_path), e),
            Fail::Untrusted { link, target, why } => Error::Other(format!(
                "{context} {}: the symlink {} → {} on the way is not followed: {why}, and on the running system only links that root alone can change are followed",
                device_path.display(),
                link.display(),
                target.display()
            )),
        }
    }

    pub(crate) fn inspect(&self, device_path: &Path) -> Result<Existing> {
        if let Some(e) = self.recorded.as_ref().and_then(|r| r.get(device_path)) {
            return Ok(e.clone());
        }
        let at = match self.at(device_path) {
            Ok(at) => at,
            Err(f) if missing(&f) => return Ok(Existing::Missing),
            Err(f) => return Err(self.fail("cannot inspect", device_path, f)),
        };
        let st = match fstatat(
            Some(at.raw()),
            at.name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(Existing::Missing),
            Err(e) => return Err(self.fail("cannot inspect", device_path, e.into())),
        };
        let mode = st.st_mode & 0o7777;
        let (uid, gid) = (st.st_uid, st.st_gid);
        Ok(match st.st_mode & SFlag::S_IFMT.bits() {
            t if t == SFlag::S_IFLNK.bits() => {
                let target = readlinkat(Some(at.raw()), at.name.as_os_str())
                    .map_err(|e| self.fail("cannot read the link", device_path, e.into()))?;
                Existing::Symlink {
                    target: target.into(),
                }
            }
            t if t == SFlag::S_IFREG.bits() => Existing::File { mode, uid, gid },
            t if t == SFlag::S_IFDIR.bits() => Existing::Directory { mode, uid, gid },
            _ => Existing::Other,
        })
    }

    /// The size of a regular file, None when there is nothing there.
    pub(crate) fn file_size(&self, device_path: &Path) -> Result<Option<u64>> {
        if self.inspect(device_path)? == Existing::Missing {
            return Ok(None);
        }
        let f = self.open(device_path)?;
        let meta = f
            .metadata()
            .map_err(|e| self.fail("cannot inspect", device_path, Fail::Io(e)))?;
        Ok(Some(meta.len()))
    }

    /// Opens what is at a device path (never a link), for reading or metadata changes.
    fn open_final(&self, at: &At) -> nix::Result<fs::File> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = openat(Some(at.raw()), at.name.as_os_str(), flags, Mode::empty())?;
        // SAFETY: a fresh fd from a successful openat, owned by no one else.
        Ok(fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// A regular file's content.
    pub(crate) fn read(&self, device_path: &Path) -> Result<Vec<u8>> {
        let mut file = self.open(device_path)?;
        let mut content = Vec::new();
        file.read_to_end(&mut content)
            .map_err(|e| self.fail("cannot read", device_path, Fail::Io(e)))?;
        Ok(content)
    }

    /// A regular file's content, or None when there is nothing at the path.
    pub(crate) fn read_optional(&self, device_path: &Path) -> Result<Option<Vec<u8>>> {
        match self.inspect(device_path)? {
            Existing::Missing => Ok(None),
            _ => self.read(device_path).map(Some),
        }
    }

    /// The device paths of a directory's entries.
    pub(crate) fn dir_entries(&self, device_path: &Path) -> Result<Vec<PathBuf>> {
        let fail = |f: Fail| self.fail("cannot list", device_path, f);
        let at = self.at(device_path).map_err(fail)?;
        let flags = dir_flags() | OFlag::O_NOFOLLOW;
        let fd = openat(Some(at.raw()), at.name.as_os_str(), flags, Mode::empty())
            .map_err(|e| fail(e.into()))?;
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(|e| fail(e.into()))?;
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| fail(e.into()))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name != "." && name != ".." {
                out.push(device_path.join(name));
            }
        }
        Ok(out)
    }

    /// Missing ancestors of a device path, outermost first. An existing ancestor that is
    /// a link must lead to a directory inside the root.
    pub(crate) fn missing_parents(&self, device_path: &Path) -> Result<Vec<PathBuf>> {
        let mut missing = Vec::new();
        let mut cur = device_path.parent();
        while let Some(dir) = cur {
            if dir.as_os_str().is_empty() || dir == Path::new("/") {
                break;
            }
            match self.inspect(dir)? {
                Existing::Missing => missing.push(dir.to_path_buf()),
                Existing::Symlink { target } => {
                    if let Err(f) = self.open_dir(dir) {
                        return Err(match f {
                            Fail::Io(_) => Error::Other(format!(
                                "cannot create {}: its parent {} is a symlink to {}, which does not lead to a directory inside the root",
                                device_path.display(),
                                dir.display(),
                                target.display()
                            )),
                            untrusted => self.fail("cannot create", device_path, untrusted),
                        });
                    }
                    break;
                }
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
        self.write_file_from(device_path, &mut &content[..], mode, uid, gid)
    }

    /// Writes a file atomically from a stream (a file of the fleet repository, held
    /// whole nowhere), as `write_file` does from memory.
    pub(crate) fn write_file_from(
        &self,
        device_path: &Path,
        content: &mut dyn std::io::Read,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        let at = self
            .at(device_path)
            .map_err(|f| self.fail("cannot write", device_path, f))?;
        write_at(&at, content, mode, Some((uid, gid)))
            .map_err(|e| self.fail("cannot write", device_path, Fail::Io(e)))
    }

    /// Opens a regular file for reading as a stream (hashing a large file without
    /// holding it), resolved inside the root as `read` does.
    pub(crate) fn open(&self, device_path: &Path) -> Result<fs::File> {
        let fail = |f: Fail| self.fail("cannot read", device_path, f);
        let at = self.at(device_path).map_err(fail)?;
        let file = self.open_final(&at).map_err(|e| fail(e.into()))?;
        let meta = file.metadata().map_err(|e| fail(Fail::Io(e)))?;
        if !meta.is_file() {
            return Err(fail(Fail::Io(std::io::Error::other("not a regular file"))));
        }
        Ok(file)
    }

    pub(crate) fn set_metadata(
        &self,
        device_path: &Path,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        let context = "cannot set mode and owner of";
        let at = self
            .at(device_path)
            .map_err(|f| self.fail(context, device_path, f))?;
        let result = (|| -> std::io::Result<()> {
            let file = self.open_final(&at)?;
            let meta = file.metadata()?;
            if !meta.is_file() && !meta.is_dir() {
                return Err(std::io::Error::other("not a file or directory"));
            }
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            file.sync_all()
        })();
        result.map_err(|e| self.fail(context, device_path, Fail::Io(e)))
    }

    pub(crate) fn create_dir(
        &self,
        device_path: &Path,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        let context = "cannot create the directory";
        let at = self
            .at(device_path)
            .map_err(|f| self.fail(context, device_path, f))?;
        make_dir_at(&at, mode, Some((uid, gid)))
            .map_err(|e| self.fail(context, device_path, Fail::Io(e)))
    }

    /// Creates or replaces a symlink atomically (a temporary link renamed over the path).
    pub(crate) fn symlink(&self, device_path: &Path, target: &Path) -> Result<()> {
        let context = "cannot create the symlink";
        let at = self
            .at(device_path)
            .map_err(|f| self.fail(context, device_path, f))?;
        let tmp = temp_name(&at.name);
        let result = (|| -> nix::Result<()> {
            let _ = unlinkat(Some(at.raw()), tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
            symlinkat(target, Some(at.raw()), tmp.as_os_str())?;
            renameat(
                Some(at.raw()),
                tmp.as_os_str(),
                Some(at.raw()),
                at.name.as_os_str(),
            )?;
            nix::unistd::fsync(at.raw())
        })();
        if result.is_err() {
            let _ = unlinkat(Some(at.raw()), tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
        result.map_err(|e| self.fail(context, device_path, e.into()))
    }

    /// Removes a file, symlink or (recursively) a directory. Already gone is success.
    pub(crate) fn remove(&self, device_path: &Path) -> Result<()> {
        let at = match self.at(device_path) {
            Ok(at) => at,
            Err(f) if missing(&f) => return Ok(()),
            Err(f) => return Err(self.fail("cannot remove", device_path, f)),
        };
        let result = (|| -> nix::Result<()> {
            let st = match fstatat(
                Some(at.raw()),
                at.name.as_os_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(st) => st,
                Err(Errno::ENOENT) => return Ok(()),
                Err(e) => return Err(e),
            };
            if st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits() {
                remove_tree(at.raw(), &at.name)?;
            } else {
                unlinkat(
                    Some(at.raw()),
                    at.name.as_os_str(),
                    UnlinkatFlags::NoRemoveDir,
                )?;
            }
            nix::unistd::fsync(at.raw())
        })();
        result.map_err(|e| self.fail("cannot remove", device_path, e.into()))
    }
}

/// An open directory inside the root and a name in it.
struct At {
    dir: OwnedFd,
    name: OsString,
}

impl At {
    fn raw(&self) -> RawFd {
        self.dir.as_raw_fd()
    }
}

/// Whether a resolution failed because something on the way is missing (or is a file).
fn missing(f: &Fail) -> bool {
    matches!(f.errno(), Some(nix::libc::ENOENT | nix::libc::ENOTDIR))
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC
}

/// Writes `at` atomically: a temporary file beside it (never following a link), its
/// content, owner and mode, fsync, rename over the name, fsync of the directory.
fn write_at(
    at: &At,
    content: &mut dyn Read,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<()> {
    let tmp = temp_name(&at.name);
    // A temporary file left by a run that was killed.
    let _ = unlinkat(Some(at.raw()), tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(
        Some(at.raw()),
        tmp.as_os_str(),
        flags,
        Mode::from_bits_truncate(0o600),
    )?;
    // SAFETY: a fresh fd from a successful openat, owned by no one else.
    let mut f = fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let result = (|| -> std::io::Result<()> {
        // Through a fixed buffer: a file of the fleet repository is never held whole.
        std::io::copy(content, &mut f)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        renameat(
            Some(at.raw()),
            tmp.as_os_str(),
            Some(at.raw()),
            at.name.as_os_str(),
        )?;
        Ok(nix::unistd::fsync(at.raw())?)
    })();
    if result.is_err() {
        let _ = unlinkat(Some(at.raw()), tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
    }
    result
}

/// Creates a directory (already there is fine, a link there is not) with its mode and owner.
fn make_dir_at(at: &At, mode: u32, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    match mkdirat(
        Some(at.raw()),
        at.name.as_os_str(),
        Mode::from_bits_truncate(0o700),
    ) {
        // Repeating an interrupted run: the directory is already there.
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let flags = dir_flags() | OFlag::O_NOFOLLOW;
    let fd = openat(Some(at.raw()), at.name.as_os_str(), flags, Mode::empty())?;
    // SAFETY: a fresh fd from a successful openat, owned by no one else.
    let dir = fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&dir, Some(uid), Some(gid))?;
    }
    dir.set_permissions(fs::Permissions::from_mode(mode))?;
    Ok(nix::unistd::fsync(at.raw())?)
}

/// Removes the directory `name` in `parent` and everything in it, never following a link.
fn remove_tree(parent: RawFd, name: &OsStr) -> nix::Result<()> {
    let flags = dir_flags() | OFlag::O_NOFOLLOW;
    let fd = openat(Some(parent), name, flags, Mode::empty())?;
    let mut dir = nix::dir::Dir::from_fd(fd)?;
    let mut entries = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let n = OsStr::from_bytes(entry.file_name().to_bytes());
        if n != "." && n != ".." {
            entries.push((n.to_os_string(), entry.file_type()));
        }
    }
    let raw = dir.as_raw_fd();
    for (n, kind) in entries {
        let is_dir = match kind {
            Some(t) => t == nix::dir::Type::Directory,
            None => {
                let st = fstatat(Some(raw), n.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
                st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits()
            }
        };
        let removed = if is_dir {
            remove_tree(raw, &n)
        } else {
            unlinkat(Some(raw), n.as_os_str(), UnlinkatFlags::NoRemoveDir)
        };
        match removed {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    drop(dir);
    unlinkat(Some(parent), name, UnlinkatFlags::RemoveDir)
}

/// A temporary name beside a name, so that the final rename stays in one directory.
fn temp_name(name: &OsStr) -> OsString {
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(".fleet-agent-tmp");
    tmp
}

/// Creates the agent's own directory (the state directory, the clone) readable by root
/// alone: missing parents as usual (0755), the directory itself 0700. One that exists
/// with group or other bits (an older agent made it 0755) is tightened: it holds the
/// clone of the branch, secrets included.
pub(crate) fn private_dir(dir: &Path) -> Result<()> {
    let made = (|| -> std::io::Result<()> {
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent)?;
        }
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let meta = fs::metadata(dir)?;
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    })();
    made.map_err(|e| Error::io("cannot create the state directory", dir, e))
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
    let tmp = path.with_file_name(temp_name(path.file_name().unwrap_or(OsStr::new("file"))));
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
        Ok(self
            .read_optional(device_path)?
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .filter(|s| !s.is_empty()))
    }

    /// Writes a fresh random marker (atomically, replacing any) and returns it; missing
    /// directories on the way are created (0755).
    pub(crate) fn new_marker(&self, device_path: &Path) -> Result<String> {
        for dir in self.missing_parents(device_path)? {
            let at = self
                .at(&dir)
                .map_err(|f| self.fail("cannot create", &dir, f))?;
            make_dir_at(&at, 0o755, None)
                .map_err(|e| self.fail("cannot create", &dir, Fail::Io(e)))?;
        }
        let id = random_id();
        let at = self
            .at(device_path)
            .map_err(|f| self.fail("cannot write", device_path, f))?;
        write_at(&at, &mut format!("{id}\n").as_bytes(), 0o644, None)
            .map_err(|e| self.fail("cannot write", device_path, Fail::Io(e)))?;
        Ok(id)
    }
}

/// 128 random bits in hex, for markers.
pub(crate) fn random_id() -> String {
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
