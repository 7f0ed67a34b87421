//! What the OS update says: the log line of a wait, the text of `fleet-agent os status`
//! and the OS line of `plan` (from the declaration and the recorded state only: plan
//! runs nothing).

use log::{info, warn};

use crate::osupdate::decide::{Declared, Wait};
use crate::osupdate::{OsPhase, OsState};

pub(super) fn report_wait(wait: &Wait, d: &Declared) {
    match wait {
        Wait::NotDeclared | Wait::Current => {}
        Wait::Failed(a) => info!(
            "OS update: {a} failed before and is not retried (`fleet-agent os retry` allows it again)"
        ),
        Wait::Backoff { until } => info!(
            "OS update: retrying after a failed download or install, or an unverified slot, in {}s",
            until.saturating_sub(crate::time::now())
        ),
        Wait::Foreign => warn!(
            "OS update: the bootloader has an update pending that fleet-agent did not start (upgrade_available=1): left alone"
        ),
        Wait::NotConverged => info!(
            "OS update: not started, this run did not reach the fleet repository or converge every role"
        ),
        Wait::Window(w) => info!("OS update: installed, rebooting {w}"),
        Wait::Operator => info!(
            "OS update: installed {}; reboot: never (operator)",
            d.image.as_ref().map(|i| i.artifact.as_str()).unwrap_or("")
        ),
        Wait::Unverified { until } => warn!(
            "OS update: the new root filesystem passes its checks but cannot reach the fleet repository: unverified; rolled back (and tried again later) in {}s unless it reaches it",
            until.saturating_sub(crate::time::now())
        ),
        Wait::Unhealthy { deadline, problems } => warn!(
            "OS update: not healthy yet ({}); rolling back in {}s unless it recovers",
            problems.join("; "),
            deadline.saturating_sub(crate::time::now())
        ),
    }
}

/// `fleet-agent os status`: the persisted state in words.
pub(crate) fn status_text(s: &OsState, time: impl Fn(u64) -> String) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<10}{v}\n"));
    line("phase:", s.phase.as_str().to_string());
    line(
        "current:",
        s.current.clone().unwrap_or_else(|| "unknown".into()),
    );
    if let Some(t) = &s.target {
        line("target:", t.clone());
    }
    line(
        "failed:",
        if s.failed.is_empty() {
            "none".into()
        } else {
            s.failed.join(", ")
        },
    );
    if let Some(b) = &s.backoff {
        line(
            "retry:",
            format!(
                "{} after {} (attempt {}): {}",
                b.artifact,
                time(b.after),
                b.attempts,
                b.error
            ),
        );
    }
    if let Some(m) = &s.message {
        line(
            "message:",
            format!(
                "{m}{}",
                s.changed
                    .map(|t| format!(" ({})", time(t)))
                    .unwrap_or_default()
            ),
        );
    }
    out
}

/// The `plan` line, from the declaration and the recorded state (plan runs nothing).
/// None when nothing is declared for the device and no update is under way.
pub(crate) fn plan_line(d: &Declared, s: &OsState) -> Option<(String, bool)> {
    let ty = d.device_type.as_deref().unwrap_or("unknown type");
    let Some(img) = &d.image else {
        return (s.phase != OsPhase::Idle).then(|| {
            (
                format!(
                    "OS: update in progress ({}), no image declared for {ty}",
                    s.phase.as_str()
                ),
                false,
            )
        });
    };
    let current = s.current.as_deref().unwrap_or("unknown");
    if s.phase != OsPhase::Idle {
        let target = s.target.as_deref().unwrap_or("?");
        return Some((
            format!("OS: {current} → {target} ({ty}), {}", s.phase.as_str()),
            false,
        ));
    }
    let from = d.image_source();
    if current == img.artifact {
        return Some((format!("OS: {current} ({ty}), up to date{from}"), false));
    }
    if s.failed.contains(&img.artifact) {
        return Some((
            format!(
                "OS: {current} ({ty}); {} failed before, not retried (fleet-agent os retry){from}",
                img.artifact
            ),
            false,
        ));
    }
    Some((
        format!(
            "OS: {current} → {} ({ty}), reboot: {}{from}",
            img.artifact, d.reboot
        ),
        true,
    ))
}

#[cfg(test)]
mod tests {
    use super::plan_line;
    use crate::fleet::os::Reboot;
    use crate::osupdate::decide::tests::{declared, idle};

    #[test]
    fn plan_lines_say_what_will_happen() {
        let d = declared(Some("fleet-os-2"), Reboot::Now);
        assert_eq!(
            plan_line(&d, &idle()),
            Some((
                "OS: fleet-os-1 → fleet-os-2 (pi4-sim), reboot: now".into(),
                true
            ))
        );
        let w = declared(
            Some("fleet-os-2"),
            Reboot::Window {
                start: 120,
                end: 240,
            },
        );
        assert_eq!(
            plan_line(&w, &idle()).unwrap().0,
            "OS: fleet-os-1 → fleet-os-2 (pi4-sim), reboot: in window 02:00-04:00"
        );
        let never = declared(Some("fleet-os-2"), Reboot::Never);
        assert_eq!(
            plan_line(&never, &idle()).unwrap().0,
            "OS: fleet-os-1 → fleet-os-2 (pi4-sim), reboot: never (operator)"
        );
        let current = declared(Some("fleet-os-1"), Reboot::Now);
        assert_eq!(
            plan_line(&current, &idle()),
            Some(("OS: fleet-os-1 (pi4-sim), up to date".into(), false))
        );
        assert_eq!(plan_line(&declared(None, Reboot::Now), &idle()), None);
    }
}
