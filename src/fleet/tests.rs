//! In-process tests of loading and expansion: every class of mistake in a fleet
//! repository, stated as the files that differ from a small valid fleet and the exact
//! problems expected, each with file:line:column. They run in microseconds, without
//! the binary or git (tests/integration keeps the end-to-end cases).

use std::collections::BTreeMap;

use crate::error::Error;
use crate::fleet::source::Source;
use crate::fleet::{Device, Fleet, FleetFile};
use crate::resources::{DesiredState, Reserved};

/// A small valid fleet: role `web` for every device of group `shop` (pi-*).
pub(crate) const BASE: &[(&str, &str)] = &[
    ("fleet.yml", "format: 1\nvars:\n  greeting: hello\n  port: 8080\nroles:\n  - web\n"),
    ("inventory.yml", "groups:\n  shop:\n    devices: [\"pi-*\"]\n"),
    ("group_vars/shop.yml", "vars:\n  greeting: hello shop\n"),
    (
        "roles/web/role.yml",
        "params:\n  listen:\n    default: \"{{ port }}\"\nresources:\n  - directory:\n      path: /etc/web\n  - file:\n      path: /etc/web/web.conf\n      template: web.conf.j2\n",
    ),
    ("roles/web/templates/web.conf.j2", "listen = {{ listen }}\ngreeting = {{ greeting }}\n"),
];

/// The base fleet with `files` written over it.
pub(crate) fn source(files: &[(&str, &str)]) -> Source<'static> {
    let mut map: BTreeMap<String, Vec<u8>> = BASE
        .iter()
        .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
        .collect();
    for (p, c) in files {
        map.insert(p.to_string(), c.as_bytes().to_vec());
    }
    Source::Files(map)
}

/// The agent's own files, as the default agent.toml puts them (src/run.rs `reserved`;
/// tests/integration/reserved.rs checks that one end to end).
pub(crate) fn reserved() -> Reserved {
    Reserved::new(
        [
            ("/var/lib/fleet-agent", "the agent's state directory"),
            ("/etc/fleet-agent/agent.toml", "the agent's configuration"),
            ("/etc/fleet-agent/rootfs-id", "the root filesystem's marker"),
            (
                "/etc/fleet-agent/os-update-slot",
                "the OS update's slot marker",
            ),
            ("/usr/share/fleet-agent/roles", "the built-in roles"),
            ("/proc", "the kernel's process filesystem"),
            ("/sys", "the kernel's sysfs"),
            ("/dev", "the device filesystem"),
        ]
        .map(|(p, what)| (p.into(), what.to_string())),
    )
}

/// The desired state of device pi-1, or every problem as `file:line:column: message`.
pub(crate) fn desired(files: &[(&str, &str)]) -> Result<DesiredState, Vec<String>> {
    let reads = std::sync::Arc::new(crate::fleet::facts::Fixed::default());
    for_device(files, reads).map(|d| d.desired)
}

/// What device pi-1 gets, reading facts and secrets from `reads`.
pub(crate) fn for_device(
    files: &[(&str, &str)],
    reads: std::sync::Arc<dyn crate::fleet::facts::DeviceReads>,
) -> Result<crate::fleet::ForDevice, Vec<String>> {
    let src = source(files);
    let as_strings = |e: Error| match e {
        Error::Invalid(ps) => ps.iter().map(|p| p.to_string()).collect(),
        other => vec![format!("not a validation error: {other}")],
    };
    let file = FleetFile::read(&src).map_err(as_strings)?;
    let fleet = Fleet::load(&src, None, &file, reserved()).map_err(as_strings)?;
    let device = Device {
        id: "pi-1".into(),
        device_type: None,
        reads,
    };
    fleet.for_device(&device).map_err(as_strings)
}

pub(crate) fn problems(files: &[(&str, &str)]) -> Vec<String> {
    match desired(files) {
        Ok(_) => vec![],
        Err(p) => p,
    }
}

/// `invalid!(name, [(path, content), ...], "file:line:column: message", ...)`: loading
/// the base fleet with these files gives exactly these problems, in this order.
macro_rules! invalid {
    ($name:ident, [$(($path:expr, $text:expr)),* $(,)?], $($expected:expr),+ $(,)?) => {
        #[test]
        fn $name() {
            assert_eq!(problems(&[$(($path, $text)),*]), [$($expected),+]);
        }
    };
}

#[test]
fn the_base_fleet_is_valid() {
    let d = desired(&[]).unwrap();
    assert_eq!(d.roles, ["web"]);
    assert_eq!(d.groups, ["shop"]);
    assert_eq!(d.resources.len(), 2);
}

invalid!(
    yaml_syntax,
    [("fleet.yml", "format: 1\nroles: [web\n")],
    "fleet.yml:3:1: YAML syntax error: while parsing a flow sequence, expected ',' or ']'"
);

invalid!(
    unknown_key,
    [
        ("roles/web/role.yml", "resources:\n  - file:\n      path: /etc/x\n      content: x\n      mdoe: \"0644\"\n")
    ],
    "roles/web/role.yml:5:7: unknown key `mdoe`, expected one of: path, content, source, template, mode, owner, group, secret, setuid, setgid"
);

invalid!(
    unknown_kind,
    [
        ("roles/web/role.yml", "resources:\n  - filee:\n      path: /etc/x\n")
    ],
    "roles/web/role.yml:2:5: unknown variant `filee`, expected one of `file`, `directory`, `symlink`, `absent`, `apt_source`, `package`, `service`, `user`, `group`, `command`, `download`"
);

invalid!(
    wrong_type,
    [("fleet.yml", "format: one\nroles: [web]\n")],
    "fleet.yml:1:9: expected a whole number"
);

invalid!(
    unsupported_format,
    [("fleet.yml", "format: 2\nroles: [web]\n")],
    "fleet.yml:1:9: format 2 is not supported by fleet-agent 0.1.0 (expected format: 1)"
);

