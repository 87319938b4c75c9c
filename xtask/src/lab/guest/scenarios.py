#!/usr/bin/env python3
"""Lab scenarios, run inside the guest: real processes (the `locker` program) make real lock
calls on the NFS mount; what they did and got is written to RESULTS/facts.json so the host can
check the trace against it.  Usage: scenarios.py NAME RESULTS | --wait-grace FILE"""
import fcntl, json, os, select, subprocess, sys, time

LOCKER = "/share/locker"


class Locker:
    """One locker process: one open file, commands on stdin, answers on stdout. `prefix` runs
    it elsewhere (another host's namespaces); it must exec the locker last."""

    def __init__(self, path, prefix=()):
        self.p = subprocess.Popen([*prefix, LOCKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = int(self.read(180).split()[1])
        assert self.cmd(f"open {path}") == "ok", path

    def send(self, c):
        self.p.stdin.write(c + "\n")
        self.p.stdin.flush()

    def read(self, timeout=120):
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not r:
            raise TimeoutError(f"locker {self.p.pid}: no answer in {timeout}s")
        return self.p.stdout.readline().strip()

    def cmd(self, c, timeout=120):
        self.send(c)
        return self.read(timeout)

    def exit(self):
        self.send("exit")
        self.p.wait(30)

    def signal_usr1(self):
        """Interrupts a blocked call (the locker's handler has no SA_RESTART)."""
        os.kill(self.pid, 10)


def touch(path):
    open(path, "w").close()


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def conflict(facts):
    # Two owners on the client: the local VFS pre-check refuses the second (no NLM call).
    touch("/mnt/nfs/conflict-local")
    a, b = Locker("/mnt/nfs/conflict-local"), Locker("/mnt/nfs/conflict-local")
    facts["a"] = {"pid": a.pid, "setlk w 0 100": a.cmd("setlk w 0 100")}
    facts["b"] = {"pid": b.pid, "setlk w 50 10": b.cmd("setlk w 50 10")}
    # A holder on the server itself: the client's request reaches lockd and is DENIED, then
    # a blocking request is BLOCKED and granted by the server's GRANTED callback.
    touch("/export/conflict-server")
    x, c = Locker("/export/conflict-server"), Locker("/mnt/nfs/conflict-server")
    facts["x"] = {"pid": x.pid, "setlk w 0 100": x.cmd("setlk w 0 100")}
    facts["c"] = {"pid": c.pid, "setlk w 50 10": c.cmd("setlk w 50 10")}
    c.send("setlkw w 50 10")
    time.sleep(3)
    facts["x"]["setlk u 0 100"] = x.cmd("setlk u 0 100")
    t = time.time()
    facts["c"]["setlkw w 50 10"] = c.read(120)
    facts["c"]["granted_after_s"] = round(time.time() - t, 1)
    for p in (a, b, x, c):
        p.exit()


def forget_and_remove(name):
    """The server forgets this client's locks and the file goes away on the server side.
    unlock_ip alone leaves lockd's nlm_file holding the inode (the handle stays valid);
    unlock_filesystem releases lockd's files on /export too."""
    with open("/proc/fs/nfsd/unlock_ip", "w") as f:
        f.write("127.0.0.1\n")
    os.remove(f"/export/{name}")
    with open("/proc/fs/nfsd/unlock_filesystem", "w") as f:
        f.write("/export\n")


def stale_unlock(facts):
    touch("/mnt/nfs/stale")
    a = Locker("/mnt/nfs/stale")
    facts["a"] = {"pid": a.pid, "setlk w 0 10": a.cmd("setlk w 0 10")}
    forget_and_remove("stale")
    # nfsd's file cache keeps the handle valid for a few seconds (2 s was not enough here).
    time.sleep(12)
    facts["a"]["setlk u 0 10"] = a.cmd("setlk u 0 10")
    time.sleep(2)
    a.exit()


def reclaim(facts):
    touch("/mnt/nfs/reclaim")
    a = Locker("/mnt/nfs/reclaim")
    facts["a"] = {"pid": a.pid, "setlk w 0 10": a.cmd("setlk w 0 10")}
    forget_and_remove("reclaim")
    time.sleep(12)
    facts["sm-notify"] = subprocess.run(["sm-notify", "-f"], capture_output=True, text=True).returncode
    time.sleep(15)
    a.exit()


def local_waiter(pid, timeout):
    """Until /proc/locks shows `pid` blocked ("->") on a local lock."""
    end = time.time() + timeout
    while time.time() < end:
        with open("/proc/locks") as f:
            if any("->" in l and f" {pid} " in l for l in f):
                return True
        time.sleep(0.5)
    return False


def out_of_sync(facts):
    """The server grants Q a lock the local VFS still sees held by P (the server forgot P's
    lock through unlock_filesystem); Q's final local lock waits on P and a signal ends that wait: the
    kernel prints "VFS is out of sync with lock manager!" and tells Q success."""
    touch("/export/oos")
    x = Locker("/export/oos")
    p, q = Locker("/mnt/nfs/oos"), Locker("/mnt/nfs/oos")
    facts["x"] = {"pid": x.pid, "setlk w 0 100": x.cmd("setlk w 0 100")}
    facts["p"], facts["q"] = {"pid": p.pid}, {"pid": q.pid}
    p.send("setlkw w 0 100")  # BLOCKED at the server behind x
    time.sleep(2)
    q.send("setlkw w 0 100")  # BLOCKED too, queued after p
    time.sleep(2)
    facts["x"]["setlk u 0 100"] = x.cmd("setlk u 0 100")
    facts["p"]["setlkw w 0 100"] = p.read(60)  # the server grants p (GRANTED callback)
    log("p granted; server forgets it")
    # unlock_ip alone left p's lock in place here (the trace showed lockd refusing q's
    # re-polls behind its own lock for p); unlock_filesystem drops every lock on /export.
    with open("/proc/fs/nfsd/unlock_filesystem", "w") as f:
        f.write("/export\n")
    # q's block was cancelled with it; q re-polls within 30 s, is GRANTED, and its final
    # do_vfs_lock then waits on p's local lock.
    facts["q"]["waited_locally"] = local_waiter(q.pid, 60)
    log("q waits locally:", facts["q"]["waited_locally"])
    q.signal_usr1()
    facts["q"]["setlkw w 0 100"] = q.read(30)
    for o in (x, p, q):
        o.exit()


# A second client host: its own network (veth 10.99.0.2, the server is 10.99.0.1), mount and
# UTS namespaces, with its own rpcbind and statd (the kernel's NLM client and NSM calls stay in
# the namespace: lockd registers with the rpcbind its mount process sees), NFSv3 mounted from
# the server's address.  Its setup talks on stderr; stdout (fd 3 meanwhile) is the locker's,
# which is the script's argument.
CLIENT2 = "vanished"
CLIENT2_SETUP = """exec 3>&1 >&2
hostname vanished
mount -t tmpfs tmpfs /run && mkdir -p /run/rpcbind /run/mnt
mount -t tmpfs tmpfs /var/lib/nfs && mkdir -p /var/lib/nfs/sm /var/lib/nfs/sm.bak
rpcbind -w && rpc.statd --no-notify
mount -t nfs -o vers=3 10.99.0.1:/export /run/mnt || exit 1
exec "$@" >&3 3>&-
"""


def sh(cmd):
    subprocess.run(["sh", "-c", cmd], check=True)


def second_host():
    sh(f"ip netns add {CLIENT2}")
    sh(f"ip link add vh type veth peer name vg netns {CLIENT2}")
    sh("ip addr add 10.99.0.1/24 dev vh && ip link set vh up")
    sh(f"ip -n {CLIENT2} addr add 10.99.0.2/24 dev vg && ip -n {CLIENT2} link set vg up")
    sh(f"ip -n {CLIENT2} link set lo up")
    sh("exportfs -o rw,sync,no_subtree_check,no_root_squash,fsid=1 10.99.0.2:/export")


def vanished_client(facts):
    """Client 10.99.0.2 takes a lock and vanishes (its link is deleted): the server keeps the
    lock and a server-local process waits behind it; after the server's reboot notification
    (sm-notify -f) statd keeps trying to reach it from sm.bak/; unlock_filesystem releases its
    lock and the waiter gets it."""
    second_host()
    touch("/export/vanished")
    prefix = ["ip", "netns", "exec", CLIENT2, "unshare", "-mu", "sh", "-c", CLIENT2_SETUP, "vanished-host"]
    v = Locker("/run/mnt/vanished", prefix)
    facts["v"] = {"pid": v.pid, "setlk w 0 100": v.cmd("setlk w 0 100")}
    facts["sm"] = sorted(os.listdir("/var/lib/nfs/sm"))
    sh("ip link del vh")
    log("client 10.99.0.2 is gone")
    x = Locker("/export/vanished")
    facts["x"] = {"pid": x.pid, "setlk w 0 100": x.cmd("setlk w 0 100")}
    x.send("setlkw w 0 100")
    facts["sm-notify"] = subprocess.run(["sm-notify", "-f"], capture_output=True, text=True).returncode
    # The tracer reports a waiter after 20 s and an sm.bak entry unanswered after 20 s (its
    # statd directory is read every 5 s).
    time.sleep(35)
    facts["sm.bak"] = sorted(os.listdir("/var/lib/nfs/sm.bak"))
    # The admin's way out: unlock_ip (of the server address the client used) released nothing
    # here on 6.1 (it did on 6.12); unlock_filesystem releases the export's locks on both.
    with open("/proc/fs/nfsd/unlock_filesystem", "w") as f:
        f.write("/export\n")
    facts["x"]["setlkw w 0 100"] = x.read(30)
    x.exit()


def tracer(mode, out):
    """Starts `lockd-trace MODE` (monitor or record) and waits until it traces."""
    args = {"monitor": ["monitor", "--no-metrics"], "record": ["record", "-o", out + ".ldt"]}[mode]
    err = open(out + ".log", "w+")
    t = subprocess.Popen(["/share/lockd-trace", *args], stdout=subprocess.DEVNULL, stderr=err)
    for _ in range(480):
        err.seek(0)
        if "tracing" in err.read():
            return t, err
        time.sleep(0.25)
    raise TimeoutError(f"{mode} did not start: {open(out + '.log').read()}")


def lost(log):
    """Records lost, from the tracer's closing summary ("..., N lost, ...")."""
    for part in log.split(","):
        if part.strip().endswith(" lost") and part.strip().split()[0].isdigit():
            return int(part.strip().split()[0])
    raise ValueError(f"no summary in the tracer's log: {log}")


def bench(facts, results):
    """Benchmark section 2: lock+unlock round trips on the NFS mount with no tracer, monitor
    and record, alternating within each round (the order rotates)."""
    rounds, per_round = map(int, open("/share/bench.txt").read().split())
    facts.update(rounds=rounds, per_round=per_round, runs=[])
    touch("/mnt/nfs/bench")
    modes = ["none", "monitor", "record"]
    with open("/mnt/nfs/bench", "r+") as f:
        for r in range(rounds):
            for mode in modes[r % 3:] + modes[:r % 3]:
                out = os.path.join(results, f"{mode}-{r}")
                t, err = tracer(mode, out) if mode != "none" else (None, None)
                start = time.perf_counter()
                for _ in range(per_round):
                    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
                    fcntl.lockf(f, fcntl.LOCK_UN, 1, 0)
                mean_us = (time.perf_counter() - start) * 1e6 / per_round
                run = {"round": r, "mode": mode, "mean_us": round(mean_us, 1), "lost": 0}
                if t:
                    t.send_signal(2)
                    run["exit"] = t.wait(120)
                    err.seek(0)
                    run["lost"] = lost(err.read())
                facts["runs"].append(run)
                log(json.dumps(run))


def wait_grace(path):
    """Until the server's grace period ends, lock requests fail with ENOLCK: poll."""
    touch(path)
    with open(path, "r+") as f:
        for _ in range(120):
            try:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
                fcntl.lockf(f, fcntl.LOCK_UN, 1, 0)
                return 0
            except OSError:
                time.sleep(1)
    return 1


def main():
    if sys.argv[1] == "--wait-grace":
        return wait_grace(sys.argv[2])
    name, results = sys.argv[1], sys.argv[2]
    # This process writes /proc/fs/nfsd/unlock_*: the trace must name it.
    facts = {"scenario": name, "kernel": os.uname().release, "scenario_pid": {"pid": os.getpid()}}
    try:
        {
            "conflict": conflict,
            "out-of-sync": out_of_sync,
            "stale-unlock": stale_unlock,
            "reclaim": reclaim,
            "vanished-client": vanished_client,
            "bench": lambda facts: bench(facts, results),
        }[name](facts)
        ok = 0
    except Exception as e:  # the host reports it with the facts gathered so far
        facts["error"] = repr(e)
        ok = 1
    with open(os.path.join(results, "facts.json"), "w") as f:
        json.dump(facts, f, indent=1)
    log(json.dumps(facts))
    return ok


sys.exit(main())
