//! The device's own accounts: /etc/passwd and /etc/group under the root (not the agent
//! host's NSS: under `--root` the device is not the machine the agent runs on), read by
//! one parser, and the argv of the tools that change them.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::host::Host;

/// A user or group, by name or numeric id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub(crate) enum Principal {
    Name(String),
    Id(u32),
}

impl Principal {
    /// As written in a role: a number is an id, `root` is 0, anything else a name.
    pub(crate) fn parse(s: String) -> Principal {
        match s.parse::<u32>() {
            Ok(id) => Principal::Id(id),
            Err(_) if s == "root" => Principal::Id(0),
            Err(_) => Principal::Name(s),
        }
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Name(n) => f.write_str(n),
            Principal::Id(i) => write!(f, "{i}"),
        }
    }
}

/// Which database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Db {
    Passwd,
    Group,
}

impl Db {
    fn path(self) -> &'static str {
        match self {
            Db::Passwd => "/etc/passwd",
            Db::Group => "/etc/group",
        }
    }
}

/// A user (passwd) or a group (group: `gid` is its own id, `members` its member list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    pub(crate) name: String,
    pub(crate) id: u32,
    pub(crate) gid: u32,
    pub(crate) comment: String,
    pub(crate) home: String,
    pub(crate) shell: String,
    pub(crate) members: Vec<String>,
}

/// The accounts of one database by name; a missing file has none.
pub(crate) fn read(host: &Host, db: Db) -> Result<HashMap<String, Account>> {
    Ok(entries(host, db)?
        .into_iter()
        .map(|a| (a.name.clone(), a))
        .collect())
}

/// The accounts of one database in file order; a missing file has none.
fn entries(host: &Host, db: Db) -> Result<Vec<Account>> {
    // Read like any managed path: never through a link out of the root.
    Ok(host
        .read_optional(Path::new(db.path()))?
        .map(|bytes| parse(&String::from_utf8_lossy(&bytes), db))
        .unwrap_or_default())
}

/// Lines of passwd (7 fields) or group (4 fields); lines without a numeric id are skipped.
pub(crate) fn parse(text: &str, db: Db) -> Vec<Account> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            let id = f.get(2)?.parse().ok()?;
            match db {
                Db::Passwd if f.len() >= 7 => Some(Account {
                    name: f[0].into(),
                    id,
                    gid: f[3].parse().unwrap_or(u32::MAX),
                    comment: f[4].into(),
                    home: f[5].into(),
                    shell: f[6].into(),
                    members: vec![],
                }),
                Db::Group if f.len() >= 4 => Some(Account {
                    name: f[0].into(),
                    id,
                    gid: id,
                    comment: String::new(),
                    home: String::new(),
                    shell: String::new(),
                    members: f[3]
                        .split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_string)
                        .collect(),
                }),
                _ => None,
            }
        })
        .collect()
}

impl Host {
    /// A user's id: a number as given, root, or from the device's /etc/passwd.
    pub(crate) fn uid(&self, name: &str) -> Result<Option<u32>> {
        self.lookup_id(Db::Passwd, name)
    }

    pub(crate) fn gid(&self, name: &str) -> Result<Option<u32>> {
        self.lookup_id(Db::Group, name)
    }

    pub(crate) fn user_name(&self, uid: u32) -> Option<String> {
        self.lookup_name(Db::Passwd, uid)
    }

    pub(crate) fn group_name(&self, gid: u32) -> Option<String> {
        self.lookup_name(Db::Group, gid)
    }

    fn lookup_id(&self, db: Db, name: &str) -> Result<Option<u32>> {
        if let Ok(id) = name.parse::<u32>() {
            return Ok(Some(id));
        }
        // root exists on every Debian system, also in a not yet populated image root.
        if name == "root" {
            return Ok(Some(0));
        }
        Ok(entries(self, db)?
            .into_iter()
            .find(|a| a.name == name)
            .map(|a| a.id))
    }

    fn lookup_name(&self, db: Db, id: u32) -> Option<String> {
        let found = entries(self, db)
            .ok()
            .and_then(|all| all.into_iter().find(|a| a.id == id).map(|a| a.name));
        found.or_else(|| (id == 0).then(|| "root".to_string()))
    }

    /// The id of a user (`group` false) or group, which must exist by now.
    pub(crate) fn resolve(&self, p: &Principal, group: bool) -> Result<u32> {
        match p {
            Principal::Id(id) => Ok(*id),
            Principal::Name(n) => {
                let found = if group { self.gid(n)? } else { self.uid(n)? };
                found.ok_or_else(|| {
                    Error::Other(format!(
                        "the {} `{n}` does not exist",
                        if group { "group" } else { "user" }
                    ))
                })
            }
        }
    }

    /// groupadd, useradd or usermod: `--root` when the root is not the running system.
    pub(crate) fn account_tool(&self, mut argv: Vec<String>) -> Vec<String> {
        if !self.is_live() {
            argv.insert(1, format!("--root={}", self.root().display()));
        }
        argv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_and_group_lines_parse_and_bad_ones_are_skipped() {
        let users = parse(
            "root:x:0:0:root:/root:/bin/bash\nkiosk:x:999:995:Kiosk:/var/lib/kiosk:/usr/sbin/nologin\nbroken:x:abc:1:::\nshort:x:5\n",
            Db::Passwd,
        );
        assert_eq!(users.len(), 2);
        assert_eq!(users[1].name, "kiosk");
        assert_eq!((users[1].id, users[1].gid), (999, 995));
        assert_eq!(users[1].home, "/var/lib/kiosk");
        let groups = parse("video:x:44:kiosk,app\nempty:x:45:\n", Db::Group);
        assert_eq!(groups[0].members, ["kiosk", "app"]);
        assert!(groups[1].members.is_empty());
    }
}
