//! In-process tests of what a health-gated rollback cannot undo (src/release/undo.rs):
//! the good commit's pins that apt's lists no longer have are dropped with a line
//! saying so, those apt has are left to the planner (which downgrades), and the failed
//! commit's packages that the good commit does not declare are said to stay.

use std::sync::Arc;

use crate::fleet::tests::desired;
use crate::host::command::Scripted;
use crate::host::Host;
use crate::release::undo;
use crate::resources::Kind;
use crate::tests::planner::{root, DPKG, FRESH_LISTS};

const STATUS: &str = "Package: hello\nStatus: install ok installed\nVersion: 2.0\n\nPackage: tool\nStatus: install ok installed\nVersion: 1.1\n\nPackage: extra\nStatus: install ok installed\nVersion: 3.0\n\n";

fn commit(resources: &str) -> crate::resources::DesiredState {
    let role = format!("resources:\n{resources}");
    desired(&[("roles/web/role.yml", role.as_str())]).unwrap()
}

fn pins(d: &crate::resources::DesiredState) -> Vec<(String, Option<String>)> {
    (d.resources.iter())
        .filter_map(|r| match &r.kind {
            Kind::Package(p) => Some((p.name.clone(), p.version.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_pin_apt_no_longer_has_is_dropped_and_said() {
    let r = root(&[(DPKG, STATUS), FRESH_LISTS]);
    let runner = Scripted::new()
        .on("apt-cache madison -- hello", 0, "     hello |   2.0 | http://repo fleet-test/main all Packages\n")
        .on("apt-cache madison -- tool", 0, "      tool |   1.1 | http://repo fleet-test/main all Packages\n      tool |   1.0 | http://repo fleet-test/main all Packages\n");
    let host = Host::with_runner(r.path(), Arc::new(runner));
    let mut good = commit("  - package: {name: hello, version: \"1.0\"}\n  - package: {name: tool, version: \"1.0\"}\n  - package: {name: curl, version: \"8.0\"}\n");
    let said = undo::unpin_unavailable(&host, &mut good);
    assert_eq!(
        said,
        ["package hello stays at 2.0: 1.0 is no longer in any repository (apt-cache madison hello)"]
    );
    assert_eq!(
        pins(&good),
        [
            ("hello".into(), None),
            ("tool".into(), Some("1.0".into())),
            ("curl".into(), Some("8.0".into()))
        ],
        "tool 1.0 is in the lists: the planner downgrades it; curl is not installed: left to the planner"
    );
}

#[test]
fn the_failed_commits_packages_the_good_one_does_not_declare_stay() {
    let r = root(&[(DPKG, STATUS)]);
    let host = Host::with_runner(r.path(), Arc::new(Scripted::new()));
    let failed = commit("  - package: {name: hello, version: \"2.0\"}\n  - package: {name: extra}\n  - package: {name: gone}\n  - package: {name: tool, state: absent}\n");
    let recorded = undo::installed(&host, &failed);
    assert_eq!(
        recorded,
        ["hello 2.0", "extra 3.0"],
        "installed and declared present only"
    );
    let good = commit("  - package: {name: hello, version: \"1.0\"}\n");
    assert_eq!(
        undo::left_installed(&host, "53e4ecd24801aa", &recorded, &good),
        ["package extra 3.0 installed by 53e4ecd2 stays (not declared by the good commit; packages are never removed)"]
    );
}
