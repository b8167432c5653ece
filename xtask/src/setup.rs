//! `cargo xtask setup`: makes sure what building and running slammer needs is there.
//!
//! 1. rustup, the `nightly` toolchain and its `rust-src` (the eBPF crate builds `core` from source);
//! 2. `bpf-linker` in `<workspace>/.tools/bin`, built against nightly's own `libLLVM` (through the
//!    symlinks in `.tools/llvm/lib`, which its rpath points at), so it reads the bitcode nightly
//!    writes; `.tools/bpf-linker.stamp` records what it was built against;
//! 3. bpffs mounted at `/sys/fs/bpf` (slammer pins its maps and links there).
//!
//! Each step prints one line; a second run only checks, in a few seconds.

use std::{
    fs, io,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::workspace::{self, capture, stream};

const TOOLCHAIN: &str = "nightly";
const BPFFS: &str = "/sys/fs/bpf";

pub fn run() -> Result<()> {
    rustup()?;
    let nightly = nightly()?;
    rust_src()?;
    bpf_linker(&nightly)?;
    bpffs()
}

fn step(what: &str, state: &str) {
    eprintln!("setup: {what} ... {state}");
}

fn rustup_cmd() -> Command {
    Command::new("rustup")
}

fn rustup() -> Result<()> {
    let version = match rustup_cmd().arg("--version").output() {
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or("rustup")
            .to_owned(),
        Ok(output) => bail!(
            "`rustup --version` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => bail!(
            "rustup is not on PATH: slammer's eBPF crate needs the `{TOOLCHAIN}` toolchain \
             managed by rustup (https://rustup.rs)"
        ),
        Err(e) => return Err(e).context("cannot run `rustup --version`"),
    };
    step("rustup", &format!("present ({version})"));
    Ok(())
}

/// What xtask needs to know about the nightly toolchain.
struct Nightly {
    /// `libLLVM.so.<ver>-rust-<ver>-nightly` in the toolchain's `lib`.
    libllvm: PathBuf,
    /// `22.1.4`.
    llvm_version: String,
    /// `22`: selects bpf-linker's `llvm-22` feature.
    llvm_major: u32,
}

/// Whether `rustup toolchain list` names the plain `nightly` toolchain (not a dated one).
fn lists_nightly(list: &str) -> bool {
    list.lines()
        .filter_map(|line| line.split_whitespace().next())
        .any(|name| {
            name == TOOLCHAIN
                || name
                    .strip_prefix("nightly-")
                    .is_some_and(|host| !host.starts_with(|c: char| c.is_ascii_digit()))
        })
}

fn nightly() -> Result<Nightly> {
    let list = capture(rustup_cmd().args(["toolchain", "list"]))?;
    if lists_nightly(&list) {
        step("nightly toolchain", "present");
    } else {
        step("nightly toolchain", "missing, installing");
        // No self-update: changing the rustup binary is not this project's business.
        stream(rustup_cmd().args([
            "toolchain",
            "install",
            TOOLCHAIN,
            "--profile",
            "minimal",
            "--no-self-update",
        ]))
        .context("cannot install the nightly toolchain")?;
    }
    let verbose = capture(rustup_cmd().args(["run", TOOLCHAIN, "rustc", "-vV"]))?;
    let field = |key: &str| {
        verbose
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .map(|value| value.trim().to_owned())
    };
    let release = field("release:").unwrap_or_default();
    let llvm_version = field("LLVM version:")
        .context("`rustc +nightly -vV` reports no LLVM version (a rustc without LLVM?)")?;
    let llvm_major = llvm_version
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("cannot read the LLVM major version from {llvm_version:?}"))?;
    let sysroot = capture(rustup_cmd().args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"]))?;
    let libllvm = find_libllvm(Path::new(sysroot.trim()), &release)?;
    step(
        "nightly rustc",
        &format!("rustc {release}, LLVM {llvm_version}"),
    );
    Ok(Nightly {
        libllvm,
        llvm_version,
        llvm_major,
    })
}

/// Finds `<sysroot>/lib/libLLVM.so.*`, the shared LLVM that bpf-linker must link against.
fn find_libllvm(sysroot: &Path, release: &str) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    let mut found: Vec<PathBuf> = fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libLLVM.so."))
                && path.is_file()
        })
        .collect();
    if found.len() > 1 {
        // Prefer the one of this rustc release, e.g. libLLVM.so.22.1-rust-1.97.0-nightly.
        found.retain(|path| {
            path.to_string_lossy()
                .ends_with(&format!("-rust-{release}"))
        });
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "no libLLVM.so.* in {}: the nightly toolchain must ship LLVM as a shared library \
             for bpf-linker to link against (reinstall it: `rustup toolchain install nightly`)",
            lib.display()
        ),
        many => bail!(
            "several libLLVM.so.* in {}, cannot tell which one nightly uses: {many:?}",
            lib.display()
        ),
    }
}

