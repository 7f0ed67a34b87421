//! Reads of the managed system's own records, for planning: dpkg's status database,
//! apt's package lists, /etc/passwd and /etc/group, and systemd's view of units. Reads
//! only; a failed read is an error, never "nothing installed".

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::host::Host;

/// A package as dpkg records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub version: String,
    /// dpkg's selection: install, hold, deinstall, purge.
    pub want: String,
    /// dpkg's state: installed, half-installed, unpacked, config-files, ...
    pub state: String,
}

impl Installed {
    pub fn is_installed(&self) -> bool {
        self.state == "installed"
    }

    /// Present in any form other than "removed, configuration kept".
    pub fn is_present(&self) -> bool {
        !matches!(self.state.as_str(), "not-installed" | "config-files")
    }

    pub fn held(&self) -> bool {
        self.want == "hold"
    }
}

/// dpkg's status file, read directly: no dpkg lock, no command.
pub fn dpkg_status(host: &Host) -> Result<HashMap<String, Installed>> {
    let path = host.path(Path::new("/var/lib/dpkg/status"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(Error::io("cannot read dpkg's status", &path, e)),
    };
    let mut out = HashMap::new();
    for para in text.split("\n\n") {
        let (mut name, mut version, mut status) = (None, String::new(), None);
        for line in para.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("Status: ") {
                let words: Vec<&str> = v.split_whitespace().collect();
                if words.len() == 3 {
                    status = Some((words[0].to_string(), words[2].to_string()));
                }
            }
        }
        if let (Some(name), Some((want, state))) = (name, status) {
            let entry = Installed {
                version,
                want,
                state,
            };
            // Multi-arch: keep the entry that is present.
            match out.get(&name) {
                Some(existing) if Installed::is_present(existing) => {}
                _ => {
                    out.insert(name, entry);
                }
            }
        }
    }
    Ok(out)
}

/// How old apt's package lists are (None: there are none).
pub fn apt_lists_age(host: &Host) -> Option<Duration> {
    let dir = host.path(Path::new("/var/lib/apt/lists"));
    let newest = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name().to_string_lossy().ends_with("Packages")
                || e.file_name().to_string_lossy().ends_with("Release")
        })
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()?;
    Some(SystemTime::now().duration_since(newest).unwrap_or_default())
}

/// Versions apt knows for a package, from the local lists (`apt-cache madison`), most
/// preferred first.
pub fn candidate_versions(host: &Host, package: &str) -> Result<Vec<String>> {
    let out = host.run_output(&["apt-cache", "madison", package], true)?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('|').map(str::trim).collect();
            (cols.len() >= 2 && cols[0] == package).then(|| cols[1].to_string())
        })
        .collect())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub id: u32,
    pub gid: u32,
    pub comment: String,
    pub home: String,
    pub shell: String,
    /// For groups: the member list.
    pub members: Vec<String>,
}

/// /etc/passwd (users) or /etc/group (groups) of the device.
pub fn accounts(host: &Host, db: &str) -> Result<HashMap<String, Account>> {
    let path = host.path(Path::new(db));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(Error::io("cannot read", &path, e)),
    };
    let mut out = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            continue;
        }
        let id = f[2].parse().unwrap_or(u32::MAX);
        let account = if db.ends_with("passwd") && f.len() >= 7 {
            Account {
                name: f[0].into(),
                id,
                gid: f[3].parse().unwrap_or(u32::MAX),
                comment: f[4].into(),
                home: f[5].into(),
                shell: f[6].into(),
                members: vec![],
            }
        } else {
            Account {
                name: f[0].into(),
                id,
                gid: id,
                comment: String::new(),
                home: String::new(),
                shell: String::new(),
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            }
        };
        out.insert(f[0].to_string(), account);
    }
    Ok(out)
}

/// `systemctl is-enabled`: enabled, disabled, masked, static, ... or "not-found".
pub fn unit_enablement(host: &Host, unit: &str) -> Result<String> {
    let mut argv = vec!["systemctl".to_string()];
    if !host.systemd_running() {
        argv.push(format!("--root={}", host.root().display()));
    }
    argv.extend(["is-enabled".to_string(), unit.to_string()]);
    let (code, stdout, stderr) =
        host.run_status(&argv.iter().map(String::as_str).collect::<Vec<_>>(), false)?;
    let word = stdout.trim().to_string();
    if word.is_empty()
        && (stderr.contains("No such file") || stderr.contains("not found") || code == 1)
    {
        return Ok("not-found".into());
    }
    Ok(word)
}

/// `systemctl is-active` (only where systemd runs).
pub fn unit_activity(host: &Host, unit: &str) -> Result<String> {
    let (_, stdout, _) = host.run_status(&["systemctl", "is-active", unit], false)?;
    Ok(stdout.trim().to_string())
}
