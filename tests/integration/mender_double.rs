//! The mender-update test double (scripts/mender-double) against its contract: real
//! artifacts from mender-artifact, a real file-backed u-boot environment (libubootenv),
//! the simulated bootloader's fall-back. The checks live in the shell test the device
//! harness shares; this runs it and requires every check to pass.

use std::path::Path;
use std::process::Command;

#[test]
fn mender_double_follows_the_client_contract() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mender-double/test-double.sh");
    let scratch = tempfile::tempdir().unwrap();
    let out = Command::new(&script)
        .arg(scratch.path())
        .output()
        .expect("test-double.sh runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "test-double.sh failed ({:?}); it needs mender-artifact and libubootenv-tool \
         (scripts/install-deps.sh)\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status.code()
    );
    // The checks named in the task, each reported by the script.
    for check in [
        "install: exit 4",
        "second install: exit 1, update already in progress",
        "commit 0, commit again 2",
        "fall-back to 3, commit refused (1)",
        "power cut in ArtifactInstall",
        "3.x form",
        "all 17 checks passed",
    ] {
        assert!(
            stdout.contains(check),
            "missing check {check:?} in:\n{stdout}"
        );
    }
}
