//! Per-file histories: every step seen on a file, the lock table the local VFS holds and the one
//! the NLM peer was told of, bounded in number (the least recently used go first). The
//! detectors (client.rs for the NLM client, server.rs for lockd's server side and NSM) read and
//! update them.

mod client;
mod client_text;
mod exits;
mod nsm;
mod server;
pub mod table;
mod waits;

use std::{collections::VecDeque, rc::Rc};

use foldhash::{HashMap, HashMapExt as _};

use lockd_trace_common::{
    hook,
    kernel::{F_UNLCK, FILE_LOCK_DEFERRED, FL_ACCESS, FL_CLOSE},
    nlm_op,
};
use table::LockTable;
use thin_vec::ThinVec;

use crate::{
    clock::Clock,
    event::{Body, Comm, Event, LockRecord},
    finding::{Finding, Range},
    held::{BEFORE_TRACING, Held, Holder},
    paths::cut,
};

pub type FileKey = (u32, u64);

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Files kept; when full, the least recently used sixteenth goes, idle files first.
    pub max_files: usize,
    /// Steps kept per file; older steps are dropped (and counted).
    pub max_steps: usize,
    /// A request waiting longer than this is reported (nanoseconds).
    pub blocked_after_ns: u64,
    /// Keep the steps of a file that holds no lock (`history` shows them). Otherwise they are
    /// dropped (and counted) once its tables are empty: no finding reads an idle file's past,
    /// and a million files locked once each would keep a million step lists.
    pub keep_idle_steps: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: 100_000,
            max_steps: 64,
            blocked_after_ns: 10_000_000_000,
            keep_idle_steps: false,
        }
    }
}

pub struct FileHistory {
    pub dev: u32,
    pub ino: u64,
    pub path: Option<Box<str>>,
    /// The path is cut at the top (checked once, not per event).
    path_cut: bool,
    /// NFS file handle, once an NLM step named it.
    pub fh: ThinVec<u8>,
    /// An NLM step was about this file: never forgotten as idle (only evicted).
    nfs: bool,
    pub steps: VecDeque<Event>,
    pub steps_dropped: u64,
    /// What the local VFS holds.
    pub local: LockTable,
    /// Client side: what the server was told this host holds. Server side: what lockd
    /// granted to clients.
    pub nlm: LockTable,
    last_use: u64,
}

impl FileHistory {
    fn new(dev: u32, ino: u64) -> Self {
        FileHistory {
            dev,
            ino,
            path: None,
            path_cut: false,
            fh: ThinVec::new(),
            nfs: false,
            steps: VecDeque::new(),
            steps_dropped: 0,
            local: LockTable::default(),
            nlm: LockTable::default(),
            last_use: 0,
        }
    }

    fn push_step(&mut self, ev: &Event, max: usize) {
        if self.steps.len() >= max {
            self.steps.pop_front();
            self.steps_dropped += 1;
        }
        self.steps.push_back(ev.clone());
    }

    /// The path as a finding carries it.
    pub fn path_owned(&self) -> Option<String> {
        self.path.as_deref().map(String::from)
    }

    /// Local locks the NLM peer was not told of, and NLM locks the local VFS lacks.
    pub fn differences(&self) -> (Vec<&Held>, Vec<&Held>) {
        let covered = |h: &Held, t: &LockTable| {
            t.held
                .iter()
                .any(|o| o.holder.pid == h.holder.pid && o.start <= h.start && o.end >= h.end)
        };
        let local_only = self
            .local
            .held
            .iter()
            .filter(|h| !covered(h, &self.nlm))
            .collect();
        let nlm_only = self
            .nlm
            .held
            .iter()
            .filter(|h| !covered(h, &self.local))
            .collect();
        (local_only, nlm_only)
    }
}

