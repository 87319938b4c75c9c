//! Rebuild when bpf-linker changes: building this crate depends on it, undeclared to cargo.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
