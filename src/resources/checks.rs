//! What a value from the fleet repository must look like before it reaches the machine:
//! a device path is exactly what it looks like (absolute, no `.`, `..` or empty
//! components, no control characters or bidirectional overrides, within the kernel's
//! limits), the agent's own files are off limits ([`Reserved`]), and names and versions
//! that reach a command can never be read as an option. Each check returns what is
//! wrong, in words, for a problem at the value's position.

use std::path::{Path, PathBuf};

/// The longest path the kernel takes (PATH_MAX, 4096 with its NUL).
pub(crate) const PATH_MAX: usize = 4095;
/// The longest name of one component (NAME_MAX).
pub(crate) const NAME_MAX: usize = 255;

/// A value as it may be shown in a message: control and invisible characters escaped,
/// long values cut.
pub(crate) fn shown(s: &str) -> String {
    let escaped: String = s
        .chars()
        .flat_map(|c| {
            if forbidden(c).is_some() {
                c.escape_unicode().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    match escaped.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &escaped[..at]),
        None => escaped,
    }
}

/// Why a character may not appear in a path, name or printed value: control
/// characters (C0, DEL, C1) forge lines; bidirectional controls reorder what is shown.
fn forbidden(c: char) -> Option<&'static str> {
    match c {
        '\0'..='\x1f' | '\x7f'..='\u{9f}' => Some("control character"),
        '\u{061c}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}' => Some("Unicode bidirectional control"),
        _ => None,
    }
}

/// Text that is printed (plans, logs) or written into a file line by line: no control
/// characters and no bidirectional controls.
pub(crate) fn text_problem(s: &str) -> Option<String> {
    s.chars()
        .find_map(|c| forbidden(c).map(|what| format!("it contains the {what} U+{:04X}", c as u32)))
}

/// A device path: absolute, each component a plain name, within the kernel's limits.
pub(crate) fn path_problem(p: &str) -> Option<String> {
    if let Some(why) = text_problem(p) {
        return Some(why);
    }
    let Some(rest) = p.strip_prefix('/') else {
        return Some(SHAPE.into());
    };
    if rest.is_empty()
        || rest
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Some(SHAPE.into());
    }
    if p.len() > PATH_MAX {
        return Some(format!(
            "it is {} bytes long, more than {PATH_MAX}",
            p.len()
        ));
    }
    rest.split('/').find(|c| c.len() > NAME_MAX).map(|c| {
        format!(
            "its component `{}` is {} bytes long, more than {NAME_MAX}",
            shown(c),
            c.len()
        )
    })
}

const SHAPE: &str =
    "expected an absolute path without `.`, `..`, empty components (`//`) or a trailing /";

/// The agent's own files and the kernel's: a resource on one of them, under one, or on
/// a directory that holds one is refused. Built from the device's agent.toml
/// (src/run.rs); `validate` and `plan --repo` use the defaults.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reserved {
    /// Each path with what it is, for messages.
    paths: Vec<(PathBuf, String)>,
}

impl Reserved {
    pub(crate) fn new(paths: impl IntoIterator<Item = (PathBuf, String)>) -> Reserved {
        Reserved {
            paths: paths.into_iter().collect(),
        }
    }

    /// Why a managed path is off limits, if it is.
    pub(crate) fn problem(&self, p: &Path) -> Option<String> {
        self.paths.iter().find_map(|(r, what)| {
            if p == r {
                Some(format!(
                    "{} is {what}: the agent's own files are off limits",
                    p.display()
                ))
            } else if p.starts_with(r) {
                Some(format!(
                    "{} is under {} ({what}): the agent's own files are off limits",
                    p.display(),
                    r.display()
                ))
            } else if r.starts_with(p) {
                Some(format!(
                    "{} holds {} ({what}): the agent's own files are off limits",
                    p.display(),
                    r.display()
                ))
            } else {
                None
            }
        })
    }
}

