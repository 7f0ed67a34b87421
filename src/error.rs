//! The one error type of fleet-agent: every failure carries its context (a file
//! position, a path, a command's stderr) and knows the exit code it maps to.

use std::fmt;
use std::path::PathBuf;

/// Exit codes, stable and documented in the README.
pub(crate) mod exit {
    /// Success; for `plan`, nothing to do.
    pub(crate) const OK: i32 = 0;
    /// An error: invalid fleet repository, failed read or write of the machine, ...
    pub(crate) const ERROR: i32 = 1;
    /// `plan`: changes are pending.
    pub(crate) const CHANGES_PENDING: i32 = 2;
    /// `pull`: the fleet repository could not be reached; the last fetched commit was used.
    pub(crate) const UNREACHABLE: i32 = 3;
    /// Another run holds the lock and did not release it within `--wait`.
    pub(crate) const LOCKED: i32 = 4;
    /// `pull`: a reboot was requested for an OS update or its rollback; the run ended there.
    pub(crate) const REBOOTING: i32 = 5;
    /// `pull`/`apply`: the tip is not trusted (unsigned, unknown key, bad signature, a
    /// force-push, a rotation by a retired key): nothing was applied.
    pub(crate) const REFUSED: i32 = 6;
    /// The command line or the agent configuration is wrong.
    pub(crate) const USAGE: i32 = 64;
}

/// A position in a file of the fleet repository (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pos {
    pub(crate) file: String,
    pub(crate) line: usize,
    pub(crate) column: usize,
}

impl Pos {
    /// A whole file, without a line (shown as the file name alone).
    pub(crate) fn file(file: impl Into<String>) -> Pos {
        Pos {
            file: file.into(),
            line: 0,
            column: 0,
        }
    }
}

/// The 1-based line and column of a byte offset (clamped to the text).
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// Adds problems that are not already listed (one mistake found on several paths is
/// reported once).
pub(crate) fn extend_unique(into: &mut Vec<Invalid>, problems: impl IntoIterator<Item = Invalid>) {
    for p in problems {
        if !into.contains(&p) {
            into.push(p);
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.column)
        }
    }
}

/// One problem found while loading a fleet repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub(crate) pos: Pos,
    pub(crate) message: String,
}

impl Invalid {
    pub(crate) fn new(pos: Pos, message: impl Into<String>) -> Invalid {
        Invalid {
            pos,
            message: message.into(),
        }
    }

    /// A problem at a YAML node's position in `file`.
    pub(crate) fn at(file: &str, span: &marked_yaml::Span, message: impl Into<String>) -> Invalid {
        Invalid::new(span_pos(file, span), message)
    }
}

/// Where a YAML node starts in `file` (line 0 when it has no position).
pub(crate) fn span_pos(file: &str, span: &marked_yaml::Span) -> Pos {
    match span.start() {
        Some(m) => Pos {
            file: file.to_string(),
            line: m.line(),
            column: m.column(),
        },
        None => Pos::file(file),
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pos, self.message)
    }
}

#[derive(Debug)]
pub(crate) enum Error {
    /// The agent configuration (agent.toml) is wrong.
    Config { path: PathBuf, message: String },
    /// The fleet repository does not validate; every problem found is listed.
    Invalid(Vec<Invalid>),
    /// The fleet repository could not be fetched and no fetched commit can stand in;
    /// the message is a whole sentence naming the repository.
    Unreachable { message: String },
    /// The fleet repository has no such branch.
    NoBranch { url: String, branch: String },
    /// The local clone or a git operation failed.
    Git {
        context: String,
        source: git2::Error,
    },
    /// A read or a change of the machine failed.
    Io {
        context: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A command run on the machine failed.
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// Another run holds the lock.
    Locked { path: PathBuf, waited_secs: u64 },
    /// An object of the local clone cannot be read (the clone is cloned again).
    Damaged(String),
    /// The synced tip is not trusted (src/trust): nothing was applied.
    Refused { commit: String, reason: String },
    /// Anything else, said in words.
    Other(String),
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            Error::Config { .. } => exit::USAGE,
            Error::Unreachable { .. } => exit::UNREACHABLE,
            Error::Locked { .. } => exit::LOCKED,
            Error::Refused { .. } => exit::REFUSED,
            _ => exit::ERROR,
        }
    }

    pub(crate) fn io(
        context: impl Into<String>,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            context: context.into(),
            path: path.into(),
            source,
        }
    }

    pub(crate) fn git(context: impl Into<String>, source: git2::Error) -> Self {
        Error::Git {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn invalid(pos: Pos, message: impl Into<String>) -> Self {
        Error::Invalid(vec![Invalid {
            pos,
            message: message.into(),
        }])
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { path, message } => write!(f, "{}: {}", path.display(), message),
            Error::Invalid(problems) => {
                let n = problems.len();
                write!(f, "the fleet repository is invalid ({n} problem{}):", if n == 1 { "" } else { "s" })?;
                for p in problems {
                    write!(f, "\n  {p}")?;
                }
                write!(f, "\nnothing was changed")
            }
            // The message is a whole sentence naming the repository (src/sync).
            Error::Unreachable { message } => write!(f, "{message}"),
            Error::NoBranch { url, branch } => {
                write!(f, "the fleet repository {url} has no branch `{branch}`")
            }
            Error::Git { context, source } => write!(f, "{context}: {}", source.message()),
            Error::Io { context, path, source } => {
                write!(f, "{context} {}: {source}", path.display())
            }
            Error::Command { command, status, stderr } => {
                write!(f, "`{command}` failed ({status})")?;
                if !stderr.trim().is_empty() {
                    write!(f, ":\n---\n{}\n---", stderr.trim_end())?;
                }
                Ok(())
            }
            Error::Locked { path, waited_secs } => write!(
                f,
                "another fleet-agent run holds the lock {} (waited {waited_secs}s; use --wait SECONDS to wait longer)",
                path.display()
            ),
            Error::Damaged(message) => {
                write!(f, "the local clone of the fleet repository is damaged: {message}")
            }
            Error::Refused { commit, reason } => write!(
                f,
                "refused commit {commit}: {reason}; nothing was applied, the device stays on its last applied commit"
            ),
            Error::Other(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {}
