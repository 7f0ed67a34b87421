//! Digests and their hex spelling: what the state records of a resource, what an
//! artifact or a content is checked against.

use std::io::{Read, Write};

use ring::digest::{Context, SHA1_FOR_LEGACY_USE_ONLY, SHA256};

/// An incremental SHA-256 (ring's, already in the binary for TLS).
#[derive(Clone)]
pub(crate) struct Sha256(Context);

impl Sha256 {
    pub(crate) fn new() -> Sha256 {
        Sha256(Context::new(&SHA256))
    }

    pub(crate) fn update(&mut self, data: impl AsRef<[u8]>) {
        self.0.update(data.as_ref());
    }

    pub(crate) fn finalize(self) -> Vec<u8> {
        self.0.finish().as_ref().to_vec()
    }

    pub(crate) fn digest(data: impl AsRef<[u8]>) -> Vec<u8> {
        ring::digest::digest(&SHA256, data.as_ref())
            .as_ref()
            .to_vec()
    }
}

/// An incremental SHA-1, for git's object ids only (never for trust).
#[derive(Clone)]
pub(crate) struct Sha1(Context);

impl Sha1 {
    pub(crate) fn new() -> Sha1 {
        Sha1(Context::new(&SHA1_FOR_LEGACY_USE_ONLY))
    }

    pub(crate) fn update(&mut self, data: impl AsRef<[u8]>) {
        self.0.update(data.as_ref());
    }

    pub(crate) fn finalize(self) -> Vec<u8> {
        self.0.finish().as_ref().to_vec()
    }
}

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
