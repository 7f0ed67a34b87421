//! Reading the stored run reports: the journal files systemd-journal-remote writes (a
//! directory, read with `journalctl -D DIR -o json --all`), or such an export in a
//! file (`journalctl ... -o json > FILE`: JSON lines), for a maintainer's machine
//! without journalctl. The transport delivers at least once (docs/reporting.md: the
//! uploader sends the entry at its saved cursor again after a restart), so a report
//! stored twice, the same `id`, counts once; gaps in a device's numbers are reports
//! that never arrived (a spool that overflowed, a power cut before journald synced).

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use crate::error::{Error, Result};
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
    if path.is_dir() {
        return journalctl(path);
    }
    let file =
        std::fs::File::open(path).map_err(|e| Error::io("cannot read the reports", path, e))?;
    parse_from(BufReader::new(file)).map_err(|e| Error::io("cannot read the reports", path, e))
}

/// `journalctl -D DIR`: every report entry, with fields over 4096 bytes in full
/// (`--all`; without it journalctl prints them as null). Its output is read as a stream,
/// line by line: a fleet's store holds far more than any bound on a command's output
/// (this runs on a maintainer's machine, never through the device's command runner).
fn journalctl(dir: &Path) -> Result<Reports> {
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
    let failed = |status: String, stderr: String| Error::Command {
        command: argv.join(" "),
        status,
        stderr,
    };
    let mut child = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run: {e}"), String::new()))?;
    let stderr = child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut text);
            text
        })
    });
    let stdout = child.stdout.take().expect("stdout is piped");
    let parsed = parse_from(BufReader::new(stdout));
    let status = child
        .wait()
        .map_err(|e| failed(format!("cannot wait: {e}"), String::new()))?;
    let stderr = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    let reports =
        parsed.map_err(|e| failed(format!("cannot read its output: {e}"), stderr.clone()))?;
    // journalctl exits 1 when nothing matches in some versions: no reports, not an error.
    if !status.success() && reports.entries > 0 {
        return Err(failed(format!("{status}"), stderr));
    }
    Ok(reports)
}

/// JSON lines from a reader, one at a time (memory: the reports kept, not the text);
/// the report is each line's FLEET_REPORT field.
fn parse_from(reader: impl BufRead) -> std::io::Result<Reports> {
    let mut reports = Reports::default();
    let mut seen: HashSet<String> = HashSet::new();
    for line in reader.lines() {
        add_line(&mut reports, &mut seen, &line?);
    }
    sort(&mut reports);
    Ok(reports)
}

/// JSON lines as `journalctl -o json` prints them (tests): the report is the
/// FLEET_REPORT field.
#[cfg(test)]
pub(crate) fn parse(text: &str) -> Reports {
    parse_from(text.as_bytes()).expect("reading memory")
}

/// One line of `journalctl -o json`: a report, read once.
fn add_line(reports: &mut Reports, seen: &mut HashSet<String>, line: &str) {
    if line.trim().is_empty() {
        return;
    }
    reports.entries += 1;
    let report = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|entry| field_text(&entry["FLEET_REPORT"]))
        .and_then(|json| serde_json::from_str::<Report>(&json).ok());
    let Some(report) = report else {
        reports.unreadable += 1;
        return;
    };
    if !seen.insert(report.id.clone()) {
        reports.duplicates += 1;
        return;
    }
    reports
        .by_device
        .entry(report.device.clone())
        .or_default()
        .push(report);
}

/// Each device's reports in their numbers' order. Stable: two reports with one number
/// (a state file that was reset) keep the order they were stored in.
fn sort(reports: &mut Reports) {
    for list in reports.by_device.values_mut() {
        list.sort_by_key(|r| r.seq);
    }
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