invalid!(
    undefined_variable,
    [
        ("roles/web/role.yml", "resources:\n  - file:\n      path: /etc/x\n      content: \"{{ nope }}\"\n")
    ],
    "roles/web/role.yml:4:16: undefined variable `nope`: expected it in vars (fleet.yml, group_vars, host_vars) or the role's params"
);

invalid!(
    undefined_in_template_file,
    [
        ("roles/web/templates/web.conf.j2", "listen = {{ listen }}\nname = {{ device.nmae }}\n")
    ],
    "roles/web/templates/web.conf.j2:2:11: undefined variable `device.nmae`: expected it in vars (fleet.yml, group_vars, host_vars) or the role's params"
);

invalid!(
    missing_source,
    [(
        "roles/web/role.yml",
        "resources:\n  - file:\n      path: /etc/x\n      source: nothere.conf\n"
    )],
    "roles/web/role.yml:4:15: roles/web/files/nothere.conf does not exist"
);

invalid!(
    escaping_source,
    [
        ("roles/web/role.yml", "resources:\n  - file:\n      path: /etc/x\n      source: ../../../fleet.yml\n")
    ],
    "roles/web/role.yml:4:15: `../../../fleet.yml` leaves the role's files/ directory: expected a relative path inside it, without `..`"
);

invalid!(
    missing_role,
    [
        ("fleet.yml", "format: 1\nvars: {port: 80}\nroles:\n  - web\n  - nope\n")
    ],
    "fleet.yml:5:5: no role `nope`: expected roles/nope/role.yml in the fleet repository or a built-in role"
);

invalid!(
    missing_required_param,
    [
        (
            "roles/app/role.yml",
            "params:\n  url:\n    required: true\n"
        ),
        ("group_vars/shop.yml", "roles: [app]\n")
    ],
    "group_vars/shop.yml:1:9: role `app` needs the parameter `url`"
);

invalid!(
    unknown_param,
    [(
        "group_vars/shop.yml",
        "roles:\n  - role: web\n    params:\n      lisen: 1\n"
    )],
    "group_vars/shop.yml:4:7: role `web` has no parameter `lisen` (its parameters: listen)"
);

invalid!(
    bad_mode,
    [
        ("roles/web/role.yml", "resources:\n  - file:\n      path: /etc/x\n      content: x\n      mode: \"999\"\n")
    ],
    "roles/web/role.yml:5:13: `999` is not a file mode: expected 3 or 4 octal digits, at most 7777, such as 0644"
);

invalid!(
    relative_path,
    [
        ("roles/web/role.yml", "resources:\n  - file:\n      path: etc/x\n      content: x\n")
    ],
    "roles/web/role.yml:3:13: `etc/x` is not a device path: expected an absolute path without `.`, `..`, empty components (`//`) or a trailing /"
);

invalid!(
    two_on_one_path,
    [
        ("roles/web/role.yml", "resources:\n  - file:\n      path: /etc/x\n      content: a\n  - absent:\n      path: /etc/x\n")
    ],
    "roles/web/role.yml:5:5: /etc/x is also managed by the resource at roles/web/role.yml:2:5"
);

invalid!(
    include_cycle,
    [
        ("roles/a/role.yml", "include: [b]\n"),
        ("roles/b/role.yml", "include: [a]\n"),
        ("group_vars/shop.yml", "roles: [a]\n")
    ],
    "roles/b/role.yml:1:11: roles include each other: a → b → a"
);

invalid!(
    group_vars_of_no_group,
    [("group_vars/shops.yml", "vars: {}\n")],
    "group_vars/shops.yml: there is no group `shops` in inventory.yml"
);

invalid!(
    package_state,
    [(
        "roles/web/role.yml",
        "resources:\n  - package:\n      name: curl\n      state: installed\n"
    )],
    "roles/web/role.yml:4:14: `installed` is not a package state: expected present, absent or latest"
);

invalid!(
    version_with_absent,
    [(
        "roles/web/role.yml",
        "resources:\n  - package:\n      name: curl\n      state: absent\n      version: \"1.0\"\n"
    )],
    "roles/web/role.yml:5:16: a version goes with state: present"
);

invalid!(
    package_name,
    [(
        "roles/web/role.yml",
        "resources:\n  - package:\n      name: Curl_7\n"
    )],
    "roles/web/role.yml:3:13: `Curl_7` is not a Debian package name"
);

invalid!(
    service_enablement_and_state,
    [
        ("roles/web/role.yml", "resources:\n  - service:\n      name: web\n      enabled: sometimes\n      state: running\n")
    ],
    "roles/web/role.yml:4:16: `sometimes` is not an enablement: expected true, false or masked",
    "roles/web/role.yml:5:14: `running` is not a service state: expected started or stopped"
);

invalid!(
    account_name,
    [
        ("roles/web/role.yml", "resources:\n  - user:\n      name: Web User\n  - group:\n      name: 9group\n")
    ],
    "roles/web/role.yml:3:13: `Web User` is not a user or group name: lowercase letters, digits, - and _",
    "roles/web/role.yml:5:13: `9group` is not a user or group name: lowercase letters, digits, - and _"
);

invalid!(
    apt_source_name_and_uris,
    [
        ("roles/web/role.yml", "resources:\n  - apt_source:\n      name: \"my source\"\n      uris: []\n      suites: [bookworm]\n      key: k.gpg\n"),
        ("roles/web/files/k.gpg", "key")
    ],
    "roles/web/role.yml:3:13: `my source` is not a source name: letters, digits, - _ ."
);

invalid!(
    choices,
    [
        ("roles/web/role.yml", "params:\n  rotation:\n    default: 0\n    choices: [0, 90, 180, 270]\nresources: []\n"),
        ("group_vars/shop.yml", "roles:\n  - role: web\n    params:\n      rotation: 45\n")
    ],
    "group_vars/shop.yml:4:17: role `web`: `45` is not a value of its parameter `rotation`: expected one of 0, 90, 180, 270"
);

