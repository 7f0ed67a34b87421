//! Integration tests: the real fleet-agent binary against real git repositories served
//! by file:// and by smart HTTP on 127.0.0.1, on a scratch root directory.

mod support;

mod bad_input;
mod cli;
mod docs;
mod faults;
mod golden;
mod kiosk;
mod memory;
mod mender_double;
mod migrated;
mod os_update;
mod pipeline;
mod rollout;
mod security;
mod self_update;
mod signing;
mod sync;

#[test]
fn version_and_usage_errors() {
    let out = std::process::Command::new(support::BIN)
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = std::process::Command::new(support::BIN)
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "usage errors exit 64, not 2 (2 means changes pending)"
    );
}
