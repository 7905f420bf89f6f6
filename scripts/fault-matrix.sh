#!/usr/bin/env bash
# The fault matrix of docs/recovery.md: every injected fault of the
# simulator under every completion mode, with isonvme-bench writing 2048
# random 4 KiB blocks at QD8 and verifying them (crc32c), three runs each.
#
#   scripts/fault-matrix.sh [runs]      (default 3)
#
# Prints a Markdown table: what the job saw (its error, or none), what
# recovery did (from the report's note), the slowest command (the time the
# application waited through the recovery, range over the runs), and the
# verify result (blocks checked / mismatches). A run longer than 60 s is a
# hang and is reported as such.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
cargo build --quiet --release -p isonvme-bench
bench=target/release/isonvme-bench
faults=(drop@500 delay:5s@500 status:0/6@500 status:0/6:dnr@500 fatal@500 sqhead@500 stall:5s@500 remove@500)
modes=(interrupt poll hybrid inline)
out=$(mktemp)
trap 'rm -f "$out"' EXIT

echo "| fault | completion | the job saw | recovery | slowest command | verify |"
echo "|---|---|---|---|---|---|"
for fault in "${faults[@]}"; do
    for mode in "${modes[@]}"; do
        saw="" recovery="" verify="" slowest=()
        for _ in $(seq "$runs"); do
            status=0
            timeout 60 "$bench" --name=matrix --ioengine=isonvme \
                --filename="sim,size=64M,fault=$fault" --rw=randwrite --bs=4k \
                --iodepth=8 --size=8M --verify=crc32c --command_timeout=100ms \
                --completion="$mode" >"$out" 2>&1 || status=$?
            if [ "$status" = 124 ]; then
                saw="HANG"
                break
            fi
            if grep -q "panicked" "$out"; then
                saw="PANIC"
                break
            fi
            error=$(grep -oE "err= *[0-9]+ \([^)]*\)\)?" "$out" | head -1 | sed -E 's/err= *[0-9]+ \((.*)\)/\1/' || true)
            saw=${error:-"no error (exit $status)"}
            recovery=$(grep -oE "recovery: .*" "$out" | head -1 | sed -E 's/^recovery: //' || true)
            recovery=${recovery:-"nothing"}
            verify=$(grep -oE "verify +: [0-9]+ blocks checked, [0-9]+ mismatches" "$out" | sed -E 's/verify +: //' || true)
            max=$(grep -E "^ +lat \((usec|msec|nsec)\): min=" "$out" | head -1 |
                sed -E 's/^ +lat \((usec|msec|nsec)\): min=[0-9.]+[kKM]?, max=([0-9.]+[kKM]?).*/\2 \1/' || true)
            slowest+=("$max")
        done
        range=$(printf '%s\n' "${slowest[@]:-}" | awk 'NF {
            v = $1 + 0; if ($1 ~ /k$/) v *= 1e3; if ($1 ~ /M$/) v *= 1e6;
            if ($2 == "usec") v /= 1000; if ($2 == "nsec") v /= 1e6;
            if (min == "" || v < min) min = v; if (v > max) max = v }
            END { if (min != "") printf "%.1f-%.1f ms", min, max }')
        echo "| \`$fault\` | $mode | $saw | $recovery | ${range:-n/a} | ${verify:-n/a} |"
    done
done
