#!/bin/busybox sh
# Lab initramfs: load virtio/9p, mount the host's rootfs over 9p, hand over to the lab init.
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs dev /dev
. /insmods.sh
o=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o $o root /newroot && mount -t 9p -o $o share /newroot/share || {
    echo "LAB: cannot mount the rootfs or the share over 9p"; poweroff -f; }
exec switch_root /newroot /bin/bash /share/guest-init.sh
