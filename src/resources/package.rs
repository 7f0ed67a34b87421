//! `package`: present, absent, latest, or pinned (an exact version or a glob), as one
//! apt transaction per run. Planned as a phase, from dpkg's status file (read directly,
//! so a run with nothing to change runs no apt command); when something must change,
//! `apt-get -s` shows what apt will resolve, and `apt-get update` runs first when the
//! sources changed or the lists are stale. `latest` asks apt for its candidate
//! (`apt-cache policy`, from lists refreshed as the settings say). Held packages are left
//! alone, with a note. On a device whose root filesystem is managed by A/B OS updates,
//! kernel, bootloader and firmware packages are refused unless a resource allows it.

use std::collections::HashMap;
use std::time::Duration;

use marked_yaml::Spanned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::host::apt::{self, Install, Installed};
use crate::plan::{Change, ChangeAction, ChangeKind, Op, RunPhase};
use crate::resources::planner::{Options, Planner};
use crate::resources::{checks, Expand, Kind, Resource};

/// Packages that write the kernel, the bootloader or the boot firmware: on an A/B-managed
/// device they belong to the OS image. Mender: "For ARM and other non-x86 architectures,
/// always update single applications only, because running apt upgrade may brick your
/// device" (docs.mender.io, Operating System updates: Debian family, overview); the
/// Raspberry Pi boot firmware lives on the boot partition, which both slots share
/// (meta-mender-raspberrypi README). Globs, with what they are.
pub(crate) const BOOT_PACKAGES: &[(&str, &str)] = &[
    ("linux-image-*", "a kernel"),
    ("raspberrypi-kernel*", "a kernel"),
    ("raspberrypi-bootloader", "the Raspberry Pi boot firmware"),
    ("raspi-firmware", "the Raspberry Pi boot firmware"),
    ("rpi-eeprom*", "the Raspberry Pi EEPROM bootloader"),
    ("u-boot*", "a bootloader"),
    ("grub-*", "a bootloader"),
    ("grub2*", "a bootloader"),
    ("shim-*", "a bootloader"),
    (
        "flash-kernel",
        "a tool that writes kernels to the boot partition",
    ),
];

