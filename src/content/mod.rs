//! A file's content as a plan carries it. Inline content and rendered templates are
//! small and held in memory; a file of the fleet repository (`source:`) is a reference:
//! a blob of the local clone, or a file of a working tree (`--repo`, the built-in
//! roles), with its size and git blob id. A reference is read as a stream when it is
//! compared or written (store.rs reads git's objects with a fixed buffer), and every
//! byte read is hashed on the way: at the end the git blob id must match, so a damaged
//! object or a working-tree file changed since the plan is an error, never written.
//! Memory stays bounded whatever a file's size.

use std::io::{self, Read};
use std::path::PathBuf;

use crate::digest::Sha1;
use git2::Oid;

use crate::error::{Error, Result};

mod store;
pub(crate) use store::Store;

/// Content up to this size is read whole for a plan's diff; larger content is compared
/// by its id only.
pub(crate) const DIFF_LIMIT: u64 = 256 * 1024;

#[derive(Clone)]
pub(crate) enum Content {
    Bytes(Vec<u8>),
    /// A blob of a git repository, by its `objects` directory.
    Blob {
        objects: PathBuf,
        id: Oid,
        size: u64,
    },
    /// A file of a working tree, with the id it had when it was hashed.
    File {
        path: PathBuf,
        id: Oid,
        size: u64,
    },
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Content::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Content::Blob { id, size, .. } => write!(f, "Blob({id}, {size} bytes)"),
            Content::File { path, size, .. } => {
                write!(f, "File({}, {size} bytes)", path.display())
            }
        }
    }
}

impl Content {
    /// A file of a working tree, hashed now (as a stream).
    pub(crate) fn file(path: PathBuf) -> Result<Content> {
        let read = || -> io::Result<(Oid, u64)> {
            let f = std::fs::File::open(&path)?;
            let size = f.metadata()?.len();
            Ok((blob_id(f, size)?, size))
        };
        let (id, size) = read().map_err(|e| Error::io("cannot read", &path, e))?;
        Ok(Content::File { path, id, size })
    }

    pub(crate) fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Blob { size, .. } | Content::File { size, .. } => *size,
        }
    }

    /// The git blob id of the content.
    pub(crate) fn id(&self) -> Oid {
        match self {
            Content::Bytes(b) => blob_id(&b[..], b.len() as u64).expect("reads from memory"),
            Content::Blob { id, .. } | Content::File { id, .. } => *id,
        }
    }

    /// The content as a stream, checked against its id at the end.
    pub(crate) fn open(&self) -> Result<Verified> {
        let inner: Box<dyn Read + Send> = match self {
            Content::Bytes(b) => Box::new(io::Cursor::new(b.clone())),
            Content::Blob { objects, id, .. } => {
                let store = Store::open(objects).map_err(|e| self.error(e))?;
                store.blob(*id).map_err(|e| self.error(e))?.1
            }
            Content::File { path, .. } => {
                Box::new(std::fs::File::open(path).map_err(|e| Error::io("cannot read", path, e))?)
            }
        };
        Ok(Verified {
            inner,
            hasher: header(self.len()),
            read: 0,
            size: self.len(),
            id: self.id(),
            origin: self.clone_origin(),
            failure: None,
        })
    }

    /// All of the content, in memory (keys, templates: small by nature).
    pub(crate) fn read_all(&self) -> Result<Vec<u8>> {
        if let Content::Bytes(b) = self {
            return Ok(b.clone());
        }
        let mut r = self.open()?;
        let mut out = Vec::with_capacity(self.len().min(DIFF_LIMIT) as usize);
        match r.read_to_end(&mut out) {
            Ok(_) => Ok(out),
            Err(e) => Err(r.take_failure().unwrap_or_else(|| self.error(e))),
        }
    }

    fn clone_origin(&self) -> Option<PathBuf> {
        match self {
            Content::File { path, .. } => Some(path.clone()),
            Content::Blob { .. } | Content::Bytes(_) => None,
        }
    }

    /// What a failed read of this content means: a damaged clone, or a working-tree
    /// file that changed since it was hashed.
    fn error(&self, e: io::Error) -> Error {
        match self {
            Content::Blob { id, .. } => Error::Damaged(format!("blob {id}: {e}")),
            Content::File { path, .. } => Error::io("cannot read", path, e),
            Content::Bytes(_) => Error::Other(format!("cannot read content: {e}")),
        }
    }
}

/// The git blob id of `size` bytes read from `r` (SHA-1 of `blob <size>\0` and the
/// bytes), as a stream.
pub(crate) fn blob_id(mut r: impl Read, size: u64) -> io::Result<Oid> {
    let mut h = header(size);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    if total != size {
        return Err(io::Error::other(format!(
            "read {total} bytes, expected {size} (changed while read?)"
        )));
    }
    Oid::from_bytes(&h.finalize()).map_err(|e| io::Error::other(e.message().to_string()))
}

fn header(size: u64) -> Sha1 {
    let mut h = Sha1::new();
    h.update(format!("blob {size}\0"));
    h
}

/// A content stream that hashes what it yields; at the end, the size and the git blob
/// id must be those expected, else the read fails (and nothing may be written).
pub(crate) struct Verified {
    inner: Box<dyn Read + Send>,
    hasher: Sha1,
    read: u64,
    size: u64,
    id: Oid,
    /// The working-tree file read, if that is what it is (else a blob or memory).
    origin: Option<PathBuf>,
    /// Why reading failed, kept for the caller (a writer reports its own error).
    failure: Option<String>,
}

impl Verified {
    /// The reason the stream failed, if it did: a damaged clone, or a working-tree file
    /// that changed since it was planned.
    pub(crate) fn take_failure(&mut self) -> Option<Error> {
        let message = self.failure.take()?;
        Some(match &self.origin {
            None => Error::Damaged(message),
            Some(path) => Error::Other(format!(
                "{}: {message} (it changed since the plan was made)",
                path.display()
            )),
        })
    }

    fn fail(&mut self, message: String) -> io::Error {
        self.failure = Some(message.clone());
        io::Error::new(io::ErrorKind::InvalidData, message)
    }
}

impl Read for Verified {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) => return Err(self.fail(format!("object {}: {e}", self.id))),
        };
        self.read += n as u64;
        if self.read > self.size {
            return Err(self.fail(format!("object {} is longer than its size", self.id)));
        }
        self.hasher.update(&buf[..n]);
        if n == 0 && !buf.is_empty() {
            let got = Oid::from_bytes(&self.hasher.clone().finalize())
                .map_err(|e| io::Error::other(e.message().to_string()))?;
            if self.read != self.size || got != self.id {
                return Err(self.fail(format!(
                    "object {} reads as {} bytes with id {got}: the content does not match its id",
                    self.id, self.read
                )));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
