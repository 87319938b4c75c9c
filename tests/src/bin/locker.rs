//! A process that makes the lock calls it is told to, one command per stdin line, and answers
//! each on stdout: "ok", "err ENAME", or for getlk "getlk unlck" / "getlk TYPE START LEN PID".
//!
//! Commands: open PATH | setlk|setlkw|ofd_setlk|ofd_setlkw T START LEN | getlk|ofd_getlk T
//! START LEN | flock sh|ex|un [nb] | lockf lock|tlock|ulock LEN | fork | exit  (T: r, w or u)
//! fork: a child that keeps the open file (and so its OFD and flock locks) until killed;
//! the answer is "ok CHILD_PID".
//! SIGUSR1 interrupts a blocked call (handler installed without SA_RESTART: EINTR).

use std::{
    ffi::CString,
    io::{self, BufRead as _, Write as _},
};

extern "C" fn on_usr1(_: libc::c_int) {}

fn errno_name(e: i32) -> String {
    match e {
        libc::EAGAIN => "EAGAIN".into(),
        libc::EDEADLK => "EDEADLK".into(),
        libc::EINTR => "EINTR".into(),
        libc::ENOLCK => "ENOLCK".into(),
        libc::EBADF => "EBADF".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EACCES => "EACCES".into(),
        e => format!("errno{e}"),
    }
}

fn result(rc: libc::c_int) -> String {
    if rc == 0 {
        "ok".into()
    } else {
        format!(
            "err {}",
            errno_name(io::Error::last_os_error().raw_os_error().unwrap_or(0))
        )
    }
}

fn lock_type(t: &str) -> i16 {
    (match t {
        "r" => libc::F_RDLCK,
        "w" => libc::F_WRLCK,
        _ => libc::F_UNLCK,
    }) as i16
}

fn flock_struct(args: &[&str]) -> libc::flock {
    // SAFETY: all-zero is a valid struct flock.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = lock_type(args[0]);
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = args[1].parse().expect("start");
    fl.l_len = args[2].parse().expect("len");
    fl
}

fn fcntl_lock(fd: i32, cmd: i32, args: &[&str]) -> String {
    let mut fl = flock_struct(args);
    // SAFETY: valid fd (or the kernel says EBADF) and a valid struct pointer.
    let rc = unsafe { libc::fcntl(fd, cmd, &mut fl) };
    if rc != 0 || (cmd != libc::F_GETLK && cmd != libc::F_OFD_GETLK) {
        return result(rc);
    }
    if fl.l_type == libc::F_UNLCK as i16 {
        return "getlk unlck".into();
    }
    let t = if fl.l_type == libc::F_WRLCK as i16 {
        "w"
    } else {
        "r"
    };
    format!("getlk {t} {} {} {}", fl.l_start, fl.l_len, fl.l_pid)
}

fn main() {
    // SAFETY: installing a no-op handler; no SA_RESTART so blocked lock calls return EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_usr1 as *const () as usize;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    let mut out = io::stdout();
    writeln!(out, "ready {}", std::process::id()).unwrap();
    let mut fd = -1;
    for line in io::stdin().lock().lines() {
        let line = line.expect("stdin");
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&cmd, args)) = words.split_first() else {
            continue;
        };
        let reply = match cmd {
            "open" => {
                let path = CString::new(args[0]).unwrap();
                // SAFETY: valid C string.
                fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o644) };
                if fd < 0 { result(-1) } else { "ok".into() }
            }
            "setlk" => fcntl_lock(fd, libc::F_SETLK, args),
            "setlkw" => fcntl_lock(fd, libc::F_SETLKW, args),
            "getlk" => fcntl_lock(fd, libc::F_GETLK, args),
            "ofd_setlk" => fcntl_lock(fd, libc::F_OFD_SETLK, args),
            "ofd_setlkw" => fcntl_lock(fd, libc::F_OFD_SETLKW, args),
            "ofd_getlk" => fcntl_lock(fd, libc::F_OFD_GETLK, args),
            "flock" => {
                let mut op = match args[0] {
                    "sh" => libc::LOCK_SH,
                    "ex" => libc::LOCK_EX,
                    _ => libc::LOCK_UN,
                };
                if args.get(1) == Some(&"nb") {
                    op |= libc::LOCK_NB;
                }
                // SAFETY: plain syscall.
                result(unsafe { libc::flock(fd, op) })
            }
            "lockf" => {
                let op = match args[0] {
                    "lock" => libc::F_LOCK,
                    "tlock" => libc::F_TLOCK,
                    _ => libc::F_ULOCK,
                };
                // SAFETY: plain libc call.
                result(unsafe { libc::lockf(fd, op, args[1].parse().expect("len")) })
            }
            "fork" => {
                // SAFETY: the child only sleeps in pause() until it is killed.
                match unsafe { libc::fork() } {
                    0 => loop {
                        // SAFETY: plain libc call.
                        unsafe { libc::pause() };
                    },
                    -1 => result(-1),
                    child => format!("ok {child}"),
                }
            }
            "exit" => break,
            other => format!("err unknown command {other}"),
        };
        writeln!(out, "{reply}").unwrap();
        out.flush().unwrap();
    }
}
