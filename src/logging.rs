//! Logging: to the journal with structured fields (COMMIT, ROLE, RESOURCE) when the
//! agent runs under systemd, human-readable lines on stderr otherwise. Every journal
//! entry also carries the unit's INVOCATION_ID: journald finds a message's unit from
//! the sender's cgroup, which it cannot read once a short-lived process has exited, so
//! `journalctl INVOCATION_ID=… + _SYSTEMD_INVOCATION_ID=…` finds all of a run's lines.

use std::sync::atomic::{AtomicBool, Ordering};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// `-vv`: the details (why each unchanged resource is left alone) are logged at debug
/// level when this is set. A flag, not the trace level: release builds compile `trace!`
/// out everywhere (log's `release_max_level_debug`), since rustls' and ureq's trace
/// lines cost the arm binary's size budget.
static VERY_VERBOSE: AtomicBool = AtomicBool::new(false);

/// Whether `-vv` was given.
pub(crate) fn very_verbose() -> bool {
    VERY_VERBOSE.load(Ordering::Relaxed)
}

struct Stderr {
    level: LevelFilter,
}

impl Log for Stderr {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        match record.level() {
            Level::Error => eprintln!("error: {}", record.args()),
            Level::Warn => eprintln!("warning: {}", record.args()),
            Level::Info => eprintln!("{}", record.args()),
            _ => eprintln!(
                "{}: {}",
                record.level().as_str().to_lowercase(),
                record.args()
            ),
        }
    }

    fn flush(&self) {}
}

/// `verbosity`: 0 errors only (-q), 1 info (default), 2 debug (-v), 3 details (-vv).
pub(crate) fn init(verbosity: u8) {
    let level = match verbosity {
        0 => LevelFilter::Error,
        1 => LevelFilter::Info,
        _ => LevelFilter::Debug,
    };
    VERY_VERBOSE.store(verbosity >= 3, Ordering::Relaxed);
    // systemd sets JOURNAL_STREAM when stderr is connected to the journal.
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && systemd_journal_logger::connected_to_journal()
    {
        if let Ok(logger) = systemd_journal_logger::JournalLog::new() {
            let invocation = std::env::var("INVOCATION_ID")
                .ok()
                .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()));
            if logger
                .with_syslog_identifier("fleet-agent".into())
                .with_extra_fields(invocation.map(|id| ("INVOCATION_ID", id)))
                .install()
                .is_ok()
            {
                log::set_max_level(level);
                return;
            }
        }
    }
    if log::set_boxed_logger(Box::new(Stderr { level })).is_ok() {
        log::set_max_level(level);
    }
}
