//! Entry points for the fuzz targets (fuzz/, scripts/fuzz.sh), built only with the
//! `fuzzing` feature: the whole loader on a fleet repository decoded from bytes, and the
//! YAML layer. Whatever the bytes, loading must end with a desired state or problems,
//! never a panic, and quickly (the fuzzer's time limit is 1 s per input).

use std::collections::BTreeMap;

use crate::fleet::source::Source;
use crate::fleet::{Fleet, FleetFile};
use crate::resources::Reserved;

/// How many of an input's devices are loaded (a device loads one; more add time, not
/// coverage).
const DEVICES: usize = 4;

/// Decodes a fleet repository from `data`: a sequence of entries, each a one-byte name
/// length, the name (a path such as `roles/web/role.yml`), a two-byte little-endian
/// content length and the content. A short tail is ignored.
pub fn decode(data: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut rest = data;
    while let [n, tail @ ..] = rest {
        let n = *n as usize;
        if tail.len() < n + 2 {
            break;
        }
        let name = String::from_utf8_lossy(&tail[..n]).into_owned();
        let len = u16::from_le_bytes([tail[n], tail[n + 1]]) as usize;
        let body = &tail[n + 2..];
        let len = len.min(body.len());
        files.insert(name, body[..len].to_vec());
        rest = &body[len..];
    }
    files
}

/// The inverse of [`decode`], for seeds.
pub fn encode(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, content) in files {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(content.len() as u16).to_le_bytes());
        out.extend_from_slice(content);
    }
    out
}

/// Loads the fleet repository in `data` for the first devices its inventory and
/// host_vars name, then reads every role, as `validate` does. Settings that lift the
/// bounds (`max_...`) are left out: the time limit is about the defaults.
pub fn load_fleet(data: &[u8]) {
    let files = decode(data);
    if files
        .get(FleetFile::NAME)
        .is_some_and(|f| f.windows(4).any(|w| w == b"max_"))
    {
        return;
    }
    let source = Source::Files(files);
    let Ok(file) = FleetFile::read(&source) else {
        return;
    };
    let Ok(fleet) = Fleet::load(&source, None, &file, Reserved::default()) else {
        return;
    };
    let mut devices = fleet.named_devices();
    devices.truncate(DEVICES);
    for id in devices {
        let device_type = fleet.host_facts(&id).ok().and_then(|f| f.device_type);
        let device = crate::fleet::stand_in(&id, device_type);
        let _ = fleet.for_device(&device);
    }
    let _ = fleet.check_every_role();
}

/// Parses `data` as a YAML file of the repository and types it as fleet.yml, a vars
/// file and a role would be.
pub fn parse_yaml(data: &[u8]) {
    crate::fleet::fuzz_yaml(data);
}
