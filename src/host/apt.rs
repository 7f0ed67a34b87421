//! apt and dpkg: the only place they are read or run. dpkg's status file is read
//! directly (no lock, no command), so a run with nothing to change runs no apt command;
//! `apt-get -s` shows what a transaction would do; one transaction per run applies it.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::host::Host;

/// Seconds apt waits for a dpkg lock held by someone else before giving up.
pub(crate) const DPKG_LOCK_TIMEOUT_SECS: u32 = 120;

/// A package to install: its name and an exact version or a glob (`1.2.*`).
pub(crate) type Install = (String, Option<String>);

/// A package as dpkg records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Installed {
    pub(crate) version: String,
    /// dpkg's selection: install, hold, deinstall, purge.
    pub(crate) want: String,
    /// dpkg's state: installed, half-installed, unpacked, config-files, ...
    pub(crate) state: String,
}

impl Installed {
    pub(crate) fn is_installed(&self) -> bool {
        self.state == "installed"
    }

    /// Present in any form other than "removed, configuration kept".
    pub(crate) fn is_present(&self) -> bool {
        !matches!(self.state.as_str(), "not-installed" | "config-files")
    }

    pub(crate) fn held(&self) -> bool {
        self.want == "hold"
    }
}

/// dpkg's status file, read directly: no dpkg lock, no command.
pub(crate) fn dpkg_status(host: &Host) -> Result<HashMap<String, Installed>> {
    // Read like any managed path: never through a link out of the root.
    Ok(
        match host.read_optional(Path::new("/var/lib/dpkg/status"))? {
            Some(bytes) => parse_status(&String::from_utf8_lossy(&bytes)),
            None => HashMap::new(),
        },
    )
}

/// The Debian architecture of the managed system: the `Architecture:` of dpkg itself in
/// dpkg's status file (None without one).
pub(crate) fn dpkg_architecture(host: &Host) -> Result<Option<String>> {
    let path = host.path(Path::new("/var/lib/dpkg/status"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("cannot read dpkg's status", &path, e)),
    };
    let start = if text.starts_with("Package: dpkg\n") {
        Some(0)
    } else {
        text.find("\nPackage: dpkg\n")
    };
    Ok(start.and_then(|i| {
        let para = &text[i..];
        let para = &para[..para[1..].find("\n\n").map_or(para.len(), |e| e + 1)];
        para.lines()
            .find_map(|l| l.strip_prefix("Architecture: "))
            .map(|a| a.trim().to_string())
    }))
}

fn parse_status(text: &str) -> HashMap<String, Installed> {
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
    out
}

/// How long ago apt last refreshed its lists (None: there are none). The lists
/// directory changes at every `apt-get update`; the list files themselves carry the
/// server's dates (apt keeps its Last-Modified), which say nothing about the refresh.
pub(crate) fn lists_age(host: &Host) -> Option<Duration> {
    let dir = host.path(Path::new(LISTS));
    let any_list = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with("Packages") || name.ends_with("Release")
        });
    if !any_list {
        return None;
    }
    let refreshed = std::fs::metadata(&dir).ok()?.modified().ok()?;
    Some(
        SystemTime::now()
            .duration_since(refreshed)
            .unwrap_or_default(),
    )
}

const LISTS: &str = "/var/lib/apt/lists";
/// Where apt's sources and keys live: a change to any of them (a file written, changed
/// or removed changes its directory too) makes the lists stale.
const SOURCES: [&str; 5] = [
    "/etc/apt/sources.list",
    "/etc/apt/sources.list.d",
    "/etc/apt/keyrings",
    "/etc/apt/trusted.gpg",
    "/etc/apt/trusted.gpg.d",
];

/// Whether apt's sources or keys changed after the lists were last refreshed (by hand,
/// or a refresh that failed part way: see `update`).
pub(crate) fn sources_newer_than_lists(host: &Host) -> bool {
    let modified = |p: &Path| std::fs::symlink_metadata(p).ok()?.modified().ok();
    let Some(refreshed) = modified(&host.path(Path::new(LISTS))) else {
        return true;
    };
    let mut newest = None;
    for s in SOURCES {
        let p = host.path(Path::new(s));
        newest = newest.max(modified(&p));
        for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
            newest = newest.max(modified(&e.path()));
        }
    }
    newest.is_some_and(|n| n > refreshed)
}

