//! The allowed-signers file, in the format of ssh-keygen(1) ALLOWED SIGNERS that git's
//! `gpg.ssh.allowedSignersFile` uses: `principals [options] keytype base64-key
//! [comment]`. Options: `namespaces="git,..."` is honoured; a line with
//! `cert-authority`, `valid-after` or `valid-before` is not supported and trusts
//! nothing (said in the problems, so that a key is never trusted more widely than its
//! line says).

use super::sshsig::PublicKey;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signer {
    /// The principals field as written (`alice@example.com` or a comma list).
    pub(crate) principals: String,
    pub(crate) key: PublicKey,
    /// `namespaces="..."`; None allows every namespace.
    pub(crate) namespaces: Option<Vec<String>>,
}

/// A parsed file: the keys it trusts and the lines it could not use (1-based line,
/// what is wrong).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Signers {
    pub(crate) signers: Vec<Signer>,
    pub(crate) problems: Vec<(usize, String)>,
}

impl Signers {
    pub(crate) fn parse(text: &str) -> Signers {
        let mut out = Signers::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_line(line) {
                Ok(s) => out.signers.push(s),
                Err(why) => out.problems.push((i + 1, why)),
            }
        }
        out
    }

    /// The signer whose key this is, trusted for `namespace`.
    pub(crate) fn find(&self, key: &PublicKey, namespace: &str) -> Option<&Signer> {
        self.signers.iter().find(|s| {
            s.key == *key
                && s.namespaces
                    .as_ref()
                    .is_none_or(|n| n.iter().any(|n| n == namespace))
        })
    }
}

fn is_key_type(word: &str) -> bool {
    word.starts_with("ssh-") || word.starts_with("ecdsa-") || word.starts_with("sk-")
}

fn parse_line(line: &str) -> Result<Signer, String> {
    let words = split_words(line);
    let mut it = words.iter().map(String::as_str);
    let principals = it.next().ok_or("no principals")?.to_string();
    let mut next = it.next().ok_or("no key")?;
    let mut namespaces = None;
    if !is_key_type(next) {
        namespaces = parse_options(next)?;
        next = it.next().ok_or("no key")?;
    }
    let kind = next;
    let b64 = it.next().ok_or("no key after its type")?;
    let key = PublicKey::from_base64(kind, b64)?;
    Ok(Signer {
        principals,
        key,
        namespaces,
    })
}

/// `namespaces="git,file"` and the options this agent refuses.
fn parse_options(options: &str) -> Result<Option<Vec<String>>, String> {
    let mut namespaces = None;
    for option in split_unquoted(options, ',') {
        let (name, value) = match option.split_once('=') {
            Some((n, v)) => (n, Some(v.trim_matches('"'))),
            None => (option.as_str(), None),
        };
        match (name.to_ascii_lowercase().as_str(), value) {
            ("namespaces", Some(v)) => {
                namespaces = Some(v.split(',').map(|s| s.trim().to_string()).collect())
            }
            (other, _) => return Err(format!("option `{other}` is not supported")),
        }
    }
    Ok(namespaces)
}

/// Splits on whitespace outside double quotes (quotes kept).
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                word.push(c)
            }
            c if c.is_whitespace() && !quoted => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

fn split_unquoted(text: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    for c in text.chars() {
        if c == '"' {
            quoted = !quoted;
        }
        if c == sep && !quoted {
            parts.push(String::new());
        } else {
            parts.last_mut().expect("one part").push(c);
        }
    }
    parts
}
