//! Embeds the built-in roles (roles/**) into the binary, so that `validate` and `plan
//! --repo` know them on any machine (a maintainer's laptop, the fleet repository's CI),
//! not only where the package installed them under /usr/share/fleet-agent/roles.

use std::path::{Path, PathBuf};

fn main() {
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("roles");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    files.sort();
    let mut out = String::from("/// The built-in roles: (path under roles/, content).\npub(crate) static BUILTIN_ROLES: &[(&str, &[u8])] = &[\n");
    for (rel, abs) in files {
        out.push_str(&format!("    ({rel:?}, include_bytes!({abs:?})),\n"));
    }
    out.push_str("];\n");
    let dest =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("builtin_roles.rs");
    std::fs::write(dest, out).expect("OUT_DIR is writable");
}

/// Every file under `dir` except README files, as (path relative to `root`, absolute path).
fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(root, &path, files);
        } else if dir != root {
            let rel = path.strip_prefix(root).expect("under root");
            files.push((rel.display().to_string(), path.display().to_string()));
        }
    }
}