invalid!(
    role_twice_other_params,
    [
        ("roles/web/role.yml", "params:\n  listen: {default: 1}\nresources: []\n"),
        ("roles/app/role.yml", "include:\n  - role: web\n    params: {listen: 2}\n"),
        ("group_vars/shop.yml", "roles: [app]\n")
    ],
    "roles/app/role.yml:2:11: role `web` is used with other parameters at fleet.yml:6:5; a role is applied once per device"
);

invalid!(
    host_only_key_in_group_vars,
    [("group_vars/shop.yml", "branch: main\ndevice_type: pi4\n")],
    "group_vars/shop.yml:1:1: `branch` belongs in a host_vars file",
    "group_vars/shop.yml:2:1: `device_type` belongs in a host_vars file"
);

invalid!(
    bad_branch_name,
    [("host_vars/pi-1.yml", "branch: \"a..b\"\n")],
    "host_vars/pi-1.yml:1:9: `a..b` is not a branch name"
);

invalid!(
    absent_top_level,
    [(
        "roles/web/role.yml",
        "resources:\n  - absent:\n      path: /etc\n"
    )],
    "roles/web/role.yml:3:13: refusing to remove the top-level directory /etc"
);

invalid!(
    file_two_contents,
    [
        ("roles/web/role.yml", "resources:\n  - file:\n      path: /etc/x\n      content: a\n      source: b\n")
    ],
    "roles/web/role.yml:3:13: a file needs exactly one of `content`, `source` (a file in the role's files/) or `template` (in templates/)"
);

invalid!(
    symlink_empty_target,
    [(
        "roles/web/role.yml",
        "resources:\n  - symlink:\n      path: /etc/x\n      target: \"\"\n"
    )],
    "roles/web/role.yml:4:15: expected the link's target, not an empty string"
);

invalid!(
    param_required_and_default,
    [(
        "roles/web/role.yml",
        "params:\n  listen:\n    required: true\n    default: 1\nresources: []\n"
    )],
    "roles/web/role.yml:2:3: a parameter is either required or has a default, not both"
);

invalid!(
    anchor,
    [("fleet.yml", "format: 1\nvars:\n  a: &x 1\n  b: *x\n")],
    "fleet.yml:3:9: YAML anchors and aliases are not supported"
);

invalid!(
    duplicate_key,
    [("fleet.yml", "format: 1\nformat: 1\n")],
    "fleet.yml:2:1: duplicate key `format`"
);

invalid!(
    min_agent_version,
    [
        ("fleet.yml", "format: 1\nsettings:\n  min_agent_version: latest\nroles: [web]\n")
    ],
    "fleet.yml:3:22: `latest` is not a version: expected X.Y.Z (three whole numbers, e.g. \"1.4.0\")"
);

invalid!(
    vars_not_mapping,
    [("host_vars/pi-1.yml", "vars: [not, a, mapping]\n")],
    "host_vars/pi-1.yml:1:7: expected a mapping of variable names to values"
);

invalid!(
    role_name,
    [("fleet.yml", "format: 1\nroles: [\"../x\"]\n")],
    "fleet.yml:2:9: `../x` is not a role name (letters, digits, - and _)"
);

invalid!(
    roles_not_list,
    [("fleet.yml", "format: 1\nroles: web\n")],
    "fleet.yml:2:8: expected a list of roles"
);

invalid!(
    unknown_role_ref_key,
    [(
        "fleet.yml",
        "format: 1\nroles:\n  - role: web\n    param: {}\n"
    )],
    "fleet.yml:4:5: unknown key `param`, expected one of: role, params, when"
);

invalid!(
    all_group,
    [("inventory.yml", "groups:\n  all:\n    devices: [x]\n")],
    "inventory.yml:2:3: `all` is the implicit group of every device; choose another name",
    "group_vars/shop.yml: there is no group `shop` in inventory.yml"
);

invalid!(
    empty_fleet_yml,
    [("fleet.yml", "")],
    "fleet.yml: missing field `format`"
);