pub struct Histories {
    clock: Clock,
    limits: Limits,
    /// Boxed: the table keeps up to twice its entries' room, which inline would be
    /// 170 bytes a slot.
    files: HashMap<FileKey, Box<FileHistory>>,
    /// The file touched last, and a count of touches (FileHistory::last_use).
    newest: Option<FileKey>,
    tick: u64,
    pub evicted: u64,
    waits: waits::Waits,
    client: client::Client,
    server: server::Server,
    exits: Vec<exits::Exit>,
    /// Local locks whose setter exited, by lock owner (reported when in someone's way).
    orphans: HashMap<u64, exits::Exit>,
    /// The room of the last idle file's steps and local lock table, for the next file that
    /// needs some: a storm on one file would otherwise allocate and free them on every lock
    /// and unlock.
    spare_steps: VecDeque<Event>,
    spare_held: ThinVec<Held>,
    /// Command names as lock holders carry them, one allocation per name.
    comms: HashMap<Comm, Rc<str>>,
    /// The last name asked for: a storm repeats one, and hashing 24 bytes per event showed.
    last_comm: Option<(Comm, Rc<str>)>,
    unnamed: Rc<str>,
}

impl Histories {
    pub fn new(clock: Clock, limits: Limits) -> Self {
        Histories {
            clock,
            limits,
            files: HashMap::new(),
            newest: None,
            tick: 0,
            evicted: 0,
            waits: waits::Waits::default(),
            client: client::Client::default(),
            server: server::Server::default(),
            exits: Vec::new(),
            orphans: HashMap::new(),
            spare_steps: VecDeque::new(),
            spare_held: ThinVec::new(),
            comms: HashMap::new(),
            last_comm: None,
            unnamed: Rc::from(""),
        }
    }

    /// `c` as a lock holder's command name.
    fn comm(&mut self, c: Comm) -> Rc<str> {
        if let Some((last, s)) = &self.last_comm
            && *last == c
        {
            return s.clone();
        }
        if self.comms.len() >= 4096 && !self.comms.contains_key(&c) {
            self.comms.clear();
        }
        let s = self
            .comms
            .entry(c)
            .or_insert_with(|| c.as_str().into())
            .clone();
        self.last_comm = Some((c, s.clone()));
        s
    }

    pub fn file(&self, key: FileKey) -> Option<&FileHistory> {
        self.files.get(&key).map(|f| &**f)
    }

