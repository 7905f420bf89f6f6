#!/usr/bin/env bash
# The VM test: boots a QEMU guest (TCG) with QEMU's emulated NVMe
# controllers behind an emulated Intel IOMMU, binds them to vfio-pci inside
# and runs isonvme's binaries against them. Exits with the guest's status.
# See vmtest/README.md. Idempotent; caches under target/vmtest/.
# shellcheck disable=SC2012,SC2054,SC2317  # ls of known names; QEMU options use commas; trap handler
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# Knobs (environment).
WORK=${VMTEST_DIR:-$ROOT/target/vmtest}
TIMEOUT=${VMTEST_TIMEOUT:-600}              # whole guest run, seconds
CHECK_TIMEOUT=${VMTEST_CHECK_TIMEOUT:-300}  # one check inside the guest
SMP=${VMTEST_SMP:-4}
MEM=${VMTEST_MEM:-1G}
ISOLATED=${VMTEST_ISOLATED:-2-3}
# The guest kernel (6.1) skips io_queue (newer flag) with a notice, and with
# any flag given it no longer implies `domain`: without `domain`, /init is not
# kept off the isolated CPUs and sysfs `isolated` is empty.
ISOLCPUS_FLAGS=${VMTEST_ISOLCPUS_FLAGS:-io_queue,managed_irq,domain}
IOQPAIRS=${VMTEST_IOQPAIRS:-4}              # max_ioqpairs of the controller under test
MSIX=${VMTEST_MSIX:-5}                      # msix_qsize: admin + one per CPU
KERNEL_PKG=${VMTEST_KERNEL_PKG:-}           # default: what linux-image-amd64 depends on
ACCEL=${VMTEST_ACCEL:-tcg,thread=multi}
APPEND_EXTRA=${VMTEST_APPEND:-}
SHELL_AFTER=${VMTEST_SHELL:-0}              # 1: a shell on the console after the checks
BDF=0000:00:04.0                            # the controller under test (addr=04.0)
SERIAL=isonvme-vm-0

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'vmtest: %s\n' "$*" >&2; exit 1; }

# Phase timings, printed at the end (and on failure).
declare -a PHASES=()
phase_start=0
phase_name=""
now() { date +%s.%N; }
begin() {
    end_phase
    phase_name=$1
    phase_start=$(now)
    log "$1"
}
end_phase() {
    if [ -n "$phase_name" ]; then
        PHASES+=("$(printf '%-28s %6.1f s' "$phase_name" "$(awk -v a="$phase_start" -v b="$(now)" 'BEGIN { print b - a }')")")
        phase_name=""
    fi
}
report_timings() {
    end_phase
    printf '\n==> timings\n'
    printf '  %s\n' "${PHASES[@]}"
}
trap report_timings EXIT

# Which checks run in the guest, one per line: `name command args...`.
# Shell functions come from vmtest/checks.sh; binaries are in /bin.
DEFAULT_CHECKS="
guest-info      guest_info
vfio-bound      vfio_bound 2
vfio-probe      isonvme-vmtest vfio-probe --device $BDF --expect-serial $SERIAL
identify        identify --device $BDF
hello           hello --device $BDF --namespace 2 --lba 4096
vmtest          isonvme-vmtest all --device $BDF --namespaces 1,2 --expect-serial $SERIAL --cpus $SMP --isolated $ISOLATED --io-vectors 2
"
CHECKS=${VMTEST_CHECKS:-$DEFAULT_CHECKS}
# Guest binaries: package:binary.
BINS=(isonvme-examples:identify isonvme-examples:hello isonvme-vmtest:isonvme-vmtest)
# The modules vfio-pci needs (their dependencies are added from modules.dep).
MODULES=(irqbypass vfio vfio_iommu_type1 vfio_virqfd vfio_pci_core vfio_pci)

mkdir -p "$WORK"/{debs,run}

