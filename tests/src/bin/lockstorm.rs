//! The benchmark's lock-storm driver (`cargo xtask bench`): fcntl F_SETLK F_WRLCK then
//! F_SETLK F_UNLCK on one open fd, as fast as it can or paced to a rate, and one JSON line on
//! stdout: {"ops":N,"seconds":S,"ops_per_s":R,"threads":T,"errors":E}. An op is one fcntl
//! call (a lock or an unlock), i.e. one posix_lock_inode event in the kernel.
//!
//! lockstorm --seconds S --file PATH [--rate OPS_PER_S] [--threads T]
//! lockstorm --files N --dir DIR     (lock and unlock once each of N distinct new files)
//!
//! With --threads T > 1 thread i uses PATH.i: POSIX locks belong to the process, so threads
//! on one file would only contend for the inode's spinlock, which is not what is measured.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

#[derive(Default)]
struct Args {
    seconds: f64,
    file: Option<PathBuf>,
    rate: Option<f64>,
    threads: usize,
    files: Option<u64>,
    dir: Option<PathBuf>,
}

const USAGE: &str = "usage: lockstorm --seconds S --file PATH [--rate OPS_PER_S] [--threads T] \
                     | lockstorm --files N --dir DIR";

fn parse() -> Result<Args, String> {
    let mut a = Args {
        threads: 1,
        ..Args::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--seconds" => a.seconds = value.parse().map_err(|e| bad(&e))?,
            "--file" => a.file = Some(value.into()),
            "--rate" => a.rate = Some(value.parse().map_err(|e| bad(&e))?),
            "--threads" => a.threads = value.parse().map_err(|e| bad(&e))?,
            "--files" => a.files = Some(value.parse().map_err(|e| bad(&e))?),
            "--dir" => a.dir = Some(value.into()),
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    if a.threads == 0 || a.rate.is_some_and(|r| !r.is_finite() || r <= 0.0) {
        return Err("--threads and --rate must be positive".into());
    }
    if !a.seconds.is_finite() || a.seconds < 0.0 || a.seconds > 1e9 {
        return Err("--seconds must be between 0 and 1e9".into());
    }
    Ok(a)
}

fn open(path: &Path) -> Result<i32, String> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: a valid C string; the fd is closed by the caller.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o600) };
    if fd < 0 {
        return Err(format!(
            "open {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(fd)
}

/// One F_SETLK of the whole file; false when the kernel refused it.
fn setlk(fd: i32, lock_type: i32) -> bool {
    // SAFETY: all-zero is a valid struct flock.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = lock_type as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    // SAFETY: fd is open; fl lives across the call.
    unsafe { libc::fcntl(fd, libc::F_SETLK, &mut fl) == 0 }
}

/// Locks and unlocks until `seconds` pass, paced to `rate` ops/s if given; (ops, errors).
fn storm(path: &Path, seconds: f64, rate: Option<f64>) -> Result<(u64, u64), String> {
    let fd = open(path)?;
    let start = Instant::now();
    let end = Duration::from_secs_f64(seconds);
    let (mut ops, mut errors) = (0u64, 0u64);
    loop {
        // Checking the clock every 128 pairs keeps it out of the measured cost.
        for _ in 0..128 {
            errors += u64::from(!setlk(fd, libc::F_WRLCK)) + u64::from(!setlk(fd, libc::F_UNLCK));
        }
        ops += 256;
        let elapsed = start.elapsed();
        if elapsed >= end {
            break;
        }
        if let Some(r) = rate {
            let due = Duration::from_secs_f64(ops as f64 / r);
            if due > elapsed {
                std::thread::sleep((due - elapsed).min(end - elapsed));
            }
        }
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    Ok((ops, errors))
}

/// Each of `n` new files in `dir` opened, locked, unlocked and closed once.
fn distinct_files(dir: &Path, n: u64) -> Result<(u64, u64), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut errors = 0;
    for i in 0..n {
        let fd = open(&dir.join(format!("f{i}")))?;
        errors += u64::from(!setlk(fd, libc::F_WRLCK)) + u64::from(!setlk(fd, libc::F_UNLCK));
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
    }
    Ok((2 * n, errors))
}

fn run(a: &Args) -> Result<(u64, u64), String> {
    if let (Some(n), Some(dir)) = (a.files, &a.dir) {
        return distinct_files(dir, n);
    }
    let file = a.file.as_ref().ok_or(USAGE)?;
    if a.threads == 1 {
        return storm(file, a.seconds, a.rate);
    }
    let per_thread = a.rate.map(|r| r / a.threads as f64);
    let results: Vec<Result<(u64, u64), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..a.threads)
            .map(|i| {
                let path = PathBuf::from(format!("{}.{i}", file.display()));
                s.spawn(move || storm(&path, a.seconds, per_thread))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a thread panicked".into())))
            .collect()
    });
    results.into_iter().try_fold((0, 0), |(o, e), r| {
        let (o2, e2) = r?;
        Ok((o + o2, e + e2))
    })
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("lockstorm: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    match run(&args) {
        Ok((ops, errors)) => {
            let seconds = start.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({
                    "ops": ops,
                    "seconds": seconds,
                    "ops_per_s": ops as f64 / seconds,
                    "threads": args.threads,
                    "errors": errors,
                })
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lockstorm: {e}");
            ExitCode::FAILURE
        }
    }
}
