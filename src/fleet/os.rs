//! The `os:` section of fleet.yml: which Mender artifact each device type runs, when a
//! device may reboot into it, how the new root filesystem proves itself healthy, and
//! how failed downloads are retried. Parsed and validated here (every problem with
//! file:line:column); nothing here touches the machine. docs/os-updates.md explains it.

use std::collections::BTreeMap;

use marked_yaml::{Node, Spanned};
use serde::{Deserialize, Serialize};

use crate::error::Invalid;
use crate::fleet::yaml;

/// The whole `os:` section, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct OsDecl {
    /// Device type → image.
    pub(crate) images: BTreeMap<String, Image>,
    pub(crate) reboot: Reboot,
    pub(crate) health: Health,
    pub(crate) retry: Retry,
}

/// The OS image one device type runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Image {
    /// The artifact name `mender-update show-artifact` prints once it is installed.
    pub(crate) artifact: String,
    /// An http(s) URL, or an absolute path on the device.
    pub(crate) uri: String,
    /// Lowercase hex SHA-256 of the artifact file, checked after download.
    pub(crate) sha256: Option<String>,
}

/// When the device may reboot into an installed update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "policy")]
pub(crate) enum Reboot {
    /// Right after the install.
    Now,
    /// Never by the agent: an operator (or something else) reboots.
    Never,
    /// Inside a daily window of device-local time, minutes after midnight; `start > end`
    /// wraps midnight (22:00-02:00).
    Window { start: u16, end: u16 },
}

impl Reboot {
    /// Whether `minutes` (after local midnight) is inside the window; `start` inclusive,
    /// `end` exclusive.
    pub(crate) fn window_open(&self, minutes: u16) -> bool {
        match *self {
            Reboot::Now => true,
            Reboot::Never => false,
            Reboot::Window { start, end } if start < end => (start..end).contains(&minutes),
            Reboot::Window { start, end } => minutes >= start || minutes < end,
        }
    }
}

impl std::fmt::Display for Reboot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Reboot::Now => f.write_str("now"),
            Reboot::Never => f.write_str("never (operator)"),
            Reboot::Window { start, end } => write!(
                f,
                "in window {:02}:{:02}-{:02}:{:02}",
                start / 60,
                start % 60,
                end / 60,
                end % 60
            ),
        }
    }
}

/// Checks the new root filesystem must pass before the update is committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Health {
    /// Bound for all checks, counted from the first run on the new root filesystem
    /// that reached the fleet repository.
    pub(crate) timeout_seconds: u64,
    /// How long a new root filesystem may stay unable to reach the fleet repository
    /// (unverified) before it is rolled back; the artifact is then retried later.
    pub(crate) offline_timeout_seconds: u64,
    pub(crate) units: Vec<String>,
    pub(crate) commands: Vec<String>,
    pub(crate) urls: Vec<String>,
}

/// Exponential backoff for download and install errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Retry {
    pub(crate) initial_seconds: u64,
    pub(crate) max_seconds: u64,
}

impl Retry {
    /// The delay after the `attempts`-th consecutive failure (1-based).
    pub(crate) fn delay(&self, attempts: u32) -> u64 {
        let factor = 1u64
            .checked_shl(attempts.saturating_sub(1))
            .unwrap_or(u64::MAX);
        self.initial_seconds
            .saturating_mul(factor)
            .min(self.max_seconds)
    }
}

pub(crate) const DEFAULT_HEALTH_TIMEOUT: u64 = 300;
pub(crate) const DEFAULT_OFFLINE_TIMEOUT: u64 = 3600;
pub(crate) const DEFAULT_RETRY_INITIAL: u64 = 600;
pub(crate) const DEFAULT_RETRY_MAX: u64 = 86_400;

impl Default for Health {
    fn default() -> Self {
        Health {
            timeout_seconds: DEFAULT_HEALTH_TIMEOUT,
            offline_timeout_seconds: DEFAULT_OFFLINE_TIMEOUT,
            units: vec![],
            commands: vec![],
            urls: vec![],
        }
    }
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            initial_seconds: DEFAULT_RETRY_INITIAL,
            max_seconds: DEFAULT_RETRY_MAX,
        }
    }
}

