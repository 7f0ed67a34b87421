//! The health of a new root filesystem: every role applied (when the fleet repository
//! was reached: offline, a failure may be the network's), the declared units are
//! active, the commands succeed and the URLs answer 2xx, each bounded by the time left
//! to the deadline.

use std::time::Duration;

use crate::fleet::os::Health;
use crate::host::Host;

/// Every failed check, described; empty when healthy. `roles_failed`: the fleet
/// repository was reached and a role did not converge.
pub(super) fn check(host: &Host, h: &Health, roles_failed: bool, deadline: u64) -> Vec<String> {
    let mut problems = Vec::new();
    if roles_failed {
        problems.push("this run did not converge every role".into());
    }
    for unit in &h.units {
        match host.run_status(&["systemctl", "is-active", "--quiet", unit], true) {
            Ok((0, ..)) => {}
            Ok(_) => problems.push(format!("{unit} is not active")),
            Err(e) => problems.push(format!("{unit}: {e}")),
        }
    }
    for command in &h.commands {
        match host.run_status(&["sh", "-c", command], true) {
            Ok((0, ..)) => {}
            Ok((code, _, err)) => problems.push(format!(
                "`{command}` exited {code}{}",
                if err.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", err.trim())
                }
            )),
            Err(e) => problems.push(format!("`{command}`: {e}")),
        }
    }
    let left = deadline.saturating_sub(crate::time::now()).clamp(1, 10);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(left)))
        .build()
        .into();
    for url in &h.urls {
        match agent.get(url).call() {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => problems.push(format!("{url} answered {}", r.status().as_u16())),
            Err(e) => problems.push(format!("{url}: {e}")),
        }
    }
    problems
}
