//! What the managed system is, for `device.facts`, and the secrets it holds. The root's
//! own files say what the installed system is (os-release, dpkg's architecture, hostname
//! and machine-id under `--root`); the running kernel says what the hardware is (kernel,
//! machine, memory, board model: under `--root`, those of the machine the agent runs on).
//! Each is read only when asked for.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::host::Host;

/// The largest secret read (a token, a key, a small certificate).
pub(crate) const SECRET_LIMIT: u64 = 64 * 1024;

/// A file of the running kernel (not under the root); None when it is not there.
fn kernel_file(path: &str) -> Result<Option<String>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(
            String::from_utf8_lossy(&b)
                .trim_end_matches(['\0', '\n', ' '])
                .to_string(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot read", path, e)),
    }
}

/// The Debian architecture of a kernel's machine name (for a system without dpkg).
fn debian_arch(machine: &str) -> Option<&'static str> {
    Some(match machine {
        "aarch64" | "arm64" => "arm64",
        "armv7l" | "armv6l" | "armv8l" => "armhf",
        "x86_64" => "amd64",
        "i686" | "i586" | "i386" => "i386",
        "riscv64" => "riscv64",
        _ => return None,
    })
}

impl Host {
    /// os-release of the managed system (/etc/os-release, else /usr/lib/os-release).
    pub(crate) fn os_release(&self) -> Result<HashMap<String, String>> {
        for p in ["/etc/os-release", "/usr/lib/os-release"] {
            let real = self.path(Path::new(p));
            match std::fs::read_to_string(&real) {
                Ok(text) => return Ok(parse_os_release(&text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("cannot read", &real, e)),
            }
        }
        Ok(HashMap::new())
    }

    /// The fact `name` (src/fleet/facts.rs lists them); None: the system has none.
    pub(crate) fn fact(&self, name: &str) -> Result<Option<String>> {
        let from_root = |p: &str| -> Result<Option<String>> {
            Ok(self
                .read_marker(Path::new(p))?
                .map(|s| s.lines().next().unwrap_or("").trim().to_string()))
        };
        Ok(match name {
            "os_id" => self.os_release()?.remove("ID"),
            "os_version" => self.os_release()?.remove("VERSION_ID"),
            "os_codename" => self.os_release()?.remove("VERSION_CODENAME"),
            "architecture" => match crate::host::apt::dpkg_architecture(self)? {
                Some(a) => Some(a),
                None => self
                    .fact("machine")?
                    .and_then(|m| debian_arch(&m).map(str::to_string)),
            },
            "machine" => Some(nix::sys::utsname::uname().map_err(|e| {
                Error::Other(format!("cannot ask the kernel for its machine: {e}"))
            })?)
            .map(|u| u.machine().to_string_lossy().into_owned()),
            "kernel" => kernel_file("/proc/sys/kernel/osrelease")?,
            "hostname" if self.is_live() => kernel_file("/proc/sys/kernel/hostname")?,
            "hostname" => from_root("/etc/hostname")?,
            "machine_id" => from_root("/etc/machine-id")?,
            "memory_mb" => kernel_file("/proc/meminfo")?.and_then(|m| {
                let kib: u64 = m
                    .lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()?;
                Some((kib / 1024).to_string())
            }),
            "model" => kernel_file("/proc/device-tree/model")?,
            _ => None,
        })
    }

    /// A device-held secret, `SECRETS_DIR/NAME` under the root: Ok(None) when there is
    /// none. It must be a regular file that only its owner can read (and, on the running
    /// system, owned by root), at most [`SECRET_LIMIT`] bytes of UTF-8; one final newline
    /// is not part of the value. Messages name the file, never its content.
    pub(crate) fn read_secret(&self, dir: &str, name: &str) -> Result<Option<String>> {
        let real = self.path(&Path::new(dir).join(name));
        let m = match std::fs::metadata(&real) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("cannot read the secret", &real, e)),
        };
        let refuse = |why: &str| Err(Error::Other(format!("{}: {why}", real.display())));
        if !m.is_file() {
            return refuse("a secret is a regular file");
        }
        if m.mode() & 0o077 != 0 {
            return refuse("a secret must be readable by its owner only (chmod 0600)");
        }
        if self.is_live() && m.uid() != 0 {
            return refuse("a secret must be owned by root");
        }
        if m.len() > SECRET_LIMIT {
            return refuse(&format!("a secret is at most {SECRET_LIMIT} bytes"));
        }
        let bytes =
            std::fs::read(&real).map_err(|e| Error::io("cannot read the secret", &real, e))?;
        let Ok(mut text) = String::from_utf8(bytes) else {
            return refuse("a secret must be UTF-8 text");
        };
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        Ok(Some(text))
    }
}

fn parse_os_release(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.replace("\\\"", "\"")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_values_lose_their_quotes() {
        let r = parse_os_release("PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n");
        assert_eq!(r["ID"], "debian");
        assert_eq!(r["VERSION_ID"], "12");
        assert_eq!(r["VERSION_CODENAME"], "bookworm");
    }

    #[test]
    fn machines_map_to_debian_architectures() {
        assert_eq!(debian_arch("aarch64"), Some("arm64"));
        assert_eq!(debian_arch("armv7l"), Some("armhf"));
        assert_eq!(debian_arch("x86_64"), Some("amd64"));
        assert_eq!(debian_arch("mips"), None);
    }
}