// Errors where the mistake is (issue: a newcomer's first hour).
invalid!(
    ansible_style_keys_at_the_level_of_the_kind,
    [(
        "roles/web/role.yml",
        "resources:\n  - file:\n    path: /etc/x\n    content: x\n"
    )],
    "roles/web/role.yml:2:5: a resource is one key naming its kind, with its settings under it (`- file: {...}`); this one has 3 keys (file, path, content): indent path, content under `file:`"
);
invalid!(
    every_undefined_variable_of_a_value,
    [(
        "roles/web/role.yml",
        "resources:\n  - file:\n      path: /etc/x\n      content: \"{{ a }} {{ b }}\\n{{ c.d }}\"\n"
    )],
    "roles/web/role.yml:4:16: undefined variable `a`: expected it in vars (fleet.yml, group_vars, host_vars) or the role's params",
    "roles/web/role.yml:4:16: undefined variable `b`: expected it in vars (fleet.yml, group_vars, host_vars) or the role's params",
    "roles/web/role.yml:4:16: undefined variable `c.d`: expected it in vars (fleet.yml, group_vars, host_vars) or the role's params (line 2 of the value)"
);
invalid!(
    every_undefined_variable_of_a_template_file,
    [(
        "roles/web/templates/web.conf.j2",
        "{{ a }}\n{{ listen }} {{ b }}\n{% if c %}x{% endif %}\n"
    )],
    "roles/web/templates/web.conf.j2:1:4: undefined variable `a`: expected it in vars (fleet.yml, group_vars, host_vars) or the role's params",
    "roles/web/templates/web.conf.j2:2:17: undefined variable `b`: expected it in vars (fleet.yml, group_vars, host_vars) or the role's params",
    "roles/web/templates/web.conf.j2:3:7: undefined variable `c`: expected it in vars (fleet.yml, group_vars, host_vars) or the role's params"
);
invalid!(
    an_undefined_variable_that_some_groups_set,
    [
        (
            "inventory.yml",
            "groups:\n  shop:\n    devices: [\"pi-*\"]\n  canary:\n    devices: [lab-1]\n"
        ),
        ("group_vars/canary.yml", "vars:\n  token: abc\n"),
        ("host_vars/lab-2.yml", "vars:\n  token: def\n"),
        (
            "roles/web/role.yml",
            "resources:\n  - file: {path: /etc/token, content: \"{{ token }}\"}\n"
        )
    ],
    "roles/web/role.yml:2:39: undefined variable `token`: expected it in vars (fleet.yml, group_vars, host_vars) or the role's params; it is set only in group_vars/canary.yml, host_vars/lab-2.yml"
);
invalid!(
    a_missing_role_at_every_reference,
    [
        ("fleet.yml", "format: 1\nvars: {port: 80, greeting: hi}\nroles:\n  - web\n  - nope\n"),
        ("group_vars/shop.yml", "roles: [nope]\n"),
        ("host_vars/pi-1.yml", "roles: [nope]\n")
    ],
    "fleet.yml:5:5: no role `nope`: expected roles/nope/role.yml in the fleet repository or a built-in role",
    "group_vars/shop.yml:1:9: no role `nope`: expected roles/nope/role.yml in the fleet repository or a built-in role",
    "host_vars/pi-1.yml:1:9: no role `nope`: expected roles/nope/role.yml in the fleet repository or a built-in role"
);
invalid!(
    group_vars_take_vars_and_roles_only,
    [("group_vars/shop.yml", "vars: {}\ncolour: red\n")],
    "group_vars/shop.yml:2:1: unknown key `colour`, expected one of: vars, roles, os_image, rollout, maintenance, health"
);
invalid!(
    a_rollout_percentage_is_0_to_100,
    [("group_vars/shop.yml", "rollout:\n  id: r1\n  percent: 150\n")],
    "group_vars/shop.yml:3:12: expected a percentage from 0 to 100 (at most two decimals), not `150`"
);
invalid!(
    a_rollout_has_an_identifier,
    [("group_vars/shop.yml", "rollout:\n  percent: 10\n  when: now\n")],
    "group_vars/shop.yml:3:3: unknown key `when`: expected id, percent",
    "group_vars/shop.yml:1:1: missing `id:` (for example `rollout: {id: 2026-12-release, percent: 10}`)"
);
invalid!(
    a_rollout_is_not_per_device,
    [("host_vars/pi-1.yml", "rollout: {id: r1, percent: 10}\n")],
    "host_vars/pi-1.yml:1:1: `rollout` belongs in fleet.yml or group_vars"
);
invalid!(
    an_unsynchronized_clock_is_deferred_or_trusted,
    [("group_vars/shop.yml", "maintenance:\n  window: 02:00-04:00\n  unsynchronized_clock: maybe\n")],
    "group_vars/shop.yml:3:25: expected `unsynchronized_clock:` as `defer` (the default) or `trust`, not `maybe`"
);
invalid!(
    health_needs_a_check_and_a_bound,
    [(
        "group_vars/shop.yml",
        "health:\n  timeout_seconds: 0\n  units: [a.service]\n"
    )],
    "group_vars/shop.yml:1:1: health.timeout_seconds: expected a whole number of seconds above 0"
);
invalid!(
    health_urls_are_http,
    [("fleet.yml", "format: 1\nvars: {greeting: hi, port: 80}\nroles: [web]\nhealth: {urls: [\"localhost:80\"]}\n")],
    "fleet.yml:4:1: health.urls: expected an http:// or https:// URL, not `localhost:80`"
);
invalid!(
    a_role_health_is_checked_like_the_fleet_one,
    [(
        "roles/web/role.yml",
        "resources: []\nhealth:\n  units: [web.service]\n  urls: [\"localhost:80\"]\n"
    )],
    "roles/web/role.yml:2:1: health.urls: expected an http:// or https:// URL, not `localhost:80`"
);
invalid!(
    a_role_health_has_known_keys,
    [("roles/web/role.yml", "resources: []\nhealth: {unit: [web.service]}\n")],
    "roles/web/role.yml:2:10: unknown key `unit`, expected one of: timeout_seconds, units, commands, urls"
);
invalid!(
    health_checks_are_not_templates,
    [("group_vars/shop.yml", "health: {urls: [\"http://localhost:{{ port }}/\"]}\n")],
    "group_vars/shop.yml:1:1: health: checks are not templates: expected the value itself, not `http://localhost:{{ port }}/`"
);
invalid!(
    health_is_not_per_device,
    [("host_vars/pi-1.yml", "health: {units: [a.service]}\n")],
    "host_vars/pi-1.yml:1:1: `health` belongs in fleet.yml, group_vars or a role's role.yml"
);
invalid!(
    disruptive_is_true_or_false,
    [(
        "roles/web/role.yml",
        "resources:\n  - file: {path: /etc/x, content: x}\n    disruptive: later\n"
    )],
    "roles/web/role.yml:3:17: expected `disruptive:` as true or false"
);
invalid!(
    a_window_is_hh_mm_to_hh_mm,
    [("group_vars/shop.yml", "maintenance: {window: \"2:00-04:00\"}\n")],
    "group_vars/shop.yml:1:23: expected a window as `HH:MM-HH:MM` in device-local time, such as `02:00-04:00`, not `2:00-04:00`"
);
invalid!(
    os_belongs_in_fleet_yml,
    [("group_vars/shop.yml", "os:\n  images: {}\n")],
    "group_vars/shop.yml:1:1: `os` belongs in fleet.yml"
);
invalid!(
    an_empty_vars_followed_by_dedented_keys,
    [("group_vars/shop.yml", "vars:\ngreeting: hi\n")],
    "group_vars/shop.yml:2:1: `greeting` is not a key of this file: the `vars:` above it is empty; indent `greeting` under `vars:` to make it a variable"
);

// A device path is exactly what it looks like (docs/security.md).

invalid!(
    path_dot_and_empty_components,
    [(
        "roles/web/role.yml",
        "resources:\n  - file: {path: /etc/x, content: a}\n  - file: {path: /etc/./x, content: b}\n  - absent: {path: \"/etc//x\"}\n"
    )],
    "roles/web/role.yml:3:18: `/etc/./x` is not a device path: expected an absolute path without `.`, `..`, empty components (`//`) or a trailing /",
    "roles/web/role.yml:4:20: `/etc//x` is not a device path: expected an absolute path without `.`, `..`, empty components (`//`) or a trailing /"
);

