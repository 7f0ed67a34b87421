//! `plan --all`: every device with a report planned against its last report's facts,
//! with the branch of a working tree (what a merge request would bring), changing
//! nothing anywhere. Per device: its desired state from the working tree, a `Host`
//! made from its report (facts_host.rs), the same planner as a run, and the OS line.

use std::collections::HashMap;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::fleet::{Device, Fleet, FleetFile};
use crate::fleetwide::facts_host::{self, Contents, Scratch};
use crate::fleetwide::store::Reports;
use crate::osupdate::{self, Declared, OsPhase, OsState};
use crate::plan::Plan;
use crate::report::Report;
use crate::resources;

/// What planning one device from its report found.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The plan (maybe empty), and the OS line with whether it is a pending change.
    Planned {
        plan: Plan,
        os_line: Option<(String, bool)>,
    },
    /// The device's desired state does not load (file:line:column problems).
    LoadFails(Vec<String>),
    /// Planning failed (a conflict on the device, an unknown user, ...).
    PlanFails(String),
    /// The branch needs a newer agent than the device reported.
    NeedsAgent(String),
    /// No report of this device carries facts.
    NoFacts,
}

/// One device of `plan --all`.
#[derive(Debug)]
pub(crate) struct DevicePlan {
    pub(crate) device: String,
    pub(crate) branch: Option<String>,
    /// The report whose facts were planned against.
    pub(crate) facts_seq: Option<u64>,
    pub(crate) facts_time: Option<String>,
    pub(crate) outcome: Outcome,
    /// The working tree's rollout holds the device back: it stays on the commit it
    /// last applied (the plan is what it would do once it takes the tree).
    pub(crate) held_back: Option<String>,
}

impl DevicePlan {
    /// Whether the device would change (its OS update included).
    pub(crate) fn changes(&self) -> bool {
        if self.held_back.is_some() {
            return false;
        }
        match &self.outcome {
            Outcome::Planned { plan, os_line } => {
                !plan.is_empty() || os_line.as_ref().is_some_and(|(_, p)| *p)
            }
            Outcome::NeedsAgent(_) => true,
            _ => false,
        }
    }

    pub(crate) fn fails(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::LoadFails(_) | Outcome::PlanFails(_) | Outcome::NoFacts
        )
    }
}

/// What the applied commit declared, for a device (its files' content by path).
pub(crate) type OldContents<'a> = dyn Fn(&str, &Device) -> Option<HashMap<String, Vec<u8>>> + 'a;

