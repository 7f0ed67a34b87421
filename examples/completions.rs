//! Writes shell completions (bash, zsh, fish) for fleet-agent, generated from its clap
//! definition (src/cli/args.rs, included here), into a directory:
//!
//!     cargo run --example completions -- target/completions
//!
//! scripts/build-release.sh runs it before packaging; the .deb installs the files where
//! bash-completion, zsh and fish look. The agent itself carries no generator.

use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::{generate_to, Shell};

#[allow(dead_code)]
#[path = "../src/cli/args.rs"]
mod args;

fn main() {
    let dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .expect("usage: completions OUTDIR"),
    );
    std::fs::create_dir_all(&dir).expect("the output directory can be made");
    let mut cmd = args::Cli::command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path =
            generate_to(shell, &mut cmd, "fleet-agent", &dir).expect("completions are written");
        println!("{}", path.display());
    }
}
