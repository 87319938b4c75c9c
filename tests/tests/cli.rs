//! The command line's behaviour on bad input and without privileges.

mod harness;

use std::{os::unix::process::CommandExt as _, process::Command};

use harness::{Scratch, require_root, tracer_bin};

fn run(args: &[&str], uid: Option<u32>) -> (i32, String, String) {
    // Unprivileged runs use a copy of the binary that `nobody` can reach.
    let public = uid.map(|_| Scratch::public("cli"));
    let mut cmd = Command::new(public.as_ref().map_or_else(tracer_bin, Scratch::bin));
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    cmd.args(args);
    let out = cmd.output().expect("run lockd-trace");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_flag_is_one_clear_error() {
    require_root();
    let (code, _, err) = run(&["live", "--frobnicate"], None);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("error: unexpected argument '--frobnicate'"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_values_are_rejected_with_the_reason() {
    require_root();
    let (code, _, err) = run(&["live", "-d", "5 parsecs"], None);
    assert_eq!(code, 2);
    assert!(err.contains("unknown unit"), "{err}");
    let (code, _, err) = run(&["live", "--probe-method", "nope=tp_btf"], None);
    assert_eq!(code, 2);
    assert!(err.contains("unknown probe `nope`"), "{err}");
    let (code, _, err) = run(&["monitor", "--skip-probe", "fcntl_exit,nope"], None);
    assert_eq!(code, 2);
    assert!(err.contains("unknown probe `nope`"), "{err}");
}

#[test]
fn without_privileges_it_says_to_use_root() {
    require_root();
    let (code, out, err) = run(&["live"], Some(65534));
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "one sentence: {err}");
    assert!(err.contains("needs root"), "{err}");
}

#[test]
fn probes_table_shows_this_kernel() {
    require_root();
    let (code, out, err) = run(&["probes"], None);
    assert_eq!(code, 0, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("posix_lock_inode"))
        .unwrap_or_else(|| panic!("no row: {out}"));
    assert!(row.contains("tp_btf"), "{row}");
    let (code, out, _) = run(&["probes", "--json"], None);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = v.as_array().unwrap();
    let row = |name: &str| rows.iter().find(|r| r["probe"] == name).unwrap();
    assert_eq!(row("posix_lock_inode")["attached"]["method"], "tp_btf");
    // The fcntl syscall hooks stay out unless --all-hooks asks for them.
    let out_by_default = &row("fcntl_exit")["refused"][0]["reason"];
    assert!(
        out_by_default
            .as_str()
            .unwrap()
            .contains("--all-hooks keeps it"),
        "{out_by_default}"
    );
    // This host kernel has no kprobes: the NLM probes say so rather than pretend.
    let nlm = row("nlmclnt_proc");
    assert!(nlm["attached"].is_null(), "{nlm}");
    let reason = nlm["refused"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("no kprobes"), "{nlm}");
    // --skip-probe leaves a probe out and says so; the others attach as before.
    let (code, out, _) = run(
        &[
            "probes",
            "--json",
            "--all-hooks",
            "--skip-probe",
            "fcntl_exit",
        ],
        None,
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = v.as_array().unwrap();
    let row = |name: &str| rows.iter().find(|r| r["probe"] == name).unwrap();
    assert!(row("fcntl_exit")["attached"].is_null());
    assert_eq!(
        row("fcntl_exit")["refused"][0]["reason"],
        "skipped (--skip-probe)"
    );
    assert_eq!(row("fcntl_enter")["attached"]["method"], "tracepoint");
}

#[test]
fn probes_monitor_says_which_monitor_runs_here() {
    require_root();
    // Outside the monitor the contention kprobes are left out, for the lock hooks.
    let (code, out, err) = run(&["probes"], None);
    assert_eq!(code, 0, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("locks_insert_block"))
        .unwrap_or_else(|| panic!("no row: {out}"));
    assert!(row.contains("only the NFS-only monitor uses it"), "{row}");
    assert!(out.contains("`lockd-trace probes --monitor`"), "{out}");
    // The monitor's plan: no kprobes on this host, so the generic lock hooks, and why.
    let (code, out, err) = run(&["probes", "--monitor"], None);
    assert_eq!(code, 0, "{err}");
    let row = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row: {out}"))
            .to_string()
    };
    assert!(row("locks_insert_block").contains("no kprobes"));
    assert!(row("posix_lock_inode").contains("tp_btf"));
    let said = out
        .lines()
        .find(|l| l.starts_with("generic monitor: "))
        .unwrap_or_else(|| panic!("no mode line: {out}"));
    assert!(said.contains("no kprobes"), "{said}");
}

#[test]
fn duration_stops_live() {
    require_root();
    let start = std::time::Instant::now();
    let (code, _, err) = run(&["live", "-d", "1s"], None);
    assert_eq!(code, 0, "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
    assert!(err.contains("events received"), "{err}");
}

/// What bash's completion offers for the words typed so far (the last one being completed),
/// through the script `lockd-trace completions bash` prints, run the way bash runs it.
fn bash_completes(words: &[&str]) -> Vec<String> {
    let script = format!(
        r#"source <("$BIN" completions bash) || exit 1
fn=$(complete -p lockd-trace | sed -n 's/.*-F \([^ ]*\).*/\1/p')
[ -n "$fn" ] || {{ echo "no completion function for lockd-trace" >&2; exit 1; }}
COMP_WORDS=({words}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="${{COMP_WORDS[*]}}"; COMP_POINT=${{#COMP_LINE}}
"$fn" lockd-trace "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
        words = words.join(" ")
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .env("BIN", tracer_bin())
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_subcommands_and_their_flags() {
    assert_eq!(bash_completes(&["lockd-trace", "mon"]), ["monitor"]);
    assert_eq!(
        bash_completes(&["lockd-trace", "monitor", "--metr"]),
        ["--metrics"]
    );
    // A flag of another subcommand is not offered.
    assert!(bash_completes(&["lockd-trace", "analyze", "--metr"]).is_empty());
}

#[test]
fn zsh_and_fish_completions_name_the_subcommands() {
    for (shell, head) in [
        ("zsh", "#compdef lockd-trace"),
        ("fish", "complete -c lockd-trace"),
    ] {
        let out = Command::new(tracer_bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(head),
            "{shell}: {text}"
        );
        assert!(
            text.contains("monitor") && text.contains("metrics"),
            "{shell}: {text}"
        );
    }
}

#[test]
fn man_pages_cover_every_subcommand_and_its_options() {
    let dir = Scratch::new("man");
    let pages = dir.path().join("man8");
    let out = Command::new(tracer_bin())
        .arg("man-pages")
        .arg(&pages)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let help = Command::new(tracer_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    // Every subcommand --help lists has its page.
    let subcommands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(subcommands.contains(&"monitor"), "{help}");
    for sub in &subcommands {
        let page = pages.join(format!("lockd-trace-{sub}.8"));
        let text = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{page:?}: {e}"));
        assert!(text.contains(".TH lockd-trace-"), "{page:?}");
    }
    let monitor = std::fs::read_to_string(pages.join("lockd-trace-monitor.8")).unwrap();
    assert!(monitor.contains("\\-\\-metrics"), "{monitor}");
    // man itself renders it.
    let man = Command::new("man")
        .arg("-l")
        .arg(pages.join("lockd-trace.8"))
        .env("MANPAGER", "cat")
        // ASCII hyphens in the rendered names.
        .env("LC_ALL", "C")
        .output()
        .expect("run man");
    let shown = String::from_utf8_lossy(&man.stdout);
    assert!(
        man.status.success() && shown.contains("lockd-trace-monitor(8)"),
        "{:?} {}{shown}",
        man.status,
        String::from_utf8_lossy(&man.stderr)
    );
}
