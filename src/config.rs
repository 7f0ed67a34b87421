//! The device's agent configuration (`/etc/fleet-agent/agent.toml`): where the fleet
//! repository is, which branch this device follows, who the device is, and where the
//! agent keeps its state. Unknown keys are errors; every key has a documented default.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::host::Host;

pub(crate) const DEFAULT_CONFIG: &str = "/etc/fleet-agent/agent.toml";
pub(crate) const DEFAULT_STATE_DIR: &str = "/var/lib/fleet-agent";
pub(crate) const DEFAULT_ROLES_DIR: &str = "/usr/share/fleet-agent/roles";
/// Mender's device_type file (`device_type=raspberrypi4`); /var/lib/mender points to /data/mender.
pub(crate) const MENDER_DEVICE_TYPE: &str = "/var/lib/mender/device_type";

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    repo: Option<String>,
    branch: Option<String>,
    device_id: Option<String>,
    device_type: Option<String>,
    state_dir: Option<PathBuf>,
    roles_dir: Option<PathBuf>,
    #[serde(default)]
    credentials: Credentials,
    #[serde(default)]
    http: Http,
    #[serde(default)]
    os_update: OsUpdateConfig,
    #[serde(default)]
    metrics: MetricsConfig,
    #[serde(default)]
    report: ReportConfig,
    #[serde(default)]
    trust: TrustConfig,
}

/// How the agent authenticates to the git server. Paths are on the device (under `--root`).
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct Credentials {
    /// A file holding an access token, sent as the HTTP basic-auth password.
    pub(crate) token_file: Option<PathBuf>,
    /// The basic-auth user name that goes with the token (default "fleet-agent").
    pub(crate) username: Option<String>,
    /// Private key for ssh:// repositories.
    pub(crate) ssh_key: Option<PathBuf>,
    /// known_hosts file for ssh:// repositories; host keys are checked strictly.
    pub(crate) known_hosts: Option<PathBuf>,
    /// The ssh client to run (default "ssh").
    pub(crate) ssh_command: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Http {
    /// Seconds to wait for the server to answer (connect and each read).
    pub(crate) timeout_secs: u64,
    /// The most one git network operation (a refs request, a fetch or a clone, over
    /// HTTP(S) or ssh) may take, however the server trickles.
    pub(crate) deadline_secs: u64,
    /// The most the download of an OS image may take.
    pub(crate) download_deadline_secs: u64,
    /// After a failed poll the next one waits a random time up to this, doubled with
    /// each further failure (src/sync/backoff.rs)...
    pub(crate) backoff_base_secs: u64,
    /// ...up to this.
    pub(crate) backoff_max_secs: u64,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            timeout_secs: 30,
            deadline_secs: 600,
            download_deadline_secs: 1800,
            backoff_base_secs: 60,
            backoff_max_secs: 600,
        }
    }
}

/// `[os_update]` in agent.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct OsUpdateConfig {
    /// "mender-update", "mender" or an absolute path; None: mender-update if it is on
    /// PATH, else mender.
    pub(crate) client: Option<String>,
    /// What asks the system to reboot.
    pub(crate) reboot_command: Vec<String>,
}

impl Default for OsUpdateConfig {
    fn default() -> Self {
        OsUpdateConfig {
            client: None,
            reboot_command: vec!["systemctl".into(), "reboot".into()],
        }
    }
}

/// Where node_exporter's textfile collector reads (Debian's prometheus-node-exporter).
pub(crate) const DEFAULT_TEXTFILE_DIR: &str = "/var/lib/prometheus/node-exporter";
/// The journal namespace of the report spool (docs/reporting.md).
pub(crate) const DEFAULT_REPORT_NAMESPACE: &str = "fleet-agent";

/// `[metrics]`: the Prometheus text file written after every run (docs/metrics.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct MetricsConfig {
    pub(crate) enabled: bool,
    /// A device path (under `--root`); written only when the directory exists.
    pub(crate) textfile_dir: PathBuf,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            textfile_dir: DEFAULT_TEXTFILE_DIR.into(),
        }
    }
}

/// `[report]`: one structured journal entry per run (docs/reporting.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ReportConfig {
    /// None: on for the running system (root `/`), off under `--root` (an image build
    /// does not report into the build machine's journal).
    pub(crate) journal: Option<bool>,
    /// The journal namespace whose socket receives the report when it listens; ""
    /// for the system journal only.
    pub(crate) namespace: String,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            journal: None,
            namespace: DEFAULT_REPORT_NAMESPACE.into(),
        }
    }
}

/// `[trust]`: which commits may be applied (docs/signing.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TrustConfig {
    /// The provisioned allowed-signers file (a device path, under `--root`). Set, a
    /// pull applies only signed tips that move forward; unset, today's behaviour.
    pub(crate) allowed_signers: Option<PathBuf>,
    /// Seconds: a tip whose committer date is older is reported as a stale feed.
    pub(crate) max_commit_age_secs: Option<u64>,
}

/// The resolved configuration: defaults filled in, device facts read.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) repo: String,
    pub(crate) branch: String,
    pub(crate) device_id: String,
    pub(crate) device_type: Option<String>,
    /// Absolute path on the device; use `Host::path` to reach it.
    pub(crate) state_dir: PathBuf,
    pub(crate) roles_dir: PathBuf,
    pub(crate) credentials: Credentials,
    pub(crate) http: Http,
    /// `[os_update]`: the Mender client and the reboot command.
    pub(crate) os_update: OsUpdateConfig,
    /// `[metrics]`: the node_exporter text file.
    pub(crate) metrics: MetricsConfig,
    /// `[report]`: the run report in the journal.
    pub(crate) report: ReportConfig,
    /// `[trust]`: signatures, anti-rollback, freshness.
    pub(crate) trust: TrustConfig,
}