invalid!(
    path_control_and_bidi_characters,
    [(
        "roles/web/role.yml",
        "resources:\n  - file: {path: \"/etc/x\\nCreate file /etc/ok\", content: a}\n  - directory: {path: \"/etc/\\u202Efdp.sh\"}\n  - file: {path: \"/etc/a\\0b\", content: c}\n"
    )],
    "roles/web/role.yml:2:18: `/etc/x\\u{a}Create file /etc/ok` is not a device path: it contains the control character U+000A",
    "roles/web/role.yml:3:23: `/etc/\\u{202e}fdp.sh` is not a device path: it contains the Unicode bidirectional control U+202E",
    "roles/web/role.yml:4:18: `/etc/a\\u{0}b` is not a device path: it contains the control character U+0000"
);

invalid!(
    path_over_the_system_limits,
    [(
        "roles/web/role.yml",
        "resources:\n  - file:\n      path: \"/etc/{{ 'n' * 256 }}\"\n      content: a\n  - directory:\n      path: \"{{ '/abc' * 1100 }}\"\n"
    )],
    "roles/web/role.yml:3:13: `/etc/nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn…` is not a device path: its component `nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn…` is 256 bytes long, more than 255",
    "roles/web/role.yml:6:13: `/abc/abc/abc/abc/abc/abc/abc/abc/abc/abc/abc/abc/abc/abc/abc/abc/abc/abc/abc/abc…` is not a device path: it is 4400 bytes long, more than 4095"
);

invalid!(
    symlink_target_control_characters,
    [(
        "roles/web/role.yml",
        "resources:\n  - symlink: {path: /etc/l, target: \"/x\\r\\e[2K\"}\n"
    )],
    "roles/web/role.yml:2:37: `/x\\u{d}\\u{1b}[2K` is not a link target: it contains the control character U+000D"
);

// The agent's own files are off limits.

invalid!(
    reserved_paths,
    [(
        "roles/web/role.yml",
        concat!(
            "resources:\n",
            "  - absent: {path: /var/lib/fleet-agent}\n",
            "  - file: {path: /var/lib/fleet-agent/state.json, content: \"{}\"}\n",
            "  - absent: {path: /etc/fleet-agent/rootfs-id}\n",
            "  - file: {path: /etc/fleet-agent/agent.toml, content: x}\n",
            "  - absent: {path: /etc/fleet-agent/os-update-slot}\n",
            "  - directory: {path: /usr/share/fleet-agent/roles/evil}\n",
            "  - file: {path: /proc/sys/kernel/core_pattern, content: x}\n",
            "  - file: {path: /sys/class/leds/x, content: x}\n",
            "  - symlink: {path: /dev/watchdog0, target: /dev/null}\n",
            "  - absent: {path: /var/lib}\n",
            "  - symlink: {path: /etc/fleet-agent, target: /tmp}\n",
        )
    )],
    "roles/web/role.yml:2:20: /var/lib/fleet-agent is the agent's state directory: the agent's own files are off limits",
    "roles/web/role.yml:3:18: /var/lib/fleet-agent/state.json is under /var/lib/fleet-agent (the agent's state directory): the agent's own files are off limits",
    "roles/web/role.yml:4:20: /etc/fleet-agent/rootfs-id is the root filesystem's marker: the agent's own files are off limits",
    "roles/web/role.yml:5:18: /etc/fleet-agent/agent.toml is the agent's configuration: the agent's own files are off limits",
    "roles/web/role.yml:6:20: /etc/fleet-agent/os-update-slot is the OS update's slot marker: the agent's own files are off limits",
    "roles/web/role.yml:7:23: /usr/share/fleet-agent/roles/evil is under /usr/share/fleet-agent/roles (the built-in roles): the agent's own files are off limits",
    "roles/web/role.yml:8:18: /proc/sys/kernel/core_pattern is under /proc (the kernel's process filesystem): the agent's own files are off limits",
    "roles/web/role.yml:9:18: /sys/class/leds/x is under /sys (the kernel's sysfs): the agent's own files are off limits",
    "roles/web/role.yml:10:21: /dev/watchdog0 is under /dev (the device filesystem): the agent's own files are off limits",
    "roles/web/role.yml:11:20: /var/lib holds /var/lib/fleet-agent (the agent's state directory): the agent's own files are off limits",
    "roles/web/role.yml:12:21: /etc/fleet-agent holds /etc/fleet-agent/agent.toml (the agent's configuration): the agent's own files are off limits"
);

// Nothing reaches a command as an option.

invalid!(
    option_injection,
    [(
        "roles/web/role.yml",
        concat!(
            "resources:\n",
            "  - service: {name: \"--root=/.\", enabled: true}\n",
            "  - service: {name: \"-x.service\", enabled: true}\n",
            "  - package: {name: curl, version: \"--allow-downgrades\"}\n",
            "  - user: {name: app, shell: \"--badname\", home: \"/var/lib/a:b\", comment: \"x:0:0\", groups: [\"-oroot\"]}\n",
            "  - apt_source:\n",
            "      name: ex\n",
            "      uris: [\"http://deb.example/ \\nTrusted: yes\"]\n",
            "      suites: [bookworm]\n",
            "      key: k.gpg\n",
        )
    ), ("roles/web/files/k.gpg", "key")],
    "roles/web/role.yml:2:21: `--root=/.` is not a unit name: expected a systemd unit name such as web or web.service: letters, digits, `:-_.\\`, one `@`, and a unit type",
    "roles/web/role.yml:3:21: `-x.service` is not a unit name: expected a systemd unit name such as web or web.service: letters, digits, `:-_.\\`, one `@`, and a unit type",
    "roles/web/role.yml:4:36: `--allow-downgrades` is not a package version: expected a Debian version such as 1.2-3 or 2:1.0~rc1 (or a glob of one, 1.2.*): it starts with a digit and has only letters, digits and .+~-:",
    "roles/web/role.yml:5:49: `/var/lib/a:b` is not a home or shell: `:` separates the fields of /etc/passwd",
    "roles/web/role.yml:5:30: `--badname` is not a device path: expected an absolute path without `.`, `..`, empty components (`//`) or a trailing /",
    "roles/web/role.yml:5:92: `-oroot` is not a user or group name: lowercase letters, digits, - and _",
    "roles/web/role.yml:5:74: `x:0:0` is not a comment: `:` separates the fields of /etc/passwd",
    "roles/web/role.yml:8:14: `http://deb.example/ \\u{a}Trusted: yes` is not one word: an apt source's uris, suites, components and architectures have no spaces or control characters"
);

