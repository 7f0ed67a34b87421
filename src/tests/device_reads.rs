//! In-process tests of what the loader may read of the device (facts, secrets) and of
//! what depends on it: `when:` on resources and role references, a value that carries a
//! secret, and the OS image a group_vars or host_vars file chooses.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use minijinja::Value;

use crate::fleet::facts::Fixed;
use crate::fleet::tests::for_device;
use crate::resources::Kind;

fn reads(facts: &[(&str, &str)], secrets: &[(&str, &str)]) -> Arc<Fixed> {
    Arc::new(Fixed {
        facts: facts
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect(),
        secrets: secrets
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        reads: Default::default(),
    })
}

/// The resources' subjects of device pi-1.
fn subjects(files: &[(&str, &str)], reads: Arc<Fixed>) -> Vec<String> {
    for_device(files, reads)
        .unwrap()
        .desired
        .resources
        .iter()
        .map(|r| r.kind.subject())
        .collect()
}

#[test]
fn facts_are_read_only_when_a_template_uses_them() {
    let r = reads(&[("architecture", "arm64")], &[]);
    for_device(&[], r.clone()).unwrap();
    assert_eq!(
        r.reads.load(Ordering::Relaxed),
        0,
        "the base fleet uses no fact"
    );
    let role =
        "resources:\n  - file: {path: /etc/arch, content: \"{{ device.facts.architecture }}\"}\n";
    let d = for_device(&[("roles/web/role.yml", role)], r.clone()).unwrap();
    let Kind::File(f) = &d.desired.resources[0].kind else {
        panic!()
    };
    assert_eq!(f.content.read_all().unwrap(), b"arm64");
    assert_eq!(r.reads.load(Ordering::Relaxed), 1);
}

#[test]
fn when_on_resources_and_role_references_uses_vars_and_facts() {
    let files = [
        (
            "roles/web/role.yml",
            "resources:\n  - when: device.facts.architecture == \"arm64\"\n    file: {path: /etc/arm64, content: x}\n  - file: {path: /etc/always, content: x}\n    when: \"true\"\n  - when: kiosk_url is defined\n    file: {path: /etc/kiosk, content: \"{{ kiosk_url }}\"}\n",
        ),
        ("roles/extra/role.yml", "resources:\n  - directory: {path: /etc/extra}\n"),
        (
            "group_vars/shop.yml",
            "roles:\n  - role: extra\n    when: device.facts.os_codename in [\"bookworm\", \"trixie\"]\n",
        ),
    ];
    let arm = reads(
        &[("architecture", "arm64"), ("os_codename", "bookworm")],
        &[],
    );
    assert_eq!(
        subjects(&files, arm),
        ["/etc/arm64", "/etc/always", "/etc/extra"]
    );
    let armhf = reads(
        &[("architecture", "armhf"), ("os_codename", "bullseye")],
        &[],
    );
    assert_eq!(subjects(&files, armhf), ["/etc/always"]);
    let mut with_url = files.to_vec();
    with_url.push((
        "host_vars/pi-1.yml",
        "vars:\n  kiosk_url: https://example.com\n",
    ));
    let arm = reads(&[("architecture", "arm64"), ("os_codename", "trixie")], &[]);
    assert_eq!(
        subjects(&with_url, arm),
        ["/etc/arm64", "/etc/always", "/etc/kiosk", "/etc/extra"]
    );
}

#[test]
fn a_value_that_renders_a_secret_is_secret() {
    let role = "resources:\n  - file: {path: /etc/token, content: \"token={{ secret('ci_token') }}\\n\"}\n  - file: {path: /etc/plain, content: \"plain\\n\"}\n  - command:\n      name: register\n      argv: [/opt/runner/config.sh, --token, \"{{ secret('ci_token') }}\"]\n      creates: /opt/runner/.runner\n";
    let r = reads(&[], &[("ci_token", "s3cr3t")]);
    let d = for_device(&[("roles/web/role.yml", role)], r).unwrap();
    let kinds: Vec<&Kind> = d.desired.resources.iter().map(|r| &r.kind).collect();
    let (Kind::File(token), Kind::File(plain), Kind::Command(c)) = (kinds[0], kinds[1], kinds[2])
    else {
        panic!("{kinds:?}")
    };
    assert_eq!(token.content.read_all().unwrap(), b"token=s3cr3t\n");
    assert!(token.secret, "a file that renders a secret is secret");
    assert!(!plain.secret);
    assert!(c.secret, "a command whose argv renders a secret is secret");
}

#[test]
fn os_image_of_the_strongest_layer_with_its_position() {
    let files = [
        (
            "group_vars/shop.yml",
            "os_image:\n  artifact: shop-os-3\n  uri: https://example.com/shop-os-3.mender\n",
        ),
        (
            "host_vars/pi-1.yml",
            "vars: {}\nos_image: {artifact: pi-1-os, uri: /data/pi-1-os.mender}\n",
        ),
    ];
    let d = for_device(&files, reads(&[], &[])).unwrap();
    let (image, at) = d.os_image.unwrap();
    assert_eq!(image.artifact, "pi-1-os");
    assert_eq!(at.to_string(), "host_vars/pi-1.yml:2:1");
    let d = for_device(&files[..1], reads(&[], &[])).unwrap();
    let (image, at) = d.os_image.unwrap();
    assert_eq!(
        (image.artifact.as_str(), at.to_string().as_str()),
        ("shop-os-3", "group_vars/shop.yml:1:1")
    );
    assert!(for_device(&[], reads(&[], &[])).unwrap().os_image.is_none());
}
