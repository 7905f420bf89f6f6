# Shell checks the guest's /init can run (sourced before each check line of
# /vmtest/checks, so a check line may call these functions or any binary in
# /bin). Each returns 0 when the check passes.

# What the guest looks like: kernel, command line, CPU isolation, IOMMU
# groups, hugepages. Never fails; it is there for the log.
guest_info() {
    echo "kernel:    $(uname -r)"
    echo "cmdline:   $(cat /proc/cmdline)"
    echo "online:    $(cat /sys/devices/system/cpu/online)"
    echo "isolated:  $(cat /sys/devices/system/cpu/isolated)"
    echo "init runs on CPUs $(grep Cpus_allowed_list /proc/1/status | cut -f2)," \
        "this shell on $(grep Cpus_allowed_list /proc/self/status | cut -f2)"
    echo "hugepages: $(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages) x 2 MiB"
    echo "IOMMU:     $(ls /sys/class/iommu 2>/dev/null | tr '\n' ' ')"
    for dev in /sys/bus/pci/devices/*; do
        driver=$(readlink "$dev/driver"); driver=${driver##*/}
        group=$(readlink "$dev/iommu_group"); group=${group##*/}
        echo "pci ${dev##*/} class $(cat "$dev/class") $(cat "$dev/vendor"):$(cat "$dev/device")" \
            "driver ${driver:--} group ${group:--}"
    done
    echo "/dev/vfio: $(ls /dev/vfio | tr '\n' ' ')"
    return 0
}

