#!/bin/bash
# Two-guest lab init (no systemd): this guest is the NFS server (10.0.9.1) or the client
# (10.0.9.2), by lab.role= on its kernel command line, on a private network to the other
# guest's qemu. pair.py runs the scenarios, each side stepping through flags in /share/sync;
# results go to /share/results/SCENARIO/ROLE; then power off. A scenario reboots a machine
# for real (qemu boots it again): this script then runs again and pair.py goes on.
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
# This guest's boot after a reboot the scenarios asked for (pair.py goes on from there).
AGAIN=; [ -e /share/sync/$ROLE-rebooted ] && AGAIN=1 && echo "LAB: $ROLE booted again"
# Names for both machines (the rootfs is shared: this boot's own copy of /etc/hosts).
printf '127.0.0.1 localhost\n10.0.9.1 labserver\n10.0.9.2 labclient\n' > /run/hosts
mount --bind /run/hosts /etc/hosts
modprobe lockd nlm_grace_period=15 && modprobe -a nfs nfsv3 || { echo "LAB: modprobe failed"; exit 1; }
# statd's records (sm/, sm.bak/, state) survive this machine's reboot: kept in the share.
S=/share/state-$ROLE
[ -d $S ] || { mkdir -p $S && cp -a /var/lib/nfs/. $S/ && rm -rf $S/sm*/*; }
mount --bind $S /var/lib/nfs && touch /run/exports && mount --bind /run/exports /etc/exports
mount -t rpc_pipefs sunrpc /var/lib/nfs/rpc_pipefs
rpcbind -w
# Reboot notification (sm-notify) is pair.py's, named by address as lockd monitors it.
rpc.statd --no-notify
if [ $ROLE = server ]; then
    modprobe -a nfsd virtio_blk ext4 || { echo "LAB: modprobe nfsd failed"; exit 1; }
    mount -t nfsd nfsd /proc/fs/nfsd
    echo 10 > /proc/fs/nfsd/nfsv4leasetime; echo 10 > /proc/fs/nfsd/nfsv4gracetime
    # The export is a disk, so it too survives the reboot.
    [ -n "$AGAIN" ] || mkfs.ext4 -q -F /dev/vda || { echo "LAB: mkfs failed"; exit 1; }
    mount /dev/vda /export || { echo "LAB: cannot mount the export"; exit 1; }
    echo '/export 10.0.9.2(rw,sync,no_subtree_check,no_root_squash,fsid=1)' > /etc/exports
    # After the reboot pair.py starts nfsd itself, once its tracer is up for the reclaims.
    [ -n "$AGAIN" ] || { exportfs -ra; rpc.mountd; rpc.nfsd 2; touch /share/sync/server-up; }
else
    # Clock skew: the client's wall clock runs five minutes ahead of the server's.
    date -s @$(( $(date +%s) + 300 )) > /dev/null
    hear server-up || exit 1
    # After the reboot pair.py mounts, once statd has sent its reboot notification.
    [ -n "$AGAIN" ] || python3 /share/pair.py mount || { echo "LAB: nfs mount failed"; exit 1; }
fi
python3 /share/pair.py $ROLE > /share/results/$ROLE${AGAIN:+-again}.log 2>&1 || echo "LAB: pair.py $ROLE failed"
echo "LAB: done"