// Bounded work: each bound is a problem at its position, and a fleet.yml setting.

invalid!(
    template_steps,
    [(
        "roles/web/templates/web.conf.j2",
        "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}\n"
    )],
    "roles/web/templates/web.conf.j2:1:1: the device's templates take more than 1000000 steps with this one (max_template_steps; fleet.yml settings)"
);

invalid!(
    template_steps_in_role_yml,
    [
        ("fleet.yml", "format: 1\nsettings: {max_template_steps: 1000}\nvars: {port: 1}\nroles: [web]\n"),
        ("roles/web/role.yml", "resources:\n  - file:\n      path: /etc/x\n      content: \"{% for i in range(2000) %}{% endfor %}\"\n")
    ],
    "roles/web/role.yml:4:16: the device's templates take more than 1000 steps with this one (max_template_steps; fleet.yml settings)"
);

invalid!(
    template_steps_are_shared_by_the_device,
    [
        ("fleet.yml", "format: 1\nsettings: {max_template_steps: 1000}\nvars: {port: 1}\nroles: [web]\n"),
        ("roles/web/role.yml", concat!(
            "resources:\n",
            "  - file: {path: /etc/a, content: \"{% for i in range(100) %}{% endfor %}\"}\n",
            "  - file: {path: /etc/b, content: \"{% for i in range(100) %}{% endfor %}\"}\n",
            "  - file: {path: /etc/c, content: \"{% for i in range(100) %}{% endfor %}\"}\n",
            "  - file: {path: /etc/d, content: \"{% for i in range(100) %}{% endfor %}\"}\n",
        ))
    ],
    "roles/web/role.yml:5:35: the device's templates take more than 1000 steps with this one (max_template_steps; fleet.yml settings)"
);

invalid!(
    rendered_size,
    [("roles/web/templates/web.conf.j2", "{% for i in range(2) %}{{ 'x' * 10000000 }}{% endfor %}\n")],
    "roles/web/templates/web.conf.j2: the rendered text is more than 16777216 bytes (max_file_bytes; fleet.yml settings)"
);

invalid!(
    yaml_size,
    [
        ("fleet.yml", "format: 1\nsettings: {max_yaml_bytes: 100}\nvars: {port: 1}\nroles: [web]\n"),
        ("group_vars/shop.yml", "vars:\n  greeting: \"{{ 'far too long for the limit of a hundred bytes, which this file crosses by a few' }}\"\n")
    ],
    "group_vars/shop.yml: 108 bytes, more than max_yaml_bytes (100 bytes; fleet.yml settings)"
);

invalid!(
    file_size_and_total,
    [
        ("fleet.yml", "format: 1\nsettings: {max_file_bytes: 8, max_total_file_bytes: 12}\nvars: {port: 1}\nroles: [web]\n"),
        ("roles/web/role.yml", "resources:\n  - file: {path: /etc/a, source: big}\n  - file: {path: /etc/b, content: \"1234567\"}\n  - file: {path: /etc/c, content: \"1234567\"}\n"),
        ("roles/web/files/big", "123456789")
    ],
    "roles/web/role.yml:2:34: roles/web/files/big: 9 bytes, more than max_file_bytes (8 bytes; fleet.yml settings)",
    "roles/web/role.yml:4:5: the device's files add up to more than 12 bytes with this one (max_total_file_bytes; fleet.yml settings)"
);

// Private state: setuid and setgid need an opt-in.

invalid!(
    setuid_needs_an_opt_in,
    [(
        "roles/web/role.yml",
        concat!(
            "resources:\n",
            "  - file: {path: /usr/local/bin/x, content: x, mode: \"4755\"}\n",
            "  - directory: {path: /srv/shared, mode: \"2775\"}\n",
            "  - file: {path: /usr/local/bin/y, content: y, mode: \"0755\", setgid: true}\n",
            "  - file: {path: /usr/local/bin/z, content: z, mode: \"6755\", setuid: true, setgid: true}\n",
        )
    )],
    "roles/web/role.yml:2:54: mode 4755 sets the setuid bit: add `setuid: true` to the resource to allow it",
    "roles/web/role.yml:3:42: mode 2775 sets the setgid bit: add `setgid: true` to the resource to allow it",
    "roles/web/role.yml:4:70: `setgid: true` but the mode has no setgid bit"
);

// Symlinks in the fleet repository: `plan --repo` (a directory) and `pull` (a commit)
// treat them alike, and never follow them.

/// The problems of loading the base fleet plus `files` and `links` (path → target) for
/// device pi-1, from a working tree and from a commit of it (real git).
fn from_tree_and_commit(files: &[(&str, &str)], links: &[(&str, &str)]) -> [Vec<String>; 2] {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fleet");
    for (path, content) in BASE.iter().chain(files) {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    for (path, target) in links {
        let p = dir.join(path);
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
    }
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "fleet"]);
    let repo = git2::Repository::open(&dir).unwrap();
    let head = repo.head().unwrap().target().unwrap();
    let load = |src: &Source| -> Vec<String> {
        let as_strings = |e: Error| match e {
            Error::Invalid(ps) => ps.iter().map(|p| p.to_string()).collect(),
            other => vec![format!("not a validation error: {other}")],
        };
        let file = FleetFile::read(src).map_err(as_strings);
        let result = file.and_then(|f| Fleet::load(src, None, &f, reserved()).map_err(as_strings));
        let device = Device {
            id: "pi-1".into(),
            device_type: None,
            reads: std::sync::Arc::new(crate::fleet::facts::Fixed::default()),
        };
        match result.and_then(|fleet| fleet.for_device(&device).map_err(as_strings)) {
            Ok(_) => vec![],
            Err(problems) => problems,
        }
    };
    let commit = Source::commit(&repo, head).unwrap();
    [load(&Source::Dir(dir.clone())), load(&commit)]
}

