//! Builds the kernel programs (`slammer-ebpf`) with the nightly toolchain and bpf-linker, so the
//! `slammer` binary embeds them. `AYA_BUILD_SKIP=1` skips this for host-only checks.
use std::{env, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?;
    // `cargo xtask setup` installs bpf-linker here; prefer it over whatever else is on PATH.
    let tools = workspace.join(".tools/bin");
    if tools.join("bpf-linker").exists() {
        let path = env::var_os("PATH").unwrap_or_default();
        let joined = env::join_paths(std::iter::once(tools).chain(env::split_paths(&path)))?;
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { env::set_var("PATH", joined) };
    }
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("slammer-common/src").display()
    );
    let ebpf = workspace.join("slammer-ebpf");
    let ebpf = ebpf
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "slammer-ebpf",
            root_dir: ebpf,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("building the eBPF programs (run `cargo xtask setup` for the toolchain)")
}
