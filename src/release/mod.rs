//! Brakes for a release (docs/rollouts.md): a percentage rollout inside a branch (each
//! device's stable bucket decides whether it takes the branch's tip or stays on the
//! commit it last applied), and maintenance windows and the hold file, which defer the
//! disruptive changes of a plan (package transactions, service starts, stops and
//! restarts). Pure decisions over plain values, tested in-process (`tests.rs`); run.rs
//! calls them between load and apply.

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::plan::{Change, ChangeKind, Op, Plan, ResourceState, RunPhase};
use crate::resources::command;

#[cfg(test)]
mod tests;
pub(crate) mod undo;

/// Buckets a device can fall in: a percentage is counted in hundredths (basis points).
pub(crate) const BUCKETS: u32 = 10_000;

/// The hold file an application creates to defer disruptive changes (under the root).
pub(crate) const HOLD_FILE: &str = "/run/fleet-agent/hold";

/// `rollout:` of fleet.yml or a group_vars file: the share of devices that take the
/// branch's tip, and the identifier that draws the buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rollout {
    pub(crate) id: String,
    /// The percentage in hundredths: 1000 is 10 %.
    pub(crate) basis_points: u32,
    /// Where it is written (file:line:column).
    pub(crate) declared_at: String,
}

/// `maintenance: {window: "02:00-04:00"}`: minutes after local midnight; a window whose
/// end is before its start wraps midnight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) start: u16,
    pub(crate) end: u16,
    /// `unsynchronized_clock: trust`: judge the window by the clock even when it is not
    /// synchronized (the default, `defer`, defers until it is).
    pub(crate) trust_clock: bool,
    pub(crate) declared_at: String,
}

/// `health:` of fleet.yml or a group_vars file: checks run after a run that changed
/// something; when they fail within the bound, the last commit that passed them is
/// applied again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Health {
    pub(crate) timeout_seconds: u64,
    pub(crate) units: Vec<String>,
    pub(crate) commands: Vec<String>,
    pub(crate) urls: Vec<String>,
}

/// The checks of the strongest layer and of every role applied, together: each check
/// once, and the longest bound (the checks are polled together until all pass).
pub(crate) fn combine(layer: Option<Health>, roles: &[Health]) -> Option<Health> {
    let mut all = layer.clone().into_iter().chain(roles.iter().cloned());
    let mut h = all.next()?;
    for r in all {
        h.timeout_seconds = h.timeout_seconds.max(r.timeout_seconds);
        for (mine, theirs) in [
            (&mut h.units, r.units),
            (&mut h.commands, r.commands),
            (&mut h.urls, r.urls),
        ] {
            for c in theirs {
                if !mine.contains(&c) {
                    mine.push(c);
                }
            }
        }
    }
    Some(h)
}

/// What the strongest layers declare for one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Brakes {
    pub(crate) rollout: Option<Rollout>,
    pub(crate) window: Option<Window>,
    pub(crate) health: Option<Health>,
}

/// A health-gated rollback under way: persisted before it applies anything, so that a
/// run killed in the middle is finished by the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Rollback {
    /// The commit that failed its checks.
    pub(crate) from: String,
    /// The last commit that passed them.
    pub(crate) to: String,
    pub(crate) problems: Vec<String>,
    /// When the checks failed (seconds since the epoch).
    pub(crate) at: u64,
    /// The failed commit's packages as installed when its checks failed ("name
    /// version"): those the good commit does not declare are said to stay.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) packages: Vec<String>,
}

/// The device's stable bucket for a rollout: the first 8 bytes of
/// sha256(device id, a newline, rollout id), big-endian, modulo 10,000.
pub(crate) fn bucket(device_id: &str, rollout_id: &str) -> u32 {
    let hex = crate::digest::sha256_hex(format!("{device_id}\n{rollout_id}").as_bytes());
    let first = u64::from_str_radix(&hex[..16], 16).expect("sha256 is hex");
    (first % u64::from(BUCKETS)) as u32
}

/// A percentage as written: 0 to 100 with at most two decimals, in hundredths.
pub(crate) fn parse_percent(text: &str) -> Option<u32> {
    let (whole, frac) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    let digits = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || frac.len() > 2 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac: u32 = format!("{frac:0<2}").parse().ok()?;
    let bp = whole.parse::<u32>().ok()? * 100 + frac;
    (bp <= BUCKETS).then_some(bp)
}

/// "10 %", "12.5 %".
pub(crate) fn percent_label(bp: u32) -> String {
    let whole = bp / 100;
    match bp % 100 {
        0 => format!("{whole} %"),
        f if f % 10 == 0 => format!("{whole}.{} %", f / 10),
        f => format!("{whole}.{f:02} %"),
    }
}

