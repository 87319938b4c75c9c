//! Two trace files' clocks lined up by NLM calls rather than by their wall clocks: each call
//! the client sent (nlmclnt_call, or an asynchronous UNLOCK's reply) is paired with its
//! handling in the server's file (nlmsvc_lock, _unlock, _testlock, _cancel_blocked) by
//! procedure, file handle, svid, range, answer and reclaim flag, in order. The server handled a call after
//! the client thread's previous step and before the client had the reply, which bounds the
//! offset between the two clocks; the bounds of every pair are intersected.

use std::{
    collections::{HashMap, VecDeque},
    path::Path,
};

use anyhow::Result;
use lockd_trace_common::{
    nlm_flag,
    nlm_op::{CLNT_CALL, CLNT_UNLOCK_CB, SVC_CANCEL, SVC_LOCK, SVC_TEST, SVC_UNLOCK},
};

use super::{Item, Reader};
use crate::event::{Body, Event, NlmRecord};

/// A call and what answered it: procedure, file handle, svid, range, NLM status, and whether
/// it is a reclaim (after a server's reboot the client re-sends the same LOCK as a reclaim:
/// without the flag it would pair with the first boot's handling, or the reclaim with the
/// original call, off by the time between them).
type Key = (u32, Vec<u8>, u32, i64, i64, Option<u32>, bool);

/// One file's NLM calls as a client (with the times bounding the server's handling) and its
/// handlings as a server.
#[derive(Default)]
pub struct Side {
    calls: Vec<(Key, Option<u64>, u64)>,
    handled: Vec<(Key, u64)>,
}

impl Side {
    /// Reads a file's NLM steps (a damaged tail ends the reading; merging reports it).
    pub fn read(path: &Path) -> Result<Side> {
        let mut r = Reader::open(path)?;
        let mut side = Side::default();
        let mut last_of_tid: HashMap<u32, u64> = HashMap::new();
        while let Ok(Some(item)) = r.read() {
            if let Item::Event(ev) = item {
                side.add(&ev, last_of_tid.insert(ev.tid, ev.ts_ns));
            }
        }
        Ok(side)
    }

    /// `before`: the time of the thread's previous step.
    fn add(&mut self, ev: &Event, before: Option<u64>) {
        let Body::Nlm(n) = &ev.body else { return };
        if n.fh.is_empty() {
            return;
        }
        match n.op {
            CLNT_CALL => self.calls.push((key(n), before, ev.ts_ns)),
            // rpciod's reply to an asynchronous UNLOCK: no start of the call on that thread.
            CLNT_UNLOCK_CB => self.calls.push((key(n), None, ev.ts_ns)),
            SVC_LOCK | SVC_UNLOCK | SVC_TEST | SVC_CANCEL => self.handled.push((key(n), ev.ts_ns)),
            _ => {}
        }
    }
}

fn key(n: &NlmRecord) -> Key {
    (
        n.cmd,
        n.fh.clone(),
        n.svid,
        n.lock.start,
        n.lock.end,
        n.nlm_status,
        n.flags & nlm_flag::RECLAIM != 0,
    )
}

/// What the pairs say of the offset `shift` (ns added to the second file's times to put them
/// on the first file's clock).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub paired: usize,
    /// Calls of the client's file with no handling in the server's.
    pub unpaired: usize,
    pub shift: i128,
    /// Half the width of the interval the pairs allow (None: a pair bounds one side only).
    pub within: Option<i128>,
    /// The pairs' bounds do not meet: the clocks drifted apart, or calls were paired wrongly.
    pub disagree: bool,
}

/// The offset between `first` and `second` from whichever of them is the client; None when
/// no call pairs.
pub fn estimate(first: &Side, second: &Side) -> Option<Estimate> {
    let as_client = bounds(first, second);
    // `second` the client: first's handling t_s satisfies lo <= t_s - shift <= hi.
    let as_server = bounds(second, first).map(|(lo, hi, p, u)| {
        let neg = |x: Option<i128>| x.map(|x| -x);
        (neg(hi), neg(lo), p, u)
    });
    let (lo, hi, paired, unpaired) = match (as_client, as_server) {
        (Some(a), Some(b)) if b.2 > a.2 => b,
        (Some(a), _) => a,
        (None, b) => b?,
    };
    let (shift, within, disagree) = match (lo, hi) {
        (Some(lo), Some(hi)) if lo <= hi => (lo + (hi - lo) / 2, Some((hi - lo) / 2), false),
        (Some(lo), Some(hi)) => (hi + (lo - hi) / 2, Some((lo - hi) / 2), true),
        (Some(x), None) | (None, Some(x)) => (x, None, false),
        (None, None) => return None,
    };
    Some(Estimate {
        paired,
        unpaired,
        shift,
        within,
        disagree,
    })
}

/// Pairs client's calls with server's handlings: the tightest bounds on the shift (added to
/// the server's times), pairs and unpaired calls.
type Bounds = (Option<i128>, Option<i128>, usize, usize);

