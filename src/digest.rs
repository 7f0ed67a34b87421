//! Digests and their hex spelling: what the state records of a resource, what an
//! artifact or a content is checked against.

use std::io::{Read, Write};

use sha2::{Digest, Sha256};

/// Lowercase hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The lowercase hex SHA-256 of data.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Streams a reader through SHA-256, copying it to `out` on the way; bounded memory.
pub(crate) fn sha256_copy(
    mut r: impl Read,
    mut out: Option<&mut dyn Write>,
) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some(o) = out.as_deref_mut() {
            o.write_all(&buf[..n])?;
        }
    }
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_and_sha256() {
        assert_eq!(super::hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(
            super::sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut copy = Vec::new();
        let d = super::sha256_copy(&b"abc"[..], Some(&mut copy)).unwrap();
        assert_eq!(d, super::sha256_hex(b"abc"));
        assert_eq!(copy, b"abc");
    }
}
