//! Resolving a device path inside the root, component by component, so that no read or
//! change ever reaches outside it: the directory that holds a path is opened from a
//! directory fd of the root, and every later step works relative to that fd (openat,
//! renameat, unlinkat, ...), so nothing can be redirected between the check and the use.
//!
//! - Where the kernel has `openat2` (Linux 5.6), with `RESOLVE_IN_ROOT |
//!   RESOLVE_NO_MAGICLINKS`: the kernel treats the root as `/` for every link on the way.
//! - Otherwise an `O_NOFOLLOW` walk does the same by hand: each link on the way is read
//!   and resolved from the root (an absolute target) or from its directory, `..` never
//!   climbs above the root, and at most 40 links are followed (the kernel's limit).
//! - With `refuse_user_links` (the running system, root `/`), a link on the way is
//!   followed only when root alone could have planted it: the link and its directory
//!   belong to root and the directory is not writable by group or others. Otherwise the
//!   path is refused, naming the link (the classic attack through a service user's home).
//!
//! The last component of a path is never followed: callers act on it with `*at` calls
//! and `AT_SYMLINK_NOFOLLOW` / `O_NOFOLLOW`.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, readlinkat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, fstatat, Mode};

/// The kernel's limit of links followed in one resolution (MAXSYMLINKS).
const MAX_LINKS: usize = 40;

/// Why a path could not be resolved.
#[derive(Debug)]
pub(crate) enum Fail {
    Io(std::io::Error),
    /// A link on the way that a user other than root could have planted.
    Untrusted {
        link: PathBuf,
        target: PathBuf,
        why: String,
    },
}

impl From<Errno> for Fail {
    fn from(e: Errno) -> Fail {
        Fail::Io(e.into())
    }
}

impl Fail {
    /// The errno of an I/O failure.
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            Fail::Io(e) => e.raw_os_error(),
            Fail::Untrusted { .. } => None,
        }
    }
}

/// How links on the way are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Refuse a link that a user other than root could have planted (root `/`).
    pub(crate) refuse_user_links: bool,
    /// Tests: the O_NOFOLLOW walk even where the kernel has openat2.
    pub(crate) walk_only: bool,
}

/// Flags of a directory opened on the way: readable (so that it can be listed and
/// fsynced), close-on-exec.
fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC
}

/// Takes ownership of a fresh fd returned by a successful system call.
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open call and is owned by no one else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Opens the root directory itself (following links: the operator chose it).
pub(crate) fn open_root(root: &Path) -> std::io::Result<OwnedFd> {
    openat(None, root, dir_flags(), Mode::empty())
        .map(owned)
        .map_err(Into::into)
}

/// The components of a device path below `/`; `..` is refused.
pub(crate) fn components(device_path: &Path) -> Result<Vec<&OsStr>, Fail> {
    let mut out = Vec::new();
    for c in device_path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Fail::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "`..` in a device path",
                )))
            }
        }
    }
    Ok(out)
}

/// 0: not probed yet, 1: openat2 works, 2: it does not (old kernel, seccomp filter).
static OPENAT2: AtomicU8 = AtomicU8::new(0);

