#!/bin/sh
# A shell stage 1 for a NixOS netboot image, doing what nixpkgs' stage-1-init.sh does (and what
# netboot.nix's boot.postBootCommands then does in stage 2) with busybox and kmod's modprobe:
# the baseline netboot-init is measured against. The @...@ values are filled in at build time.

export PATH=/bin:/sbin
targetRoot=@targetRoot@
stage2Init=@stage2Init@

fail() {
    echo "stage-1 failed: $*"
    poweroff -f
}

info() {
    echo "<6>stage-1: $*" > /dev/kmsg
}

# Mount special file systems.
mkdir -p /proc /sys /dev /run /etc /tmp
mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs -o mode=0755 devtmpfs /dev || fail "mount /dev"
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=3,mode=0620 devpts /dev/pts
mount -t tmpfs -o mode=0755,size=25% tmpfs /run || fail "mount /run"
ln -sf /proc/mounts /etc/mtab
echo /sbin/modprobe > /proc/sys/kernel/modprobe

# Process the kernel command line.
for o in $(cat /proc/cmdline); do
    case $o in
        init=*) stage2Init=${o#init=} ;;
    esac
done

# Load the required kernel modules.
for i in @kernelModules@; do
    info "loading module $i..."
    modprobe $i || fail "modprobe $i"
done

# Mount the file systems, in order.
info "mounting file systems"
@mountCommands@

# Move the special file systems into the new root, as stage-1-init.sh does before switch_root.
for d in proc sys dev run; do
    mkdir -p $targetRoot/$d
    mount --move /$d $targetRoot/$d || fail "mount --move /$d"
done

# What netboot.nix runs after boot: register the store, mark the system, set the profile.
env -i USER=root HOME=/homeless-shelter NIX_REMOTE=local /bin/chroot $targetRoot @nixStore@ --load-db \
    < $targetRoot@registrationFile@ || fail "nix-store --load-db"
mkdir -p $targetRoot/etc
touch $targetRoot/etc/NIXOS
mkdir -p $targetRoot/nix/var/nix/profiles
ln -sfn @toplevel@ $targetRoot/nix/var/nix/profiles/system-1-link
ln -sfn system-1-link $targetRoot/nix/var/nix/profiles/system

exec env -i /bin/switch_root $targetRoot $stage2Init "$@"