impl Config {
    /// Reads the config file. `required` is false for commands that can work without it
    /// (`plan --repo`, `validate`), in which case a missing file gives the defaults.
    pub(crate) fn load(path: &Path, host: &Host, required: bool) -> Result<Config> {
        let raw = match std::fs::read_to_string(path) {
            Ok(text) => basic_toml::from_str::<RawConfig>(&text).map_err(|e| Error::Config {
                path: path.to_owned(),
                message: describe_toml_error(&e),
            })?,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => RawConfig::default(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Config {
                    path: path.to_owned(),
                    message: "missing: the agent configuration is needed (at least `repo = \"...\"`; see /usr/share/doc/fleet-agent/README.md), or give --config FILE, or --repo DIR to plan a working tree".into(),
                })
            }
            Err(e) => return Err(Error::io("cannot read the agent configuration", path, e)),
        };
        check(&raw).map_err(|message| Error::Config {
            path: path.to_owned(),
            message,
        })?;
        let missing = |key: &str| Error::Config {
            path: path.to_owned(),
            message: format!("`{key}` is required"),
        };
        let repo = match raw.repo {
            Some(r) => normalize_url(&r),
            None if required => return Err(missing("repo")),
            None => String::new(),
        };
        let device_id = match raw.device_id {
            Some(id) => id,
            None => nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into()),
        };
        let device_type = match raw.device_type {
            Some(t) => Some(t),
            None => read_mender_device_type(host),
        };
        Ok(Config {
            repo,
            branch: raw.branch.unwrap_or_else(|| "main".into()),
            device_id,
            device_type,
            state_dir: raw.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            roles_dir: raw.roles_dir.unwrap_or_else(|| DEFAULT_ROLES_DIR.into()),
            credentials: raw.credentials,
            http: raw.http,
            os_update: raw.os_update,
            metrics: raw.metrics,
            report: raw.report,
            trust: raw.trust,
        })
    }
}

/// What the types do not say: absolute paths, a journal namespace's name, a reboot
/// command.
fn check(raw: &RawConfig) -> std::result::Result<(), String> {
    let dirs = [
        &raw.state_dir,
        &raw.roles_dir,
        &Some(raw.metrics.textfile_dir.clone()),
        &raw.trust.allowed_signers,
    ];
    for p in dirs.into_iter().flatten() {
        if !p.is_absolute() {
            return Err(format!("{} must be an absolute path", p.display()));
        }
    }
    let ns = &raw.report.namespace;
    let name_chars = ns
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if !name_chars || ns.starts_with('.') {
        return Err(format!(
            "report.namespace `{ns}` is not a journal namespace: letters, digits, `_`, `-` and `.`"
        ));
    }
    let http = &raw.http;
    if http.timeout_secs == 0 || http.deadline_secs == 0 || http.download_deadline_secs == 0 {
        return Err("http: timeouts and deadlines are whole seconds above 0".into());
    }
    if raw.os_update.reboot_command.is_empty() {
        return Err("os_update.reboot_command must name a command".into());
    }
    Ok(())
}

/// basic-toml's message, `MESSAGE at line L column C`, as `L:C: MESSAGE`.
fn describe_toml_error(e: &basic_toml::Error) -> String {
    let said = e.to_string();
    let Some((message, at)) = said.rsplit_once(" at line ") else {
        return said;
    };
    match at.split_once(" column ") {
        Some((line, column)) => format!("{line}:{column}: {message}"),
        None => said,
    }
}

fn read_mender_device_type(host: &Host) -> Option<String> {
    let text = std::fs::read_to_string(host.path(Path::new(MENDER_DEVICE_TYPE))).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("device_type="))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// git2 does not route scp-style addresses (`git@host:fleet.git`) to a registered ssh
/// transport, so they are rewritten to the equivalent ssh:// URL.
pub(crate) fn normalize_url(url: &str) -> String {
    if url.contains("://") || url.starts_with('/') {
        return url.to_string();
    }
    if let Some((userhost, path)) = url.split_once(':') {
        if !userhost.contains('/') && !path.is_empty() {
            let path = if path.starts_with('/') {
                path.to_string()
            } else {
                format!("/~/{path}")
            };
            return format!("ssh://{userhost}{path}");
        }
    }
    url.to_string()
}

/// The URL without any user:password part, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s && !url[s + 3..at].contains('/') => {
            format!("{}{}", &url[..s + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scp_style_urls_become_ssh_urls() {
        assert_eq!(
            normalize_url("git@example.com:fleet.git"),
            "ssh://git@example.com/~/fleet.git"
        );
        assert_eq!(
            normalize_url("git@example.com:/srv/fleet.git"),
            "ssh://git@example.com/srv/fleet.git"
        );
        assert_eq!(
            normalize_url("https://example.com/fleet.git"),
            "https://example.com/fleet.git"
        );
        assert_eq!(normalize_url("/srv/fleet.git"), "/srv/fleet.git");
    }

    #[test]
    fn credentials_are_not_shown() {
        assert_eq!(
            redact("https://u:secret@example.com/f.git"),
            "https://example.com/f.git"
        );
        assert_eq!(redact("https://example.com/a@b"), "https://example.com/a@b");
    }
}
