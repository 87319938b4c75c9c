//! Kernel log lines as people paste them → (timestamp, message). Accepted: the bare message;
//! dmesg (`[ 1234.567890] msg`), dmesg -T (`[Tue Nov 24 03:40:30 2026] msg`); /dev/kmsg
//! records (`6,1234,5678901,-;msg`, monotonic µs); syslog/journal lines
//! (`Nov 24 03:40:30 host kernel: msg`, optionally with a dmesg stamp after `kernel:`).

/// When the line says the message was logged.
#[derive(Clone, Debug, PartialEq)]
pub enum Stamp {
    /// Seconds since boot (dmesg, or /dev/kmsg's µs converted).
    Boot(f64),
    /// Wall-clock text as printed (dmesg -T, syslog).
    Wall(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct LogLine<'a> {
    pub stamp: Option<Stamp>,
    pub message: &'a str,
}

pub fn split(line: &str) -> LogLine<'_> {
    let line = line.trim_end_matches(['\r', '\n']);
    if let Some(l) = kmsg(line) {
        return l;
    }
    let (wall, rest) = syslog_prefix(line);
    let rest = rest.trim_start();
    if let Some(inner) = rest.strip_prefix('[')
        && let Some((stamp, msg)) = inner.split_once(']')
    {
        let stamp = stamp.trim();
        let parsed = stamp
            .parse::<f64>()
            .map(Stamp::Boot)
            .unwrap_or_else(|_| Stamp::Wall(stamp.to_string()));
        return LogLine {
            stamp: Some(parsed),
            message: msg.trim_start(),
        };
    }
    LogLine {
        stamp: wall.map(Stamp::Wall),
        message: rest,
    }
}

/// "6,1234,5678901,-;msg": priority, sequence, µs since boot, flags.
fn kmsg(line: &str) -> Option<LogLine<'_>> {
    let (head, msg) = line.split_once(';')?;
    let mut f = head.split(',');
    let (_prio, _seq, usec) = (
        f.next()?.parse::<u32>().ok()?,
        f.next()?.parse::<u64>().ok()?,
        f.next()?.parse::<u64>().ok()?,
    );
    Some(LogLine {
        stamp: Some(Stamp::Boot(usec as f64 / 1e6)),
        message: msg,
    })
}

/// "Nov 24 03:40:30 host kernel: rest" → (Some("Nov 24 03:40:30"), "rest"); also ISO-dated
/// journal lines ("2026-11-24T03:40:30+0000 host kernel: rest").
fn syslog_prefix(line: &str) -> (Option<String>, &str) {
    let Some(pos) = line.find(" kernel: ") else {
        return (None, line);
    };
    let head = &line[..pos];
    let rest = &line[pos + " kernel: ".len()..];
    // Drop the host name (last word before "kernel:").
    let wall = head.rsplit_once(' ').map_or(head, |(w, _host)| w);
    (Some(wall.to_string()), rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &str = "lockd: unexpected unlock status: 7";

    #[test]
    fn formats() {
        assert_eq!(
            split(MSG),
            LogLine {
                stamp: None,
                message: MSG
            }
        );
        let d = split("[ 1234.567890] lockd: unexpected unlock status: 7");
        assert_eq!((d.stamp, d.message), (Some(Stamp::Boot(1234.56789)), MSG));
        let t = split("[Tue Nov 24 03:40:30 2026] lockd: unexpected unlock status: 7");
        assert_eq!(
            t.stamp,
            Some(Stamp::Wall("Tue Nov 24 03:40:30 2026".into()))
        );
        assert_eq!(t.message, MSG);
        let k = split("4,1234,5678901,-;lockd: unexpected unlock status: 7");
        assert_eq!((k.stamp, k.message), (Some(Stamp::Boot(5.678901)), MSG));
        let s = split("Nov 24 03:40:30 nfsclient kernel: lockd: unexpected unlock status: 7");
        assert_eq!(
            (s.stamp, s.message),
            (Some(Stamp::Wall("Nov 24 03:40:30".into())), MSG)
        );
        let j = split("Nov 24 03:40:30 c1 kernel: [   12.5] lockd: unexpected unlock status: 7");
        assert_eq!((j.stamp, j.message), (Some(Stamp::Boot(12.5)), MSG));
    }
}
