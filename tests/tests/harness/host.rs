//! Host fixtures for monitor tests: private tmpfs mounts (a device no other test sees, of a
//! chosen size, made read-only or writable again), a monitor on one, and the metrics endpoint
//! scraped.

use std::{
    ffi::CString,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
};

use super::Tracer;

/// A tmpfs of one test's own, unmounted (lazily) when dropped.
pub struct PrivateFs(PathBuf);

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

impl PrivateFs {
    pub fn mount(name: &str) -> PrivateFs {
        PrivateFs::mount_with(name, "")
    }

    /// With tmpfs options, e.g. "size=64k" or "ro".
    pub fn mount_with(name: &str, options: &str) -> PrivateFs {
        let dir =
            std::env::temp_dir().join(format!("lockd-trace-fs-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (target, opts) = (c(dir.to_str().unwrap()), c(options));
        // SAFETY: valid NUL-terminated strings.
        let r = unsafe {
            libc::mount(
                c("tmpfs").as_ptr(),
                target.as_ptr(),
                c("tmpfs").as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(r, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        PrivateFs(dir)
    }

    /// Remounts it read-only (`ro`) or writable.
    pub fn set_read_only(&self, ro: bool) {
        let flags = libc::MS_REMOUNT | if ro { libc::MS_RDONLY } else { 0 };
        let target = c(self.path());
        // SAFETY: valid NUL-terminated strings; no data argument.
        let r = unsafe {
            libc::mount(
                c("tmpfs").as_ptr(),
                target.as_ptr(),
                c("tmpfs").as_ptr(),
                flags,
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "remount: {}", std::io::Error::last_os_error());
    }

    /// An empty file in it.
    pub fn file(&self, name: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, b"").unwrap();
        p.to_string_lossy().into_owned()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    /// Fills it up with FILLER; returns its path (delete it to free the space).
    pub fn fill(&self) -> PathBuf {
        let p = self.0.join("FILLER");
        let mut f = std::fs::File::create(&p).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        p
    }
}

impl Drop for PrivateFs {
    fn drop(&mut self) {
        let target = c(self.path());
        // SAFETY: a valid path; lazy so that a late close cannot keep it busy.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A loopback address for this test process's endpoint number `n` (below 100). Kept under
/// the kernel's ephemeral range (32768 and up by default): a port there can already be the
/// local end of some connection (a scrape, a download), and the monitor then cannot listen.
pub fn port(n: u16) -> String {
    format!(
        "127.0.0.1:{}",
        20000 + (std::process::id() % 12000) as u16 + n
    )
}

/// One scrape of the metrics endpoint: the body of its 200 answer.
pub fn scrape(addr: &str) -> String {
    try_scrape(addr).unwrap_or_else(|e| panic!("scraping {addr}: {e}"))
}

/// One scrape, or why it got no 200 answer (the endpoint closes what it has no room for).
fn try_scrape(addr: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.0 200") => Ok(body.to_string()),
        _ => Err(format!("not a 200 answer: {out}")),
    }
}

/// The value of the sample `name{labels}` in a Prometheus text body (every line parsed).
pub fn sample(body: &str, series: &str) -> Option<u64> {
    let mut found = None;
    for l in body.lines().filter(|l| !l.starts_with('#')) {
        let (k, v) = l
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {l}"));
        let v: u64 = v.parse().unwrap_or_else(|_| panic!("bad value in {l}"));
        if k == series {
            found = Some(v);
        }
    }
    found
}

/// Scrapes until `series` satisfies `ok` (10 s at most); the last body.
pub fn scrape_until(addr: &str, series: &str, ok: impl Fn(Option<u64>) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // Refused while clients that just went away still hold its slots: asked again.
        let body = try_scrape(addr);
        if let Ok(body) = &body
            && ok(sample(body, series))
        {
            return body.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} never as expected:\n{body:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// `monitor --all-fs` on `data`'s filesystem, a wait reported after 1 s, metrics on `addr`,
/// plus `outputs`; returned once its metrics endpoint is up.
pub fn monitor(data: &PrivateFs, addr: &str, outputs: &[&str]) -> Tracer {
    let mut args = vec![
        "monitor",
        "--all-fs",
        "--mount",
        data.path(),
        "--blocked-after",
        "1s",
        "--metrics",
        addr,
    ];
    args.extend_from_slice(outputs);
    let mut t = Tracer::command(&args);
    t.wait_stderr("metrics on");
    t
}
