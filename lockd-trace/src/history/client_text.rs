//! The texts of the NLM client's findings that need the most of the histories: a lock the
//! server granted and the local VFS refused (out of sync), and an unlock the server answered
//! with an error (unexpected unlock status). client.rs decides when; these say what happened,
//! from the request, both lock tables and what the server side recorded.

use lockd_trace_common::nlm::status;

use super::{Histories, client::Request};
use crate::{
    clock::hms_micros,
    event::Lock,
    finding::{Finding, Kind, Range, errno_text, held_text, status_text},
    held::Held,
    names,
};

pub(super) fn out_of_sync(
    h: &mut Histories,
    r: &Request,
    ts: u64,
    vfs_ret: i32,
    blocker: Option<Lock>,
    app: i32,
) -> Finding {
    let clock = h.clock;
    let t = |ns| hms_micros(clock.wall_ns(ns));
    let file = h.files.get(&r.file);
    let path = file.and_then(|f| f.path_owned());
    let mut f = r.finding(Kind::OutOfSync, ts, path);
    f.nlm_status = Some(status::GRANTED);
    f.errno = Some(vfs_ret);
    f.app_result = Some(app);
    let (granted, via) = r.granted.unwrap_or((ts, ""));
    f.granted_ns = Some(granted);
    f.evidence.push(format!(
        "{} (pid {}) asked for {} with {} at {}; server {} granted it {via} at {} (svid {})",
        r.comm,
        r.pid,
        r.range().text(),
        names::fcntl_cmd_name(r.cmd),
        t(r.ts_ns),
        r.host,
        t(granted),
        r.svid.map_or("?".into(), |s| s.to_string()),
    ));
    let why = match -vfs_ret {
        512 | 4 => " — a signal interrupted its wait for the conflicting local lock",
        35 => " — taking it would deadlock with a local lock",
        37 | 12 => " — the kernel ran out of lock resources",
        _ => "",
    };
    f.evidence.push(format!(
        "the final local lock (do_vfs_lock) returned {}{why}",
        errno_text(vfs_ret)
    ));
    let held = blocker.map(|b| {
        file.and_then(|fh| {
            fh.local
                .held
                .iter()
                .find(|x| x.holder.owner == b.owner && x.overlaps(b.start, b.end))
                .cloned()
        })
        .unwrap_or_else(|| Held::described(&b, ts))
    });
    let mut headline_blocker = String::new();
    if let Some(b) = &held {
        f.evidence
            .push(format!("in the way locally: {}", held_text(b, &clock)));
        headline_blocker = format!(
            " behind {} (pid {})'s {}",
            if b.holder.comm.is_empty() {
                "pid"
            } else {
                &b.holder.comm
            },
            b.holder.pid,
            Range {
                lock_type: b.lock_type,
                start: b.start,
                end: b.end
            }
            .text()
        );
        let told = file.and_then(|fh| {
            fh.nlm
                .of(&b.holder, b.start, b.end)
                .first()
                .map(|x| (*x).clone())
        });
        match &told {
            Some(x) => f.evidence.push(format!(
                "the server had granted that lock to this client at {} (svid {}) and no unlock \
                 of it was sent since: the server should have refused pid {}, so it had \
                 forgotten the lock",
                t(x.since_ns),
                x.holder.svid.map_or("?".into(), |s| s.to_string()),
                r.pid
            )),
            None => f.evidence.push(
                "this client never told the server of that lock (taken before tracing, or \
                 only locally)"
                    .into(),
            ),
        }
        let svid = told.as_ref().and_then(|x| x.holder.svid);
        let fh = file.map_or(&r.fh[..], |f| &f.fh[..]);
        let forgot = svid.and_then(|s| super::server::forgotten(&h.server, fh, s));
        match &forgot {
            Some(g) => f.evidence.push(format!(
                "on the server, at {} {} (pid {}) released lockd's {} for host {} svid {} on {} \
                 outside NLM ({})",
                t(g.ts_ns),
                g.comm,
                g.pid,
                g.range.text(),
                g.host,
                g.svid,
                g.path.as_deref().unwrap_or("the file"),
                g.act.as_ref().map_or_else(
                    || "a write to /proc/fs/nfsd/unlock_ip or unlock_filesystem, or an nfsd \
                        restart"
                        .to_string(),
                    |a| format!("it {a}")
                )
            )),
            None if told.is_some() => f.evidence.push(
                "the server side was not traced here: it lost the lock through \
                 /proc/fs/nfsd/unlock_ip or unlock_filesystem, a restart, or a failed unlock"
                    .into(),
            ),
            None => {}
        }
        f.forgotten = forgot;
    }
    f.blocker = held;
    f.evidence.push(format!(
        "nlmclnt_proc returned {}: the application was told it holds the lock",
        names::result_name(app)
    ));
    f.evidence.push(format!(
        "the server now holds {} for svid {} but the local VFS does not: pid {}'s unlock or \
         close will find no local lock and skip the server, leaving that server lock orphaned \
         (it blocks other clients until this client's lockd or the server restarts)",
        r.range().text(),
        r.svid.map_or("?".into(), |s| s.to_string()),
        r.pid
    ));
    f.headline = format!(
        "{}: server {} granted {} (pid {}) {}, but the local VFS refused it ({}){headline_blocker}; \
         the application was told {}",
        f.file_text(),
        r.host,
        r.comm,
        r.pid,
        r.range().text(),
        names::errno_name(vfs_ret),
        names::result_name(app)
    );
    f
}

