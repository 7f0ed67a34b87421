//! What templates may read of the device itself: its facts, as `device.facts.NAME`, and
//! the secrets it holds, through `secret("NAME")`. The loader never touches the machine:
//! the caller passes a [`DeviceReads`] in (the run reads the device through its `Host`;
//! `validate` passes [`StandIn`]). Facts are read lazily, when a template or a `when:`
//! first uses one, so that a fleet that uses none reads nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, Value};

/// Every fact, by the name templates use (docs/fleet-format.md, section 5).
pub(crate) const FACTS: &[&str] = &[
    "os_id",
    "os_version",
    "os_codename",
    "architecture",
    "machine",
    "hostname",
    "machine_id",
    "kernel",
    "memory_mb",
    "model",
];

/// Where secrets live on the device (under `--root`, inside the root).
pub(crate) const SECRETS_DIR: &str = "/etc/fleet-agent/secrets";

/// The device's facts and secrets, as the loader sees them.
pub(crate) trait DeviceReads: Send + Sync + std::fmt::Debug {
    /// A fact of [`FACTS`]: its value, none when the device has no such thing (no
    /// device-tree model on a PC). A fact that cannot be read is remembered by the
    /// implementation and fails the run (a failed read is never "no value").
    fn fact(&self, name: &str) -> Value;
    /// A secret's value, or why there is none, in words that name the secret (never a
    /// value).
    fn secret(&self, name: &str) -> Result<String, String>;
}

/// `device.facts`: a mapping whose values are read when first looked up.
#[derive(Debug)]
pub(crate) struct Facts(pub(crate) Arc<dyn DeviceReads>);

impl Object for Facts {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let name = key.as_str()?;
        FACTS.contains(&name).then(|| self.0.fact(name))
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(FACTS)
    }
}

/// Whether a secret name is one: letters, digits, `.`, `_`, `-`, not starting with a dot,
/// at most 128 characters (a file name in [`SECRETS_DIR`], never a path).
pub(crate) fn secret_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// The `secret(NAME)` template function over `reads`; `count` counts the secrets read,
/// so that what renders one is known to carry one (and is never shown).
pub(crate) fn secret_function(
    reads: Arc<dyn DeviceReads>,
    count: Arc<AtomicUsize>,
) -> impl Fn(String) -> Result<String, minijinja::Error> + Send + Sync + 'static {
    move |name: String| {
        let bad = |m: String| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, m);
        if !secret_name_ok(&name) {
            return Err(bad(format!(
                "`{}` is not a secret name: expected letters, digits, `.`, `_` and `-` (a file in {SECRETS_DIR})",
                name.escape_debug()
            )));
        }
        count.fetch_add(1, Ordering::Relaxed);
        reads.secret(&name).map_err(bad)
    }
}

/// What `validate` (off the device) uses: plausible stand-in facts of a Debian 12 arm64
/// board, and for every secret the text `<secret NAME>`. docs/fleet-format.md lists them.
#[derive(Debug)]
pub(crate) struct StandIn {
    /// The device's id stands in for its hostname.
    pub(crate) hostname: String,
}

impl DeviceReads for StandIn {
    fn fact(&self, name: &str) -> Value {
        match name {
            "os_id" => Value::from("debian"),
            "os_version" => Value::from("12"),
            "os_codename" => Value::from("bookworm"),
            "architecture" => Value::from("arm64"),
            "machine" => Value::from("aarch64"),
            "hostname" => Value::from(self.hostname.clone()),
            "machine_id" => Value::from("0".repeat(32)),
            "kernel" => Value::from("6.1.0"),
            "memory_mb" => Value::from(1024),
            "model" => Value::from("stand-in board"),
            _ => Value::UNDEFINED,
        }
    }

    fn secret(&self, name: &str) -> Result<String, String> {
        Ok(format!("<secret {name}>"))
    }
}

/// Tests: fixed facts and secrets.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Fixed {
    pub(crate) facts: std::collections::BTreeMap<String, Value>,
    pub(crate) secrets: std::collections::BTreeMap<String, String>,
    /// How many facts were read.
    pub(crate) reads: AtomicUsize,
}

#[cfg(test)]
impl DeviceReads for Fixed {
    fn fact(&self, name: &str) -> Value {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.facts.get(name).cloned().unwrap_or(Value::from(()))
    }

    fn secret(&self, name: &str) -> Result<String, String> {
        self.secrets
            .get(name)
            .cloned()
            .ok_or_else(|| format!("secret `{name}` is not on this device"))
    }
}