###############################################################################
begin "host packages"
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v depmod >/dev/null || need+=(kmod)
command -v xz >/dev/null || need+=(xz-utils)
command -v zstd >/dev/null || need+=(zstd)
command -v readelf >/dev/null || need+=(binutils)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
qemu-system-x86_64 --version | head -1

###############################################################################
begin "kernel package"
apt_opts=(-o APT::Sandbox::User=root -qq)
if [ -z "$KERNEL_PKG" ]; then
    meta() { apt-cache show --no-all-versions linux-image-amd64 2>/dev/null \
        | sed -n 's/^Depends:.*\(linux-image-[0-9][^ ,]*-amd64\).*/\1/p' | head -1; }
    KERNEL_PKG=$(meta)
    if [ -z "$KERNEL_PKG" ]; then
        apt-get update -qq || true
        KERNEL_PKG=$(meta)
    fi
fi
if [ -n "$KERNEL_PKG" ]; then
    deb=$(ls "$WORK"/debs/"${KERNEL_PKG}"_*.deb 2>/dev/null | sort -V | tail -1 || true)
    if [ -z "$deb" ]; then
        (cd "$WORK/debs" && apt-get download "${apt_opts[@]}" "$KERNEL_PKG")
        deb=$(ls "$WORK"/debs/"${KERNEL_PKG}"_*.deb | sort -V | tail -1)
    fi
else
    # No apt metadata (offline): any cached kernel will do.
    deb=$(ls "$WORK"/debs/linux-image-*-amd64_*.deb 2>/dev/null | sort -V | tail -1 || true)
    [ -n "$deb" ] || die "cannot resolve linux-image-amd64 and no kernel is cached in $WORK/debs"
fi
echo "kernel package: ${deb#"$ROOT"/}"

###############################################################################
begin "kernel unpack"
kdir=$WORK/kernel/$(basename "$deb" .deb)
if [ ! -f "$kdir/.done" ]; then
    rm -rf "$kdir"
    mkdir -p "$kdir"
    dpkg-deb -x "$deb" "$kdir/root"
    touch "$kdir/.done"
fi
kver=$(ls "$kdir/root/lib/modules" | head -1)
[ -n "$kver" ] || die "no modules in $deb"
moddir=$kdir/root/lib/modules/$kver
vmlinuz=$kdir/root/boot/vmlinuz-$kver
echo "kernel $kver"

# The package ships a bzImage; QEMU boots an uncompressed ELF vmlinux
# directly through its PVH entry (faster than the bzImage's decompressor).
# extract-vmlinux's method: find the compressed payload by its magic.
vmlinux=$kdir/vmlinux
if [ ! -s "$vmlinux" ]; then
    extract() { # magic-regex command...
        local offset
        for offset in $(LC_ALL=C grep -aobUP "$1" "$vmlinuz" | cut -d: -f1); do
            tail -c +$((offset + 1)) "$vmlinuz" | "${@:2}" > "$vmlinux.tmp" 2>/dev/null || true
            if [ "$(head -c 4 "$vmlinux.tmp" | od -An -c | tr -d ' ')" = '177ELF' ]; then
                mv "$vmlinux.tmp" "$vmlinux"
                return 0
            fi
        done
        return 1
    }
    extract '\xFD7zXZ\x00' xz -dc ||
        extract '\x28\xB5\x2F\xFD' zstd -dc ||
        extract '\x1F\x8B\x08' gzip -dc ||
        true
    rm -f "$vmlinux.tmp"
fi
if [ -s "$vmlinux" ] && readelf -n "$vmlinux" 2>/dev/null | grep -Eq '\(0x00000012\)|PHYS32_ENTRY'; then
    KERNEL_IMAGE=$vmlinux  # has XEN_ELFNOTE_PHYS32_ENTRY: PVH boot
else
    echo "no PVH-capable vmlinux could be extracted: booting the bzImage"
    KERNEL_IMAGE=$vmlinuz
fi
echo "boot image: ${KERNEL_IMAGE#"$ROOT"/}"

