#!/usr/bin/env python3
"""Two-guest scenarios, run on both guests: `pair.py server` or `pair.py client`. The sides
step each other through flag files in /share/sync (the host's harness, not the network under
test); each traces itself (server: monitor -w, client: record) into
/share/results/SCENARIO/ROLE with its facts. Usage: pair.py ROLE"""
import json, os, subprocess, sys, time, urllib.request

sys.path.insert(0, "/share")
from scenarios import Locker, local_waiter, log, touch  # noqa: E402

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
    """This side's tracer: the server's monitor (findings as JSON lines, trace file with -w),
    the client's recorder."""

    def __init__(self, role, d):
        self.d, self.monitor = d, role == "server"
        extra = open(f"/share/tracer-args-{role}.txt").read().split()
        if self.monitor:
            args = ["monitor", "--json", "--blocked-after", "20s", "--unanswered-after", "20s",
                    "-w", f"{d}/trace.ldt"]
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


def scenario(name, role, run, ready):
    """One scenario on this side: trace, run, save facts (and the kernel log). What `run`
    returns (a locker still holding its lock) is kept alive with it."""
    d = f"/share/results/{name}/{role}"
    os.makedirs(d, exist_ok=True)
    subprocess.run(["dmesg", "-C"])
    facts = {"scenario": name, "role": role, "kernel": os.uname().release,
             "scenario_pid": {"pid": os.getpid()}}
    t = Tracer(role, d)
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


def main():
    role = sys.argv[1]
    if role == "server":
        touch("/export/vanished")
        scenario("out-of-sync", role, out_of_sync_server, "oos")
        scenario("vanished-client", role, vanished_server, "vc")
    else:
        scenario("out-of-sync", role, out_of_sync_client, "oos")
        say("oos-done")
        held = scenario("vanished-client", role, vanished_client, "vc")  # noqa: F841
        say("vc-kill-me")
        time.sleep(3600)  # holding v's lock until the host quits this machine's qemu
    return 0


sys.exit(main())