/// Opens the directory `dirs` (components below the root) inside the root.
pub(crate) fn open_dir(root: &OwnedFd, dirs: &[&OsStr], policy: Policy) -> Result<OwnedFd, Fail> {
    if dirs.is_empty() {
        return root.try_clone().map_err(Fail::Io);
    }
    if !policy.walk_only && OPENAT2.load(Ordering::Relaxed) != 2 {
        let rel = join(dirs);
        let mut resolve = ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS;
        if policy.refuse_user_links {
            // The common case, no link on the way, in one call; a link is checked below.
            resolve |= ResolveFlag::RESOLVE_NO_SYMLINKS;
        }
        let how = OpenHow::new().flags(dir_flags()).resolve(resolve);
        // EAGAIN: a rename raced with the resolution; the kernel asks to try again.
        for _ in 0..3 {
            match openat2(root.as_raw_fd(), rel.as_os_str(), how) {
                Ok(fd) => {
                    OPENAT2.store(1, Ordering::Relaxed);
                    return Ok(owned(fd));
                }
                Err(Errno::EAGAIN) => continue,
                Err(Errno::ELOOP) if policy.refuse_user_links => break,
                Err(Errno::ENOSYS | Errno::EPERM) if OPENAT2.load(Ordering::Relaxed) == 0 => {
                    OPENAT2.store(2, Ordering::Relaxed);
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    walk(root, dirs, policy)
}

fn join(parts: &[&OsStr]) -> PathBuf {
    parts.iter().collect()
}

/// The O_NOFOLLOW walk: each component opened from the one before, each link on the way
/// resolved by hand as if the root were `/`.
fn walk(root: &OwnedFd, dirs: &[&OsStr], policy: Policy) -> Result<OwnedFd, Fail> {
    // The directories entered so far below the root, with their names.
    let mut stack: Vec<(OwnedFd, OsString)> = Vec::new();
    let mut queue: VecDeque<OsString> = dirs.iter().map(|d| d.to_os_string()).collect();
    let mut links = 0;
    while let Some(name) = queue.pop_front() {
        if name.is_empty() || name == "." {
            continue;
        }
        if name == ".." {
            // At the root, `..` is the root itself.
            stack.pop();
            continue;
        }
        let here = stack.last().map(|(fd, _)| fd).unwrap_or(root);
        match openat(
            Some(here.as_raw_fd()),
            name.as_os_str(),
            dir_flags() | OFlag::O_NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => stack.push((owned(fd), name)),
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                let target = match readlinkat(Some(here.as_raw_fd()), name.as_os_str()) {
                    Ok(t) => PathBuf::from(t),
                    // Not a link: a file where a directory is needed.
                    Err(Errno::EINVAL) => return Err(Errno::ENOTDIR.into()),
                    Err(e) => return Err(e.into()),
                };
                links += 1;
                if links > MAX_LINKS {
                    return Err(Errno::ELOOP.into());
                }
                if policy.refuse_user_links {
                    let link = shown(&stack, &name);
                    trusted(here, &name, &link, &target)?;
                }
                if target.is_absolute() {
                    stack.clear();
                }
                let mut next: VecDeque<OsString> = target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(p) => Some(p.to_os_string()),
                        Component::ParentDir => Some("..".into()),
                        _ => None,
                    })
                    .collect();
                next.extend(queue);
                queue = next;
            }
            Err(e) => return Err(e.into()),
        }
    }
    match stack.pop() {
        Some((fd, _)) => Ok(fd),
        None => root.try_clone().map_err(Fail::Io),
    }
}

/// The device path of `name` in the directory at the top of the stack.
fn shown(stack: &[(OwnedFd, OsString)], name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from("/");
    for (_, n) in stack {
        p.push(n);
    }
    p.push(name);
    p
}

/// A link is followed on the running system only when root alone could have made it.
fn trusted(dir: &OwnedFd, name: &OsStr, link: &Path, target: &Path) -> Result<(), Fail> {
    let l = fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    let d = fstat(dir.as_raw_fd())?;
    let why = if d.st_uid != 0 {
        format!("its directory belongs to uid {}", d.st_uid)
    } else if d.st_mode & 0o022 != 0 {
        format!(
            "its directory is writable by group or others (mode {:04o})",
            d.st_mode & 0o7777
        )
    } else if l.st_uid != 0 {
        format!("the link belongs to uid {}", l.st_uid)
    } else {
        return Ok(());
    };
    Err(Fail::Untrusted {
        link: link.to_path_buf(),
        target: target.to_path_buf(),
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's release as (major, minor).
    fn kernel() -> (u32, u32) {
        let release = nix::sys::utsname::uname().unwrap();
        let r = release.release().to_string_lossy().into_owned();
        let mut parts = r.split(|c: char| !c.is_ascii_digit());
        let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        (next(), next())
    }

    #[test]
    fn openat2_is_used_where_the_kernel_has_it() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a/b")).unwrap();
        let root = open_root(tmp.path()).unwrap();
        let policy = Policy {
            refuse_user_links: false,
            walk_only: false,
        };
        open_dir(&root, &[OsStr::new("a"), OsStr::new("b")], policy).unwrap();
        if kernel() >= (5, 6) {
            assert_eq!(
                OPENAT2.load(Ordering::Relaxed),
                1,
                "Linux {:?} has openat2, yet it was not used",
                kernel()
            );
        }
    }
}
