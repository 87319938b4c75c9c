#!/usr/bin/env python3
"""Lab scenarios, run inside the guest: real processes (the `locker` program) make real lock
calls on the NFS mount; what they did and got is written to RESULTS/facts.json so the host can
check the trace against it.  Usage: scenarios.py NAME RESULTS | --wait-grace FILE"""
import ctypes, fcntl, json, os, select, signal, subprocess, sys, time

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
    nfsv4(facts)


def nfsv4(facts):
    """The same export mounted with NFSv4, whose locks go to the server without lockd: d's lock
    is granted (a server-local lock on it is refused), then d is DENIED by one."""
    # NFSv4 reaches an export through a pseudo root, and the 9p root cannot be one: /export is
    # bound under tmpfs and exported as the root (fsid=0) for the while.
    for d in ("/mnt/nfs4", "/run/v4root"):
        os.makedirs(d, exist_ok=True)
    run = lambda *a: subprocess.run(a, check=True)
    run("mount", "--bind", "/export", "/run/v4root")
    run("exportfs", "-o", "rw,sync,no_subtree_check,no_root_squash,fsid=0", "127.0.0.1:/run/v4root")
    run("mount", "-t", "nfs", "-o", "vers=4.2", "127.0.0.1:/", "/mnt/nfs4")
    touch("/export/conflict-v4")
    d, y = Locker("/mnt/nfs4/conflict-v4"), Locker("/export/conflict-v4")
    facts["d"], facts["y"] = {"pid": d.pid}, {"pid": y.pid}
    facts["d"]["setlk w 0 10"] = d.cmd("setlk w 0 10")
    facts["y"]["setlk w 5 10"] = y.cmd("setlk w 5 10")
    facts["d"]["setlk u 0 10"] = d.cmd("setlk u 0 10")
    facts["y"]["setlk w 20 10"] = y.cmd("setlk w 20 10")
    facts["d"]["setlk w 25 10"] = d.cmd("setlk w 25 10")
    for p in (d, y):
        p.exit()
    run("umount", "/mnt/nfs4")
    run("exportfs", "-u", "127.0.0.1:/run/v4root")
    run("umount", "/run/v4root")
    # Later scenarios unload nfs, which NFSv4's module would hold (busy for a while after
    # the unmount).
    for _ in range(30):
        if subprocess.run(["rmmod", "nfsv4"]).returncode == 0:
            break
        time.sleep(1)
    else:
        raise RuntimeError("nfsv4 could not be unloaded")


def forget_and_remove(name):
    """The server forgets this client's locks and the file goes away on the server side.
    unlock_ip alone leaves lockd's nlm_file holding the inode (the handle stays valid);
    unlock_filesystem releases lockd's files on /export too."""
    with open("/proc/fs/nfsd/unlock_ip", "w") as f:
        f.write("127.0.0.1\n")
    os.remove(f"/export/{name}")
    with open("/proc/fs/nfsd/unlock_filesystem", "w") as f:
        f.write("/export\n")


def unlock_ip_twice(facts):
    """unlock_ip twice with a lock of the same client each time; the second walk meets the
    same nlm_host as the first. Whether the kernel dropped it, a server-local lock on the
    range says (6.1's unlock_ip has been seen to release nothing)."""
    touch("/mnt/nfs/twice")
    f, x = Locker("/mnt/nfs/twice"), Locker("/export/twice")
    facts["f"], facts["x"] = {"pid": f.pid}, {"pid": x.pid}
    for start in (0, 20):
        facts["f"][f"setlk w {start} 10"] = f.cmd(f"setlk w {start} 10")
        with open("/proc/fs/nfsd/unlock_ip", "w") as u:
            u.write("127.0.0.1\n")
        facts["x"][f"setlk w {start} 10"] = x.cmd(f"setlk w {start} 10")
        x.cmd(f"setlk u {start} 10")
    f.exit()
    x.exit()


def stale_unlock(facts):
    unlock_ip_twice(facts)
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


