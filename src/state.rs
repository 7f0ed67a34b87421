//! The agent's record of its runs: one JSON file in the state directory, written
//! atomically. It says what was applied (commit, time, outcome), what each resource
//! declared (digests, whether the agent created it), and which root filesystem it
//! belongs to: after an A/B OS update the new root has none of that, so a state from
//! another root filesystem means "converge everything, prune nothing".

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use log::warn;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::host::{write_atomic, Host};

pub const STATE_FILE: &str = "state.json";
/// A marker on the root filesystem itself; absent on a freshly installed slot.
pub const ROOTFS_MARKER: &str = "/etc/fleet-agent/rootfs-id";
const VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResourceState {
    pub kind: String,
    pub path: PathBuf,
    pub digest: String,
    /// The path did not exist before the agent made it: it may be pruned later.
    pub created: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Changes were applied.
    Applied,
    /// Nothing to do: the device already matched.
    Unchanged,
    /// The fleet repository did not validate; nothing was applied.
    Invalid,
    /// Applying failed part way; the next run converges again.
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct State {
    pub version: u32,
    /// Identity of the root filesystem this state describes.
    pub rootfs: Option<String>,
    /// The commit last applied successfully.
    pub applied_commit: Option<String>,
    /// The commit the last run looked at (may differ after a failure).
    pub last_commit: Option<String>,
    /// Where the fleet repository came from: URL and branch, or a directory.
    pub source: Option<String>,
    /// Seconds since the epoch when the last run ended.
    pub time: Option<u64>,
    pub outcome: Option<Outcome>,
    pub message: Option<String>,
    pub changes: usize,
    /// True when the last run could not reach the git server.
    #[serde(default)]
    pub offline: bool,
    pub resources: BTreeMap<String, ResourceState>,
    /// The A/B OS update (src/osupdate.rs). Not tied to a root filesystem: it is carried
    /// over when the rootfs changes, since that change is the update's own doing.
    #[serde(default)]
    pub os_update: crate::osupdate::OsState,
}

impl State {
    pub fn path(host: &Host, state_dir: &Path) -> PathBuf {
        host.path(state_dir).join(STATE_FILE)
    }

    /// Reads the state; a missing, unreadable or corrupt file is "unknown" (None), with
    /// a warning, never an error: the run then converges everything.
    pub fn load(path: &Path) -> Option<State> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(
                    "cannot read the state file {}: {e}; converging everything",
                    path.display()
                );
                return None;
            }
        };
        match serde_json::from_slice::<State>(&bytes) {
            Ok(s) if s.version == VERSION => Some(s),
            Ok(s) => {
                warn!(
                    "state file {} has version {}; converging everything",
                    path.display(),
                    s.version
                );
                None
            }
            Err(e) => {
                warn!(
                    "state file {} is damaged ({e}); converging everything",
                    path.display()
                );
                None
            }
        }
    }

    pub fn save(&mut self, path: &Path) -> Result<()> {
        self.version = VERSION;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io("cannot create the state directory", dir, e))?;
        }
        let mut json = serde_json::to_vec_pretty(self).expect("state serializes");
        json.push(b'\n');
        write_atomic(path, &json, 0o600, None)
    }
}

/// The identity of the root filesystem: a random id kept on it, and the device number
/// of its mount (A and B slots differ even when both images carry the same marker).
/// None when the marker is missing (a new slot or a new device).
pub fn rootfs_id(host: &Host) -> Result<Option<String>> {
    let marker = host.path(Path::new(ROOTFS_MARKER));
    let id = match std::fs::read_to_string(&marker) {
        Ok(s) => s.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("cannot read", &marker, e)),
    };
    let dev = std::fs::metadata(host.root())
        .map_err(|e| Error::io("cannot inspect", host.root(), e))?
        .dev();
    Ok(Some(format!("{id}@{dev:x}")))
}

/// Creates the marker when missing and returns the identity.
pub fn ensure_rootfs_id(host: &Host) -> Result<String> {
    if let Some(id) = rootfs_id(host)? {
        return Ok(id);
    }
    new_marker(host, Path::new(ROOTFS_MARKER))?;
    Ok(rootfs_id(host)?.expect("marker just written"))
}

/// A marker file's content (trimmed); None when missing or empty.
pub fn read_marker(host: &Host, device_path: &Path) -> Result<Option<String>> {
    let marker = host.path(device_path);
    match std::fs::read_to_string(&marker) {
        Ok(s) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot read", &marker, e)),
    }
}

/// Writes a fresh random marker (atomically, replacing any) and returns it.
pub fn new_marker(host: &Host, device_path: &Path) -> Result<String> {
    let marker = host.path(device_path);
    if let Some(dir) = marker.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
    }
    let mut random = [0u8; 16];
    getrandom(&mut random);
    let id: String = random.iter().map(|b| format!("{b:02x}")).collect();
    write_atomic(&marker, format!("{id}\n").as_bytes(), 0o644, None)?;
    Ok(id)
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .is_err()
    {
        // No /dev/urandom (odd chroot): time and pid are unique enough for a marker.
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        let d = crate::resource::sha256_hex(seed.as_bytes());
        for (i, b) in buf.iter_mut().enumerate() {
            *b = u8::from_str_radix(&d[i * 2..i * 2 + 2], 16).unwrap_or(0);
        }
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