impl OsDecl {
    /// The image declared for a device type, if any.
    pub(crate) fn image_for(&self, device_type: Option<&str>) -> Option<&Image> {
        device_type.and_then(|t| self.images.get(t))
    }
}

// ---------------------------------------------------------------- raw schema

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOs {
    images: BTreeMap<String, RawImage>,
    reboot: Option<Spanned<String>>,
    health: Option<RawHealth>,
    retry: Option<RawRetry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    artifact: Spanned<String>,
    uri: Spanned<String>,
    sha256: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    timeout_seconds: Option<Spanned<u64>>,
    offline_timeout_seconds: Option<Spanned<u64>>,
    #[serde(default)]
    units: Vec<Spanned<String>>,
    #[serde(default)]
    commands: Vec<Spanned<String>>,
    #[serde(default)]
    urls: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    initial_seconds: Option<Spanned<u64>>,
    max_seconds: Option<Spanned<u64>>,
}

/// Reads the `os:` key of fleet.yml's top-level mapping (`file` names it in errors).
/// None when there is no `os:` key or a problem was found (pushed to `problems`).
pub(crate) fn read(file: &str, top: &Node, problems: &mut Vec<Invalid>) -> Option<OsDecl> {
    let node = top.as_mapping()?.get_node("os")?;
    if !matches!(node, Node::Mapping(_)) {
        problems.push(Invalid::at(
            file,
            node.span(),
            "os: expected a mapping with images, reboot, health and retry",
        ));
        return None;
    }
    let raw = match yaml::typed::<RawOs>(file, node) {
        Ok(r) => r,
        Err(mut p) => {
            p.message = format!("os: {}", p.message);
            problems.push(p);
            return None;
        }
    };
    let before = problems.len();
    let mut bad = |span: &marked_yaml::Span, message: String| {
        problems.push(Invalid::at(file, span, message));
    };
    let images = read_images(raw.images, &mut bad);
    let reboot = match &raw.reboot {
        None => Reboot::Now,
        Some(r) => parse_reboot(r.as_str()).unwrap_or_else(|| {
            bad(
                r.span(),
                "os.reboot: expected now, never or a window \"HH:MM-HH:MM\"".into(),
            );
            Reboot::Now
        }),
    };
    let health = raw
        .health
        .map(|h| read_health(h, &mut bad))
        .unwrap_or_default();
    let retry = raw
        .retry
        .map(|r| read_retry(r, &mut bad))
        .unwrap_or_default();
    (problems.len() == before).then_some(OsDecl {
        images,
        reboot,
        health,
        retry,
    })
}

type Bad<'a> = dyn FnMut(&marked_yaml::Span, String) + 'a;

fn read_images(raw: BTreeMap<String, RawImage>, bad: &mut Bad) -> BTreeMap<String, Image> {
    raw.into_iter()
        .map(|(device_type, img)| {
            let image = check_image(&format!("os.images.{device_type}"), img, bad);
            (device_type, image)
        })
        .collect()
}

/// An image's values checked; `key` names it in messages.
fn check_image(key: &str, img: RawImage, bad: &mut Bad) -> Image {
    let artifact = img.artifact.as_str().trim();
    if artifact.is_empty()
        || artifact
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        bad(
            img.artifact.span(),
            format!("{key}.artifact: expected an artifact name without spaces (as `mender-update show-artifact` prints it)"),
        );
    }
    let uri = img.uri.as_str();
    if !(uri.starts_with('/') || http_url(uri)) {
        bad(
            img.uri.span(),
            format!(
                "{key}.uri: expected an http:// or https:// URL or an absolute path on the device"
            ),
        );
    }
    let sha256 = img.sha256.as_ref().map(|s| s.as_str().to_ascii_lowercase());
    if let (Some(s), Some(h)) = (&img.sha256, &sha256) {
        if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
            bad(
                s.span(),
                format!("{key}.sha256: expected 64 hexadecimal digits"),
            );
        }
    }
    Image {
        artifact: artifact.to_string(),
        uri: uri.to_string(),
        sha256,
    }
}