# A second client host: its own network (veth, the server is NET.1, the client NET.2), mount
# and UTS namespaces, with its own rpcbind and statd (the kernel's NLM client and NSM calls stay
# in the namespace: lockd registers with the rpcbind its mount process sees), NFSv3 mounted
# from the server's address.  Its setup talks on stderr; stdout (fd 3 meanwhile) is the
# locker's, which is the script's argument.
CLIENT_SETUP = """exec 3>&1 >&2
hostname {name}
mount -t tmpfs tmpfs /run && mkdir -p /run/rpcbind /run/mnt
mount -t tmpfs tmpfs /var/lib/nfs && mkdir -p /var/lib/nfs/sm /var/lib/nfs/sm.bak
rpcbind -w && rpc.statd --no-notify
mount -t nfs -o vers=3 {net}.1:/export /run/mnt || exit 1
exec "$@" >&3 3>&-
"""


def sh(cmd):
    subprocess.run(["sh", "-c", cmd], check=True)


def second_host(name, net, link):
    """Client host `name` at NET.2 on a veth pair whose server end `link` is NET.1; returns the
    command prefix that runs a program there (after its own rpcbind, statd and NFS mount)."""
    sh(f"ip netns add {name}")
    sh(f"ip link add {link} type veth peer name vg netns {name}")
    sh(f"ip addr add {net}.1/24 dev {link} && ip link set {link} up")
    sh(f"ip -n {name} addr add {net}.2/24 dev vg && ip -n {name} link set vg up")
    sh(f"ip -n {name} link set lo up")
    sh(f"exportfs -o rw,sync,no_subtree_check,no_root_squash,fsid=1 {net}.2:/export")
    setup = CLIENT_SETUP.format(name=name, net=net)
    return ["ip", "netns", "exec", name, "unshare", "-mu", "sh", "-c", setup, name]


def vanished_client(facts):
    """Client 10.99.0.2 takes a lock and vanishes (its link is deleted): the server keeps the
    lock and a server-local process waits behind it; after the server's reboot notification
    (sm-notify -f) statd keeps trying to reach it from sm.bak/; unlock_filesystem releases its
    lock and the waiter gets it."""
    prefix = second_host("vanished", "10.99.0", "vh")
    touch("/export/vanished")
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


def pids_of(name):
    r = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


def overrun_kernel_log(facts):
    """Stops every tracer, writes twice the kernel log's size into it, lets them go on: their
    next read of /dev/kmsg finds the records they had not read overwritten."""
    tracers = pids_of("lockd-trace")
    for p in tracers:
        os.kill(p, signal.SIGSTOP)
    size = ctypes.CDLL(None).klogctl(10, None, 0)  # SYSLOG_ACTION_SIZE_BUFFER
    line = "overrun: filling the kernel log while its readers are stopped %06d\n"
    lines = 2 * size // len(line) + 100
    for i in range(lines):
        with open("/dev/kmsg", "w") as k:  # a fresh open: /dev/kmsg rate-limits each
            k.write(line % i)
    for p in tracers:
        os.kill(p, signal.SIGCONT)
    facts["overrun"] = {"tracers": len(tracers), "log_size": size, "lines": lines}
    log("kernel log overrun:", facts["overrun"])


def statd_down(facts):
    """The kernel log overruns while the tracers are stopped; then rpc.statd dies (and rpcbind,
    through which the kernel finds it: with statd alone gone, 6.1 waited 60 s for it and then
    took the lock unmonitored) and a client locks on a server it had not locked with
    (127.0.0.2): lockd cannot have it monitored, prints "lockd: cannot monitor 127.0.0.2", and
    the lock fails with ENOLCK."""
    os.makedirs("/mnt/nfs2", exist_ok=True)
    sh("mount -t nfs -o vers=3 127.0.0.2:/export /mnt/nfs2")
    touch("/export/statd")
    overrun_kernel_log(facts)
    sh("pkill -x rpc.statd; pkill -x rpcbind; sleep 1")
    a = Locker("/mnt/nfs2/statd")
    facts["a"] = {"pid": a.pid, "setlk w 0 10": a.cmd("setlk w 0 10")}
    a.exit()
    sh("rpcbind -w && rpc.statd --no-notify && umount /mnt/nfs2")