/// What a package is of [`BOOT_PACKAGES`], if it is one.
pub(crate) fn boot_package(name: &str) -> Option<&'static str> {
    BOOT_PACKAGES
        .iter()
        .find(|(glob, _)| glob_match::glob_match(glob, name))
        .map(|(_, what)| *what)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Spec {
    name: Spanned<String>,
    /// present (default), absent or latest.
    state: Option<Spanned<String>>,
    version: Option<Spanned<String>>,
    #[serde(default)]
    recommends: bool,
    /// Allows a kernel, bootloader or firmware package on an A/B-managed device.
    #[serde(default)]
    allow_on_ab: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PackageState {
    Present,
    Absent,
    /// Installed, and upgraded when apt's lists have a newer candidate.
    Latest,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Package {
    pub(crate) name: String,
    pub(crate) state: PackageState,
    /// An exact version or a glob (`1.2.*`).
    pub(crate) version: Option<String>,
    pub(crate) recommends: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) allow_on_ab: bool,
}

pub(super) fn expand(s: &Spec, x: &mut dyn Expand) -> Option<Package> {
    let name = x.text(&s.name);
    let state = match s.state.as_ref().map(|st| (st, st.as_str())) {
        None | Some((_, "present")) => PackageState::Present,
        Some((_, "absent")) => PackageState::Absent,
        Some((_, "latest")) => PackageState::Latest,
        Some((st, other)) => {
            x.problem(
                st.span(),
                format!("`{other}` is not a package state: expected present, absent or latest"),
            );
            PackageState::Present
        }
    };
    let version = s.version.as_ref().and_then(|v| x.text(v));
    if let (Some(at), Some(why)) = (
        &s.version,
        version.as_deref().and_then(checks::version_problem),
    ) {
        let shown = checks::shown(version.as_deref().unwrap_or_default());
        x.problem(
            at.span(),
            format!("`{shown}` is not a package version: {why}"),
        );
    }
    if let (Some(v), PackageState::Absent | PackageState::Latest) = (&s.version, state) {
        x.problem(v.span(), "a version goes with state: present".into());
    }
    if let Some(n) = &name {
        if !valid_name(n) {
            x.problem(
                s.name.span(),
                format!("`{}` is not a Debian package name", checks::shown(n)),
            );
        }
    }
    Some(Package {
        name: name?,
        state,
        version,
        recommends: s.recommends,
        allow_on_ab: s.allow_on_ab,
    })
}

fn valid_name(n: &str) -> bool {
    n.len() >= 2
        && n.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

/// What the packages of a run ask apt for.
#[derive(Default)]
struct Wanted {
    install: Vec<Install>,
    remove: Vec<String>,
    recommends: bool,
    /// In words, for a plan whose lists are refreshed first.
    words: Vec<String>,
    /// What only the refreshed lists will tell (a `latest` package's upgrade).
    after_update: Vec<String>,
    roles: Vec<String>,
}

impl Wanted {
    fn is_empty(&self) -> bool {
        self.install.is_empty() && self.remove.is_empty()
    }
}

/// All package changes as one apt transaction, resolved as apt itself would
/// (`apt-get -s`), plus an `apt-get update` when apt's sources change in this run (the
/// lists must match them, also after a removal) or when a transaction meets stale
/// lists. A root without apt (an image being built) gets a note instead of an update
/// it cannot run.
pub(super) fn plan_phase(packages: &[&Resource], p: &mut Planner, options: &Options) -> Result<()> {
    if options.ab_managed {
        refuse_boot_packages(packages)?;
    }
    let sources_change = p.changes.iter().any(|c| c.phase == RunPhase::Sources);
    let status = if packages.is_empty() {
        HashMap::new()
    } else {
        apt::dpkg_status(p.host)?
    };
    let mut wanted = wanted(packages, &status, p);
    let latest = latest_installed(packages, &status);
    log::debug!(
        "packages: {} declared; dpkg's records differ for {} (install {}, remove {}); {} to keep at their latest",
        packages.len(),
        wanted.install.len() + wanted.remove.len(),
        wanted.install.len(),
        wanted.remove.len(),
        latest.len()
    );
    // Only a run with a transaction or a `latest` package looks at the lists.
    let why_stale = if wanted.is_empty() && latest.is_empty() {
        None
    } else {
        stale(p, options.apt_lists_max_age)
    };
    let stale = why_stale.is_some();
    upgrades(&latest, sources_change || stale, &mut wanted, p)?;
    let why = match (sources_change, why_stale) {
        (true, _) => Some("apt sources changed".to_string()),
        (false, why) => why,
    };
    match why {
        Some(why) if wanted.is_empty() && !apt::has_apt(p.host) => p.notes.push(format!(
            "{why}: `apt-get update` skipped: this root has no /usr/bin/apt-get"
        )),
        Some(why) => p.changes.push(Change::run(
            ChangeKind::Apt,
            "update",
            RunPhase::AptUpdate,
            vec![why],
            vec![Op::AptUpdate],
        )),
        None => {}
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let details = simulate(p, &wanted, sources_change || stale)?;
    if options.ab_managed {
        refuse_boot_upgrades(packages, &details)?;
    }
    let mut c = Change::run(
        ChangeKind::Apt,
        "packages",
        RunPhase::Packages,
        details,
        vec![Op::Apt {
            install: wanted.install,
            remove: wanted.remove,
            recommends: wanted.recommends,
        }],
    );
    c.action = ChangeAction::Change;
    c.role = wanted.roles.join(", ");
    p.changes.push(c);
    Ok(())
}

/// Installed `latest` packages (not held): (name, installed version, role).
fn latest_installed<'r>(
    packages: &[&'r Resource],
    status: &HashMap<String, Installed>,
) -> Vec<(&'r Package, String, &'r str)> {
    packages
        .iter()
        .filter_map(|r| match &r.kind {
            Kind::Package(pkg) if pkg.state == PackageState::Latest => {
                let c = status
                    .get(&pkg.name)
                    .filter(|c| c.is_installed() && !c.held())?;
                Some((pkg, c.version.clone(), r.role.as_str()))
            }
            _ => None,
        })
        .collect()
}

/// `latest` packages with a newer candidate join the transaction. When the lists are
/// refreshed first, apt can only tell after the update: they all join, and apt leaves
/// those already at their candidate alone.
fn upgrades(
    latest: &[(&Package, String, &str)],
    refreshed: bool,
    w: &mut Wanted,
    p: &Planner,
) -> Result<()> {
    if latest.is_empty() {
        return Ok(());
    }
    let candidates = if refreshed {
        HashMap::new()
    } else {
        let names: Vec<&str> = latest.iter().map(|(pkg, _, _)| pkg.name.as_str()).collect();
        apt::candidates(p.host, &names)?
    };
    for (pkg, installed, role) in latest {
        let words = if refreshed {
            let said = format!(
                "upgrade {} if the refreshed lists have a newer version (installed {installed})",
                pkg.name
            );
            w.after_update.push(said.clone());
            said
        } else {
            match candidates.get(&pkg.name) {
                Some(c) if c != installed => format!("upgrade {} {installed} → {c}", pkg.name),
                _ => continue,
            }
        };
        w.install.push((pkg.name.clone(), None));
        w.recommends |= pkg.recommends;
        w.words.push(words);
        if !w.roles.iter().any(|r| r == role) {
            w.roles.push(role.to_string());
        }
    }
    Ok(())
}

/// On an A/B-managed device, a declared kernel, bootloader or firmware package is an
/// error unless its resource says `allow_on_ab: true`.
fn refuse_boot_packages(packages: &[&Resource]) -> Result<()> {
    for r in packages {
        let Kind::Package(pkg) = &r.kind else {
            continue;
        };
        if let (Some(what), false) = (boot_package(&pkg.name), pkg.allow_on_ab) {
            return Err(boot_error(&r.declared_at.to_string(), &pkg.name, what));
        }
    }
    Ok(())
}

/// The same for what apt would install, upgrade or remove along with them.
fn refuse_boot_upgrades(packages: &[&Resource], details: &[String]) -> Result<()> {
    for d in details {
        let mut words = d.split_whitespace();
        let (Some("install" | "upgrade" | "remove"), Some(name)) = (words.next(), words.next())
        else {
            continue;
        };
        let allowed = packages
            .iter()
            .any(|r| matches!(&r.kind, Kind::Package(p) if p.name == name && p.allow_on_ab));
        if let (Some(what), false) = (boot_package(name), allowed) {
            return Err(boot_error(&format!("apt's transaction ({d})"), name, what));
        }
    }
    Ok(())
}

fn boot_error(at: &str, name: &str, what: &str) -> Error {
    Error::Other(format!(
        "{at}: {name} is {what}, and this device's root filesystem is managed by A/B OS updates (an OS image is declared for it): changing it with apt can leave the device unbootable; ship it in the OS image, or declare the package with `allow_on_ab: true`"
    ))
}

/// Why the lists must be refreshed before a transaction, if they must: there are
/// none, they are older than the fleet's maximum age, or apt's sources or keys changed
/// after the last refresh.
fn stale(p: &Planner, max_age: Duration) -> Option<String> {
    match apt::lists_age(p.host) {
        None => Some("there are no package lists".into()),
        Some(a) if a > max_age => Some(format!("package lists are {} min old", a.as_secs() / 60)),
        Some(_) if apt::sources_newer_than_lists(p.host) => {
            Some("apt's sources changed after the lists were last refreshed".into())
        }
        Some(_) => None,
    }
}

/// The packages that differ from dpkg's records; held ones get a note instead.
fn wanted(packages: &[&Resource], status: &HashMap<String, Installed>, p: &mut Planner) -> Wanted {
    let mut w = Wanted::default();
    for r in packages {
        let Kind::Package(pkg) = &r.kind else {
            continue;
        };
        let name = &pkg.name;
        let current = status.get(name);
        let needs = match pkg.state {
            PackageState::Present => match (current, &pkg.version) {
                (Some(c), _) if !c.is_installed() => true,
                (None, _) => true,
                (Some(c), Some(v)) => !apt::version_matches(&c.version, v),
                (Some(_), None) => false,
            },
            PackageState::Absent => current.is_some_and(|c| c.is_present()),
            PackageState::Latest => !current.is_some_and(|c| c.is_installed()),
        };
        if !needs {
            continue;
        }
        if current.is_some_and(|c| c.held()) {
            p.notes.push(format!(
                "package {name} is held (apt-mark hold): left as it is ({})",
                r.declared_at
            ));
            continue;
        }
        if !w.roles.contains(&r.role) {
            w.roles.push(r.role.clone());
        }
        match pkg.state {
            PackageState::Present | PackageState::Latest => {
                w.recommends |= pkg.recommends;
                w.install.push((name.clone(), pkg.version.clone()));
                w.words.push(match &pkg.version {
                    Some(v) => format!("install {name} {v}"),
                    None => format!("install {name}"),
                });
            }
            PackageState::Absent => {
                w.remove.push(name.clone());
                w.words.push(format!("remove {name}"));
            }
        }
    }
    w
}

/// What apt would do, from the current lists. When the lists are refreshed first
/// (`refreshed`), a failure here is only a note: apt can tell after the update.
fn simulate(p: &Planner, w: &Wanted, refreshed: bool) -> Result<Vec<String>> {
    let specs = apt::specs(p.host, &w.install, &w.remove, refreshed)?;
    let (code, stdout, stderr) = apt::simulate(p.host, &specs, w.recommends)?;
    if code == 0 {
        let mut details = apt::simulated(&stdout);
        details.extend(w.after_update.iter().cloned());
        return Ok(details);
    }
    if !refreshed {
        return Err(Error::Command {
            command: format!("apt-get install {} (simulated)", specs.join(" ")),
            status: format!("exit code {code}; nothing was changed"),
            stderr,
        });
    }
    let mut details = w.words.clone();
    details.push(format!(
        "(apt resolves this after the update; with the current lists: {})",
        apt::why(&stderr)
    ));
    Ok(details)
}
