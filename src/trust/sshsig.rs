//! git's SSH signatures (`gpg.format=ssh`): the armored SSHSIG blob of a commit's
//! `gpgsig` header, parsed and checked over the commit without that header, as
//! `ssh-keygen -Y verify -n git` checks it (PROTOCOL.sshsig of OpenSSH). ed25519 keys,
//! verified with ring (already in the binary through rustls); SHA-512 or SHA-256 as
//! the message hash (ring's SHA-512, sha2's SHA-256).

use crate::digest::Sha256;
use base64::Engine as _;

const MAGIC: &[u8] = b"SSHSIG";
const ARMOR_BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";
const ARMOR_END: &str = "-----END SSH SIGNATURE-----";
pub(crate) const ED25519: &str = "ssh-ed25519";

/// An SSH public key: its type and its wire blob (`string type, string key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublicKey {
    pub(crate) kind: String,
    pub(crate) blob: Vec<u8>,
}

impl PublicKey {
    /// From the base64 of an `authorized_keys` / allowed-signers line.
    pub(crate) fn from_base64(kind: &str, b64: &str) -> Result<PublicKey, String> {
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| "the key is not valid base64".to_string())?;
        let mut r = Reader(&blob);
        let inner = r.string()?;
        if inner != kind.as_bytes() {
            return Err(format!(
                "the key says it is {}, not {kind}",
                String::from_utf8_lossy(inner)
            ));
        }
        Ok(PublicKey {
            kind: kind.to_string(),
            blob,
        })
    }

    /// `SHA256:...` as ssh-keygen and git print it.
    pub(crate) fn fingerprint(&self) -> String {
        let digest = Sha256::digest(&self.blob);
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        )
    }
}

/// A parsed SSHSIG signature.
#[derive(Debug)]
pub(crate) struct Signature {
    pub(crate) key: PublicKey,
    pub(crate) namespace: String,
    reserved: Vec<u8>,
    hash: String,
    sig_kind: String,
    sig: Vec<u8>,
}

/// Why a signature does not verify, in words for the journal.
pub(crate) type Why = String;

impl Signature {
    /// The armored signature of a `gpgsig` header.
    pub(crate) fn parse(armored: &[u8]) -> Result<Signature, Why> {
        let text = std::str::from_utf8(armored).map_err(|_| "the signature is not text")?;
        let text = text.trim();
        let body = text
            .strip_prefix(ARMOR_BEGIN)
            .and_then(|t| t.strip_suffix(ARMOR_END))
            .ok_or("not an SSH signature (an OpenPGP or X.509 signature is not supported)")?;
        let b64: String = body.split_whitespace().collect();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| "the SSH signature is not valid base64")?;
        let mut r = Reader(&raw);
        if r.take(MAGIC.len())? != MAGIC {
            return Err("the SSH signature does not start with SSHSIG".into());
        }
        if r.u32()? != 1 {
            return Err("unsupported SSHSIG version".into());
        }
        let key_blob = r.string()?.to_vec();
        let key_kind = Reader(&key_blob).utf8()?;
        let namespace = r.utf8()?;
        let reserved = r.string()?.to_vec();
        let hash = r.utf8()?;
        let sig_blob = r.string()?;
        let mut s = Reader(sig_blob);
        let sig_kind = s.utf8()?;
        let sig = s.string()?.to_vec();
        Ok(Signature {
            key: PublicKey {
                kind: key_kind,
                blob: key_blob,
            },
            namespace,
            reserved,
            hash,
            sig_kind,
            sig,
        })
    }

    /// Checks the signature over `message` in `namespace` with the key it carries (the
    /// caller decides whether that key is trusted).
    pub(crate) fn verify(&self, message: &[u8], namespace: &str) -> Result<(), Why> {
        if self.namespace != namespace {
            return Err(format!(
                "the signature is for namespace `{}`, not `{namespace}`",
                self.namespace
            ));
        }
        let digest = match self.hash.as_str() {
            // ring's SHA-512, which its ed25519 links anyway (sha2's would add its own).
            "sha512" => ring::digest::digest(&ring::digest::SHA512, message)
                .as_ref()
                .to_vec(),
            "sha256" => Sha256::digest(message).to_vec(),
            other => return Err(format!("unsupported signature hash `{other}`")),
        };
        let mut signed = MAGIC.to_vec();
        for field in [
            self.namespace.as_bytes(),
            &self.reserved,
            self.hash.as_bytes(),
            &digest,
        ] {
            put_string(&mut signed, field);
        }
        if self.key.kind != ED25519 || self.sig_kind != ED25519 {
            return Err(format!(
                "unsupported key type {} (ed25519 keys only)",
                self.key.kind
            ));
        }
        let raw_key = Reader(&self.key.blob)
            .string()
            .and_then(|_| Reader(&self.key.blob[4 + ED25519.len()..]).string())?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, raw_key)
            .verify(&signed, &self.sig)
            .map_err(|_| "the signature does not match the commit (bad signature)".to_string())
    }
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// The SSH wire format: big-endian lengths, length-prefixed strings.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Why> {
        if self.0.len() < n {
            return Err("the SSH signature is truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, Why> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self) -> Result<&'a [u8], Why> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn utf8(&mut self) -> Result<String, Why> {
        let s = self.string()?;
        String::from_utf8(s.to_vec()).map_err(|_| "the SSH signature has a non-UTF-8 name".into())
    }
}
