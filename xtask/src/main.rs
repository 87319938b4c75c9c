//! `cargo xtask`: the project's commands. Each installs what it needs first (see setup.rs).

mod bench;
mod fuzz;
mod lab;
mod package;
mod run;
mod setup;
mod sh;
mod test;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, run and test lockd-trace; installs missing tools on the way")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: nightly rust-src, LLVM 22, bpf-linker (and with --lab, qemu etc.).
    Setup {
        #[arg(long)]
        lab: bool,
    },
    /// Build lockd-trace in release mode, eBPF object included.
    Build,
    /// Set up, build, and run lockd-trace with ARGS (default: `live`).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run every test: unit, host-kernel integration, and the NFS lab.
    Test {
        /// Skip the NFS lab (for quick local iterations; CI never passes this).
        #[arg(long)]
        no_lab: bool,
    },
    /// Fuzz the trace-file reader (cargo-fuzz) for a bounded time and print the run count.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Build the Debian package (target/debian/): binary, systemd unit, man pages,
    /// completions, alert rules, docs.
    Package,
    /// The NFS lab: Debian kernels with lockd, nfsd and statd in qemu.
    Lab(lab::LabArgs),
    /// Measure lockd-trace's overhead and capacity; writes docs/PERFORMANCE.md (--smoke:
    /// target/bench/PERFORMANCE.md). Exits non-zero if a section could not be measured.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup { lab } => setup::toolchain().and_then(|()| {
            if lab {
                setup::apt(setup::LAB_PACKAGES)
            } else {
                Ok(())
            }
        }),
        Cmd::Build => setup::toolchain().and_then(|()| workspace::release()),
        Cmd::Run { args } => run::run(args),
        Cmd::Test { no_lab } => test::test(!no_lab),
        Cmd::Fuzz { seconds } => fuzz::run(seconds),
        Cmd::Package => package::package().map(drop),
        Cmd::Lab(args) => lab::run(args),
        Cmd::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
