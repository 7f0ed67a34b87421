//! Golden outputs: `plan`, `plan --json`, `apply`, `status --json` and state.json for the
//! example fleet and for a fleet that uses every resource kind, on an empty root and on
//! a populated one. They are compared byte for byte (after replacing temporary paths,
//! times and root-filesystem ids) with tests/golden/*.txt, so that a change of what the
//! agent prints or records is always a deliberate one: `FLEET_GOLDEN_UPDATE=1 cargo test
//! --test integration golden` rewrites them, and the diff is reviewed like code.
//!
//! Needs root: accounts are created with `useradd --root` and apt runs through chroot.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");
const EVERY_KIND: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/every-kind");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/fleet");

/// Collects the outputs of one scenario and compares them at the end, all at once.
struct Golden {
    tmp: PathBuf,
    mismatches: Vec<String>,
}

impl Golden {
    fn new(tmp: &Path) -> Golden {
        Golden {
            tmp: tmp.to_path_buf(),
            mismatches: Vec::new(),
        }
    }

    fn normalize(&self, text: &str) -> String {
        let mut out = text
            .replace(&self.tmp.display().to_string(), "<TMP>")
            .replace(EVERY_KIND, "<EVERY_KIND>");
        for key in ["\"time\": ", "\"changed\": "] {
            out = replace_number_after(&out, key);
            out = replace_iso_after(&out, key);
        }
        let out = replace_quoted_after(&out, "\"rootfs\": ", "<ROOTFS>");
        replace_quoted_after(&out, "\"stamp\": ", "<STAMP>")
    }

    fn check(&mut self, name: &str, actual: &str) {
        let actual = self.normalize(actual);
        let path = Path::new(GOLDEN).join(format!("{name}.txt"));
        if std::env::var_os("FLEET_GOLDEN_UPDATE").is_some() {
            std::fs::create_dir_all(GOLDEN).unwrap();
            std::fs::write(&path, &actual).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (FLEET_GOLDEN_UPDATE=1 writes it)", path.display())
        });
        if expected != actual {
            let diff = similar_lines(&expected, &actual);
            self.mismatches.push(format!("{name}:\n{diff}"));
        }
    }

    fn run(&mut self, name: &str, root: &Path, args: &[&str], code: i32) {
        let out = agent(root, args);
        assert_eq!(out.code, code, "{name}: {out:?}");
        self.check(
            name,
            &format!(
                "exit {}\n--- stdout\n{}--- stderr\n{}",
                out.code, out.stdout, out.stderr
            ),
        );
    }

    fn state(&mut self, name: &str, root: &Path) {
        let text = std::fs::read_to_string(root.join("var/lib/fleet-agent/state.json")).unwrap();
        self.check(name, &text);
    }

    fn finish(self) {
        assert!(
            self.mismatches.is_empty(),
            "outputs differ from tests/golden (FLEET_GOLDEN_UPDATE=1 rewrites them):\n{}",
            self.mismatches.join("\n")
        );
    }
}

fn replace_number_after(text: &str, key: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(key) {
        out.push_str(&rest[..i + key.len()]);
        rest = &rest[i + key.len()..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits > 0 {
            out.push('0');
        }
        rest = &rest[digits..];
    }
    out + rest
}

/// `"time": "2026-12-05T06:00:00Z"` (status --json) → `"time": "<TIME>"`.
fn replace_iso_after(text: &str, key: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(key) {
        out.push_str(&rest[..i + key.len()]);
        rest = &rest[i + key.len()..];
        let iso = rest.len() > 22 && rest.as_bytes()[0] == b'"' && rest.as_bytes()[21] == b'"';
        if iso && rest[1..21].ends_with('Z') {
            out.push_str("\"<TIME>\"");
            rest = &rest[22..];
        }
    }
    out + rest
}

fn replace_quoted_after(text: &str, key: &str, with: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(key) {
        out.push_str(&rest[..i + key.len()]);
        rest = &rest[i + key.len()..];
        if let Some(body) = rest.strip_prefix('"') {
            let end = body.find('"').unwrap_or(0);
            out.push_str(&format!("\"{with}\""));
            rest = &body[end + 1..];
        }
    }
    out + rest
}

/// A line diff good enough to see what moved.
fn similar_lines(expected: &str, actual: &str) -> String {
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    let mut out = String::new();
    for i in 0..e.len().max(a.len()) {
        match (e.get(i), a.get(i)) {
            (Some(x), Some(y)) if x == y => {}
            (x, y) => out.push_str(&format!(
                "  line {}:\n    expected: {}\n    actual:   {}\n",
                i + 1,
                x.unwrap_or(&"<none>"),
                y.unwrap_or(&"<none>")
            )),
        }
    }
    out
}

fn agent(root: &Path, args: &[&str]) -> Run {
    let out = Command::new(BIN)
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("JOURNAL_STREAM")
        .env("TZ", "UTC")
        .output()
        .unwrap();
    to_run(out)
}

/// The goldens need root; the project's test command runs as root (README).
fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the golden tests need root (useradd --root, chroot): run scripts/test.sh as root"
    );
}

