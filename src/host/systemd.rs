//! systemd: what `systemctl` says of a unit, and the argv that changes one. Where
//! systemd does not manage the root (an image build, a chroot, `--root`), enablement
//! goes through `systemctl --root` and nothing is started or stopped. A unit always
//! follows `--`.

use crate::error::Result;
use crate::host::Host;

/// `systemctl VERB UNIT`, with `--root=ROOT` where systemd does not run.
pub(crate) fn systemctl(host: &Host, verb: &str, unit: &str) -> Vec<String> {
    let mut argv = vec!["systemctl".to_string()];
    if !host.systemd_running() {
        argv.push(format!("--root={}", host.root().display()));
    }
    // `--`: whatever the unit is called, it is never read as an option.
    argv.extend([verb.to_string(), "--".to_string(), unit.to_string()]);
    argv
}

/// `systemctl is-enabled`: enabled, disabled, masked, static, ... or "not-found".
pub(crate) fn enablement(host: &Host, unit: &str) -> Result<String> {
    let argv = systemctl(host, "is-enabled", unit);
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
pub(crate) fn activity(host: &Host, unit: &str) -> Result<String> {
    let (_, stdout, _) = host.run_status(&["systemctl", "is-active", "--", unit], false)?;
    Ok(stdout.trim().to_string())
}
