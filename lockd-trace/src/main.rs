//! The lockd-trace command: parses the command line and runs one command (see lib.rs).

use std::process::ExitCode;

use clap::Parser as _;
use lockd_trace::{
    analyze,
    cli::{Cli, Command},
    explain, export, generate, live, locks, merge, probes_cmd,
};

fn main() -> ExitCode {
    standard_fds();
    let cli = Cli::parse();
    init_log(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Live(args) => live::live(args).await,
            Command::Record(args) => live::record(args).await,
            Command::Monitor(args) => live::monitor(args).await,
            Command::Analyze(args) => analyze::analyze(&args),
            Command::History(args) => analyze::history(&args),
            Command::Export(args) => export::export(&args),
            Command::Merge(args) => merge::merge(&args),
            Command::Locks(args) => locks::run(args).await,
            Command::Probes(args) => probes_cmd::run(&args),
            Command::Explain(args) => explain::run(&args),
            Command::Completions(args) => generate::completions(args.shell),
            Command::ManPages(args) => generate::man_pages(&args.dir),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): done, as any filter would be.
        Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Started with standard input, output or error closed (a careless daemon wrapper), the next
/// file opened would take that number and findings would be written into it: /dev/null
/// stands in for each closed one.
fn standard_fds() {
    for fd in 0..=2 {
        // SAFETY: F_GETFD only asks whether the descriptor is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: a NUL-terminated path; open returns the lowest free number, this one.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// One sentence (the error and its causes on one line), non-zero exit.
fn fail(e: &anyhow::Error) -> ExitCode {
    lockd_trace::say!("lockd-trace: error: {e:#}");
    ExitCode::FAILURE
}

/// A minimal stderr logger for the agent's and the kernel programs' (aya-log) diagnostics.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            lockd_trace::say!(
                "lockd-trace: {}: {}",
                r.level().as_str().to_lowercase(),
                r.args()
            );
        }
    }
    fn flush(&self) {}
}

fn init_log(verbose: u8) {
    static LOGGER: StderrLog = StderrLog;
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(match verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    });
}
