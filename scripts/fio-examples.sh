#!/usr/bin/env bash
# Runs fio's own example job files (Debian package fio-examples) under real
# fio with isonvme's ioengine on the simulated controller, changing only
# what the engine needs: every ioengine= becomes the engine, every
# filename= (and directory=) the simulated device, and [global] gains
# `thread` (the engine shares one runtime between job threads, as SPDK's
# does). Each file gets FIO_EXAMPLES_SECONDS (60) s, then SIGINT. Prints one line per file and the totals.
#
#   capi/fio/build.sh && scripts/fio-examples.sh [examples dir]
set -uo pipefail
cd "$(dirname "$0")/.."
engine=$PWD/target/fio/libisonvme_fio.so
examples=${1:-/usr/share/doc/fio/examples}
device=${FIO_EXAMPLES_DEVICE:-sim,size=4G,lba=512}
seconds=${FIO_EXAMPLES_SECONDS:-60}
[ -f "$engine" ] || { echo "build the engine first: capi/fio/build.sh" >&2; exit 2; }
[ -d "$examples" ] || { echo "no $examples: apt-get install fio-examples" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ok=0 cut=0 failed=0 total=0
for file in "$examples"/*.fio; do
    name=$(basename "$file")
    total=$((total + 1))
    # The engine and the device go first, in a [global] of their own; the
    # file's own ioengine=/filename=/directory= lines are dropped, so they
    # cannot add a second file or another engine.
    {
        echo "[global]"
        echo "thread"
        echo "ioengine=external:$engine"
        echo "filename=$device"
        sed -E -e "/^[[:space:]]*(ioengine|filename|directory)[[:space:]]*=/d" "$file"
    } > "$work/$name"
    # At the cut fio gets SIGINT, ends its jobs and writes its report, so
    # a job file cut short still shows whether its I/O had errors.
    (cd "$work" && timeout -s INT -k 30 "$seconds" fio --output="$work/$name.out" "$work/$name" > "$work/$name.err" 2>&1)
    status=$?
    if [ "$status" = 0 ]; then
        ok=$((ok + 1))
        echo "ok      $name"
    elif [ "$status" = 124 ] && grep -q "err= 0" "$work/$name.out" 2>/dev/null &&
        ! grep -qE "err= *[1-9]|verify: bad|isonvme: .*(error|fail)" "$work/$name.out" "$work/$name.err"; then
        cut=$((cut + 1))
        echo "cut     $name: no errors in ${seconds} s, stopped at the cut (runs longer)"
    else
        failed=$((failed + 1))
        reason=$(grep -hvE '^\s*$' "$work/$name.err" "$work/$name.out" 2>/dev/null | grep -iE 'error|fail|invalid|bad|not|unable|isonvme' | head -1 | cut -c1-150)
        [ "$status" = 124 ] && reason="errors before the ${seconds} s cut: $reason"
        echo "FAILED  $name (exit $status): ${reason:-see the output}"
    fi
done
echo "fio-examples: $ok of $total job files ran to completion with ioengine=isonvme on $device, $cut more ran without errors until the ${seconds} s cut, $failed failed"