/// Whether this root has apt (an image being built may not).
pub(crate) fn has_apt(host: &Host) -> bool {
    host.path(Path::new("/usr/bin/apt-get")).exists()
}

/// Whether a declared version is a glob (`1.2.*`) rather than an exact version.
pub(crate) fn is_glob(version: &str) -> bool {
    version.contains(['*', '?', '['])
}

/// An exact version, or a glob such as `1.2*`.
pub(crate) fn version_matches(installed: &str, wanted: &str) -> bool {
    if is_glob(wanted) {
        glob_match::glob_match(wanted, installed)
    } else {
        installed == wanted
    }
}

/// Versions apt knows for a package, from the local lists (`apt-cache madison`), most
/// preferred first.
fn candidate_versions(host: &Host, package: &str) -> Result<Vec<String>> {
    let out = host.run_output(&["apt-cache", "madison", "--", package], true)?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('|').map(str::trim).collect();
            (cols.len() >= 2 && cols[0] == package).then(|| cols[1].to_string())
        })
        .collect())
}

/// apt's candidate version of each package (`apt-cache policy`, from the local lists);
/// a package without one is left out.
pub(crate) fn candidates(host: &Host, names: &[&str]) -> Result<HashMap<String, String>> {
    let mut argv = vec!["apt-cache", "policy", "--"];
    argv.extend(names);
    let out = host.run_output(&argv, true)?;
    Ok(parse_policy(&out))
}

fn parse_policy(out: &str) -> HashMap<String, String> {
    let mut found = HashMap::new();
    let mut current: Option<String> = None;
    for line in out.lines() {
        if !line.starts_with(' ') {
            current = line
                .strip_suffix(':')
                .map(|n| n.split(':').next().unwrap_or(n).to_string());
        } else if let (Some(name), Some(c)) = (&current, line.trim().strip_prefix("Candidate: ")) {
            if c != "(none)" {
                found.insert(name.clone(), c.to_string());
            }
        }
    }
    found
}

/// The most preferred version of the lists that matches a glob.
pub(crate) fn resolve_glob(host: &Host, name: &str, glob: &str) -> Result<Option<String>> {
    Ok(candidate_versions(host, name)?
        .into_iter()
        .find(|v| version_matches(v, glob)))
}

/// The apt-get arguments: `name`, `name=version` (globs resolved against the lists),
/// `name-` for removal. `lenient`: a glob that matches nothing yet stays unresolved
/// (the lists are refreshed before the transaction).
pub(crate) fn specs(
    host: &Host,
    install: &[Install],
    remove: &[String],
    lenient: bool,
) -> Result<Vec<String>> {
    let mut specs = Vec::new();
    for (name, version) in install {
        match version {
            None => specs.push(name.clone()),
            Some(v) if is_glob(v) => match resolve_glob(host, name, v)? {
                Some(exact) => specs.push(format!("{name}={exact}")),
                None if lenient => specs.push(name.clone()),
                None => {
                    return Err(Error::Other(format!(
                        "no version of {name} matching `{v}` is in the package lists (apt-cache madison {name})"
                    )))
                }
            },
            Some(v) => specs.push(format!("{name}={v}")),
        }
    }
    specs.extend(remove.iter().map(|n| format!("{n}-")));
    Ok(specs)
}

fn lock_timeout() -> String {
    format!("DPkg::Lock::Timeout={DPKG_LOCK_TIMEOUT_SECS}")
}

