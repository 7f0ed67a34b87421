//! Politeness towards a server that is down or overloaded: after a failed poll (the
//! server could not be reached, or answered 429 or 503) the next polls wait. The wait
//! is the server's `Retry-After` when it sent one, plus a random time in [0, window]
//! ("full jitter"). The first failure has no window (a blip: the timer's next run asks
//! again, as it always did); from the second failure in a row the window is
//! `[http] backoff_base_secs`, doubling with each failure up to `backoff_max_secs`. The timer restarts the process, so the
//! wait is kept in the state directory (`backoff`: failures and the time before which
//! no poll is made, seconds since the epoch); a run within it uses the last fetched
//! commit without asking the server. A successful poll removes the file.

use std::hash::{BuildHasher, Hasher};
use std::path::Path;

use crate::config::{Config, Http};
use crate::host::Host;
use crate::time::{format_time, now};

const FILE: &str = "backoff";
/// A `Retry-After` longer than a day is taken as a day.
const MOST_RETRY_AFTER: u64 = 86_400;

fn read(dir: &Path) -> (u32, u64) {
    let text = std::fs::read_to_string(dir.join(FILE)).unwrap_or_default();
    let mut words = text.split_whitespace().map(|w| w.parse().unwrap_or(0));
    let failures = words.next().unwrap_or(0).min(64) as u32;
    (failures, words.next().unwrap_or(0))
}

/// Why no poll is made now: the backoff of an earlier failure still runs.
pub(super) fn waiting(host: &Host, config: &Config) -> Option<String> {
    let (failures, until) = read(&host.path(&config.state_dir));
    (now() < until).then(|| {
        format!(
            "not asking the server before {} (backing off after {failures} failed polls)",
            format_time(until)
        )
    })
}

/// The wait after the `failures`-th failure in a row.
fn delay(failures: u32, retry_after: Option<u64>, http: &Http, random: u64) -> u64 {
    let window = match failures {
        0 | 1 => 0,
        n => (http.backoff_base_secs << (n - 2).min(32)).min(http.backoff_max_secs),
    };
    retry_after.unwrap_or(0).min(MOST_RETRY_AFTER) + random % (window + 1)
}

/// Records a failed poll. The file is written atomically; a failure to write it is
/// only logged (the run's own outcome stands).
pub(super) fn failed(host: &Host, config: &Config, retry_after: Option<u64>) {
    let dir = host.path(&config.state_dir);
    let failures = read(&dir).0 + 1;
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let until = now() + delay(failures, retry_after, &config.http, random);
    // The state directory's own rules: private, written atomically (as state.json).
    let text = format!("{failures} {until}\n");
    let written = crate::host::private_dir(&dir)
        .and_then(|()| crate::host::write_atomic(&dir.join(FILE), text.as_bytes(), 0o600, None));
    if let Err(e) = written {
        log::warn!("cannot record the backoff in {}: {e}", dir.display());
    }
}

/// A poll got through: the next one is made at the timer's time.
pub(super) fn succeeded(host: &Host, config: &Config) {
    let _ = std::fs::remove_file(host.path(&config.state_dir).join(FILE));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(base: u64, max: u64) -> Http {
        Http {
            backoff_base_secs: base,
            backoff_max_secs: max,
            ..Http::default()
        }
    }

    #[test]
    fn the_window_doubles_up_to_the_cap_and_the_jitter_is_full() {
        let c = config(60, 900);
        // The largest random number reaches the window's end, zero its start.
        let top = |n| delay(n, None, &c, u64::MAX - (u64::MAX % 1000));
        // The first failure: no wait.
        assert_eq!(delay(1, None, &c, 12345), 0);
        assert_eq!(delay(2, None, &c, 0), 0);
        assert_eq!(delay(2, None, &c, 60), 60);
        assert_eq!(delay(2, None, &c, 61), 0);
        assert_eq!(delay(3, None, &c, 120), 120);
        assert_eq!(delay(5, None, &c, 480), 480);
        assert_eq!(delay(6, None, &c, 900), 900, "capped: 960 > 900");
        assert_eq!(delay(60, None, &c, 900), 900);
        assert!(top(64) <= 900);
        // Retry-After is a floor, with the jitter on top; absurd values are a day.
        assert_eq!(delay(1, Some(120), &c, 7), 120);
        assert_eq!(delay(2, Some(120), &c, 30), 150);
        assert_eq!(delay(1, Some(u64::MAX), &c, 0), MOST_RETRY_AFTER);
    }
}
