#!/usr/bin/env bash
# Runs fio's own example job files (Debian package fio-examples) under
# isonvme-bench as they are, with only `--ioengine=isonvme
# --filename=DEVICE` on the command line (the bench lets those replace
# the file's own values). Each file gets BENCH_EXAMPLES_SECONDS (60) s,
# then SIGINT. Prints one line per file, the totals, and the options the
# bench refused most often.
#
#   cargo build --release -p isonvme-bench && scripts/bench-examples.sh [examples dir]
set -uo pipefail
cd "$(dirname "$0")/.."
bench=${BENCH:-$PWD/target/release/isonvme-bench}
examples=${1:-/usr/share/doc/fio/examples}
device=${BENCH_EXAMPLES_DEVICE:-sim,size=4G,lba=512}
seconds=${BENCH_EXAMPLES_SECONDS:-60}
[ -x "$bench" ] || { echo "build the bench first: cargo build --release -p isonvme-bench" >&2; exit 2; }
[ -d "$examples" ] || { echo "no $examples: apt-get install fio-examples" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ok=0 cut=0 failed=0 total=0
for file in "$examples"/*.fio; do
    name=$(basename "$file")
    total=$((total + 1))
    (cd "$work" && timeout -s INT -k 30 "$seconds" "$bench" --ioengine=isonvme --filename="$device" --eta=never "$file" > "$work/$name.out" 2> "$work/$name.err")
    status=$?
    if [ "$status" = 0 ]; then
        ok=$((ok + 1))
        echo "ok      $name"
    elif [ "$status" = 124 ] || [ "$status" = 130 ]; then
        cut=$((cut + 1))
        echo "cut     $name: still running at the ${seconds} s cut"
    else
        failed=$((failed + 1))
        reason=$(grep -hvE '^\s*$' "$work/$name.err" | head -1 | cut -c1-160)
        echo "FAILED  $name (exit $status): ${reason:-see the output}"
    fi
done
echo "bench-examples: $ok of $total job files ran to completion under isonvme-bench with --ioengine=isonvme --filename=$device, $cut were still running at the ${seconds} s cut, $failed failed"
