"""The guest's /init: mount the basics and the 9p share, run the host's script, power off."""

from __future__ import annotations

#: Marker the guest prints as its last line; the host trusts nothing else about the exit.
EXIT_MARKER = "NETWEAVE-VMBED-EXIT"

INIT_SCRIPT = f"""#!/bin/busybox sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm /dev/pts /root
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs tmpfs /dev/shm
mount -t bpf bpf /sys/fs/bpf
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
while read -r mod; do insmod "$mod" || echo "vmbed: insmod $mod failed"; done < /etc/vmbed/modules
ip link set lo up 2>/dev/null
run=""; limit=600
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        nwrun=*) run="${{arg#nwrun=}}" ;;
        nwtimeout=*) limit="${{arg#nwtimeout=}}" ;;
    esac
done
rc=125
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose work /share; then
    if [ -n "$run" ] && [ -f "/share/$run/run.sh" ]; then
        # The watchdog that busybox timeout forks keeps init's cwd (/), so umount works.
        timeout "$limit" sh -c 'cd /share && exec sh "$0"' "/share/$run/run.sh" </dev/null
        rc=$?
        echo "$rc" > "/share/$run/rc"
    else
        echo "vmbed: no run script /share/$run/run.sh"
        rc=126
    fi
    sync
    umount /share
else
    echo "vmbed: mounting the 9p share failed"
fi
echo "{EXIT_MARKER} rc=$rc"
poweroff -f
"""