/// "HH:MM-HH:MM" (24-hour, device-local time); start and end differ.
pub(crate) fn parse_window(text: &str) -> Result<(u16, u16), String> {
    let hm = |s: &str| -> Option<u16> {
        let (h, m) = s.trim().split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60 && s.trim().len() == 5).then_some(h * 60 + m)
    };
    let bad = || {
        format!("expected a window as `HH:MM-HH:MM` in device-local time, such as `02:00-04:00`, not `{text}`")
    };
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let (start, end) = (hm(a).ok_or_else(bad)?, hm(b).ok_or_else(bad)?);
    if start == end {
        return Err(format!(
            "the window `{text}` is empty: its start and end are the same"
        ));
    }
    Ok((start, end))
}

pub(crate) fn hhmm(minutes: u16) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

impl Window {
    pub(crate) fn contains(&self, minutes: u16) -> bool {
        if self.start < self.end {
            self.start <= minutes && minutes < self.end
        } else {
            minutes >= self.start || minutes < self.end
        }
    }

    pub(crate) fn label(&self) -> String {
        format!("{}-{}", hhmm(self.start), hhmm(self.end))
    }
}

/// Where a device stands in its branch's rollout (recorded in the state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Standing {
    pub(crate) id: String,
    pub(crate) percent: String,
    /// The percentage in hundredths: a bucket below it takes the tip.
    pub(crate) threshold: u32,
    pub(crate) bucket: u32,
    pub(crate) held_back: bool,
    /// The branch's tip when it was held back (the device stays on its applied commit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) tip: Option<String>,
}

/// The device's standing in a rollout: held back when its bucket is not below the
/// percentage. Raising the percentage only adds devices (10 % ⊂ 50 %).
pub(crate) fn standing(rollout: &Rollout, device_id: &str) -> Standing {
    let b = bucket(device_id, &rollout.id);
    Standing {
        id: rollout.id.clone(),
        percent: percent_label(rollout.basis_points),
        threshold: rollout.basis_points,
        bucket: b,
        held_back: b >= rollout.basis_points,
        tip: None,
    }
}

impl Standing {
    /// The plan's line: "held back: bucket 7345 ≥ 1000 (rollout `r1` at 10 %)".
    pub(crate) fn line(&self) -> String {
        let (word, op) = if self.held_back {
            ("held back", "≥")
        } else {
            ("in the rollout", "<")
        };
        format!(
            "{word}: bucket {} {op} {} (rollout `{}` at {})",
            self.bucket, self.threshold, self.id, self.percent
        )
    }
}

/// What holds the disruptive changes back this run, in the plan's words; None when
/// they may apply.
pub(crate) fn deferral(
    window: Option<&Window>,
    minutes: u16,
    clock_synchronized: bool,
    hold: bool,
) -> Option<String> {
    if hold {
        return Some(format!("deferred while {HOLD_FILE} exists"));
    }
    let w = window?;
    if !clock_synchronized && !w.trust_clock {
        return Some(format!(
            "deferred: the clock is not synchronized, so the window {} cannot be told",
            w.label()
        ));
    }
    (!w.contains(minutes)).then(|| format!("deferred until {}", hhmm(w.start)))
}

/// Package transactions, service starts, stops and restarts, and the changes of a
/// resource marked `disruptive: true`: what a window or the hold file defers.
pub(crate) fn is_disruptive(c: &Change) -> bool {
    if c.disruptive {
        return true;
    }
    match c.kind {
        ChangeKind::Restart | ChangeKind::Reload => true,
        ChangeKind::Apt => c.ops.iter().any(|o| matches!(o, Op::Apt { .. })),
        ChangeKind::Service => c.ops.iter().any(|o| match o {
            Op::Command { argv, .. } => argv
                .iter()
                .any(|a| ["start", "stop", "restart", "try-restart"].contains(&a.as_str())),
            _ => false,
        }),
        _ => false,
    }
}

/// A handler (restart or reload) that a deferral held back: its trigger will not change
/// again, so it is carried in the state until it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Handler {
    pub(crate) unit: String,
    /// The systemctl verb: try-restart or reload-or-restart.
    pub(crate) verb: String,
}

