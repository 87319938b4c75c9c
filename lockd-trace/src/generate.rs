//! Man pages and shell completions, generated from the command line's own definitions (cli.rs)
//! so they cannot drift from it: `lockd-trace man-pages DIR`, `lockd-trace completions SHELL`.

use std::{
    fs,
    io::{self, Write as _},
    path::Path,
};

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;
use clap_complete::Shell;
use clap_mangen::Man;

use crate::cli::Cli;

/// Section 8: system administration commands (tracing needs root).
const SECTION: &str = "8";

/// Writes lockd-trace.8 and one lockd-trace-SUBCOMMAND.8 per subcommand into `dir`.
pub fn man_pages(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let pages = std::iter::once(cmd.clone()).chain(cmd.get_subcommands().cloned());
    for page in pages {
        let man = Man::new(page)
            .section(SECTION)
            .manual("lockd-trace manual")
            .source(concat!("lockd-trace ", env!("CARGO_PKG_VERSION")));
        let path = man
            .generate_to(dir)
            .with_context(|| format!("cannot write a man page into {}", dir.display()))?;
        crate::say!("lockd-trace: wrote {}", path.display());
    }
    Ok(())
}

/// The completion script for `shell` on stdout.
pub fn completions(shell: Shell) -> Result<()> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "lockd-trace", &mut script);
    let mut script = String::from_utf8_lossy(&script).into_owned();
    if shell == Shell::Bash {
        // clap_complete spells a hyphenated bin name two ways (clap-rs/clap#6421): the loop
        // that finds the subcommand says lockd__trace__subcmd__monitor, the arms that list
        // its flags lockd__subcmd__trace__subcmd__monitor, so no flag after a subcommand
        // would complete. The arms are given the loop's spelling (tests/tests/cli.rs).
        script = script.replace("lockd__subcmd__trace", "lockd__trace");
    }
    io::stdout().lock().write_all(script.as_bytes())?;
    Ok(())
}
