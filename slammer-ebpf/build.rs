//! Rebuild the programs when bpf-linker changes: it is a link-time dependency cargo cannot see.
use which::which;

fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
