//! The health of a new root filesystem: every role applied (when the fleet repository
//! was reached: offline, a failure may be the network's), the declared units are
//! active, the commands succeed and the URLs answer 2xx, each bounded by the time left
//! to the deadline.

use std::time::Duration;

use crate::fleet::os::Health;
use crate::host::Host;

/// Every failed check, described; empty when healthy. `roles_failed`: the fleet
/// repository was reached and a role did not converge.
pub(crate) fn check(host: &Host, h: &Health, roles_failed: bool, deadline: u64) -> Vec<String> {
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
        .tls_config(crate::tls::config())
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

/// The checks of a configuration's `health:` (docs/rollouts.md), polled every second until they pass or `timeout_seconds`
/// is reached (the OS update's checks: units active, commands exit 0, URLs answer 2xx).
/// Every failed check of the last round, described; empty when they passed.
pub(crate) fn poll(host: &Host, as_os: &Health) -> Vec<String> {
    let deadline = crate::time::now() + as_os.timeout_seconds;
    loop {
        let problems = check(host, as_os, false, deadline);
        if problems.is_empty() || crate::time::now() >= deadline {
            return problems;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// After a rollback: the checked units that are not active are restarted (a run killed
/// during the rollback lost the restart its file change made due).
pub(crate) fn restart_inactive(host: &Host, units: &[String]) {
    for unit in units {
        let active = host.run_status(&["systemctl", "is-active", "--quiet", unit], true);
        if !matches!(active, Ok((0, ..))) {
            let argv = crate::host::systemd::systemctl(host, "restart", unit);
            let argv: Vec<&str> = argv.iter().map(|a| a.as_str()).collect();
            if let Err(e) = host.run_status(&argv, true) {
                log::warn!("health: cannot restart {unit}: {e}");
            }
        }
    }
}