#[test]
fn symlinks_in_the_repository_are_never_followed_by_plan_repo_or_pull() {
    let link =
        "a symlink: links in the fleet repository are never followed (commit the file itself)";
    let role = "resources:\n  - file: {path: /etc/a, source: a.conf}\n  - file: {path: /etc/b, template: b.j2}\n";
    type Files = Vec<(&'static str, &'static str)>;
    let cases: [(&str, Files, Files, Vec<String>); 4] = [
        (
            "a role's source: and template: (one inside the repository, one outside)",
            vec![
                ("roles/web/role.yml", role),
                (
                    "inventory.yml",
                    "groups:\n  shop:\n    devices: [\"pi-*\"]\n",
                ),
            ],
            vec![
                ("roles/web/files/a.conf", "../../../inventory.yml"),
                ("roles/web/templates/b.j2", "/etc/passwd"),
            ],
            vec![
                format!("roles/web/role.yml:2:34: roles/web/files/a.conf: {link}"),
                format!("roles/web/role.yml:3:36: roles/web/templates/b.j2: {link}"),
            ],
        ),
        (
            "role.yml",
            vec![("roles/other/role.yml", "resources: []\n")],
            vec![("roles/web/role.yml", "../other/role.yml")],
            vec![format!("roles/web/role.yml: {link}")],
        ),
        (
            "a role's directory",
            vec![("roles/other/role.yml", "resources: []\n")],
            vec![("roles/web", "other")],
            vec![format!("roles/web: {link}")],
        ),
        (
            "a group_vars file",
            vec![("shop-vars.yml", "vars: {}\n")],
            vec![("group_vars/shop.yml", "../shop-vars.yml")],
            vec![format!("group_vars/shop.yml: {link}")],
        ),
    ];
    for (what, files, links, expected) in cases {
        let [tree, commit] = from_tree_and_commit(&files, &links);
        assert_eq!(tree, expected, "{what}: plan --repo");
        assert_eq!(commit, expected, "{what}: pull");
    }
}

invalid!(
    a_host_vars_file_named_yaml_is_an_error_at_its_path,
    [("host_vars/pi-1.yaml", "vars:\n  greeting: dropped\n")],
    "host_vars/pi-1.yaml: not a vars file: host_vars/ holds only <name>.yml files (hidden files are ignored): rename it to host_vars/pi-1.yml"
);

invalid!(
    a_readme_in_group_vars_is_an_error_at_its_path,
    [
        ("group_vars/README.md", "# notes\n"),
        ("group_vars/.gitkeep", ""),
        ("host_vars/.gitkeep", "")
    ],
    "group_vars/README.md: not a vars file: group_vars/ holds only <name>.yml files (hidden files are ignored)"
);

// ---- command, download, when:, os_image (issue 20)