/// A systemd unit name (systemd.unit(5)): `name[@instance].type`, at most 255 bytes,
/// letters, digits and `:-_.\`, one `@`; never starting with `-` (it would read as an
/// option wherever `--` is not used).
pub(crate) fn unit_problem(unit: &str) -> Option<String> {
    const TYPES: [&str; 11] = [
        "service",
        "socket",
        "device",
        "mount",
        "automount",
        "swap",
        "target",
        "path",
        "timer",
        "slice",
        "scope",
    ];
    let expected = "expected a systemd unit name such as web or web.service: letters, digits, `:-_.\\`, one `@`, and a unit type";
    let Some((name, kind)) = unit.rsplit_once('.') else {
        return Some(expected.into());
    };
    let chars_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c));
    let (prefix, instance) = name.split_once('@').unwrap_or((name, ""));
    let ok = unit.len() <= 255
        && TYPES.contains(&kind)
        && chars_ok
        && !prefix.is_empty()
        && !prefix.starts_with('-')
        && !instance.contains('@');
    (!ok).then(|| expected.into())
}

/// A Debian version (deb-version(7)) or a glob of one: `[epoch:]upstream[-revision]`,
/// the upstream part starting with a digit, letters, digits and `.+~-:` only, and the
/// glob characters `*?[]`.
pub(crate) fn version_problem(v: &str) -> Option<String> {
    let upstream = match v.split_once(':') {
        Some((epoch, rest)) if !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit()) => {
            rest
        }
        _ => v,
    };
    let ok = upstream.starts_with(|c: char| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~-:*?[]".contains(c));
    (!ok).then(|| {
        "expected a Debian version such as 1.2-3 or 2:1.0~rc1 (or a glob of one, 1.2.*): it starts with a digit and has only letters, digits and .+~-:".into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_exactly_what_they_look_like() {
        for ok in ["/etc/x", "/etc/x.d/y-z_1", "/a"] {
            assert_eq!(path_problem(ok), None, "{ok}");
        }
        for bad in [
            "etc/x",
            "/",
            "/etc/",
            "/etc//x",
            "/etc/./x",
            "/etc/../x",
            "//etc",
        ] {
            assert_eq!(path_problem(bad).as_deref(), Some(SHAPE), "{bad}");
        }
        assert_eq!(
            path_problem("/etc/x\ny").unwrap(),
            "it contains the control character U+000A"
        );
        assert_eq!(
            path_problem("/etc/\u{202e}fdp.x").unwrap(),
            "it contains the Unicode bidirectional control U+202E"
        );
        let long = format!("/{}", "a".repeat(256));
        assert!(path_problem(&long)
            .unwrap()
            .ends_with("is 256 bytes long, more than 255"));
        let deep = "/abc".repeat(1100);
        assert_eq!(
            path_problem(&deep).unwrap(),
            "it is 4400 bytes long, more than 4095"
        );
        assert_eq!(shown("/etc/\u{202e}x\n"), "/etc/\\u{202e}x\\u{a}");
    }

    #[test]
    fn unit_names_follow_systemd() {
        for ok in [
            "web.service",
            "getty@tty1.service",
            "getty@.service",
            "a:b\\x2d.mount",
        ] {
            assert_eq!(unit_problem(ok), None, "{ok}");
        }
        for bad in [
            "--root=/.",
            "web",
            "web.exe",
            "-x.service",
            "a b.service",
            "@x.service",
            "a@b@c.service",
        ] {
            assert!(unit_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn versions_follow_debian_policy() {
        for ok in ["1.2-3", "2:1.0~rc1+dfsg-1", "2.10-*", "1.6-2.1"] {
            assert_eq!(version_problem(ok), None, "{ok}");
        }
        for bad in [
            "--allow-unauthenticated",
            "*",
            "a1.0",
            "1.0 2",
            "",
            "1:",
            ":1",
        ] {
            assert!(version_problem(bad).is_some(), "{bad}");
        }
    }
}