/// Plans one device from its reports with the loaded fleet.
pub(crate) fn plan_device(
    fleet: &Fleet,
    fleet_file: &FleetFile,
    latest: &Report,
    with_facts: Option<&Report>,
    old_contents: &OldContents,
) -> DevicePlan {
    let mut dp = DevicePlan {
        device: latest.device.clone(),
        branch: latest.branch.clone(),
        facts_seq: with_facts.map(|r| r.seq),
        facts_time: with_facts.map(|r| r.finished.clone()),
        outcome: Outcome::NoFacts,
        held_back: None,
    };
    if let Some(why) = needs_agent(fleet_file, latest) {
        dp.outcome = Outcome::NeedsAgent(why);
        return dp;
    }
    // A report carries no facts of the machine (os-release, model) and never a secret:
    // templates see validate's stand-ins (docs/reporting.md).
    let device = crate::fleet::stand_in(&latest.device, latest.device_type.clone());
    let (desired, os_image) = match fleet.for_device(&device) {
        Ok(d) => {
            dp.held_back = held_back(d.brakes.rollout.as_ref(), latest);
            (d.desired, d.os_image)
        }
        Err(Error::Invalid(problems)) => {
            dp.outcome = Outcome::LoadFails(problems.iter().map(|p| p.to_string()).collect());
            return dp;
        }
        Err(e) => {
            dp.outcome = Outcome::LoadFails(vec![e.to_string()]);
            return dp;
        }
    };
    let Some((report, facts)) = with_facts.and_then(|r| Some((r, r.facts.as_ref()?))) else {
        return dp;
    };
    let new = match facts_host::declared_contents(&desired) {
        Ok(new) => new,
        Err(e) => {
            dp.outcome = Outcome::LoadFails(vec![e.to_string()]);
            return dp;
        }
    };
    let contents = Contents {
        new,
        old: report
            .applied_commit
            .as_deref()
            .and_then(|c| old_contents(c, &device)),
        converged: matches!(report.outcome.as_str(), "applied" | "unchanged"),
    };
    let mut declared = Declared::new(fleet.os.as_ref(), desired.device_type.as_deref());
    if let Some((image, at)) = os_image {
        declared = declared.overridden(image, at.to_string());
    }
    let planned = Scratch::new(&latest.device).and_then(|scratch| {
        let (host, previous) = facts_host::host(&scratch, facts, &contents)?;
        let options = resources::Options {
            prune: fleet.settings.prune,
            apt_lists_max_age: Duration::from_secs(fleet.settings.apt_lists_max_age_minutes * 60),
            state_dir: crate::config::DEFAULT_STATE_DIR.into(),
            http_timeout: Duration::from_secs(30),
            ab_managed: declared.image.is_some(),
        };
        resources::plan(&host, &desired, Some(&previous), &options, None)
    });
    dp.outcome = match planned {
        Ok(plan) => {
            let os_line = osupdate::plan_line(&declared, &os_state(latest));
            Outcome::Planned { plan, os_line }
        }
        Err(e) => Outcome::PlanFails(e.to_string()),
    };
    dp
}

/// Why the branch needs a newer agent than the device reported, if it does.
fn needs_agent(fleet_file: &FleetFile, latest: &Report) -> Option<String> {
    let req = fleet_file.requirement()?;
    let running = crate::fleet::gate::Version::parse_prefix(&latest.agent_version);
    running.is_none_or(|v| v < req.min).then(|| {
        format!(
            "the branch needs fleet-agent >= {} ({}); the device runs {}",
            req.min, req.pos, latest.agent_version
        )
    })
}

/// The rollout's line for a device it holds back, as the device's `plan` says it: a
/// device that applied nothing yet takes the tree whatever its bucket.
fn held_back(rollout: Option<&crate::release::Rollout>, r: &Report) -> Option<String> {
    let s = crate::release::standing(rollout?, &r.device);
    let on = r.applied_commit.as_deref().filter(|_| s.held_back)?;
    Some(format!(
        "{}: staying on {}",
        s.line(),
        on.get(..12).unwrap_or(on)
    ))
}

/// The OS update as the report says it is.
fn os_state(r: &Report) -> OsState {
    let os = &r.os_update;
    let phase = serde_json::from_value::<OsPhase>(serde_json::Value::String(os.phase.clone()))
        .unwrap_or_default();
    OsState {
        phase,
        current: os.current.clone(),
        target: os.target.clone(),
        failed: os.failed.clone(),
        ..OsState::default()
    }
}

/// Every device with a report (on `branch`, when given), planned.
pub(crate) fn plan_devices(
    fleet: &Fleet,
    fleet_file: &FleetFile,
    reports: &Reports,
    branch: Option<&str>,
    old_contents: &OldContents,
) -> Vec<DevicePlan> {
    reports
        .by_device
        .keys()
        .filter_map(|d| reports.latest(d).map(|r| (d, r)))
        .filter(|(_, r)| branch.is_none() || r.branch.as_deref() == branch)
        .map(|(d, r)| plan_device(fleet, fleet_file, r, reports.latest_facts(d), old_contents))
        .collect()
}

/// Runs `f` and says how long it took, for `-v`.
pub(crate) fn timed<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let start = std::time::Instant::now();
    let out = f();
    log::debug!("{what}: {:.1} s", start.elapsed().as_secs_f64());
    out
}