invalid!(
    a_command_without_a_guard,
    [(
        "roles/web/role.yml",
        "resources:\n  - command:\n      name: hello\n      argv: [echo, hi]\n"
    )],
    "roles/web/role.yml:3:13: a command needs a guard: `creates`, `unless`, `only_if` or `on_change` (without one it would run on every poll)"
);
invalid!(
    a_command_with_argv_and_shell,
    [(
        "roles/web/role.yml",
        "resources:\n  - command:\n      name: hello\n      argv: [echo]\n      shell: echo hi\n      creates: /x\n"
    )],
    "roles/web/role.yml:3:13: a command needs exactly one of `argv` (a list: the program and its arguments) or `shell` (a line for /bin/sh -c)"
);
invalid!(
    a_command_whose_check_is_empty,
    [(
        "roles/web/role.yml",
        "resources:\n  - command:\n      name: hello\n      argv: [echo]\n      unless: []\n"
    )],
    "roles/web/role.yml:3:13: `unless` is a check's argv: expected a non-empty list such as [test, -x, /usr/bin/x]"
);
invalid!(
    on_change_of_something_not_declared,
    [(
        "roles/web/role.yml",
        "resources:\n  - command:\n      name: reload\n      argv: [true]\n      on_change: [/etc/web/web.conf, /etc/nope, \"package:curl\"]\n  - file: {path: /etc/web/web.conf, content: x}\n"
    )],
    "roles/web/role.yml:5:38: on_change: `/etc/nope` is not declared for this device (a resource that a `when:` leaves out is not declared)",
    "roles/web/role.yml:5:49: on_change: `package:curl` is not declared for this device (a resource that a `when:` leaves out is not declared)"
);
invalid!(
    on_change_of_a_service,
    [(
        "roles/web/role.yml",
        "resources:\n  - command: {name: a, argv: [true], on_change: [\"service:x\"]}\n"
    )],
    "roles/web/role.yml:2:50: `service:x` names no resource: expected a path (of a file, directory, link or download) or package:NAME, user:NAME, group:NAME, command:NAME"
);
invalid!(
    on_change_of_a_later_command,
    [(
        "roles/web/role.yml",
        "resources:\n  - command: {name: a, argv: [true], on_change: [\"command:b\"]}\n  - command: {name: b, argv: [true], creates: /x}\n"
    )],
    "roles/web/role.yml:2:50: on_change: `command:b` is not a command declared before this one (commands run in declared order)"
);
invalid!(
    a_download_with_a_bad_digest_and_format,
    [(
        "roles/web/role.yml",
        "resources:\n  - download:\n      path: /opt/x\n      url: ftp://example.com/x\n      sha256: abc\n      unpack: rar\n"
    )],
    "roles/web/role.yml:4:12: `ftp://example.com/x` is not a download URL: expected http:// or https://",
    "roles/web/role.yml:5:15: expected the sha256 of the download: 64 hexadecimal digits",
    "roles/web/role.yml:6:15: `rar` is not an archive format: expected one of tar.gz, tar.xz, zip"
);
invalid!(
    strip_components_of_a_zip,
    [(
        "roles/web/role.yml",
        "resources:\n  - download:\n      path: /opt/x\n      url: https://example.com/x.zip\n      sha256: \"0000000000000000000000000000000000000000000000000000000000000000\"\n      unpack: zip\n      strip_components: 1\n"
    )],
    "roles/web/role.yml:7:25: strip_components goes with `unpack: tar.gz` or `unpack: tar.xz`"
);
invalid!(
    a_when_that_cannot_be_evaluated,
    [(
        "roles/web/role.yml",
        "resources:\n  - when: kiosk_url == 1\n    file: {path: /etc/x, content: x}\n"
    )],
    "roles/web/role.yml:2:11: when: undefined variable `kiosk_url`: expected it in vars (fleet.yml, group_vars, host_vars) or the role's params"
);
invalid!(
    a_when_that_is_not_text,
    [(
        "group_vars/shop.yml",
        "roles:\n  - role: web\n    when: [a]\n"
    )],
    "group_vars/shop.yml:3:11: expected `when:` as a condition: an expression such as `device.facts.architecture == \"arm64\"` or `kiosk_url is defined`"
);
invalid!(
    an_unknown_fact,
    [(
        "roles/web/role.yml",
        "resources:\n  - file: {path: /etc/x, content: \"{{ device.facts.cpu }}\"}\n"
    )],
    "roles/web/role.yml:2:35: undefined variable `device.facts.cpu`: expected it in vars (fleet.yml, group_vars, host_vars) or the role's params"
);
invalid!(
    a_missing_secret,
    [(
        "roles/web/role.yml",
        "resources:\n  - file: {path: /etc/x, content: \"{{ secret('ci_token') }}\"}\n"
    )],
    "roles/web/role.yml:2:35: template error: secret `ci_token` is not on this device"
);
invalid!(
    a_bad_secret_name,
    [(
        "roles/web/role.yml",
        "resources:\n  - file: {path: /etc/x, content: \"{{ secret('../shadow') }}\"}\n"
    )],
    "roles/web/role.yml:2:35: template error: `../shadow` is not a secret name: expected letters, digits, `.`, `_` and `-` (a file in /etc/fleet-agent/secrets)"
);
invalid!(
    a_bad_os_image,
    [(
        "host_vars/pi-1.yml",
        "os_image:\n  artifact: \"a b\"\n  uri: ftp://x\n"
    )],
    "host_vars/pi-1.yml:2:13: os_image.artifact: expected an artifact name without spaces (as `mender-update show-artifact` prints it)",
    "host_vars/pi-1.yml:3:8: os_image.uri: expected an http:// or https:// URL or an absolute path on the device"
);
invalid!(
    os_image_in_fleet_yml,
    [("fleet.yml", "format: 1\nos_image: {artifact: a, uri: /a}\n")],
    "fleet.yml:2:1: `os_image` belongs in group_vars or host_vars (fleet.yml declares images per device type under `os.images`)"
);

/// fleet.yml's rollout and window, overridden by a group's (the strongest layer wins).
#[test]
fn a_group_overrides_the_fleet_rollout_and_window() {
    let fleet = "format: 1\nvars: {port: 80}\nroles: [web]\nrollout: {id: r1, percent: 10}\nmaintenance: {window: \"02:00-04:00\"}\n";
    let reads = std::sync::Arc::new(crate::fleet::facts::Fixed::default());
    let b = for_device(&[("fleet.yml", fleet)], reads.clone())
        .unwrap()
        .brakes;
    assert_eq!(b.rollout.as_ref().map(|r| r.basis_points), Some(1000));
    assert_eq!(b.rollout.unwrap().declared_at, "fleet.yml:4:1");
    assert_eq!(b.window.map(|w| (w.start, w.end)), Some((120, 240)));
    let shop = "vars: {greeting: hi}\nrollout:\n  id: r1\n  percent: 50\nmaintenance: {window: \"23:30-01:00\"}\n";
    let b = for_device(
        &[("fleet.yml", fleet), ("group_vars/shop.yml", shop)],
        reads,
    )
    .unwrap()
    .brakes;
    assert_eq!(b.rollout.map(|r| r.basis_points), Some(5000));
    assert_eq!(b.window.map(|w| w.label()), Some("23:30-01:00".into()));
}

/// A role's checks join the strongest layer's: each check once, the longest bound; a
/// role a `when:` leaves out adds none.
#[test]
fn a_role_health_joins_the_group_one() {
    let reads = std::sync::Arc::new(crate::fleet::facts::Fixed::default());
    let shop =
        "vars: {greeting: hi}\nhealth: {timeout_seconds: 10, units: [a.service, web.service]}\n";
    let web = "include:\n  - role: extra\n    when: \"false\"\nresources: []\nhealth:\n  timeout_seconds: 30\n  units: [web.service]\n  urls: [\"http://127.0.0.1:8080/health\"]\n";
    let extra = "resources: []\nhealth: {commands: [\"false\"]}\n";
    let files = [
        ("group_vars/shop.yml", shop),
        ("roles/web/role.yml", web),
        ("roles/extra/role.yml", extra),
    ];
    let h = for_device(&files, reads.clone())
        .unwrap()
        .brakes
        .health
        .unwrap();
    assert_eq!(h.timeout_seconds, 30);
    assert_eq!(h.units, ["a.service", "web.service"]);
    assert_eq!(h.urls, ["http://127.0.0.1:8080/health"]);
    assert!(h.commands.is_empty());
    // Without the group's: the role's alone.
    let files = [("roles/web/role.yml", web), ("roles/extra/role.yml", extra)];
    let h = for_device(&files, reads).unwrap().brakes.health.unwrap();
    assert_eq!(
        (h.timeout_seconds, h.units),
        (30, vec!["web.service".to_string()])
    );
}
