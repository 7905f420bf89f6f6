#!/usr/bin/env bash
# The VM test: boots a QEMU guest (TCG) with QEMU's emulated NVMe
# controllers behind an emulated Intel IOMMU, binds one to vfio-pci inside
# and runs isonvme's binaries against it; then boots a second, short guest
# with no IOMMU at all, where isonvme runs in VFIO's no-IOMMU mode (with a
# vfio.ko rebuilt to have it: Debian's kernels leave it out). Exits with the
# first failing guest's status. See vmtest/README.md. Idempotent; caches
# under target/vmtest/.
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
# Which guests: intel (QEMU's emulated VT-d, VFIO type1) and none (no IOMMU,
# vfio's enable_unsafe_noiommu_mode, isonvme's `,noiommu`). Both by default;
# only the one whose check list is given, if only one is.
if [ -n "${VMTEST_IOMMU:-}" ]; then
    iommu_modes=$VMTEST_IOMMU
elif [ -n "${VMTEST_CHECKS:-}" ] && [ -z "${VMTEST_NOIOMMU_CHECKS:-}" ]; then
    iommu_modes=intel
elif [ -z "${VMTEST_CHECKS:-}" ] && [ -n "${VMTEST_NOIOMMU_CHECKS:-}" ]; then
    iommu_modes=none
else
    iommu_modes="intel none"
fi
want_intel=0 want_none=0
for mode in ${iommu_modes//,/ }; do
    case "$mode" in
        intel) want_intel=1 ;;
        none) want_none=1 ;;
        both) want_intel=1 want_none=1 ;;
        *) echo "vmtest: VMTEST_IOMMU must be intel, none or both, not '$iommu_modes'" >&2; exit 2 ;;
    esac
