#!/bin/bash
# Two-guest lab init (no systemd): this guest is the NFS server (10.0.9.1) or the client
# (10.0.9.2), by lab.role= on its kernel command line, on a private network to the other
# guest's qemu. pair.py runs the scenarios, each side stepping through flags in /share/sync;
# results go to /share/results/SCENARIO/ROLE; then power off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc 2>/dev/null; mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs dev /dev 2>/dev/null; mkdir -p /dev/pts; mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp
mkdir -p /run/rpcbind /var/lib/nfs/rpc_pipefs
echo 1 > /proc/sys/kernel/sysrq
off() { sync; echo o > /proc/sysrq-trigger; sleep 30; }
trap off EXIT
ROLE=$(sed -n 's/.*lab\.role=\([a-z]*\).*/\1/p' /proc/cmdline)
case $ROLE in server) ME=1 ;; client) ME=2 ;; *) echo "LAB: no lab.role"; exit 1 ;; esac
echo "LAB: $ROLE, kernel $(uname -r)"
hostname lab$ROLE; ip link set lo up
mount -t tracefs nodev /sys/kernel/tracing
modprobe virtio_net || { echo "LAB: no virtio_net"; exit 1; }
DEV=$(ls /sys/class/net | grep -v '^lo$' | head -1)
ip addr add 10.0.9.$ME/24 dev $DEV && ip link set $DEV up || { echo "LAB: no network"; exit 1; }
# Until FILE exists (5 min at most): the other guest's step.
hear() { local i; for i in $(seq 600); do [ -e /share/sync/$1 ] && return 0; sleep 0.5; done
    echo "LAB: never heard $1"; return 1; }
modprobe lockd nlm_grace_period=10 && modprobe -a nfs nfsv3 || { echo "LAB: modprobe failed"; exit 1; }
# The rootfs is shared: NFS state lives in this boot's tmpfs, statd's records start clean.
mkdir -p /run/nfs-state && cp -a /var/lib/nfs/. /run/nfs-state/ && rm -rf /run/nfs-state/sm*/*
mount --bind /run/nfs-state /var/lib/nfs && touch /run/exports && mount --bind /run/exports /etc/exports
mount -t rpc_pipefs sunrpc /var/lib/nfs/rpc_pipefs
rpcbind -w
rpc.statd --no-notify
if [ $ROLE = server ]; then
    modprobe nfsd || { echo "LAB: modprobe nfsd failed"; exit 1; }
    mount -t nfsd nfsd /proc/fs/nfsd
    echo 10 > /proc/fs/nfsd/nfsv4leasetime; echo 10 > /proc/fs/nfsd/nfsv4gracetime
    mount -t tmpfs -o size=64m tmpfs /export
    echo '/export 10.0.9.2(rw,sync,no_subtree_check,no_root_squash,fsid=1)' > /etc/exports
    exportfs -ra; rpc.mountd; rpc.nfsd 2
    touch /share/sync/server-up
else
    # Clock skew: the client's wall clock runs five minutes ahead of the server's.
    date -s @$(( $(date +%s) + 300 )) > /dev/null
    hear server-up || exit 1
    mount -t nfs -o vers=3 10.0.9.1:/export /mnt/nfs || { echo "LAB: nfs mount failed"; exit 1; }
    python3 /share/scenarios.py --wait-grace /mnt/nfs/.grace || { echo "LAB: grace never ended"; exit 1; }
    echo "LAB: nfs mounted, grace period over"
fi
python3 /share/pair.py $ROLE > /share/results/$ROLE.log 2>&1 || echo "LAB: pair.py $ROLE failed"
echo "LAB: done"
