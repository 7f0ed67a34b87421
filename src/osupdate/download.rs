//! The artifact file for `install`: an absolute path on the device (checked against its
//! sha256 when declared), or an http(s) URL downloaded to the state directory (on /data
//! on a Mender device): a temporary file, hashed while streamed, checked, then renamed.
//! The download has an overall deadline besides its per-read timeout, so a server that
//! trickles cannot hold the run (and the run lock) forever.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::redact;
use crate::digest::sha256_copy;
use crate::error::{Error, Result};
use crate::fleet::os::Image;
use crate::host::{sync_dir, Host};
use crate::osupdate::IMAGE_FILE;

/// The artifact as a file on this machine, ready for `install`.
pub(super) fn fetch(
    host: &Host,
    state_dir: &Path,
    img: &Image,
    timeout: Duration,
    deadline: Duration,
) -> Result<PathBuf> {
    if !img.uri.starts_with('/') {
        return download(host, state_dir, img, timeout, deadline);
    }
    let path = host.path(Path::new(&img.uri));
    if let Some(want) = &img.sha256 {
        let f = std::fs::File::open(&path)
            .map_err(|e| Error::io("cannot read the OS image", &path, e))?;
        let got = sha256_copy(f, None).map_err(|e| Error::io("cannot read", &path, e))?;
        check_sha(&img.uri, want, &got)?;
    }
    Ok(path)
}

/// Downloads to state_dir/os-image: a temporary file, checked, then renamed.
fn download(
    host: &Host,
    state_dir: &Path,
    img: &Image,
    timeout: Duration,
    deadline: Duration,
) -> Result<PathBuf> {
    let started = std::time::Instant::now();
    // ureq's global timeout ends the transfer; the message says which limit it was.
    let why = |e: String| {
        if started.elapsed() >= deadline {
            format!(
                "no complete answer within the deadline of {} s (agent.toml [http] download_deadline_secs)",
                deadline.as_secs()
            )
        } else {
            e
        }
    };
    let dir = host.path(state_dir);
    crate::host::private_dir(&dir)?;
    let dest = dir.join(IMAGE_FILE);
    let part = dir.join(format!(".{IMAGE_FILE}.part"));
    let shown = redact(&img.uri);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(crate::tls::config())
        .http_status_as_error(false)
        .timeout_connect(Some(timeout))
        .timeout_per_read(Some(timeout))
        .timeout_recv_response(Some(timeout))
        .timeout_global(Some(deadline))
        .build()
        .into();
    let response = agent
        .get(&img.uri)
        .call()
        .map_err(|e| Error::Other(format!("cannot download {shown}: {}", why(e.to_string()))))?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(Error::Other(format!(
            "cannot download {shown}: HTTP {status}"
        )));
    }
    let reader = response.into_body().into_reader();
    let result = (|| -> std::io::Result<String> {
        let _ = std::fs::remove_file(&part);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&part)?;
        let digest = sha256_copy(reader, Some(&mut out))?;
        out.sync_all()?;
        Ok(digest)
    })();
    let digest = match result {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(Error::Other(format!(
                "cannot download {shown}: {}",
                why(e.to_string())
            )));
        }
    };
    if let Some(want) = &img.sha256 {
        if let Err(e) = check_sha(&shown, want, &digest) {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    }
    std::fs::rename(&part, &dest)
        .and_then(|()| sync_dir(&dir))
        .map_err(|e| Error::io("cannot write", &dest, e))?;
    Ok(dest)
}

/// Removes a downloaded artifact (gone already is fine).
pub(super) fn remove(host: &Host, state_dir: &Path) {
    let path = host.path(state_dir).join(IMAGE_FILE);
    if let Err(e) = std::fs::remove_file(&path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            log::warn!("cannot remove {}: {e}", path.display());
        }
    }
}

fn check_sha(what: &str, want: &str, got: &str) -> Result<()> {
    if want.eq_ignore_ascii_case(got) {
        Ok(())
    } else {
        Err(Error::Other(format!(
            "{what}: sha256 is {got}, expected {want} (from fleet.yml)"
        )))
    }
}
