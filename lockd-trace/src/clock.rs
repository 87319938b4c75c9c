//! Kernel monotonic timestamps → wall-clock time (captured once when tracing starts).

use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock ns minus monotonic ns.
    offset_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; the clocks used always exist on Linux.
    unsafe { libc::clock_gettime(id, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl Clock {
    /// CLOCK_MONOTONIC and wall-clock ns, read together (recorded in trace headers).
    pub fn now_pair() -> (u64, i128) {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        (mono as u64, wall)
    }

    pub fn from_pair(mono_ns: u64, wall_ns: i128) -> Clock {
        Clock {
            offset_ns: wall_ns - i128::from(mono_ns),
        }
    }

    /// Unix-epoch nanoseconds of a monotonic timestamp.
    pub fn wall_ns(&self, mono_ns: u64) -> i128 {
        i128::from(mono_ns) + self.offset_ns
    }

    pub fn monotonic_now() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC) as u64
    }
}

/// Civil UTC date from Unix days (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// "2026-11-24T03:40:30.123456789Z"
pub fn rfc3339(epoch_ns: i128) -> String {
    let secs = epoch_ns.div_euclid(1_000_000_000) as i64;
    let nanos = epoch_ns.rem_euclid(1_000_000_000);
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// "03:40:30.123456" (UTC), for terminal lines.
pub fn hms_micros(epoch_ns: i128) -> String {
    let s = rfc3339(epoch_ns);
    s[11..26].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        // 2026-11-24T03:40:30.5Z
        let t = 1_795_491_630_i128 * 1_000_000_000 + 500_000_000;
        assert_eq!(rfc3339(t), "2026-11-24T03:40:30.500000000Z");
        assert_eq!(hms_micros(t), "03:40:30.500000");
        assert_eq!(
            rfc3339(951_782_400_i128 * 1_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn wall_time_tracks_system_clock() {
        let (mono, wall) = Clock::now_pair();
        let c = Clock::from_pair(mono, wall);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        let diff = (c.wall_ns(Clock::monotonic_now()) - now).abs();
        assert!(diff < 1_000_000_000, "off by {diff} ns");
    }
}
