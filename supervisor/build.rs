//! Builds the eBPF egress wall (`ebpf/`, crate `tollgate-ebpf`) into `OUT_DIR/tollgate-egress`.
//!
//! aya-build runs `cargo build -Z build-std=core --target bpfel-unknown-none` with the pinned
//! nightly (rust-src + bpf-linker 0.10 must be installed: `scripts/bootstrap.sh`), in its own
//! target dir under `OUT_DIR`. `sandbox::bpf` embeds the object with `include_bytes_aligned!`.
//! `AYA_BUILD_SKIP=1` skips the build (an empty object is written so the crate still compiles;
//! loading the wall then fails with a clear error).

use std::{env, fs, path::PathBuf, process::ExitCode};

/// The nightly that bpf-linker 0.10 (LLVM 22) works with; see scripts/bootstrap.sh.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";
const EBPF_PACKAGE: &str = "tollgate-ebpf";
const EBPF_OBJECT: &str = "tollgate-egress";

fn main() -> ExitCode {
    match build() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!(
                "error: building the eBPF programs ({EBPF_PACKAGE}) failed: {err:#}\n\
                 hint: they need Rust {EBPF_TOOLCHAIN} with rust-src and bpf-linker 0.10.0 \
                 (run scripts/bootstrap.sh as root), or set AYA_BUILD_SKIP=1 to build without them"
            );
            ExitCode::FAILURE
        }
    }
}

fn build() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .ok_or("supervisor/ has no parent directory")?;
    let ebpf_dir = workspace.join("ebpf");
    let common_dir = workspace.join("ebpf-common");
    // aya-build watches the package's own directory; the shared record lives next door.
    println!("cargo:rerun-if-changed={}", common_dir.display());

    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out_dir = PathBuf::from(env::var("OUT_DIR")?);
        let object = out_dir.join(EBPF_OBJECT);
        if !object.exists() {
            fs::write(&object, [])?;
        }
    }
    let root_dir = ebpf_dir.to_str().ok_or("the ebpf/ path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: EBPF_PACKAGE,
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )?;
    Ok(())
}
