#![no_std]
// The library target only exists so lockd-trace can name this crate as a build-dependency
// (cargo then rebuilds the eBPF object when it changes); the programs are in main.rs.