NFS_DOWN = "umount /mnt/nfs && rpc.nfsd 0 && pkill -x rpc.mountd; exportfs -ua; sleep 1; " \
    "umount /proc/fs/nfsd && rmmod nfsv3 nfs nfsd lockd"
NFS_UP = "modprobe lockd nlm_grace_period=10 && modprobe -a nfsd nfs nfsv3 && " \
    "mount -t nfsd nfsd /proc/fs/nfsd && echo 10 > /proc/fs/nfsd/nfsv4leasetime && " \
    "echo 10 > /proc/fs/nfsd/nfsv4gracetime && exportfs -ra && rpc.mountd && rpc.nfsd 2 && " \
    "mount -t nfs -o vers=3 127.0.0.1:/export /mnt/nfs"


def lockd_gone(facts):
    """A client's request waits at the server (BLOCKED behind a server-local holder) and the
    tracer holds the file's history: removing lockd is refused while NFS uses it; then NFS is
    taken down, lockd removed and loaded again, NFS brought back: the tracer follows, and reads
    the next NLM request right."""
    touch("/export/gone")
    x, w = Locker("/export/gone"), Locker("/mnt/nfs/gone")
    facts["x"] = {"pid": x.pid, "setlk w 0 100": x.cmd("setlk w 0 100")}
    facts["w"] = {"pid": w.pid}
    w.send("setlkw w 0 100")
    time.sleep(25)  # over --blocked-after
    r = subprocess.run(["rmmod", "lockd"], capture_output=True, text=True)
    facts["rmmod_busy"] = {"exit": r.returncode, "stderr": r.stderr.strip()}
    w.p.kill()
    w.p.wait(30)
    x.exit()
    sh(NFS_DOWN)
    facts["lockd_removed"] = not os.path.exists("/sys/module/lockd")
    time.sleep(3)  # the tracers notice (they look every second)
    sh(NFS_UP)
    facts["grace"] = wait_grace("/mnt/nfs/.grace")
    y = Locker("/mnt/nfs/gone")
    facts["y"] = {"pid": y.pid, "setlk w 10 20": y.cmd("setlk w 10 20")}
    y.exit()


def nfsd_restart(facts):
    """A client host (its own namespaces, 10.99.1.2) holds a lock; nfsd is stopped and started
    again (the server's own loopback mount is unmounted first, so nfsd is lockd's last user in
    the server's network namespace). lockd cannot free a client host that holds locks
    ("lockd: couldn't shutdown host module for net ..."): the lock stays in force across the
    restart, a server-local process is refused it, and the client's unlock waits out the new
    grace period (DENIED_GRACE_PERIOD)."""
    sh("umount /mnt/nfs")
    prefix = second_host("restarted", "10.99.1", "vr")
    touch("/export/restart")
    c = Locker("/run/mnt/restart", prefix)
    facts["c"] = {"pid": c.pid, "setlk w 0 100": c.cmd("setlk w 0 100")}
    stop = subprocess.Popen(["rpc.nfsd", "0"])
    facts["nfsd_stop"] = {"pid": stop.pid, "exit": stop.wait(60)}
    sh("rpc.nfsd 2")
    x = Locker("/export/restart")
    facts["x"] = {"pid": x.pid, "setlk w 0 100": x.cmd("setlk w 0 100")}
    x.exit()
    c.exit()
    sh("ip link del vr; mount -t nfs -o vers=3 127.0.0.1:/export /mnt/nfs")
    facts["grace"] = wait_grace("/mnt/nfs/.grace")


