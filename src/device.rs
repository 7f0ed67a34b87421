//! The device as the fleet loader may read it (`device.facts`, `secret(NAME)`): through
//! the `Host`, each fact when a template or a `when:` first asks for it, remembered for
//! the run. The loader itself never touches the machine; the run passes this in. A read
//! that fails is kept and fails the run once loading ends: a failed read is never "no
//! value".

use std::collections::HashMap;
use std::sync::Mutex;

use minijinja::Value;

use crate::error::{Error, Result};
use crate::fleet::facts::{DeviceReads, SECRETS_DIR};
use crate::host::Host;

#[derive(Debug)]
pub(crate) struct HostReads {
    host: Host,
    facts: Mutex<HashMap<String, Value>>,
    failure: Mutex<Option<String>>,
}

impl HostReads {
    pub(crate) fn new(host: &Host) -> HostReads {
        HostReads {
            host: host.clone(),
            facts: Mutex::default(),
            failure: Mutex::default(),
        }
    }

    /// The first read that failed, if any.
    pub(crate) fn failure(&self) -> Option<Error> {
        self.failure
            .lock()
            .expect("not poisoned")
            .clone()
            .map(Error::Other)
    }

    /// The facts read so far (for -v).
    pub(crate) fn read(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .facts
            .lock()
            .expect("not poisoned")
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    fn read_fact(&self, name: &str) -> Result<Value> {
        Ok(match self.host.fact(name)? {
            None => Value::from(()),
            Some(v) if name == "memory_mb" => {
                v.parse::<u64>().map(Value::from).unwrap_or(Value::from(v))
            }
            Some(v) => Value::from(v),
        })
    }
}

impl DeviceReads for HostReads {
    fn fact(&self, name: &str) -> Value {
        if let Some(v) = self.facts.lock().expect("not poisoned").get(name) {
            return v.clone();
        }
        match self.read_fact(name) {
            Ok(v) => {
                log::debug!("fact {name}: {v}");
                self.facts
                    .lock()
                    .expect("not poisoned")
                    .insert(name.to_string(), v.clone());
                v
            }
            Err(e) => {
                let mut failure = self.failure.lock().expect("not poisoned");
                failure.get_or_insert(format!("cannot read the fact {name}: {e}"));
                Value::UNDEFINED
            }
        }
    }

    fn secret(&self, name: &str) -> std::result::Result<String, String> {
        match self.host.read_secret(SECRETS_DIR, name) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(format!(
                "secret `{name}` is not on this device: expected the file {SECRETS_DIR}/{name} (owned by root, mode 0600)"
            )),
            Err(e) => Err(format!("secret `{name}`: {e}")),
        }
    }
}