/// Removes the disruptive changes from the plan, each with a note saying why, and the
/// commands that `on_change` makes due by one of them (they run after it); returns
/// what was deferred ("apt packages", "restart kiosk.service") and the handlers among
/// it. The state keeps the previous record of a deferred resource (`previous`), and a
/// deferred command made due by a change that did apply is recorded pending.
pub(crate) fn defer(
    plan: &mut Plan,
    reason: &str,
    previous: &BTreeMap<String, ResourceState>,
) -> (Vec<String>, Vec<Handler>) {
    let mut held: Vec<Change> = Vec::new();
    // In plan order: what makes a command due comes before it.
    for c in std::mem::take(&mut plan.changes) {
        let by_held = |id: &String| held.iter().any(|h| command::changes(h, id));
        let after_held = c.triggered_by.iter().any(by_held);
        if is_disruptive(&c) || after_held {
            held.push(c);
        } else {
            plan.changes.push(c);
        }
    }
    let mut said = Vec::new();
    let mut handlers = Vec::new();
    for c in held {
        let what = format!("{} {}", c.kind, c.subject);
        plan.notes.push(format!("{what}: {reason}"));
        if let Some(id) = &c.resource_id {
            // Its trigger will not change again (unless it was deferred too, when the
            // command is due again with it).
            let triggered = c
                .details
                .first()
                .is_some_and(|d| d.contains(command::TRIGGERED));
            let pending = (plan.resources.get(id))
                .filter(|_| triggered && is_disruptive(&c))
                .map(|r| ResourceState {
                    pending: true,
                    ..r.clone()
                });
            match pending.or_else(|| previous.get(id).cloned()) {
                Some(r) => plan.resources.insert(id.clone(), r),
                None => plan.resources.remove(id),
            };
        }
        if matches!(c.kind, ChangeKind::Restart | ChangeKind::Reload) {
            let verb = if c.kind == ChangeKind::Restart {
                "try-restart"
            } else {
                "reload-or-restart"
            };
            handlers.push(Handler {
                unit: c.subject.clone(),
                verb: verb.into(),
            });
        }
        said.push(what);
    }
    (said, handlers)
}

/// Adds the handlers an earlier deferral carried, unless the plan restarts the unit
/// anyway. `argv` builds the systemctl command line for a verb and unit.
pub(crate) fn resume(
    plan: &mut Plan,
    carried: &[Handler],
    argv: impl Fn(&str, &str) -> Vec<String>,
) {
    for h in carried {
        let planned = plan.changes.iter().any(|c| {
            matches!(c.kind, ChangeKind::Restart | ChangeKind::Reload) && c.subject == h.unit
        });
        if planned {
            continue;
        }
        let kind = if h.verb == "try-restart" {
            ChangeKind::Restart
        } else {
            ChangeKind::Reload
        };
        plan.changes.push(Change::run(
            kind,
            &h.unit,
            RunPhase::Handlers,
            vec!["deferred by an earlier run".into()],
            vec![Op::Command {
                argv: argv(&h.verb, &h.unit),
                in_root: false,
            }],
        ));
    }
}

/// What the state records of a run's brakes (None fields: nothing declared or held).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Recorded {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rollout: Option<Standing>,
    /// Why disruptive changes were deferred, and what they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) deferral: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) deferred: Vec<String>,
    /// Handlers still due.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) handlers: Vec<Handler>,
    /// With `health:`: the last commit that passed the checks on this device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) good: Option<String>,
    /// Commits that failed them here: not taken again until a newer commit arrives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) failed: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rollback: Option<Rollback>,
    /// The last health outcome, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) health: Option<String>,
    /// What the last rollback could not undo, in words (until a commit passes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) not_undone: Vec<String>,
}

impl Recorded {
    pub(crate) fn is_empty(&self) -> bool {
        *self == Recorded::default()
    }
}

/// Whether the kernel's clock is synchronized, as systemd's `timedatectl` tells it
/// (`NTPSynchronized`): adjtimex(2) read-only, the STA_UNSYNC flag clear.
pub(crate) fn clock_synchronized() -> bool {
    // SAFETY: a zeroed timex with modes 0 only reads the kernel's state.
    let mut tx: nix::libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer is valid for the call.
    let rc = unsafe { nix::libc::adjtimex(&mut tx) };
    rc >= 0 && rc != nix::libc::TIME_ERROR && tx.status & nix::libc::STA_UNSYNC == 0
}

/// The commit a health record makes the device stay on: the rollback's target, or the
/// good commit while the tip is one that failed here.
pub(crate) fn health_target(r: &Recorded, tip: Option<&str>) -> Option<String> {
    if let Some(rb) = &r.rollback {
        return Some(rb.to.clone());
    }
    let good = r.good.clone()?;
    let failed = tip.is_some_and(|t| r.failed.iter().any(|f| f == t) && t != good);
    failed.then_some(good)
}