def clock_step(facts, results):
    """`record` runs while the wall clock is stepped back an hour, then forward two: its times
    come from the monotonic clock, so the analysis orders and dates the events as they were."""
    t, err = tracer("record", os.path.join(results, "clock"))
    start_mono, facts["wall_start"] = time.monotonic(), time.time()
    touch("/mnt/nfs/clock")
    a, b = Locker("/mnt/nfs/clock"), Locker("/mnt/nfs/clock")
    facts["a"] = {"pid": a.pid, "setlk w 0 10": a.cmd("setlk w 0 10")}
    facts["b"] = {"pid": b.pid}
    sh("date -s @%d >/dev/null" % (time.time() - 3600))
    b.send("setlkw w 0 10")
    time.sleep(2)
    sh("date -s @%d >/dev/null" % (time.time() + 7200))
    facts["a"]["setlk u 0 10"] = a.cmd("setlk u 0 10")
    facts["b"]["setlkw w 0 10"] = b.read(60)
    a.exit()
    b.exit()
    t.send_signal(signal.SIGINT)
    facts["record_exit"] = t.wait(60)
    sh("date -s @%d >/dev/null" % (time.time() - 3600))
    facts["elapsed_s"] = time.monotonic() - start_mono


def tracer(mode, out):
    """Starts `lockd-trace MODE` (monitor or record) and waits until it traces."""
    args = {"monitor": ["monitor", "--no-metrics"], "record": ["record", "-o", out + ".ldt"]}[mode]
    err = open(out + ".log", "w+")
    extra = open("/share/tracer-args.txt").read().split()
    t = subprocess.Popen(["/share/lockd-trace", args[0], *extra, *args[1:]], stdout=subprocess.DEVNULL, stderr=err)
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


def wakeups(pid):
    """Voluntary context switches of all of process `pid`'s threads."""
    n = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                n += sum(int(l.split()[1]) for l in f if l.startswith("voluntary_ctxt_switches"))
        except OSError:
            pass
    return n


def sysctl(name, value):
    with open(f"/proc/sys/{name}", "w") as k:
        k.write(f"{value}\n")


