//! Building the workspace: one profile (release) for every binary, the test
//! binaries included, so dependencies are compiled once. Shipping builds and
//! benchmarks may use the `dist` profile instead (whole-program LTO, one
//! codegen unit: faster binaries, several minutes more to build).

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

/// The Cargo profile binaries are built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// `release`: what tests, the demo and the local cluster use.
    Release,
    /// `dist`: `release` with whole-program LTO and one codegen unit, as
    /// Istio's ztunnel ships; for images and benchmarks.
    Dist,
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Self::Release => "release",
            Self::Dist => "dist",
        }
    }
}

/// Where the release binaries are written.
pub fn bin_dir() -> PathBuf {
    profile_dir(Profile::Release)
}

/// Where `profile`'s binaries are written.
pub fn profile_dir(profile: Profile) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
        .join(profile.name())
}

/// Builds every binary with `profile` ([`all`] for the release profile).
pub fn all_with(profile: Profile) -> Result<()> {
    run(cargo().args([
        "build",
        "--workspace",
        "--bins",
        "--profile",
        profile.name(),
    ]))
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
