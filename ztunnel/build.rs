//! Builds the eBPF programs (`../ebpf/programs`) and hands the object to the
//! crate through `OUT_DIR`, so that a plain `cargo build` always embeds
//! programs that match the source.
//!
//! The eBPF crate is compiled by a nested `cargo` for `bpfel-unknown-none` with
//! `-Z build-std=core` on the stable toolchain (`RUSTC_BOOTSTRAP=1`), linked by
//! `bpf-linker`. It also generates the gRPC code of Istio's CA API with
//! `protoc`. `cargo xtask setup` installs every prerequisite.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const BPF_TARGET: &str = "bpfel-unknown-none";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .parent()
        .expect("ztunnel/ lives in the workspace");
    let programs = workspace.join("ebpf/programs");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));

    for watched in [
        "ebpf/programs/src",
        "ebpf/programs/Cargo.toml",
        "ebpf/common/src",
        "ebpf/common/Cargo.toml",
    ] {
        println!(
            "cargo::rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }

    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!(
            "bpf-linker is not installed: it links the eBPF programs. \
             Run `cargo xtask setup` (it installs every build prerequisite)."
        );
    }

    // Its own target dir: the outer cargo holds the lock on the workspace's.
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("ebpf");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(&programs)
        .args([
            "build",
            "--release",
            "--target",
            BPF_TARGET,
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTC_BOOTSTRAP", "1");
    // The outer build's compiler settings (clippy's wrapper, host RUSTFLAGS, the
    // host target) must not leak into the eBPF build.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
    ] {
        build.env_remove(var);
    }
    let status = build.status().expect("cargo can be spawned");
    assert!(
        status.success(),
        "building the eBPF programs in {} failed",
        programs.display()
    );

    let object = target_dir.join(BPF_TARGET).join("release/ztunnel-ebpf");
    copy(&object, &out_dir.join("ztunnel-ebpf.o"));

    compile_protos(&manifest_dir);
}

/// Generates the gRPC code of Istio's CA API (needs `protoc`, installed by
/// `cargo xtask setup`).
fn compile_protos(manifest_dir: &Path) {
    let proto = manifest_dir.join("proto/ca.proto");
    println!("cargo::rerun-if-changed={}", proto.display());
    if let Err(err) =
        tonic_prost_build::configure().compile_protos(&[&proto], &[&manifest_dir.join("proto")])
    {
        panic!(
            "generating gRPC code from {}: {err} (is protoc installed? run `cargo xtask setup`)",
            proto.display()
        );
    }
}

fn copy(from: &Path, to: &Path) {
    if let Err(err) = std::fs::copy(from, to) {
        panic!(
            "copying the eBPF object {} to {}: {err}",
            from.display(),
            to.display()
        );
    }
}