fn bounds(client: &Side, server: &Side) -> Option<Bounds> {
    let mut handled: HashMap<&Key, VecDeque<u64>> = HashMap::new();
    for (k, ts) in &server.handled {
        handled.entry(k).or_default().push_back(*ts);
    }
    let (mut lo, mut hi): (Option<i128>, Option<i128>) = (None, None);
    let (mut paired, mut unpaired) = (0, 0);
    for (k, before, after) in &client.calls {
        let Some(ts) = handled.get_mut(k).and_then(VecDeque::pop_front) else {
            unpaired += 1;
            continue;
        };
        paired += 1;
        let ts = i128::from(ts);
        hi = Some(hi.map_or(i128::from(*after) - ts, |h| h.min(i128::from(*after) - ts)));
        if let Some(b) = before {
            let l = i128::from(*b) - ts;
            lo = Some(lo.map_or(l, |x| x.max(l)));
        }
    }
    (paired > 0).then_some((lo, hi, paired, unpaired))
}

/// The estimate in a sentence. `wall`: the shift the two files' wall clocks give, when the
/// files are of two boots (the estimate then replaces it); None for one boot (one clock).
pub fn said(e: &Estimate, wall: Option<i128>) -> String {
    let ms = |ns: i128| format!("{:.3} ms", ns as f64 / 1e6);
    let mut s = format!(
        "{} NLM calls paired with their handling by the server ({} unpaired); ",
        e.paired, e.unpaired
    );
    s += &match wall {
        // The wall clocks' shift minus the true one: how far ahead this file's wall clock is.
        Some(w) => format!("by them its wall clock is {} ahead", ms(w - e.shift)),
        None => format!("by them the clocks differ by {}", ms(e.shift)),
    };
    s += &match (e.within, e.disagree) {
        (Some(w), false) => format!(" ± {}", ms(w)),
        (Some(w), true) => format!(
            " (the pairs disagree by {}: clocks drifting, or a call paired wrongly)",
            ms(2 * w)
        ),
        (None, _) => " (bounded on one side only)".into(),
    };
    s += if wall.is_some() {
        "; the pairs' offset is used"
    } else {
        "; one boot, so its own clock is used"
    };
    s
}

#[cfg(test)]
mod tests {
    use lockd_trace_common::nlm::proc_num::LOCK;

    use super::*;
    use crate::event::Lock;

    fn nlm(op: u16, tid: u32, ts: u64, svid: u32, status: u32) -> Event {
        Event {
            ts_ns: ts,
            tid,
            pid: tid,
            comm: "x".into(),
            body: Body::Nlm(Box::new(NlmRecord {
                op,
                cmd: LOCK,
                svid,
                fh: vec![1, 2, 3],
                nlm_status: Some(status),
                lock: Lock {
                    start: 0,
                    end: 99,
                    ..Lock::default()
                },
                ..NlmRecord::default()
            })),
        }
    }

    /// A client at clock c and a server whose clock reads c - 5 s: each call took 2 ms, the
    /// server handled it 1 ms in.
    fn sides(server_behind: u64) -> (Side, Side) {
        let (mut client, mut server) = (Side::default(), Side::default());
        for (i, svid) in [5, 6, 5].into_iter().enumerate() {
            let start = 100_000_000_000 + 1_000_000_000 * i as u64;
            client.add(&nlm(CLNT_CALL, 7, start + 2_000_000, svid, 0), Some(start));
            server.add(
                &nlm(SVC_LOCK, 9, start + 1_000_000 - server_behind, svid, 0),
                None,
            );
        }
        // A call the server's file does not have.
        client.add(&nlm(CLNT_CALL, 7, 9_000_000_000, 8, 0), Some(8_000_000_000));
        (client, server)
    }

    #[test]
    fn the_offset_comes_from_the_pairs_either_way_round() {
        let (client, server) = sides(5_000_000_000);
        let e = estimate(&client, &server).unwrap();
        assert_eq!((e.paired, e.unpaired, e.disagree), (3, 1, false));
        assert!((e.shift - 5_000_000_000).abs() <= e.within.unwrap());
        assert_eq!(e.within, Some(1_000_000));
        let back = estimate(&server, &client).unwrap();
        assert!((back.shift + 5_000_000_000).abs() <= back.within.unwrap());
        assert_eq!(back.paired, 3);
    }

    #[test]
    fn another_answer_or_svid_does_not_pair() {
        let (client, mut server) = sides(0);
        server.handled.iter_mut().for_each(|(k, _)| k.5 = Some(1));
        assert_eq!(estimate(&client, &server), None);
    }

    /// The server's boot after a reboot handled only the reclaim of a lock the client had
    /// taken 30 s earlier from its first boot: the reclaim pairs, not the original call.
    #[test]
    fn a_reclaim_pairs_with_the_reclaim_only() {
        let (mut client, mut after) = (Side::default(), Side::default());
        client.add(&nlm(CLNT_CALL, 7, 1_002_000_000, 5, 0), Some(1_000_000_000));
        let mut reclaim = nlm(CLNT_CALL, 8, 31_002_000_000, 5, 0);
        let mut handled = nlm(SVC_LOCK, 9, 31_001_000_000 - 5_000_000_000, 5, 0);
        for e in [&mut reclaim, &mut handled] {
            if let Body::Nlm(n) = &mut e.body {
                n.flags |= nlm_flag::RECLAIM;
            }
        }
        client.add(&reclaim, Some(31_000_000_000));
        after.add(&handled, None);
        let e = estimate(&client, &after).unwrap();
        assert_eq!((e.paired, e.unpaired), (1, 1));
        assert!((e.shift - 5_000_000_000).abs() <= e.within.unwrap());
    }
}
