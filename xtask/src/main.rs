//! `cargo xtask`: every project task behind one command.
//!
//! Each command first runs [`setup`](setup::run), which installs what is
//! missing and is quick when everything is present, so no task ever needs a
//! manual step on a fresh machine.

mod build;
mod setup;

use std::process::Command;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Set-up, build, demo cluster and tests for ztunnel"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install every prerequisite (idempotent; fast when all is present).
    Setup,
    /// Build the eBPF object and the userspace binaries (release profile).
    Build {
        /// Build with the `dist` profile instead (LTO, one codegen unit; into
        /// target/dist): for images and benchmarks, several minutes longer.
        #[arg(long)]
        dist: bool,
    },
    /// Bring up a local cluster, show the system at work, tear it down.
    Demo,
    /// Run every test: unit, integration, and end-to-end on network namespaces (needs root).
    Test {
        /// Extra arguments for `cargo test`, for example a test-name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmark the mesh against a direct path and a plain relay on a local
    /// cluster; writes bench/results/ (see `bench/README.md`; needs root).
    Bench {
        /// Benchmark binaries of the `dist` profile (as shipped) rather than `release`.
        #[arg(long)]
        dist: bool,
        /// Arguments for the harness, for example `--quick` or `--rounds 5`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Manage the long-lived local cluster: up | down | status | exec (see `cluster --help`).
    #[command(disable_help_flag = true)]
    Cluster {
        /// Arguments for the cluster tool, for example `up --nodes 3` or `exec client-1 -- curl ...`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    setup::run()?;
    match cli.command {
        Task::Setup => Ok(()),
        Task::Build { dist: false } => build::all(),
        Task::Build { dist: true } => build::all_with(build::Profile::Dist),
        Task::Demo => {
            build::all()?;
            run_tool("ztunnel-cluster", &["demo".to_owned()])
        }
        Task::Test { args } => test(&args),
        Task::Bench { dist, args } => {
            setup::require_root("the benchmark creates network namespaces")?;
            let profile = if dist {
                build::Profile::Dist
            } else {
                build::Profile::Release
            };
            build::all_with(profile)?;
            let out = build::workspace().join("bench/results");
            let bins = build::profile_dir(profile);
            let mut all = vec![
                "--out".to_owned(),
                out.to_string_lossy().into_owned(),
                "--bin-dir".to_owned(),
                bins.to_string_lossy().into_owned(),
            ];
            all.extend(args);
            run_tool_from(&bins, "ztunnel-bench", &all)
        }
        Task::Cluster { args } => {
            build::all_quietly()?;
            run_tool("ztunnel-cluster", &args)
        }
    }
}

/// Runs every test in the workspace, the root-only end-to-end tests included.
fn test(extra: &[String]) -> Result<()> {
    setup::require_root("the end-to-end tests create network namespaces")?;
    build::all()?;
    // Clear what a killed earlier run may have left (never a live cluster).
    run_tool(
        "ztunnel-cluster",
        &["down".to_owned(), "--stale".to_owned()],
    )?;
    let mut cmd = build::cargo();
    cmd.args(["test", "--workspace", "--release", "--no-fail-fast"])
        .args(extra);
    cmd.env("ZTUNNEL_BIN_DIR", build::bin_dir());
    cmd.env("ZTUNNEL_KUBERNETES_TOOLS", setup::kubernetes_tools_dir());
    build::run(&mut cmd)
}

/// Runs one of the workspace's binaries (built by [`build::all`]) with `args`.
fn run_tool(name: &str, args: &[String]) -> Result<()> {
    run_tool_from(&build::bin_dir(), name, args)
}

/// Runs binary `name` of directory `dir` with `args`, passing its exit code on.
fn run_tool_from(dir: &std::path::Path, name: &str, args: &[String]) -> Result<()> {
    let path = dir.join(name);
    let status = Command::new(&path)
        .args(args)
        .status()
        .with_context(|| format!("running {}", path.display()))?;
    if !status.success() {
        // The tool has printed its own error; pass its exit code on to scripts.
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}
