#!/usr/bin/env python3
"""Two-guest scenarios, run on both guests: `pair.py server` or `pair.py client`. The sides
step each other through flag files in /share/sync (the host's harness, not the network under
test); each traces itself (server: monitor -w, client: record) into
/share/results/SCENARIO/ROLE with its facts. Usage: pair.py ROLE"""
import json, os, subprocess, sys, time, urllib.request

sys.path.insert(0, "/share")
from scenarios import Locker, local_waiter, log, touch, wait_grace  # noqa: E402

SYNC = "/share/sync"
SERVER, CLIENT = "10.0.9.1", "10.0.9.2"


def say(step):
    touch(f"{SYNC}/{step}")
    log("said", step)


def hear(step, timeout=300):
    end = time.time() + timeout
    while not os.path.exists(f"{SYNC}/{step}"):
        if time.time() > end:
            raise TimeoutError(f"never heard {step}")
        time.sleep(0.2)
    log("heard", step)


class Tracer:
    """This side's tracer: the server's monitor (findings as JSON lines, trace file with -w)
    with its lock hooks (--always-hook: the generic monitor, which the single-guest scenarios,
    NFS-only on their monitor kernels, do not run), the client's recorder."""

    def __init__(self, role, d):
        self.d, self.monitor = d, role == "server"
        extra = open(f"/share/tracer-args-{role}.txt").read().split()
        if self.monitor:
            args = ["monitor", "--always-hook", "--json", "--blocked-after", "20s",
                    "--unanswered-after", "20s", "-w", f"{d}/trace.ldt"]
            touch(f"{d}/monitor")
        else:
            args = ["record", "-o", f"{d}/trace.ldt"]
        out = open(f"{d}/findings.jsonl", "w") if self.monitor else subprocess.DEVNULL
        self.err = open(f"{d}/tracer.log", "w+")
        self.p = subprocess.Popen(["/share/lockd-trace", args[0], *extra, *args[1:]], stdout=out,
                                  stderr=self.err)
        for _ in range(480):
            self.err.seek(0)
            if "tracing" in self.err.read():
                return
            time.sleep(0.25)
        raise TimeoutError(f"{args[0]} did not start")

    def stop(self):
        time.sleep(2)
        if self.monitor:
            with open(f"{self.d}/metrics.txt", "w") as f:
                f.write(urllib.request.urlopen("http://127.0.0.1:9464/metrics").read().decode())
        self.p.send_signal(2)
        with open(f"{self.d}/tracer.exit", "w") as f:
            f.write(f"{self.p.wait(60)}\n")


def forget():
    """The server's admin makes lockd drop every lock on /export."""
    with open("/proc/fs/nfsd/unlock_filesystem", "w") as f:
        f.write("/export\n")


def out_of_sync_server(facts):
    touch("/export/oos")
    x = Locker("/export/oos")
    facts["x"] = {"pid": x.pid, "setlk w 0 100": x.cmd("setlk w 0 100")}
    say("oos-x-holds")
    hear("oos-waiting")
    facts["x"]["setlk u 0 100"] = x.cmd("setlk u 0 100")
    say("oos-x-unlocked")
    hear("oos-p-granted")
    forget()
    say("oos-forgot")
    hear("oos-done")
    x.exit()


def out_of_sync_client(facts):
    """As scenarios.out_of_sync, the server's part on the other machine: p and q wait at the
    server behind x; p is granted; the server forgets; q is granted too and its final local
    lock waits on p's until a signal ends it ("VFS is out of sync with lock manager!")."""
    hear("oos-x-holds")
    p, q = Locker("/mnt/nfs/oos"), Locker("/mnt/nfs/oos")
    facts["p"], facts["q"] = {"pid": p.pid}, {"pid": q.pid}
    p.send("setlkw w 0 100")
    time.sleep(2)
    q.send("setlkw w 0 100")
    time.sleep(2)
    say("oos-waiting")
    hear("oos-x-unlocked")
    facts["p"]["setlkw w 0 100"] = p.read(60)
    say("oos-p-granted")
    hear("oos-forgot")
    facts["q"]["waited_locally"] = local_waiter(q.pid, 60)
    q.signal_usr1()
    facts["q"]["setlkw w 0 100"] = q.read(30)
    for o in (p, q):
        o.exit()


