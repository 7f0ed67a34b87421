//! The built-in kiosk role (roles/kiosk) on a booted Debian, from a fleet repository
//! pulled over smart HTTP, with Debian's real packages (cage, chromium, xwayland...):
//! proof that the page is on the screen. There is no GPU or DRM device here, so a
//! systemd drop-in that the TEST adds runs the same unit with cage on wlroots' headless
//! backend; `grim` takes screenshots from the kiosk's Wayland socket and the colours of
//! the page's four quadrants are checked in them. Screenshots are kept in
//! target/test-artifacts/kiosk-screenshot-*.png.
//!
//! The packages are about 190 MB (downloaded once into the shared apt archive cache):
//! the test is `#[ignore]`d by a plain `cargo test`, which says so, and
//! scripts/test.sh runs it (`cargo test --test device -- --ignored kiosk`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::{Booted, StaticServer};
use crate::support::{FleetRepo, GitHttpServer};

/// What the test page draws: top-left, top-right, bottom-left, bottom-right.
type Quadrants = [[u8; 3]; 4];

const PAGE_A: Quadrants = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]];
const PAGE_B: Quadrants = [[0, 255, 255], [255, 0, 255], [255, 255, 255], [128, 0, 0]];

fn page(q: &Quadrants) -> String {
    let css = |c: &[u8; 3]| format!("rgb({},{},{})", c[0], c[1], c[2]);
    format!(
        "<!doctype html><html><head><style>html,body{{margin:0;height:100%;overflow:hidden}}\
         div{{position:fixed;width:50vw;height:50vh}}</style></head><body>\
         <div style=\"left:0;top:0;background:{}\"></div>\
         <div style=\"left:50vw;top:0;background:{}\"></div>\
         <div style=\"left:0;top:50vh;background:{}\"></div>\
         <div style=\"left:50vw;top:50vh;background:{}\"></div></body></html>\n",
        css(&q[0]),
        css(&q[1]),
        css(&q[2]),
        css(&q[3])
    )
}

/// The test's own changes to the unit: no VT and no DRM in a container. The unit's
/// ExecStart, user, PAM service and restart policy stay the role's.
const HEADLESS_DROP_IN: &str = "[Service]
# No virtual terminals in a container: a logind session on the console instead of tty7.
TTYPath=/dev/console
StandardInput=null
TTYReset=no
TTYVHangup=no
TTYVTDisallocate=no
# No DRM device: wlroots' headless backend and software renderer. Two outputs: the
# window spans both, so wlroots composites it (with one output, wlroots 0.16 scans
# the full-screen client buffer out directly and screencopy keeps returning the frame
# from before).
Environment=WLR_BACKENDS=headless WLR_RENDERER=pixman WLR_HEADLESS_OUTPUTS=2
";

/// Debian's /usr/bin/chromium sources /etc/chromium.d/*: test-only browser flags.
/// (Its wrapper already adds --disable-background-networking.)
const CHROMIUM_TEST_FLAGS: &str =
    "export CHROMIUM_FLAGS=\"$CHROMIUM_FLAGS --disable-gpu --disable-component-update\"\n";