/// Refreshes apt's package lists, waiting a bounded time for a dpkg lock. apt exits 0
/// when it could not fetch a source (it warns, and keeps the old lists or none): that
/// is a failure here, naming each source and why, before a transaction meets lists
/// without the packages it needs ("Unable to locate package"). The lists it did
/// write look fresh, so the sources are marked newer than them: the next run with a
/// package change refreshes again.
pub(crate) fn update(host: &Host) -> Result<()> {
    let argv = ["apt-get", "update", "-q", "-o", &lock_timeout()];
    let (code, _, stderr) = host.run_status(&argv, true)?;
    let failed = fetch_failures(&stderr);
    if code == 0 && failed.is_empty() {
        return Ok(());
    }
    let sources = host.path(Path::new("/etc/apt/sources.list.d"));
    if let Err(e) = std::fs::File::open(&sources).and_then(|d| d.set_modified(SystemTime::now())) {
        log::warn!(
            "cannot mark the apt lists stale ({}): {e}",
            sources.display()
        );
    }
    if code != 0 {
        return Err(Error::Command {
            command: argv.join(" "),
            status: format!("exit code {code}"),
            stderr,
        });
    }
    Err(Error::Other(format!(
        "`apt-get update` could not fetch every source; no package was changed:\n  {}",
        failed.join("\n  ")
    )))
}

/// The sources `apt-get update` could not fetch, as `source: why`, from its `W:` and
/// `E:` lines (its summary line only when it names nothing else).
pub(crate) fn fetch_failures(stderr: &str) -> Vec<String> {
    let mut failed = Vec::new();
    let mut summary = None;
    for line in stderr.lines() {
        let Some(rest) = line
            .strip_prefix("W: ")
            .or_else(|| line.strip_prefix("E: "))
        else {
            continue;
        };
        if let Some(f) = rest.strip_prefix("Failed to fetch ") {
            failed.push(match f.split_once("  ") {
                Some((source, why)) => format!("{source}: {}", why.trim()),
                None => f.to_string(),
            });
        } else if let Some(g) = rest.strip_prefix("GPG error: ") {
            failed.push(g.to_string());
        } else if [
            "is not signed",
            "does not have a Release file",
            "Hash Sum mismatch",
        ]
        .iter()
        .any(|m| rest.contains(m))
        {
            failed.push(rest.to_string());
        } else if rest.starts_with("Some index files failed to download") || line.starts_with("E:")
        {
            summary = summary.or(Some(rest.to_string()));
        }
    }
    if failed.is_empty() {
        failed.extend(summary);
    }
    failed
}

/// What `apt-get -s install` says of a transaction: (exit code, stdout, stderr).
pub(crate) fn simulate(
    host: &Host,
    specs: &[String],
    recommends: bool,
) -> Result<(i32, String, String)> {
    let mut argv = vec!["apt-get", "-s", "-q", "-o", "Debug::NoLocking=1", "install"];
    if !recommends {
        argv.push("--no-install-recommends");
    }
    argv.push("--");
    argv.extend(specs.iter().map(String::as_str));
    host.run_status(&argv, true)
}

/// `apt-get -s` lines as plan details: install, upgrade, remove.
pub(crate) fn simulated(stdout: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in stdout.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Inst", name, old, new, ..] if old.starts_with('[') => out.push(format!(
                "upgrade {name} {} → {}",
                old.trim_matches(['[', ']']),
                new.trim_start_matches('(')
            )),
            ["Inst", name, new, ..] => {
                out.push(format!("install {name} {}", new.trim_start_matches('(')))
            }
            ["Remv", name, ver, ..] => {
                out.push(format!("remove {name} {}", ver.trim_matches(['[', ']'])))
            }
            ["Remv", name] => out.push(format!("remove {name}")),
            _ => {}
        }
    }
    out
}

/// The line of apt's stderr that says why: the last `E:` line, else the first line.
pub(crate) fn why(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("E:"))
        .or_else(|| stderr.lines().next())
        .unwrap_or("")
        .to_string()
}