def cpu_s(pid):
    """utime + stime of process `pid`, in seconds (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prog_stats(pid):
    """Runs and nanoseconds per eBPF program process `pid` holds: the kernel's counts in each
    program descriptor's fdinfo (with kernel.bpf_stats_enabled=1), named through the
    bpf_prog_<tag>_<name> symbols in /proc/kallsyms (the prog id where there is none)."""
    names = {}
    with open("/proc/kallsyms") as k:
        for line in k:
            sym = line.split()[2]
            if sym.startswith("bpf_prog_"):
                tag, _, name = sym[len("bpf_prog_"):].partition("_")
                names.setdefault(tag, name)
    stats = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                info = dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
        except OSError:
            continue
        info = {k.strip(): v.strip() for k, v in info.items()}
        name = names.get(info["prog_tag"]) or "prog " + info["prog_id"]
        s = stats.setdefault(name, [0, 0])
        s[0] += int(info["run_cnt"])
        s[1] += int(info["run_time_ns"])
    return stats


def bench_programs(facts, results, f, pairs):
    """The monitor's programs as the kernel counts them: runs per lock+unlock round trip and
    nanoseconds per run, then runs during a 1 s local lock storm, in one extra monitor run
    with kernel.bpf_stats_enabled=1 (the counting costs a little; the rounds run without)."""
    sysctl("net/core/bpf_jit_kallsyms", 1)  # names for the programs loaded next
    t, err = tracer("monitor", os.path.join(results, "programs"))
    sysctl("kernel/bpf_stats_enabled", 1)
    try:
        before = prog_stats(t.pid)
        for _ in range(pairs):
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
            fcntl.lockf(f, fcntl.LOCK_UN, 1, 0)
        mid = prog_stats(t.pid)
        storm = subprocess.run(["/share/lockstorm", "--seconds", "1", "--file", "/export/storm"],
                               capture_output=True, text=True, check=True)
        after = prog_stats(t.pid)
    finally:
        sysctl("kernel/bpf_stats_enabled", 0)
    t.send_signal(2)
    facts["programs_exit"] = t.wait(120)
    calls = json.loads(storm.stdout)["ops"]
    facts["programs"] = {"pairs": pairs, "local_calls": calls, "by_name": {
        name: {"round_trip_runs": mid[name][0] - before.get(name, [0, 0])[0],
               "round_trip_ns": mid[name][1] - before.get(name, [0, 0])[1],
               "local_runs": after[name][0] - mid[name][0]}
        for name in after}}
    log(json.dumps(facts["programs"]))


def local_storm():
    """A 2 s lock storm on the exported tmpfs: fcntl calls per second."""
    storm = subprocess.run(["/share/lockstorm", "--seconds", "2", "--file", "/export/storm"],
                           capture_output=True, text=True, check=True)
    return json.loads(storm.stdout)["ops_per_s"]


def bench(facts, results):
    """Benchmark section 2: lock+unlock round trips on the NFS mount with no tracer, monitor
    and record, alternating within each round (the order rotates), and a local lock storm on
    the exported tmpfs under each. The monitor's run also has bare storms just before it
    starts and after it stops (TCG's speed drifts from one run to the next: its storms are
    judged against those), 3 s of its idle wakeups, then a storm with it running steadily and
    one with its agent stopped (SIGSTOP: its probes stay attached)."""
    rounds, per_round = map(int, open("/share/bench.txt").read().split())
    facts.update(rounds=rounds, per_round=per_round, runs=[])
    touch("/mnt/nfs/bench")
    touch("/export/storm")
    modes = ["none", "monitor", "record"]
    with open("/mnt/nfs/bench", "r+") as f:
        for r in range(rounds):
            for mode in modes[r % 3:] + modes[:r % 3]:
                out = os.path.join(results, f"{mode}-{r}")
                before = local_storm() if mode == "monitor" else None
                t, err = tracer(mode, out) if mode != "none" else (None, None)
                start = time.perf_counter()
                for _ in range(per_round):
                    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
                    fcntl.lockf(f, fcntl.LOCK_UN, 1, 0)
                mean_us = (time.perf_counter() - start) * 1e6 / per_round
                run = {"round": r, "mode": mode, "mean_us": round(mean_us, 1), "lost": 0}
                # The local lock storm the NFS-only monitor must not slow (exported tmpfs),
                # and the tracer's own CPU and wakeups meanwhile.
                cpu, woke = (cpu_s(t.pid), wakeups(t.pid)) if t else (0, 0)
                run["local_ops_per_s"] = local_storm()
                if t:
                    run["storm_cpu_s"] = cpu_s(t.pid) - cpu
                    run["storm_wakeups"] = wakeups(t.pid) - woke
                if mode == "monitor":
                    woke = wakeups(t.pid)
                    time.sleep(3)
                    run["idle_wakeups_per_s"] = (wakeups(t.pid) - woke) / 3
                    # Steady: long after its start and its round trips' records.
                    run["steady_ops_per_s"] = local_storm()
                    t.send_signal(signal.SIGSTOP)
                    run["stopped_ops_per_s"] = local_storm()
                    t.send_signal(signal.SIGCONT)
                if t:
                    err.seek(0)
                    run["nfs_only"] = "lockd-trace: NFS-only monitor:" in err.read()
                    t.send_signal(2)
                    run["exit"] = t.wait(120)
                    err.seek(0)
                    run["lost"] = lost(err.read())
                if before is not None:
                    run["bare_around_ops_per_s"] = [before, local_storm()]
                facts["runs"].append(run)
                log(json.dumps(run))
        bench_programs(facts, results, f, per_round)


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
            "statd-down": statd_down,
            "lockd-gone": lockd_gone,
            "nfsd-restart": nfsd_restart,
            "clock-step": lambda facts: clock_step(facts, results),
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


if __name__ == "__main__":  # pair.py imports the helpers
    sys.exit(main())