/// `os_image:` of a group_vars or host_vars file: the OS image of that group or device,
/// above fleet.yml's image for its device type. None when a problem was found.
pub(crate) fn read_image_override(
    file: &str,
    node: &Node,
    problems: &mut Vec<Invalid>,
) -> Option<Image> {
    let raw = match yaml::typed::<RawImage>(file, node) {
        Ok(r) => r,
        Err(mut p) => {
            p.message = format!("os_image: {}", p.message);
            problems.push(p);
            return None;
        }
    };
    let before = problems.len();
    let image = check_image("os_image", raw, &mut |span, message| {
        problems.push(Invalid::at(file, span, message))
    });
    (problems.len() == before).then_some(image)
}

fn read_health(h: RawHealth, bad: &mut Bad) -> Health {
    let mut health = Health::default();
    if let Some(t) = &h.timeout_seconds {
        if **t == 0 {
            bad(
                t.span(),
                "os.health.timeout_seconds: expected a whole number of seconds above 0".into(),
            );
        }
        health.timeout_seconds = **t;
    }
    if let Some(t) = &h.offline_timeout_seconds {
        if **t == 0 {
            bad(
                t.span(),
                "os.health.offline_timeout_seconds: expected a whole number of seconds above 0"
                    .into(),
            );
        }
        health.offline_timeout_seconds = **t;
    }
    for u in &h.units {
        let name = u.as_str();
        if name.is_empty()
            || name.starts_with('-')
            || name.contains('/')
            || name.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            bad(
                u.span(),
                "os.health.units: expected a systemd unit name (ssh.service)".into(),
            );
        }
        health.units.push(name.to_string());
    }
    for c in &h.commands {
        if c.as_str().trim().is_empty() {
            bad(
                c.span(),
                "os.health.commands: expected a shell command (run with sh -c)".into(),
            );
        }
        health.commands.push(c.as_str().to_string());
    }
    for u in &h.urls {
        if !http_url(u.as_str()) {
            bad(
                u.span(),
                "os.health.urls: expected an http:// or https:// URL".into(),
            );
        }
        health.urls.push(u.as_str().to_string());
    }
    health
}

fn read_retry(r: RawRetry, bad: &mut Bad) -> Retry {
    let mut retry = Retry::default();
    if let Some(i) = &r.initial_seconds {
        if **i == 0 {
            bad(
                i.span(),
                "os.retry.initial_seconds: expected a whole number of seconds above 0".into(),
            );
        }
        retry.initial_seconds = **i;
    }
    if let Some(m) = &r.max_seconds {
        retry.max_seconds = **m;
    }
    if retry.max_seconds < retry.initial_seconds {
        let span = r
            .max_seconds
            .as_ref()
            .or(r.initial_seconds.as_ref())
            .map(|s| s.span());
        if let Some(span) = span {
            bad(
                span,
                format!(
                    "os.retry.max_seconds: expected at least initial_seconds ({})",
                    retry.initial_seconds
                ),
            );
        }
    }
    retry
}

fn http_url(s: &str) -> bool {
    ["http://", "https://"].iter().any(|p| {
        s.strip_prefix(p).is_some_and(|rest| {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            !host.is_empty() && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        })
    })
}

/// `now`, `never` or `HH:MM-HH:MM` (24-hour clock, start and end different).
pub(crate) fn parse_reboot(s: &str) -> Option<Reboot> {
    match s {
        "now" => return Some(Reboot::Now),
        "never" => return Some(Reboot::Never),
        _ => {}
    }
    let (a, b) = s.split_once('-')?;
    let (start, end) = (hhmm(a)?, hhmm(b)?);
    (start != end).then_some(Reboot::Window { start, end })
}