fn write(root: &Path, path: &str, content: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A device that has been in use: accounts, dpkg's records, the apt source already in
/// place, a config with other content, a directory with another mode, a link elsewhere.
fn populated_root(root: &Path) {
    write(
        root,
        "/etc/passwd",
        b"root:x:0:0:root:/root:/bin/bash\napp:x:1001:1001:App:/var/lib/app:/bin/sh\n",
        0o644,
    );
    write(root, "/etc/group", b"root:x:0:\napp:x:1001:\n", 0o644);
    write(
        root,
        "/etc/shadow",
        b"root:*:19000:0:99999:7:::\napp:!:19000:0:99999:7:::\n",
        0o640,
    );
    write(root, "/etc/gshadow", b"root:*::\napp:!::\n", 0o640);
    write(
        root,
        "/var/lib/dpkg/status",
        concat!(
            "Package: curl\nStatus: install ok installed\nVersion: 7.88.1-10\n\n",
            "Package: nano\nStatus: deinstall ok config-files\nVersion: 7.2-1\n\n",
            "Package: hello\nStatus: install ok installed\nVersion: 2.10-3\n\n",
            "Package: jq\nStatus: hold ok installed\nVersion: 1.6-2\n\n",
        )
        .as_bytes(),
        0o644,
    );
    let key = std::fs::read(Path::new(EVERY_KIND).join("roles/app/files/example.gpg")).unwrap();
    write(root, "/etc/apt/keyrings/example.asc", &key, 0o644);
    write(
        root,
        "/etc/apt/sources.list.d/example.sources",
        b"# Managed by fleet-agent (role app)\nTypes: deb\nURIs: http://127.0.0.1:9/debian\nSuites: bookworm\nComponents: main\nSigned-By: /etc/apt/keyrings/example.asc\n",
        0o644,
    );
    write(
        root,
        "/usr/lib/systemd/system/legacy.service",
        b"[Unit]\nDescription=legacy\n[Service]\nExecStart=/bin/true\n",
        0o644,
    );
    write(
        root,
        "/etc/app/app.conf",
        b"listen = 80\nworker = alpha\n",
        0o644,
    );
    write(root, "/etc/app/old.conf", b"old\n", 0o644);
    write(root, "/usr/local/bin/app-tool", b"app-tool v1\n", 0o755);
    std::os::unix::fs::symlink("elsewhere.conf", root.join("etc/app/current")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("etc/app"), std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// The every-kind fleet plus one more file, applied first so that the next plan prunes it.
fn every_kind_v1(dir: &Path) -> PathBuf {
    let v1 = dir.join("every-kind-v1");
    copy_dir(Path::new(EVERY_KIND), &v1);
    let role = v1.join("roles/app/role.yml");
    let mut text = std::fs::read_to_string(&role).unwrap();
    text.push_str("  - file:\n      path: /etc/app/legacy.conf\n      content: \"legacy\\n\"\n");
    std::fs::write(role, text).unwrap();
    v1
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn every_resource_kind_on_an_empty_and_a_populated_root() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let mut g = Golden::new(tmp.path());
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let plan = ["plan", "--repo", EVERY_KIND, "--device", "dev-1"];
    g.run("every-kind.empty.plan", &empty, &plan, 2);
    let json = ["plan", "--repo", EVERY_KIND, "--device", "dev-1", "--json"];
    g.run("every-kind.empty.plan-json", &empty, &json, 2);

    let used = tmp.path().join("used");
    populated_root(&used);
    let v1 = every_kind_v1(tmp.path());
    let v1 = v1.to_str().unwrap();
    g.run(
        "every-kind.used.apply-v1",
        &used,
        &["apply", "--repo", v1, "--device", "dev-1"],
        0,
    );
    g.state("every-kind.used.state-v1", &used);
    g.run("every-kind.used.plan", &used, &plan, 2);
    g.run("every-kind.used.plan-json", &used, &json, 2);
    let apply = ["apply", "--repo", EVERY_KIND, "--device", "dev-1"];
    g.run("every-kind.used.apply", &used, &apply, 0);
    g.state("every-kind.used.state", &used);
    g.run(
        "every-kind.used.status-json",
        &used,
        &["status", "--json"],
        0,
    );
    g.run("every-kind.used.plan-again", &used, &plan, 2);
    g.finish();
}

#[test]
fn the_example_fleet_pulled_on_an_empty_and_a_populated_root() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let mut g = Golden::new(tmp.path());
    // A repository with fixed dates: the same commit ids every time.
    let repo = tmp.path().join("fleet");
    copy_dir(Path::new(EXAMPLES), &repo);
    let git = |args: &[&str]| {
        let ok = Command::new("git")
            .args([
                "-c",
                "user.name=golden",
                "-c",
                "user.email=golden@example.com",
            ])
            .args(args)
            .current_dir(&repo)
            .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q", "-b", "production"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "Example fleet"]);
    let device = "7b2e9c14-0a6d-4e8f-b1c3-5d7e9f1a3b02";
    let roots = [
        ("empty", tmp.path().join("empty")),
        ("used", tmp.path().join("used")),
    ];
    write(&roots[1].1, "/etc/motd", b"Welcome\n", 0o644);
    write(
        &roots[1].1,
        "/etc/cron.d/old-kiosk-reboot",
        b"0 4 * * * root reboot\n",
        0o644,
    );
    for (label, root) in &roots {
        write(
            root,
            "/etc/fleet-agent/agent.toml",
            format!(
                "repo = \"file://{}\"\nbranch = \"production\"\ndevice_id = \"{device}\"\n",
                repo.display()
            )
            .as_bytes(),
            0o644,
        );
        g.run(&format!("examples.{label}.plan"), root, &["plan"], 2);
        g.run(
            &format!("examples.{label}.plan-json"),
            root,
            &["plan", "--json"],
            2,
        );
        g.run(&format!("examples.{label}.pull"), root, &["pull"], 0);
        g.state(&format!("examples.{label}.state"), root);
        g.run(
            &format!("examples.{label}.status-json"),
            root,
            &["status", "--json"],
            0,
        );
        g.run(&format!("examples.{label}.plan-again"), root, &["plan"], 0);
    }
    g.finish();
}