fn rust_src() -> Result<()> {
    let installed =
        capture(rustup_cmd().args(["component", "list", "--toolchain", TOOLCHAIN, "--installed"]))?;
    if installed
        .lines()
        .any(|line| line.split_whitespace().next() == Some("rust-src"))
    {
        step("nightly rust-src", "present");
    } else {
        step("nightly rust-src", "missing, installing");
        stream(rustup_cmd().args(["component", "add", "rust-src", "--toolchain", TOOLCHAIN]))
            .context("cannot add rust-src to the nightly toolchain")?;
    }
    Ok(())
}

/// Paths of the project-local bpf-linker install.
struct Tools {
    root: PathBuf,
    llvm_lib: PathBuf,
    bin: PathBuf,
    stamp: PathBuf,
}

impl Tools {
    fn new() -> Self {
        let root = workspace::tools_dir();
        Self {
            llvm_lib: root.join("llvm").join("lib"),
            bin: root.join("bin").join("bpf-linker"),
            stamp: root.join("bpf-linker.stamp"),
            root,
        }
    }
}

/// The contents of `.tools/bpf-linker.stamp`: what the installed bpf-linker was built against.
fn stamp(nightly: &Nightly, linker_version: &str) -> String {
    format!(
        "libllvm={}\nllvm={}\nbpf-linker={linker_version}\n",
        nightly.libllvm.display(),
        nightly.llvm_version
    )
}

/// The two symlinks in `.tools/llvm/lib` (`libLLVM.so` and the soname), both to nightly's libLLVM.
fn symlink_names(nightly: &Nightly) -> [PathBuf; 2] {
    let soname = nightly
        .libllvm
        .file_name()
        .expect("libLLVM path has a file name");
    [PathBuf::from("libLLVM.so"), PathBuf::from(soname)]
}

fn symlinks_match(tools: &Tools, nightly: &Nightly) -> bool {
    symlink_names(nightly).iter().all(|name| {
        fs::read_link(tools.llvm_lib.join(name)).is_ok_and(|target| target == nightly.libllvm)
    })
}

/// `bpf-linker --version` of the installed binary, if it runs (it fails when its libLLVM is gone).
fn installed_version(tools: &Tools) -> Option<String> {
    let output = Command::new(&tools.bin).arg("--version").output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .filter(|version| !version.is_empty())
}

fn bpf_linker(nightly: &Nightly) -> Result<()> {
    const WHAT: &str = "bpf-linker";
    let tools = Tools::new();
    let version = installed_version(&tools);
    let links_ok = symlinks_match(&tools, nightly);
    let reason = match (&version, fs::read_to_string(&tools.stamp)) {
        (None, _) if tools.bin.exists() => "does not run".to_owned(),
        (None, _) => "missing".to_owned(),
        (Some(_), _) if !links_ok => format!(
            ".tools/llvm/lib does not point at {}",
            nightly.libllvm.display()
        ),
        (Some(version), Ok(recorded)) => {
            if recorded == stamp(nightly, version) {
                step(
                    WHAT,
                    &format!("present ({version}, LLVM {})", nightly.llvm_version),
                );
                return Ok(());
            }
            "built against another LLVM or version (stamp differs)".to_owned()
        }
        (Some(version), Err(e)) if e.kind() == io::ErrorKind::NotFound => {
            // A build made by hand the same way, before stamps existed: adopt it.
            write_stamp(&tools, &stamp(nightly, version))?;
            step(
                WHAT,
                &format!(
                    "present ({version}, LLVM {}; existing build adopted, stamp written)",
                    nightly.llvm_version
                ),
            );
            return Ok(());
        }
        (Some(_), Err(e)) => {
            return Err(e).with_context(|| format!("cannot read {}", tools.stamp.display()));
        }
    };
    step(
        WHAT,
        &format!(
            "{reason}: building against {} (takes a few minutes)",
            nightly.libllvm.display()
        ),
    );
    build_bpf_linker(&tools, nightly)
}