# The NVMe functions given (BDFs) are bound to vfio-pci and their IOMMU
# groups have /dev/vfio/<group> nodes.
vfio_bound() {
    [ $# -gt 0 ] || { echo "usage: vfio_bound BDF..."; return 2; }
    bad=0
    for bdf in "$@"; do
        dev=/sys/bus/pci/devices/$bdf
        if [ ! -e "$dev" ]; then
            echo "$bdf: no such PCI function"
            bad=1
            continue
        fi
        driver=$(readlink "$dev/driver"); driver=${driver##*/}
        group=$(readlink "$dev/iommu_group"); group=${group##*/}
        if [ "$driver" != vfio-pci ]; then
            echo "$bdf: bound to ${driver:-no driver}, not vfio-pci"
            bad=1
        elif [ -z "$group" ]; then
            echo "$bdf: no IOMMU group (is intel_iommu=on on the command line?)"
            bad=1
        elif [ ! -c "/dev/vfio/$group" ]; then
            echo "$bdf: /dev/vfio/$group is missing"
            bad=1
        else
            echo "$bdf: vfio-pci, IOMMU group $group, /dev/vfio/$group present"
        fi
    done
    [ -c /dev/vfio/vfio ] || { echo "/dev/vfio/vfio is missing"; bad=1; }
    return $bad
}

# The block device of namespace 1 of the kernel-driven NVMe function $1
# (e.g. /dev/nvme0n1), once the nvme driver's asynchronous probe and
# namespace scan have made it; waits up to $2 seconds (default 30: TCG is
# slow). Prints the path; fails if none appears.
nvme_blockdev() {
    bdf=$1
    waited=0
    while :; do
        # The disk is a child of the controller's device (no multipath head:
        # QEMU's namespaces are private); a hidden path device (nvmeXcYnZ)
        # has no /dev node, so the -b test skips it.
        for disk in /sys/bus/pci/devices/"$bdf"/nvme/nvme*/nvme*n1; do
            [ -e "$disk" ] || continue
            if [ -b "/dev/${disk##*/}" ]; then
                echo "/dev/${disk##*/}"
                return 0
            fi
        done
        [ "$waited" -ge "${2:-30}" ] && return 1
        sleep 1
        waited=$((waited + 1))
    done
}

# The NVMe functions given (BDFs) are driven by the kernel's nvme driver
# and have a namespace-1 block device: the reference for comparisons.
kernel_nvme() {
    [ $# -gt 0 ] || { echo "usage: kernel_nvme BDF..."; return 2; }
    bad=0
    for bdf in "$@"; do
        driver=$(readlink "/sys/bus/pci/devices/$bdf/driver"); driver=${driver##*/}
        if [ "$driver" != nvme ]; then
            echo "$bdf: bound to ${driver:-no driver}, not nvme (is the nvme module in the initramfs?)"
            bad=1
        elif ! disk=$(nvme_blockdev "$bdf"); then
            echo "$bdf: nvme, but no namespace-1 block device appeared within 30 s"
            bad=1
        else
            name=${disk#/dev/}
            # Hardware queues blk-mq made (one per CPU if the controller
            # allows): the kernel's counterpart of isonvme's SQ layout.
            queues=0
            for queue in /sys/class/block/"$name"/mq/*; do
                [ -e "$queue" ] && queues=$((queues + 1))
            done
            echo "$bdf: nvme, $disk ($(($(cat "/sys/class/block/$name/size") / 2048)) MiB)," \
                "serial $(sed 's/ *$//' "/sys/bus/pci/devices/$bdf"/nvme/nvme*/serial), $queues hardware queues"
        fi
    done
    return $bad
}

# Prints the isonvme-bench command as one could paste it (arguments with
# spaces quoted), then runs it; returns its status.
run_bench() {
    printf 'isonvme-bench'
    for arg in "$@"; do
        case "$arg" in *' '*) printf " '%s'" "$arg" ;; *) printf ' %s' "$arg" ;; esac
    done
    echo
    isonvme-bench "$@"
}

# isonvme against the kernel at QD1: the same 4 KiB random-read job,
# through isonvme on the vfio-pci function $1 and through io_uring
# (O_DIRECT) on the block device of the kernel-driven function $2, which
# run.sh gives identical parameters. Both job threads run on CPU $3 (an
# isolated one); $4 is the runtime of each side (after a 1 s ramp). The
# bench's own comparison prints both reports and the ratio table; the JSON
# (fio's schema, both sides and the rows) goes to the host as a result file.
# Fails if either side fails; never judges the speed (TCG timings say
# little, and CI machines differ).
bench_qd1() {
    [ $# -eq 4 ] || { echo "usage: bench_qd1 VFIO_BDF KERNEL_BDF CPU RUNTIME"; return 2; }
    disk=$(nvme_blockdev "$2") || { echo "$2: no block device"; return 1; }
    out=/tmp/bench-qd1.out
    set -- --name=qd1-randread --rw=randread --bs=4k --iodepth=1 \
        --time_based --runtime="$4" --ramp_time=1s --cpus_allowed="$3" \
        --compare "ioengine=isonvme filename=$1" \
        --compare "ioengine=io_uring filename=$disk direct=1" \
        --output-format=normal,json --eta=never --output="$out"
    # The command as one could paste it (the overrides quoted).
    run_bench "$@"
    rc=$?
    # The report is the normal text, then the JSON from its first line "{".
    if [ -s "$out" ]; then
        sed -n '/^{$/q; p' "$out" | tee /vmtest/results/bench-qd1.txt
        sed -n '/^{$/,$p' "$out" > /vmtest/results/bench-qd1.json
    fi
    if [ "$rc" -ne 0 ]; then
        echo "isonvme-bench exited with $rc"
        return 1
    fi
    if [ ! -s /vmtest/results/bench-qd1.json ]; then
        echo "isonvme-bench wrote no JSON report"
        return 1
    fi
    return 0
}

# Interrupt lines of vfio devices, for the log.
vfio_interrupts() {
    head -1 /proc/interrupts
    grep vfio /proc/interrupts
    return 0
}

# The NVMe functions given (BDFs) are bound to vfio-pci in VFIO no-IOMMU
# groups (/dev/vfio/noiommu-<group>), with no IOMMU in the guest and vfio's
# enable_unsafe_noiommu_mode on.
vfio_noiommu_bound() {
    [ $# -gt 0 ] || { echo "usage: vfio_noiommu_bound BDF..."; return 2; }
    bad=0
    mode=$(cat /sys/module/vfio/parameters/enable_unsafe_noiommu_mode 2>/dev/null)
    [ "$mode" = Y ] || { echo "vfio's enable_unsafe_noiommu_mode is '${mode:-missing}', not Y"; bad=1; }
    [ -z "$(ls /sys/class/iommu 2>/dev/null)" ] || { echo "the guest has an IOMMU: $(ls /sys/class/iommu)"; bad=1; }
    for bdf in "$@"; do
        dev=/sys/bus/pci/devices/$bdf
        driver=$(readlink "$dev/driver"); driver=${driver##*/}
        group=$(readlink "$dev/iommu_group"); group=${group##*/}
        if [ "$driver" != vfio-pci ]; then
            echo "$bdf: bound to ${driver:-no driver}, not vfio-pci"
            bad=1
        elif [ -z "$group" ] || [ "$(cat "/sys/kernel/iommu_groups/$group/name" 2>/dev/null)" != vfio-noiommu ]; then
            echo "$bdf: group '${group:-none}' is not a vfio-noiommu group"
            bad=1
        elif [ ! -c "/dev/vfio/noiommu-$group" ]; then
            echo "$bdf: /dev/vfio/noiommu-$group is missing"
            bad=1
        else
            echo "$bdf: vfio-pci, no-IOMMU group $group, /dev/vfio/noiommu-$group present"
        fi
    done
    return $bad
}

# Runs the command given after the pattern; passes when it FAILS with a
# message containing the pattern (a refusal that must happen).
expect_fail() {
    pattern=$1
    shift
    out=$("$@" 2>&1)
    rc=$?
    echo "$out"
    if [ "$rc" -eq 0 ]; then
        echo "expected a failure with \"$pattern\", but it succeeded"
        return 1
    fi
    case "$out" in
        *"$pattern"*) echo "refused as expected (status $rc)"; return 0 ;;
    esac
    echo "failed (status $rc), but without \"$pattern\""
    return 1
}

# Polled completions on both sides, QD1: isonvme with inline queues
# (completion=inline: the job thread reaps its own interrupt-less CQ) on the
# vfio-pci function $1, and io_uring with polled I/O (hipri; the guest boots
# with nvme.poll_queues=1) on the block device of the kernel-driven twin $2;
# $3 is the runtime of each side (after a 1 s ramp). No cpus_allowed: the
# bench places its job itself, from the CPUs of its cpuset, isolated ones
# first, and this checks it did so on both sides, that isonvme's isolation
# verdict is clean, and that the inline reaps were counted. Never judges the
# speed (TCG).
bench_polled() {
    [ $# -eq 3 ] || { echo "usage: bench_polled VFIO_BDF KERNEL_BDF RUNTIME"; return 2; }
    disk=$(nvme_blockdev "$2") || { echo "$2: no block device"; return 1; }
    out=/tmp/bench-polled.out
    set -- --name=qd1-randread --rw=randread --bs=4k --iodepth=1 \
        --time_based --runtime="$3" --ramp_time=1s \
        --compare "ioengine=isonvme filename=$1 completion=inline" \
        --compare "ioengine=io_uring filename=$disk direct=1 hipri=1" \
        --output-format=normal --eta=never --output="$out"
    run_bench "$@"
    rc=$?
    [ -s "$out" ] && tee /vmtest/results/bench-polled.txt < "$out"
    if [ "$rc" -ne 0 ]; then
        echo "isonvme-bench exited with $rc"
        return 1
    fi
    placed=$(grep -cE '^ +[0-9]+ +isolated .*qd1-randread/0' "$out")
    if [ "$placed" -lt 2 ]; then
        echo "the job thread ran on an isolated CPU in $placed of the 2 runs (placement must prefer isolated CPUs)"
        return 1
    fi
    first_verdict=$(grep -m1 'verdict:' "$out")
    case "$first_verdict" in
        *'reaped'*'inline'*) ;;
        *) echo "isonvme's verdict does not report clean inline reaping: $first_verdict"; return 1 ;;
    esac
    echo "both jobs ran on isolated CPUs; isonvme: $first_verdict"
    return 0
}

# Not a default check: the QD1 latency figures of docs/benchmarking.md §6.
# One round on the vfio-pci function $1 and the kernel-driven twin $2, each
# side $3 long after a 1 s ramp, job threads placed by the bench (isolated
# CPUs first): isonvme inline vs io_uring polled (hipri), then isonvme
# interrupt vs isonvme inline without shadow doorbells. $4 names the round
# in the result files. Run several rounds in one guest boot:
#   VMTEST_CHECKS="$(for r in 1 2 3; do echo "qd1-$r measure_qd1 0000:00:04.0 0000:00:05.0 5s $r"; done)" vmtest/run.sh
measure_qd1() {
    [ $# -eq 4 ] || { echo "usage: measure_qd1 VFIO_BDF KERNEL_BDF RUNTIME ROUND"; return 2; }
    disk=$(nvme_blockdev "$2") || { echo "$2: no block device"; return 1; }
    common="--name=qd1-randread --rw=randread --bs=4k --iodepth=1 --time_based --runtime=$3 --ramp_time=1s --eta=never"
    # shellcheck disable=SC2086  # $common is a list of words
    isonvme-bench $common \
        --compare "ioengine=isonvme filename=$1 completion=inline" \
        --compare "ioengine=io_uring filename=$disk direct=1 hipri=1" \
        --output="/vmtest/results/qd1-polled-$4.txt" || return 1
    # shellcheck disable=SC2086
    isonvme-bench $common \
        --compare "ioengine=isonvme filename=$1 completion=interrupt" \
        --compare "ioengine=isonvme filename=$1 completion=inline shadow_doorbells=0" \
        --output="/vmtest/results/qd1-modes-$4.txt" || return 1
    for f in "/vmtest/results/qd1-polled-$4.txt" "/vmtest/results/qd1-modes-$4.txt"; do
        echo "== $f"
        sed -n '/metric/,/^$/p' "$f"
        grep -E 'verdict|completion (interrupt|inline)' "$f"
    done
    return 0
}

# Not a default check: shadow doorbells on vs off (isonvme inline, job CPU
# placed by the bench) at QD1 and QD32 on the vfio-pci function $1, each side
# $2 long after a 1 s ramp; $3 names the round. Then the latency example in
# poll and inline mode (2 s each). Several rounds in one guest boot:
#   VMTEST_CHECKS="$(for r in 1 2 3; do echo "shadow-$r measure_shadow 0000:00:04.0 5s $r"; done)" vmtest/run.sh
measure_shadow() {
    [ $# -eq 3 ] || { echo "usage: measure_shadow VFIO_BDF RUNTIME ROUND"; return 2; }
    for depth in 1 32; do
        out="/vmtest/results/shadow-qd$depth-$3.txt"
        isonvme-bench --name=randread --rw=randread --bs=4k --iodepth=$depth --time_based \
            --runtime="$2" --ramp_time=1s --eta=never \
            --compare "ioengine=isonvme filename=$1 completion=inline shadow_doorbells=1" \
            --compare "ioengine=isonvme filename=$1 completion=inline shadow_doorbells=0" \
            --output="$out" || return 1
        echo "== QD$depth: A shadow doorbells, B register doorbells"
        sed -n '/metric/,/^$/p' "$out"
    done
    for mode in poll inline; do
        echo "== latency --mode $mode"
        latency --device "$1" --mode "$mode" --time 2s | grep -E 'reads in|p50|p99 |verdict|host vfio' || return 1
    done
    return 0
}

# Hot-unplug during I/O: `latency` reads from NVMe function $1 (behind a
# PCIe root port, bound to vfio-pci) when the host removes it with QEMU's
# device_del (run.sh's unplug_on_request, asked through the console). The
# kernel's removal sends VFIO's device request; isonvme must stop the
# controller, fail what is in flight, report it and let the device go, so
# that the removal completes. Passes when latency says so, exits non-zero
# without a panic or a hang, and the function is gone afterwards.
hot_unplug() {
    bdf=$1
    [ -e "/sys/bus/pci/devices/$bdf" ] || { echo "$bdf: no such PCI function"; return 1; }
    latency --device "$bdf" --warmup 10 --time 300s > /tmp/unplug.out 2>&1 &
    pid=$!
    sleep 3
    kill -0 "$pid" 2>/dev/null || { cat /tmp/unplug.out; echo "latency ended before the unplug"; return 1; }
    asked=$(cut -d' ' -f1 /proc/uptime)
    echo "VMTEST_UNPLUG_NOW $bdf" > /dev/console
    waited=0
    while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 120 ]; do
        sleep 1
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        cat /tmp/unplug.out
        echo "latency still runs 120 s after the unplug was asked for: hung"
        kill -9 "$pid"
        return 1
    fi
    wait "$pid"
    status=$?
    ended=$(cut -d' ' -f1 /proc/uptime)
    cat /tmp/unplug.out
    bad=0
    [ "$status" -ne 0 ] || { echo "latency exited 0: the removal went unnoticed"; bad=1; }
    grep -q 'the device went away during the run' /tmp/unplug.out ||
        { echo "latency did not report the removal"; bad=1; }
    if grep -q panicked /tmp/unplug.out; then echo "latency panicked"; bad=1; fi
    gone=0
    for _ in $(seq 30); do
        [ -e "/sys/bus/pci/devices/$bdf" ] || { gone=1; break; }
        sleep 1
    done
    [ "$gone" = 1 ] || { echo "$bdf is still there 30 s after latency let go"; bad=1; }
    echo "hot-unplug: asked at ${asked} s, latency exited with status $status at ${ended} s" \
        "($(awk -v a="$asked" -v b="$ended" 'BEGIN { printf "%.1f", b - a }') s later, the guest's hotplug delay included);" \
        "$bdf gone: $gone"
    return $bad
}

# Real fio with isonvme's ioengine on NVMe function $1 through VFIO: QD8
# random writes verified with crc32c from isolated CPU 2 (fio's own verify),
# the PCI address written with dots as fio needs.
fio_engine() {
    dotted=$(echo "$1" | tr : .)
    out=/tmp/fio-engine.out
    LD_LIBRARY_PATH=/usr/lib/isonvme fio --thread \
        --ioengine=external:/usr/lib/isonvme/libisonvme_fio.so \
        --name=verify --filename="$dotted" --rw=randwrite --bs=4k --iodepth=8 \
        --size=8m --verify=crc32c --do_verify=1 --cpus_allowed=2 > "$out" 2>&1
    rc=$?
    cat "$out"
    [ "$rc" -eq 0 ] || { echo "fio exited with $rc"; return 1; }
    grep -q 'err= 0' "$out" || { echo "fio reported an error"; return 1; }
    grep -qE 'READ: .*io=8192KiB' "$out" || { echo "the verify pass did not read every block back"; return 1; }
    echo "fio with isonvme's engine wrote and verified 8 MiB on $1 from CPU 2"
}