done
MODES=()
[ "$want_intel" = 1 ] && MODES+=(intel)
[ "$want_none" = 1 ] && MODES+=(none)
[ ${#MODES[@]} -gt 0 ] || { echo "vmtest: VMTEST_IOMMU names no guest" >&2; exit 2; }
SHELL_AFTER=${VMTEST_SHELL:-0}              # 1: a shell on the console after the checks
BENCH_CPU=${VMTEST_BENCH_CPU:-${ISOLATED%%[-,]*}}  # bench-qd1's job CPU: the first isolated one
BENCH_RUNTIME=${VMTEST_BENCH_RUNTIME:-3s}   # bench-qd1: each side, after a 1 s ramp
BDF=0000:00:04.0                            # the controller under test (addr=04.0), vfio-pci
SERIAL=isonvme-vm-0
KBDF=0000:00:05.0                           # its twin for the kernel's nvme driver (addr=05.0)
KSERIAL=isonvme-vm-1
HBDF=0000:01:00.0                           # the hot-unplugged one, behind a PCIe root port (intel guest)
HSERIAL=isonvme-vm-2

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'vmtest: %s\n' "$*" >&2; exit 1; }

label() { if [ "$1" = none ]; then echo no-IOMMU; else echo intel-IOMMU; fi; }
guest_name() { echo "$(label "$1") guest"; }

# Phase timings and the guests' results, printed at the end (and on failure).
declare -a PHASES=()
declare -A GUEST_RESULT=()
phase_start=0
phase_name=""
now() { date +%s.%N; }
run_start=$(now)
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { print b - a }'; }
begin() {
    end_phase
    phase_name=$1
    phase_start=$(now)
    log "$1"
}
end_phase() {
    if [ -n "$phase_name" ]; then
        PHASES+=("$(printf '%-28s %6.1f s' "$phase_name" "$(elapsed "$phase_start")")")
        phase_name=""
    fi
}
report() {
    end_phase
    printf '\n==> timings\n'
    printf '  %s\n' "${PHASES[@]}"
    printf '  %-28s %6.1f s\n' total "$(elapsed "$run_start")"
    printf '\n==> guests\n'
    for mode in "${MODES[@]}"; do
        printf '  %-28s %s\n' "$(guest_name "$mode")" "${GUEST_RESULT[$mode]:-not run}"
    done
}
trap report EXIT

# Which checks run in the guest, one per line: `name command args...`.
# Shell functions come from vmtest/checks.sh; binaries are in /bin.
DEFAULT_CHECKS="
guest-info      guest_info
vfio-bound      vfio_bound $BDF
kernel-nvme     kernel_nvme $KBDF
vfio-probe      isonvme-vmtest vfio-probe --device $BDF --expect-serial $SERIAL
identify        identify --device $BDF
hello           hello --device $BDF --namespace 2 --lba 4096
refuse-noiommu  expect_fail 'behind a real IOMMU' identify --device $BDF,noiommu
refuse-iommufd  expect_fail 'has no VFIO cdev' identify --device $BDF,iommufd
vmtest          isonvme-vmtest all --device $BDF --namespaces 1,2 --expect-serial $SERIAL --cpus $SMP --isolated $ISOLATED --io-vectors 2
bench-qd1       bench_qd1 $BDF $KBDF $BENCH_CPU $BENCH_RUNTIME
bench-polled    bench_polled $BDF $KBDF $BENCH_RUNTIME
fio-engine      fio_engine $BDF
reset           isonvme-vmtest reset --device $BDF --namespaces 1 --cpus $SMP --isolated $ISOLATED --resets 5
hot-unplug      hot_unplug $HBDF
"
CHECKS=${VMTEST_CHECKS:-$DEFAULT_CHECKS}
# The no-IOMMU guest: the controller sits in a VFIO no-IOMMU group; isonvme
# refuses it unless asked (`,noiommu`), and works when asked (interrupts
# included: latency runs in interrupt mode).
DEFAULT_NOIOMMU_CHECKS="
guest-info      guest_info
vfio-noiommu    vfio_noiommu_bound $BDF
refuse-implicit expect_fail 'is in VFIO no-IOMMU group' identify --device $BDF
identify        identify --device $BDF,noiommu
hello           hello --device $BDF,noiommu --namespace 2 --lba 4096
latency         latency --device $BDF,noiommu --time 2s
"
NOIOMMU_CHECKS=${VMTEST_NOIOMMU_CHECKS:-$DEFAULT_NOIOMMU_CHECKS}
# Guest binaries: package:binary.
BINS=(isonvme-examples:identify isonvme-examples:hello isonvme-examples:latency
      isonvme-vmtest:isonvme-vmtest isonvme-bench:isonvme-bench)
# The modules vfio-pci needs, and nvme for the kernel-driven twin (their
# dependencies, nvme_core and the T10 PI/CRC helpers, come from modules.dep).
MODULES=(irqbypass vfio vfio_iommu_type1 vfio_virqfd vfio_pci_core vfio_pci nvme)

mkdir -p "$WORK"/debs

apt_opts=(-o APT::Sandbox::User=root -qq)
export DEBIAN_FRONTEND=noninteractive
# Installs packages (after an apt-get update: a fresh machine has no lists).
apt_install() {
    echo "installing $*"
    apt-get update -qq || echo "vmtest: apt-get update failed; trying the install anyway" >&2
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null ||
        die "apt-get install $* failed"
}
# Downloads package $1 (`name` or `name=version`) into $WORK/debs, through
# a temporary directory so that an interrupted download leaves no partial
# .deb behind; if apt does not know it, after an apt-get update. $2 says
# what it is for, in the error.
apt_download() {
    local tmp=$WORK/debs/.download
    rm -rf "$tmp"
    mkdir -p "$tmp"
    if ! (cd "$tmp" && apt-get download "${apt_opts[@]}" "$1"); then
        echo "apt-get download $1 failed: apt-get update, then once more"
        apt-get update -qq || true
        (cd "$tmp" && apt-get download "${apt_opts[@]}" "$1") ||
            die "cannot download $1 ($2); check the network and the apt sources (apt-cache policy ${1%%=*})"
    fi
    mv "$tmp"/*.deb "$WORK/debs/"
    rmdir "$tmp"
}

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
if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi
qemu-system-x86_64 --version | head -1

###############################################################################
begin "kernel package"
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
        apt_download "$KERNEL_PKG" "the guest kernel"
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
kconfig=$kdir/root/boot/config-$kver
echo "kernel $kver"

# The package ships a bzImage; QEMU boots an uncompressed ELF vmlinux
# directly through its PVH entry (faster than the bzImage's decompressor).
# extract-vmlinux's method: find the compressed payload by its magic.
vmlinux=$kdir/vmlinux
if [ ! -s "$vmlinux" ]; then
    extract() { # magic-regex command...
        local offset
        # shellcheck disable=SC2013  # byte offsets, one per line
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
# The no-IOMMU guest needs vfio.ko with CONFIG_VFIO_NOIOMMU, which Debian's
# kernels leave off. It is rebuilt from the same kernel version's source,
# headers and kbuild packages (unpacked here, never installed): the same
# version and configuration, so the vermagic and the CRCs of the symbols it
# exports match and the packaged vfio_pci_core, vfio_iommu_type1, ... load
# against it. Cached next to the unpacked kernel; sets NOIOMMU_KO ("" when
# the packaged vfio.ko has the mode already).
NOIOMMU_KO=""

# Whether $1 is a usable no-IOMMU vfio.ko for this kernel (vfio.ko $2 is the
# packaged one); prints why not.
vfio_ko_ok() {
    local want have
    want=$(modinfo -F vermagic "$2") have=$(modinfo -F vermagic "$1" 2>/dev/null || true)
    if [ "$have" != "$want" ]; then
        echo "$1: vermagic '$have', not '$want'"
        return 1
    fi
    if ! modinfo -F parm "$1" | grep -q '^enable_unsafe_noiommu_mode:'; then
        echo "$1: no enable_unsafe_noiommu_mode parameter"
        return 1
    fi
}

noiommu_vfio() {
    if grep -qx 'CONFIG_VFIO_NOIOMMU=y' "$kconfig"; then
        echo "the packaged vfio.ko has CONFIG_VFIO_NOIOMMU"
        return 0
    fi
    grep -qx 'CONFIG_VFIO=m' "$kconfig" || die "vfio is not a module in $kver: no rebuilt vfio.ko can replace it"
    local packaged=$moddir/${dep_of[vfio]%%:*}
    local cached=$kdir/vfio-noiommu.ko
    if [ -s "$cached" ] && vfio_ko_ok "$cached" "$packaged"; then
        NOIOMMU_KO=$cached
        echo "cached: ${NOIOMMU_KO#"$ROOT"/}"
        return 0
    fi
    rm -f "$cached"

    local version series srcpkg cc build root headers src p f deps
    version=$(dpkg-deb -f "$deb" Version)            # 6.1.192-2
    series=$(echo "$kver" | cut -d. -f1-2)           # 6.1
    srcpkg=linux-source-$series
    echo "rebuilding vfio.ko of $kver ($version) with CONFIG_VFIO_NOIOMMU"

    # The packages, at the kernel's exact version: the headers, what they
    # depend on of the same source (the common headers, kbuild), and the
    # source (only its drivers/vfio is kept, next to the unpacked kernel).
    local debs=()
    fetch() { # package: its .deb at $version, downloaded if not cached
        f=$(ls "$WORK/debs/${1}_${version}"_*.deb 2>/dev/null | head -1 || true)
        if [ -z "$f" ]; then
            echo "downloading $1=$version"
            apt_download "$1=$version" "the guest kernel's exact version, to rebuild vfio.ko for the no-IOMMU guest; if the archive no longer has it, remove ${WORK#"$ROOT"/}/debs/linux-image-* to move to the current kernel, or run with VMTEST_IOMMU=intel"
            f=$(ls "$WORK/debs/${1}_${version}"_*.deb | head -1)
        fi
        debs+=("$f")
    }
    fetch "linux-headers-$kver"
    for p in $(dpkg-deb -f "${debs[0]}" Depends | tr ',' '\n' | sed 's/^ *//; s/[ (|].*//'); do
        case "$p" in linux-headers-*|linux-kbuild-*) fetch "$p" ;; esac
    done

    # Host tools: make, the compiler the kernel was built with (its headers
    # call it by that name: gcc-12 for Debian 12's 6.1), and what kbuild's
    # host programs link against.
    cc=$(sed -n 's/^CONFIG_CC_VERSION_TEXT="\([^ ]*\) .*/\1/p' "$kconfig")
    case "$cc" in gcc|gcc-[0-9]*) ;; *) die "$kver was built with '${cc:-an unknown compiler}', not gcc: cannot rebuild vfio.ko" ;; esac
    local need=()
    command -v make >/dev/null || need+=(make)
    command -v "$cc" >/dev/null || need+=("$cc")
    for f in "${debs[@]}"; do
        for p in $(dpkg-deb -f "$f" Depends | tr ',' '\n' | sed 's/^ *//; s/[ (|:].*//'); do
            case "$p" in linux-*) continue ;; esac
            dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || need+=("$p")
        done
    done
    if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi

    src=$kdir/vfio-src   # drivers/vfio of the kernel source
    if [ ! -f "$src/.done" ]; then
        fetch "$srcpkg"
        rm -rf "$src"
        mkdir -p "$src"
        echo "unpacking drivers/vfio from ${debs[-1]##*/}"
        if ! dpkg-deb --fsys-tarfile "${debs[-1]}" |
                tar -xO "./usr/src/$srcpkg.tar.xz" | xz -dc |
                tar -x -C "$src" --strip-components=1 --wildcards "$srcpkg/drivers/vfio/*" ||
                [ ! -f "$src/drivers/vfio/Makefile" ]; then
            rm -rf "$src"
            die "could not unpack drivers/vfio from ${debs[-1]}"
        fi
        touch "$src/.done"
        # Only drivers/vfio was needed (the rebuilt module is cached).
        rm -f "${debs[-1]}"
    fi

    build=$WORK/vfio-noiommu-build   # left behind if the build fails
    rm -rf "$build"
    mkdir -p "$build/root" "$build/mod"
    for f in "${debs[@]}"; do
        case "${f##*/}" in linux-headers-*|linux-kbuild-*) dpkg-deb -x "$f" "$build/root" ;; esac
    done
    root=$build/root
    headers=$root/usr/src/linux-headers-$kver
    [ -f "$headers/Makefile" ] || die "no $headers/Makefile in linux-headers-$kver"
    # It includes the common part by its absolute path under /usr/src.
    sed -i "s#/usr/src/#$root/usr/src/#" "$headers/Makefile"
    cp "$src"/drivers/vfio/*.[ch] "$src/drivers/vfio/Makefile" "$build/mod/"
    # The source's Makefile (kbuild prefers Kbuild) says which objects make
    # vfio.ko in this version; only vfio.ko is built, with the option on.
    cat > "$build/mod/Kbuild" <<'EOF'
CONFIG_VFIO_NOIOMMU := y
include $(src)/Makefile
obj-y :=
obj-m := vfio.o
ccflags-y += -DCONFIG_VFIO_NOIOMMU=1
EOF
    make -s -C "$headers" M="$build/mod" -j"$(nproc)" modules 2>&1 |
        grep -v '^Skipping BTF generation' || true
    [ -s "$build/mod/vfio.ko" ] || die "the vfio.ko build failed (in ${build#"$ROOT"/})"
    # The same symbol versions as the packaged vfio.ko, or its users would
    # refuse it.
    deps=$(diff <(awk '$3 ~ /(^|\/)drivers\/vfio\/vfio$/ { print $1, $2 }' "$headers/Module.symvers" | sort) \
                <(awk '{ print $1, $2 }' "$build/mod/Module.symvers" | sort) || true)
    [ -z "$deps" ] || die "the rebuilt vfio.ko exports other symbol versions than the packaged one:"$'\n'"$deps"
    [ -s "$build/mod/Module.symvers" ] || die "the rebuilt vfio.ko exports nothing"
    strip --strip-debug "$build/mod/vfio.ko"
    vfio_ko_ok "$build/mod/vfio.ko" "$packaged" || die "the rebuilt vfio.ko does not fit"
    mv "$build/mod/vfio.ko" "$cached"
    rm -rf "$build"
    NOIOMMU_KO=$cached
    echo "built: ${NOIOMMU_KO#"$ROOT"/} ($(du -k "$cached" | cut -f1) KiB)"
}

###############################################################################
# The initramfs of guest $1 (intel or none), in $initrd.
initramfs() {
    local mode=$1 stage path name bin
    if [ "$mode" = none ]; then
        stage=$WORK/initramfs-noiommu initrd=$WORK/initramfs-noiommu.cpio
    else
        stage=$WORK/initramfs initrd=$WORK/initramfs.cpio
    fi
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
        if [ "$mode" = none ] && [ -n "$NOIOMMU_KO" ] && [ "${name%%.ko*}" = vfio ]; then
            cp "$NOIOMMU_KO" "$stage/lib/modules/vfio.ko"  # with CONFIG_VFIO_NOIOMMU
            name=vfio.ko
        else
            case "$name" in # busybox insmod takes plain .ko files
                *.ko.xz) xz -dc "$moddir/$path" > "$stage/lib/modules/${name%.xz}"; name=${name%.xz} ;;
                *.ko.zst) zstd -qdc "$moddir/$path" > "$stage/lib/modules/${name%.zst}"; name=${name%.zst} ;;
                *.ko.gz) gzip -dc "$moddir/$path" > "$stage/lib/modules/${name%.gz}"; name=${name%.gz} ;;
                *) cp "$moddir/$path" "$stage/lib/modules/$name" ;;
            esac
        fi
        echo "/lib/modules/$name" >> "$stage/vmtest/modules"
    done
    for bin in "${BINS[@]}"; do cp "$bindir/${bin#*:}" "$stage/bin/"; done
    if [ "$mode" != none ]; then
        fio_into_initramfs "$stage"
    fi
    if [ "$mode" = none ]; then
        printf '%s\n' "$NOIOMMU_CHECKS" > "$stage/vmtest/checks"
    else
        printf '%s\n' "$CHECKS" > "$stage/vmtest/checks"
    fi
    local vfio_devices=$BDF
    [ "$mode" = none ] || vfio_devices="$BDF $HBDF"
    printf 'CHECK_TIMEOUT=%s\nSHELL_AFTER=%s\nVFIO_DEVICES="%s"\n' "$CHECK_TIMEOUT" "$SHELL_AFTER" "$vfio_devices" \
        > "$stage/vmtest/config"
    (cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) > "$initrd"
    echo "initramfs: ${initrd#"$ROOT"/} ($(du -h "$initrd" | cut -f1))"
}

###############################################################################
# fio, isonvme's ioengine and libisonvme.so, with the shared libraries they
# load (the guest's userspace is static busybox otherwise), for the
# fio-engine check. Builds the engine when it is missing.
fio_into_initramfs() {
    local stage=$1 engine=$ROOT/target/fio/libisonvme_fio.so lib
    [ -f "$engine" ] && command -v fio >/dev/null || "$ROOT/capi/fio/build.sh"
    mkdir -p "$stage/usr/bin" "$stage/usr/lib/isonvme"
    cp "$(command -v fio)" "$stage/usr/bin/fio"
    cp "$engine" "$stage/usr/lib/isonvme/"
    cp "${CARGO_TARGET_DIR:-$ROOT/target}/release/libisonvme.so" "$stage/usr/lib/isonvme/"
    for lib in $( (ldd "$(command -v fio)"; ldd "$engine") | grep -oE '/[^ ]+\.so[^ ]*' | sort -u); do
        mkdir -p "$stage$(dirname "$lib")"
        cp -L "$lib" "$stage$lib"
    done
}

###############################################################################
# The host's half of the hot-unplug check: when the guest prints
# VMTEST_UNPLUG_NOW on its console ($1), removes QEMU device nvme2 through
# the QMP socket $2, as an operator's device_del would.
unplug_on_request() {
    local console=$1 socket=$2
    until grep -aq 'VMTEST_UNPLUG_NOW' "$console" 2>/dev/null; do sleep 0.5; done
    echo "vmtest: host: device_del nvme2 (the guest asked)"
    python3 - "$socket" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
json.loads(f.readline())  # the greeting
for command in ({"execute": "qmp_capabilities"},
                {"execute": "device_del", "arguments": {"id": "nvme2"}}):
    f.write(json.dumps(command) + "\n")
    f.flush()
    while True:
        reply = json.loads(f.readline())
        if "return" in reply or "error" in reply:
            print("vmtest: host: qmp", command["execute"], json.dumps(reply))
            break
PY
}

###############################################################################
# Boots guest $1 (intel or none) with the initramfs made last ($initrd) and
# records its status in GUEST_RESULT and guest_status.
guest() {
    local mode=$1 run console exitlog results cmdline qemu_status f
    local -a iommu_args console_args qemu hotplug_args
    local watcher=
    if [ "$mode" = none ]; then
        run=$WORK/run-noiommu
        # No IOMMU device; vfio's unsafe mode (applied by /init at insmod).
        iommu_args=()
        cmdline="console=ttyS0 vfio.enable_unsafe_noiommu_mode=1"
    else
        run=$WORK/run
        # The IOMMU must come before the devices it translates for.
        iommu_args=(-device intel-iommu,intremap=on)
        cmdline="console=ttyS0 intel_iommu=on"
    fi
    # The third controller, for the hot-unplug check: behind a PCIe root
    # port (the root bus has no hotplug), removed with device_del on QEMU's
    # QMP socket when the guest asks (unplug_on_request).
    hotplug_args=()
    if [ "$mode" != none ]; then
        hotplug_args=(
            -device pcie-root-port,id=rp1,bus=pcie.0,addr=06.0,chassis=1,slot=1
            -drive "file=$run/nvme2n1.img,if=none,id=nvme2n1,format=raw"
            -device "nvme,id=nvme2,bus=rp1,serial=$HSERIAL,max_ioqpairs=$IOQPAIRS,msix_qsize=$MSIX"
            -device nvme-ns,bus=nvme2,drive=nvme2n1,nsid=1
            -qmp "unix:$run/qmp.sock,server=on,wait=off"
        )
    fi
    console=$run/console.log
    exitlog=$run/exit.log
    results=$run/results
    mkdir -p "$run"
    rm -rf "$console" "$exitlog" "$run"/*.img "$results"
    # Namespaces: sparse files, fresh each run, different sizes so a mix-up shows.
    # The twin's are the same sizes: the comparison runs on equal devices.
    truncate -s 64M "$run/nvme0n1.img" "$run/nvme1n1.img"
    truncate -s 32M "$run/nvme0n2.img" "$run/nvme1n2.img"
    truncate -s 16M "$run/nvme2n1.img"
    rm -f "$run/qmp.sock"
    # nvme.poll_queues: the kernel-driven twin gets a poll queue, so
    # io_uring's polled I/O (fio's hipri) has one to use.
    cmdline+=" isolcpus=$ISOLCPUS_FLAGS,$ISOLATED hugepages=64 nvme.poll_queues=1 panic=-1 $APPEND_EXTRA"
    if [ "$SHELL_AFTER" = 1 ]; then
        console_args=(-serial mon:stdio)
    else
        console_args=(-chardev stdio,id=console,signal=off -serial chardev:console)
    fi
    qemu=(
        qemu-system-x86_64
        -nodefaults -no-user-config -display none -no-reboot
        -machine q35 -accel "$ACCEL" -cpu max -smp "$SMP" -m "$MEM"
        "${iommu_args[@]}"
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
        # Its twin, the same but for the serial, left to the guest kernel's nvme
        # driver: the kernel's side of isonvme-versus-io_uring comparisons.
        -drive "file=$run/nvme1n1.img,if=none,id=nvme1n1,format=raw"
        -drive "file=$run/nvme1n2.img,if=none,id=nvme1n2,format=raw"
        -device "nvme,id=nvme1,addr=05.0,serial=$KSERIAL,max_ioqpairs=$IOQPAIRS,msix_qsize=$MSIX"
        -device nvme-ns,bus=nvme1,drive=nvme1n1,nsid=1
        -device nvme-ns,bus=nvme1,drive=nvme1n2,nsid=2
        "${hotplug_args[@]}"
    )
    printf '%q ' "${qemu[@]}" > "$run/qemu-command"
    echo >> "$run/qemu-command"
    echo "console: ${console#"$ROOT"/} (command in ${run#"$ROOT"/}/qemu-command)"
    if [ "$mode" != none ]; then
        unplug_on_request "$console" "$run/qmp.sock" &
        watcher=$!
    fi
    set +e
    if [ "$SHELL_AFTER" = 1 ]; then
        "${qemu[@]}"
        qemu_status=$?
    else
        timeout -k 10 "$TIMEOUT" "${qemu[@]}" < /dev/null 2>&1 | tee "$console"
        qemu_status=${PIPESTATUS[0]}
    fi
    set -e
    if [ -n "$watcher" ]; then
        kill "$watcher" 2>/dev/null || true
        wait "$watcher" 2>/dev/null || true
    fi
    end_phase

    # Result files the checks left (bench JSON...), sent by /init between
    # markers on the exit-status port (a tty: strip its CRs).
    if [ -f "$exitlog" ] && grep -q '^VMTEST_RESULT_BEGIN ' "$exitlog"; then
        mkdir -p "$results"
        tr -d '\r' < "$exitlog" | awk -v dir="$results" '
            /^VMTEST_RESULT_BEGIN [A-Za-z0-9._-]+$/ { file = dir "/" $2; printf "" > file; next }
            /^VMTEST_RESULT_END$/ { if (file != "") close(file); file = ""; next }
            file != "" { print > file }'
        for f in "$results"/*; do
            if [ -f "$f" ]; then echo "result: ${f#"$ROOT"/}"; fi
        done
    fi

    guest_status=$(grep -ao 'VMTEST_EXIT=[0-9]*' "$exitlog" 2>/dev/null | tail -1 | cut -d= -f2 || true)
    if [ -z "$guest_status" ]; then
        if [ "$qemu_status" -eq 124 ] || [ "$qemu_status" -eq 137 ]; then
            echo "vmtest: $(guest_name "$mode"): did not finish within ${TIMEOUT} s (VMTEST_TIMEOUT)" >&2
        else
            echo "vmtest: $(guest_name "$mode"): reported no exit status (QEMU exited with $qemu_status): see $console" >&2
        fi
        guest_status=125
        GUEST_RESULT[$mode]="FAILED (no exit status; console ${console#"$ROOT"/})"
    elif [ "$guest_status" -ne 0 ]; then
        echo "vmtest: $(guest_name "$mode"): FAILED: its checks exited with $guest_status (console: $console)" >&2
        GUEST_RESULT[$mode]="FAILED (status $guest_status; console ${console#"$ROOT"/})"
    else
        echo "vmtest: $(guest_name "$mode"): PASSED"
        GUEST_RESULT[$mode]=PASSED
    fi
}

status=0
for mode in "${MODES[@]}"; do
    if [ "$mode" = none ]; then
        begin "vfio.ko for no-IOMMU"
        noiommu_vfio
        begin "initramfs (no-IOMMU)"
    else
        begin "initramfs (intel-IOMMU)"
    fi
    initramfs "$mode"
    begin "guest ($(label "$mode"))"
    guest "$mode"
    if [ "$status" -eq 0 ]; then status=$guest_status; fi
done
if [ "$status" -eq 0 ]; then
    echo "vmtest: PASSED"
else
    echo "vmtest: FAILED (exit status $status)" >&2
fi
exit "$status"