    pub fn files(&self) -> impl Iterator<Item = &FileHistory> {
        self.files.values().map(|f| &**f)
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The file's history, created (and old files evicted) as needed; touched as used.
    fn touch(&mut self, key: FileKey, path: Option<&str>) -> &mut FileHistory {
        // Already the most recently used (a storm on one file): nothing to note.
        let newest = self.newest == Some(key);
        if !newest {
            if let Some(last) = self.newest {
                self.forget_if_idle(last);
            }
            self.tick += 1;
            if self.files.len() >= self.limits.max_files.max(1) && !self.files.contains_key(&key) {
                self.evict();
            }
            self.newest = Some(key);
        }
        let tick = self.tick;
        let f = self
            .files
            .entry(key)
            .or_insert_with(|| Box::new(FileHistory::new(key.0, key.1)));
        f.last_use = tick;
        // A path cut at the top ("/export/..." for a file lockd opened by handle) gives way
        // to a whole one once a process's own open names it.
        if let Some(p) = path
            && (f.path.is_none() || f.path_cut && !cut(p))
        {
            f.path = Some(p.into());
            f.path_cut = cut(p);
        }
        f
    }

    /// A local file that holds nothing and has nothing waiting on it leaves the table once
    /// another file is touched (unless `history` keeps every step): all it has left is
    /// history, and a million files locked once each would keep a million entries. An event
    /// on it later starts a new entry; its path comes with the event. Files an NLM step was
    /// about stay (pending NLM requests and findings name them).
    fn forget_if_idle(&mut self, key: FileKey) {
        if self.limits.keep_idle_steps {
            return;
        }
        if self.files.get(&key).is_some_and(|f| {
            !f.nfs && f.local.is_empty() && f.nlm.is_empty() && !waits::on(self, key)
        }) {
            self.files.remove(&key);
        }
    }

    /// Makes room: the least recently used sixteenth of the files goes, idle files before
    /// those holding locks (a held lock's table is what names the blocker of a later wait, an
    /// idle file's steps are only history). In batches, found by one pass over the files, so
    /// no order is kept per event (a BTreeMap LRU cost 49 bytes a file and a remove and insert
    /// whenever another file was touched).
    fn evict(&mut self) {
        let batch = (self.limits.max_files / 16).clamp(1, self.files.len());
        let mut order: Vec<(bool, u64, FileKey)> = self
            .files
            .iter()
            .map(|(k, f)| (!(f.local.is_empty() && f.nlm.is_empty()), f.last_use, *k))
            .collect();
        if batch < order.len() {
            order.select_nth_unstable(batch);
        }
        for &(_, _, key) in &order[..batch] {
            self.files.remove(&key);
            if self.newest == Some(key) {
                self.newest = None;
            }
        }
        self.evicted += batch as u64;
    }

    fn record(&mut self, key: FileKey, path: Option<&str>, ev: &Event) {
        let max = self.limits.max_steps;
        let mut spare = std::mem::take(&mut self.spare_steps);
        let mut spare_held = std::mem::take(&mut self.spare_held);
        let f = self.touch(key, path);
        if f.steps.capacity() == 0 {
            std::mem::swap(&mut f.steps, &mut spare);
        }
        if f.local.held.capacity() == 0 {
            std::mem::swap(&mut f.local.held, &mut spare_held);
        }
        f.push_step(ev, max);
        self.spare_held = spare_held;
        self.spare_steps = spare;
    }

    /// Folds one event in; findings it completes are appended to `out`.
    pub fn observe(&mut self, ev: &Event, path: Option<&str>, out: &mut Vec<Finding>) {
        self.fold(ev, path, out);
        if !self.limits.keep_idle_steps
            && let Some(key) = self.newest
            && let Some(f) = self.files.get_mut(&key)
            && f.local.is_empty()
            && f.nlm.is_empty()
            && !f.steps.is_empty()
        {
            f.steps_dropped += f.steps.len() as u64;
            f.steps.clear();
            if self.spare_steps.capacity() == 0 {
                std::mem::swap(&mut f.steps, &mut self.spare_steps);
            } else {
                f.steps = VecDeque::new();
            }
            if self.spare_held.capacity() == 0 {
                std::mem::swap(&mut f.local.held, &mut self.spare_held);
            } else {
                f.local.held = ThinVec::new();
            }
        }
    }

    fn fold(&mut self, ev: &Event, path: Option<&str>, out: &mut Vec<Finding>) {
        match &ev.body {
            Body::Lock(r) => self.lock(ev, r, path, out),
            Body::WaitEnd(r) => {
                self.record((r.dev, r.ino), path, ev);
                waits::ended(self, r.fl);
            }
            Body::Getlk(g) => {
                self.record((g.dev, g.ino), path, ev);
            }
            // The admin's unlock_filesystem / unlock_ip: about a filesystem or an address,
            // no one file.
            Body::Nlm(n)
                if matches!(n.op, nlm_op::SVC_UNLOCK_ALL_SB | nlm_op::SVC_UNLOCK_ALL_IP) =>
            {
                server::observe(self, ev, n, out);
            }
            Body::Nlm(n) => {
                let key = match (n.dev, n.ino) {
                    (0, 0) => client::file_of(self, ev.tid, &n.fh),
                    key => Some(key),
                };
                if let Some(key) = key {
                    self.record(key, path, ev);
                    if let Some(f) = self.files.get_mut(&key) {
                        f.nfs = true;
                    }
                }
                use nlm_op::*;
                match n.op {
                    CLNT_PROC_ENTER | CLNT_PROC_EXIT | CLNT_CALL | CLNT_UNLOCK_CB
                    | CLNT_RECLAIM | CLNT_GRANTED_CB | CLNT_VFS => {
                        client::observe(self, ev, n, out);
                    }
                    _ => server::observe(self, ev, n, out),
                }
            }
            Body::Exit => exits::exited(self, ev),
            Body::Statd(s) => nsm::observe(self, ev, s, out),
        }
    }

    fn lock(&mut self, ev: &Event, r: &LockRecord, path: Option<&str>, out: &mut Vec<Finding>) {
        let key = (r.dev, r.ino);
        let (start, end, lock_type) = if r.lock.flags & FL_CLOSE != 0 {
            (0, i64::MAX, F_UNLCK)
        } else {
            (r.lock.start, r.lock.end, r.lock.lock_type)
        };
        let holder = Holder {
            owner: r.lock.owner,
            pid: r.lock.pid,
            // An unlock's holder only matches locks by owner: no name to look up.
            comm: if lock_type == F_UNLCK {
                self.unnamed.clone()
            } else {
                self.comm(ev.comm)
            },
            svid: None,
            host: None,
        };
        // An unlock that leaves the file idle has its step dropped at once (observe): it is
        // counted, not copied in and out (half of a lock storm's events).
        let unlock = r.ret == 0
            && lock_type == F_UNLCK
            && r.hook != hook::PROC_LOCKS
            && r.lock.flags & FL_ACCESS == 0
            && !self.limits.keep_idle_steps;
        if unlock {
            self.touch(key, path);
        } else {
            self.record(key, path, ev);
        }
        if r.lock.flags & FL_ACCESS != 0 {
            return;
        }
        match r.ret {
            0 if r.hook == hook::PROC_LOCKS => {
                let f = self.files.get_mut(&key).expect("just recorded");
                f.local
                    .apply(&holder, lock_type, start, end, BEFORE_TRACING);
            }
            0 => {
                waits::ended(self, r.fl);
                if lock_type == F_UNLCK {
                    server::released(self, ev, key, &holder, start, end, out);
                } else if ev.comm == "lockd" {
                    server::lockd_took(self, key, holder.owner, lock_type, start, end, ev.ts_ns);
                }
                let f = self.files.get_mut(&key).expect("just recorded");
                f.local.apply(&holder, lock_type, start, end, ev.ts_ns);
                server::tag_lockd_locks(&self.server, f);
                if unlock {
                    if f.local.is_empty() && f.nlm.is_empty() {
                        f.steps_dropped += 1;
                    } else {
                        f.push_step(ev, self.limits.max_steps);
                    }
                }
            }
            ret if ret < 0
                && let Some(b) = &r.blocker =>
            {
                exits::in_the_way(self, ev, key, b, out);
            }
            // lockd's deferred requests are blocks queued at the NLM server, not waiting
            // threads; the client side reports those.
            FILE_LOCK_DEFERRED if ev.comm != "lockd" => {
                if let Some(b) = &r.blocker {
                    exits::in_the_way(self, ev, key, b, out);
                }
                waits::queued(
                    self,
                    ev,
                    r,
                    key,
                    Range {
                        lock_type,
                        start,
                        end,
                    },
                );
            }
            _ => {}
        }
    }

    /// The input ended: judge what was waiting for more time (exits).
    pub fn finish(&mut self, now_ns: u64, out: &mut Vec<Finding>) {
        self.advance(now_ns, out);
        exits::advance(self, now_ns, true, out);
    }

    /// Time moved on to `now_ns`: report requests waiting longer than the threshold, and
    /// locks that outlived their owner.
    pub fn advance(&mut self, now_ns: u64, out: &mut Vec<Finding>) {
        let from = out.len();
        exits::advance(self, now_ns, false, out);
        waits::advance(self, now_ns, out);
        client::advance(self, now_ns, out);
        // The detectors walk hash maps: the same trace must give the same report.
        out[from..].sort_by_key(|f| (f.ts_ns, f.pid));
    }
}

#[cfg(test)]
mod tests;
