//! Building the workspace: one profile (release) for every binary, the test
//! binaries included, so dependencies are compiled once.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of `xtask/`). `cargo run` sets
/// `CARGO_MANIFEST_DIR` at run time too: preferring it keeps a copied
/// checkout (whose xtask binary may be reused from the original's target
/// directory) working on its own files rather than the original's.
pub fn workspace() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest
        .parent()
        .map(Path::to_owned)
        .expect("xtask/ lives in the workspace")
}

/// Where the release binaries are written.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join("release")
}

/// A `cargo` command in the workspace root, using the same cargo as this run.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace());
    cmd
}

/// Builds the eBPF object (through `ztunnel/build.rs`) and every binary.
pub fn all() -> Result<()> {
    run(cargo().args(["build", "--workspace", "--release", "--bins"]))
}

/// [`all`], printing only warnings and errors: for commands whose own output
/// is what the user (or a script reading `cluster status --json`) wants.
pub fn all_quietly() -> Result<()> {
    run(cargo().args(["build", "--quiet", "--workspace", "--release", "--bins"]))
}

/// Runs `cmd`, failing with the command line if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