fn build_bpf_linker(tools: &Tools, nightly: &Nightly) -> Result<()> {
    // An interrupted build must not pass for a good one: a stamp that matches nothing.
    write_stamp(tools, "incomplete build\n")?;
    fs::create_dir_all(&tools.llvm_lib)
        .with_context(|| format!("cannot create {}", tools.llvm_lib.display()))?;
    // Links to an older nightly's libLLVM (another soname) are stale now.
    for entry in fs::read_dir(&tools.llvm_lib)
        .with_context(|| format!("cannot list {}", tools.llvm_lib.display()))?
    {
        let path = entry?.path();
        if path.is_symlink() {
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    for name in symlink_names(nightly) {
        let link = tools.llvm_lib.join(name);
        symlink(&nightly.libllvm, &link).with_context(|| {
            format!(
                "cannot link {} -> {}",
                link.display(),
                nightly.libllvm.display()
            )
        })?;
    }
    let mut cargo = workspace::cargo()?;
    cargo
        .arg("install")
        .arg("--root")
        .arg(&tools.root)
        .args(["bpf-linker", "--locked", "--force", "--no-default-features"])
        .args(["--features", &format!("llvm-{}", nightly.llvm_major)])
        .env(
            "LLVM_PREFIX",
            tools.llvm_lib.parent().expect("llvm/lib has a parent"),
        );
    stream(&mut cargo).with_context(|| {
        format!(
            "cannot build bpf-linker against nightly's LLVM {} (does bpf-linker have an \
             llvm-{} feature yet?)",
            nightly.llvm_version, nightly.llvm_major
        )
    })?;
    let version = installed_version(tools).with_context(|| {
        format!(
            "{} was built but `--version` fails to run",
            tools.bin.display()
        )
    })?;
    write_stamp(tools, &stamp(nightly, &version))?;
    step(
        "bpf-linker",
        &format!("built ({version}, LLVM {})", nightly.llvm_version),
    );
    Ok(())
}

fn write_stamp(tools: &Tools, contents: &str) -> Result<()> {
    fs::create_dir_all(&tools.root)
        .with_context(|| format!("cannot create {}", tools.root.display()))?;
    let tmp = tools.stamp.with_extension("stamp.tmp");
    fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, &tools.stamp).with_context(|| {
        format!(
            "cannot rename {} to {}",
            tmp.display(),
            tools.stamp.display()
        )
    })
}

fn bpffs_mounted() -> Result<bool> {
    let mounts =
        fs::read_to_string("/proc/self/mounts").context("cannot read /proc/self/mounts")?;
    Ok(mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    }))
}

fn bpffs() -> Result<()> {
    const WHAT: &str = "bpffs at /sys/fs/bpf";
    if bpffs_mounted()? {
        step(WHAT, "mounted");
    } else if workspace::is_root() {
        step(WHAT, "not mounted, mounting");
        fs::create_dir_all(BPFFS).with_context(|| format!("cannot create {BPFFS}"))?;
        stream(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
            .context("cannot mount bpffs")?;
    } else {
        step(
            WHAT,
            "NOT mounted; needs root: `sudo mount -t bpf bpf /sys/fs/bpf` (run and test mount it)",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::lists_nightly;

    #[test]
    fn finds_plain_nightly_only() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-x86_64-unknown-linux-gnu\n";
        assert!(lists_nightly(list));
        assert!(!lists_nightly(
            "stable-x86_64-unknown-linux-gnu (default)\nnightly-2024-01-01-x86_64-unknown-linux-gnu\n"
        ));
        assert!(!lists_nightly("no installed toolchains\n"));
    }
}