/// One apt transaction: recover an interrupted dpkg first, wait a bounded time for a
/// dpkg lock held by someone else, keep locally edited conffiles (a role that owns a
/// conffile writes it after the packages phase anyway).
pub(crate) fn transaction(
    host: &Host,
    install: &[Install],
    remove: &[String],
    recommends: bool,
) -> Result<()> {
    let audit = host.run_output(&["dpkg", "--audit"], true)?;
    if !audit.trim().is_empty() {
        log::warn!(
            "dpkg was interrupted; running dpkg --configure -a first:\n{}",
            audit.trim_end()
        );
        host.run_output(
            &[
                "dpkg",
                "--force-confdef",
                "--force-confold",
                "--configure",
                "-a",
            ],
            true,
        )?;
    }
    let specs = specs(host, install, remove, false)?;
    let timeout = lock_timeout();
    let mut argv = vec![
        "apt-get",
        "install",
        "-y",
        "-q",
        "-o",
        &timeout,
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
        "--allow-downgrades",
    ];
    if !recommends {
        argv.push("--no-install-recommends");
    }
    argv.push("--");
    argv.extend(specs.iter().map(String::as_str));
    host.run_output(&argv, true).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_simulation_lines_become_details() {
        let out = "NOTE: This is only a simulation!\nInst fleet-test-dep (1.0 local [all])\nInst fleet-test-hello [1.0] (1.1 local [all])\nConf fleet-test-dep (1.0 local [all])\nRemv old-thing [2.3]\n";
        assert_eq!(
            simulated(out),
            [
                "install fleet-test-dep 1.0",
                "upgrade fleet-test-hello 1.0 → 1.1",
                "remove old-thing 2.3"
            ]
        );
    }

    #[test]
    fn apt_update_warnings_name_each_source_and_why() {
        let stderr = "W: Failed to fetch http://127.0.0.1:9/dists/fleet-test/InRelease  Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)\nW: GPG error: http://127.0.0.1:8 fleet-test InRelease: The following signatures couldn't be verified because the public key is not available: NO_PUBKEY FFF9B47208DDCBA8\nW: http://deb.example/ Key is stored in legacy trusted.gpg keyring\nW: Some index files failed to download. They have been ignored, or old ones used instead.\n";
        assert_eq!(
            fetch_failures(stderr),
            [
                "http://127.0.0.1:9/dists/fleet-test/InRelease: Could not connect to 127.0.0.1:9 (127.0.0.1). - connect (111: Connection refused)",
                "http://127.0.0.1:8 fleet-test InRelease: The following signatures couldn't be verified because the public key is not available: NO_PUBKEY FFF9B47208DDCBA8",
            ]
        );
        assert!(fetch_failures(
            "W: http://deb.example/ Key is stored in legacy trusted.gpg keyring\n"
        )
        .is_empty());
        assert_eq!(
            fetch_failures(
                "E: The repository 'http://x bookworm Release' does not have a Release file.\n"
            ),
            ["The repository 'http://x bookworm Release' does not have a Release file."]
        );
    }

    #[test]
    fn apt_policy_gives_each_candidate() {
        let out = "hello:\n  Installed: 2.10-2\n  Candidate: 2.10-3\n  Version table:\n     2.10-3 500\nlibc6:arm64:\n  Installed: 2.36\n  Candidate: 2.36\nghost:\n  Installed: (none)\n  Candidate: (none)\n";
        let c = parse_policy(out);
        assert_eq!(c["hello"], "2.10-3");
        assert_eq!(c["libc6"], "2.36");
        assert!(!c.contains_key("ghost"));
    }

    #[test]
    fn versions_match_exactly_or_by_glob() {
        assert!(version_matches("1.1-2", "1.1-2"));
        assert!(!version_matches("1.1-2", "1.1"));
        assert!(version_matches("1.1-2", "1.1*"));
        assert!(!version_matches("1.10-1", "1.1-*"));
    }

    #[test]
    fn dpkg_status_keeps_the_present_entry_of_a_multiarch_package() {
        let status = parse_status(concat!(
            "Package: libc6\nStatus: install ok installed\nArchitecture: arm64\nVersion: 2.36\n\n",
            "Package: libc6\nStatus: deinstall ok config-files\nArchitecture: armhf\nVersion: 2.35\n\n",
            "Package: jq\nStatus: hold ok installed\nVersion: 1.6\n",
        ));
        assert_eq!(status["libc6"].version, "2.36");
        assert!(status["jq"].held() && status["jq"].is_installed());
    }
}
