//! The object store against repositories the real git writes: loose objects, packs
//! with OFS_DELTA and REF_DELTA chains, bases large enough to go to a temporary file,
//! 64-bit pack offsets; every blob must read as `git cat-file` prints it, and a
//! damaged pack must fail the read, never yield other bytes.

use std::io::Read;
use std::path::Path;
use std::process::Command;

use git2::Oid;

use super::{blob_id, Content};

fn git(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "gc.auto=0",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Deterministic bytes that differ a little from one version to the next, so that
/// git stores later versions as deltas of earlier ones.
fn version(seed: u32, len: usize, edits: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    let mut v: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x % 251) as u8
        })
        .collect();
    for e in 0..edits {
        let at = (e as usize * 7919) % len.max(1);
        v[at] = v[at].wrapping_add(1);
        v.insert(at, b'!');
    }
    v
}

/// A repository whose history has `count` versions of a text file and a binary file.
fn history(dir: &Path, big: usize) -> Vec<Oid> {
    git(dir, &["init", "-q"]);
    for i in 0..6 {
        let text: String = (0..400)
            .map(|l| format!("line {l} of version {}\n", if l == i * 50 { i } else { 0 }))
            .collect();
        std::fs::write(dir.join("text.conf"), text).unwrap();
        std::fs::write(dir.join("data.bin"), version(1, big, i as u32 * 3)).unwrap();
        git(dir, &["add", "-A"]);
        git(dir, &["commit", "-qm", &format!("v{i}")]);
    }
    let listed = git(dir, &["rev-list", "--objects", "--all"]);
    String::from_utf8_lossy(&listed)
        .lines()
        .filter_map(|l| Oid::from_str(l.split(' ').next()?).ok())
        .filter(|id| git(dir, &["cat-file", "-t", &id.to_string()]).starts_with(b"blob"))
        .collect()
}

/// Every blob reads as git prints it, through the content stream (id checked).
fn check_all(dir: &Path, blobs: &[Oid]) {
    let objects = dir.join(".git/objects");
    for id in blobs {
        let want = git(dir, &["cat-file", "blob", &id.to_string()]);
        let c = Content::Blob {
            objects: objects.clone(),
            id: *id,
            size: want.len() as u64,
        };
        let mut got = Vec::new();
        c.open().unwrap().read_to_end(&mut got).unwrap();
        assert!(got == want, "blob {id} differs ({} bytes)", got.len());
    }
}

#[test]
fn loose_objects_read_as_git_prints_them() {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = history(tmp.path(), 3000);
    check_all(tmp.path(), &blobs);
}

#[test]
fn ofs_delta_chains_read_as_git_prints_them_with_bases_in_temporary_files() {
    let tmp = tempfile::tempdir().unwrap();
    // Bases over 1 MiB are resolved through temporary files.
    let blobs = history(tmp.path(), 1_300_000);
    git(tmp.path(), &["repack", "-adq", "--depth=50", "--window=50"]);
    let verify = git(
        tmp.path(),
        &["verify-pack", "-v"]
            .iter()
            .copied()
            .chain([pack_idx(tmp.path()).as_str()])
            .collect::<Vec<_>>(),
    );
    assert!(
        String::from_utf8_lossy(&verify).contains("chain length = 2"),
        "the pack has delta chains"
    );
    check_all(tmp.path(), &blobs);
    assert!(
        std::fs::read_dir(tmp.path().join(".git"))
            .unwrap()
            .all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".fleet-agent-delta")),
        "temporary files are unlinked"
    );
}

#[test]
fn ref_deltas_and_64_bit_offsets_read_as_git_prints_them() {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = history(tmp.path(), 20_000);
    // A pack with REF_DELTA entries (no --delta-base-offset), indexed with every
    // offset above 16 in the 64-bit table.
    let all = git(tmp.path(), &["rev-list", "--objects", "--all"]);
    let pack_dir = tmp.path().join(".git/objects/pack");
    std::fs::create_dir_all(&pack_dir).unwrap();
    let mut child = Command::new("git")
        .args(["pack-objects", "--window=50", "--depth=50", "-q"])
        .arg(pack_dir.join("pack"))
        .current_dir(tmp.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &all).unwrap();
    let name = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    let pack = pack_dir.join(format!("pack-{}.pack", name.trim()));
    std::fs::remove_file(pack.with_extension("idx")).unwrap();
    git(
        tmp.path(),
        &["index-pack", "--index-version=2,16", pack.to_str().unwrap()],
    );
    git(tmp.path(), &["prune-packed"]);
    let verify = git(tmp.path(), &["verify-pack", "-v", &pack_idx(tmp.path())]);
    assert!(String::from_utf8_lossy(&verify).contains("chain length"));
    check_all(tmp.path(), &blobs);
}

#[test]
fn a_damaged_pack_fails_the_read_and_yields_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = history(tmp.path(), 50_000);
    git(tmp.path(), &["repack", "-adq"]);
    let idx = pack_idx(tmp.path());
    let pack = Path::new(&idx).with_extension("pack");
    let len = std::fs::metadata(&pack).unwrap().len();
    let mut bytes = std::fs::read(&pack).unwrap();
    // Flip bytes in the middle of the pack: some object's compressed data.
    for b in &mut bytes[(len / 2) as usize..(len / 2) as usize + 64] {
        *b ^= 0x5a;
    }
    std::fs::set_permissions(&pack, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&pack, bytes).unwrap();
    let objects = tmp.path().join(".git/objects");
    let mut failed = 0;
    for id in &blobs {
        let size = git(tmp.path(), &["cat-file", "-s", &id.to_string()]);
        let size: u64 = String::from_utf8_lossy(&size).trim().parse().unwrap();
        let c = Content::Blob {
            objects: objects.clone(),
            id: *id,
            size,
        };
        let mut got = Vec::new();
        let read = c.open().and_then(|mut r| {
            r.read_to_end(&mut got).map_err(|e| {
                r.take_failure()
                    .unwrap_or(crate::error::Error::Other(e.to_string()))
            })
        });
        match read {
            Ok(_) => assert_eq!(blob_id(&got[..], size).unwrap(), *id),
            Err(e) => {
                failed += 1;
                assert!(e.to_string().contains("damaged"), "{e}");
            }
        }
    }
    assert!(failed > 0, "the damage was noticed");
}

#[test]
fn a_missing_object_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    git(tmp.path(), &["init", "-q"]);
    let id = Oid::from_str("0123456789012345678901234567890123456789").unwrap();
    let c = Content::Blob {
        objects: tmp.path().join(".git/objects"),
        id,
        size: 3,
    };
    let e = c.open().err().unwrap().to_string();
    assert!(e.contains("damaged") && e.contains("is missing"), "{e}");
}

#[test]
fn blob_ids_are_gits() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("f"), "hello\n").unwrap();
    git(tmp.path(), &["init", "-q"]);
    let want = git(tmp.path(), &["hash-object", "f"]);
    let got = blob_id(&b"hello\n"[..], 6).unwrap();
    assert_eq!(got.to_string(), String::from_utf8_lossy(&want).trim());
    let c = Content::file(tmp.path().join("f")).unwrap();
    assert_eq!(c.id(), got);
    assert_eq!(Content::Bytes(b"hello\n".to_vec()).id(), got);
}

fn pack_idx(repo: &Path) -> String {
    let dir = repo.join(".git/objects/pack");
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "idx"))
        .unwrap()
        .display()
        .to_string()
}