###############################################################################
begin "modules"
[ -f "$moddir/modules.dep" ] || depmod -b "$kdir/root" "$kver"
# Dependencies first (depth-first over modules.dep, which lists a module's
# dependencies as paths relative to $moddir).
declare -A dep_of=() seen=()
while IFS=: read -r path deps; do
    name=${path##*/}; name=${name%%.ko*}; name=${name//-/_}
    dep_of[$name]="$path:$deps"
done < "$moddir/modules.dep"
ordered=()
add_module() {
    local name=${1//-/_} entry path dep
    [ -n "${seen[$name]:-}" ] && return 0
    seen[$name]=1
    entry=${dep_of[$name]:-}
    [ -n "$entry" ] || die "module $name is not in $kver (modules.dep)"
    path=${entry%%:*}
    for dep in ${entry#*:}; do
        dep=${dep##*/}; add_module "${dep%%.ko*}"
    done
    ordered+=("$path")
}
for module in "${MODULES[@]}"; do add_module "$module"; done
printf '  %s\n' "${ordered[@]}"

###############################################################################
begin "guest binaries (musl)"
TARGET=x86_64-unknown-linux-musl
if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    rustup target add "$TARGET" || true
fi
packages=()
for bin in "${BINS[@]}"; do
    p=${bin%%:*}
    [[ " ${packages[*]} " == *" -p $p "* ]] || packages+=(-p "$p")
done
if rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    cargo build --release --locked --target "$TARGET" "${packages[@]}" --bins
else
    echo "the musl target is not available: static glibc build instead"
    TARGET=x86_64-unknown-linux-gnu
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo build --release --locked --target "$TARGET" "${packages[@]}" --bins
fi
bindir=${CARGO_TARGET_DIR:-$ROOT/target}/$TARGET/release
for bin in "${BINS[@]}"; do
    f=$bindir/${bin#*:}
    [ -x "$f" ] || die "$f was not built"
    if readelf -l "$f" | grep -q 'Requesting program interpreter'; then
        die "$f is dynamically linked; the guest has no libc"
    fi
done

###############################################################################
begin "initramfs"
initrd=$WORK/initramfs.cpio
stage=$WORK/initramfs
rm -rf "$stage"
mkdir -p "$stage"/{bin,dev,proc,sys,tmp,vmtest,lib/modules}
cp /bin/busybox "$stage/bin/busybox"
readelf -l "$stage/bin/busybox" | grep -q 'program interpreter' && die "/bin/busybox is not static (install busybox-static)"
cp "$ROOT/vmtest/init" "$stage/init"
chmod 755 "$stage/init"
cp "$ROOT/vmtest/checks.sh" "$stage/vmtest/checks.sh"
: > "$stage/vmtest/modules"
for path in "${ordered[@]}"; do
    name=${path##*/}
    case "$name" in # busybox insmod takes plain .ko files
        *.ko.xz) xz -dc "$moddir/$path" > "$stage/lib/modules/${name%.xz}"; name=${name%.xz} ;;
        *.ko.zst) zstd -qdc "$moddir/$path" > "$stage/lib/modules/${name%.zst}"; name=${name%.zst} ;;
        *.ko.gz) gzip -dc "$moddir/$path" > "$stage/lib/modules/${name%.gz}"; name=${name%.gz} ;;
        *) cp "$moddir/$path" "$stage/lib/modules/$name" ;;
    esac
    echo "/lib/modules/$name" >> "$stage/vmtest/modules"
done
for bin in "${BINS[@]}"; do cp "$bindir/${bin#*:}" "$stage/bin/"; done
printf '%s\n' "$CHECKS" > "$stage/vmtest/checks"
printf 'CHECK_TIMEOUT=%s\nSHELL_AFTER=%s\n' "$CHECK_TIMEOUT" "$SHELL_AFTER" > "$stage/vmtest/config"
(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) > "$initrd"
echo "initramfs: $(du -h "$initrd" | cut -f1)"

###############################################################################
begin "boot and run the guest"
run=$WORK/run
console=$run/console.log
exitlog=$run/exit.log
rm -f "$console" "$exitlog" "$run"/*.img
# Namespaces: sparse files, fresh each run, different sizes so a mix-up shows.
truncate -s 64M "$run/nvme0n1.img"
truncate -s 32M "$run/nvme0n2.img"
truncate -s 32M "$run/nvme1n1.img"
cmdline="console=ttyS0 intel_iommu=on isolcpus=$ISOLCPUS_FLAGS,$ISOLATED"
cmdline+=" hugepages=64 panic=-1 $APPEND_EXTRA"
if [ "$SHELL_AFTER" = 1 ]; then
    console_args=(-serial mon:stdio)
else
    console_args=(-chardev stdio,id=console,signal=off -serial chardev:console)
fi
qemu=(
    qemu-system-x86_64
    -nodefaults -no-user-config -display none -no-reboot
    -machine q35 -accel "$ACCEL" -cpu max -smp "$SMP" -m "$MEM"
    # The IOMMU must come before the devices it translates for.
    -device intel-iommu,intremap=on
    -kernel "$KERNEL_IMAGE" -initrd "$initrd" -append "$cmdline"
    # ttyS0, the console: printed and logged (interactive: QEMU's monitor
    # multiplexed in, Ctrl-A X quits).
    "${console_args[@]}"
    -serial "file:$exitlog"                                       # ttyS1
    # The controller under test: 2 namespaces, 4 I/O queue pairs, 5 vectors.
    -drive "file=$run/nvme0n1.img,if=none,id=nvme0n1,format=raw"
    -drive "file=$run/nvme0n2.img,if=none,id=nvme0n2,format=raw"
    -device "nvme,id=nvme0,addr=04.0,serial=$SERIAL,max_ioqpairs=$IOQPAIRS,msix_qsize=$MSIX"
    -device nvme-ns,bus=nvme0,drive=nvme0n1,nsid=1
    -device nvme-ns,bus=nvme0,drive=nvme0n2,nsid=2
    # A second controller, for comparisons with the kernel's nvme driver
    # later (the initramfs has no nvme module: /init binds it to vfio-pci).
    -drive "file=$run/nvme1n1.img,if=none,id=nvme1n1,format=raw"
    -device nvme,id=nvme1,addr=05.0,serial=isonvme-vm-1,max_ioqpairs=4,msix_qsize=5
    -device nvme-ns,bus=nvme1,drive=nvme1n1,nsid=1
)
printf '%q ' "${qemu[@]}" > "$run/qemu-command"
echo >> "$run/qemu-command"
echo "console: ${console#"$ROOT"/} (command in ${run#"$ROOT"/}/qemu-command)"
set +e
if [ "$SHELL_AFTER" = 1 ]; then
    "${qemu[@]}"
    qemu_status=$?
else
    timeout -k 10 "$TIMEOUT" "${qemu[@]}" < /dev/null 2>&1 | tee "$console"
    qemu_status=${PIPESTATUS[0]}
fi
set -e
end_phase

guest_status=$(grep -ao 'VMTEST_EXIT=[0-9]*' "$exitlog" 2>/dev/null | tail -1 | cut -d= -f2 || true)
if [ -z "$guest_status" ]; then
    if [ "$qemu_status" -eq 124 ] || [ "$qemu_status" -eq 137 ]; then
        echo "vmtest: the guest did not finish within ${TIMEOUT} s (VMTEST_TIMEOUT)" >&2
    else
        echo "vmtest: the guest reported no exit status (QEMU exited with $qemu_status): see $console" >&2
    fi
    exit 125
fi
if [ "$guest_status" -ne 0 ]; then
    echo "vmtest: FAILED: the guest's checks exited with $guest_status (console: $console)" >&2
else
    echo "vmtest: PASSED"
fi
exit "$guest_status"
