//! Sending one structured entry to a journald socket, by journald's native protocol
//! (systemd.io/JOURNAL_NATIVE_PROTOCOL): a datagram of `KEY=value\n` fields, a field
//! whose value holds a newline as `KEY\n`, its length (64-bit little endian), the value
//! and `\n`. A payload too large for one datagram goes in a sealed memfd whose
//! descriptor is passed instead. The report goes to its journal namespace's socket when
//! that one listens (the spool that systemd-journal-upload ships, docs/reporting.md),
//! else to the system journal, where it stays on the device.

use std::io::Write as _;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use rustix::fs::{fcntl_add_seals, memfd_create, MemfdFlags, SealFlags};
use rustix::net::{
    sendmsg_addr, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix,
};

/// The system journal's native socket.
pub(crate) const SYSTEM_SOCKET: &str = "/run/systemd/journal/socket";

/// The native socket of a journal namespace (`systemd-journald@NAMESPACE.socket`).
pub(crate) fn namespace_socket(namespace: &str) -> PathBuf {
    PathBuf::from(format!("/run/systemd/journal.{namespace}/socket"))
}

/// The payload of an entry: its fields in the native protocol.
pub(crate) fn encode(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in fields {
        if value.contains('\n') {
            out.extend_from_slice(key.as_bytes());
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
            out.extend_from_slice(value.as_bytes());
            out.push(b'\n');
        } else {
            out.extend_from_slice(key.as_bytes());
            out.push(b'=');
            out.extend_from_slice(value.as_bytes());
            out.push(b'\n');
        }
    }
    out
}

/// Sends one entry to the journald socket at `socket`. An error when nobody listens
/// there (ENOENT, ECONNREFUSED) or the entry could not be passed.
pub(crate) fn send(socket: &Path, payload: &[u8]) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    match sock.send_to(payload, socket) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::MSGSIZE.raw_os_error()) => {
            send_large(&sock, socket, payload)
        }
        Err(e) => Err(e),
    }
}

/// A payload larger than a datagram: written to a memfd, sealed (journald maps only
/// sealed memory), and its descriptor sent with an empty datagram.
fn send_large(sock: &UnixDatagram, socket: &Path, payload: &[u8]) -> std::io::Result<()> {
    let mut mem: std::fs::File = memfd_create(
        "fleet-agent-report",
        MemfdFlags::ALLOW_SEALING | MemfdFlags::CLOEXEC,
    )?
    .into();
    mem.write_all(payload)?;
    fcntl_add_seals(
        &mem,
        SealFlags::SEAL | SealFlags::SHRINK | SealFlags::WRITE | SealFlags::GROW,
    )?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [mem.as_fd()];
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("no room for the descriptor"));
    }
    sendmsg_addr(
        sock,
        &SocketAddrUnix::new(socket)?,
        &[],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_newlines_are_sent_with_their_length() {
        let p = encode(&[("MESSAGE", "one line"), ("FLEET_REPORT", "a\nb")]);
        let mut want = b"MESSAGE=one line\nFLEET_REPORT\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"a\nb\n");
        assert_eq!(p, want);
    }

    #[test]
    fn a_datagram_and_a_memfd_reach_a_listening_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(&path, b"MESSAGE=hi\n").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"MESSAGE=hi\n");
        // Nobody listens: an error the caller can fall back on.
        drop(listener);
        assert!(send(&path, b"MESSAGE=hi\n").is_err());
        assert!(send(&dir.path().join("none"), b"MESSAGE=hi\n").is_err());
    }
}
