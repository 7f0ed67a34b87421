//! One run at a time per root: an exclusive flock on a file in the state directory,
//! released by the kernel when the process ends, however it ends.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

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
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(RunLock { _lock: lock }),
                Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
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
