//! One run at a time per root: an exclusive flock on a file in the state directory,
//! released by the kernel when the process ends, however it ends.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

/// How long this process waited for the lock, in milliseconds plus one (0: it did not
/// wait). One process is one run, so the run's counters read it (src/report/).
static WAITED_MS: AtomicU64 = AtomicU64::new(0);

/// How long this run waited for another run's lock, if it had to.
pub(crate) fn waited() -> Option<Duration> {
    match WAITED_MS.load(Ordering::Relaxed) {
        0 => None,
        n => Some(Duration::from_millis(n - 1)),
    }
}

pub(crate) struct RunLock {
    _lock: Flock<File>,
}

impl RunLock {
    /// Takes the lock, waiting up to `wait` for another run to finish.
    pub(crate) fn acquire(dir: &Path, wait: Duration) -> Result<RunLock> {
        crate::host::private_dir(dir)?;
        let path = dir.join("lock");
        let start = Instant::now();
        let mut file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("cannot open the lock file", &path, e))?;
        let mut waited = false;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => {
                    if waited {
                        let ms = start.elapsed().as_millis() as u64;
                        WAITED_MS.store(ms + 1, Ordering::Relaxed);
                    }
                    return Ok(RunLock { _lock: lock });
                }
                Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                    waited = true;
                    if start.elapsed() >= wait {
                        return Err(Error::Locked {
                            path,
                            waited_secs: wait.as_secs(),
                        });
                    }
                    file = f;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err((_, e)) => return Err(Error::io("cannot lock", &path, e.into())),
            }
        }
    }
}
