#!/bin/bash
# Lab guest init (no systemd): NFSv3 with statd over loopback, a short grace period, then the
# scenarios with lockd-trace recording; results go to /share/results; then power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc 2>/dev/null; mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs dev /dev 2>/dev/null; mkdir -p /dev/pts; mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp
mkdir -p /run/rpcbind /var/lib/nfs/rpc_pipefs /share
echo 1 > /proc/sys/kernel/sysrq
hostname labguest; ip link set lo up
off() { sync; echo o > /proc/sysrq-trigger; sleep 30; }
trap off EXIT
echo "LAB: kernel $(uname -r)"
mount -t tracefs nodev /sys/kernel/tracing
# Until N lines of FILE match PATTERN (2 min at most).
wait_for() { local i; for i in $(seq 240); do [ "$(grep -c "$2" $1)" -ge ${3:-1} ] && return 0; sleep 0.5; done
    echo "LAB: no '$2' (x${3:-1}) in $1"; return 1; }
# Arguments every lockd-trace here gets (5.10: --btf-dir, lockd's BTF made on the host).
TA=$(cat /share/tracer-args.txt)
metrics() { python3 -c 'import urllib.request as u; print(u.urlopen("http://127.0.0.1:9464/metrics").read().decode())'; }
# A monitor started before lockd is loaded follows its load, unload and reload, then the
# NLM calls of the grace-period wait below.
B=/share/results/boot; mkdir -p $B
/share/lockd-trace monitor $TA --json -w $B/trace.ldt > $B/findings.jsonl 2> $B/monitor.log & M=$!
wait_for $B/monitor.log tracing
# A 10 s grace period instead of 90 s: lock requests are refused until it ends.
# Each change is waited for before the next, so the monitor must say every one exactly once.
modprobe lockd nlm_grace_period=10 && wait_for $B/monitor.log "lockd loaded" 1 ||
    { echo "LAB: modprobe lockd failed"; exit 1; }
for i in $(seq $(cat /share/reloads.txt)); do
    rmmod lockd && wait_for $B/monitor.log "lockd unloaded" $i &&
        modprobe lockd nlm_grace_period=10 && wait_for $B/monitor.log "lockd loaded" $((i + 1)) ||
        { echo "LAB: lockd reload $i not followed"; break; }
done
modprobe -a nfsd nfs nfsv3 || { echo "LAB: modprobe failed"; exit 1; }
# The rootfs is shared by guests running at once: NFS's state and exports live in this boot's
# tmpfs, and statd's records (sm/, sm.bak/) start clean.
mkdir -p /run/nfs-state && cp -a /var/lib/nfs/. /run/nfs-state/ && rm -rf /run/nfs-state/sm*/*
mount --bind /run/nfs-state /var/lib/nfs && touch /run/exports && mount --bind /run/exports /etc/exports
mount -t rpc_pipefs sunrpc /var/lib/nfs/rpc_pipefs
mount -t nfsd nfsd /proc/fs/nfsd
echo 10 > /proc/fs/nfsd/nfsv4leasetime; echo 10 > /proc/fs/nfsd/nfsv4gracetime
rpcbind -w
rpc.statd --no-notify
mount -t tmpfs -o size=64m tmpfs /export
echo '/export 127.0.0.1(rw,sync,no_subtree_check,no_root_squash,fsid=1)' > /etc/exports
exportfs -ra; rpc.mountd; rpc.nfsd 2
mount -t nfs -o vers=3 127.0.0.1:/export /mnt/nfs || { echo "LAB: nfs mount failed"; exit 1; }
echo "LAB: nfs mounted"
python3 /share/scenarios.py --wait-grace /mnt/nfs/.grace || { echo "LAB: grace never ended"; exit 1; }
echo "LAB: grace period over"
# How this kernel takes each probe, with the lab's arguments and without them.
/share/lockd-trace probes --json $TA > $B/probes.json 2> $B/probes.err
/share/lockd-trace probes --json --monitor $TA > $B/probes-monitor.json 2>> $B/probes.err
[ -n "$TA" ] && /share/lockd-trace probes --json > $B/probes-bare.json 2>> $B/probes.err
metrics > $B/metrics.txt; kill -INT $M; wait $M; echo $? > $B/monitor.exit
# A killed agent cannot remove its kretprobe events: the next one to start (the first
# scenario's tracer, or the one started after the scenarios if none had one) must.
/share/lockd-trace monitor $TA --no-metrics > /dev/null 2> $B/killed.log & K=$!
wait_for $B/killed.log tracing; echo $K > $B/killed.pid; kill -9 $K; wait $K 2> /dev/null
cat /sys/kernel/tracing/kprobe_events > $B/kprobe-events-killed.txt; NEXT=1
for s in $(cat /share/scenarios.txt); do
    d=/share/results/$s; mkdir -p $d; dmesg -C
    if [ $s = bench ]; then
        python3 /share/scenarios.py bench $d > $d/scenario.log 2>&1; echo $? > $d/exit
        echo "LAB: scenario $s exit $(cat $d/exit)"; continue
    fi
    # The session explained (JSON lines) and recorded to a trace file: by `live`, or by
    # `monitor` (findings only; the host exports the trace file's events).
    a="--json --blocked-after 20s --unanswered-after 20s -w $d/trace.ldt"
    if [ "$(cat /share/tracer.txt)" = monitor ]; then
        touch $d/monitor; /share/lockd-trace monitor $TA $a > $d/findings.jsonl 2> $d/tracer.log & T=$!
    else
        /share/lockd-trace live $TA $a > $d/trace.jsonl 2> $d/tracer.log & T=$!
    fi
    logs=$d/tracer.log; P=
    if [ $s = out-of-sync ]; then
        # The same run recorded as two sides, to be merged on the host: the client's
        # processes, and the server's lockd plus the admin's write to /proc/fs/nfsd.
        /share/lockd-trace record $TA --comm locker -o $d/client.ldt 2> $d/client.log & P="$P $!"
        /share/lockd-trace record $TA --comm lockd,python3 -o $d/server.ldt 2> $d/server.log & P="$P $!"
        logs="$logs $d/client.log $d/server.log"
    fi
    for l in $logs; do
        wait_for $l tracing || echo "tracer did not start ($l)" >> $d/tracer.failed
    done
    if [ -n "$NEXT" ]; then
        echo $T > $B/next.pid; cat /sys/kernel/tracing/kprobe_events > $B/kprobe-events-next.txt
        NEXT=
    fi
    python3 /share/scenarios.py $s $d > $d/scenario.log 2>&1; echo $? > $d/exit
    sleep 2; [ -e $d/monitor ] && metrics > $d/metrics.txt
    kill -INT $T $P; wait $T; echo $? > $d/tracer.exit; wait
    dmesg > $d/dmesg.txt
    echo "LAB: scenario $s exit $(cat $d/exit)"
done
# No scenario started a tracer (the benchmark's boot): one starts here to remove the killed
# monitor's events.
if [ -n "$NEXT" ]; then
    /share/lockd-trace monitor $TA --no-metrics > /dev/null 2> $B/next.log & K=$!
    wait_for $B/next.log tracing; echo $K > $B/next.pid
    cat /sys/kernel/tracing/kprobe_events > $B/kprobe-events-next.txt; kill -INT $K; wait $K
fi
# Every tracer has exited: none may have left a kprobe event behind.
cat /sys/kernel/tracing/kprobe_events > $B/kprobe-events-left.txt
echo "LAB: done"