pub(super) fn unexpected_unlock(
    h: &Histories,
    r: &Request,
    ts: u64,
    status: u32,
    prior: Option<Held>,
    app: Option<i32>,
) -> Finding {
    let clock = h.clock;
    let t = |ns| hms_micros(clock.wall_ns(ns));
    let file = h.files.get(&r.file);
    let path = file.and_then(|f| f.path_owned());
    let mut f = r.finding(Kind::UnexpectedUnlock, ts, path);
    f.nlm_status = Some(status);
    f.app_result = app;
    f.headline = format!(
        "{}: server {} answered {} (pid {})'s unlock of {} with {} ({})",
        f.file_text(),
        r.host,
        r.comm,
        r.pid,
        names::range(r.lock.start, r.lock.end),
        status,
        names::nlm_status_name(status)
    );
    f.evidence.push(format!(
        "{} (pid {}) unlocked {} at {} (svid {}); the reply: {}",
        r.comm,
        r.pid,
        names::range(r.lock.start, r.lock.end),
        t(r.ts_ns),
        r.svid.map_or("?".into(), |s| s.to_string()),
        status_text(status)
    ));
    if let Some(g) = prior {
        f.granted_ns = Some(g.since_ns);
        f.evidence.push(format!(
            "the server had granted this owner {} {} at {}",
            names::lock_type_name(g.lock_type),
            names::range(g.start, g.end),
            t(g.since_ns)
        ));
    }
    let fh = file.map_or(&r.fh[..], |f| &f.fh[..]);
    if let Some(g) = r
        .svid
        .and_then(|s| super::server::forgotten(&h.server, fh, s))
    {
        f.evidence.push(format!(
            "on the server, at {} {} (pid {}) released lockd's lock for svid {} on {} outside \
             NLM (unlock_ip/unlock_filesystem)",
            t(g.ts_ns),
            g.comm,
            g.pid,
            g.svid,
            g.path.as_deref().unwrap_or("the file")
        ));
        f.forgotten = Some(g);
    }
    if status == 7 {
        f.evidence.push(
            "STALE_FH: since the lock was taken the file was removed, replaced or unexported \
             on the server, so the server cannot find the lock to release"
                .into(),
        );
    }
    f.evidence.push(match app {
        Some(a) => format!(
            "the local lock was released anyway; the application's unlock returned {}",
            names::result_name(a)
        ),
        None => "the local lock was released anyway".into(),
    });
    f
}