fn hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !(h.chars().chain(m.chars())).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Option<OsDecl>, Vec<String>> {
        let node = yaml::parse("fleet.yml", text.as_bytes()).map_err(|e| vec![e.to_string()])?;
        let mut problems = Vec::new();
        let decl = read("fleet.yml", &node, &mut problems);
        if problems.is_empty() {
            Ok(decl)
        } else {
            Err(problems.iter().map(|p| p.to_string()).collect())
        }
    }

    #[test]
    fn a_full_declaration_reads_with_its_defaults_filled_in() {
        let d = load(
            "format: 1\nos:\n  images:\n    pi4-sim:\n      artifact: fleet-os-2\n      uri: http://127.0.0.1:8123/fleet-os-2.mender\n      sha256: \"ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789\"\n  reboot: 22:30-02:00\n  health:\n    units: [ssh.service]\n",
        )
        .unwrap()
        .unwrap();
        let img = d.image_for(Some("pi4-sim")).unwrap();
        assert_eq!(img.artifact, "fleet-os-2");
        assert_eq!(
            img.sha256.as_deref(),
            Some("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789")
        );
        assert_eq!(
            d.reboot,
            Reboot::Window {
                start: 22 * 60 + 30,
                end: 120
            }
        );
        assert_eq!(d.health.timeout_seconds, 300);
        assert_eq!(d.health.offline_timeout_seconds, 3600);
        assert_eq!(d.health.units, ["ssh.service"]);
        assert_eq!(d.retry, Retry::default());
        assert!(d.image_for(Some("pi3")).is_none());
        assert!(d.image_for(None).is_none());
    }

    #[test]
    fn no_os_key_is_no_declaration() {
        assert_eq!(load("format: 1\n").unwrap(), None);
    }

    #[test]
    fn every_problem_is_named_with_its_position() {
        let errs = load(
            "format: 1\nos:\n  images:\n    pi4:\n      artifact: \"a b\"\n      uri: ftp://x/y\n      sha256: abc\n  reboot: later\n  health:\n    timeout_seconds: 0\n    urls: [\"localhost:80\"]\n    offline_timeout_seconds: 0\n  retry:\n    initial_seconds: 100\n    max_seconds: 10\n",
        )
        .unwrap_err();
        assert_eq!(
            errs,
            [
                "fleet.yml:5:17: os.images.pi4.artifact: expected an artifact name without spaces (as `mender-update show-artifact` prints it)",
                "fleet.yml:6:12: os.images.pi4.uri: expected an http:// or https:// URL or an absolute path on the device",
                "fleet.yml:7:15: os.images.pi4.sha256: expected 64 hexadecimal digits",
                "fleet.yml:8:11: os.reboot: expected now, never or a window \"HH:MM-HH:MM\"",
                "fleet.yml:10:22: os.health.timeout_seconds: expected a whole number of seconds above 0",
                "fleet.yml:12:30: os.health.offline_timeout_seconds: expected a whole number of seconds above 0",
                "fleet.yml:11:12: os.health.urls: expected an http:// or https:// URL",
                "fleet.yml:15:18: os.retry.max_seconds: expected at least initial_seconds (100)",
            ]
        );
    }

    #[test]
    fn unknown_keys_and_missing_images_are_errors() {
        let errs = load("format: 1\nos:\n  image: {}\n").unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("fleet.yml:3:3: os: unknown key `image`"),
            "{errs:?}"
        );
        let errs = load("format: 1\nos:\n  images: {}\n  reboot: now\n  helth: {}\n").unwrap_err();
        assert!(errs[0].contains("unknown key `helth`"), "{errs:?}");
        let errs = load("format: 1\nos: now\n").unwrap_err();
        assert!(
            errs[0].starts_with("fleet.yml:2:5: os: expected a mapping"),
            "{errs:?}"
        );
    }

    #[test]
    fn reboot_policies_parse_and_windows_wrap_midnight() {
        assert_eq!(parse_reboot("now"), Some(Reboot::Now));
        assert_eq!(parse_reboot("never"), Some(Reboot::Never));
        for bad in [
            "02:00",
            "2:00-04:00",
            "02:00-02:00",
            "24:00-01:00",
            "01:60-02:00",
            "x",
        ] {
            assert_eq!(parse_reboot(bad), None, "{bad}");
        }
        let w = parse_reboot("02:00-04:00").unwrap();
        assert!(!w.window_open(119));
        assert!(w.window_open(120));
        assert!(w.window_open(239));
        assert!(!w.window_open(240));
        let wrap = parse_reboot("23:00-01:00").unwrap();
        assert!(wrap.window_open(23 * 60));
        assert!(wrap.window_open(0));
        assert!(!wrap.window_open(60));
        assert!(!wrap.window_open(12 * 60));
        assert_eq!(w.to_string(), "in window 02:00-04:00");
        assert_eq!(Reboot::Never.to_string(), "never (operator)");
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let r = Retry {
            initial_seconds: 600,
            max_seconds: 3000,
        };
        assert_eq!(
            [r.delay(1), r.delay(2), r.delay(3), r.delay(4), r.delay(80)],
            [600, 1200, 2400, 3000, 3000]
        );
    }
}
