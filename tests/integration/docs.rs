//! The docs cannot drift from the product: every code block of README.md and docs/**.md
//! fenced as ```` ```sh runnable ```` is run with bash (`set -euo pipefail`) in the
//! checkout, with this build's fleet-agent first on PATH, and must succeed. Blocks that
//! are not marked (synopses, examples needing a device) are left alone.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![Path::new(ROOT).join("README.md")];
    let mut dirs = vec![Path::new(ROOT).join("docs")];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "md") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// The runnable blocks of a markdown file: (line of the fence, script).
fn runnable_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        match &mut current {
            None if line.trim_start().starts_with("```sh runnable") => {
                current = Some((i + 1, String::new()));
            }
            Some(_) if line.trim_start().starts_with("```") => blocks.push(current.take().unwrap()),
            Some((_, script)) => {
                script.push_str(line);
                script.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn every_runnable_block_of_the_docs_runs() {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let mut ran = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, script) in runnable_blocks(&text) {
            let scratch = tempfile::tempdir().unwrap();
            let out = to_run(
                Command::new("bash")
                    .args(["-euo", "pipefail", "-c", &script])
                    .current_dir(ROOT)
                    .env("PATH", &path)
                    .env("TMPDIR", scratch.path())
                    .env_remove("JOURNAL_STREAM")
                    .output()
                    .unwrap(),
            );
            assert_eq!(
                out.code,
                0,
                "{}:{line}: this runnable block failed:\n{script}\n{out:?}",
                file.display()
            );
            ran += 1;
        }
    }
    assert!(
        ran >= 3,
        "only {ran} runnable blocks found: the check would prove little"
    );
}
