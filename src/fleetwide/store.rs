//! Reading the stored run reports: the journal files systemd-journal-remote writes (a
//! directory, read with `journalctl -D DIR -o json --all`), or such an export in a
//! file (`journalctl ... -o json > FILE`: JSON lines), for a maintainer's machine
//! without journalctl. The transport delivers at least once (docs/reporting.md: the
//! uploader sends the entry at its saved cursor again after a restart), so a report
//! stored twice, the same `id`, counts once; gaps in a device's numbers are reports
//! that never arrived (a spool that overflowed, a power cut before journald synced).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use crate::error::{Error, Result};
use crate::host::command::{Cmd, Runner, System};
use crate::report::{Report, MESSAGE_ID};

/// Every report read, once each, by device.
#[derive(Debug, Default)]
pub(crate) struct Reports {
    /// Each device's reports in their numbers' order (`seq`).
    pub(crate) by_device: BTreeMap<String, Vec<Report>>,
    /// Entries read, and how many of them were a report already read.
    pub(crate) entries: usize,
    pub(crate) duplicates: usize,
    /// Entries whose report could not be read (another schema, damaged).
    pub(crate) unreadable: usize,
}

impl Reports {
    /// The device's last report.
    pub(crate) fn latest(&self, device: &str) -> Option<&Report> {
        self.by_device.get(device)?.last()
    }

    /// The device's last report that carries its facts.
    pub(crate) fn latest_facts(&self, device: &str) -> Option<&Report> {
        self.by_device
            .get(device)?
            .iter()
            .rev()
            .find(|r| r.facts.is_some())
    }

    /// The numbers missing between a device's first and last report read.
    pub(crate) fn missing(&self, device: &str) -> u64 {
        let Some(list) = self.by_device.get(device) else {
            return 0;
        };
        list.windows(2)
            .map(|w| w[1].seq.saturating_sub(w[0].seq + 1))
            .sum()
    }
}

/// Reads the reports at `path`: a directory of journal files, or a JSON-lines export.
pub(crate) fn read(path: &Path) -> Result<Reports> {
    let text = if path.is_dir() {
        journalctl(path)?
    } else {
        std::fs::read_to_string(path).map_err(|e| Error::io("cannot read the reports", path, e))?
    };
    Ok(parse(&text))
}

/// `journalctl -D DIR`: every report entry, with fields over 4096 bytes in full
/// (`--all`; without it journalctl prints them as null).
fn journalctl(dir: &Path) -> Result<String> {
    let dir_arg = format!("--directory={}", dir.display());
    let matching = format!("MESSAGE_ID={MESSAGE_ID}");
    let argv = [
        "journalctl",
        dir_arg.as_str(),
        "--output=json",
        "--all",
        "--no-pager",
        "--quiet",
        "--output-fields=FLEET_REPORT",
        matching.as_str(),
    ];
    let out = System.run(Cmd {
        argv: &argv,
        chroot: None,
        exec: None,
    })?;
    // journalctl exits 1 when nothing matches in some versions: no reports, not an error.
    if out.code != 0 && !out.stdout.trim().is_empty() {
        return Err(Error::Command {
            command: argv.join(" "),
            status: format!("exit code {}", out.code),
            stderr: out.stderr,
        });
    }
    Ok(out.stdout)
}

/// JSON lines as `journalctl -o json` prints them: the report is the FLEET_REPORT field.
pub(crate) fn parse(text: &str) -> Reports {
    let mut reports = Reports::default();
    let mut seen: HashSet<String> = HashSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        reports.entries += 1;
        let report = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|entry| field_text(&entry["FLEET_REPORT"]))
            .and_then(|json| serde_json::from_str::<Report>(&json).ok());
        let Some(report) = report else {
            reports.unreadable += 1;
            continue;
        };
        if !seen.insert(report.id.clone()) {
            reports.duplicates += 1;
            continue;
        }
        reports
            .by_device
            .entry(report.device.clone())
            .or_default()
            .push(report);
    }
    for list in reports.by_device.values_mut() {
        // Stable: two reports with one number (a state file that was reset) keep
        // the order they were stored in.
        list.sort_by_key(|r| r.seq);
    }
    reports
}

/// A journal field in JSON output: a string, or an array of bytes when it is not
/// valid UTF-8 or holds control characters.
fn field_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(bytes) => {
            let b: Option<Vec<u8>> = bytes
                .iter()
                .map(|x| x.as_u64().and_then(|n| u8::try_from(n).ok()))
                .collect();
            String::from_utf8(b?).ok()
        }
        _ => None,
    }
}