def vanished_server(facts):
    """The client took a lock and its machine vanished (the host quit its qemu): a
    server-local waiter, statd's notification unanswered, the admin's way out."""
    hear("vc-client-gone")
    facts["sm"] = sorted(os.listdir("/var/lib/nfs/sm"))
    x = Locker("/export/vanished")
    facts["x"] = {"pid": x.pid, "setlk w 0 100": x.cmd("setlk w 0 100")}
    x.send("setlkw w 0 100")
    facts["sm-notify"] = subprocess.run(["sm-notify", "-f"], capture_output=True).returncode
    time.sleep(35)  # over --blocked-after and --unanswered-after
    facts["sm.bak"] = sorted(os.listdir("/var/lib/nfs/sm.bak"))
    forget()
    facts["x"]["setlkw w 0 100"] = x.read(30)
    x.exit()


def vanished_client(facts):
    v = Locker("/mnt/nfs/vanished")
    facts["v"] = {"pid": v.pid, "setlk w 0 100": v.cmd("setlk w 0 100")}
    facts["sm"] = sorted(os.listdir("/var/lib/nfs/sm"))
    return v  # held until the machine goes


def scenario(name, role, run, ready=None, side=None):
    """One scenario on this side: trace, run, save facts (and the kernel log) in
    results/NAME/SIDE (SIDE: the role, or e.g. server-after for its boot after a reboot). Both
    sides' tracers are up before `run` when READY names the handshake. What `run` returns (a
    locker still holding its lock) is kept alive with it."""
    d = f"/share/results/{name}/{side or role}"
    os.makedirs(d, exist_ok=True)
    subprocess.run(["dmesg", "-C"])
    facts = {"scenario": name, "role": role, "kernel": os.uname().release,
             "scenario_pid": {"pid": os.getpid()}}
    t = Tracer(role, d)
    if ready:
        say(f"{ready}-{role}")
        hear(f"{ready}-{'client' if role == 'server' else 'server'}")
    kept = None
    try:
        kept = run(facts)
    except Exception as e:  # the host reports it with the facts gathered so far
        facts["error"] = repr(e)
    t.stop()
    with open(f"{d}/dmesg.txt", "w") as f:
        f.write(subprocess.run(["dmesg"], capture_output=True, text=True).stdout)
    with open(f"{d}/facts.json", "w") as f:
        json.dump(facts, f, indent=1)
    log(json.dumps(facts))
    return kept


def sm_lists():
    return {d: sorted(os.listdir(f"/var/lib/nfs/{d}")) for d in ("sm", "sm.bak")}


def sh(cmd):
    subprocess.run(["sh", "-c", cmd], check=True)


def reboot(role):
    """A real reboot: qemu boots this machine again and pair-init.sh runs pair.py again."""
    say(f"{role}-rebooted")
    os.sync()
    with open("/proc/sysrq-trigger", "w") as f:  # no init to ask: reset now, as power loss
        f.write("b")
    time.sleep(600)


def server_reboot_server(facts):
    """Before: the client holds locks on keep and gone; gone is removed; the server goes down
    with lockd's locks (its next boot has none)."""
    hear("sr-held")
    facts["before"] = sm_lists()
    os.remove("/export/gone")


def server_reboot_after(facts):
    """After the reboot: nfsd starts (a new grace period), then statd's reboot notification
    to the client, whose lockd reclaims its locks: keep's is granted again, gone's cannot be.
    A server-local process is then refused keep's range (held again by the client)."""
    sh("exportfs -ra && rpc.mountd && rpc.nfsd 2")
    facts["before_notify"] = sm_lists()
    facts["sm-notify"] = notify(SERVER)
    say("sr-notified")
    hear("sr-reclaimed")
    x = Locker("/export/keep")
    facts["x"] = {"pid": x.pid, "setlk w 0 10": x.cmd("setlk w 0 10")}
    x.exit()
    say("sr-checked")
    hear("sr-done")
    facts["after"] = sm_lists()