fn host_vars(url: &str, rotation: u32) -> String {
    format!(
        "roles:\n  - role: kiosk\n    params:\n      url: \"{url}\"\n      rotation: {rotation}\n"
    )
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let t = f();
    eprintln!(
        "[timing] kiosk: {what}: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    t
}

/// "Started" lines of the unit in the device's journal: every start, by hand or by
/// systemd's Restart=.
fn starts(dev: &Booted) -> usize {
    dev.sh("journalctl -q -o cat -u fleet-kiosk.service")
        .lines()
        .filter(|l| l.starts_with("Started "))
        .count()
}

fn n_restarts(dev: &Booted) -> u32 {
    dev.sh("systemctl show -p NRestarts --value fleet-kiosk.service")
        .parse()
        .unwrap()
}

struct Shot {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Shot {
    fn at(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    /// The colour at the centre of each quadrant.
    fn quadrants(&self) -> Quadrants {
        let (w, h) = (self.width, self.height);
        [
            self.at(w / 4, h / 4),
            self.at(3 * w / 4, h / 4),
            self.at(w / 4, 3 * h / 4),
            self.at(3 * w / 4, 3 * h / 4),
        ]
    }

    fn shows(&self, q: &Quadrants) -> bool {
        self.quadrants()
            .iter()
            .zip(q)
            .all(|(got, want)| got.iter().zip(want).all(|(a, b)| a.abs_diff(*b) <= 8))
    }
}

/// A binary PPM (P6), as `grim -t ppm` writes it.
fn read_ppm(path: &Path) -> Shot {
    let data = std::fs::read(path).unwrap();
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while data[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while !data[i].is_ascii_whitespace() {
            i += 1;
        }
        fields.push(String::from_utf8_lossy(&data[start..i]).into_owned());
    }
    assert_eq!(fields[0], "P6", "grim wrote a binary PPM");
    assert_eq!(fields[3], "255");
    let (width, height) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    let rgb = data[i + 1..].to_vec();
    assert_eq!(rgb.len(), width * height * 3, "PPM size");
    Shot { width, height, rgb }
}

fn artifacts() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Screenshots of the kiosk's output until it shows `want` (the browser takes a few
/// seconds to start); the last one is kept as target/test-artifacts/kiosk-screenshot-NAME.png.
fn wait_for_screen(dev: &Booted, name: &str, want: &Quadrants) -> Shot {
    let start = Instant::now();
    let uid = dev.sh("id -u kiosk");
    let grim = format!(
        "export XDG_RUNTIME_DIR=/run/user/{uid} WAYLAND_DISPLAY=wayland-0; \
         grim -t ppm /var/tmp/kiosk.ppm && grim -t png /var/tmp/kiosk.png"
    );
    loop {
        let out = dev.exec(&["sh", "-c", &grim]);
        if out.code == 0 {
            let shot = read_ppm(&dev.path("/var/tmp/kiosk.ppm"));
            let kept = artifacts().join(format!("kiosk-screenshot-{name}.png"));
            std::fs::copy(dev.path("/var/tmp/kiosk.png"), &kept).unwrap();
            if shot.shows(want) {
                eprintln!(
                    "[kiosk] {name}: {}x{} shows {:?} after {:.1} s: {}",
                    shot.width,
                    shot.height,
                    shot.quadrants(),
                    start.elapsed().as_secs_f64(),
                    kept.display()
                );
                return shot;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{name}: the screen shows {:?}, expected {want:?}; see {}\n{}",
                shot.quadrants(),
                kept.display(),
                dev.sh("journalctl -q -o cat -u fleet-kiosk.service | tail -n 30")
            );
        } else {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{name}: no screenshot: {out:?}\n{}",
                dev.sh("journalctl -q -o cat -u fleet-kiosk.service | tail -n 30")
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A pull that must succeed; returns its stderr (the changes it made).
fn pull(dev: &Booted, what: &str) -> String {
    let run = timed(what, || dev.agent(&["pull"]));
    assert_eq!(run.code, 0, "{what}: {run:?}");
    run.stderr
}

#[test]
#[ignore = "downloads about 190 MB of Debian packages; scripts/test.sh runs it: cargo test --test device -- --ignored kiosk"]
fn the_kiosk_shows_the_page_and_restarts_once_per_change() {
    let total = Instant::now();
    let pages = tempfile::tempdir().unwrap();
    std::fs::write(pages.path().join("a.html"), page(&PAGE_A)).unwrap();
    std::fs::write(pages.path().join("b.html"), page(&PAGE_B)).unwrap();
    let web = StaticServer::start(pages.path());
    let url_a = format!("http://127.0.0.1:{}/a.html", web.port);
    let url_b = format!("http://127.0.0.1:{}/b.html", web.port);

    let name = "fa-kiosk";
    let hv = format!("host_vars/{name}.yml");
    let repo = FleetRepo::new(&[("fleet.yml", "format: 1\n"), (&hv, &host_vars(&url_a, 0))]);
    let git = GitHttpServer::start(repo.server.parent().unwrap(), None);
    let dev = timed("boot", || Booted::start_with(name, true));
    dev.write(
        "/etc/fleet-agent/agent.toml",
        &format!(
            "repo = \"{}\"\nbranch = \"main\"\ndevice_id = \"{name}\"\n",
            git.url("fleet.git")
        ),
    );
    // The built-in roles where the .deb installs them.
    std::fs::create_dir_all(dev.path("/usr/share/fleet-agent")).unwrap();
    let status = std::process::Command::new("cp")
        .args(["-r", concat!(env!("CARGO_MANIFEST_DIR"), "/roles")])
        .arg(dev.path("/usr/share/fleet-agent/roles"))
        .status()
        .unwrap();
    assert!(status.success());
    dev.write(
        "/etc/systemd/system/fleet-kiosk.service.d/test-headless.conf",
        HEADLESS_DROP_IN,
    );
    dev.write("/etc/chromium.d/fleet-test", CHROMIUM_TEST_FLAGS);

    // The first pull installs the packages, creates the user, writes the files and
    // starts the kiosk.
    let first = pull(&dev, "first pull (apt installs cage, chromium, ...)");
    assert!(
        first.contains("changed service fleet-kiosk.service"),
        "{first}"
    );
    assert_eq!(
        dev.sh("systemctl is-enabled fleet-kiosk.service"),
        "enabled"
    );
    assert_eq!(dev.sh("id -nG kiosk"), "kiosk video render input");
    assert_eq!(
        dev.sh("readlink /etc/systemd/system/default.target"),
        "/lib/systemd/system/graphical.target"
    );
    assert_eq!(
        dev.sh("dpkg-query -W -f '${Status}' cage chromium xwayland"),
        "install ok installedinstall ok installedinstall ok installed"
    );
    // The screenshot tool is the test's, not the role's.
    timed("apt-get install grim", || {
        dev.sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends grim >/dev/null")
    });
    let shot = timed("first screen", || wait_for_screen(&dev, "a", &PAGE_A));
    assert!(
        shot.width > shot.height,
        "landscape: {}x{}",
        shot.width,
        shot.height
    );
    let landscape = (shot.width, shot.height);
    // The unit runs as the kiosk user, in a logind session (pam_systemd).
    assert_eq!(
        dev.sh("systemctl show -p User --value fleet-kiosk.service"),
        "kiosk"
    );
    assert!(dev
        .sh("loginctl list-sessions --no-legend")
        .contains("kiosk"));

    // An unchanged run touches nothing and restarts nothing.
    let before = (starts(&dev), n_restarts(&dev));
    let noop = pull(&dev, "unchanged pull");
    assert!(noop.contains("no changes"), "{noop}");
    assert_eq!(dev.agent(&["plan"]).code, 0, "nothing left to do");
    std::thread::sleep(Duration::from_secs(3));
    let unchanged_restarts = starts(&dev) - before.0;
    assert_eq!(unchanged_restarts, 0, "an unchanged run restarts nothing");
    assert_eq!(n_restarts(&dev), before.1);
    eprintln!("[kiosk] restarts after an unchanged run: {unchanged_restarts}");

    // A new URL in the fleet repository: the next run restarts the kiosk exactly once.
    repo.commit(&[(&hv, &host_vars(&url_b, 0))], "kiosk: page b");
    let before = starts(&dev);
    let changed = pull(&dev, "pull with a new URL");
    assert!(
        changed.contains("changed file /usr/local/lib/fleet-kiosk/kiosk-launch"),
        "{changed}"
    );
    wait_for_screen(&dev, "b", &PAGE_B);
    let url_restarts = starts(&dev) - before;
    assert_eq!(url_restarts, 1, "restarted exactly once for a new URL");
    eprintln!("[kiosk] restarts after a URL change: {url_restarts}");
    let before = starts(&dev);
    let noop = pull(&dev, "unchanged pull after the change");
    assert!(noop.contains("no changes"), "{noop}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(starts(&dev) - before, 0, "then nothing again");

    // Rotation 90: one restart, and the screen is portrait.
    repo.commit(&[(&hv, &host_vars(&url_b, 90))], "kiosk: rotation 90");
    let before = starts(&dev);
    pull(&dev, "pull with rotation 90");
    let rotated = wait_for_rotation(&dev, "b-rotated-90", landscape);
    assert!(rotated.shows(&PAGE_B), "{:?}", rotated.quadrants());
    assert_eq!(
        starts(&dev) - before,
        1,
        "restarted exactly once for a rotation"
    );

    // The browser dies: systemd starts the kiosk again (Restart=always).
    let restarts = n_restarts(&dev);
    dev.sh("for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = chromium ] && kill -9 ${p#/proc/}; done; true");
    let start = Instant::now();
    while n_restarts(&dev) == restarts {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "systemd did not restart the kiosk after the browser died"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "[kiosk] the browser was killed: systemd restarted the kiosk after {:.1} s",
        start.elapsed().as_secs_f64()
    );
    wait_for_rotation(&dev, "b-after-the-browser-was-killed", landscape);
    assert_eq!(
        n_restarts(&dev),
        restarts + 1,
        "one restart, no restart loop"
    );
    health_gated_rollback(&dev, &repo, (&url_b, landscape));
    eprintln!(
        "[timing] kiosk: whole test: {:.1} s",
        total.elapsed().as_secs_f64()
    );
}

/// Screenshots until each output has turned (the drop-in gives cage two outputs side by
/// side: a landscape W x H screenshot is two W/2 x H outputs; turned, two H x W/2) and
/// shows page B.
fn wait_for_rotation(dev: &Booted, name: &str, landscape: (usize, usize)) -> Shot {
    let want = (2 * landscape.1, landscape.0 / 2);
    let start = Instant::now();
    loop {
        let shot = wait_for_screen(dev, name, &PAGE_B);
        if (shot.width, shot.height) == want {
            return shot;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the screen is {}x{} after rotation 90, expected {}x{}",
            shot.width,
            shot.height,
            want.0,
            want.1
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn health(url: &str) -> String {
    format!("format: 1\nhealth:\n  timeout_seconds: 15\n  units: [fleet-kiosk.service]\n  urls: [\"{url}\"]\n")
}

/// Issue 17: a commit that breaks the kiosk's URL check (its page is not there) is rolled
/// back within the checks' bound: the launcher back to its earlier digest, the kiosk
/// active and showing the earlier page, the commit marked failed and skipped after.
fn health_gated_rollback(
    dev: &Booted,
    repo: &FleetRepo,
    (url_b, landscape): (&str, (usize, usize)),
) {
    let hv = format!("host_vars/{}.yml", "fa-kiosk");
    let head = || crate::support::git(&repo.work, &["rev-parse", "HEAD"]);
    let state = || -> serde_json::Value {
        serde_json::from_str(&dev.sh("cat /var/lib/fleet-agent/state.json")).unwrap()
    };
    let launcher = || dev.sh("sha256sum /usr/local/lib/fleet-kiosk/kiosk-launch | cut -d' ' -f1");
    // The checks arrive (nothing else changes): they pass, the commit is the good one.
    repo.commit(&[("fleet.yml", &health(url_b))], "health: the kiosk's page");
    let good = head();
    pull(dev, "pull with health checks");
    assert_eq!(state()["release"]["good"], good.as_str());
    let digest = launcher();

    // The broken commit: the kiosk's new page and its check point at a page that is
    // not there.
    let url_c = url_b.replace("/b.html", "/missing.html");
    repo.commit(
        &[
            ("fleet.yml", &health(&url_c)),
            (&hv, &host_vars(&url_c, 90)),
        ],
        "kiosk: a page that is not there",
    );
    let bad = head();
    let run = timed("pull of the broken commit and its rollback", || {
        dev.agent(&["pull"])
    });
    eprintln!("[kiosk] rollback pull:\n{}", run.stderr);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("missing.html"), "{run:?}");
    assert_eq!(
        launcher(),
        digest,
        "the launcher is back to the good commit's"
    );
    assert_eq!(dev.sh("systemctl is-active fleet-kiosk.service"), "active");
    let s = state();
    eprintln!(
        "[kiosk] state: {}",
        serde_json::to_string_pretty(&s["release"]).unwrap()
    );
    assert_eq!(s["applied_commit"], good.as_str());
    assert_eq!(s["release"]["failed"][0], bad.as_str());
    let said = s["release"]["health"].as_str().unwrap().to_string();
    assert!(
        said.starts_with(&format!("rolled back from {bad} to {good} in ")),
        "{said}"
    );
    let took: u64 = said
        .split(" in ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        took <= 15 + 30,
        "rolled back {took} s after the failed check"
    );
    eprintln!("[kiosk] rolled back {took} s after the failed check");
    let back = wait_for_rotation(dev, "b-after-the-rollback", landscape);
    assert!(back.shows(&PAGE_B), "{:?}", back.quadrants());
    // Later polls skip the failed commit and change nothing.
    let again = pull(dev, "pull after the rollback");
    assert!(again.contains("no changes"), "{again}");
    assert_eq!(launcher(), digest);
}
