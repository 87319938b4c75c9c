//! statd's records (sm/, sm.bak/) as the agent saw them change: a peer left in sm.bak/ does
//! not answer this host's reboot notification; the locks it holds here are named.

use super::Histories;
use crate::{
    clock::hms_micros,
    event::{Event, StatdChange, StatdRecord},
    finding::{Finding, Kind},
    names,
};

pub(super) fn observe(h: &Histories, ev: &Event, s: &StatdRecord, out: &mut Vec<Finding>) {
    if s.change != StatdChange::Unanswered {
        return;
    }
    let mut f = Finding::new(
        Kind::HostNotAnswering,
        ev.ts_ns,
        (0, 0),
        None,
        0,
        "rpc.statd",
    );
    f.host = Some(s.host.clone());
    let since = hms_micros(h.clock.wall_ns(s.since_ns));
    let waited = ev.ts_ns.saturating_sub(s.since_ns) as f64 / 1e9;
    f.headline = format!(
        "statd has been telling {} of this host's reboot since {since} ({waited:.0} s) and it \
         does not answer",
        s.host
    );
    f.evidence.push(format!(
        "{}/{} is still there: sm-notify moves each monitored peer from sm/ to sm.bak/ at boot \
         and removes it once the peer acknowledges SM_NOTIFY; it retries for about 15 minutes",
        s.list, s.host
    ));
    let mut files: Vec<_> = h.files.values().collect();
    files.sort_by_key(|f| (f.dev, f.ino));
    let mut held = 0;
    for file in files {
        for x in file.nlm.held.iter().filter(|x| x.holder.is_peer(&s.host)) {
            held += 1;
            f.evidence.push(format!(
                "still held for it here: {} {} {} (svid {}) since {}",
                file.path.as_deref().unwrap_or("?"),
                names::lock_type_name(x.lock_type),
                names::range(x.start, x.end),
                x.holder.svid.map_or("?".into(), |s| s.to_string()),
                hms_micros(h.clock.wall_ns(x.since_ns))
            ));
        }
    }
    f.evidence.push(if held == 0 {
        "no lock for it was seen in this trace".into()
    } else {
        format!(
            "if {} is gone for good, release its {held} lock(s) on the server (`echo \
             EXPORT_PATH > /proc/fs/nfsd/unlock_filesystem` releases every client's locks on \
             that export) and remove the sm.bak entry",
            s.host
        )
    });
    f.evidence.push(format!(
        "check: ping/rpcinfo -p {0}; is it still a client (showmount -a)? was it renamed or \
         readdressed?",
        s.host
    ));
    out.push(f);
}