def server_reboot_client(facts):
    a, b = Locker("/mnt/nfs/keep"), Locker("/mnt/nfs/gone")
    facts["a"] = {"pid": a.pid, "setlk w 0 10": a.cmd("setlk w 0 10")}
    facts["b"] = {"pid": b.pid, "setlk w 0 10": b.cmd("setlk w 0 10")}
    say("sr-held")
    hear("sr-notified", 600)
    facts["reclaim_line"] = kernel_line(f"failed to reclaim lock for pid {b.pid} ", 90)
    say("sr-reclaimed")
    hear("sr-checked")
    for o in (a, b):
        o.exit()
    time.sleep(2)
    say("sr-done")


def kernel_line(text, timeout):
    """The first kernel log line containing TEXT, waited for."""
    end = time.time() + timeout
    while time.time() < end:
        out = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if text in line:
                return line
        time.sleep(1)
    return None


def client_reboot_server(facts):
    """The client holds a lock and a server-local process waits behind it; the client
    reboots; its statd's notification makes lockd here drop the client's locks, and the
    waiter gets the lock."""
    hear("cr-held")
    x = Locker("/export/held")
    facts["x"] = {"pid": x.pid, "setlk w 0 100": x.cmd("setlk w 0 100")}
    x.send("setlkw w 0 100")
    facts["before"] = sm_lists()
    say("cr-waiting")
    hear("cr-notified", 600)
    facts["x"]["setlkw w 0 100"] = x.read(60)
    facts["after"] = sm_lists()
    x.exit()
    say("cr-done")


def client_reboot_client(facts):
    c = Locker("/mnt/nfs/held")
    facts["c"] = {"pid": c.pid, "setlk w 0 100": c.cmd("setlk w 0 100")}
    say("cr-held")
    hear("cr-waiting")
    facts["before"] = sm_lists()
    return c  # held into the reboot


def client_reboot_after(facts):
    """Back up: statd's records of the server; its reboot notification, sent before NFS is
    mounted as at any boot; the records after the server's acknowledgement."""
    facts["before_notify"] = sm_lists()
    facts["sm-notify"] = notify(CLIENT)
    facts["after_notify"] = sm_lists()
    time.sleep(6)  # the tracer reads statd's directories every 5 s
    mount()
    say("cr-notified")
    hear("cr-done")
    facts["after"] = sm_lists()


def notify(me):
    """This machine's reboot notification to every peer in sm/, named by its address as lockd
    monitors it; in the foreground, so the peers' acknowledgements are in when it returns."""
    return subprocess.run(["sm-notify", "-d", "-v", me]).returncode


def mount():
    """The client's NFS mount, once the server's grace period is over."""
    sh(f"mount -t nfs -o vers=3 {SERVER}:/export /mnt/nfs")
    if wait_grace("/mnt/nfs/.grace"):
        raise TimeoutError("the server's grace period never ended")
    log("nfs mounted, grace period over")


def main():
    role = sys.argv[1]
    if role == "mount":
        mount()
    elif role == "server" and not os.path.exists(f"{SYNC}/server-rebooted"):
        for f in ("vanished", "keep", "gone", "held"):
            touch(f"/export/{f}")
        scenario("out-of-sync", role, out_of_sync_server, "oos")
        scenario("server-reboot", role, server_reboot_server, "sr")
        reboot(role)
    elif role == "server":
        scenario("server-reboot", role, server_reboot_after, side="server-after")
        scenario("client-reboot", role, client_reboot_server, "cr")
        scenario("vanished-client", role, vanished_server, "vc")
    elif not os.path.exists(f"{SYNC}/client-rebooted"):
        scenario("out-of-sync", role, out_of_sync_client, "oos")
        say("oos-done")
        scenario("server-reboot", role, server_reboot_client, "sr")
        held = scenario("client-reboot", role, client_reboot_client, "cr")  # noqa: F841
        reboot(role)
    else:
        scenario("client-reboot", role, client_reboot_after, side="client-after")
        held = scenario("vanished-client", role, vanished_client, "vc")  # noqa: F841
        say("vc-kill-me")
        time.sleep(3600)  # holding v's lock until the host quits this machine's qemu
    return 0


sys.exit(main())
